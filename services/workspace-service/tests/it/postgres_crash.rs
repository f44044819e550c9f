//! PostgreSQL itself crashes in the middle of a purge. Its chunks commit without waiting for
//! the WAL flush, so an immediate stop may lose the last of them, each whole. After the
//! restart the purge goes on from the rows that are there: none of the workspace's rows is
//! left, and each of its Liveblocks rooms is queued exactly once.

use crate::support;

use ephemeral_postgres::{PgCluster, PgClusterOptions, TestDatabases};
use std::collections::BTreeSet;
use std::time::Duration;
use support::{delete_ws, eventually};

#[tokio::test]
async fn postgres_crashing_mid_purge_loses_no_row_and_no_room() {
    // A cluster of its own, durable: every commit but the purge's waits for its flush.
    let cluster = tokio::task::spawn_blocking(|| {
        let c = PgCluster::start(PgClusterOptions {
            durable: true,
            ..PgClusterOptions::default()
        })
        .unwrap();
        c.wait_ready(Duration::from_secs(30)).unwrap();
        c
    })
    .await
    .unwrap();
    let dbs = TestDatabases::on_cluster(cluster);
    let db = dbs
        .create("workspace", |url| async move {
            workspace_service::migrate(&url, &service_runtime::DbTls::system_roots())
                .await
                .map(|_| ())
        })
        .await
        .unwrap();
    let env = support::start_on(db, false, |cfg| {
        cfg.purge.purge_chunk_rows = 100;
        cfg.purge.purge_lanes = 1;
    })
    .await;
    let ws = env.workspace("org_crash").await;
    let id = &ws.id;
    // 10 channels x 2,000 messages, and 20 rooms with 100 documents each.
    env.sql(&format!(
        "INSERT INTO channels (id, workspace_id, name) SELECT gen_random_uuid(), '{id}', 'c' || g FROM generate_series(1, 10) g;
         INSERT INTO messages (id, workspace_id, channel_id, author_clerk_id, body, created_at)
           SELECT gen_random_uuid(), c.workspace_id, c.id, 'user_1', 'm' || g, now() - g * interval '1 second'
             FROM channels c, generate_series(1, 2000) g WHERE c.workspace_id = '{id}';
         INSERT INTO rooms (id, workspace_id, kind, name)
           SELECT gen_random_uuid(), '{id}', 'document', 'r' || g FROM generate_series(1, 20) g;
         INSERT INTO documents (id, workspace_id, room_id, name)
           SELECT gen_random_uuid(), r.workspace_id, r.id, 'd' || g FROM rooms r, generate_series(1, 100) g WHERE r.workspace_id = '{id}';"
    ))
    .await;
    let rooms = |sql: &'static str| {
        let env = &env;
        async move {
            use diesel_async::RunQueryDsl;
            #[derive(diesel::QueryableByName)]
            struct Room {
                #[diesel(sql_type = diesel::sql_types::Text)]
                room_id: String,
            }
            let rows: Vec<Room> = diesel::sql_query(sql)
                .load(&mut env.conn().await)
                .await
                .unwrap();
            rows.into_iter().map(|r| r.room_id).collect::<BTreeSet<_>>()
        }
    };
    let expected = rooms(
        "SELECT 'doc:' || id AS room_id FROM documents UNION ALL SELECT 'room:' || id FROM rooms",
    )
    .await;
    assert_eq!(expected.len(), 2020);

    let mut c = env.client().await;
    c.delete_workspace(env.service(delete_ws("crash-del", 100, "org_crash")))
        .await
        .unwrap();
    // Crash once the purge is well under way.
    eventually("the purge under way", Duration::from_secs(30), || async {
        env.count("messages").await < 15_000
    })
    .await;
    let cluster = dbs.cluster().expect("this test's own cluster");
    cluster.crash().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.resume().unwrap();
    cluster.wait_ready(Duration::from_secs(30)).unwrap();
    let left_after_crash = env.count("messages").await;
    assert!(left_after_crash > 0, "the crash came after the purge");

    eventually("the purge finished", Duration::from_secs(60), || async {
        env.count("purge_jobs").await == 0
    })
    .await;
    for table in [
        "messages",
        "channels",
        "documents",
        "rooms",
        "memberships",
        "workspaces",
    ] {
        assert_eq!(env.count(table).await, 0, "{table} left");
    }
    let queued = env.queued_rooms().await;
    assert_eq!(queued.len(), expected.len(), "a room queued twice or lost");
    assert_eq!(queued.into_iter().collect::<BTreeSet<_>>(), expected);
    drop(env);
    drop(dbs);
}
