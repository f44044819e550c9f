//! A job table drained by workers on any number of replicas.
//!
//! A job is a row keyed by what it is about, enqueued in the same transaction as the change
//! that needs it. A worker leases due jobs (`FOR UPDATE SKIP LOCKED`, a lease token and an
//! expiry), does each with no transaction open, then deletes it (done) or reschedules it under
//! the same token. A crashed worker's lease expires and another worker takes the job again;
//! a result recorded after the lease was taken over changes nothing. A semaphore bounds the
//! jobs in flight per replica.
//!
//! A job that got a permanent answer, or failed `max_attempts` times, becomes dead
//! (`dead_at`): no longer leased, kept and visible until an operator retries it. The queue is
//! sampled for its gauges by [`sample_loop`], which runs whether or not a worker does.
//!
//! A table takes the columns of `liveblocks_cleanup_jobs`: its key, `enqueued_at`, `attempts`,
//! `next_attempt_at`, `leased_until`, `lease_token`, `last_error`, `dead_at`.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use rand::Rng;
use service_runtime::{Pool, prepared};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

/// The statements of one job table: static text, made by [`job_table!`].
#[derive(Debug)]
pub struct JobTable {
    /// The table, for logs.
    pub name: &'static str,
    /// `$1` jobs at most, leased for `$2` seconds under token `$3`; returns `key`, `attempts`.
    lease: &'static str,
    /// Deletes job `$1` leased under `$2`.
    done: &'static str,
    /// Reschedules job `$1` leased under `$2` in `$4` seconds, recording error `$3`.
    retry: &'static str,
    /// Marks job `$1` leased under `$2` dead, recording error `$3`.
    bury: &'static str,
    /// Jobs by state and the age of the oldest live one ([`Depths`]).
    pub(crate) depths: &'static str,
    /// Jobs in state `$1` (`''` for all) after key `$2`, `$3` at most, by key ([`JobRow`]).
    pub(crate) list: &'static str,
    /// Makes job `$1` (live or dead) due now with no attempts.
    pub(crate) retry_key: &'static str,
    /// Makes every job in state `$1` (`dead` or `failing`) due now with no attempts.
    pub(crate) retry_state: &'static str,
}

/// The [`JobTable`] of `$table`, whose key column is `$key` of SQL type `$ty`.
macro_rules! job_table {
    ($table:literal, $key:literal, $ty:literal) => {
        $crate::workers::jobs::JobTable::new(
            $table,
            [
                concat!(
                    "UPDATE ", $table, " j
                        SET leased_until = now() + make_interval(secs => $2), lease_token = $3, attempts = j.attempts + 1
                      WHERE j.", $key, " IN (
                            SELECT ", $key, " FROM ", $table, "
                             WHERE dead_at IS NULL AND next_attempt_at <= now()
                               AND (leased_until IS NULL OR leased_until < now())
                             ORDER BY next_attempt_at LIMIT $1
                             FOR UPDATE SKIP LOCKED)
                  RETURNING j.", $key, "::text AS key, j.attempts"
                ),
                concat!("DELETE FROM ", $table, " WHERE ", $key, " = $1::", $ty, " AND lease_token = $2"),
                concat!(
                    "UPDATE ", $table, "
                        SET leased_until = NULL, lease_token = NULL, last_error = $3,
                            next_attempt_at = now() + make_interval(secs => $4)
                      WHERE ", $key, " = $1::", $ty, " AND lease_token = $2"
                ),
                concat!(
                    "UPDATE ", $table, "
                        SET leased_until = NULL, lease_token = NULL, last_error = $3, dead_at = now()
                      WHERE ", $key, " = $1::", $ty, " AND lease_token = $2"
                ),
                concat!(
                    "SELECT count(*) FILTER (WHERE dead_at IS NULL AND last_error IS NULL) AS pending,
                            count(*) FILTER (WHERE dead_at IS NULL AND last_error IS NOT NULL) AS failing,
                            count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead,
                            COALESCE(EXTRACT(EPOCH FROM now() - min(enqueued_at) FILTER (WHERE dead_at IS NULL)), 0)::float8 AS oldest
                       FROM ", $table
                ),
                concat!(
                    "SELECT ", $key, "::text AS key, attempts, last_error, enqueued_at, next_attempt_at, dead_at
                       FROM ", $table, "
                      WHERE ", $key, "::text > $2
                        AND CASE $1 WHEN 'pending' THEN dead_at IS NULL AND last_error IS NULL
                                    WHEN 'failing' THEN dead_at IS NULL AND last_error IS NOT NULL
                                    WHEN 'dead' THEN dead_at IS NOT NULL
                                    ELSE true END
                      ORDER BY ", $key, "::text LIMIT $3"
                ),
                concat!(
                    "UPDATE ", $table, "
                        SET dead_at = NULL, attempts = 0, last_error = NULL, next_attempt_at = now()
                      WHERE ", $key, "::text = $1 AND (leased_until IS NULL OR leased_until < now())"
                ),
                concat!(
                    "UPDATE ", $table, "
                        SET dead_at = NULL, attempts = 0, last_error = NULL, next_attempt_at = now()
                      WHERE CASE $1 WHEN 'dead' THEN dead_at IS NOT NULL
                                    WHEN 'failing' THEN dead_at IS NULL AND last_error IS NOT NULL
                                    ELSE false END
                        AND (leased_until IS NULL OR leased_until < now())"
                ),
            ],
        )
    };
}
pub(crate) use job_table;

impl JobTable {
    /// Used by [`job_table!`]: lease, done, retry, bury, depths, list, retry_key, retry_state.
    pub const fn new(name: &'static str, sql: [&'static str; 8]) -> Self {
        Self {
            name,
            lease: sql[0],
            done: sql[1],
            retry: sql[2],
            bury: sql[3],
            depths: sql[4],
            list: sql[5],
            retry_key: sql[6],
            retry_state: sql[7],
        }
    }
}

/// A leased job.
#[derive(Debug, Clone, QueryableByName)]
pub struct Leased {
    /// The job's key, as text.
    #[diesel(sql_type = Text)]
    pub key: String,
    /// Attempts so far, this one included.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Finished: the job is deleted.
    Done,
    /// Try again after `after`, recording `error` (dead instead once the attempts are spent).
    Retry { after: Duration, error: String },
    /// A permanent failure: the job is kept dead, recording `error`, until an operator retries it.
    Dead { error: String },
}

/// Jobs by state, and the age of the oldest live one.
#[derive(Debug, Clone, Copy, PartialEq, QueryableByName)]
pub struct Depths {
    /// Not tried yet (or retried by an operator).
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    /// Tried and failed; will be tried again.
    #[diesel(sql_type = BigInt)]
    pub failing: i64,
    /// Given up.
    #[diesel(sql_type = BigInt)]
    pub dead: i64,
    /// Age of the oldest job that is not dead, seconds.
    #[diesel(sql_type = Double)]
    pub oldest: f64,
}

impl Depths {
    /// Jobs that will still be tried.
    pub fn live(&self) -> i64 {
        self.pending + self.failing
    }
}

/// Counts a table's jobs by state.
pub async fn depths(
    conn: &mut diesel_async::AsyncPgConnection,
    table: &JobTable,
) -> diesel::QueryResult<Depths> {
    prepared(table.depths).get_result(conn).await
}

/// Does jobs of one table.
#[tonic::async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// Does one leased job (leased under `token`), with no transaction open.
    async fn attempt(&self, job: &Leased, token: Uuid) -> Attempt;
}

/// Exponential backoff with "equal jitter" for the `attempts`-th attempt: `base` doubled per
/// attempt, capped at `max`, of which half is fixed and half random.
pub fn backoff(base: Duration, max: Duration, attempts: i32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempts.clamp(1, 20).saturating_sub(1) as u32)
        .min(max);
    let half = exp / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// How a runner drains its table.
#[derive(Debug, Clone, Copy)]
pub struct RunnerSettings {
    /// Jobs in flight at most (per replica).
    pub concurrency: usize,
    /// How long a leased job belongs to this runner before others may take it.
    pub lease: Duration,
    /// Idle poll period (a local enqueue wakes the runner at once).
    pub poll: Duration,
    /// A job that failed this many attempts becomes dead.
    pub max_attempts: i32,
}

/// How often [`sample_loop`] counts the queue.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Counts `table`'s jobs every few seconds and tells `sampled`, until `stop`. Runs whether or
/// not a worker drains the table, so the gauges show a queue that nobody drains.
pub async fn sample_loop(
    pool: Pool,
    table: &'static JobTable,
    sampled: impl Fn(Depths) + Send,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let counted = match pool.get().await {
            Ok(mut conn) => depths(&mut conn, table).await.map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        match counted {
            Ok(d) => sampled(d),
            Err(e) => {
                tracing::warn!(table = table.name, error = %e, "sampling the job queue failed")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = &mut stop => return,
        }
    }
}

/// Drains one job table with one handler.
pub struct JobRunner<H> {
    pool: Pool,
    table: &'static JobTable,
    handler: Arc<H>,
    settings: RunnerSettings,
    wake: Arc<Notify>,
}

impl<H: JobHandler> JobRunner<H> {
    /// A runner of `table`; `wake` is notified after local enqueues.
    pub fn new(
        pool: Pool,
        table: &'static JobTable,
        handler: H,
        settings: RunnerSettings,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            pool,
            table,
            handler: Arc::new(handler),
            settings,
            wake,
        }
    }

    async fn lease(&self, n: usize, token: Uuid) -> anyhow::Result<Vec<Leased>> {
        let mut conn = self.pool.get().await?;
        Ok(prepared(self.table.lease)
            .bind::<BigInt, _>(n as i64)
            .bind::<Double, _>(self.settings.lease.as_secs_f64())
            .bind::<SqlUuid, _>(token)
            .load(&mut conn)
            .await?)
    }

    async fn finish(&self, job: &Leased, token: Uuid, attempt: Attempt) -> anyhow::Result<()> {
        let key = job.key.as_str();
        let attempt = match attempt {
            Attempt::Retry { error, .. } if job.attempts >= self.settings.max_attempts => {
                Attempt::Dead {
                    error: format!("{error} (gave up after {} attempts)", job.attempts),
                }
            }
            a => a,
        };
        let mut conn = self.pool.get().await?;
        match attempt {
            Attempt::Dead { error } => {
                tracing::error!(table = self.table.name, key, %error, "job is dead: kept until an operator retries it");
                prepared(self.table.bury)
                    .bind::<Text, _>(key)
                    .bind::<SqlUuid, _>(token)
                    .bind::<Nullable<Text>, _>(Some(error))
                    .execute(&mut conn)
                    .await?;
            }
            Attempt::Done => {
                prepared(self.table.done)
                    .bind::<Text, _>(key)
                    .bind::<SqlUuid, _>(token)
                    .execute(&mut conn)
                    .await?;
            }
            Attempt::Retry { after, error } => {
                prepared(self.table.retry)
                    .bind::<Text, _>(key)
                    .bind::<SqlUuid, _>(token)
                    .bind::<Nullable<Text>, _>(Some(error))
                    .bind::<Double, _>(after.as_secs_f64())
                    .execute(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs until `stop` resolves, then lets the jobs in flight finish.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.settings.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            let first = tokio::select! {
                p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = &mut stop => break,
            };
            let want = 1 + permits.available_permits();
            let token = Uuid::now_v7();
            let jobs = match this.lease(want, token).await {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!(table = this.table.name, error = %e, "leasing jobs failed");
                    Vec::new()
                }
            };
            if jobs.is_empty() {
                drop(first);
                tokio::select! {
                    _ = tokio::time::sleep(this.settings.poll) => {}
                    _ = this.wake.notified() => {}
                    _ = &mut stop => break,
                }
                continue;
            }
            let mut first = Some(first);
            for job in jobs {
                let permit = match first.take() {
                    Some(p) => p,
                    None => match Arc::clone(&permits).acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let runner = Arc::clone(&this);
                tasks.spawn(async move {
                    let attempt = runner.handler.attempt(&job, token).await;
                    // The slot is free once the work is; recording the result (a commit)
                    // overlaps the next job instead of holding a slot.
                    drop(permit);
                    if let Err(e) = runner.finish(&job, token, attempt).await {
                        // The lease will expire and the job be retried: nothing is lost.
                        tracing::warn!(table = runner.table.name, key = %job.key, error = %e, "could not record a job's result; it will be retried");
                    }
                });
            }
        }
        while tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 1..30 {
            let d = backoff(base, max, attempt);
            let full = Duration::from_secs(1u64 << (attempt - 1).min(20)).min(max);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
    }
}
