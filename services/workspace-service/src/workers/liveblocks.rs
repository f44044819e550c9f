//! Durable Liveblocks room clean-up: rooms are queued in `liveblocks_cleanup_jobs` by the
//! transaction that deletes their rows (`domain::liveblocks::enqueue`, or the purge's SQL), and
//! this worker deletes them at Liveblocks.
//!
//! 204/404 finish a job's round. Liveblocks creates a room when a client connects to it, and a
//! client keeps its access token until its `exp` (about an hour), so a token issued just before
//! the rows' deletion can bring the room back: the job's first round schedules a second
//! (`sweep_after` after the rows' deletion, which enqueued the job) that deletes the room
//! again. No token for the room is granted after its rows' deletion (room access is decided
//! on the database; one granted just before reaches its client within the call's 3 s), and no
//! token living longer than `sweep_after` less a minute is handed out (`RoomTokens`).
//!
//! A 429 pauses the whole worker for its `Retry-After` and spends no attempt (a rate limit says
//! nothing about the room); 5xx, timeouts and connection errors back off exponentially with
//! jitter, until `max_attempts`. While Liveblocks is unavailable the worker pauses as a whole
//! (`job_queue::breaker`) rather than spend every job's attempts on it. 401/403 (a wrong key) and any other
//! refusal (e.g. 422) are permanent: the job becomes dead, kept until an operator retries it.
//! [`KeyCheck`] tries the key at start-up and every few minutes with a cheap authenticated
//! read, and reports it on `/status`, in the log and in `liveblocks_key_valid`.

pub use crate::config::CleanupSettings;
pub use crate::liveblocks::{Delivery, HttpLiveblocks, KeyState, LiveblocksApi, encode_room_id};
use crate::liveblocks::{RATE_LIMITED_RETRY, RATE_LIMITED_RETRY_MAX};
use crate::metrics::Metrics;
use job_queue::{
    Attempt, BreakerSettings, JobHandler, JobRunner, JobTable, Leased, RunnerSettings, job_table,
};
use service_runtime::Pool;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// The outbox of Liveblocks rooms to delete.
pub static CLEANUP_JOBS: JobTable = job_table!("liveblocks_cleanup_jobs", "room_id", "text");

/// Unavailable answers in a row (5xx, timeouts, no connection) that pause the whole worker;
/// a 429 with `Retry-After` pauses it at once.
pub const BREAKER_FAILURES: u32 = 5;

/// The backoff of the `attempts`-th attempt.
fn backoff(settings: &CleanupSettings, attempts: i32) -> Duration {
    job_queue::backoff(settings.backoff_base, settings.backoff_max, attempts)
}

/// Deletes one leased room at Liveblocks and decides what becomes of its job.
struct CleanupHandler {
    api: Arc<dyn LiveblocksApi>,
    settings: CleanupSettings,
    metrics: Metrics,
    key_problem_logged: AtomicBool,
}

#[tonic::async_trait]
impl JobHandler for CleanupHandler {
    async fn attempt(&self, job: &Leased, _token: Uuid) -> Attempt {
        let room_id = &job.key;
        let delivery = self.api.delete_room(room_id).await;
        let (label, attempt) = match &delivery {
            Delivery::Deleted => ("deleted", self.finished(job)),
            Delivery::AlreadyGone => ("already_gone", self.finished(job)),
            Delivery::Retry { after, reason } => {
                let hold = after.map(|a| a.min(Duration::from_secs(3600)));
                (
                    "retry",
                    Attempt::Unavailable {
                        after: hold.unwrap_or_else(|| backoff(&self.settings, job.attempts)),
                        error: reason.clone(),
                        hold,
                    },
                )
            }
            // Spends no attempt: a rate limit says nothing about the room.
            Delivery::RateLimited { after } => (
                "rate_limited",
                Attempt::Throttled {
                    after: after
                        .unwrap_or(RATE_LIMITED_RETRY)
                        .clamp(RATE_LIMITED_RETRY, RATE_LIMITED_RETRY_MAX),
                    error: "429 rate limited".into(),
                },
            ),
            Delivery::KeyRejected { status, code } => {
                self.metrics.liveblocks_key_rejections.inc();
                self.metrics.liveblocks_key_valid.set(0);
                let hint = crate::liveblocks::key_hint(code);
                if !self.key_problem_logged.swap(true, Ordering::SeqCst) {
                    tracing::error!(
                        status,
                        %code,
                        "Liveblocks refused a room deletion with {status} {code}{hint}; clean-up jobs become dead until the cause is fixed and they are retried"
                    );
                }
                let error = format!("{status} {code}{hint}");
                ("key_rejected", Attempt::Dead { error })
            }
            Delivery::Rejected { status, reason } => {
                tracing::error!(%room_id, status, %reason, "Liveblocks refused a room deletion; the job is dead until retried");
                let error = format!("{status}: {reason}");
                ("rejected", Attempt::Dead { error })
            }
        };
        if matches!(attempt, Attempt::Done | Attempt::Later { .. }) {
            self.key_problem_logged.store(false, Ordering::SeqCst);
        }
        self.metrics.liveblocks_delivery(label);
        attempt
    }

    fn breaker_changed(&self, open: bool) {
        self.metrics.liveblocks_paused.set(i64::from(open));
    }
}

impl CleanupHandler {
    /// The room is gone at Liveblocks: see [`after_deletion`].
    fn finished(&self, job: &Leased) -> Attempt {
        after_deletion(self.settings.sweep_after, job)
    }
}

/// What follows a room's deletion: the first round schedules the sweep `sweep_after` after the
/// job was enqueued, unless tokens issued before that have expired already (the sweep is due).
/// Timed by the database's clock: a pod whose clock runs ahead would sweep early, before the
/// last token expired. (The attempt's own time only makes the sweep later.)
fn after_deletion(sweep_after: Option<Duration>, job: &Leased) -> Attempt {
    let Some(sweep_after) = sweep_after.filter(|_| job.round == 0) else {
        return Attempt::Done;
    };
    let due = job.enqueued_at + sweep_after;
    match (due - job.leased_at).to_std() {
        Ok(after) if !after.is_zero() => Attempt::Later { after },
        _ => Attempt::Done,
    }
}

/// Drains the Liveblocks outbox.
pub struct CleanupWorker {
    runner: JobRunner<CleanupHandler>,
}

impl CleanupWorker {
    /// Creates the worker; `wake` is notified after local enqueues.
    pub fn new(
        pool: Pool,
        api: Arc<dyn LiveblocksApi>,
        settings: CleanupSettings,
        metrics: Metrics,
        wake: Arc<Notify>,
    ) -> Self {
        let handler = CleanupHandler {
            api,
            settings,
            metrics,
            key_problem_logged: AtomicBool::new(false),
        };
        let runner_settings = RunnerSettings {
            concurrency: settings.concurrency,
            lease: settings.lease,
            poll: settings.poll,
            max_attempts: settings.max_attempts,
            prefetch: settings.concurrency,
            attempt_max: settings.attempt_max,
            breaker: Some(BreakerSettings {
                failures: BREAKER_FAILURES,
                cooldown_base: settings.backoff_base,
                cooldown_max: settings.backoff_max,
                probe_timeout: settings.lease,
            }),
        };
        Self {
            runner: JobRunner::new(pool, &CLEANUP_JOBS, handler, runner_settings, wake),
        }
    }

    /// Runs until `stop` resolves, then lets in-flight calls finish.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        self.runner.run(stop).await
    }
}

/// Checks the key at start-up and every `every`, until `stop`: the state goes to `/status`
/// (`liveblocks_key`), `liveblocks_key_valid` (1 valid, 0 rejected, -1 unknown) and, when it
/// changes, the log.
pub async fn check_key_loop(
    api: Arc<dyn LiveblocksApi>,
    every: Duration,
    metrics: Metrics,
    detail: service_runtime::metrics::HealthDetail,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut last: Option<KeyState> = None;
    loop {
        let state = api.check_key().await;
        let (gauge, shown) = match &state {
            KeyState::Valid => (1, Ok("LIVEBLOCKS_SECRET_KEY accepted".to_owned())),
            KeyState::Rejected { status, code } => (
                0,
                Err(format!(
                    "LIVEBLOCKS_SECRET_KEY rejected ({status} {code}): rooms are not deleted; fix the key, then retry the dead jobs"
                )),
            ),
            KeyState::WrongUrl { status } => (
                0,
                Err(format!(
                    "LIVEBLOCKS_API_URL answered {status} for the rooms listing: it does not reach Liveblocks' REST API; rooms are not deleted"
                )),
            ),
            KeyState::Unknown { reason } => (-1, Ok(format!("not checked: {reason}"))),
        };
        metrics.liveblocks_key_valid.set(gauge);
        if last.as_ref() != Some(&state) {
            match &state {
                KeyState::Valid => tracing::info!("Liveblocks accepted LIVEBLOCKS_SECRET_KEY"),
                KeyState::Rejected { status, code } => tracing::error!(
                    status,
                    %code,
                    "Liveblocks rejected LIVEBLOCKS_SECRET_KEY ({status} {code}): rooms are not deleted until it is fixed"
                ),
                KeyState::WrongUrl { status } => tracing::error!(
                    status,
                    "LIVEBLOCKS_API_URL answered {status} for the rooms listing: it does not reach Liveblocks' REST API (give the bare origin it answers on, without /v2; redirects are not followed); rooms are not deleted"
                ),
                KeyState::Unknown { reason } => {
                    tracing::warn!(%reason, "could not check LIVEBLOCKS_SECRET_KEY")
                }
            }
        }
        detail.set("liveblocks_key", shown);
        last = Some(state);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = &mut stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use std::time::Duration;

    fn leased(round: i32, leased_after: Duration) -> Leased {
        // Long ago by this process's clock: only the database's times may count.
        let enqueued_at = Utc.with_ymd_and_hms(2001, 2, 3, 4, 5, 6).unwrap();
        Leased {
            key: "doc:x".into(),
            attempts: 1,
            round,
            enqueued_at,
            leased_at: enqueued_at + leased_after,
        }
    }

    #[test]
    fn the_sweep_is_timed_by_the_databases_clock() {
        let hour = Duration::from_secs(3600);
        let sweep = Some(hour + Duration::from_secs(300));
        assert_eq!(
            after_deletion(sweep, &leased(0, Duration::from_secs(600))),
            Attempt::Later {
                after: Duration::from_secs(3300)
            },
            "due 65 minutes after the enqueue, 55 after the lease"
        );
        assert_eq!(
            after_deletion(sweep, &leased(0, 2 * hour)),
            Attempt::Done,
            "the tokens expired before the first deletion: no sweep"
        );
        assert_eq!(
            after_deletion(sweep, &leased(1, Duration::ZERO)),
            Attempt::Done,
            "the sweep itself ends the job"
        );
        assert_eq!(
            after_deletion(None, &leased(0, Duration::ZERO)),
            Attempt::Done
        );
    }
}
