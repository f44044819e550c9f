//! Migrations take a lock so that replicas of one service, migrating at once, take turns. In
//! one database shared by both services (each in its schema, migrated by its owner role, as
//! deploy/README.md sets them up), each service's lock is its own: a long migration of one
//! never holds up the other's pods.

use diesel_migrations::FileBasedMigrations;
use ephemeral_postgres::{PgCluster, PgClusterOptions, create_role_sql, role_grants, with_user};
use service_runtime::DbTls;
use service_runtime::db::run_migrations;
use std::path::Path;
use std::time::Duration;

async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

/// A migration set of one migration whose `up.sql` is `up`.
fn migrations(dir: &Path, service: &str, up: &str) -> FileBasedMigrations {
    let m = dir.join(service).join("2026-01-01-000000_first");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("up.sql"), up).unwrap();
    std::fs::write(m.join("down.sql"), "SELECT 1;").unwrap();
    FileBasedMigrations::from_path(dir.join(service)).unwrap()
}

/// Advisory locks sessions are waiting for.
async fn waiting(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn wait_for_waiters(admin: &tokio_postgres::Client, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while waiting(admin).await != n {
        assert!(tokio::time::Instant::now() < deadline, "never {n} waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_services_migration_does_not_wait_for_the_others_but_its_replicas_take_turns() {
    let cluster = tokio::task::spawn_blocking(|| {
        let c = PgCluster::start(PgClusterOptions::default()).unwrap();
        c.wait_ready(Duration::from_secs(30)).unwrap();
        c
    })
    .await
    .unwrap();
    let admin_url = cluster.url("postgres");
    let admin = connect(&admin_url).await;
    for service in ["identity", "workspace"] {
        let (owner, app) = (format!("{service}_owner"), format!("{service}_app"));
        admin
            .batch_execute(&create_role_sql(&owner, "pw"))
            .await
            .unwrap();
        admin
            .batch_execute(&create_role_sql(&app, "pw"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE SCHEMA {service} AUTHORIZATION {owner}"))
            .await
            .unwrap();
        admin
            .batch_execute(&role_grants(&owner, &app, service))
            .await
            .unwrap();
    }
    let url = |service: &str| with_user(&admin_url, &format!("{service}_owner"), "pw");
    let migrate = |service: &'static str, m: FileBasedMigrations| {
        let url = url(service);
        tokio::spawn(async move { run_migrations(&url, &DbTls::system_roots(), m).await })
    };
    let dir = tempfile::tempdir().unwrap();
    // identity-service's migration is long: it waits for a lock the test holds.
    admin
        .batch_execute("SELECT pg_advisory_lock(42)")
        .await
        .unwrap();
    let long =
        "SELECT pg_advisory_lock(42); SELECT pg_advisory_unlock(42); CREATE TABLE users (id int);";
    let identity = migrate("identity", migrations(dir.path(), "identity", long));
    // It holds its migration lock, and waits inside its migration.
    wait_for_waiters(&admin, 1).await;

    // workspace-service's pods migrate meanwhile.
    let applied = tokio::time::timeout(
        Duration::from_secs(20),
        run_migrations(
            &url("workspace"),
            &DbTls::system_roots(),
            migrations(dir.path(), "workspace", "CREATE TABLE workspaces (id int);"),
        ),
    )
    .await
    .expect("workspace-service's migration waited for identity-service's")
    .unwrap();
    assert_eq!(applied.len(), 1);

    // Another identity-service replica waits for the first: the lock is taken per service.
    let replica = migrate("identity", migrations(dir.path(), "identity", long));
    wait_for_waiters(&admin, 2).await;
    assert!(!replica.is_finished());
    admin
        .batch_execute("SELECT pg_advisory_unlock(42)")
        .await
        .unwrap();
    assert_eq!(identity.await.unwrap().unwrap().len(), 1);
    assert!(
        replica.await.unwrap().unwrap().is_empty(),
        "the replica found nothing left to apply"
    );
    let tables: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE (schemaname, tablename) IN (('identity', 'users'), ('workspace', 'workspaces'))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 2);
    drop(cluster);
}
