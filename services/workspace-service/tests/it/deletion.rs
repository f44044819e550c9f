//! Deletion in two steps (hidden at once, purged in the background in chunks), no orphans,
//! indexed foreign keys, and the durable Liveblocks clean-up against a stand-in that answers
//! like the Liveblocks API.

use crate::support;
use service_runtime::Settled;

use stand_ins::{LiveblocksMode, LiveblocksStandIn};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use support::{Env, SECRET, delete_ws, eventually, start_with, ts};
use vbase_proto::workspace::v1 as pb;
use workspace_service::workers::liveblocks::{CleanupSettings, CleanupWorker, HttpLiveblocks};
use workspace_service::workers::purge::{PurgeSettings, PurgeWorker};

const TABLES: &[&str] = &[
    "workspaces",
    "channels",
    "messages",
    "read_receipts",
    "rooms",
    "documents",
    "code_files",
    "whiteboards",
    "meetings",
    "memberships",
    "create_requests",
];

/// Builds content in `org` through the API (each create with a request id); returns the
/// Liveblocks room ids it should produce.
async fn populate(env: &Env, org: &str) -> BTreeSet<String> {
    env.workspace(org).await;
    let mut c = env.client().await;
    let mut expected = BTreeSet::new();
    c.upsert_membership(env.service(support::membership(
        &format!("m-{org}"),
        1,
        org,
        "user_1",
        "org:member",
    )))
    .await
    .unwrap();
    let ch = c
        .create_channel(env.member(
            "user_1",
            org,
            pb::CreateChannelRequest {
                clerk_org_id: org.into(),
                name: "dev".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    for i in 0..3 {
        c.post_message(env.member(
            "user_1",
            org,
            pb::PostMessageRequest {
                channel_id: ch.id.clone(),
                body: format!("m{i}"),
                author_clerk_id: String::new(),
                request_id: uuid::Uuid::new_v4().to_string(),
            },
        ))
        .await
        .unwrap();
    }
    c.mark_channel_read(env.member(
        "user_1",
        org,
        pb::MarkChannelReadRequest {
            channel_id: ch.id.clone(),
            message_id: String::new(),
        },
    ))
    .await
    .unwrap();
    for (kind, item) in [
        (pb::RoomKind::Document, Some(pb::ItemKind::Document)),
        (pb::RoomKind::Code, Some(pb::ItemKind::CodeFile)),
        (pb::RoomKind::Whiteboard, Some(pb::ItemKind::Whiteboard)),
        (pb::RoomKind::Conference, None),
    ] {
        let room = c
            .create_room(env.member(
                "user_1",
                org,
                pb::CreateRoomRequest {
                    clerk_org_id: org.into(),
                    kind: kind.into(),
                    name: "r".into(),
                    request_id: uuid::Uuid::new_v4().to_string(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .room
            .unwrap();
        expected.insert(room.liveblocks_room_id.clone());
        match item {
            Some(k) => {
                for n in 0..2 {
                    let it = c
                        .create_room_item(env.member(
                            "user_1",
                            org,
                            pb::CreateRoomItemRequest {
                                room_id: room.id.clone(),
                                kind: k.into(),
                                name: format!("i{n}"),
                                language: String::new(),
                                request_id: uuid::Uuid::new_v4().to_string(),
                            },
                        ))
                        .await
                        .unwrap()
                        .into_inner()
                        .item
                        .unwrap();
                    expected.insert(it.liveblocks_room_id);
                }
            }
            None => {
                c.schedule_meeting(env.member(
                    "user_1",
                    org,
                    pb::ScheduleMeetingRequest {
                        room_id: room.id.clone(),
                        title: "m".into(),
                        starts_at: ts(2_000_000_000),
                        ends_at: ts(2_000_000_060),
                        request_id: uuid::Uuid::new_v4().to_string(),
                    },
                ))
                .await
                .unwrap();
            }
        }
    }
    expected
}

async fn delete(env: &Env, event: &str, org: &str) -> pb::DeleteWorkspaceResponse {
    let mut c = env.client().await;
    c.delete_workspace(env.service(delete_ws(event, 100, org)))
        .await
        .unwrap()
        .into_inner()
}

async fn all_deleted(live: &LiveblocksStandIn, expected: &BTreeSet<String>) {
    eventually(
        "every Liveblocks room deleted",
        Duration::from_secs(20),
        || async { live.deleted().iter().cloned().collect::<BTreeSet<_>>() == *expected },
    )
    .await;
}

#[tokio::test]
async fn a_deleted_workspace_is_gone_at_once_and_purged_to_the_last_row() {
    let env = start_with(true).await;
    let expected = populate(&env, "org_a").await;
    let keep = populate(&env, "org_b").await;
    let before: Vec<i64> = futures_counts(&env).await;
    let mut c = env.client().await;
    let channel = c
        .list_channels(env.service(pb::ListChannelsRequest {
            clerk_org_id: "org_a".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .channels
        .remove(0);
    // Hold the purge back: the answers below must not depend on how far it got.
    let blocker = env.block_purges().await;
    let log_of = |org: &str| {
        format!(
            "SELECT count(*) FROM change_log c JOIN workspaces w ON w.id = c.workspace_id WHERE w.clerk_org_id = '{org}'"
        )
    };
    let (log_a, log_b) = (
        env.scalar(&log_of("org_a")).await,
        env.scalar(&log_of("org_b")).await,
    );
    assert!(log_a > 1, "org_a's changes are in the change log");
    let r = delete(&env, "d1", "org_a").await;
    assert_eq!(r.outcome(), pb::CommandOutcome::Applied);
    assert!(r.purge_queued);
    let get = c
        .get_workspace(env.member(
            "user_1",
            "org_a",
            pb::GetWorkspaceRequest {
                clerk_org_id: "org_a".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        get.code(),
        tonic::Code::NotFound,
        "as for a workspace never synced"
    );
    let never = c
        .get_workspace(env.member(
            "user_1",
            "org_never",
            pb::GetWorkspaceRequest {
                clerk_org_id: "org_never".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(get.message(), never.message().replace("org_never", "org_a"));
    let list = c
        .list_messages(env.member(
            "user_1",
            "org_a",
            pb::ListMessagesRequest {
                channel_id: channel.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(list.code(), tonic::Code::PermissionDenied);
    let post = c
        .post_message(env.service(pb::PostMessageRequest {
            channel_id: channel.id.clone(),
            body: "late".into(),
            author_clerk_id: "user_1".into(),
            request_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(post.code(), tonic::Code::NotFound);
    // Late events bring nothing back.
    let late = c
        .upsert_workspace(env.service(support::upsert_ws("late-up", 500, "org_a", "Back")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(late.outcome(), pb::CommandOutcome::Stale);
    let late_member = c
        .upsert_membership(env.service(support::membership(
            "late-m",
            500,
            "org_a",
            "user_9",
            "org:member",
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(late_member.outcome(), pb::CommandOutcome::Stale);
    assert_eq!(
        futures_counts(&env).await[2],
        before[2],
        "nothing purged yet"
    );
    drop(blocker);

    env.purges_done().await;
    // The change log keeps org_b's entries and, of org_a's, only the last: the
    // `workspace_deleted` its watchers read last (retention removes it).
    assert_eq!(env.scalar(&log_of("org_b")).await, log_b);
    assert_eq!(
        env.scalar(
            "SELECT count(*) FROM change_log WHERE workspace_id NOT IN (SELECT id FROM workspaces)"
        )
        .await,
        1
    );
    // Exactly org_a's rows are gone: what is left is org_b's, i.e. half of before.
    let after = futures_counts(&env).await;
    for ((t, b), a) in TABLES.iter().zip(&before).zip(&after) {
        assert_eq!(*a * 2, *b, "{t}: {b} before, {a} after");
    }
    all_deleted(&env.liveblocks, &expected).await;
    assert_eq!(
        env.liveblocks.deleted().len(),
        expected.len(),
        "a room was deleted twice"
    );
    assert!(keep.is_disjoint(&env.liveblocks.deleted().into_iter().collect()));
    eventually("queue drained", Duration::from_secs(10), || async {
        env.count("liveblocks_cleanup_jobs").await == 0
    })
    .await;
    // A repeated delete changes nothing and queues nothing.
    let again = delete(&env, "d2", "org_a").await;
    assert_eq!(again.outcome(), pb::CommandOutcome::Stale);
    assert!(!again.purge_queued);
    assert_eq!(env.count("purge_jobs").await, 0);
}

/// A room id that is in the queue already (the API cannot cause it: ids are generated by the
/// service, and a row is deleted once) does not stop the purge: every row still goes, and
/// every room is queued exactly once.
#[tokio::test]
async fn a_room_queued_already_does_not_stop_the_purge() {
    let env = start_with(false).await;
    let expected = populate(&env, "org_a").await;
    let pick = |kind: &str| {
        expected
            .iter()
            .find(|r| r.starts_with(kind))
            .unwrap()
            .clone()
    };
    let (doc, room) = (pick("doc:"), pick("room:"));
    env.sql(&format!(
        "INSERT INTO liveblocks_cleanup_jobs (room_id) VALUES ('{doc}'), ('{room}')"
    ))
    .await;
    let r = delete(&env, "d1", "org_a").await;
    assert_eq!(r.outcome(), pb::CommandOutcome::Applied);
    env.purges_done().await;
    assert_eq!(
        env.queued_rooms().await,
        expected.iter().cloned().collect::<Vec<_>>()
    );
    env.assert_only_bookkeeping_left().await;
}

/// Messages in every shape of time are purged in windows of at most twice the chunk's rows
/// (1,000 in these tests): thousands at one instant, a century-long gap, messages in the
/// year 1000, in 4000 BC and in 2200, an empty channel. Every message goes, each delete statement
/// (counted by a statement trigger) takes at most 2,000, none goes by its channel's cascade
/// (the channels wait for the messages), and a second workspace is untouched.
#[tokio::test]
async fn messages_of_any_spread_in_time_go_in_bounded_windows() {
    let env = start_with(false).await;
    let ws = env.workspace("org_w").await;
    let other = env.workspace("org_keep").await;
    env.sql(&format!(
        "INSERT INTO channels (id, workspace_id, name) VALUES
           ('00000000-0000-4000-8000-00000000000a', '{w}', 'burst'),
           ('00000000-0000-4000-8000-00000000000b', '{w}', 'spread'),
           ('00000000-0000-4000-8000-00000000000c', '{w}', 'empty'),
           ('00000000-0000-4000-8000-00000000000d', '{k}', 'kept');
         -- 4,500 at one instant: more than one window may take.
         INSERT INTO messages (id, workspace_id, channel_id, author_clerk_id, body, created_at)
           SELECT gen_random_uuid(), '{w}', '00000000-0000-4000-8000-00000000000a', 'user_1', 'b', '2020-01-01T00:00:00Z'
             FROM generate_series(1, 4500);
         -- 3,000 over an hour, then nothing for a century, a few old ones, and two outliers.
         INSERT INTO messages (id, workspace_id, channel_id, author_clerk_id, body, created_at)
           SELECT gen_random_uuid(), '{w}', '00000000-0000-4000-8000-00000000000b', 'user_1', 's',
                  '2026-06-01T00:00:00Z'::timestamptz + g * interval '1.2 seconds'
             FROM generate_series(1, 3000) g;
         INSERT INTO messages (id, workspace_id, channel_id, author_clerk_id, body, created_at) VALUES
           (gen_random_uuid(), '{w}', '00000000-0000-4000-8000-00000000000b', 'user_1', 'o', '1900-01-01T00:00:00Z'),
           (gen_random_uuid(), '{w}', '00000000-0000-4000-8000-00000000000b', 'user_1', 'o', '1000-01-01T00:00:00Z'),
           (gen_random_uuid(), '{w}', '00000000-0000-4000-8000-00000000000b', 'user_1', 'o', '4000-01-01 00:00:00+00 BC'),
           (gen_random_uuid(), '{w}', '00000000-0000-4000-8000-00000000000b', 'user_1', 'o', '2200-01-01T00:00:00Z');
         INSERT INTO messages (id, workspace_id, channel_id, author_clerk_id, body, created_at)
           SELECT gen_random_uuid(), '{k}', '00000000-0000-4000-8000-00000000000d', 'user_1', 'k', now() - g * interval '1 second'
             FROM generate_series(1, 50) g;
         CREATE TABLE window_audit (n bigint, query text DEFAULT current_query());
         CREATE FUNCTION audit_window() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO window_audit (n) SELECT count(*) FROM gone; RETURN NULL; END $$;
         CREATE TRIGGER audit_window AFTER DELETE ON messages REFERENCING OLD TABLE AS gone
           FOR EACH STATEMENT EXECUTE FUNCTION audit_window();",
        w = ws.id,
        k = other.id
    ))
    .await;
    delete(&env, "d1", "org_w").await;
    env.purges_done().await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM messages").await,
        50,
        "the other workspace's messages are all that is left"
    );
    assert_eq!(
        env.scalar("SELECT sum(n)::bigint FROM window_audit").await,
        4500 + 3000 + 4
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM window_audit WHERE n > 0 AND query NOT LIKE '%DELETE FROM messages%'")
            .await,
        0,
        "no message went by its channel's cascade (the channels wait for the messages)"
    );
    let biggest = env.scalar("SELECT max(n) FROM window_audit").await;
    assert!(biggest <= 2000, "a delete took {biggest} messages");
    assert!(
        env.scalar("SELECT count(*) FROM window_audit WHERE n > 0")
            .await
            >= 4,
        "the purge went in several windows"
    );
    env.sql("DROP TABLE window_audit").await;
}

/// A chunk that fails part way (a trigger refuses one row) changes nothing of that chunk, the
/// job records the error and is retried, and once the cause is gone the purge completes with
/// every room queued once.
#[tokio::test]
async fn a_failed_chunk_changes_nothing_and_is_retried() {
    let env = start_with(false).await;
    let expected = populate(&env, "org_a").await;
    env.sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN IF OLD.name = 'i1' THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN OLD; END $$;
         CREATE TRIGGER refuse BEFORE DELETE ON code_files FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await;
    delete(&env, "d1", "org_a").await;
    eventually("the failure recorded", Duration::from_secs(20), || async {
        env.scalar("SELECT count(*) FROM purge_jobs WHERE last_error LIKE '%injected failure%' AND attempts >= 2")
            .await
            == 1
    })
    .await;
    // The failing chunk (both code files: the chunk holds up to 1000 rows) is untouched, and
    // none of its rooms was queued; the pieces beside it (another lane's) go through.
    assert_eq!(env.count("code_files").await, 2);
    eventually("the documents purged", Duration::from_secs(20), || async {
        env.count("documents").await == 0
    })
    .await;
    let queued = env.queued_rooms().await;
    assert!(queued.iter().all(|r| !r.starts_with("code:")), "{queued:?}");
    assert!(queued.iter().any(|r| r.starts_with("doc:")), "{queued:?}");
    assert_eq!(env.count("code_files").await, 2);
    env.sql("DROP TRIGGER refuse ON code_files").await;
    env.purges_done().await;
    assert_eq!(
        env.queued_rooms().await,
        expected.iter().cloned().collect::<Vec<_>>()
    );
    env.assert_only_bookkeeping_left().await;
}

/// A chunk that meets a read-only server (SQLSTATE 25006, raised here by a trigger; a sequence
/// counts the tries, outside the rolled-back chunks) is tried again without spending an
/// attempt, so a long failover never makes the purge dead; once writes are taken it completes.
#[tokio::test]
async fn a_chunk_that_meets_a_read_only_server_spends_no_attempt() {
    let env = start_with(false).await;
    populate(&env, "org_a").await;
    env.sql(
        "CREATE SEQUENCE read_only_tries;
         CREATE FUNCTION read_only() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN PERFORM nextval('read_only_tries');
                 RAISE EXCEPTION 'simulated read-only server' USING ERRCODE = '25006'; END $$;
         CREATE TRIGGER read_only BEFORE DELETE ON code_files FOR EACH ROW EXECUTE FUNCTION read_only();",
    )
    .await;
    delete(&env, "d1", "org_a").await;
    eventually("three tries", Duration::from_secs(20), || async {
        env.scalar("SELECT last_value FROM read_only_tries").await >= 3
    })
    .await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM purge_jobs WHERE dead_at IS NULL AND attempts <= 1")
            .await,
        1,
        "the read-only answers were counted as attempts"
    );
    env.sql("DROP TRIGGER read_only ON code_files; DROP FUNCTION read_only(); DROP SEQUENCE read_only_tries")
        .await;
    env.purges_done().await;
    env.assert_only_bookkeeping_left().await;
}

/// Two purge workers beside the service's own, on four jobs with one-row chunks: every chunk
/// of a job is done under one lease token (an audit trigger records the token of each chunk),
/// every row goes, and every room is queued once.
#[tokio::test]
async fn several_workers_never_hold_one_job_at_once() {
    let env = start_with(false).await;
    let mut expected = BTreeSet::new();
    let orgs = ["org_a", "org_b", "org_c", "org_d"];
    for org in orgs {
        expected.extend(populate(&env, org).await);
    }
    env.sql(
        "CREATE TABLE purge_audit (target_id uuid, lease_token uuid);
         CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO purge_audit VALUES (NEW.target_id, NEW.lease_token); RETURN NEW; END $$;
         CREATE TRIGGER audit AFTER UPDATE OF rows_purged ON purge_jobs FOR EACH ROW EXECUTE FUNCTION audit();",
    )
    .await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for _ in 0..2 {
        let pool =
            service_runtime::db::build_pool(env.db.url(), 4, workspace_service::PLANS).unwrap();
        let worker = PurgeWorker::new(
            pool,
            PurgeSettings {
                chunk_rows: 1,
                concurrency: 4,
                poll: Duration::from_millis(10),
                lease: Duration::from_secs(30),
                ..Default::default()
            },
            workspace_service::metrics::Metrics::default(),
            service_runtime::Lifecycle::default(),
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Notify::new()),
        );
        let mut rx = stop_rx.clone();
        workers.push(tokio::spawn(worker.run(async move {
            let _ = rx.wait_for(|s| *s).await;
        })));
    }
    for (i, org) in orgs.iter().enumerate() {
        delete(&env, &format!("d{i}"), org).await;
    }
    env.purges_done().await;
    let _ = stop_tx.send(true);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        env.scalar("SELECT count(DISTINCT target_id) FROM purge_audit")
            .await,
        4,
        "every job purged in chunks"
    );
    assert_eq!(
        env.scalar(
            "SELECT count(*) FROM (SELECT target_id FROM purge_audit GROUP BY target_id
              HAVING count(DISTINCT lease_token) > 1) more"
        )
        .await,
        0,
        "a job was purged under more than one lease"
    );
    env.sql("DROP TABLE purge_audit").await;
    env.assert_only_bookkeeping_left().await;
    assert_eq!(
        env.queued_rooms().await,
        expected.iter().cloned().collect::<Vec<_>>()
    );
}

async fn futures_counts(env: &Env) -> Vec<i64> {
    let mut out = Vec::new();
    for t in TABLES {
        out.push(env.count(t).await);
    }
    out
}

#[tokio::test]
async fn every_foreign_key_is_indexed() {
    let env = start_with(false).await;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName, Debug)]
    struct Fk {
        #[diesel(sql_type = diesel::sql_types::Text)]
        fk: String,
    }
    let mut conn = env.conn().await;
    // Foreign keys whose columns are not the leading columns of some index.
    let unindexed: Vec<Fk> = diesel::sql_query(
        "SELECT c.conrelid::regclass::text || '.' || c.conname AS fk
           FROM pg_constraint c
          WHERE c.contype = 'f'
            AND NOT EXISTS (
                SELECT 1 FROM pg_index i
                 WHERE i.indrelid = c.conrelid
                   AND (i.indkey::int2[])[0:array_length(c.conkey, 1) - 1] @> c.conkey
                   AND (i.indkey::int2[])[0:array_length(c.conkey, 1) - 1] <@ c.conkey)",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let names: Vec<&str> = unindexed.iter().map(|f| f.fk.as_str()).collect();
    assert!(names.is_empty(), "foreign keys without an index: {names:?}");
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let n: N = diesel::sql_query("SELECT count(*) AS n FROM pg_constraint WHERE contype = 'f'")
        .one(&mut conn)
        .await
        .unwrap();
    assert!(
        n.n >= 8,
        "expected the cascade's foreign keys, found {}",
        n.n
    );
}

#[tokio::test]
async fn liveblocks_down_pauses_the_clean_up_without_spending_attempts_then_it_resumes() {
    let env = start_with(true).await;
    env.liveblocks.set_mode(LiveblocksMode::Down);
    let mut expected = populate(&env, "org_a").await;
    delete(&env, "d1", "org_a").await;
    env.purges_done().await;
    // A backlog far bigger than the worker's slots (8) and what it leases ahead (8).
    let backlog: Vec<String> = (0..300).map(|i| format!("doc:backlog-{i:03}")).collect();
    env.sql(&format!(
        "INSERT INTO liveblocks_cleanup_jobs (room_id) SELECT unnest(ARRAY['{}'])",
        backlog.join("','")
    ))
    .await;
    expected.extend(backlog);
    // A few calls fail, the worker pauses, and a probe after each pause finds it still down.
    eventually("paused", Duration::from_secs(10), || async {
        env.metric("liveblocks_cleanup_paused").await == Some(1.0)
    })
    .await;
    let paused_at = env.liveblocks.requests();
    eventually("probing", Duration::from_secs(10), || async {
        env.liveblocks.requests() >= paused_at + 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = env.liveblocks.requests();
    assert!(
        calls < 40,
        "{calls} calls for {} rooms while Liveblocks was down: the worker did not pause",
        expected.len()
    );
    // Each call spent one attempt, and nothing else did: the jobs leased ahead were given back.
    eventually("one attempt per call", Duration::from_secs(10), || async {
        let spent = env
            .scalar("SELECT COALESCE(sum(attempts), 0)::bigint FROM liveblocks_cleanup_jobs")
            .await;
        spent as u64 == env.liveblocks.requests()
    })
    .await;
    assert!(env.liveblocks.deleted().is_empty());
    assert_eq!(
        env.count("liveblocks_cleanup_jobs").await,
        expected.len() as i64
    );
    env.liveblocks.set_mode(LiveblocksMode::Up);
    all_deleted(&env.liveblocks, &expected).await;
    eventually("queue drained", Duration::from_secs(10), || async {
        env.count("liveblocks_cleanup_jobs").await == 0
    })
    .await;
    assert_eq!(
        env.liveblocks.deleted().len(),
        expected.len(),
        "a room was deleted more than once"
    );
    assert_eq!(env.metric("liveblocks_cleanup_paused").await, Some(0.0));
}

#[tokio::test]
async fn rate_limits_are_honoured_with_retry_after() {
    let env = start_with(true).await;
    env.liveblocks.set_mode(LiveblocksMode::RateLimited {
        retry_after_secs: 3,
    });
    let mut c = env.client().await;
    env.workspace("org_a").await;
    let room = c
        .create_room(env.service(pb::CreateRoomRequest {
            clerk_org_id: "org_a".into(),
            kind: pb::RoomKind::Conference.into(),
            name: "r".into(),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    c.delete_room(env.service(pb::DeleteRoomRequest {
        room_id: room.id.clone(),
    }))
    .await
    .unwrap();
    eventually("first attempt", Duration::from_secs(10), || async {
        env.liveblocks.requests() >= 1
    })
    .await;
    let first = tokio::time::Instant::now();
    env.liveblocks.set_mode(LiveblocksMode::Up);
    all_deleted(&env.liveblocks, &[room.liveblocks_room_id.clone()].into()).await;
    // The backoff without Retry-After would be ~50 ms; the server asked for 3 s.
    assert!(
        first.elapsed() >= Duration::from_millis(2500),
        "retried after {:?}",
        first.elapsed()
    );
    assert_eq!(env.liveblocks.requests(), 2);
}

async fn enqueue_rooms(env: &Env, n: usize) -> BTreeSet<String> {
    let rooms: BTreeSet<String> = (0..n).map(|i| format!("doc:{}", uuid_for(i))).collect();
    let values = rooms
        .iter()
        .map(|r| format!("('{r}')"))
        .collect::<Vec<_>>()
        .join(",");
    env.sql(&format!(
        "INSERT INTO liveblocks_cleanup_jobs (room_id) VALUES {values}"
    ))
    .await;
    rooms
}

fn uuid_for(i: usize) -> String {
    format!("00000000-0000-7000-8000-{i:012}")
}

fn worker(
    env: &Env,
    live: &LiveblocksStandIn,
    secret: &str,
    settings: CleanupSettings,
) -> CleanupWorker {
    let pool = service_runtime::db::build_pool(env.db.url(), 4, workspace_service::PLANS).unwrap();
    let api = HttpLiveblocks::new(&live.base_url(), secret, Duration::from_secs(10)).unwrap();
    CleanupWorker::new(
        pool,
        Arc::new(api),
        settings,
        workspace_service::metrics::Metrics::default(),
        Arc::new(tokio::sync::Notify::new()),
    )
}

fn fast() -> CleanupSettings {
    CleanupSettings {
        concurrency: 8,
        lease: Duration::from_secs(30),
        poll: Duration::from_millis(20),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        // One round per room (the second deletion has its own test).
        sweep_after: None,
        ..CleanupSettings::default()
    }
}

#[tokio::test]
async fn two_workers_never_send_the_same_job_at_once() {
    let env = start_with(false).await;
    env.liveblocks.set_latency(Duration::from_millis(15));
    let rooms = enqueue_rooms(&env, 300).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let a =
        tokio::spawn(worker(&env, &env.liveblocks, SECRET, fast()).run(stopped(stop_rx.clone())));
    let b = tokio::spawn(worker(&env, &env.liveblocks, SECRET, fast()).run(stopped(stop_rx)));
    all_deleted(&env.liveblocks, &rooms).await;
    let _ = stop_tx.send(true);
    a.await.unwrap();
    b.await.unwrap();
    assert_eq!(env.liveblocks.overlapping_same_room(), 0);
    assert_eq!(env.liveblocks.deleted().len(), 300);
    assert_eq!(
        env.liveblocks.requests(),
        300,
        "every job sent exactly once"
    );
    assert!(
        env.liveblocks.peak_in_flight() <= 16,
        "concurrency bound exceeded: {}",
        env.liveblocks.peak_in_flight()
    );
    assert!(
        env.liveblocks.peak_in_flight() > 8,
        "both workers should have worked in parallel"
    );
    assert_eq!(env.count("liveblocks_cleanup_jobs").await, 0);
}

#[tokio::test]
async fn a_worker_killed_mid_job_leaves_it_to_be_retried() {
    let env = start_with(false).await;
    env.liveblocks.set_latency(Duration::from_secs(3));
    let rooms = enqueue_rooms(&env, 1).await;
    let short_lease = CleanupSettings {
        lease: Duration::from_secs(1),
        ..fast()
    };
    let crashed = tokio::spawn(
        worker(&env, &env.liveblocks, SECRET, short_lease).run(std::future::pending()),
    );
    eventually("job in flight", Duration::from_secs(10), || async {
        env.liveblocks.requests() == 1
    })
    .await;
    crashed.abort();
    let _ = crashed.await;
    env.liveblocks.set_latency(Duration::ZERO);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let survivor = tokio::spawn(worker(&env, &env.liveblocks, SECRET, short_lease).run(
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    eventually(
        "job retried and finished",
        Duration::from_secs(15),
        || async { env.count("liveblocks_cleanup_jobs").await == 0 },
    )
    .await;
    let _ = stop_tx.send(true);
    survivor.await.unwrap();
    assert_eq!(
        env.liveblocks
            .deleted()
            .into_iter()
            .collect::<BTreeSet<_>>(),
        rooms
    );
    assert_eq!(env.liveblocks.deleted().len(), 1);
    assert!(
        env.liveblocks.requests() >= 2,
        "the job must have been sent again"
    );
}

/// Liveblocks rate-limiting the key for longer than a job's attempts last never makes the job
/// dead: a 429 says when to come back, nothing about the room.
#[tokio::test]
async fn rate_limits_spend_no_attempts_however_long_they_last() {
    let env = start_with(false).await;
    env.liveblocks.set_mode(LiveblocksMode::RateLimited {
        retry_after_secs: 1,
    });
    let rooms = enqueue_rooms(&env, 1).await;
    let settings = CleanupSettings {
        max_attempts: 2,
        ..fast()
    };
    let w = worker(&env, &env.liveblocks, SECRET, settings);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let t = tokio::spawn(w.run(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    eventually("four 429s", Duration::from_secs(15), || async {
        env.liveblocks.requests() >= 4
    })
    .await;
    assert_eq!(
        env.count("liveblocks_cleanup_jobs WHERE dead_at IS NULL AND attempts = 0")
            .await,
        1,
        "a 429 spent an attempt or made the job dead"
    );
    env.liveblocks.set_mode(LiveblocksMode::Up);
    all_deleted(&env.liveblocks, &rooms).await;
    let _ = stop_tx.send(true);
    t.await.unwrap();
}

#[tokio::test]
async fn a_rejected_key_makes_jobs_dead_and_keeps_them() {
    let env = start_with(false).await;
    enqueue_rooms(&env, 3).await;
    let w = worker(&env, &env.liveblocks, "sk_wrong", fast());
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let t = tokio::spawn(w.run(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    eventually("every job dead", Duration::from_secs(10), || async {
        env.count("liveblocks_cleanup_jobs WHERE dead_at IS NOT NULL")
            .await
            == 3
    })
    .await;
    // Dead jobs are not tried again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(true);
    t.await.unwrap();
    assert_eq!(env.liveblocks.requests(), 3, "one attempt each");
    assert!(env.liveblocks.deleted().is_empty());
    assert_eq!(
        env.count("liveblocks_cleanup_jobs WHERE last_error LIKE '403 INVALID_SECRET_KEY: LIVEBLOCKS_SECRET_KEY%'")
            .await,
        3
    );
}

/// A purge its service stops in the middle of is handed back without spending an attempt:
/// rolling restarts never make a purge dead.
#[tokio::test]
async fn a_purge_stopped_with_its_service_spends_no_attempt() {
    let env = start_with(false).await;
    populate(&env, "org_stop").await;
    let blocked = env.block_purges().await;
    assert_eq!(
        delete(&env, "d1", "org_stop").await.outcome(),
        pb::CommandOutcome::Applied
    );
    // The purge waits at the messages (a lane or two), its attempt counted by its lease.
    eventually("the purge waits", Duration::from_secs(10), || async {
        env.scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
            > 0
    })
    .await;
    assert_eq!(
        env.scalar("SELECT attempts::bigint FROM purge_jobs").await,
        1
    );
    let Env { server, db, .. } = env;
    let addr = server.addr;
    let stopped = tokio::spawn(server.stop());
    // Drained (no call is open): the port closes, the workers are told to stop.
    eventually(
        "the server stopped accepting",
        Duration::from_secs(10),
        || async { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(blocked);
    stopped.await.unwrap().unwrap();
    let url = db.url();
    assert_eq!(
        service_harness::scalar(
            url,
            "SELECT count(*) FROM purge_jobs WHERE last_error LIKE 'paused%' AND dead_at IS NULL"
        )
        .await,
        1,
        "the purge was handed back, unfinished"
    );
    assert_eq!(
        service_harness::scalar(url, "SELECT attempts::bigint FROM purge_jobs").await,
        0,
        "the stop spent no attempt"
    );
}

/// A channel someone else holds when the purge comes to it (a write being refused took its key
/// share) is waited for, not taken as gone: the purge finishes in its first attempt, without the
/// workspace's own delete failing on the channel's foreign key.
#[tokio::test]
async fn a_channel_held_by_a_refused_write_is_waited_for() {
    let env = start_with(false).await;
    let ch = crate::watch::channel(&env, "org_held", "held").await;
    let held = env
        .hold(&format!(
            "SELECT 1 FROM channels WHERE id = '{ch}' FOR KEY SHARE"
        ))
        .await;
    assert_eq!(
        delete(&env, "d1", "org_held").await.outcome(),
        pb::CommandOutcome::Applied
    );
    eventually(
        "the purge waits for the channel",
        Duration::from_secs(10),
        || async {
            env.scalar(
                "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'
                AND query LIKE '%FROM channels%'",
            )
            .await
                > 0
        },
    )
    .await;
    assert_eq!(
        env.scalar("SELECT attempts::bigint FROM purge_jobs").await,
        1,
        "still its first attempt"
    );
    drop(held);
    env.purges_done().await;
    env.assert_only_bookkeeping_left().await;
}

/// Messages and read receipts of channel `channel` of workspace `ws`, inserted directly and
/// quickly: the messages' ids ascending, as the service's are, and without the foreign keys'
/// per-row checks (the rows reference the channel and its workspace).
async fn fill_channel(env: &Env, ws: &str, channel: &str, messages: u32, receipts: u32) {
    env.sql(&format!(
        "BEGIN;
         SET LOCAL session_replication_role = replica;
         INSERT INTO messages (id, workspace_id, channel_id, author_clerk_id, body, created_at)
           SELECT overlay('{channel}' placing lpad(to_hex(g), 12, '0') from 25 for 12)::uuid,
                  '{ws}', '{channel}', 'user_b', 'm' || g,
                  now() - interval '1 day' + g * interval '1 millisecond'
             FROM generate_series(1, {messages}) g;
         INSERT INTO read_receipts (workspace_id, channel_id, clerk_user_id, last_read_at)
           SELECT '{ws}', '{channel}', 'user_r' || g, now() - interval '1 hour'
             FROM generate_series(1, {receipts}) g;
         COMMIT;
         ANALYZE messages, read_receipts;"
    ))
    .await;
}

/// A channel whose messages one statement cannot delete within `DB_STATEMENT_TIMEOUT_MS` is
/// deleted at once: from the answer on it is gone from every RPC (listing, posting, reading,
/// marking read, watching), its live watch ends and its name is free; the
/// purge then deletes its messages, receipts and row, and nothing of the workspace's other
/// channel.
#[tokio::test]
async fn a_channel_too_big_to_delete_in_one_statement_is_deleted_at_once_and_purged() {
    use tonic::Code;
    // 400,000 messages: one statement deleted 150,000 in about 0.17 s on a 2-core test
    // machine, so these need over twice the timeout. Chunks of 5,000 rows (deletes of up to 10,000) take
    // a few milliseconds each.
    let env = support::start_custom(false, |c| {
        c.service.db.db_statement_timeout_ms = 200;
        c.watch.watch_access_recheck_secs = 1;
        c.purge.purge_chunk_rows = 5_000;
    })
    .await;
    let org = "org_big";
    let big = crate::watch::channel(&env, org, "big").await;
    let kept = crate::watch::channel(&env, org, "kept").await;
    let ws = env.workspace(org).await.id;
    crate::watch::post(&env, org, &kept, "stays").await;
    fill_channel(&env, &ws, &big, 400_000, 1_000).await;
    let mut c = env.client().await;
    let mut watching = crate::watch::watch(&env, "user_a", org, &big, "").await;
    while crate::watch::what(&crate::watch::next(&mut watching).await) != "caught up" {}

    let list = |c: &mut pb::workspace_service_client::WorkspaceServiceClient<
        tonic::transport::Channel,
    >| {
        let req = env.member(
            "user_a",
            org,
            pb::ListChannelsRequest {
                clerk_org_id: org.into(),
                ..Default::default()
            },
        );
        let mut c = c.clone();
        async move { c.list_channels(req).await.unwrap().into_inner().channels }
    };
    let ids = |l: Vec<pb::Channel>| l.into_iter().map(|ch| ch.id).collect::<Vec<_>>();
    let live = ids(list(&mut c).await);
    assert!(live.contains(&big));
    let others: Vec<_> = live.iter().filter(|id| **id != big).cloned().collect();

    let started = std::time::Instant::now();
    let answer = c
        .delete_channel(env.admin(
            "user_a",
            org,
            pb::DeleteChannelRequest {
                channel_id: big.clone(),
            },
        ))
        .await;
    let took = started.elapsed();
    let deleted = answer
        .unwrap_or_else(|e| panic!("the deletion is answered, in {took:?}: {e:?}"))
        .into_inner();
    // Holds the channel's row (its purge deletes it last, long after these checks): what
    // follows meets a hidden channel, not a purged one.
    let row = env
        .hold(&format!(
            "SELECT 1 FROM channels WHERE id = '{big}' FOR KEY SHARE"
        ))
        .await;
    assert!(took < Duration::from_secs(2), "answered in {took:?}");
    assert_eq!(
        deleted.messages_deleted, 100_000,
        "the messages it held, counted up to the bound"
    );

    assert_eq!(
        ids(list(&mut c).await),
        others,
        "listed: the other channels only"
    );
    let posted = c
        .post_message(env.member(
            "user_a",
            org,
            pb::PostMessageRequest {
                channel_id: big.clone(),
                body: "too late".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(posted.code(), Code::PermissionDenied, "{posted:?}");
    let posted = c
        .post_message(env.service(pb::PostMessageRequest {
            channel_id: big.clone(),
            body: "too late".into(),
            author_clerk_id: "user_a".into(),
            request_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(posted.code(), Code::NotFound, "{posted:?}");
    let listed = c
        .list_messages(env.member(
            "user_a",
            org,
            pb::ListMessagesRequest {
                channel_id: big.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(listed.code(), Code::PermissionDenied, "{listed:?}");
    let read = c
        .mark_channel_read(env.member(
            "user_a",
            org,
            pb::MarkChannelReadRequest {
                channel_id: big.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(read.code(), Code::PermissionDenied, "{read:?}");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watching.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the live watch ends")
    .unwrap_err();
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    let reopened = c
        .watch_channel(env.member(
            "user_a",
            org,
            pb::WatchChannelRequest {
                channel_id: big.clone(),
                resume_token: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(reopened.code(), Code::PermissionDenied, "{reopened:?}");
    let again = crate::watch::channel(&env, org, "big").await;
    assert_ne!(again, big);
    let mut renewed = others.clone();
    renewed.push(again.clone());
    assert_eq!(ids(list(&mut c).await), renewed, "the name is free at once");
    assert_eq!(
        env.scalar(&format!(
            "SELECT count(*) FROM channels WHERE id = '{big}' AND deleted_at IS NOT NULL"
        ))
        .await,
        1,
        "the checks met the channel hidden, its row not yet purged"
    );

    drop(row);
    env.purges_done().await;
    for (table, column) in [
        ("messages", "channel_id"),
        ("read_receipts", "channel_id"),
        ("channels", "id"),
    ] {
        assert_eq!(
            env.scalar(&format!(
                "SELECT count(*) FROM {table} WHERE {column} = '{big}'"
            ))
            .await,
            0,
            "{table} of the deleted channel"
        );
    }
    assert_eq!(
        env.scalar(&format!(
            "SELECT count(*) FROM messages WHERE channel_id = '{kept}'"
        ))
        .await,
        1,
        "the other channel keeps its message"
    );
    assert_eq!(env.count("channels").await, renewed.len() as i64);
}

/// A workspace deleted while the purge of one of its channels is queued, then running beside
/// its own, leaves nothing.
#[tokio::test]
async fn a_workspace_deleted_while_its_channel_is_purged_leaves_nothing() {
    let env = start_with(false).await;
    let org = "org_both";
    let ch = crate::watch::channel(&env, org, "doomed").await;
    crate::watch::channel(&env, org, "other").await;
    let ws = env.workspace(org).await.id;
    fill_channel(&env, &ws, &ch, 20_000, 100).await;
    let held = env.block_purges().await;
    let mut c = env.client().await;
    c.delete_channel(env.admin(
        "user_a",
        org,
        pb::DeleteChannelRequest {
            channel_id: ch.clone(),
        },
    ))
    .await
    .unwrap();
    assert_eq!(
        delete(&env, "d1", org).await.outcome(),
        pb::CommandOutcome::Applied
    );
    assert_eq!(env.count("purge_jobs").await, 2, "both purges queued");
    drop(held);
    env.purges_done().await;
    env.assert_only_bookkeeping_left().await;
}

/// A deleted channel whose row is still there (its purge waits) is left out of the unread
/// counts at once.
#[tokio::test]
async fn a_deleted_channel_is_gone_from_the_unread_counts_before_its_purge() {
    let env = start_with(false).await;
    let org = "org_unread";
    let ch = crate::watch::channel(&env, org, "noisy").await;
    crate::watch::post(&env, org, &ch, "unread").await;
    let mut c = env.client().await;
    let counts = |c: &mut pb::workspace_service_client::WorkspaceServiceClient<
        tonic::transport::Channel,
    >| {
        let req = env.member(
            "user_r",
            org,
            pb::GetUnreadCountsRequest {
                clerk_org_id: org.into(),
            },
        );
        let mut c = c.clone();
        async move {
            let counts = c.get_unread_counts(req).await.unwrap().into_inner().counts;
            counts.into_iter().map(|u| u.channel_id).collect::<Vec<_>>()
        }
    };
    let before = counts(&mut c).await;
    assert!(before.contains(&ch), "{before:?}");
    // The purge cannot delete the channel's receipts, so nor its row, while this holds them;
    // the deletion, which writes no receipt, can hide it.
    let _receipts = env.hold("LOCK TABLE read_receipts IN SHARE MODE").await;
    let deleted = c
        .delete_channel(env.admin(
            "user_a",
            org,
            pb::DeleteChannelRequest {
                channel_id: ch.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.messages_deleted, 1);
    let after = counts(&mut c).await;
    let expected: Vec<_> = before.into_iter().filter(|id| *id != ch).collect();
    assert_eq!(after, expected);
    assert_eq!(
        env.scalar(&format!("SELECT count(*) FROM channels WHERE id = '{ch}'"))
            .await,
        1,
        "counted while its row is there"
    );
}

/// The release before this schema, still serving during a rollout, creates a workspace's
/// `general` channel with `ON CONFLICT (workspace_id, name)`: the names' unique constraint
/// stays whole (a deleted channel frees its name by being renamed), so that statement works,
/// also next to a hidden channel of the same name.
#[tokio::test]
async fn the_release_befores_channel_insert_works_beside_hidden_channels() {
    use diesel_async::RunQueryDsl;
    let env = start_with(false).await;
    let ws = env.workspace("org_compat").await.id;
    let general = env
        .scalar(&format!(
            "SELECT count(*) FROM channels WHERE workspace_id = '{ws}' AND name = 'general'"
        ))
        .await;
    assert_eq!(general, 1);
    let mut c = env.client().await;
    let id = c
        .list_channels(env.member(
            "user_a",
            "org_compat",
            pb::ListChannelsRequest {
                clerk_org_id: "org_compat".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .channels
        .into_iter()
        .find(|ch| ch.name == "general")
        .unwrap()
        .id;
    c.delete_channel(env.admin(
        "user_a",
        "org_compat",
        pb::DeleteChannelRequest { channel_id: id },
    ))
    .await
    .unwrap();
    let before = format!(
        "INSERT INTO channels (id, workspace_id, name, created_by) VALUES (gen_random_uuid(), '{ws}', 'general', 'system')
         ON CONFLICT (workspace_id, name) DO NOTHING"
    );
    let mut conn = env.conn().await;
    for _ in 0..2 {
        diesel::sql_query(&before)
            .execute(&mut conn)
            .await
            .expect("the release before's statement");
    }
    let live = env
        .scalar(&format!(
            "SELECT count(*) FROM channels WHERE workspace_id = '{ws}' AND name = 'general' AND deleted_at IS NULL"
        ))
        .await;
    assert_eq!(live, 1);
}

/// Unread counts stay cheap next to a channel holding most of the workspace's messages (a
/// self-hosted instance's `#general` with years of history): each channel's count reads its
/// newest messages through the channel's index, within a 200 ms statement timeout, where a
/// plan scanning the table per channel took over 80 ms a channel.
#[tokio::test]
async fn unread_counts_beside_a_huge_channel_read_each_channel_by_its_index() {
    let env = support::start_custom(false, |c| {
        c.service.db.db_statement_timeout_ms = 200;
    })
    .await;
    let org = "org_history";
    let big = crate::watch::channel(&env, org, "history").await;
    let mut quiet = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        quiet.push(crate::watch::channel(&env, org, name).await);
    }
    let ws = env.workspace(org).await.id;
    crate::watch::post(&env, org, &quiet[0], "one").await;
    fill_channel(&env, &ws, &big, 400_000, 0).await;
    let mut c = env.client().await;
    let counts = c
        .get_unread_counts(env.member(
            "user_reader",
            org,
            pb::GetUnreadCountsRequest {
                clerk_org_id: org.into(),
            },
        ))
        .await
        .expect("answered within the statement timeout")
        .into_inner()
        .counts;
    let of = |id: &str| counts.iter().find(|u| u.channel_id == id).map(|u| u.unread);
    assert_eq!(of(&big), Some(1000), "capped: {counts:?}");
    assert_eq!(of(&quiet[0]), Some(1));
    for id in &quiet[1..] {
        assert_eq!(of(id), Some(0));
    }
}
