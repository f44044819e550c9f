//! Reconcile runs as the gateway reported them when they finished, in `reconcile_runs`
//! (`run_id`, `finished_at`, `completed`, `dry_run`, `error`, `summary`); the last 1,000 are kept.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use input_validation::Invalid;
use service_runtime::prepared;
use vbase_proto::ops::v1 as pb;

/// Largest summary kept.
pub const MAX_SUMMARY: usize = 64 * 1024;

/// Checks a reported run: its id, a summary of at most 64 KiB; the error is cut to 1,000
/// characters.
pub fn check(run: &pb::ReconcileRun) -> Result<uuid::Uuid, Invalid> {
    let id = input_validation::uuid("run.run_id", &run.run_id)?;
    if run.summary_json.len() > MAX_SUMMARY {
        return Err(Invalid(format!(
            "run.summary_json must be at most {MAX_SUMMARY} bytes, got {}",
            run.summary_json.len()
        )));
    }
    Ok(id)
}

/// Records a finished run (a second report of the same run replaces the first) and keeps the
/// last 1,000.
pub async fn record(
    conn: &mut AsyncPgConnection,
    id: uuid::Uuid,
    run: &pb::ReconcileRun,
) -> diesel::QueryResult<()> {
    let error: String = run.error.chars().take(1000).collect();
    prepared(
        "WITH kept AS (
             INSERT INTO reconcile_runs (run_id, completed, dry_run, error, summary)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (run_id) DO UPDATE
                SET finished_at = now(), completed = EXCLUDED.completed, dry_run = EXCLUDED.dry_run,
                    error = EXCLUDED.error, summary = EXCLUDED.summary
             RETURNING 1)
         DELETE FROM reconcile_runs WHERE run_id IN (
             SELECT run_id FROM reconcile_runs ORDER BY finished_at DESC OFFSET 1000)",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Bool, _>(run.completed)
    .bind::<Bool, _>(run.dry_run)
    .bind::<Text, _>(&error)
    .bind::<Text, _>(&run.summary_json)
    .execute(conn)
    .await
    .map(|_| ())
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    run_id: String,
    #[diesel(sql_type = Timestamptz)]
    finished_at: DateTime<Utc>,
    #[diesel(sql_type = Bool)]
    completed: bool,
    #[diesel(sql_type = Bool)]
    dry_run: bool,
    #[diesel(sql_type = Text)]
    error: String,
    #[diesel(sql_type = Text)]
    summary: String,
}

/// The last `limit` runs, newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    limit: i64,
) -> diesel::QueryResult<Vec<pb::ReconcileRun>> {
    let rows: Vec<Row> = prepared(
        "SELECT run_id::text AS run_id, finished_at, completed, dry_run, error, summary
           FROM reconcile_runs ORDER BY finished_at DESC LIMIT $1",
    )
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| pb::ReconcileRun {
            run_id: r.run_id,
            finished_at: Some(super::ts(r.finished_at)),
            completed: r.completed,
            dry_run: r.dry_run,
            error: r.error,
            summary_json: r.summary,
        })
        .collect())
}
