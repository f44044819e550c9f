//! One per replica: a dedicated connection LISTENs on `vbase_changes`; each notification (the
//! workspace id) makes the hub read that workspace's new changes once and broadcast them to
//! the replica's watchers of it. NOTIFY only wakes: the change log is read after the last
//! number broadcast, so a lost notification (a reconnect) delays a change until the next poll
//! (every 2 s), never loses it. The hub also prunes the change log hourly.

use crate::domain::changes::{self, Change};
use futures::StreamExt;
use service_runtime::Pool;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use uuid::Uuid;

/// How often every watched workspace is read even without a notification.
const POLL: Duration = Duration::from_secs(2);
/// How often the change log is pruned.
const PRUNE: Duration = Duration::from_secs(3600);

struct Topic {
    tx: broadcast::Sender<Arc<Change>>,
    /// The last change number broadcast.
    last: i64,
}

/// The replica's hub.
#[derive(Clone)]
pub struct Hub {
    pool: Pool,
    topics: Arc<Mutex<HashMap<Uuid, Topic>>>,
    capacity: usize,
}

impl Hub {
    /// A hub whose watchers may fall `capacity` changes behind before they are ended.
    pub fn new(pool: Pool, capacity: usize) -> Self {
        Self {
            pool,
            topics: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// Changes of `workspace` from now on (numbers after `head`, the last one committed when
    /// the workspace got its first watcher here).
    pub async fn subscribe(
        &self,
        workspace: Uuid,
    ) -> Result<broadcast::Receiver<Arc<Change>>, crate::error::Error> {
        if let Some(t) = self.lock().get(&workspace) {
            return Ok(t.tx.subscribe());
        }
        let mut conn = self.pool.get().await?;
        let (head, _) = changes::bounds(&mut conn, workspace).await?;
        let mut topics = self.lock();
        let t = topics.entry(workspace).or_insert_with(|| Topic {
            tx: broadcast::channel(self.capacity).0,
            last: head,
        });
        Ok(t.tx.subscribe())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Topic>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `workspace`'s changes after the last broadcast and broadcasts them.
    async fn pump(&self, workspace: Uuid) -> anyhow::Result<()> {
        let Some(mut last) = self.lock().get(&workspace).map(|t| t.last) else {
            return Ok(());
        };
        let mut conn = self.pool.get().await?;
        loop {
            let batch = changes::after(&mut conn, workspace, last, 500).await?;
            let n = batch.len();
            let mut topics = self.lock();
            let Some(t) = topics.get_mut(&workspace) else {
                return Ok(());
            };
            for c in batch {
                // A concurrent pump may have broadcast it already.
                if c.seq <= t.last {
                    continue;
                }
                t.last = c.seq;
                let _ = t.tx.send(Arc::new(c));
            }
            last = t.last;
            if n < 500 {
                return Ok(());
            }
        }
    }

    /// Reads every watched workspace, and forgets those nobody watches any more.
    async fn pump_all(&self) {
        let watched: Vec<Uuid> = {
            let mut topics = self.lock();
            topics.retain(|_, t| t.tx.receiver_count() > 0);
            topics.keys().copied().collect()
        };
        for w in watched {
            if let Err(e) = self.pump(w).await {
                tracing::warn!(error = %e, "reading the change log failed");
            }
        }
    }

    /// Listens on `database_url` and broadcasts until `stop`; prunes changes older than
    /// `retention`.
    pub async fn run(
        self,
        database_url: String,
        retention: Duration,
        stop: impl Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut last_prune: Option<tokio::time::Instant> = None;
        loop {
            let listened = tokio::select! {
                r = self.listen(&database_url, &mut last_prune, retention) => r,
                _ = &mut stop => return,
            };
            if let Err(e) = listened {
                tracing::warn!(error = %e, "change notifications lost; listening again in 1 s");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = &mut stop => return,
            }
        }
    }

    async fn listen(
        &self,
        database_url: &str,
        last_prune: &mut Option<tokio::time::Instant>,
        retention: Duration,
    ) -> anyhow::Result<()> {
        use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
        let mut conn = AsyncPgConnection::establish(database_url).await?;
        conn.batch_execute(&format!("LISTEN {}", changes::NOTIFY_CHANNEL))
            .await?;
        // Whatever was committed while nobody listened.
        self.pump_all().await;
        let mut notes = std::pin::pin!(conn.notifications_stream());
        let mut poll = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                n = notes.next() => {
                    let n = n.ok_or_else(|| anyhow::anyhow!("notification stream ended"))??;
                    if let Ok(w) = Uuid::try_parse(&n.payload) {
                        self.pump(w).await?;
                    }
                }
                _ = poll.tick() => {
                    self.pump_all().await;
                    if last_prune.is_none_or(|t| t.elapsed() >= PRUNE) {
                        *last_prune = Some(tokio::time::Instant::now());
                        let mut c = self.pool.get().await?;
                        match changes::prune(&mut c, retention).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(pruned = n, "change log pruned"),
                            Err(e) => tracing::warn!(error = %e, "pruning the change log failed"),
                        }
                    }
                }
            }
        }
    }
}
