//! A streaming standby: it follows the primary read-only, holds every commit the primary
//! acknowledged, and after an immediate stop of the primary it is promoted and takes writes.
//! A multi-host URL with `target_session_attrs=read-write` finds whichever one is the primary.

use ephemeral_postgres::PgCluster;

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

#[tokio::test]
async fn a_promoted_standby_holds_every_acknowledged_commit_and_takes_writes() {
    let (primary, standby) = PgCluster::synchronous_pair().await.unwrap();
    let both = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let writer = connect(&both).await.unwrap();
    writer
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 100)")
        .await
        .unwrap();
    // Read-only, and already holding the synchronous commit.
    let replica = connect(&standby.url("postgres")).await.unwrap();
    let in_recovery: bool = replica
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery);
    let n: i64 = replica
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    let err = replica
        .batch_execute("INSERT INTO t VALUES (0)")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
    );
    // While only the standby is up, a read-write connection is refused.
    primary.crash().unwrap();
    assert!(connect(&both).await.is_err());
    standby.promote().unwrap();
    let writer = connect(&both).await.unwrap();
    writer
        .batch_execute("INSERT INTO t VALUES (101)")
        .await
        .unwrap();
    let n: i64 = writer
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 101);
    drop((primary, standby));
}
