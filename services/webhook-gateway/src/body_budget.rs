//! The bytes of request bodies the gateway holds at once, across all requests
//! (`MAX_BODY_BYTES_IN_FLIGHT`). A body is read only before its signature can be checked, so
//! anyone can send one: without this bound, a few hundred concurrent 1 MiB bodies would take
//! more memory than the pod has. Each request takes its share (its `Content-Length`, or the
//! largest body when it declares none) before reading, and gives it back when its handler ends.

use prometheus_client::metrics::gauge::Gauge;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long a request waits for its share before it is answered 503: long enough to ride out
/// a burst, short enough that a waiting request holds nothing but its connection for long.
pub const WAIT: Duration = Duration::from_secs(1);

/// The budget: one semaphore permit per byte.
#[derive(Debug)]
pub struct BodyBudget {
    permits: Semaphore,
    total: usize,
    /// `webhook_body_bytes_in_flight`.
    held: Gauge,
}

/// A request's share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Share<'a> {
    _permit: SemaphorePermit<'a>,
    bytes: i64,
    held: &'a Gauge,
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        self.held.dec_by(self.bytes);
    }
}

impl BodyBudget {
    /// A budget of `total` bytes; `held` reports the bytes taken.
    pub fn new(total: usize, held: Gauge) -> Self {
        Self {
            permits: Semaphore::new(total.min(Semaphore::MAX_PERMITS)),
            total,
            held,
        }
    }

    /// A share of `bytes`, waiting at most `wait` for it; `None` when it could not be had.
    pub async fn take(&self, bytes: usize, wait: Duration) -> Option<Share<'_>> {
        // More than the whole budget never fits: refuse at once instead of waiting.
        let n = u32::try_from(bytes).ok().filter(|_| bytes <= self.total)?;
        let permit = tokio::time::timeout(wait, self.permits.acquire_many(n))
            .await
            .ok()?
            // The semaphore is never closed.
            .ok()?;
        let bytes = i64::from(n);
        self.held.inc_by(bytes);
        Some(Share {
            _permit: permit,
            bytes,
            held: &self.held,
        })
    }

    /// Bytes not taken now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shares_beyond_the_budget_wait_then_are_refused_and_come_back_when_dropped() {
        let budget = BodyBudget::new(1000, Gauge::default());
        let short = Duration::from_millis(20);
        let a = budget.take(600, short).await.unwrap();
        let b = budget.take(400, short).await.unwrap();
        assert_eq!((budget.available(), budget.held.get()), (0, 1000));
        assert!(budget.take(1, short).await.is_none(), "nothing left");
        assert!(budget.take(1001, WAIT).await.is_none(), "never fits");
        drop(a);
        assert_eq!((budget.available(), budget.held.get()), (600, 400));
        // A waiting request gets its share as soon as another gives it back.
        let waiting = budget.take(1000, Duration::from_secs(5));
        let (got, ()) = tokio::join!(waiting, async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(b);
        });
        assert!(got.is_some());
        drop(got);
        assert_eq!((budget.available(), budget.held.get()), (1000, 0));
        assert!(
            budget.take(0, short).await.is_some(),
            "an empty body takes nothing"
        );
    }
}
