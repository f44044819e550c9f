//! A breaker for calls a user waits on: after [`FAILURES`] unavailable answers in a row,
//! calls are refused at once for [`COOLDOWN`]; then calls pass again, and the next failure
//! closes the gate for another cooldown.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Unavailable answers in a row that close the gate.
pub const FAILURES: u32 = 5;
/// How long a closed gate refuses calls.
pub const COOLDOWN: Duration = Duration::from_secs(5);

/// The gate's state.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    closed_until: Option<Instant>,
}

impl Gate {
    /// Whether a call may go out now.
    pub fn admits(&self) -> bool {
        let Ok(s) = self.state.lock() else {
            return true;
        };
        s.closed_until.is_none_or(|until| Instant::now() >= until)
    }

    /// Records whether Liveblocks answered (`true`: it did, whatever the answer).
    pub fn record(&self, answered: bool) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if answered {
            *s = State::default();
            return;
        }
        s.failures = s.failures.saturating_add(1);
        if s.failures >= FAILURES {
            s.closed_until = Some(Instant::now() + COOLDOWN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_after_failures_in_a_row_and_opens_on_an_answer() {
        let g = Gate::default();
        for _ in 0..FAILURES - 1 {
            g.record(false);
            assert!(g.admits());
        }
        g.record(true);
        for _ in 0..FAILURES - 1 {
            g.record(false);
        }
        assert!(g.admits(), "an answer resets the count");
        g.record(false);
        assert!(!g.admits());
        g.record(true);
        assert!(g.admits());
    }
}
