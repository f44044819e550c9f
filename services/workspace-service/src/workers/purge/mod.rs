//! The purge worker: deletes the rows of deleted workspaces and rooms in bounded chunks, each
//! chunk in a short transaction of its own that also queues the Liveblocks rooms of the rows it
//! deletes, so a crash or an error leaves every chunk either done or untouched.
//!
//! Jobs are leased from `purge_jobs` like every job table. One job is purged by `lanes`
//! connections at once, each taking the pieces of its [`plan`] as they become ready (a
//! piece waits for the pieces its rows depend on). Each chunk's transaction first
//! share-locks the job row under this worker's lease token: a worker whose lease was taken
//! over stops at its next chunk, and no worker leases a job while a chunk of it is open, so
//! two workers never purge one job at once. The lease is extended (and the rows purged
//! recorded) every quarter lease and at the end. A job resumes where the rows stop:
//! whatever a crashed worker deleted is simply not found.

mod schedule;

use crate::domain::purge::{Piece, PurgeKind, PurgeRun, plan};
use crate::error::Error;
use crate::metrics::Metrics;
use diesel::OptionalExtension;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Double, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use job_queue::{
    Attempt, JobHandler, JobRunner, JobTable, Leased, RunnerSettings, backoff, job_table,
};
use schedule::{Next, Schedule};
use service_runtime::Settled;
use service_runtime::db::DbFailure;
use service_runtime::{Lifecycle, Phase, Pool, prepared};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify};
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
    /// Connections one job is purged with at once.
    pub lanes: usize,
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
            lanes: 2,
            poll: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_attempts: 100,
        }
    }
}

/// Starts an attempt, and every few seconds of it: extends the lease, adds the rows purged
/// since the last time, and tells what the job purges; no row means the lease was lost.
const EXTEND: &str = "UPDATE purge_jobs SET leased_until = now() + make_interval(secs => $3),
            rows_purged = rows_purged + $4
     WHERE target_id = $1 AND lease_token = $2 RETURNING kind";

/// Opens each chunk's transaction: the job is still this worker's. The row stays share-locked
/// until the chunk commits, so no other worker leases it meanwhile, while this job's other
/// lanes lock it too.
const HOLD: &str =
    "SELECT kind FROM purge_jobs WHERE target_id = $1 AND lease_token = $2 FOR SHARE";

/// Each chunk commits without waiting for its WAL to reach the disk (the WAL writer flushes it
/// within a few `wal_writer_delay`s), which saves a flush per chunk. A crash of PostgreSQL may
/// lose the last chunks, each whole: their rows are back and the job is still there, so the
/// purge deletes them again and queues their rooms then, once. Nothing outside the database
/// acts on a chunk that may be lost: the Liveblocks worker's lease of a room is a synchronous
/// commit, later in the WAL, and flushes the chunk that queued it, as does the job's end.
const ASYNC_COMMIT: &str = "SET LOCAL synchronous_commit = off";

#[derive(QueryableByName)]
struct Kind {
    #[diesel(sql_type = Text)]
    kind: String,
}

struct PurgeHandler {
    pool: Pool,
    settings: PurgeSettings,
    metrics: Metrics,
    lifecycle: Lifecycle,
    liveblocks_wake: Arc<Notify>,
}

/// Why an attempt stopped before the purge was done.
enum Stop {
    /// Another worker holds the job now.
    Lost,
    /// The service is stopping.
    Paused,
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

impl From<diesel::result::Error> for Stop {
    fn from(e: diesel::result::Error) -> Self {
        Stop::Failed(e.into())
    }
}

/// One attempt of one job: what its lanes share.
struct Attempting<'a> {
    handler: &'a PurgeHandler,
    run: PurgeRun,
    token: Uuid,
    schedule: Schedule,
    /// Rows deleted and not yet added to the job's row.
    unrecorded: AtomicI64,
    /// When the lease was last extended.
    extended: Mutex<Instant>,
    /// Set when a lane stopped early: the others stop after their chunk.
    stopping: AtomicBool,
}

impl Attempting<'_> {
    /// Extends the lease and records the rows purged so far.
    async fn extend(&self, conn: &mut AsyncPgConnection) -> Result<(), Stop> {
        let rows = self.unrecorded.swap(0, Ordering::Relaxed);
        let held = self
            .handler
            .extend(conn, self.run.target(), self.token, rows)
            .await
            .inspect_err(|_| {
                self.unrecorded.fetch_add(rows, Ordering::Relaxed);
            })?;
        *self.extended.lock().await = Instant::now();
        held.map(|_| ()).ok_or(Stop::Lost)
    }

    /// Purges `piece` in chunks until this lane finds no more of it (true) or the attempt
    /// is stopping (false).
    async fn piece(&self, conn: &mut AsyncPgConnection, piece: Piece) -> Result<bool, Stop> {
        let h = self.handler;
        loop {
            if AtomicBool::load(&self.stopping, Ordering::Relaxed) {
                return Ok(false);
            }
            if h.lifecycle.phase() == Phase::Stopped {
                return Err(Stop::Paused);
            }
            if self.extended.lock().await.elapsed() > h.settings.lease / 4 {
                self.extend(conn).await?;
            }
            let started = Instant::now();
            let chunk = match conn
                .transaction::<_, Stop, _>(async |conn| {
                    conn.batch_execute(ASYNC_COMMIT).await?;
                    let held: Option<Kind> = prepared(HOLD)
                        .bind::<SqlUuid, _>(self.run.target())
                        .bind::<SqlUuid, _>(self.token)
                        .one(conn)
                        .await
                        .optional()?;
                    if held.is_none() {
                        return Err(Stop::Lost);
                    }
                    Ok(self.run.chunk(conn, piece).await?)
                })
                .await
            {
                Err(Stop::Failed(Error::Db(e))) if self.run.queued_already(&e) => {
                    tracing::info!(target_id = %self.run.target(), table = piece.table(self.run.kind()),
                        "a room of this purge is queued already; going on with the statements that skip it");
                    continue;
                }
                chunk => chunk?,
            };
            let more = chunk.more;
            if chunk.rows > 0 {
                tracing::debug!(target_id = %self.run.target(), table = chunk.table, rows = chunk.rows,
                    took = ?started.elapsed(), "purge chunk");
                h.metrics.purged(chunk.table, chunk.rows);
                self.unrecorded.fetch_add(chunk.rows, Ordering::Relaxed);
                if piece.queues_rooms(self.run.kind()) {
                    h.liveblocks_wake.notify_one();
                }
            }
            self.run.committed(chunk).await;
            if !more {
                return Ok(true);
            }
        }
    }

    /// One lane: takes the plan's pieces as they become ready, until all are finished or the
    /// attempt is stopping.
    async fn lane(&self) -> Result<(), Stop> {
        let mut conn = self.handler.pool.get().await.map_err(Error::from)?;
        loop {
            let changed = self.schedule.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if AtomicBool::load(&self.stopping, Ordering::Relaxed) {
                return Ok(());
            }
            match self.schedule.next() {
                Next::Done => return Ok(()),
                Next::Wait => changed.await,
                Next::Take(i) => {
                    let done = self.piece(&mut conn, self.schedule.plan[i].piece).await;
                    self.schedule.leave(i, matches!(done, Ok(true)));
                    done?;
                }
            }
        }
    }

    /// Runs every lane; the first to stop early stops the rest. Ends by recording the rows.
    async fn purge(&self) -> Result<(), Stop> {
        let ended = futures::future::join_all((0..self.handler.settings.lanes).map(|_| async {
            let r = self.lane().await;
            if r.is_err() {
                self.stopping.store(true, Ordering::Relaxed);
                self.schedule.changed.notify_waiters();
            }
            r
        }))
        .await;
        for r in ended {
            r?;
        }
        let mut conn = self.handler.pool.get().await.map_err(Error::from)?;
        self.extend(&mut conn).await
    }
}

impl PurgeHandler {
    /// Extends the lease of `target` held under `token` and adds `rows` to its count: the
    /// job's kind, or `None` if the lease was lost.
    async fn extend(
        &self,
        conn: &mut AsyncPgConnection,
        target: Uuid,
        token: Uuid,
        rows: i64,
    ) -> Result<Option<PurgeKind>, Error> {
        let held: Option<Kind> = prepared(EXTEND)
            .bind::<SqlUuid, _>(target)
            .bind::<SqlUuid, _>(token)
            .bind::<Double, _>(self.settings.lease.as_secs_f64())
            .bind::<BigInt, _>(rows)
            .one(conn)
            .await
            .optional()?;
        held.map(|k| PurgeKind::from_db(&k.kind)).transpose()
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
        let failed = |e: Error| {
            tracing::warn!(%target, error = %e, "a purge chunk failed and was rolled back; retrying later");
            let after = backoff(
                self.settings.backoff_base,
                self.settings.backoff_max,
                job.attempts,
            );
            let error = e.to_string();
            // The database's failure, not the purge's (a read-only server: its stale
            // connections are retired by the classification): not counted toward dead.
            if e.db_failure() == Some(DbFailure::Unavailable) {
                Attempt::Deferred { after, error }
            } else {
                Attempt::Retry { after, error }
            }
        };
        let lost = || {
            tracing::warn!(%target, "purge lease taken over by another worker; stopping here");
            Attempt::Retry {
                after: Duration::ZERO,
                error: "lease lost".into(),
            }
        };
        let begun = match self.pool.get().await {
            Ok(mut conn) => self.extend(&mut conn, target, token, 0).await,
            Err(e) => Err(e.into()),
        };
        let kind = match begun {
            Ok(Some(kind)) => kind,
            Ok(None) => return lost(),
            Err(e) => return failed(e),
        };
        let attempt = Attempting {
            handler: self,
            run: PurgeRun::new(kind, target, self.settings.chunk_rows),
            token,
            schedule: Schedule::new(plan(kind)),
            unrecorded: AtomicI64::new(0),
            extended: Mutex::new(Instant::now()),
            stopping: AtomicBool::new(false),
        };
        match attempt.purge().await {
            Ok(()) => {
                tracing::info!(%target, "purge finished");
                Attempt::Done
            }
            Err(Stop::Lost) => lost(),
            // Handed back for the next replica: a stop is not the purge's failure, so it
            // spends no attempt (rolling restarts never make a purge dead).
            Err(Stop::Paused) => Attempt::Deferred {
                after: Duration::ZERO,
                error: "paused: the service stopped".into(),
            },
            Err(Stop::Failed(e)) => failed(e),
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
            // Each chunk extends the lease.
            attempt_max: Duration::ZERO,
            breaker: None,
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
