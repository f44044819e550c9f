//! Group commit for webhook upserts.
//!
//! Clerk sends one webhook per change, and under load many arrive at once. Each `UpsertUser`
//! still answers only after its own event is committed, but commands that arrive while the
//! database is busy share one statement and one commit ([`users::upsert_users`]):
//!
//! - a command that finds a free slot runs at once, alone: no waiting when the service is idle;
//! - when all slots are busy, the commands that queue up meanwhile go together as the next batch
//!   (up to [`MAX_BATCH`]), so the batch size follows the load;
//! - a batch that fails is replayed one command at a time, so each caller gets its own outcome
//!   or its own error, never a neighbour's.

use crate::error::Error;
use crate::users::{self, Outcome, UpsertUser};
use service_runtime::Pool;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Largest number of commands in one statement.
pub const MAX_BATCH: usize = 64;

struct Pending {
    cmd: UpsertUser,
    reply: oneshot::Sender<Result<Outcome, Error>>,
}

/// Queues upserts and applies them in batches, `slots` statements at a time.
#[derive(Clone)]
pub struct UpsertBatcher {
    queue: mpsc::Sender<Pending>,
    pool: Pool,
}

impl UpsertBatcher {
    /// Starts the dispatcher; it stops when the last clone of the batcher is dropped, after the
    /// batches in flight are done.
    pub fn start(pool: Pool, slots: usize, on_batch: impl Fn(usize) + Send + 'static) -> Self {
        let (queue, rx) = mpsc::channel(MAX_BATCH * slots.max(1) * 4);
        tokio::spawn(dispatch(pool.clone(), rx, slots.max(1), on_batch));
        Self { queue, pool }
    }

    /// Applies one upsert; returns when it is committed (or refused).
    pub async fn upsert(&self, cmd: UpsertUser) -> Result<Outcome, Error> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(p)) = self.queue.send(Pending { cmd, reply }).await {
            // The dispatcher is gone (shutting down): apply it directly.
            return users::upsert_user(&self.pool, p.cmd).await;
        }
        answer.await.unwrap_or(Err(Error::Interrupted(
            "the service stopped before the command finished; retry",
        )))
    }
}

async fn dispatch(
    pool: Pool,
    mut rx: mpsc::Receiver<Pending>,
    slots: usize,
    on_batch: impl Fn(usize),
) {
    let free = Arc::new(Semaphore::new(slots));
    while let Some(first) = rx.recv().await {
        // While every slot is busy, later commands queue up and join this batch.
        let Ok(slot) = Arc::clone(&free).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        on_batch(batch.len());
        let pool = pool.clone();
        tokio::spawn(async move {
            apply(&pool, batch).await;
            drop(slot);
        });
    }
}

async fn apply(pool: &Pool, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        let p = batch.remove(0);
        let _ = p.reply.send(users::upsert_user(pool, p.cmd).await);
        return;
    }
    let cmds: Vec<UpsertUser> = batch.iter().map(|p| p.cmd.clone()).collect();
    match users::upsert_users(pool, &cmds).await {
        Ok(outcomes) => {
            for (p, outcome) in batch.into_iter().zip(outcomes) {
                let _ = p.reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, commands = batch.len(), "batched upsert failed; applying one at a time");
            futures::future::join_all(batch.into_iter().map(|p| async move {
                let _ = p.reply.send(users::upsert_user(pool, p.cmd).await);
            }))
            .await;
        }
    }
}
