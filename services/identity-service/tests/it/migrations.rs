//! A database migrated before the delivery ledger owned its tables (they were created by
//! identity-service's own migrations, kept in `tests/ledger-migrations-before`) upgrades to
//! the ledger's migration: same schema as a new database, rows kept.

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
