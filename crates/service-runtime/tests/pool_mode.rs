//! Behind a pooler in transaction mode nothing may be SET on a pooled connection (the next
//! transaction may run on another server session), so the session settings are stored on the
//! service's role: every session the role opens starts with them, a pooler's included.

use ephemeral_postgres::{PgCluster, PgClusterOptions, with_user};
use service_runtime::DbTls;
use service_runtime::db::{PlanCache, SessionLimits, store_role_settings};
use std::time::Duration;

async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

async fn show(c: &tokio_postgres::Client, name: &str) -> String {
    c.query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_session_settings_are_stored_on_the_role() {
    let cluster = tokio::task::spawn_blocking(|| {
        let c = PgCluster::start(PgClusterOptions::default()).unwrap();
        c.wait_ready(Duration::from_secs(30)).unwrap();
        c
    })
    .await
    .unwrap();
    let admin = cluster.url("postgres");
    connect(&admin)
        .await
        .batch_execute("CREATE ROLE svc LOGIN PASSWORD 'pw'")
        .await
        .unwrap();
    let url = with_user(&admin, "svc", "pw");
    let limits = SessionLimits {
        statement_timeout_ms: 1234,
        idle_in_transaction_timeout_ms: 5678,
    };
    store_role_settings(&url, &DbTls::system_roots(), PlanCache::GenericOnly, limits)
        .await
        .unwrap();
    // A new session of the role, with nothing SET: what a pooler's server connection gets.
    let c = connect(&url).await;
    assert_eq!(show(&c, "plan_cache_mode").await, "force_generic_plan");
    assert_eq!(show(&c, "statement_timeout").await, "1234ms");
    assert_eq!(
        show(&c, "idle_in_transaction_session_timeout").await,
        "5678ms"
    );
    // Another plan mode, and no limits: stored again at the next start.
    store_role_settings(
        &url,
        &DbTls::system_roots(),
        PlanCache::Auto,
        SessionLimits::default(),
    )
    .await
    .unwrap();
    let c = connect(&url).await;
    assert_eq!(show(&c, "plan_cache_mode").await, "auto");
    assert_eq!(show(&c, "statement_timeout").await, "0");
    // Other roles keep theirs.
    assert_eq!(
        show(&connect(&admin).await, "plan_cache_mode").await,
        "auto"
    );
    drop(cluster);
}
