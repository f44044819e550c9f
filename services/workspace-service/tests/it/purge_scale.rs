//! The seed could not delete a workspace past Convex's 16,000-write cap. Ours answers the
//! delete of 1,000,000 child rows at once and purges them in the background, each chunk
//! atomic, every Liveblocks room queued once.

use crate::support;

use std::time::{Duration, Instant};
use support::{delete_ws, eventually, start_with};
use vbase_proto::workspace::v1 as pb;

#[tokio::test]
async fn a_workspace_with_a_million_child_rows_is_gone_at_once_and_purged() {
    let env = start_with(false).await;
    let ws = env.workspace("org_big").await;
    let id = &ws.id;
    // 20 channels x 45,000 messages, 20 x 1,000 read receipts, 200 rooms (50 of each kind) with
    // 400 documents / code files / whiteboards / meetings each: 1,000,219 child rows with `general`.
    env.sql(&format!(
        "INSERT INTO channels (id, workspace_id, name) SELECT gen_random_uuid(), '{id}', 'c' || g FROM generate_series(1, 20) g;
         INSERT INTO messages (id, workspace_id, channel_id, author_clerk_id, body, created_at)
           SELECT gen_random_uuid(), c.workspace_id, c.id, 'user_' || (g % 1000), 'message ' || g, now() - g * interval '1 second'
             FROM channels c, generate_series(1, 45000) g WHERE c.workspace_id = '{id}' AND c.name <> 'general';
         INSERT INTO read_receipts (workspace_id, channel_id, clerk_user_id, last_read_at)
           SELECT c.workspace_id, c.id, 'user_' || g, now() FROM channels c, generate_series(1, 1000) g
            WHERE c.workspace_id = '{id}' AND c.name <> 'general';
         INSERT INTO rooms (id, workspace_id, kind, name)
           SELECT gen_random_uuid(), '{id}', (ARRAY['document','code','whiteboard','conference'])[1 + g % 4], 'r' || g
             FROM generate_series(0, 199) g;
         INSERT INTO documents (id, workspace_id, room_id, name) SELECT gen_random_uuid(), r.workspace_id, r.id, 'd' || g FROM rooms r, generate_series(1, 400) g WHERE r.kind = 'document';
         INSERT INTO code_files (id, workspace_id, room_id, name) SELECT gen_random_uuid(), r.workspace_id, r.id, 'f' || g FROM rooms r, generate_series(1, 400) g WHERE r.kind = 'code';
         INSERT INTO whiteboards (id, workspace_id, room_id, name) SELECT gen_random_uuid(), r.workspace_id, r.id, 'w' || g FROM rooms r, generate_series(1, 400) g WHERE r.kind = 'whiteboard';
         INSERT INTO meetings (id, workspace_id, room_id, title, starts_at, ends_at)
           SELECT gen_random_uuid(), r.workspace_id, r.id, 'm' || g, now(), now() + interval '1 hour' FROM rooms r, generate_series(1, 400) g WHERE r.kind = 'conference';
         ANALYZE;"
    ))
    .await;
    let mut c = env.client().await;
    let started = Instant::now();
    let r = c
        .delete_workspace(env.service(delete_ws("big", 100, "org_big")))
        .await
        .unwrap()
        .into_inner();
    let answered = started.elapsed();
    assert_eq!(r.outcome(), pb::CommandOutcome::Applied);
    assert!(r.purge_queued);
    assert!(
        answered < Duration::from_secs(1),
        "answered in {answered:?}"
    );
    let gone = c
        .get_workspace(env.service(pb::GetWorkspaceRequest {
            clerk_org_id: "org_big".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    eventually("purge done", Duration::from_secs(600), || async {
        env.count("purge_jobs").await == 0
    })
    .await;
    eprintln!(
        "answered in {answered:?}, purged in {:?}",
        started.elapsed()
    );
    // 50 x 400 items of each of three kinds + 200 rooms, each queued once (the queue's key).
    assert_eq!(env.count("liveblocks_cleanup_jobs").await, 60_200);
    env.assert_only_bookkeeping_left().await;
}
