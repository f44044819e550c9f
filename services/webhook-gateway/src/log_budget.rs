//! A budget of log lines per window, for events anyone on the internet can cause (requests
//! that fail verification): a flood costs a few lines a minute, and the next line says how many
//! were left out. The metrics count every one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines of refused-verification warnings per minute.
pub const REFUSALS_LOGGED_PER_MINUTE: u32 = 10;

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Log it, saying how many were left out before it.
    Log { left_out: u64 },
    /// Leave it out.
    Skip,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    used: u32,
    left_out: u64,
}

/// At most `per_window` admitted events per `window`.
#[derive(Debug)]
pub struct LogBudget {
    per_window: u32,
    window: Duration,
    state: Mutex<Option<Window>>,
}

impl LogBudget {
    /// A budget of `per_window` lines per `window`.
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            state: Mutex::new(None),
        }
    }

    /// Whether the event at `now` is logged.
    pub fn admit(&self, now: Instant) -> Admit {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let carried = match &*state {
            Some(w) if now.duration_since(w.started) < self.window => None,
            Some(w) => Some(w.left_out),
            None => Some(0),
        };
        if let Some(left_out) = carried {
            *state = Some(Window {
                started: now,
                used: 0,
                left_out,
            });
        }
        let w = state.as_mut().expect("set above");
        if w.used < self.per_window {
            w.used += 1;
            let left_out = std::mem::take(&mut w.left_out);
            Admit::Log { left_out }
        } else {
            w.left_out += 1;
            Admit::Skip
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_costs_a_few_lines_and_the_next_says_how_many_were_left_out() {
        let b = LogBudget::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let first: Vec<Admit> = (0..100)
            .map(|i| b.admit(t0 + Duration::from_millis(i)))
            .collect();
        assert_eq!(first.iter().filter(|a| **a != Admit::Skip).count(), 3);
        assert_eq!(first[0], Admit::Log { left_out: 0 });
        // The next window's first line carries the count of the last one's left out.
        assert_eq!(
            b.admit(t0 + Duration::from_secs(61)),
            Admit::Log { left_out: 97 }
        );
        assert_eq!(
            b.admit(t0 + Duration::from_secs(62)),
            Admit::Log { left_out: 0 }
        );
    }
}
