//! A service's life in three phases, and the background tasks that live as long as it.
//!
//! - **running**: serving;
//! - **shutting down** (the shutdown signal came): health answers NOT_SERVING, long-lived
//!   streams are told to end, the server stops accepting and drains in-flight calls;
//! - **stopped** (the drain finished or timed out): background workers stop, and `run` awaits
//!   each of them before it returns, so work they started is finished, not dropped.

use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The phase a service is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving.
    Running,
    /// Draining: no new work is advertised or accepted.
    ShuttingDown,
    /// Drained: background work ends.
    Stopped,
}

/// Who is told when the phase changes. Cheap to clone; every clone sees the same phase.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    tx: watch::Sender<Phase>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            tx: watch::channel(Phase::Running).0,
        }
    }
}

impl Lifecycle {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.tx.borrow()
    }

    /// Resolves once the service is shutting down (or stopped).
    pub fn shutting_down(&self) -> impl Future<Output = ()> + Send + 'static {
        self.reached(Phase::ShuttingDown)
    }

    /// Resolves once the service has stopped.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        self.reached(Phase::Stopped)
    }

    fn reached(&self, phase: Phase) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|p| *p >= phase).await;
        }
    }

    /// Enters "shutting down" (no effect once there or later).
    pub fn begin_shutdown(&self) {
        self.advance(Phase::ShuttingDown);
    }

    /// Enters "stopped".
    pub fn stop(&self) {
        self.advance(Phase::Stopped);
    }

    fn advance(&self, to: Phase) {
        self.tx.send_if_modified(|p| {
            let later = *p < to;
            if later {
                *p = to;
            }
            later
        });
    }
}

/// How long each step of a stop may take. With the pod's `preStop` they must fit in its
/// `terminationGracePeriodSeconds` (30 s by default): `deploy/check.py` checks the manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct ShutdownArgs {
    /// Seconds calls in flight get to finish once the service is shutting down (1 to 300);
    /// then it stops anyway.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECS", default_value_t = 12)]
    pub shutdown_drain_secs: u64,
    /// Seconds the background workers get to stop after the drain (1 to 300); a worker still
    /// running then is aborted (its job's lease lets another replica take it over).
    #[arg(long, env = "SHUTDOWN_WORKER_STOP_SECS", default_value_t = 8)]
    pub shutdown_worker_stop_secs: u64,
}

impl Default for ShutdownArgs {
    fn default() -> Self {
        Self {
            shutdown_drain_secs: 12,
            shutdown_worker_stop_secs: 8,
        }
    }
}

impl ShutdownArgs {
    /// What is out of range, if anything.
    pub fn check(&self) -> Result<(), String> {
        for (name, secs) in [
            ("SHUTDOWN_DRAIN_SECS", self.shutdown_drain_secs),
            ("SHUTDOWN_WORKER_STOP_SECS", self.shutdown_worker_stop_secs),
        ] {
            if !(1..=300).contains(&secs) {
                return Err(format!("{name} ({secs}) must be from 1 to 300"));
            }
        }
        Ok(())
    }

    /// The longest wait for calls in flight.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.shutdown_drain_secs)
    }

    /// The longest wait for the background workers.
    pub fn worker_stop(&self) -> Duration {
        Duration::from_secs(self.shutdown_worker_stop_secs)
    }
}

/// The background tasks of a service; [`Workers::join`] awaits them after the stop.
#[derive(Debug, Default)]
pub struct Workers {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Workers {
    /// Runs `task` in the background; it should end once [`Lifecycle::stopped`] resolves.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// Awaits every task, each for at most what is left of `limit`; a task still running
    /// then is aborted and named in the log. Returns the names of the tasks that did not end
    /// on their own (panicked or were aborted).
    pub async fn join(self, limit: Duration) -> Vec<&'static str> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut unfinished = Vec::new();
        for (name, mut handle) in self.tasks {
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(worker = name, error = %e, "background worker failed");
                    unfinished.push(name);
                }
                Err(_) => {
                    tracing::warn!(
                        worker = name,
                        ?limit,
                        "background worker did not stop in time; aborted"
                    );
                    handle.abort();
                    unfinished.push(name);
                }
            }
        }
        unfinished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn phases_only_move_forward_and_workers_are_awaited() {
        let life = Lifecycle::default();
        let shutting = life.shutting_down();
        let stopped = life.stopped();
        let finished = Arc::new(AtomicBool::new(false));
        let mut workers = Workers::default();
        let (f, stop) = (Arc::clone(&finished), life.stopped());
        workers.spawn("slow", async move {
            stop.await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            f.store(true, Ordering::SeqCst);
        });
        life.begin_shutdown();
        shutting.await;
        assert_eq!(life.phase(), Phase::ShuttingDown);
        life.stop();
        life.begin_shutdown();
        assert_eq!(life.phase(), Phase::Stopped);
        stopped.await;
        assert!(workers.join(Duration::from_secs(5)).await.is_empty());
        assert!(
            finished.load(Ordering::SeqCst),
            "join returned before the worker ended"
        );
    }

    #[tokio::test]
    async fn a_worker_that_never_stops_is_aborted_and_named() {
        let mut workers = Workers::default();
        workers.spawn("stuck", std::future::pending());
        assert_eq!(workers.join(Duration::from_millis(20)).await, vec!["stuck"]);
    }
}
