//! The seed could not delete a workspace past Convex's 16,000-write cap. Ours deletes
//! 1,000,000 child rows in one call, atomically.

use crate::support;

use std::time::{Duration, Instant};
use support::{delete_ws, start_with};
use vbase_proto::workspace::v1 as pb;

#[tokio::test]
async fn a_workspace_with_a_million_child_rows_deletes_in_one_call() {
    let env = start_with(false).await;
    let ws = env.workspace("org_big").await;
    let id = &ws.id;
    // 20 channels x 45,000 messages, 20 x 1,000 read receipts, 200 rooms (50 of each kind) with
    // 400 documents / code files / whiteboards / meetings each: 1,000,219 child rows with `general`.
    env.sql(&format!(
        "INSERT INTO channels (id, workspace_id, name) SELECT gen_random_uuid(), '{id}', 'c' || g FROM generate_series(1, 20) g;
         INSERT INTO messages (id, channel_id, author_clerk_id, body, created_at)
           SELECT gen_random_uuid(), c.id, 'user_' || (g % 1000), 'message ' || g, now() - g * interval '1 second'
             FROM channels c, generate_series(1, 45000) g WHERE c.workspace_id = '{id}' AND c.name <> 'general';
         INSERT INTO read_receipts (channel_id, clerk_user_id, last_read_at)
           SELECT c.id, 'user_' || g, now() FROM channels c, generate_series(1, 1000) g
            WHERE c.workspace_id = '{id}' AND c.name <> 'general';
         INSERT INTO rooms (id, workspace_id, kind, name)
           SELECT gen_random_uuid(), '{id}', (ARRAY['document','code','whiteboard','conference'])[1 + g % 4], 'r' || g
             FROM generate_series(0, 199) g;
         INSERT INTO documents (id, room_id, name) SELECT gen_random_uuid(), r.id, 'd' || g FROM rooms r, generate_series(1, 400) g WHERE r.kind = 'document';
         INSERT INTO code_files (id, room_id, name) SELECT gen_random_uuid(), r.id, 'f' || g FROM rooms r, generate_series(1, 400) g WHERE r.kind = 'code';
         INSERT INTO whiteboards (id, room_id, name) SELECT gen_random_uuid(), r.id, 'w' || g FROM rooms r, generate_series(1, 400) g WHERE r.kind = 'whiteboard';
         INSERT INTO meetings (id, room_id, title, starts_at, ends_at)
           SELECT gen_random_uuid(), r.id, 'm' || g, now(), now() + interval '1 hour' FROM rooms r, generate_series(1, 400) g WHERE r.kind = 'conference';
         ANALYZE;"
    ))
    .await;
    let mut c = env.client().await;
    let started = Instant::now();
    let mut req = env.service(delete_ws("big", 100, "org_big"));
    req.set_timeout(Duration::from_secs(300));
    let r = c.delete_workspace(req).await.unwrap().into_inner();
    let took = started.elapsed();
    let total: i64 = r.deleted_rows.values().sum();
    eprintln!("deleted {total} rows in {took:?}: {:?}", r.deleted_rows);
    assert_eq!(r.outcome(), pb::CommandOutcome::Applied);
    assert_eq!(r.deleted_rows["messages"], 900_000);
    assert_eq!(r.deleted_rows["read_receipts"], 20_000);
    assert_eq!(r.deleted_rows["channels"], 21);
    assert_eq!(r.deleted_rows["rooms"], 200);
    assert_eq!(
        r.deleted_rows["documents"] + r.deleted_rows["code_files"] + r.deleted_rows["whiteboards"],
        60_000
    );
    assert_eq!(r.deleted_rows["meetings"], 20_000);
    assert!(total >= 1_000_000);
    // 50 x 400 items of each of three kinds + 200 rooms.
    assert_eq!(r.liveblocks_rooms_queued, 60_200);
    assert_eq!(env.count("liveblocks_cleanup_jobs").await, 60_200);
    for t in [
        "workspaces",
        "channels",
        "messages",
        "read_receipts",
        "rooms",
        "documents",
        "code_files",
        "whiteboards",
        "meetings",
    ] {
        assert_eq!(env.count(t).await, 0, "{t} has orphans");
    }
}
