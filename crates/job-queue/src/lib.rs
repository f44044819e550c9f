//! A job table drained by workers on any number of replicas.
//!
//! A job is a row keyed by what it is about, enqueued in the same transaction as the change
//! that needs it. A worker ([`JobRunner`]) leases due jobs (`FOR UPDATE SKIP
//! LOCKED`, a lease token and an expiry), does each with no transaction open, then deletes it
//! (done) or reschedules it under the same token. A crashed worker's lease expires and another
//! worker takes the job again; a result recorded after the lease was taken over changes nothing.
//!
//! A job may come back: an attempt that ends a round ([`Attempt::Later`]) schedules the job's
//! next round, counted from then on like a new job (scheduled until due, then pending).
//!
//! A job that got a permanent answer, or failed `max_attempts` times, becomes dead
//! (`dead_at`): no longer leased, kept and visible until an operator retries it. An attempt
//! that the service's own database could not take ([`Attempt::Deferred`]) spends no attempt.
//! The runner's database errors go through `service_runtime::db::classify_error`, so a
//! read-only server found by a worker retires the pool's stale connections. The queue is
//! sampled for its gauges by [`sample_loop`], which runs whether or not a worker does.
//!
//! A job table has its key and these columns:
//!
//! ```sql
//! enqueued_at     timestamptz NOT NULL DEFAULT now(),
//! attempts        integer NOT NULL DEFAULT 0,
//! next_attempt_at timestamptz NOT NULL DEFAULT now(),
//! leased_until    timestamptz,
//! lease_token     uuid,
//! last_error      text,
//! dead_at         timestamptz,
//! round           integer NOT NULL DEFAULT 0
//! ```
//!
//! with an index on `(next_attempt_at) WHERE dead_at IS NULL`.
//!
//! A service declares a table with [`job_table!`] (`static JOBS: JobTable =
//! job_table!("my_jobs", "id", "uuid")`), implements [`JobHandler`] for what one job does, and
//! runs a [`JobRunner`] over the two; jobs are inserted by the service's own transactions.

pub mod breaker;
pub mod jobs;
pub mod runner;

pub use breaker::BreakerSettings;
pub use jobs::{
    Attempt, Depths, JobHandler, JobRow, JobState, JobTable, Leased, SAMPLE_EVERY, backoff, depths,
    list, retry_key, retry_state, sample_loop,
};
pub use runner::{JobRunner, RunnerSettings};
