//! Background work of workspace-service. Every worker drains a job table in PostgreSQL with
//! the `job-queue` crate: jobs are enqueued in the transaction of the change that needs them,
//! leased with `FOR UPDATE SKIP LOCKED`, and finished or rescheduled under their lease.

pub mod liveblocks;
pub mod purge;
