//! Every migration reverts and re-applies cleanly on a migrated database.

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
