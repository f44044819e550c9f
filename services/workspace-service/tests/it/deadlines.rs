//! A caller that gives up (its deadline passes, it resets the stream) drops the handler, but a
//! transaction the handler began still ends with a commit or a rollback: no connection is left
//! idle inside a transaction holding locks, and a retry of the command finds it applied once.

use crate::support;

use service_harness::EntityLock;
use std::time::Duration;
use support::{eventually, start_with};
use vbase_proto::workspace::v1 as pb;

const IDLE_IN_TRANSACTION: &str = "SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()";

#[tokio::test]
async fn a_dropped_handler_never_leaves_a_transaction_open() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let mut c = env.client().await;
    // The command waits behind a concurrent writer of the same organization, inside its
    // transaction (the delivery id is recorded before the lock is taken).
    let writer = EntityLock::hold(env.db.url(), "org:org_a").await;
    let mut req = env.service(support::membership(
        "slow",
        5,
        "org_a",
        "user_1",
        "org:admin",
    ));
    req.set_timeout(Duration::from_millis(300));
    let gave_up = c.upsert_membership(req).await.unwrap_err();
    assert_eq!(gave_up.code(), tonic::Code::Cancelled, "{gave_up:?}");
    drop(writer);
    eventually(
        "the command committed on its own",
        Duration::from_secs(10),
        || async {
            env.scalar("SELECT count(*) FROM processed_events WHERE event_id = 'slow'")
                .await
                == 1
        },
    )
    .await;
    assert_eq!(env.scalar(IDLE_IN_TRANSACTION).await, 0);
    // Svix's retry of the same delivery finds it applied, once.
    let retry = c
        .upsert_membership(env.service(support::membership(
            "slow",
            5,
            "org_a",
            "user_1",
            "org:admin",
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry.outcome(), pb::CommandOutcome::Duplicate);
    let members = c
        .list_members(env.service(pb::ListMembersRequest {
            clerk_org_id: "org_a".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].role, "org:admin");
}

/// `user.deleted` for a user who wrote 1,000,000 messages: answered at once (nothing is
/// rewritten), and the messages read as written by a deleted author.
#[tokio::test]
async fn removing_a_user_with_a_million_messages_answers_at_once() {
    let env = start_with(false).await;
    let ws = env.workspace("org_a").await;
    env.sql(&format!(
        "INSERT INTO channels (id, workspace_id, name) VALUES ('00000000-0000-7000-8000-0000000000c1', '{ws}', 'big');
         INSERT INTO messages (id, workspace_id, channel_id, author_clerk_id, body, created_at)
           SELECT gen_random_uuid(), '{ws}', '00000000-0000-7000-8000-0000000000c1', 'user_prolific', 'm' || g,
                  now() - g * interval '1 millisecond'
             FROM generate_series(1, 1000000) g;
         ANALYZE messages;",
        ws = ws.id
    ))
    .await;
    let mut c = env.client().await;
    let started = std::time::Instant::now();
    let r = c
        .remove_user(env.service(pb::RemoveUserCommand {
            event_id: "del-prolific".into(),
            occurred_at: support::ts(support::T0 + 10),
            clerk_user_id: "user_prolific".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let took = started.elapsed();
    assert_eq!(r.outcome(), pb::CommandOutcome::Applied);
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    let page = c
        .list_messages(env.service(pb::ListMessagesRequest {
            channel_id: "00000000-0000-7000-8000-0000000000c1".into(),
            page_size: 500,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.len(), 500);
    assert!(page.messages.iter().all(|m| m.author_deleted));
    assert_eq!(
        env.scalar("SELECT count(*) FROM messages WHERE author_deleted")
            .await,
        0,
        "no message was rewritten"
    );
}
