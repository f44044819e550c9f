//! `Settled::one` answers a write outside a transaction only once it is committed, against a
//! real PostgreSQL: a commit that fails is an error (not the row), and a commit that waits for
//! a synchronous standby is waited for. diesel-async's `get_result` is run beside it on purpose,
//! to show the hazard each test guards against.

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use ephemeral_postgres::{PgCluster, TestDatabases};
use service_runtime::{Settled, prepared};
use std::time::Duration;

#[derive(QueryableByName, Debug)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

const INSERT: &str = "INSERT INTO t (n) VALUES ($1) RETURNING n";

/// Sessions whose commit waits for the synchronous standby.
async fn sync_rep_waiters(conn: &mut AsyncPgConnection) -> i64 {
    prepared("SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
        .one::<N>(conn)
        .await
        .unwrap()
        .n
}

async fn count(conn: &mut AsyncPgConnection) -> i64 {
    prepared("SELECT count(*) AS n FROM t")
        .one::<N>(conn)
        .await
        .unwrap()
        .n
}

#[tokio::test]
async fn a_write_whose_commit_fails_is_an_error_not_its_row() {
    let db = TestDatabases::shared()
        .await
        .create("settled_commit_fails", |_| async { Ok(()) })
        .await
        .unwrap();
    let mut conn = AsyncPgConnection::establish(db.url()).await.unwrap();
    // A deferred constraint refuses every row when the statement's transaction commits.
    conn.batch_execute(
        "CREATE TABLE t (n bigint);
         CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$;
         CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON t
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await
    .unwrap();

    #[allow(clippy::disallowed_methods)]
    let early: Result<N, _> = prepared(INSERT)
        .bind::<BigInt, _>(1)
        .get_result(&mut conn)
        .await;
    assert!(
        early.is_ok(),
        "get_result is expected to return the row before the commit fails: {early:?}"
    );

    let settled: Result<N, _> = prepared(INSERT).bind::<BigInt, _>(2).one(&mut conn).await;
    let e = settled.expect_err("a write whose commit failed must not be answered with its row");
    assert!(e.to_string().contains("refused at commit"), "{e}");
    assert_eq!(count(&mut conn).await, 0, "nothing was committed");
}

#[tokio::test]
async fn a_write_cut_off_by_a_crash_while_its_commit_waits_for_the_standby_is_an_error() {
    let (primary, standby) = PgCluster::synchronous_pair().await.unwrap();
    let url = primary.url("postgres");
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
    conn.batch_execute("CREATE TABLE t (n bigint)")
        .await
        .unwrap();

    // The standby away, each commit waits for it.
    let standby = tokio::task::spawn_blocking(move || {
        standby.pause().unwrap();
        standby
    })
    .await
    .unwrap();
    let mut a = AsyncPgConnection::establish(&url).await.unwrap();
    #[allow(clippy::disallowed_methods)]
    let early = tokio::spawn(async move {
        prepared(INSERT)
            .bind::<BigInt, _>(1)
            .get_result::<N>(&mut a)
            .await
    });
    let mut b = AsyncPgConnection::establish(&url).await.unwrap();
    let settled =
        tokio::spawn(async move { prepared(INSERT).bind::<BigInt, _>(2).one::<N>(&mut b).await });
    // Both commits are waiting for the standby.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sync_rep_waiters(&mut conn).await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the two commits never waited for the standby"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !settled.is_finished(),
        "answered while the synchronous standby was away"
    );
    // The primary stops at once: its backends send what they hold (the row) as they go.
    let primary = tokio::task::spawn_blocking(move || {
        primary.crash().unwrap();
        primary
    })
    .await
    .unwrap();
    let early = early.await.unwrap();
    assert!(
        matches!(early, Ok(N { n: 1 })),
        "get_result is expected to return the row of a write that never committed: {early:?}"
    );
    let settled = settled.await.unwrap();
    assert!(
        settled.is_err(),
        "a write cut off before its commit was answered with its row: {settled:?}"
    );

    // Neither write is anywhere: the standby, promoted, never had them.
    let standby = tokio::task::spawn_blocking(move || {
        standby.resume().unwrap();
        standby.promote().unwrap();
        standby
    })
    .await
    .unwrap();
    let mut check = AsyncPgConnection::establish(&standby.url("postgres"))
        .await
        .unwrap();
    assert_eq!(count(&mut check).await, 0);
    drop((primary, standby));
}
