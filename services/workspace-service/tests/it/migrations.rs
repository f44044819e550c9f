//! Every migration reverts and re-applies cleanly on a migrated database; the caches check
//! every trigger that announces their changes.

use crate::support;

use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;

#[tokio::test]
async fn every_migration_reverts_and_reapplies() {
    let db = support::database().await;
    let url = db.url().to_owned();
    tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        use diesel_migrations::MigrationHarness;
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url).unwrap();
        let applied = conn.applied_migrations().unwrap().len();
        assert!(applied >= 4, "{applied} migrations applied");
        for _ in 0..applied {
            conn.revert_last_migration(workspace_service::MIGRATIONS)
                .unwrap();
        }
        assert!(conn.applied_migrations().unwrap().is_empty());
        conn.run_pending_migrations(workspace_service::MIGRATIONS)
            .unwrap();
        assert_eq!(conn.applied_migrations().unwrap().len(), applied);
    })
    .await
    .unwrap();
}

/// A database migrated before the delivery ledger owned its tables (they were created by
/// workspace-service's own migrations, kept in `tests/ledger-migrations-before`) upgrades to
/// the ledger's migration: same schema as a new database, rows kept.
#[tokio::test]
async fn a_database_whose_ledger_tables_workspace_created_keeps_them_and_their_rows() {
    use delivery_ledger::migrations::Chained;
    use diesel_migrations::FileBasedMigrations;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let before = Chained(
        FileBasedMigrations::from_path(dir.join("migrations")).unwrap(),
        FileBasedMigrations::from_path(dir.join("tests/ledger-migrations-before")).unwrap(),
    );
    service_harness::upgrade::check_ledger_upgrade(
        "workspace",
        before,
        || workspace_service::MIGRATIONS,
        "20261205100001",
    )
    .await;
}

/// Every trigger that announces a cache's changes is one the cache checks (a trigger added
/// without its name in the list would go unchecked), and each one it checks exists.
#[tokio::test]
async fn the_caches_check_every_trigger_that_announces_their_changes() {
    let db = support::database().await;
    for (function, checked) in [
        ("notify_access", workspace_service::ACCESS_TRIGGERS),
        ("notify_channels", workspace_service::CHANNELS_TRIGGERS),
    ] {
        service_harness::assert_triggers_checked(db.url(), function, checked).await;
    }
}
