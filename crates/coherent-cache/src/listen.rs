//! The notification connection of one replica's cache.

use super::Coherent;
use futures::StreamExt;
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio_postgres::AsyncMessage;

/// How often the listener pings itself through PostgreSQL's notification queue.
pub const PING_EVERY: Duration = Duration::from_millis(20);
/// The `application_name` of the notification connection (in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "coherent-cache";
/// Notifications received and not yet applied, at most. A burst beyond it is not queued: the
/// cache is emptied for each one left out (the connection's reader never waits for the cache,
/// and memory does not grow with the burst).
pub const QUEUE: usize = 4096;
/// Longest a ping may take to be sent before the connection counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Listens on `channel` of `database_url` and applies each notification's payload to `cache`
/// with `apply`, until `stop`. While not listening the cache answers nothing; each new
/// connection empties it.
pub async fn listen<K, V>(
    cache: Coherent<K, V>,
    database_url: String,
    channel: &'static str,
    apply: impl Fn(&Coherent<K, V>, &str),
    stop: impl Future<Output = ()>,
) where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    if !cache.enabled() {
        return stop.await;
    }
    tokio::pin!(stop);
    const FIRST_RETRY: Duration = Duration::from_millis(100);
    let mut retry = FIRST_RETRY;
    loop {
        let mut listened = false;
        let ended = tokio::select! {
            r = session(&cache, &database_url, channel, &apply, &mut listened) => r,
            _ = &mut stop => return,
        };
        cache.lost(listened);
        if let Err(e) = ended {
            tracing::warn!(error = %e, channel, "cache notifications lost: reading through until back");
        }
        if listened {
            retry = FIRST_RETRY;
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = &mut stop => return,
        }
        retry = (retry * 2).min(Duration::from_secs(2));
    }
}

/// One connection: LISTEN, empty the cache, then apply notifications and ping until it fails.
async fn session<K, V>(
    cache: &Coherent<K, V>,
    database_url: &str,
    channel: &str,
    apply: &impl Fn(&Coherent<K, V>, &str),
    listened: &mut bool,
) -> anyhow::Result<()>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let mut config: tokio_postgres::Config = database_url.parse()?;
    config.application_name(APPLICATION_NAME);
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    // This replica's own channel for its pings, so they do not go to the other replicas.
    let pings = format!("{channel}_{}", uuid::Uuid::new_v4().simple());
    let channel_of_pings = pings.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel(QUEUE);
    let overflow = cache.clone();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let change = n.channel() != channel_of_pings;
                    match tx.try_send(Ok((change, n.payload().to_owned()))) {
                        Ok(()) => {}
                        // A ping left out only delays freshness; a change left out empties
                        // the cache.
                        Err(TrySendError::Full(_)) if change => overflow.overflowed(),
                        Err(TrySendError::Full(_)) => {}
                        Err(TrySendError::Closed(_)) => break,
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // If the queue is full, dropping `tx` ends the session all the same.
                    let _ = tx.try_send(Err(e));
                    break;
                }
            }
        }
    });
    let _driver = AbortOnDrop(driver);
    // Pings commit without waiting for the disk: they carry no data.
    client
        .batch_execute(&format!(
            "SET synchronous_commit = off; LISTEN {channel}; LISTEN {pings}"
        ))
        .await?;
    // Changes made while nobody listened were not heard.
    cache.clear();
    *listened = true;
    let ping = client.prepare("SELECT pg_notify($1, $2)").await?;
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = rx.recv() => {
                let (change, payload) = m.ok_or_else(|| anyhow::anyhow!("notification connection closed"))??;
                if change {
                    apply(cache, &payload);
                } else {
                    cache.echo(payload.parse()?);
                }
            }
            _ = tick.tick() => {
                let sent = cache.now_ms().to_string();
                tokio::time::timeout(PING_TIMEOUT, client.execute(&ping, &[&pings, &sent]))
                    .await
                    .map_err(|_| anyhow::anyhow!("a ping took longer than {PING_TIMEOUT:?}"))??;
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
