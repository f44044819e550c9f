//! The purge worker: deletes the rows of deleted workspaces and rooms in bounded chunks, each
//! chunk in a short transaction of its own that also queues the Liveblocks rooms of the rows it
//! deletes, so a crash or an error leaves every chunk either done or untouched.
//!
//! Jobs are leased from `purge_jobs` like every job table. Each chunk's transaction first
//! locks the job row under this worker's lease token and extends the lease: a worker whose
//! lease was taken over stops at its next chunk, so two workers never purge one job at once.
//! A job resumes where the rows stop: whatever a crashed worker deleted is simply not found.

use super::jobs::{Attempt, JobHandler, JobTable, Leased, backoff, job_table};
use super::runner::{JobRunner, RunnerSettings};
use crate::domain::purge::{Chunk, Progress, PurgeKind, purge_chunk};
use crate::error::Error;
use crate::metrics::Metrics;
use diesel::OptionalExtension;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Double, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};
use service_runtime::{Lifecycle, Phase, Pool, prepared};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// The purge jobs.
pub static PURGE_JOBS: JobTable = job_table!("purge_jobs", "target_id", "uuid");

/// Purge settings.
#[derive(Debug, Clone, Copy)]
pub struct PurgeSettings {
    /// Rows deleted per chunk (one transaction).
    pub chunk_rows: i64,
    /// Jobs purged at once per replica.
    pub concurrency: usize,
    /// Idle poll period (a local delete wakes the worker at once).
    pub poll: Duration,
    /// How long a job belongs to a worker without a chunk; every chunk extends it.
    pub lease: Duration,
    /// First retry delay after a failed chunk; doubles per attempt.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// A job whose chunks failed this many times becomes dead (kept for an operator).
    pub max_attempts: i32,
}

impl Default for PurgeSettings {
    fn default() -> Self {
        Self {
            chunk_rows: 10_000,
            concurrency: 2,
            poll: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_attempts: 100,
        }
    }
}

/// Locks the job for one chunk and extends its lease; no row means the lease was lost.
const HOLD: &str = "UPDATE purge_jobs SET leased_until = now() + make_interval(secs => $3)
     WHERE target_id = $1 AND lease_token = $2 RETURNING kind";

/// Adds a chunk's rows to the job's count.
const COUNT: &str = "UPDATE purge_jobs SET rows_purged = rows_purged + $2 WHERE target_id = $1";

struct PurgeHandler {
    pool: Pool,
    settings: PurgeSettings,
    metrics: Metrics,
    lifecycle: Lifecycle,
    liveblocks_wake: Arc<Notify>,
}

/// What one chunk's transaction found.
enum Held {
    /// Another worker holds the job now.
    Lost,
    Done(Chunk),
}

impl PurgeHandler {
    /// One chunk in its own transaction.
    async fn chunk(
        &self,
        target: Uuid,
        token: Uuid,
        progress: &mut Progress,
    ) -> Result<Held, Error> {
        #[derive(QueryableByName)]
        struct Kind {
            #[diesel(sql_type = Text)]
            kind: String,
        }
        let mut conn = self.pool.get().await?;
        let lease = self.settings.lease.as_secs_f64();
        let limit = self.settings.chunk_rows;
        conn.transaction::<_, Error, _>(async |conn| {
            let held: Option<Kind> = prepared(HOLD)
                .bind::<SqlUuid, _>(target)
                .bind::<SqlUuid, _>(token)
                .bind::<Double, _>(lease)
                .get_result(conn)
                .await
                .optional()?;
            let Some(held) = held else {
                return Ok(Held::Lost);
            };
            let kind = PurgeKind::from_db(&held.kind)?;
            let chunk = purge_chunk(conn, kind, target, limit, progress).await?;
            if let Chunk::Deleted { rows, .. } = chunk {
                prepared(COUNT)
                    .bind::<SqlUuid, _>(target)
                    .bind::<BigInt, _>(rows)
                    .execute(conn)
                    .await?;
            }
            Ok(Held::Done(chunk))
        })
        .await
    }
}

#[tonic::async_trait]
impl JobHandler for PurgeHandler {
    async fn attempt(&self, job: &Leased, token: Uuid) -> Attempt {
        let Ok(target) = Uuid::parse_str(&job.key) else {
            return Attempt::Retry {
                after: self.settings.backoff_max,
                error: format!("purge job key {:?} is not a uuid", job.key),
            };
        };
        let mut progress = Progress::default();
        loop {
            if self.lifecycle.phase() == Phase::Stopped {
                return Attempt::Retry {
                    after: Duration::ZERO,
                    error: "paused: the service stopped".into(),
                };
            }
            let started = std::time::Instant::now();
            let chunk = self.chunk(target, token, &mut progress).await;
            match chunk {
                Ok(Held::Done(Chunk::Deleted { table, rows })) => {
                    tracing::debug!(%target, table, rows, took = ?started.elapsed(), "purge chunk");
                    self.metrics.purged(table, rows);
                    if matches!(table, "documents" | "code_files" | "whiteboards" | "rooms") {
                        self.liveblocks_wake.notify_one();
                    }
                }
                Ok(Held::Done(Chunk::Finished)) => {
                    tracing::info!(%target, "purge finished");
                    return Attempt::Done;
                }
                Ok(Held::Lost) => {
                    tracing::warn!(%target, "purge lease taken over by another worker; stopping here");
                    return Attempt::Retry {
                        after: Duration::ZERO,
                        error: "lease lost".into(),
                    };
                }
                Err(e) => {
                    tracing::warn!(%target, error = %e, "a purge chunk failed and was rolled back; retrying later");
                    return Attempt::Retry {
                        after: backoff(
                            self.settings.backoff_base,
                            self.settings.backoff_max,
                            job.attempts,
                        ),
                        error: e.to_string(),
                    };
                }
            }
        }
    }
}

/// Purges deleted workspaces and rooms.
pub struct PurgeWorker {
    runner: JobRunner<PurgeHandler>,
}

impl PurgeWorker {
    /// Creates the worker; `wake` is notified when a purge is queued here, `liveblocks_wake`
    /// when a chunk queued Liveblocks rooms, and in-flight purges pause once `lifecycle` stops.
    pub fn new(
        pool: Pool,
        settings: PurgeSettings,
        metrics: Metrics,
        lifecycle: Lifecycle,
        wake: Arc<Notify>,
        liveblocks_wake: Arc<Notify>,
    ) -> Self {
        let handler = PurgeHandler {
            pool: pool.clone(),
            settings,
            metrics,
            lifecycle,
            liveblocks_wake,
        };
        let runner_settings = RunnerSettings {
            concurrency: settings.concurrency,
            lease: settings.lease,
            poll: settings.poll,
            max_attempts: settings.max_attempts,
            prefetch: 0,
        };
        Self {
            runner: JobRunner::new(pool, &PURGE_JOBS, handler, runner_settings, wake),
        }
    }

    /// Runs until `stop` resolves; purges in flight pause after their current chunk.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        self.runner.run(stop).await
    }
}
