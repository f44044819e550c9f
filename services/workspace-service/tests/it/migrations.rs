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
