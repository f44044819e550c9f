//! Reads from a streaming replica, with the primary as the fallback.
//!
//! A [`ReadPool`] hands out a connection for a read: the replica's while its lag is within
//! `DB_READ_MAX_LAG_MS`, the primary's otherwise. A caller who just wrote passes the LSN its
//! write committed at ([`commit_lsn`]): the replica serves the read only once it has replayed
//! that far, waiting at most `DB_READ_YOUR_WRITES_WAIT_MS`; after that the primary serves it, so
//! a caller always reads its own writes. A sampler measures the lag every second
//! (`db_replica_lag_seconds`). LISTEN never goes to a replica: NOTIFY is not replicated.

use diesel::QueryableByName;
use diesel::sql_types::{Bool, Double, Text};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::{Object, PoolError};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::db::Pool;

/// Settings of the read replica.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplicaArgs {
    /// PostgreSQL URL of a streaming replica (CloudNativePG: `vbase-db-ro`) for reads that may
    /// lag; unset: every read goes to DATABASE_URL.
    #[arg(long, env = "DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<crate::Secret>,
    /// Replica lag beyond which reads go to the primary, milliseconds (0 to 600000).
    #[arg(long, env = "DB_READ_MAX_LAG_MS", default_value_t = 1_000)]
    pub db_read_max_lag_ms: u64,
    /// Longest a read after the caller's own write waits for the replica to replay it before
    /// the primary serves it, milliseconds (0 to 10000).
    #[arg(long, env = "DB_READ_YOUR_WRITES_WAIT_MS", default_value_t = 100)]
    pub db_read_your_writes_wait_ms: u64,
}

impl ReplicaArgs {
    /// What is out of range.
    pub fn check(&self) -> Result<(), String> {
        if self.db_read_max_lag_ms > 600_000 {
            return Err(format!(
                "DB_READ_MAX_LAG_MS ({}) must be at most 600000",
                self.db_read_max_lag_ms
            ));
        }
        if self.db_read_your_writes_wait_ms > 10_000 {
            return Err(format!(
                "DB_READ_YOUR_WRITES_WAIT_MS ({}) must be at most 10000",
                self.db_read_your_writes_wait_ms
            ));
        }
        Ok(())
    }
}

impl Default for ReplicaArgs {
    fn default() -> Self {
        Self {
            database_read_url: None,
            db_read_max_lag_ms: 1_000,
            db_read_your_writes_wait_ms: 100,
        }
    }
}

impl ReplicaArgs {
    /// A pool of at most `max_size` connections to DATABASE_READ_URL asking for `plans`, with
    /// the session settings of `db` (as [`crate::DatabaseArgs::extra_pool`]); `None` when no
    /// replica is set.
    pub fn pool(
        &self,
        db: &crate::DatabaseArgs,
        max_size: usize,
        plans: crate::db::PlanCache,
    ) -> anyhow::Result<Option<Pool>> {
        let Some(url) = &self.database_read_url else {
            return Ok(None);
        };
        let pool = match db.db_pool_mode {
            crate::db::PoolMode::Session => {
                crate::db::build_pool_with(url.expose(), max_size, plans, db.limits())?
            }
            // The role's stored settings (ALTER ROLE on the primary) are replicated.
            crate::db::PoolMode::Transaction => crate::db::build_pool_with(
                url.expose(),
                max_size,
                crate::db::PlanCache::Auto,
                crate::db::SessionLimits::default(),
            )?,
        };
        Ok(Some(pool))
    }

    /// The read pool over `primary` and a replica pool of `max_size` asking for `plans` (none
    /// when DATABASE_READ_URL is unset: then it hands out `primary`'s connections, nothing
    /// else).
    pub fn read_pool(
        &self,
        db: &crate::DatabaseArgs,
        primary: Pool,
        max_size: usize,
        plans: crate::db::PlanCache,
        metrics: ReplicaMetrics,
    ) -> anyhow::Result<ReadPool> {
        Ok(ReadPool::new(
            primary,
            self.pool(db, max_size, plans)?,
            Duration::from_millis(self.db_read_max_lag_ms),
            Duration::from_millis(self.db_read_your_writes_wait_ms),
            metrics,
        ))
    }

    /// How long a caller's own write is remembered ([`OwnWrites`]): the replica lag it may
    /// still be behind by plus two samples of the lag.
    pub fn own_write_memory(&self) -> Duration {
        Duration::from_millis(self.db_read_max_lag_ms) + 2 * SAMPLE_EVERY
    }
}

/// How often the lag is measured.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// A position in the primary's WAL, as PostgreSQL prints it (`16/B374D848`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lsn(String);

impl Lsn {
    /// A position no replica reaches: a read after it waits the bounded wait, then goes to the
    /// primary (for a write whose LSN could not be read).
    pub fn unknown() -> Self {
        Lsn("FFFFFFFF/FFFFFFFF".to_owned())
    }

    /// The position as a number, for comparisons.
    pub fn position(&self) -> Option<u64> {
        let (hi, lo) = self.0.split_once('/')?;
        Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
    }
}

impl std::str::FromStr for Lsn {
    type Err = String;

    /// An LSN as PostgreSQL prints it (`16/B374D848`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lsn = Lsn(s.to_owned());
        match lsn.position() {
            Some(_) => Ok(lsn),
            None => Err(format!("{s:?} is not an LSN")),
        }
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The LSN of each caller's last write through this process, so its next reads wait for the
/// replica to replay it ([`ReadPool::get`]'s `after`). Bounded: entries go after `keep` (a
/// replica within the lag limit has replayed them by then), and beyond `max_entries` the oldest
/// go first. Clones share the map. A write through another process is not in it.
#[derive(Debug, Clone)]
pub struct OwnWrites {
    inner: Arc<std::sync::Mutex<OwnWritesInner>>,
    keep: Duration,
    max_entries: usize,
}

#[derive(Debug, Default)]
struct OwnWritesInner {
    last: std::collections::HashMap<String, (Lsn, std::time::Instant)>,
    /// Callers in the order of their writes (a caller may appear more than once).
    order: std::collections::VecDeque<(String, std::time::Instant)>,
}

impl OwnWrites {
    /// A map of at most `max_entries` callers, each kept for `keep` after its write.
    pub fn new(keep: Duration, max_entries: usize) -> Self {
        Self {
            inner: Arc::default(),
            keep,
            max_entries: max_entries.max(1),
        }
    }

    /// Records that `caller` wrote at `lsn` (a later position than one recorded stays).
    pub fn record(&self, caller: &str, lsn: Lsn) {
        let now = std::time::Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let lsn = match inner.last.get(caller) {
            Some((old, _)) if old.position() > lsn.position() => old.clone(),
            _ => lsn,
        };
        inner.last.insert(caller.to_owned(), (lsn, now));
        inner.order.push_back((caller.to_owned(), now));
        self.trim(&mut inner, now);
    }

    /// The LSN `caller`'s reads must see, if it wrote lately.
    pub fn after(&self, caller: &str) -> Option<Lsn> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .last
            .get(caller)
            .filter(|(_, at)| at.elapsed() < self.keep)
            .map(|(lsn, _)| lsn.clone())
    }

    /// Callers remembered.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last
            .len()
    }

    /// Whether no caller is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn trim(&self, inner: &mut OwnWritesInner, now: std::time::Instant) {
        while let Some((caller, at)) = inner.order.front().cloned() {
            let expired = now.duration_since(at) >= self.keep;
            if !expired && inner.last.len() <= self.max_entries {
                break;
            }
            inner.order.pop_front();
            // Only the caller's latest write removes its entry.
            if inner.last.get(&caller).is_some_and(|(_, t)| *t == at) {
                inner.last.remove(&caller);
            }
        }
    }
}

#[derive(QueryableByName)]
struct LsnRow {
    #[diesel(sql_type = Text)]
    lsn: String,
}

#[derive(QueryableByName)]
struct Replayed {
    #[diesel(sql_type = Bool)]
    replayed: bool,
}

#[derive(QueryableByName)]
struct Lag {
    #[diesel(sql_type = Double)]
    seconds: f64,
}

/// The LSN a caller's committed writes are at: read on the primary, after the commit.
pub async fn commit_lsn(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Lsn> {
    use diesel_async::RunQueryDsl;
    crate::prepared("SELECT pg_current_wal_insert_lsn()::text AS lsn")
        .get_result::<LsnRow>(conn)
        .await
        .map(|r| Lsn(r.lsn))
}

/// The replica's lag: 0 when it has replayed all it received, else the age of the last
/// transaction it replayed.
const LAG: &str = "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
            END::float8 AS seconds";

/// Whether the replica has replayed up to `$1`.
const REPLAYED: &str = "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS replayed";

/// Where reads went: `target` (replica, primary) and `reason` (fresh, lagging, own_write).
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReadLabels {
    pub target: &'static str,
    pub reason: &'static str,
}

/// The replica's metrics.
#[derive(Debug, Clone, Default)]
pub struct ReplicaMetrics {
    /// `db_replica_lag_seconds`: the lag last measured (the setting's limit plus one second
    /// while the replica cannot be asked).
    pub lag_seconds: Gauge<f64, AtomicU64>,
    /// `db_reads_total{target, reason}`.
    pub reads: Family<ReadLabels, Counter>,
}

impl ReplicaMetrics {
    /// Registers the metrics.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "db_replica_lag_seconds",
            "Replay lag of the read replica last measured",
            self.lag_seconds.clone(),
        );
        registry.register(
            "db_reads",
            "Reads by where they went (replica, primary) and why",
            self.reads.clone(),
        );
    }
}

/// Connections for reads: the replica's while it keeps up, else the primary's.
#[derive(Clone)]
pub struct ReadPool {
    primary: Pool,
    replica: Option<Pool>,
    max_lag: Duration,
    own_write_wait: Duration,
    /// The lag last measured, milliseconds.
    lag_ms: Arc<AtomicU64>,
    metrics: ReplicaMetrics,
}

impl std::fmt::Debug for ReadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadPool")
            .field("replica", &self.replica.is_some())
            .field("max_lag", &self.max_lag)
            .finish_non_exhaustive()
    }
}

impl ReadPool {
    /// Reads from `replica` (when given) within `max_lag`, else from `primary`. The lag counts
    /// as too high until the sampler ([`ReadPool::sample_lag`]) has measured it.
    pub fn new(
        primary: Pool,
        replica: Option<Pool>,
        max_lag: Duration,
        own_write_wait: Duration,
        metrics: ReplicaMetrics,
    ) -> Self {
        Self {
            primary,
            replica,
            max_lag,
            own_write_wait,
            lag_ms: Arc::new(AtomicU64::new(u64::MAX)),
            metrics,
        }
    }

    /// Another read pool over `primary` and `replica` (pools asking for other plans) that
    /// follows this one's lag measure and counts in its metrics: one sampler serves both.
    pub fn sharing_lag(&self, primary: Pool, replica: Option<Pool>) -> Self {
        Self {
            primary,
            replica,
            max_lag: self.max_lag,
            own_write_wait: self.own_write_wait,
            lag_ms: Arc::clone(&self.lag_ms),
            metrics: self.metrics.clone(),
        }
    }

    /// Whether a replica is configured (DATABASE_READ_URL).
    pub fn has_replica(&self) -> bool {
        self.replica.is_some()
    }

    /// The primary's pool.
    pub fn primary(&self) -> &Pool {
        &self.primary
    }

    /// A connection for a read; `after` is the LSN of the caller's last write, if it wrote.
    pub async fn get(&self, after: Option<&Lsn>) -> Result<Object<AsyncPgConnection>, PoolError> {
        self.get_routed(after).await.map(|(conn, _)| conn)
    }

    /// Like [`ReadPool::get`], and whether the connection is the replica's.
    pub async fn get_routed(
        &self,
        after: Option<&Lsn>,
    ) -> Result<(Object<AsyncPgConnection>, bool), PoolError> {
        let Some(replica) = &self.replica else {
            return Ok((self.primary.get().await?, false));
        };
        if self.lag_ms.load(Ordering::Relaxed) > self.max_lag.as_millis() as u64 {
            return self.primary_for("lagging").await;
        }
        let Ok(mut conn) = replica.get().await else {
            return self.primary_for("lagging").await;
        };
        if let Some(lsn) = after
            && !replayed(&mut conn, lsn, self.own_write_wait).await
        {
            return self.primary_for("own_write").await;
        }
        self.count("replica", "fresh");
        Ok((conn, true))
    }

    async fn primary_for(
        &self,
        reason: &'static str,
    ) -> Result<(Object<AsyncPgConnection>, bool), PoolError> {
        self.count("primary", reason);
        Ok((self.primary.get().await?, false))
    }

    fn count(&self, target: &'static str, reason: &'static str) {
        self.metrics
            .reads
            .get_or_create(&ReadLabels { target, reason })
            .inc();
    }

    /// Measures the replica's lag once and records it.
    pub async fn sample_lag(&self) {
        use diesel_async::RunQueryDsl;
        let Some(replica) = &self.replica else { return };
        let lag = match replica.get().await {
            Ok(mut conn) => crate::prepared(LAG)
                .get_result::<Lag>(&mut conn)
                .await
                .map(|l| l.seconds.max(0.0))
                .ok(),
            Err(_) => None,
        };
        // A replica that cannot be asked counts as lagging.
        let seconds = lag.unwrap_or(self.max_lag.as_secs_f64() + 1.0);
        self.lag_ms
            .store((seconds * 1000.0) as u64, Ordering::Relaxed);
        self.metrics.lag_seconds.set(seconds);
    }

    /// Samples the lag every [`SAMPLE_EVERY`] until `stop`.
    pub async fn sample_loop(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            self.sample_lag().await;
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                _ = &mut stop => return,
            }
        }
    }
}

/// Whether the replica behind `conn` replays `lsn` within `wait` (asked every 5 ms).
async fn replayed(conn: &mut AsyncPgConnection, lsn: &Lsn, wait: Duration) -> bool {
    use diesel_async::RunQueryDsl;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let done = crate::prepared(REPLAYED)
            .bind::<Text, _>(&lsn.0)
            .get_result::<Replayed>(conn)
            .await
            .map(|r| r.replayed)
            .unwrap_or(false);
        if done {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
