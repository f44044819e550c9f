//! A job table drained by workers on any number of replicas.
//!
//! A job is a row keyed by what it is about, enqueued in the same transaction as the change
//! that needs it. A worker leases due jobs (`FOR UPDATE SKIP LOCKED`, a lease token and an
//! expiry), does each with no transaction open, then deletes it (done) or reschedules it under
//! the same token. A crashed worker's lease expires and another worker takes the job again;
//! a result recorded after the lease was taken over changes nothing. A semaphore bounds the
//! jobs in flight per replica.
//!
//! A table takes the columns of `liveblocks_cleanup_jobs`: its key, `enqueued_at`, `attempts`,
//! `next_attempt_at`, `leased_until`, `lease_token`, `last_error`.

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
    /// The number of jobs (`depth`) and the age of the oldest in seconds (`oldest`).
    sample: &'static str,
}

/// The [`JobTable`] of `$table`, whose key column is `$key` of SQL type `$ty`.
macro_rules! job_table {
    ($table:literal, $key:literal, $ty:literal) => {
        $crate::workers::jobs::JobTable::new(
            $table,
            concat!(
                "UPDATE ", $table, " j
                    SET leased_until = now() + make_interval(secs => $2), lease_token = $3, attempts = j.attempts + 1
                  WHERE j.", $key, " IN (
                        SELECT ", $key, " FROM ", $table, "
                         WHERE next_attempt_at <= now() AND (leased_until IS NULL OR leased_until < now())
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
                "SELECT count(*) AS depth,
                        COALESCE(EXTRACT(EPOCH FROM now() - min(enqueued_at)), 0)::float8 AS oldest
                   FROM ", $table
            ),
        )
    };
}
pub(crate) use job_table;

impl JobTable {
    /// Used by [`job_table!`].
    pub const fn new(
        name: &'static str,
        lease: &'static str,
        done: &'static str,
        retry: &'static str,
        sample: &'static str,
    ) -> Self {
        Self {
            name,
            lease,
            done,
            retry,
            sample,
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
    /// Try again after `after`, recording `error`.
    Retry { after: Duration, error: String },
}

/// How many jobs there are and how old the oldest is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueSample {
    pub depth: i64,
    pub oldest_seconds: f64,
}

/// Does jobs of one table.
#[tonic::async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// Does one leased job (leased under `token`), with no transaction open.
    async fn attempt(&self, job: &Leased, token: Uuid) -> Attempt;
    /// Hears the queue's size every few seconds.
    fn sampled(&self, sample: QueueSample);
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
}

/// How often the queue is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

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

    async fn finish(&self, key: &str, token: Uuid, attempt: Attempt) -> anyhow::Result<()> {
        let mut conn = self.pool.get().await?;
        match attempt {
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

    /// Counts the jobs and the oldest one's age, and tells the handler.
    pub async fn sample(&self) -> anyhow::Result<QueueSample> {
        #[derive(QueryableByName)]
        struct Depth {
            #[diesel(sql_type = BigInt)]
            depth: i64,
            #[diesel(sql_type = Double)]
            oldest: f64,
        }
        let mut conn = self.pool.get().await?;
        let d: Depth = prepared(self.table.sample).get_result(&mut conn).await?;
        let sample = QueueSample {
            depth: d.depth,
            oldest_seconds: d.oldest,
        };
        self.handler.sampled(sample);
        Ok(sample)
    }

    /// Runs until `stop` resolves, then lets the jobs in flight finish.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.settings.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut last_sample = tokio::time::Instant::now() - SAMPLE_EVERY;
        loop {
            while tasks.try_join_next().is_some() {}
            if last_sample.elapsed() >= SAMPLE_EVERY {
                if let Err(e) = this.sample().await {
                    tracing::warn!(table = this.table.name, error = %e, "sampling the job queue failed");
                }
                last_sample = tokio::time::Instant::now();
            }
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
                    if let Err(e) = runner.finish(&job.key, token, attempt).await {
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
