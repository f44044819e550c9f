//! The operator's view of the job queues: list by state, retry, count, through `job-queue` on
//! each queue's [`JobTable`].

use crate::workers::{liveblocks::CLEANUP_JOBS, purge::PURGE_JOBS};
use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use job_queue::{JobState, JobTable};
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

/// The state a request filters on (`None`: every state).
pub fn state_filter(state: i32) -> Result<Option<JobState>, Status> {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Unspecified) => Ok(None),
        Ok(pb::JobState::Pending) => Ok(Some(JobState::Pending)),
        Ok(pb::JobState::Failing) => Ok(Some(JobState::Failing)),
        Ok(pb::JobState::Dead) => Ok(Some(JobState::Dead)),
        Ok(pb::JobState::Scheduled) => Ok(Some(JobState::Scheduled)),
        Err(_) => Err(Status::invalid_argument(format!(
            "state {state} is not a JobState"
        ))),
    }
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    vbase_proto::timestamp_from_millis(t.timestamp_millis())
}

/// Up to `limit` jobs of `table` in `state` after `after`, by key.
pub async fn list(
    conn: &mut AsyncPgConnection,
    queue: pb::JobQueue,
    table: &JobTable,
    state: Option<JobState>,
    after: &str,
    limit: i64,
) -> diesel::QueryResult<Vec<pb::Job>> {
    let rows = job_queue::list(conn, table, state, after, limit).await?;
    Ok(rows
        .into_iter()
        .map(|r| pb::Job {
            queue: queue.into(),
            state: match r.state() {
                JobState::Dead => pb::JobState::Dead,
                JobState::Failing => pb::JobState::Failing,
                JobState::Pending => pb::JobState::Pending,
                JobState::Scheduled => pb::JobState::Scheduled,
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

/// Jobs per state of every queue.
pub async fn depths(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<pb::QueueDepth>> {
    let mut out = Vec::with_capacity(QUEUES.len());
    for (queue, table) in QUEUES {
        let d = job_queue::depths(conn, table).await?;
        out.push(pb::QueueDepth {
            queue: queue.into(),
            pending: d.pending,
            failing: d.failing,
            dead: d.dead,
            oldest_live_seconds: d.oldest,
            scheduled: d.scheduled,
        });
    }
    Ok(out)
}
