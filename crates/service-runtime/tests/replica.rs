//! Reads from a streaming replica: served there while it keeps up, by the primary when it lags
//! beyond the setting, and a caller's read after its own write waits (bounded) for the replica
//! to replay it, else goes to the primary.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool};
use diesel_async::RunQueryDsl;
use ephemeral_postgres::{PgCluster, PgClusterOptions};
use service_runtime::db::{PlanCache, build_pool};
use service_runtime::replica::{ReadPool, ReplicaMetrics, commit_lsn};
use std::time::Duration;

#[derive(QueryableByName)]
struct Recovery {
    #[diesel(sql_type = Bool)]
    r: bool,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Whether `pool` gave a replica's connection, and how many rows of `t` it sees.
async fn read(pool: &ReadPool, after: Option<&service_runtime::replica::Lsn>) -> (bool, i64) {
    let mut c = pool.get(after).await.unwrap();
    let on_replica = diesel::sql_query("SELECT pg_is_in_recovery() AS r")
        .get_result::<Recovery>(&mut c)
        .await
        .unwrap()
        .r;
    let n = diesel::sql_query("SELECT count(*) AS n FROM t")
        .get_result::<Count>(&mut c)
        .await
        .unwrap()
        .n;
    (on_replica, n)
}

async fn admin(url: &str, sql: &str) {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(sql).await.unwrap();
}

#[tokio::test]
async fn reads_go_to_the_replica_while_it_keeps_up_and_callers_read_their_writes() {
    let (primary, standby) = tokio::task::spawn_blocking(|| {
        let p = PgCluster::start(PgClusterOptions::default()).unwrap();
        p.wait_ready(Duration::from_secs(30)).unwrap();
        let s = PgCluster::start_standby(&p, PgClusterOptions::default()).unwrap();
        s.wait_ready(Duration::from_secs(30)).unwrap();
        (p, s)
    })
    .await
    .unwrap();
    admin(&primary.url("postgres"), "CREATE TABLE t (v int)").await;
    let writes = build_pool(&primary.url("postgres"), 2, PlanCache::Auto).unwrap();
    let replica = build_pool(&standby.url("postgres"), 2, PlanCache::Auto).unwrap();
    let metrics = ReplicaMetrics::default();
    let pool = ReadPool::new(
        writes.clone(),
        Some(replica),
        Duration::from_millis(200),
        Duration::from_millis(1000),
        metrics.clone(),
    );
    // Until the lag is measured, the primary serves.
    assert!(!read(&pool, None).await.0);
    // The replica has replayed all it received: lag 0, it serves.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pool.sample_lag().await;
    assert_eq!(metrics.lag_seconds.get(), 0.0);
    assert!(read(&pool, None).await.0);

    // A caller's write, then its read: the replica serves it once it has replayed the write.
    let mut w = writes.get().await.unwrap();
    diesel::sql_query("INSERT INTO t VALUES (1)")
        .execute(&mut w)
        .await
        .unwrap();
    let lsn = commit_lsn(&mut w).await.unwrap();
    assert_eq!(read(&pool, Some(&lsn)).await, (true, 1));

    // Replay paused: the caller's next write is not on the replica; its read goes to the
    // primary after the bounded wait, and sees it.
    admin(&standby.url("postgres"), "SELECT pg_wal_replay_pause()").await;
    diesel::sql_query("INSERT INTO t VALUES (2)")
        .execute(&mut w)
        .await
        .unwrap();
    let lsn = commit_lsn(&mut w).await.unwrap();
    assert_eq!(read(&pool, Some(&lsn)).await, (false, 2));
    // Another caller reads the (stale) replica until the lag passes the setting...
    assert_eq!(read(&pool, None).await, (true, 1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    pool.sample_lag().await;
    assert!(
        metrics.lag_seconds.get() > 0.2,
        "{}",
        metrics.lag_seconds.get()
    );
    // ...then the primary.
    assert_eq!(read(&pool, None).await, (false, 2));

    // Replay resumed: the replica catches up and serves again.
    admin(&standby.url("postgres"), "SELECT pg_wal_replay_resume()").await;
    assert_eq!(
        read(&pool, Some(&lsn)).await,
        (false, 2),
        "lag not yet measured"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    pool.sample_lag().await;
    assert_eq!(read(&pool, Some(&lsn)).await, (true, 2));
    drop(w);
    drop((primary, standby));
}
