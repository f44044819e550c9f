//! Drains one job table ([`JobTable`]) with one handler, on any number of replicas.
//!
//! A semaphore bounds the jobs in flight per replica. Jobs are leased in batches, and up to
//! `prefetch` more than the free slots, so a slot that frees starts its next job without a
//! database round trip; a leased job not started while its longest attempt still fits in its
//! lease (and within half of it) is given back, its attempt not spent, rather than started
//! late. Results go to one finisher task, which
//! records every finished job that is waiting in one statement (a group commit), so the
//! worker's own database work stays off the path of the calls. A runner whose jobs call an
//! outside service may have a [`Breaker`]: while it is open no job starts, and the jobs
//! leased ahead are given back without spending an attempt.

use crate::breaker::{Breaker, BreakerSettings, Health, Transition};
use crate::jobs::{Attempt, JobHandler, JobTable, Leased, Taken};
use diesel::sql_types::{Array, BigInt, Double, Integer, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures::FutureExt;
use service_runtime::db::classify_error;
use service_runtime::{Pool, prepared};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use uuid::Uuid;

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
    /// Jobs leased beyond the free slots, ready to start (0 for long jobs).
    pub prefetch: usize,
    /// The longest one attempt may take (its calls' timeouts; zero for a handler that extends
    /// its own lease): a job leased ahead starts only while it can still end within its
    /// lease, and is given back otherwise, so no two workers ever run it at once.
    pub attempt_max: Duration,
    /// Pause every job while the service they call is unavailable.
    pub breaker: Option<BreakerSettings>,
}

/// Most results recorded by one statement.
const FINISH_BATCH: usize = 256;

/// A leased job waiting for a slot.
struct Ready {
    job: Leased,
    token: Uuid,
    leased_at: Instant,
}

/// A job's result, for the finisher.
struct Finished {
    job: Leased,
    token: Uuid,
    attempt: Attempt,
}

/// Drains one job table with one handler.
pub struct JobRunner<H> {
    pool: Pool,
    table: &'static JobTable,
    handler: Arc<H>,
    settings: RunnerSettings,
    wake: Arc<Notify>,
    breaker: Option<Breaker>,
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
            breaker: settings.breaker.map(Breaker::new),
        }
    }

    /// Until when no job may start, if the breaker is open.
    fn blocked_until(&self) -> Option<Instant> {
        self.breaker
            .as_ref()
            .and_then(|b| b.blocked_until(Instant::now()))
    }

    /// Gives back the jobs leased ahead (the breaker opened, or the runner stops): they are
    /// due at once, with the attempt their lease counted taken back.
    async fn release(&self, ready: &mut VecDeque<Ready>) {
        if ready.is_empty() {
            return;
        }
        let (keys, tokens): (Vec<String>, Vec<Uuid>) =
            ready.drain(..).map(|r| (r.job.key, r.token)).unzip();
        let released: anyhow::Result<usize> = async {
            let mut conn = self.pool.get().await?;
            Ok(prepared(self.table.release)
                .bind::<Array<Text>, _>(&keys)
                .bind::<Array<SqlUuid>, _>(&tokens)
                .execute(&mut conn)
                .await?)
        }
        .await;
        if let Err(e) = released {
            classify_error(&e);
            // Their leases expire instead.
            tracing::warn!(table = self.table.name, error = %e, "could not give back leased jobs");
        }
    }

    /// Gives back the jobs of `ready` leased `fresh` or longer ago, with their attempt: one
    /// started now might outlive its lease and run twice (`RunnerSettings::attempt_max`).
    async fn give_back_stale(&self, ready: &mut VecDeque<Ready>, fresh: Duration) {
        if ready
            .front()
            .is_some_and(|r| r.leased_at.elapsed() >= fresh)
        {
            let (keep, mut stale): (VecDeque<Ready>, VecDeque<Ready>) =
                ready.drain(..).partition(|r| r.leased_at.elapsed() < fresh);
            *ready = keep;
            self.release(&mut stale).await;
        }
    }

    /// Tells the breaker what a job started in `epoch` found out.
    fn ended(&self, epoch: Option<u64>, attempt: &Attempt) {
        let (Some(breaker), Some(epoch)) = (&self.breaker, epoch) else {
            return;
        };
        let health = match attempt {
            // The service's own database failed: nothing was learnt about the one called.
            Attempt::Deferred { .. } => return,
            Attempt::Unavailable { hold, .. } => Health::Unavailable { hold: *hold },
            Attempt::Throttled { after, .. } => Health::Unavailable { hold: Some(*after) },
            _ => Health::Answered,
        };
        match breaker.ended(epoch, health, Instant::now()) {
            Some(Transition::Opened(pause)) => {
                let error = match attempt {
                    Attempt::Unavailable { error, .. } | Attempt::Throttled { error, .. } => {
                        error.as_str()
                    }
                    _ => "",
                };
                tracing::warn!(table = self.table.name, ?pause, %error,
                    "the service these jobs call is unavailable: no job starts until a probe after the pause succeeds");
                self.handler.breaker_changed(true);
            }
            Some(Transition::Closed) => {
                tracing::info!(
                    table = self.table.name,
                    "the service answers again: jobs start again"
                );
                self.handler.breaker_changed(false);
            }
            None => {}
        }
    }

    /// Leases up to `n` due jobs into `ready`; how many it got.
    async fn lease(&self, n: usize, ready: &mut VecDeque<Ready>) -> usize {
        let token = Uuid::now_v7();
        let leased: anyhow::Result<Vec<Taken>> = async {
            let mut conn = self.pool.get().await?;
            Ok(prepared(self.table.lease)
                .bind::<BigInt, _>(n as i64)
                .bind::<Double, _>(self.settings.lease.as_secs_f64())
                .bind::<SqlUuid, _>(token)
                .bind::<Integer, _>(self.settings.max_attempts)
                .load(&mut conn)
                .await?)
        }
        .await;
        match leased {
            Ok(taken) => {
                let leased_at = Instant::now();
                let jobs: Vec<Leased> = taken
                    .into_iter()
                    .filter_map(|t| {
                        if t.abandoned {
                            tracing::error!(table = self.table.name, key = %t.job.key, attempts = t.job.attempts,
                                "job is dead: its worker stopped during its last attempts without recording them; kept until an operator retries it");
                            None
                        } else {
                            Some(t.job)
                        }
                    })
                    .collect();
                let got = jobs.len();
                ready.extend(jobs.into_iter().map(|job| Ready {
                    job,
                    token,
                    leased_at,
                }));
                got
            }
            Err(e) => {
                classify_error(&e);
                tracing::warn!(table = self.table.name, error = %e, "leasing jobs failed");
                0
            }
        }
    }

    /// Runs until `stop` resolves, then lets the jobs in flight finish and records them.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let this = Arc::new(self);
        let (results, finished) = mpsc::unbounded_channel();
        let finisher = tokio::spawn(finish_loop(
            this.pool.clone(),
            this.table,
            this.settings.max_attempts,
            finished,
        ));
        let permits = Arc::new(Semaphore::new(this.settings.concurrency.max(1)));
        // A job leased ahead starts only while its attempt can still end within its lease.
        let fresh = (this.settings.lease / 2).min(
            this.settings
                .lease
                .saturating_sub(this.settings.attempt_max),
        );
        let prefetch = if fresh.is_zero() {
            0
        } else {
            this.settings.prefetch
        };
        let mut ready: VecDeque<Ready> = VecDeque::new();
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            if let Some(until) = this.blocked_until() {
                this.release(&mut ready).await;
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    _ = &mut stop => break,
                }
                continue;
            }
            this.give_back_stale(&mut ready, fresh).await;
            if ready.is_empty() {
                // Idle or drained: wait for a slot, then lease what the free slots and the
                // prefetch take.
                let permit = tokio::select! {
                    p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                    _ = &mut stop => break,
                };
                // Nothing is leased ahead when a job could not wait at all.
                let want = if fresh.is_zero() {
                    1
                } else {
                    1 + permits.available_permits() + prefetch
                };
                if this.lease(want, &mut ready).await == 0 {
                    drop(permit);
                    tokio::select! {
                        _ = tokio::time::sleep(this.settings.poll) => {}
                        _ = this.wake.notified() => {}
                        _ = &mut stop => break,
                    }
                    continue;
                }
                // (The breaker may have opened meanwhile: the loop's start gives them back.)
                if this.blocked_until().is_none()
                    && let Some(r) = ready.pop_front()
                {
                    start(&this, &mut tasks, &results, r, permit);
                }
                continue;
            }
            if prefetch > 0 && ready.len() <= prefetch / 2 {
                // Top up while every slot is busy.
                let want = prefetch + permits.available_permits() - ready.len();
                this.lease(want, &mut ready).await;
            }
            let permit = tokio::select! {
                p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = &mut stop => break,
            };
            // The slot may have taken long to free.
            this.give_back_stale(&mut ready, fresh).await;
            if this.blocked_until().is_none()
                && let Some(r) = ready.pop_front()
            {
                start(&this, &mut tasks, &results, r, permit);
            }
        }
        // Jobs leased but not started are given back: another replica (or this one, restarted)
        // takes them at once, and they keep their attempt.
        this.release(&mut ready).await;
        while tasks.join_next().await.is_some() {}
        drop(results);
        let _ = finisher.await;
    }
}

/// Starts one job in a slot; its result goes to the finisher.
fn start<H: JobHandler>(
    this: &Arc<JobRunner<H>>,
    tasks: &mut JoinSet<()>,
    results: &mpsc::UnboundedSender<Finished>,
    r: Ready,
    permit: OwnedSemaphorePermit,
) {
    let runner = Arc::clone(this);
    let results = results.clone();
    let epoch = this.breaker.as_ref().map(|b| b.started(Instant::now()));
    tasks.spawn(async move {
        // A handler that panics is a failed attempt like any other: recorded, retried after a
        // poll period and dead after the last (uncaught, it would be leased again at every
        // lease's expiry, past the last attempt, showing as pending).
        // (Caught in this task: aborting the task at the stop's deadline still ends the attempt.)
        let attempt = AssertUnwindSafe(runner.handler.attempt(&r.job, r.token))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(table = runner.table.name, key = %r.job.key, panic = %what, "a job's handler panicked");
                Attempt::Retry {
                    after: runner.settings.poll,
                    error: format!("the job's handler panicked: {what}"),
                }
            });
        runner.ended(epoch, &attempt);
        // The slot is free once the work is; recording the result overlaps the next job.
        drop(permit);
        let _ = results.send(Finished {
            job: r.job,
            token: r.token,
            attempt,
        });
    });
}

/// Records results as they come: every result waiting when a statement can start goes into
/// it (finished jobs in one delete, first; retries and deaths, which are few, one by one, each
/// on its own so that one that cannot be recorded does not lose the others). A result that
/// cannot be recorded is retried once its lease expires: nothing is lost.
async fn finish_loop(
    pool: Pool,
    table: &'static JobTable,
    max_attempts: i32,
    mut finished: mpsc::UnboundedReceiver<Finished>,
) {
    while let Some(first) = finished.recv().await {
        let mut batch = vec![first];
        while batch.len() < FINISH_BATCH {
            match finished.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        record(&pool, table, max_attempts, batch).await;
    }
}

/// Longest error text kept with a job (in characters).
const MAX_ERROR_CHARS: usize = 2000;

/// An error as a job row keeps it: PostgreSQL's text holds no NUL, and the length is capped.
fn stored_error(error: &str) -> String {
    error
        .chars()
        .filter(|c| *c != '\0')
        .take(MAX_ERROR_CHARS)
        .collect()
}

fn not_recorded(table: &JobTable, key: Option<&str>, e: &anyhow::Error) {
    classify_error(e);
    tracing::warn!(table = table.name, key, error = %e, "could not record a job result; the job will be retried");
}

async fn record(pool: &Pool, table: &'static JobTable, max_attempts: i32, batch: Vec<Finished>) {
    let mut conn = match pool.get().await {
        Ok(conn) => conn,
        Err(e) => return not_recorded(table, None, &e.into()),
    };
    let (mut done, mut others) = (Vec::new(), Vec::new());
    for Finished {
        job,
        token,
        attempt,
    } in batch
    {
        let attempt = match attempt {
            Attempt::Retry { error, .. } | Attempt::Unavailable { error, .. }
                if job.attempts >= max_attempts =>
            {
                Attempt::Dead {
                    // Cut first, so that the reason survives the cap.
                    error: format!(
                        "{} (gave up after {} attempts)",
                        error.chars().take(MAX_ERROR_CHARS - 64).collect::<String>(),
                        job.attempts
                    ),
                }
            }
            a => a,
        };
        match attempt {
            Attempt::Done => done.push((job.key, token)),
            attempt => others.push((job.key, token, attempt)),
        }
    }
    if !done.is_empty() {
        let (keys, tokens): (Vec<_>, Vec<_>) = done.into_iter().unzip();
        if let Err(e) = prepared(table.done)
            .bind::<Array<Text>, _>(&keys)
            .bind::<Array<SqlUuid>, _>(&tokens)
            .execute(&mut conn)
            .await
        {
            not_recorded(table, None, &e.into());
        }
    }
    for (key, token, attempt) in others {
        if let Err(e) = record_one(&mut conn, table, &key, token, attempt).await {
            not_recorded(table, Some(&key), &e.into());
        }
    }
}

/// Records one result that is not a finished job.
async fn record_one(
    conn: &mut AsyncPgConnection,
    table: &JobTable,
    key: &str,
    token: Uuid,
    attempt: Attempt,
) -> diesel::QueryResult<usize> {
    let taken_back = i32::from(matches!(
        attempt,
        Attempt::Deferred { .. } | Attempt::Throttled { .. }
    ));
    match attempt {
        Attempt::Done => Ok(0),
        Attempt::Retry { after, error }
        | Attempt::Unavailable { after, error, .. }
        | Attempt::Throttled { after, error }
        | Attempt::Deferred { after, error } => {
            prepared(table.retry)
                .bind::<Text, _>(key)
                .bind::<SqlUuid, _>(token)
                .bind::<Nullable<Text>, _>(Some(stored_error(&error)))
                .bind::<Double, _>(after.as_secs_f64())
                .bind::<Integer, _>(taken_back)
                .execute(conn)
                .await
        }
        Attempt::Later { after } => {
            prepared(table.later)
                .bind::<Text, _>(key)
                .bind::<SqlUuid, _>(token)
                .bind::<Double, _>(after.as_secs_f64())
                .execute(conn)
                .await
        }
        Attempt::Dead { error } => {
            let error = stored_error(&error);
            tracing::error!(table = table.name, key, %error, "job is dead: kept until an operator retries it");
            prepared(table.bury)
                .bind::<Text, _>(key)
                .bind::<SqlUuid, _>(token)
                .bind::<Nullable<Text>, _>(Some(error))
                .execute(conn)
                .await
        }
    }
}
