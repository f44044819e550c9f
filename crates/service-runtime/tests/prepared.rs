//! `prepared` statements against a real PostgreSQL: values land in their numbered parameters,
//! and the statement is prepared once per connection, where `sql_query` re-prepares every call.

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ephemeral_postgres::TestDatabases;
use service_runtime::Settled;
use service_runtime::prepared;

#[derive(QueryableByName)]
struct S {
    #[diesel(sql_type = Nullable<Text>)]
    s: Option<String>,
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn conn() -> (ephemeral_postgres::TestDatabase, AsyncPgConnection) {
    let db = TestDatabases::shared()
        .await
        .create("prepared_empty", |_| async { Ok(()) })
        .await
        .unwrap();
    let conn = AsyncPgConnection::establish(db.url()).await.unwrap();
    (db, conn)
}

/// Named statements this connection holds whose text contains `marker`.
async fn held(conn: &mut AsyncPgConnection, marker: &str) -> i64 {
    let r: N = sql_query(
        "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE '%' || $1 || '%' AND statement NOT LIKE '%pg_prepared_statements%'",
    )
    .bind::<Text, _>(marker)
    .one(conn)
    .await
    .unwrap();
    r.n
}

#[tokio::test]
async fn parameters_bind_by_number_in_any_order_and_repeat() {
    let (_db, mut conn) = conn().await;
    let r: S = prepared("SELECT $2 || $1 || $2 || coalesce($3, '-') AS s")
        .bind::<Text, _>("a")
        .bind::<Text, _>("b")
        .bind::<Nullable<Text>, _>(None::<String>)
        .one(&mut conn)
        .await
        .unwrap();
    assert_eq!(r.s.as_deref(), Some("bab-"));
    // Text that looks like a comment or a placeholder is data, not SQL.
    let tricky = "*/ $1 -- '";
    let r: S = prepared("SELECT $1 AS s")
        .bind::<Text, _>(tricky)
        .one(&mut conn)
        .await
        .unwrap();
    assert_eq!(r.s.as_deref(), Some(tricky));
}

#[tokio::test]
async fn a_statement_is_prepared_once_per_connection_and_reused() {
    let (_db, mut conn) = conn().await;
    for i in 0..3_i64 {
        let r: N = prepared("SELECT $1 + 1 AS n /* marker_cached */")
            .bind::<BigInt, _>(i)
            .one(&mut conn)
            .await
            .unwrap();
        assert_eq!(r.n, i + 1);
        assert_eq!(held(&mut conn, "marker_cached").await, 1, "call {i}");
    }
    // The baseline it replaces: diesel's sql_query keeps nothing prepared.
    for i in 0..3_i64 {
        let r: N = sql_query("SELECT $1 + 1 AS n /* marker_uncached */")
            .bind::<BigInt, _>(i)
            .one(&mut conn)
            .await
            .unwrap();
        assert_eq!(r.n, i + 1);
    }
    assert_eq!(held(&mut conn, "marker_uncached").await, 0);
}

#[tokio::test]
async fn errors_come_back_as_diesel_errors() {
    let (_db, mut conn) = conn().await;
    let e = prepared("SELECT $1::int / 0 AS n")
        .bind::<diesel::sql_types::Integer, _>(1)
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("division by zero"), "{e}");
    // The connection (and its cache) still works afterwards.
    let r: N = prepared("SELECT $1 AS n")
        .bind::<BigInt, _>(7_i64)
        .one(&mut conn)
        .await
        .unwrap();
    assert_eq!(r.n, 7);
}

#[derive(QueryableByName)]
struct Mode {
    #[diesel(sql_type = Text)]
    plan_cache_mode: String,
}

#[tokio::test]
async fn pools_set_the_plan_cache_mode_they_are_built_with() {
    use service_runtime::db::{PlanCache, build_pool};
    let (db, _conn) = conn().await;
    for (plans, expected) in [
        (PlanCache::CustomOnly, "force_custom_plan"),
        (PlanCache::GenericOnly, "force_generic_plan"),
        (PlanCache::Auto, "auto"),
    ] {
        let pool = build_pool(db.url(), 2, plans).unwrap();
        let mut c = pool.get().await.unwrap();
        let m: Mode = sql_query("SHOW plan_cache_mode").one(&mut c).await.unwrap();
        assert_eq!(m.plan_cache_mode, expected, "{plans:?}");
    }
}

#[derive(QueryableByName)]
struct Plan {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    line: String,
}

#[tokio::test]
async fn pruning_finds_old_delivery_ids_through_the_key_and_keeps_the_recent_ones() {
    use service_runtime::db::{PRUNE_PROCESSED_EVENTS, prune_processed_events};
    let (_db, mut conn) = conn().await;
    // The services' table (see their migrations): 12,000 ids, the oldest 9,600 past 72 hours.
    for sql in [
        "CREATE TABLE processed_events (event_id text PRIMARY KEY, processed_at timestamptz NOT NULL DEFAULT now())",
        "CREATE INDEX ON processed_events USING brin (processed_at)",
        "INSERT INTO processed_events SELECT 'msg_' || g, now() - interval '80 hours' + g * interval '3 seconds' - interval '1.5 seconds' FROM generate_series(1, 12000) g",
        "ANALYZE processed_events",
    ] {
        sql_query(sql).execute(&mut conn).await.unwrap();
    }
    // A batch looks its ids up by key; a plan that scans the table would scan all of it once
    // per batch of 5,000.
    let plan: Vec<Plan> = sql_query(format!(
        "EXPLAIN {}",
        PRUNE_PROCESSED_EVENTS.replace("$1", "259200")
    ))
    .load(&mut conn)
    .await
    .unwrap();
    let plan: Vec<&str> = plan.iter().map(|p| p.line.trim()).collect();
    assert!(
        plan.iter()
            .any(|l| l.starts_with("Index Cond: (event_id = ANY")),
        "{plan:#?}"
    );
    // (The subquery, `processed_events_1`, may read the oldest rows in order and stop at 5,000.)
    assert!(
        !plan
            .iter()
            .any(|l| l.contains("Seq Scan on processed_events  (")),
        "{plan:#?}"
    );

    let pruned = prune_processed_events(&mut conn, std::time::Duration::from_secs(72 * 3600))
        .await
        .unwrap();
    let left: N = sql_query("SELECT count(*) AS n FROM processed_events WHERE processed_at < now() - interval '72 hours'")
        .one(&mut conn)
        .await
        .unwrap();
    let kept: N = sql_query("SELECT count(*) AS n FROM processed_events")
        .one(&mut conn)
        .await
        .unwrap();
    // 80 h ago + 3 s x g - 1.5 s is older than 72 h for g <= 9,600 (and 1.5 s from the
    // boundary): one batch of 5,000, then one of 4,600.
    assert_eq!(pruned, 9600);
    assert_eq!((left.n, kept.n), (0, 2400));
}
