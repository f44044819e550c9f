//! Reconcile's calls to identity-service and workspace-service, repeated when they fail for a
//! moment: a service restarting, its database failing over (answered UNAVAILABLE), a deadline,
//! an overload, a lost connection ([`crate::forward::transient`]). Every call of a run goes
//! through [`Retrier::call`]: the writes, the comparisons, the deletion candidates, the Clerk
//! instance records and the run's record. Any other failure stops the run at once, as before.
//!
//! Repeating is safe because every call is idempotent on the service side (checked there):
//! - the writes (`UpsertUser(s)`, `DeleteUser`, `RemoveUser`, `UpsertWorkspace`,
//!   `DeleteWorkspace`, `UpsertMembership`, `DeleteMembership`) record their event id in
//!   `processed_events` (`ON CONFLICT DO NOTHING`) in the same statement or transaction as the
//!   change, and change nothing when it was there: a repeat of a write that committed answers
//!   DUPLICATE. The event id names the run, the action and the resource, so no other write
//!   shares it;
//! - `Compare*` only adds the run's candidates and listed marks (`ON CONFLICT DO NOTHING` /
//!   `DO UPDATE SET listed = true`) and reads; a repeat answers the same;
//! - `ListUnseen*` and `ListClerkInstances` read;
//! - `ConfirmClerkInstance` upserts the instance with `confirmed_at = now()`;
//! - `FinishReconcile` deletes the run's candidates and records the run (`ON CONFLICT (run_id)
//!   DO UPDATE`: a second report replaces the first).

use crate::forward::ForwardError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When to repeat a call that failed for a moment (`RECONCILE_SERVICE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The wait before the first repeat.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
    /// No repeat starts later than this after the first attempt.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::from(&super::config::ServiceRetryArgs::default())
    }
}

impl From<&super::config::ServiceRetryArgs> for RetryPolicy {
    /// The policy the `RECONCILE_SERVICE_*` settings make.
    fn from(args: &super::config::ServiceRetryArgs) -> Self {
        Self {
            attempts: args.reconcile_service_attempts,
            base: Duration::from_millis(args.reconcile_service_retry_base_ms),
            max: Duration::from_millis(args.reconcile_service_retry_max_ms),
            budget: Duration::from_secs(args.reconcile_service_retry_budget_secs),
        }
    }
}

impl RetryPolicy {
    /// The wait before repeat `n` (1 for the first): `base` doubled per repeat, at most `max`,
    /// drawn between its half and its whole, so the writes that failed together (up to 32 in
    /// flight) do not all come back at the same instant.
    pub fn wait(&self, n: u32) -> Duration {
        let whole = self
            .base
            .saturating_mul(1u32 << n.saturating_sub(1).min(20))
            .min(self.max);
        let half = whole / 2;
        half + (whole - half).mul_f64(rand::random::<f64>())
    }
}

/// A run's policy and the repeats it made (the summary counts them).
#[derive(Debug)]
pub struct Retrier {
    policy: RetryPolicy,
    retries: AtomicU64,
}

impl Retrier {
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            retries: AtomicU64::new(0),
        }
    }

    /// Repeats made so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Runs `call` (given its attempt number, from 1) until it succeeds, fails in a way a
    /// repeat does not change (anything but [`ForwardError::is_transient`]), or the attempts
    /// or the time budget are spent; then returns its last result. `what` names the call (a
    /// method, never what it carries) in the warning logged before each repeat.
    pub async fn call<T>(
        &self,
        what: &'static str,
        mut call: impl AsyncFnMut(u32) -> Result<T, ForwardError>,
    ) -> Result<T, ForwardError> {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let e = match call(attempt).await {
                Ok(t) => return Ok(t),
                Err(e) => e,
            };
            if !e.is_transient() {
                return Err(e);
            }
            let wait = self.policy.wait(attempt);
            if attempt >= self.policy.attempts || started.elapsed() + wait > self.policy.budget {
                return Err(match e {
                    ForwardError::Unavailable(reason) if attempt > 1 => {
                        ForwardError::Unavailable(format!(
                            "{reason} (gave up after {attempt} attempts in {:.1} s: \
                             RECONCILE_SERVICE_ATTEMPTS, RECONCILE_SERVICE_RETRY_BUDGET_SECS)",
                            started.elapsed().as_secs_f64()
                        ))
                    }
                    e => e,
                });
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            // The error is the gRPC code with the service's or the transport's text for a
            // failure of the moment (fixed texts, no request content); no resource id.
            tracing::warn!(
                call = what,
                attempt,
                attempts = self.policy.attempts,
                retry_in_ms = wait.as_millis() as u64,
                error = %e,
                "a service call failed for a moment; repeating it"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32, budget: Duration) -> RetryPolicy {
        RetryPolicy {
            attempts,
            base: Duration::from_millis(1),
            max: Duration::from_millis(4),
            budget,
        }
    }

    #[test]
    fn waits_double_up_to_the_cap_with_jitter() {
        let p = RetryPolicy {
            attempts: 6,
            base: Duration::from_millis(200),
            max: Duration::from_secs(5),
            budget: Duration::from_secs(30),
        };
        for (n, whole) in [
            (1, 200),
            (2, 400),
            (3, 800),
            (5, 3200),
            (6, 5000),
            (40, 5000),
        ] {
            for _ in 0..50 {
                let w = p.wait(n).as_millis() as u64;
                assert!((whole / 2..=whole).contains(&w), "wait {n}: {w} ms");
            }
        }
    }

    #[tokio::test]
    async fn transient_failures_are_repeated_up_to_the_attempts() {
        let r = Retrier::new(policy(3, Duration::from_secs(10)));
        let mut calls = 0;
        let out = r
            .call("test", async |_| {
                calls += 1;
                Err::<(), _>(ForwardError::Unavailable("x: Unavailable down".into()))
            })
            .await;
        assert_eq!(calls, 3);
        assert_eq!(r.retries(), 2);
        assert!(
            out.unwrap_err()
                .to_string()
                .contains("gave up after 3 attempts")
        );

        let ok = r
            .call("test", async |attempt| {
                if attempt < 3 {
                    Err(ForwardError::Unavailable("x".into()))
                } else {
                    Ok(attempt)
                }
            })
            .await;
        assert_eq!(ok, Ok(3));
        assert_eq!(r.retries(), 4);
    }

    #[tokio::test]
    async fn refusals_are_never_repeated() {
        let r = Retrier::new(policy(6, Duration::from_secs(10)));
        for e in [
            ForwardError::Rejected("bad".into()),
            ForwardError::Denied("x: PermissionDenied no".into()),
            ForwardError::Failed("x: Internal no".into()),
        ] {
            let mut calls = 0;
            let out = r
                .call("test", async |_| {
                    calls += 1;
                    Err::<(), _>(e.clone())
                })
                .await;
            assert_eq!((calls, out), (1, Err(e)));
        }
        assert_eq!(r.retries(), 0);
    }

    #[tokio::test]
    async fn no_repeat_starts_past_the_budget() {
        let r = Retrier::new(RetryPolicy {
            attempts: 20,
            base: Duration::from_millis(40),
            max: Duration::from_millis(40),
            budget: Duration::from_millis(100),
        });
        let started = Instant::now();
        let out = r
            .call("test", async |_| {
                Err::<(), _>(ForwardError::Unavailable("x".into()))
            })
            .await;
        assert!(out.is_err());
        assert!(r.retries() <= 4, "{}", r.retries());
        assert!(started.elapsed() < Duration::from_millis(400));
    }

    #[test]
    fn statuses_are_classified_once() {
        use crate::forward::{failure, transient};
        use tonic::{Code, Status};
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Cancelled,
        ] {
            assert!(transient(&Status::new(code, "x")), "{code:?}");
            assert!(failure("c", &Status::new(code, "x")).is_transient());
        }
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::NotFound,
            Code::AlreadyExists,
            Code::Internal,
            Code::Unknown,
            Code::Unimplemented,
        ] {
            assert!(!transient(&Status::new(code, "x")), "{code:?}");
            assert!(!failure("c", &Status::new(code, "x")).is_transient());
        }
        // Made on our side from a transport error: a connection lost mid-call.
        let lost = Status::from_error(Box::new(std::io::Error::other("connection closed")));
        assert_eq!(lost.code(), Code::Unknown);
        assert!(transient(&lost));
    }
}
