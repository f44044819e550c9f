//! A circuit breaker for a worker whose jobs call one outside service.
//!
//! When the service is down (5xx, timeouts, refused connections) or asks for a pause (429
//! with `Retry-After`), trying every queued job only hammers it and spends each job's
//! attempts: an outage of a few hours would kill a whole queue. After `failures` calls in a
//! row find it unavailable (or at once, for a server-given pause) the breaker opens: the
//! runner starts no job for a cool-down that doubles from `cooldown_base` to `cooldown_max`.
//! After the cool-down one job goes alone (the probe): it closes the breaker if the service
//! answers, or opens it for the next cool-down.
//!
//! Results are tagged with the epoch the job started in; the epoch changes with every
//! transition, so a call that began before the breaker opened says nothing about the probe.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How a breaker trips and cools down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Unavailable answers in a row that open the breaker.
    pub failures: u32,
    /// The first cool-down; each failed probe doubles it.
    pub cooldown_base: Duration,
    /// The longest cool-down.
    pub cooldown_max: Duration,
    /// How long a probe may take before another one may start (its result was lost: a task
    /// that panicked, say); the job's lease.
    pub probe_timeout: Duration,
}

/// What one call found out about the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It answered (whatever the answer said about the job).
    Answered,
    /// It did not answer usefully; `hold` is how long it asked us to wait, if it did.
    Unavailable { hold: Option<Duration> },
}

/// A change of the breaker, for logs and gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// No job starts for this long.
    Opened(Duration),
    /// Jobs start again.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant, trips: u32 },
    Probing { trips: u32, since: Instant },
}

#[derive(Debug)]
struct State {
    phase: Phase,
    epoch: u64,
}

/// The breaker of one runner.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State {
                phase: Phase::Closed { failures: 0 },
                epoch: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a job may start at `now`: `None` if it may, else until when (at the latest)
    /// to wait. While the probe runs, jobs wait for it (the returned time is only a bound).
    pub fn blocked_until(&self, now: Instant) -> Option<Instant> {
        match self.state().phase {
            Phase::Closed { .. } => None,
            Phase::Open { until, .. } if now < until => Some(until),
            Phase::Open { .. } => None,
            Phase::Probing { since, .. } if now < since + self.settings.probe_timeout => {
                Some(now + self.settings.cooldown_base)
            }
            Phase::Probing { .. } => None,
        }
    }

    /// A job starts at `now` (after [`Breaker::blocked_until`] said it may): its epoch, for
    /// [`Breaker::ended`]. The first job after a cool-down is the probe.
    pub fn started(&self, now: Instant) -> u64 {
        let mut s = self.state();
        let probe = match s.phase {
            Phase::Open { until, trips } if now >= until => Some(trips),
            Phase::Probing { trips, since } if now >= since + self.settings.probe_timeout => {
                Some(trips)
            }
            _ => None,
        };
        if let Some(trips) = probe {
            s.phase = Phase::Probing { trips, since: now };
            s.epoch += 1;
        }
        s.epoch
    }

    /// A job started in `epoch` found `health` at `now`: the transition it caused, if any.
    pub fn ended(&self, epoch: u64, health: Health, now: Instant) -> Option<Transition> {
        let mut s = self.state();
        if epoch != s.epoch {
            // Begun before the last transition: it tells nothing about the service now.
            return None;
        }
        let open = |trips: u32, hold: Option<Duration>| {
            let doubled = self
                .settings
                .cooldown_base
                .saturating_mul(1 << trips.saturating_sub(1).min(20))
                .min(self.settings.cooldown_max);
            let pause = hold.map_or(doubled, |h| h.max(doubled));
            (
                Phase::Open {
                    until: now + pause,
                    trips,
                },
                pause,
            )
        };
        let (phase, transition) = match (s.phase, health) {
            (Phase::Closed { .. }, Health::Answered) => {
                s.phase = Phase::Closed { failures: 0 };
                return None;
            }
            (Phase::Probing { .. } | Phase::Open { .. }, Health::Answered) => {
                (Phase::Closed { failures: 0 }, Transition::Closed)
            }
            (Phase::Closed { failures }, Health::Unavailable { hold }) => {
                if failures + 1 < self.settings.failures && hold.is_none() {
                    s.phase = Phase::Closed {
                        failures: failures + 1,
                    };
                    return None;
                }
                let (phase, pause) = open(1, hold);
                (phase, Transition::Opened(pause))
            }
            (
                Phase::Probing { trips, .. } | Phase::Open { trips, .. },
                Health::Unavailable { hold },
            ) => {
                let (phase, pause) = open(trips + 1, hold);
                (phase, Transition::Opened(pause))
            }
        };
        s.phase = phase;
        s.epoch += 1;
        Some(transition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWN: Health = Health::Unavailable { hold: None };
    const SECOND: Duration = Duration::from_secs(1);

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failures: 3,
            cooldown_base: SECOND,
            cooldown_max: 4 * SECOND,
            probe_timeout: 10 * SECOND,
        })
    }

    #[test]
    fn opens_after_failures_in_a_row_and_an_answer_resets_the_count() {
        let b = breaker();
        let t = Instant::now();
        let e = b.started(t);
        assert_eq!(b.ended(e, DOWN, t), None);
        assert_eq!(b.ended(e, DOWN, t), None);
        assert_eq!(b.ended(e, Health::Answered, t), None);
        assert_eq!(b.ended(e, DOWN, t), None);
        assert_eq!(b.ended(e, DOWN, t), None);
        assert_eq!(b.blocked_until(t), None);
        assert_eq!(b.ended(e, DOWN, t), Some(Transition::Opened(SECOND)));
        assert_eq!(b.blocked_until(t), Some(t + SECOND));
        // Calls begun before it opened change nothing.
        assert_eq!(b.ended(e, Health::Answered, t), None);
        assert_eq!(b.blocked_until(t), Some(t + SECOND));
    }

    #[test]
    fn one_probe_after_each_cool_down_which_doubles_up_to_the_max() {
        let b = breaker();
        let mut t = Instant::now();
        let e = b.started(t);
        for _ in 0..2 {
            b.ended(e, DOWN, t);
        }
        assert_eq!(b.ended(e, DOWN, t), Some(Transition::Opened(SECOND)));
        for pause in [2, 4, 4] {
            t += SECOND * 4;
            assert_eq!(b.blocked_until(t), None, "the cool-down is over");
            let probe = b.started(t);
            assert!(b.blocked_until(t).is_some(), "only the probe runs");
            assert_eq!(
                b.ended(probe, DOWN, t),
                Some(Transition::Opened(SECOND * pause))
            );
        }
        t += SECOND * 4;
        let probe = b.started(t);
        assert_eq!(
            b.ended(probe, Health::Answered, t),
            Some(Transition::Closed)
        );
        assert_eq!(b.blocked_until(t), None);
        // Closed again: one failure does not reopen it.
        let e = b.started(t);
        assert_eq!(b.ended(e, DOWN, t), None);
    }

    #[test]
    fn a_probe_whose_result_never_comes_is_replaced_after_the_timeout() {
        let b = breaker();
        let t = Instant::now();
        let e = b.started(t);
        for _ in 0..3 {
            b.ended(e, DOWN, t);
        }
        let lost = b.started(t + SECOND);
        assert!(b.blocked_until(t + 5 * SECOND).is_some());
        let t = t + 11 * SECOND;
        assert_eq!(b.blocked_until(t), None, "the probe timed out");
        let probe = b.started(t);
        assert_ne!(probe, lost);
        assert_eq!(
            b.ended(lost, Health::Answered, t),
            None,
            "too late to count"
        );
        assert_eq!(
            b.ended(probe, Health::Answered, t),
            Some(Transition::Closed)
        );
    }

    #[test]
    fn a_pause_the_server_asks_for_opens_at_once_for_at_least_that_long() {
        let b = breaker();
        let t = Instant::now();
        let e = b.started(t);
        let hold = Health::Unavailable {
            hold: Some(30 * SECOND),
        };
        assert_eq!(b.ended(e, hold, t), Some(Transition::Opened(30 * SECOND)));
        assert_eq!(b.blocked_until(t + 29 * SECOND), Some(t + 30 * SECOND));
        assert_eq!(b.blocked_until(t + 30 * SECOND), None);
    }
}
