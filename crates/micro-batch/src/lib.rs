//! Coalesces concurrent requests into batches whose size follows the load.
//!
//! A [`MicroBatcher`] runs at most `slots` batches at a time. A request that finds a free slot
//! goes at once: nothing waits for a batch to fill or for a timer, so an idle service answers
//! as fast as without batching. It only lets the tasks that are already runnable go first
//! (one yield), so requests that became ready together (several read from one socket) share
//! its batch. While every slot is busy, the requests that arrive queue up, and the next free
//! slot takes all of them (up to `max_batch`) as one batch. Each caller gets the result for its
//! own item.
//!
//! ```ignore
//! let b = MicroBatcher::start(2, 64, |items: Vec<u32>| async move {
//!     items.into_iter().map(|i| i * 2).collect()
//! });
//! assert_eq!(b.submit(21).await.unwrap(), 42);
//! ```

use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Why a submitted item got no result.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError<T> {
    /// The dispatcher has stopped (the runtime is shutting down); the item is handed back.
    Stopped(T),
    /// The batch holding the item ended without a result for it (the batch function
    /// returned too few results, or panicked).
    Lost,
}

type Pending<T, R> = (T, oneshot::Sender<R>);

/// Queues items and runs them in batches, `slots` batches at a time.
pub struct MicroBatcher<T, R> {
    queue: mpsc::Sender<Pending<T, R>>,
}

impl<T, R> Clone for MicroBatcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> MicroBatcher<T, R> {
    /// Starts the dispatcher on the current Tokio runtime. `run` gets each batch (1 to
    /// `max_batch` items, in arrival order) and returns one result per item, in the same
    /// order. The dispatcher stops once every clone of the batcher is dropped, after the
    /// batches in flight.
    pub fn start<F, Fut>(slots: usize, max_batch: usize, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (slots, max_batch) = (slots.max(1), max_batch.max(1));
        let (queue, rx) = mpsc::channel(max_batch * slots * 4);
        tokio::spawn(dispatch(rx, slots, max_batch, run));
        Self { queue }
    }

    /// Submits one item and waits for its result.
    pub async fn submit(&self, item: T) -> Result<R, SubmitError<T>> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError((item, _))) = self.queue.send((item, reply)).await {
            return Err(SubmitError::Stopped(item));
        }
        answer.await.map_err(|_| SubmitError::Lost)
    }
}

async fn dispatch<T, R, F, Fut>(
    mut rx: mpsc::Receiver<Pending<T, R>>,
    slots: usize,
    max_batch: usize,
    run: F,
) where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Vec<R>> + Send + 'static,
{
    let free = Arc::new(Semaphore::new(slots));
    while let Some(first) = rx.recv().await {
        // While every slot is busy, later items queue up and join this batch.
        let Ok(slot) = Arc::clone(&free).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        // Tokio runs a task it has just woken before the others that are ready, so without
        // this the first of several requests that became ready together would go alone.
        tokio::task::yield_now().await;
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
        let work = run(items);
        tokio::spawn(async move {
            let results = work.await;
            drop(slot);
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        });
    }
}
