//! A pooled connection whose server turns read-only (a standby, or a primary demoted under a
//! pooler) is retired: the write it tried answers UNAVAILABLE, and the next checkout gets a new
//! connection, made with `target_session_attrs=read-write`, so it is refused until a server
//! takes writes again.

use diesel::QueryableByName;
use diesel::sql_types::Integer;
use diesel_async::RunQueryDsl;
use ephemeral_postgres::{PgCluster, PgClusterOptions};
use service_runtime::Settled;
use service_runtime::db::{DbFailure, PlanCache, build_pool, classify, status_for};
use std::time::Duration;

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

async fn admin(url: &str, sql: &str) {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for statement in sql.split(';') {
        c.batch_execute(statement).await.unwrap();
    }
    // A reload reaches the sessions at their next command; give it time to be read.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_connection_to_a_read_only_server_is_retired_and_replaced() {
    let cluster = tokio::task::spawn_blocking(|| {
        let c = PgCluster::start(PgClusterOptions::default()).unwrap();
        c.wait_ready(Duration::from_secs(30)).unwrap();
        c
    })
    .await
    .unwrap();
    let url = format!(
        "{}?target_session_attrs=read-write",
        cluster.url("postgres")
    );
    let pool = build_pool(&url, 1, PlanCache::Auto).unwrap();
    let pid = |pool: service_runtime::Pool| async move {
        let mut c = pool.get().await.unwrap();
        diesel::sql_query("SELECT pg_backend_pid() AS pid")
            .one::<Pid>(&mut c)
            .await
            .unwrap()
            .pid
    };
    let first = pid(pool.clone()).await;

    admin(
        &cluster.url("postgres"),
        "ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf()",
    )
    .await;
    {
        let mut c = pool.get().await.unwrap();
        let e = diesel::sql_query("CREATE TABLE t (v int)")
            .execute(&mut c)
            .await
            .unwrap_err();
        assert_eq!(classify(&e), DbFailure::Unavailable, "{e}");
        assert_eq!(status_for(&e).code(), tonic::Code::Unavailable);
    }
    // The retired connection is not handed out again, and a new one finds no writable server.
    assert!(pool.get().await.is_err(), "a read-only server was accepted");

    admin(
        &cluster.url("postgres"),
        "ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf()",
    )
    .await;
    let second = pid(pool.clone()).await;
    assert_ne!(
        first, second,
        "the connection to the read-only server was kept"
    );
    let mut c = pool.get().await.unwrap();
    diesel::sql_query("CREATE TABLE t (v int)")
        .execute(&mut c)
        .await
        .unwrap();
    drop(c);
    drop(cluster);
}

#[test]
fn a_connection_that_broke_mid_statement_is_unavailable() {
    use diesel::result::{DatabaseErrorKind as K, Error as E};
    let broke = E::DatabaseError(
        K::UnableToSendCommand,
        Box::new("connection closed".to_owned()),
    );
    assert_eq!(classify(&broke), DbFailure::Unavailable);
    let starting = E::DatabaseError(
        K::Unknown,
        Box::new("the database system is starting up".to_owned()),
    );
    assert_eq!(classify(&starting), DbFailure::Unavailable);
}
