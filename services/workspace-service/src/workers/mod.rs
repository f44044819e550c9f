//! Background work of workspace-service. Every worker drains a job table in PostgreSQL with
//! the one pattern of [`jobs`] and [`runner`]: jobs are enqueued in the transaction of the change that needs
//! them, leased with `FOR UPDATE SKIP LOCKED`, and finished or rescheduled under their lease.

pub mod breaker;
pub mod jobs;
pub mod liveblocks;
pub mod purge;
pub mod runner;
