//! A per-replica cache of rows that decide what a caller may see, kept coherent with
//! PostgreSQL and bounded in memory and in staleness.
//!
//! - **Invalidation.** Triggers in the database `pg_notify` a channel with the key of every
//!   row that changes, in the writing transaction, so every write path (commands, reconcile,
//!   purge, a hand-run statement) is covered and nothing is announced before it commits. The
//!   [`listen_all`] task of each replica applies those notifications to its caches, all on one
//!   connection (each cache on its own channel; [`listen`] for a single cache).
//! - **A read that races a change.** A miss takes a [`Ticket`] before it reads the database and
//!   stores its row only if no invalidation happened since ([`Coherent::insert`]), so a row read
//!   before a change can never be stored after the change's notification was applied.
//! - **Bounded staleness.** The listener sends itself a ping (`pg_notify` on a channel only it
//!   listens on) every [`PING_EVERY`]. PostgreSQL delivers notifications in commit order, so when
//!   the ping sent at `s` comes back, every change committed before `s` has been applied. The
//!   cache answers only while the last ping that came back was sent less than [`FRESH_FOR`] ago:
//!   a change is never served stale for longer than that after its commit, also when the
//!   notification connection hangs without an error.
//! - **A lost connection** empties the cache and reads go to the database until the listener
//!   is back (and has emptied it again: whatever changed in between was not heard).
//! - **Memory.** Entries are weighed in bytes; the cache never holds more than its capacity
//!   (least recently used entries go first). Notifications wait in one queue per connection
//!   (shared by the replica's caches) of at most [`QUEUE`]; when a burst (a bulk statement's
//!   rows, a backfill) outruns the caches, those that do not fit are not kept, and each one
//!   dropped empties the cache it was for instead of invalidating its key, which is never less
//!   than what it would have done. The caches on one connection share its availability: a
//!   burst for one delays the pings of all (they stop answering for a moment), never their
//!   correctness.

use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod listen;
mod triggers;

pub use listen::{PING_EVERY, QUEUE, Subscription, Tls, listen, listen_all, subscribe};
pub use triggers::{TRIGGERS_CHECKED_EVERY, Trigger};

/// How long after a ping was sent its echo lets the cache answer: the most a committed change
/// can stay unseen on a replica.
pub const FRESH_FOR: Duration = Duration::from_millis(80);

/// Milliseconds since the process's first use of a cache, plus one (0 means never): the clock
/// of pings and freshness, shared by every cache so that one connection's ping serves them all.
fn now_ms() -> u64 {
    static ORIGIN: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    ORIGIN.elapsed().as_millis() as u64 + 1
}

/// The weight of an entry in bytes (its key and value, heap included, roughly).
pub type Weigh<K, V> = fn(&K, &V) -> u64;

struct Weigher<K, V>(Weigh<K, V>);

impl<K, V> Clone for Weigher<K, V> {
    fn clone(&self) -> Self {
        Self(self.0)
    }
}

impl<K, V> quick_cache::Weighter<K, V> for Weigher<K, V> {
    fn weight(&self, key: &K, val: &V) -> u64 {
        (self.0)(key, val).max(1)
    }
}

struct Inner<K, V> {
    entries: quick_cache::sync::Cache<K, V, Weigher<K, V>>,
    /// Bumped by every invalidation: a miss stores its row only if it did not move.
    epoch: AtomicU64,
    /// Milliseconds on [`now_ms`]'s clock until which the cache may answer (0: not listening).
    fresh_until: AtomicU64,
    /// The send time (on [`now_ms`]'s clock) of the last ping that came back.
    echoed: tokio::sync::watch::Sender<u64>,
    capacity: u64,
    counts: Counts,
}

/// What the cache did, counted for its metrics.
#[derive(Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    read_through: AtomicU64,
    invalidations: AtomicU64,
    connection_losses: AtomicU64,
    /// Notifications dropped because the queue was full (each emptied the cache).
    dropped: AtomicU64,
}

/// What a cache did since it started, and what it holds now (its metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lookups it answered.
    pub hits: u64,
    /// Lookups of keys it did not hold, while it could answer.
    pub misses: u64,
    /// Lookups it could not answer (not listening, or its pings late): read from the database.
    pub read_through: u64,
    /// Invalidations: a change's notification, or a local write's forget (one each, however
    /// many entries it names).
    pub invalidations: u64,
    /// Notification connections lost (each emptied the cache until the next one listened).
    pub connection_losses: u64,
    /// Notifications dropped because the queue was full (each emptied the cache).
    pub dropped: u64,
    /// Entries held now.
    pub entries: u64,
    /// Bytes held now.
    pub bytes: u64,
    /// The most bytes it holds.
    pub capacity: u64,
    /// Whether it may answer now.
    pub answering: bool,
}

/// A replica's cache of `V` by `K`; clones share it. Capacity 0 turns it off (every read a miss).
#[derive(Clone)]
pub struct Coherent<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> std::fmt::Debug for Coherent<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coherent")
            .field("capacity_bytes", &self.inner.capacity)
            .finish_non_exhaustive()
    }
}

/// What a cache says of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<V> {
    /// Held, and the cache may answer.
    Hit(V),
    /// Not held; what a read finds may be stored.
    Miss,
    /// The cache cannot answer now: read the database.
    Unanswered,
}

/// The state of the cache when a miss started reading the database.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl<K, V> Coherent<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    /// A cache of at most `capacity_bytes` (0: off), entries weighed by `weigh`. It answers
    /// nothing until its [`listen_all`] task hears its first ping.
    pub fn new(capacity_bytes: u64, weigh: Weigh<K, V>) -> Self {
        // quick_cache wants an item estimate; 256 bytes an entry is about what ours weigh.
        let items = (capacity_bytes / 256).clamp(1, 1 << 20) as usize;
        let entries =
            quick_cache::sync::Cache::with_weighter(items, capacity_bytes.max(1), Weigher(weigh));
        Self {
            inner: Arc::new(Inner {
                entries,
                epoch: AtomicU64::new(0),
                fresh_until: AtomicU64::new(0),
                echoed: tokio::sync::watch::Sender::new(0),
                capacity: capacity_bytes,
                counts: Counts::default(),
            }),
        }
    }

    /// Whether the cache may hold anything.
    pub fn enabled(&self) -> bool {
        self.inner.capacity > 0
    }

    /// Whether the cache may answer now: listening, and a ping sent less than [`FRESH_FOR`]
    /// ago came back.
    pub fn fresh(&self) -> bool {
        self.enabled() && now_ms() < self.inner.fresh_until.load(Ordering::Acquire)
    }

    /// The cached value of `key`, if the cache may answer.
    pub fn get(&self, key: &K) -> Option<V> {
        match self.lookup(key) {
            Lookup::Hit(v) => Some(v),
            Lookup::Miss | Lookup::Unanswered => None,
        }
    }

    /// What the cache says of `key`: its value, that it does not hold it, or that it cannot
    /// answer now (turned off, not listening, or its pings late), counted for its metrics
    /// (except when turned off).
    pub fn lookup(&self, key: &K) -> Lookup<V> {
        if !self.enabled() {
            return Lookup::Unanswered;
        }
        let c = &self.inner.counts;
        if !self.fresh() {
            c.read_through.fetch_add(1, Ordering::Relaxed);
            return Lookup::Unanswered;
        }
        match self.inner.entries.get(key) {
            Some(v) => {
                c.hits.fetch_add(1, Ordering::Relaxed);
                Lookup::Hit(v)
            }
            None => {
                c.misses.fetch_add(1, Ordering::Relaxed);
                Lookup::Miss
            }
        }
    }

    /// Whether a lookup of `key` would hit now; not counted as a lookup, and it does not
    /// mark the entry as used.
    pub fn answers(&self, key: &K) -> bool {
        self.fresh() && self.inner.entries.contains_key(key)
    }

    /// Take before reading what [`Coherent::insert`] will store.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.inner.epoch.load(Ordering::SeqCst))
    }

    /// Stores `value` read under `ticket`, unless something was invalidated since.
    pub fn insert(&self, ticket: Ticket, key: K, value: V) {
        if !self.enabled() || self.inner.epoch.load(Ordering::SeqCst) != ticket.0 {
            return;
        }
        self.inner.entries.insert(key.clone(), value);
        // An invalidation between the check and the insert bumped the epoch first and may
        // have removed before this insert landed: take it out again.
        if self.inner.epoch.load(Ordering::SeqCst) != ticket.0 {
            self.inner.entries.remove(&key);
        }
    }

    /// Forgets `key`.
    pub fn invalidate(&self, key: &K) {
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        self.inner
            .counts
            .invalidations
            .fetch_add(1, Ordering::Relaxed);
        self.inner.entries.remove(key);
    }

    /// Forgets every entry whose key matches.
    pub fn invalidate_where(&self, matches: impl Fn(&K) -> bool) {
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        self.inner
            .counts
            .invalidations
            .fetch_add(1, Ordering::Relaxed);
        self.inner.entries.retain(|k, _| !matches(k));
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        self.inner.entries.clear();
    }

    /// A notification was not kept (the queue was full): whatever key it named, forgetting
    /// everything covers it, and a miss that started before is not stored.
    fn overflowed(&self) {
        self.inner.counts.dropped.fetch_add(1, Ordering::Relaxed);
        self.clear();
    }

    /// Notifications dropped so far because they came faster than the cache applied them.
    pub fn dropped(&self) -> u64 {
        self.inner.counts.dropped.load(Ordering::Relaxed)
    }

    /// Stops answering and forgets everything (the notifications are not heard); `listened`:
    /// the session that ended had been listening (a lost connection, not a failed attempt).
    fn lost(&self, listened: bool) {
        if listened {
            self.inner
                .counts
                .connection_losses
                .fetch_add(1, Ordering::Relaxed);
        }
        self.inner.fresh_until.store(0, Ordering::Release);
        self.clear();
    }

    /// Our ping sent at `sent_ms` came back.
    fn echo(&self, sent_ms: u64) {
        self.inner.fresh_until.fetch_max(
            sent_ms.saturating_add(FRESH_FOR.as_millis() as u64),
            Ordering::AcqRel,
        );
        self.inner.echoed.send_if_modified(|e| {
            let newer = sent_ms > *e;
            *e = (*e).max(sent_ms);
            newer
        });
    }

    /// What it did so far and what it holds now.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counts;
        Stats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            read_through: c.read_through.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            connection_losses: c.connection_losses.load(Ordering::Relaxed),
            dropped: self.dropped(),
            entries: self.len() as u64,
            bytes: self.bytes(),
            capacity: self.capacity(),
            answering: self.fresh(),
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.inner.entries.weight()
    }

    /// The most bytes it holds.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }

    /// Waits (at most `wait`) until a ping sent after this call came back, so every change
    /// committed before the call has been applied here; false if none came back in time.
    pub async fn caught_up(&self, wait: Duration) -> bool {
        Heard(self.inner.echoed.clone()).caught_up(wait).await
    }

    /// A handle to wait on this cache's progress without its entries ([`Heard::caught_up`]);
    /// `None` when the cache is off (it never answers, so nothing need wait for it).
    pub fn heard(&self) -> Option<Heard> {
        self.enabled().then(|| Heard(self.inner.echoed.clone()))
    }
}

/// What a cache has heard, for another part of the process whose output must not run ahead
/// of it: a change shown elsewhere before the cache forgot what it changed could be read back
/// stale.
#[derive(Clone)]
pub struct Heard(tokio::sync::watch::Sender<u64>);

impl Heard {
    /// Waits (at most `wait`) until a ping sent after this call came back, so every change
    /// committed before the call has been applied to the cache; false if none came back in
    /// time. Waiting [`FRESH_FOR`] is enough either way: a cache answers only while a ping
    /// sent less than that ago came back, so after it the cache has applied the change or
    /// does not answer.
    pub async fn caught_up(&self, wait: Duration) -> bool {
        // A ping sent earlier in this same millisecond was sent before the call.
        let since = now_ms() + 1;
        let mut rx = self.0.subscribe();
        tokio::time::timeout(wait, rx.wait_for(|e| *e >= since))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
