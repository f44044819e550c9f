//! One per replica: a dedicated connection LISTENs on `vbase_changes`; each notification (the
//! workspace id) makes the hub read that workspace's new changes once and broadcast them to
//! the replica's watchers of it. NOTIFY only wakes: the change log is read after the last
//! number broadcast, so a lost notification (a reconnect) delays a change until the next poll
//! (every 2 s), never loses it. Each change is encoded once here ([`Frame`]) and the same bytes
//! go to every stream that sends it.

use super::frames::{Frame, Memory};
use crate::domain::changes;
use coherent_cache::{FRESH_FOR, Heard};
use diesel_async::AsyncPgConnection;
use futures::{FutureExt, StreamExt};
use service_runtime::Pool;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use uuid::Uuid;

/// How often every watched workspace is read even without a notification.
/// The `application_name` of the hub's LISTEN connection (in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "vbase-change-hub";

const POLL: Duration = Duration::from_secs(2);
/// Changes a watcher may fall behind the broadcast before it reads them from the log instead.
const CAPACITY: usize = 1024;
/// Workspaces read in one round of received notifications, at most.
const DRAIN_AT_MOST: usize = 4096;
/// What one read of the log takes at most: rows, and payload bytes.
const READ_ROWS: i64 = 500;
const READ_BYTES: i64 = 1 << 20;
/// Payload bytes a round of [`Hub::pump`] reads before it broadcasts them.
const ROUND_BYTES: usize = 4 << 20;

struct Topic {
    tx: broadcast::Sender<Arc<Frame>>,
    /// The last change number broadcast.
    last: i64,
}

/// The replica's hub.
#[derive(Clone)]
pub struct Hub {
    pool: Pool,
    topics: Arc<Mutex<HashMap<Uuid, Topic>>>,
    memory: Arc<Memory>,
    /// The replica's read caches: a workspace's own change (a channel or a member added,
    /// renamed or removed) goes out only once they have heard it.
    caches: Arc<[Heard]>,
}

impl Hub {
    /// A hub whose frames count in `memory`, whose workspace changes wait for `caches`.
    pub fn new(pool: Pool, memory: Arc<Memory>, caches: Vec<Heard>) -> Self {
        Self {
            pool,
            topics: Arc::default(),
            memory,
            caches: caches.into(),
        }
    }

    /// Waits until the read caches have heard every change committed before the call, so a
    /// watcher told of a change reads it back from this replica (at most [`FRESH_FOR`]: then
    /// a cache that has not heard it no longer answers).
    async fn caches_caught_up(&self) {
        futures::future::join_all(self.caches.iter().map(|c| c.caught_up(FRESH_FOR))).await;
    }

    /// Changes of `workspace` from now on (numbers after `head`, the last one committed when
    /// the workspace got its first watcher here). Reads on the caller's connection, so a watch
    /// being opened never holds two.
    pub async fn subscribe(
        &self,
        conn: &mut AsyncPgConnection,
        workspace: Uuid,
    ) -> Result<broadcast::Receiver<Arc<Frame>>, crate::error::Error> {
        if let Some(t) = self.lock().get(&workspace) {
            return Ok(t.tx.subscribe());
        }
        let (head, _) = changes::bounds(conn, workspace).await?;
        let mut topics = self.lock();
        let t = topics.entry(workspace).or_insert_with(|| Topic {
            tx: broadcast::channel(CAPACITY).0,
            last: head,
        });
        Ok(t.tx.subscribe())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Topic>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the changes of `workspaces` after their last broadcast and broadcasts them, in
    /// rounds: a round reads the next batch of as many of them as fit [`ROUND_BYTES`], waits
    /// once for the read caches if a batch holds a workspace's own change (messages and
    /// receipts touch nothing a cache keeps), then broadcasts; a workspace with more changes
    /// goes to the next round. One wait a round, not one a workspace: a burst of changes to
    /// many workspaces holds the replica's fan-out up by one ping, not by one each.
    async fn pump(&self, workspaces: impl IntoIterator<Item = Uuid>) -> anyhow::Result<()> {
        let mut queue: VecDeque<Uuid> = workspaces.into_iter().collect();
        if queue.is_empty() {
            return Ok(());
        }
        let mut conn = self.pool.get().await?;
        while !queue.is_empty() {
            let (mut read, mut held) = (Vec::new(), 0);
            while held < ROUND_BYTES
                && let Some(w) = queue.pop_front()
            {
                let Some(last) = self.lock().get(&w).map(|t| t.last) else {
                    continue;
                };
                let batch = changes::after(&mut conn, w, last, READ_ROWS, READ_BYTES).await?;
                held += batch.changes.iter().map(|c| c.payload.len()).sum::<usize>();
                read.push((w, batch));
            }
            let own = |b: &changes::Batch| b.changes.iter().any(|c| c.channel_id.is_none());
            if read.iter().any(|(_, b)| own(b)) {
                self.caches_caught_up().await;
            }
            for (w, batch) in read {
                if self.broadcast(w, &batch.changes) && batch.more {
                    queue.push_back(w);
                }
            }
        }
        Ok(())
    }

    /// Broadcasts `changes` of `workspace` not broadcast yet; false when nobody watches it.
    fn broadcast(&self, workspace: Uuid, changes: &[changes::Change]) -> bool {
        let frames: Vec<Frame> = changes.iter().map(|c| Frame::of(&self.memory, c)).collect();
        let mut topics = self.lock();
        let Some(t) = topics.get_mut(&workspace) else {
            return false;
        };
        for f in frames {
            // A concurrent pump may have broadcast it already.
            if f.seq <= t.last {
                continue;
            }
            t.last = f.seq;
            let _ = t.tx.send(Arc::new(f));
        }
        true
    }

    /// Reads every watched workspace, and forgets those nobody watches any more.
    async fn pump_all(&self) {
        let watched: Vec<Uuid> = {
            let mut topics = self.lock();
            topics.retain(|_, t| t.tx.receiver_count() > 0);
            topics.keys().copied().collect()
        };
        if let Err(e) = self.pump(watched).await {
            service_runtime::db::classify_error(&e);
            tracing::warn!(error = %e, "reading the change log failed");
        }
    }

    /// Listens on `database_url` (connecting through `tls`) and broadcasts until `stop`.
    pub async fn run(
        self,
        database_url: String,
        tls: service_runtime::DbTls,
        stop: impl Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            let listened = tokio::select! {
                r = self.listen(&database_url, &tls) => r,
                _ = &mut stop => return,
            };
            if let Err(e) = listened {
                service_runtime::db::classify_error(&e);
                tracing::warn!(error = %e, "change notifications lost; listening again in 1 s");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = &mut stop => return,
            }
        }
    }

    async fn listen(&self, database_url: &str, tls: &service_runtime::DbTls) -> anyhow::Result<()> {
        use diesel_async::SimpleAsyncConnection;
        let mut conn = tls.establish(database_url).await?;
        conn.batch_execute(&format!(
            "SET application_name = '{APPLICATION_NAME}'; LISTEN {}",
            changes::NOTIFY_CHANNEL
        ))
        .await?;
        // Whatever was committed while nobody listened.
        self.pump_all().await;
        let mut notes = std::pin::pin!(conn.notifications_stream());
        let mut poll = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                n = notes.next() => {
                    // Every notification already received, each workspace read once: a burst
                    // of commits to one workspace costs one read, and the stream's queue is
                    // emptied as fast as it fills.
                    let mut due = std::collections::BTreeSet::new();
                    let mut next = Some(n);
                    while let Some(n) = next {
                        let n = n.ok_or_else(|| anyhow::anyhow!("notification stream ended"))??;
                        if let Ok(w) = Uuid::try_parse(&n.payload) {
                            due.insert(w);
                        }
                        next = if due.len() < DRAIN_AT_MOST { notes.next().now_or_never() } else { None };
                    }
                    self.pump(due).await?;
                }
                _ = poll.tick() => self.pump_all().await,
            }
        }
    }
}
