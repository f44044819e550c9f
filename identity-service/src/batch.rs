//! Group commit for webhook upserts.
//!
//! Clerk sends one webhook per change, and under load many arrive at once. Each `UpsertUser`
//! still answers only after its own event is committed, but commands that arrive while the
//! database is busy share one statement and one commit ([`users::upsert_users`]). Batch sizes
//! follow the load ([`micro_batch`]): an idle service runs each command at once, alone. A batch
//! that fails is replayed one command at a time, so each caller gets its own outcome or its own
//! error, never a neighbour's.

use crate::error::Error;
use crate::users::{self, Outcome, UpsertUser};
use micro_batch::{MicroBatcher, SubmitError};
use service_runtime::Pool;

/// Largest number of commands in one statement.
pub const MAX_BATCH: usize = 64;

/// Queues upserts and applies them in batches, `slots` statements at a time.
#[derive(Clone)]
pub struct UpsertBatcher {
    batcher: MicroBatcher<UpsertUser, Result<Outcome, Error>>,
    pool: Pool,
}

impl UpsertBatcher {
    /// Starts the dispatcher; `on_batch` sees the size of every batch.
    pub fn start(
        pool: Pool,
        slots: usize,
        on_batch: impl Fn(usize) + Send + Sync + 'static,
    ) -> Self {
        let p = pool.clone();
        let batcher = MicroBatcher::start(slots, MAX_BATCH, move |cmds: Vec<UpsertUser>| {
            on_batch(cmds.len());
            let pool = p.clone();
            async move { apply(&pool, cmds).await }
        });
        Self { batcher, pool }
    }

    /// Applies one upsert; returns when it is committed (or refused).
    pub async fn upsert(&self, cmd: UpsertUser) -> Result<Outcome, Error> {
        match self.batcher.submit(cmd).await {
            Ok(r) => r,
            // The dispatcher is gone (shutting down): apply it directly.
            Err(SubmitError::Stopped(cmd)) => users::upsert_user(&self.pool, cmd).await,
            Err(SubmitError::Lost) => Err(Error::Interrupted(
                "the command's batch ended without its result; retry",
            )),
        }
    }
}

async fn apply(pool: &Pool, cmds: Vec<UpsertUser>) -> Vec<Result<Outcome, Error>> {
    if let [one] = cmds.as_slice() {
        return vec![users::upsert_user(pool, one.clone()).await];
    }
    match users::upsert_users(pool, &cmds).await {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(e) => {
            tracing::warn!(error = %e, commands = cmds.len(), "batched upsert failed; applying one at a time");
            futures::future::join_all(cmds.into_iter().map(|c| users::upsert_user(pool, c))).await
        }
    }
}
