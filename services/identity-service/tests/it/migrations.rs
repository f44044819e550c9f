//! A database migrated before the delivery ledger owned its tables (they were created by
//! identity-service's own migrations, kept in `tests/ledger-migrations-before`) upgrades to
//! the ledger's migration: same schema as a new database, rows kept. The user cache checks
//! every trigger that announces its changes.

use delivery_ledger::migrations::Chained;
use diesel_migrations::FileBasedMigrations;
use std::path::Path;

#[tokio::test]
async fn a_database_whose_ledger_tables_identity_created_keeps_them_and_their_rows() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let before = Chained(
        FileBasedMigrations::from_path(dir.join("migrations")).unwrap(),
        FileBasedMigrations::from_path(dir.join("tests/ledger-migrations-before")).unwrap(),
    );
    service_harness::upgrade::check_ledger_upgrade(
        "identity",
        before,
        || identity_service::MIGRATIONS,
        "20261205100001",
    )
    .await;
}

/// Every trigger that announces the user cache's changes is one it checks (a trigger added
/// without its name in the list would go unchecked), and each one it checks exists.
#[tokio::test]
async fn the_user_cache_checks_every_trigger_that_announces_its_changes() {
    let db = crate::support::database().await;
    service_harness::assert_triggers_checked(
        db.url(),
        "notify_user",
        identity_service::batch::NOTIFY_TRIGGERS,
    )
    .await;
}
