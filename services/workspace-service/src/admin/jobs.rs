//! The operator's view of the job queues: list by state, retry, count. Uses the statements of
//! each queue's [`JobTable`].

use crate::workers::jobs::{self, JobTable};
use crate::workers::{liveblocks::CLEANUP_JOBS, purge::PURGE_JOBS};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use service_runtime::prepared;
use tonic::Status;
use vbase_proto::workspace::v1 as pb;

/// The table of a queue named in a request.
pub fn table(queue: i32) -> Result<(pb::JobQueue, &'static JobTable), Status> {
    match pb::JobQueue::try_from(queue) {
        Ok(pb::JobQueue::LiveblocksCleanup) => Ok((pb::JobQueue::LiveblocksCleanup, &CLEANUP_JOBS)),
        Ok(pb::JobQueue::Purge) => Ok((pb::JobQueue::Purge, &PURGE_JOBS)),
        _ => Err(Status::invalid_argument(
            "queue must be JOB_QUEUE_LIVEBLOCKS_CLEANUP or JOB_QUEUE_PURGE",
        )),
    }
}

/// Every queue, for depths.
pub const QUEUES: [(pb::JobQueue, &JobTable); 2] = [
    (pb::JobQueue::LiveblocksCleanup, &CLEANUP_JOBS),
    (pb::JobQueue::Purge, &PURGE_JOBS),
];

/// The SQL name of a state filter (`""`: every state).
pub fn state_filter(state: i32) -> Result<&'static str, Status> {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Unspecified) => Ok(""),
        Ok(pb::JobState::Pending) => Ok("pending"),
        Ok(pb::JobState::Failing) => Ok("failing"),
        Ok(pb::JobState::Dead) => Ok("dead"),
        Err(_) => Err(Status::invalid_argument(format!(
            "state {state} is not a JobState"
        ))),
    }
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    enqueued_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    next_attempt_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    dead_at: Option<DateTime<Utc>>,
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    vbase_proto::timestamp_from_millis(t.timestamp_millis())
}

/// Up to `limit` jobs of `table` in `state` after `after`, by key.
pub async fn list(
    conn: &mut AsyncPgConnection,
    queue: pb::JobQueue,
    table: &JobTable,
    state: &str,
    after: &str,
    limit: i64,
) -> diesel::QueryResult<Vec<pb::Job>> {
    let rows: Vec<Row> = prepared(table.list)
        .bind::<Text, _>(state)
        .bind::<Text, _>(after)
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| pb::Job {
            queue: queue.into(),
            state: match (&r.dead_at, &r.last_error) {
                (Some(_), _) => pb::JobState::Dead,
                (None, Some(_)) => pb::JobState::Failing,
                (None, None) => pb::JobState::Pending,
            }
            .into(),
            key: r.key,
            attempts: r.attempts,
            last_error: r.last_error.unwrap_or_default(),
            enqueued_at: Some(ts(r.enqueued_at)),
            next_attempt_at: Some(ts(r.next_attempt_at)),
            dead_at: r.dead_at.map(ts),
        })
        .collect())
}

/// Makes job `key` due now with no attempts; 0 when there is no such job (or it is running).
pub async fn retry_key(
    conn: &mut AsyncPgConnection,
    table: &JobTable,
    key: &str,
) -> diesel::QueryResult<usize> {
    prepared(table.retry_key)
        .bind::<Text, _>(key)
        .execute(conn)
        .await
}

/// Makes every job in `state` (`dead` or `failing`) due now with no attempts.
pub async fn retry_state(
    conn: &mut AsyncPgConnection,
    table: &JobTable,
    state: &str,
) -> diesel::QueryResult<usize> {
    prepared(table.retry_state)
        .bind::<Text, _>(state)
        .execute(conn)
        .await
}

/// Jobs per state of every queue.
pub async fn depths(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<pb::QueueDepth>> {
    let mut out = Vec::with_capacity(QUEUES.len());
    for (queue, table) in QUEUES {
        let d = jobs::depths(conn, table).await?;
        out.push(pb::QueueDepth {
            queue: queue.into(),
            pending: d.pending,
            failing: d.failing,
            dead: d.dead,
            oldest_live_seconds: d.oldest,
        });
    }
    Ok(out)
}
