//! A connection lent to a call that was dropped mid-statement goes back to the pool once the
//! statement has ended, and is closed when it does not end within the bound.

use diesel_async::SimpleAsyncConnection;
use ephemeral_postgres::TestDatabases;
use service_runtime::db::{PlanCache, build_pool};
use service_runtime::lent::Lent;
use std::time::Duration;

/// Drops a call mid-statement: `sql` is sent on a lent connection of `pool`, then the call's
/// future is dropped.
async fn abandon(pool: &service_runtime::Pool, sql: &str, within: Duration) {
    let mut lent = Lent::new(pool.get().await.unwrap(), None).draining_within(within);
    let call = async { lent.batch_execute(sql).await };
    // The statement is sent, and the caller goes away.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), call)
            .await
            .is_err()
    );
    drop(lent);
}

#[tokio::test]
async fn an_abandoned_connection_returns_once_its_statement_ends_or_is_closed_past_the_bound() {
    let db = TestDatabases::shared()
        .await
        .create("lent_drain", |_| async { Ok(()) })
        .await
        .unwrap();
    let pool = build_pool(db.url(), 1, PlanCache::Auto).unwrap();

    // A statement that ends within the bound: the connection comes back, still open.
    abandon(&pool, "SELECT pg_sleep(1)", Duration::from_secs(10)).await;
    let again = tokio::time::timeout(Duration::from_secs(5), pool.get())
        .await
        .expect("the connection came back")
        .unwrap();
    drop(again);
    assert_eq!(pool.status().size, 1, "returned, not closed");

    // One that outlives the bound: closed, and the pool opens a new one.
    abandon(&pool, "SELECT pg_sleep(30)", Duration::from_millis(500)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pool.status().size, 0, "closed at the bound");
    let mut fresh = tokio::time::timeout(Duration::from_secs(5), pool.get())
        .await
        .expect("a new connection")
        .unwrap();
    fresh.batch_execute("SELECT 1").await.unwrap();
}
