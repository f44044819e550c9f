//! Background work of workspace-service. Every worker drains a job table in PostgreSQL with
//! the `job-queue` crate: jobs are enqueued in the transaction of the change that needs them,
//! leased with `FOR UPDATE SKIP LOCKED`, and finished or rescheduled under their lease.
//! [`start`] starts them all.

pub mod liveblocks;
pub mod purge;

use crate::metrics::Metrics;
use liveblocks as cleanup;
use service_runtime::Boot;
use std::sync::Arc;
use tokio::sync::Notify;

/// Wakes a worker at once when a local change queued a job for it (else it finds the job at
/// its next poll).
#[derive(Clone, Debug, Default)]
pub struct Wakes {
    /// The Liveblocks clean-up: rooms were queued.
    pub cleanup: Arc<Notify>,
    /// The purge: a workspace or room was deleted.
    pub purge: Arc<Notify>,
}

/// Starts the Liveblocks clean-up (and its key check) on `api` when a key is set, the purge, and the
/// gauges of both queues, on `boot`'s workers (stopped and awaited at shutdown).
pub fn start(
    boot: &mut Boot,
    api: Option<Arc<dyn cleanup::LiveblocksApi>>,
    cleanup_settings: cleanup::CleanupSettings,
    purge_settings: purge::PurgeSettings,
    metrics: &Metrics,
) -> anyhow::Result<Wakes> {
    let wakes = Wakes::default();

    match api {
        Some(api) => {
            boot.workers.spawn(
                "liveblocks-key-check",
                cleanup::check_key_loop(
                    Arc::clone(&api),
                    cleanup_settings.key_check,
                    metrics.clone(),
                    boot.detail.clone(),
                    boot.lifecycle.stopped(),
                ),
            );
            let worker = cleanup::CleanupWorker::new(
                boot.pool.clone(),
                api,
                cleanup_settings,
                metrics.clone(),
                Arc::clone(&wakes.cleanup),
            );
            let stop = boot.lifecycle.stopped();
            boot.workers.spawn("liveblocks-cleanup", worker.run(stop));
        }
        None => {
            tracing::warn!(
                "LIVEBLOCKS_SECRET_KEY is not set: Liveblocks rooms are queued but not deleted until it is"
            );
            metrics.liveblocks_key_valid.set(-1);
            boot.detail.set(
                "liveblocks_key",
                Err("LIVEBLOCKS_SECRET_KEY is not set: rooms are queued but not deleted".into()),
            );
        }
    }
    // The gauges follow the queues whether or not a worker drains them.
    let m = metrics.clone();
    boot.workers.spawn(
        "liveblocks-queue-gauges",
        job_queue::sample_loop(
            boot.pool.clone(),
            &cleanup::CLEANUP_JOBS,
            move |d| {
                m.liveblocks_queue_depth.set(d.live());
                m.liveblocks_dead_jobs.set(d.dead);
                m.liveblocks_sweeps_scheduled.set(d.scheduled);
                m.liveblocks_oldest_job_seconds.set(d.oldest);
            },
            boot.lifecycle.stopped(),
        ),
    );
    let m = metrics.clone();
    boot.workers.spawn(
        "purge-queue-gauges",
        job_queue::sample_loop(
            boot.pool.clone(),
            &purge::PURGE_JOBS,
            move |d| {
                m.purge_jobs_pending.set(d.live());
                m.purge_dead_jobs.set(d.dead);
                m.purge_oldest_job_seconds.set(d.oldest);
            },
            boot.lifecycle.stopped(),
        ),
    );
    let purge = purge::PurgeWorker::new(
        boot.pool.clone(),
        purge_settings,
        metrics.clone(),
        boot.lifecycle.clone(),
        Arc::clone(&wakes.purge),
        Arc::clone(&wakes.cleanup),
    );
    let stop = boot.lifecycle.stopped();
    boot.workers.spawn("purge", purge.run(stop));
    Ok(wakes)
}
