//! The notification connection of one replica's caches: one session for all of them, each
//! cache on its own channel.

use super::Coherent;
use super::triggers::{TRIGGERS_CHECKED_EVERY, Trigger, Triggers};
use futures::StreamExt;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Socket};

/// How often the listener pings itself through PostgreSQL's notification queue.
pub const PING_EVERY: Duration = Duration::from_millis(20);
/// The `application_name` of the notification connection (in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "coherent-cache";
/// Notifications received and not yet applied, at most. A burst beyond it is not queued: the
/// cache a left-out notification was for is emptied (the connection's reader never waits for
/// the caches, and memory does not grow with the burst).
pub const QUEUE: usize = 4096;
/// Longest a ping may take to be sent before the connection counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How the notification connection makes its TLS session: any `tokio_postgres` connector the
/// caller chose (the services' verifying one, or `tokio_postgres::NoTls`), so the listener
/// knows nothing of certificates or settings.
pub trait Tls:
    MakeTlsConnect<
        Socket,
        Stream: Send + 'static,
        TlsConnect: Send + TlsConnect<Socket, Future: Send>,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Tls for T where
    T: MakeTlsConnect<
            Socket,
            Stream: Send + 'static,
            TlsConnect: Send + TlsConnect<Socket, Future: Send>,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// A cache and the channel whose notifications it applies, for [`listen_all`].
#[derive(Clone)]
pub struct Subscription(Arc<dyn Subscribed>);

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Subscription")
            .field(&self.0.channel())
            .finish()
    }
}

/// What the connection does with one cache (private: only the listener pings and empties).
trait Subscribed: Send + Sync {
    fn channel(&self) -> &'static str;
    fn triggers(&self) -> &'static [Trigger];
    fn apply(&self, payload: &str);
    fn echo(&self, sent_ms: u64);
    fn overflowed(&self);
    fn lost(&self, listened: bool);
    fn clear(&self);
}

struct Cache<K, V, F> {
    cache: Coherent<K, V>,
    channel: &'static str,
    triggers: &'static [Trigger],
    apply: F,
}

impl<K, V, F> Subscribed for Cache<K, V, F>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    F: Fn(&Coherent<K, V>, &str) + Send + Sync,
{
    fn channel(&self) -> &'static str {
        self.channel
    }
    fn triggers(&self) -> &'static [Trigger] {
        self.triggers
    }
    fn apply(&self, payload: &str) {
        (self.apply)(&self.cache, payload);
    }
    fn echo(&self, sent_ms: u64) {
        self.cache.echo(sent_ms);
    }
    fn overflowed(&self) {
        self.cache.overflowed();
    }
    fn lost(&self, listened: bool) {
        self.cache.lost(listened);
    }
    fn clear(&self) {
        self.cache.clear();
    }
}

/// `cache` applying each notification on `channel` with `apply`; `None` when the cache is
/// turned off (nothing to listen for). `triggers` are those that send the notifications: the
/// cache answers only while every one exists and is enabled.
///
/// # Panics
/// If `channel` is not a lowercase identifier (`[a-z_][a-z0-9_]*`): PostgreSQL folds an
/// unquoted `LISTEN` name to lowercase, so notifications on any other name would never reach
/// the cache while its pings kept it answering.
pub fn subscribe<K, V>(
    cache: &Coherent<K, V>,
    channel: &'static str,
    triggers: &'static [Trigger],
    apply: impl Fn(&Coherent<K, V>, &str) + Send + Sync + 'static,
) -> Option<Subscription>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    assert!(
        channel.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && channel
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "cache channel {channel:?} must be a lowercase identifier"
    );
    cache.enabled().then(|| {
        Subscription(Arc::new(Cache {
            cache: cache.clone(),
            channel,
            triggers,
            apply,
        }))
    })
}

/// Listens on `channel` of `database_url` (connecting through `tls`) and applies each
/// notification's payload to `cache` with `apply`, until `stop`: [`listen_all`] for one cache.
pub async fn listen<K, V>(
    cache: Coherent<K, V>,
    database_url: String,
    tls: impl Tls,
    channel: &'static str,
    triggers: &'static [Trigger],
    apply: impl Fn(&Coherent<K, V>, &str) + Send + Sync + 'static,
    stop: impl Future<Output = ()>,
) where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let subscriptions = subscribe(&cache, channel, triggers, apply)
        .into_iter()
        .collect();
    listen_all(subscriptions, database_url, tls, stop).await;
}

/// Listens for every one of `subscriptions` on one connection to `database_url`, made through
/// `tls`, until `stop`. While not listening the caches answer nothing; each new connection
/// empties them.
pub async fn listen_all(
    subscriptions: Vec<Subscription>,
    database_url: String,
    tls: impl Tls,
    stop: impl Future<Output = ()>,
) {
    if subscriptions.is_empty() {
        return stop.await;
    }
    tokio::pin!(stop);
    const FIRST_RETRY: Duration = Duration::from_millis(100);
    let mut retry = FIRST_RETRY;
    loop {
        let mut listened = false;
        let ended = tokio::select! {
            r = session(&subscriptions, &database_url, tls.clone(), &mut listened) => r,
            _ = &mut stop => return,
        };
        for s in &subscriptions {
            s.0.lost(listened);
        }
        if let Err(e) = ended {
            let channels: Vec<_> = subscriptions.iter().map(|s| s.0.channel()).collect();
            // With its causes: tokio-postgres's own text says only what failed ("db error").
            tracing::warn!(
                error = format!("{e:#}"),
                ?channels,
                "cache notifications lost: reading through until back"
            );
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

/// What the connection's reader hands on: a change for the subscriptions of its channel (none:
/// a channel nobody here subscribed to, so every cache forgets everything), or a ping's echo.
enum Heard {
    Change(Vec<usize>, String),
    Echo(String),
}

/// One connection: LISTEN, check the triggers, empty the caches, then apply notifications,
/// ping and check the triggers until it fails.
async fn session(
    subscriptions: &[Subscription],
    database_url: &str,
    tls: impl Tls,
    listened: &mut bool,
) -> anyhow::Result<()> {
    let mut config: tokio_postgres::Config = database_url.parse()?;
    config.application_name(APPLICATION_NAME);
    let (client, mut connection) = config.connect(tls).await?;
    // This connection's own channel for its pings, so they do not go to the other replicas.
    let pings = format!("cache_ping_{}", uuid::Uuid::new_v4().simple());
    let channel_of_pings = pings.clone();
    let subscribed = subscriptions.to_vec();
    let (tx, mut rx) = tokio::sync::mpsc::channel(QUEUE);
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let heard = if n.channel() == channel_of_pings {
                        Heard::Echo(n.payload().to_owned())
                    } else {
                        let to = (0..subscribed.len())
                            .filter(|&i| subscribed[i].0.channel() == n.channel())
                            .collect();
                        Heard::Change(to, n.payload().to_owned())
                    };
                    match tx.try_send(Ok(heard)) {
                        Ok(()) => {}
                        // A ping left out only delays freshness; a change left out empties
                        // its cache.
                        Err(TrySendError::Full(Ok(Heard::Change(to, _)))) => {
                            for i in to {
                                subscribed[i].0.overflowed();
                            }
                        }
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
    let listens: String = subscriptions
        .iter()
        .map(|s| format!("LISTEN {};", s.0.channel()))
        .collect();
    // Pings commit without waiting for the disk: they carry no data.
    client
        .batch_execute(&format!(
            "SET synchronous_commit = off; {listens} LISTEN {pings}"
        ))
        .await?;
    let triggers = Triggers::firing(&client, subscriptions.iter().map(|s| s.0.triggers())).await?;
    // Changes made while nobody listened were not heard.
    for s in subscriptions {
        s.0.clear();
    }
    *listened = true;
    let ping = client.prepare("SELECT pg_notify($1, $2)").await?;
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval(TRIGGERS_CHECKED_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await;
    loop {
        tokio::select! {
            _ = check.tick() => {
                tokio::time::timeout(PING_TIMEOUT, triggers.unchanged(&client))
                    .await
                    .map_err(|_| anyhow::anyhow!("checking the triggers took longer than {PING_TIMEOUT:?}"))??;
            }
            m = rx.recv() => {
                match m.ok_or_else(|| anyhow::anyhow!("notification connection closed"))?? {
                    Heard::Change(to, _) if to.is_empty() => {
                        // Only our channels are listened to; if anything else arrives,
                        // forgetting everything is never wrong.
                        tracing::warn!("a notification on a channel no cache subscribed to: emptying the caches");
                        for s in subscriptions {
                            s.0.clear();
                        }
                    }
                    Heard::Change(to, payload) => {
                        for i in to {
                            subscriptions[i].0.apply(&payload);
                        }
                    }
                    Heard::Echo(sent) => {
                        let sent: u64 = sent.parse()?;
                        for s in subscriptions {
                            s.0.echo(sent);
                        }
                    }
                }
            }
            _ = tick.tick() => {
                let sent = super::now_ms().to_string();
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
