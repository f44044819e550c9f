//! Connections to a PostgreSQL that takes TCP connections over TLS alone, its certificate
//! signed by a CA made for this test: trusted through DB_CA_FILE they work (the pool,
//! migrations, and the cache's LISTEN connection); trusting the system's roots alone, to another host name, or
//! without TLS, they are refused. One cluster serves the whole binary.

use coherent_cache::Coherent;
use ephemeral_postgres::{PgCluster, PgClusterOptions};
use service_runtime::DbTls;
use service_runtime::db::{PlanCache, Pool, SessionLimits, build_pool_with, run_migrations};
use std::sync::LazyLock;
use std::time::Duration;

static CLUSTER: LazyLock<PgCluster> = LazyLock::new(|| {
    let options = PgClusterOptions {
        tls: true,
        max_connections: 20,
        ..PgClusterOptions::default()
    };
    let cluster = PgCluster::start(options).expect("a PostgreSQL cluster with TLS");
    cluster.wait_ready(Duration::from_secs(30)).unwrap();
    cluster
});

/// A password in the URLs (the cluster trusts local connections and asks for none): no error
/// may show it.
const PASSWORD: &str = "pw-never-shown";

/// The URL of the TLS cluster's `postgres` database with `query` (e.g. `sslmode=require`),
/// the cluster started on first use (off the async threads).
async fn url(query: &str) -> String {
    let cluster = tokio::task::spawn_blocking(|| &*CLUSTER).await.unwrap();
    let url = cluster
        .url("postgres")
        .replace("postgres@", &format!("postgres:{PASSWORD}@"));
    format!("{url}?{query}")
}

/// Trusts the system's roots and the cluster's CA, as a service given DB_CA_FILE.
fn with_ca_file() -> DbTls {
    DbTls::new(CLUSTER.ca_file()).unwrap()
}

fn pool(url: &str, tls: &DbTls) -> Pool {
    build_pool_with(url, 1, PlanCache::Auto, SessionLimits::default(), tls).unwrap()
}

/// The error of the pool's first connection to `url` through `tls`, which never shows the
/// password.
async fn refusal(url: &str, tls: &DbTls) -> String {
    let e = match pool(url, tls).get().await {
        Ok(_) => panic!("connected: {url}"),
        Err(e) => format!("{e} {e:?}"),
    };
    assert!(!e.contains(PASSWORD), "{e}");
    e
}

#[tokio::test]
async fn with_the_ca_file_a_pool_connects_over_tls_and_queries() {
    use service_runtime::Settled;
    #[derive(diesel::QueryableByName)]
    struct Ssl {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        ssl: bool,
    }
    let url = url("sslmode=require").await;
    let mut conn = pool(&url, &with_ca_file()).get().await.unwrap();
    let session: Ssl =
        diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .one(&mut conn)
            .await
            .unwrap();
    assert!(session.ssl);
}

/// The test CA is no system root: the server is refused, with `require` and with tokio-postgres's
/// default `prefer` alike (a server that offers TLS is never used unverified).
#[tokio::test]
async fn the_system_roots_alone_do_not_trust_the_server() {
    for query in ["sslmode=require", "sslmode=prefer"] {
        let url = url(query).await;
        let e = refusal(&url, &DbTls::system_roots()).await;
        assert!(e.contains("certificate is not trusted"), "{query}: {e}");
    }
}

/// A certificate signed by the trusted CA, for other names than the one connected to.
#[tokio::test]
async fn a_certificate_for_another_host_name_is_refused() {
    let url = url("sslmode=require")
        .await
        .replace("@127.0.0.1:", "@db.example:");
    let url = format!("{url}&hostaddr=127.0.0.1");
    let e = refusal(&url, &with_ca_file()).await;
    assert!(e.contains("certificate is not trusted"), "{e}");
    assert!(e.contains("db.example"), "{e}");
}

#[tokio::test]
async fn a_plain_connection_is_refused() {
    let url = url("sslmode=disable").await;
    let e = refusal(&url, &with_ca_file()).await;
    assert!(e.contains("no encryption"), "{e}");
}

/// Migrations connect through the connector too (the server takes no other connection).
#[tokio::test]
async fn migrations_run_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let migration = dir.path().join("2020-01-01-000000_over_tls");
    std::fs::create_dir(&migration).unwrap();
    std::fs::write(
        migration.join("up.sql"),
        "CREATE TABLE migrated_over_tls (id int)",
    )
    .unwrap();
    std::fs::write(migration.join("down.sql"), "DROP TABLE migrated_over_tls").unwrap();
    let source = diesel_migrations::FileBasedMigrations::from_path(dir.path()).unwrap();
    let url = url("sslmode=require").await;
    let applied = run_migrations(&url, &with_ca_file(), source).await.unwrap();
    assert_eq!(applied.len(), 1, "{applied:?}");
}

/// The read caches' LISTEN connection, given the services' connector, hears notifications over
/// TLS.
#[tokio::test]
async fn a_cache_hears_its_notifications_over_tls() {
    let url = url("sslmode=require").await;
    let cache: Coherent<String, String> = Coherent::new(1 << 20, |k, v| (k.len() + v.len()) as u64);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::spawn(coherent_cache::listen(
        cache.clone(),
        url.clone(),
        with_ca_file(),
        "cache_tls",
        &[],
        |c: &Coherent<String, String>, key: &str| c.invalidate(&key.to_owned()),
        async move {
            let _ = stopped.await;
        },
    ));
    assert!(cache.caught_up(Duration::from_secs(10)).await);
    cache.insert(cache.ticket(), "k".into(), "v".into());
    let (client, connection) = tokio_postgres::connect(&url, with_ca_file()).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("SELECT pg_notify('cache_tls', 'k')")
        .await
        .unwrap();
    assert!(cache.caught_up(Duration::from_secs(5)).await);
    assert_eq!(cache.get(&"k".to_owned()), None);
    assert_eq!(cache.stats().invalidations, 1);
    stop.send(()).unwrap();
    listener.await.unwrap();
}
