//! Reads from streaming replicas, with the primary as the fallback.
//!
//! A [`ReadPool`] hands out a connection for a read: a replica's when that server (asked on
//! the connection itself) has replayed what the primary had `DB_READ_MAX_LAG_MS` ago, the
//! primary's otherwise, so several replicas behind one URL are each judged on their own. A
//! caller who just wrote passes the LSN its write committed at ([`commit_lsn`]): the replica
//! serves the read only once it has replayed that far, waiting at most
//! `DB_READ_YOUR_WRITES_WAIT_MS`; after that the primary serves it, so a caller always reads its
//! own writes. A sampler records the primary's WAL position a few times per lag limit
//! ([`ReadPool::sample_loop`]) and a replica's lag (`db_replica_lag_seconds`). A read URL that
//! leads to a primary, a replica that fails or does not answer within
//! [`REPLICA_CHECK_TIMEOUT`], and a sampler that cannot reach the primary send reads to the
//! primary. LISTEN never goes to a replica: NOTIFY is not replicated.

use diesel::QueryableByName;
use diesel::sql_types::{Bool, Text};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::{Object, PoolError};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::db::{DbFailure, Pool};

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
        if let Some(url) = &self.database_read_url {
            crate::db::check_url("DATABASE_READ_URL", url)?;
        }
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
    /// the session settings of `db` (as [`crate::DatabaseArgs::extra_pool`]), connecting
    /// through `tls`; `None` when no replica is set.
    pub fn pool(
        &self,
        db: &crate::DatabaseArgs,
        tls: &crate::DbTls,
        max_size: usize,
        plans: crate::db::PlanCache,
    ) -> anyhow::Result<Option<Pool>> {
        let Some(url) = &self.database_read_url else {
            return Ok(None);
        };
        let pool = match db.db_pool_mode {
            crate::db::PoolMode::Session => {
                crate::db::build_pool_with(url.expose(), max_size, plans, db.limits(), tls)?
            }
            // The role's stored settings (ALTER ROLE on the primary) are replicated.
            crate::db::PoolMode::Transaction => crate::db::build_pool_with(
                url.expose(),
                max_size,
                crate::db::PlanCache::Auto,
                crate::db::SessionLimits::default(),
                tls,
            )?,
        };
        Ok(Some(pool))
    }

    /// The read pool over `primary` and a replica pool of `max_size` asking for `plans`, its
    /// connections made through `tls` (none when DATABASE_READ_URL is unset: then it hands out
    /// `primary`'s connections, nothing else).
    pub fn read_pool(
        &self,
        db: &crate::DatabaseArgs,
        tls: &crate::DbTls,
        primary: Pool,
        max_size: usize,
        plans: crate::db::PlanCache,
        metrics: ReplicaMetrics,
    ) -> anyhow::Result<ReadPool> {
        let replica = self.pool(db, tls, max_size, plans)?;
        let sampler = match replica {
            // A connection of its own: a busy primary pool must not starve the sampler (and so
            // send every read to the primary).
            Some(_) => Some(db.extra_pool(tls, 1, crate::db::PlanCache::Auto)?),
            None => None,
        };
        let pool = ReadPool::new(
            primary,
            replica,
            Duration::from_millis(self.db_read_max_lag_ms),
            Duration::from_millis(self.db_read_your_writes_wait_ms),
            metrics,
        );
        Ok(match sampler {
            Some(sampler) => pool.with_sampler(sampler),
            None => pool,
        })
    }

    /// How long a caller's own write is remembered ([`OwnWrites`]): the replica lag it may
    /// still be behind by plus two samples of the lag.
    pub fn own_write_memory(&self) -> Duration {
        Duration::from_millis(self.db_read_max_lag_ms) + 2 * SAMPLE_EVERY
    }
}

/// How often, at most, the primary's position is sampled (see [`ReadPool::sample_every`]).
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

    /// The position `at` as PostgreSQL prints it.
    pub fn at(at: u64) -> Self {
        Lsn(format!("{:X}/{:X}", at >> 32, at & 0xFFFF_FFFF))
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
    /// Each remembered caller once, oldest first by the write it was queued at (a caller that
    /// wrote since is queued again, at its latest write, when it reaches the front).
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

    /// Records that `caller` wrote at `lsn` (a later position than one recorded stays; an
    /// unknown position is replaced by the next known one).
    pub fn record(&self, caller: &str, lsn: Lsn) {
        let now = std::time::Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let known = lsn != Lsn::unknown();
        let lsn = match inner.last.get(caller) {
            Some((old, _))
                if old.position() > lsn.position() && !(known && *old == Lsn::unknown()) =>
            {
                old.clone()
            }
            _ => lsn,
        };
        if inner.last.insert(caller.to_owned(), (lsn, now)).is_none() {
            inner.order.push_back((caller.to_owned(), now));
        }
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

    /// Entries of the eviction queue: one per caller remembered, however often it writes.
    pub fn queued(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .order
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
            match inner.last.get(&caller).map(|(_, t)| *t) {
                // Wrote since it was queued: queued again at its latest write.
                Some(latest) if latest != at => inner.order.push_back((caller, latest)),
                _ => {
                    inner.last.remove(&caller);
                }
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
struct ReplicaState {
    #[diesel(sql_type = Bool)]
    recovery: bool,
    #[diesel(sql_type = Text)]
    lsn: String,
}

/// The LSN a caller's committed writes are at: read on the primary, after the commit. The
/// insert position ([`record_end`] of it), not `pg_current_wal_lsn()`: a commit made with
/// `synchronous_commit = off` is acknowledged before the written position passes it.
pub async fn commit_lsn(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Lsn> {
    use crate::Settled;
    let row = crate::prepared(PRIMARY_LSN).one::<LsnRow>(conn).await?;
    Ok(match Lsn(row.lsn).position() {
        Some(at) => Lsn::at(record_end(at)),
        None => Lsn::unknown(),
    })
}

/// Whether a read that failed on a replica with `e` is read again on the primary: a database
/// error classified [`DbFailure::Unavailable`] (the connection broke, the server is going away)
/// or [`DbFailure::Retryable`] (a conflict with recovery cancelled it, a timeout), or a
/// decision that must not be made on a replica's rows ([`crate::Error::OnPrimary`]).
pub fn read_again_on_primary(e: &crate::Error) -> bool {
    match e {
        crate::Error::Db(e) => matches!(
            crate::db::classify(e),
            DbFailure::Unavailable | DbFailure::Retryable
        ),
        crate::Error::OnPrimary(_) => true,
        _ => false,
    }
}

/// Whether the server is a standby, and how far it has replayed the primary's WAL.
const REPLICA_STATE: &str = "SELECT pg_is_in_recovery() AS recovery,
            coalesce(pg_last_wal_replay_lsn(), '0/0'::pg_lsn)::text AS lsn";

/// The primary's WAL position: where the next record goes, past every transaction committed
/// (also those committed with `synchronous_commit = off`, which `pg_current_wal_lsn()` may not
/// include yet); see [`record_end`].
const PRIMARY_LSN: &str = "SELECT pg_current_wal_insert_lsn()::text AS lsn";

/// The end of the WAL written up to `insert` (`pg_current_wal_insert_lsn()`), as a standby's
/// `pg_last_wal_replay_lsn()` reports it: an insert position just past a page header (nothing
/// on that page yet) counts as the page's start, which is where the last record ended, so an
/// idle standby that has replayed everything is at or beyond it. 8 kB pages; a segment's first
/// page has the long header, and segments are at least 1 MB.
fn record_end(insert: u64) -> u64 {
    const PAGE: u64 = 8192;
    const SHORT_HEADER: u64 = 24;
    const LONG_HEADER: u64 = 40;
    if insert % PAGE == SHORT_HEADER {
        insert - SHORT_HEADER
    } else if insert % (1 << 20) == LONG_HEADER {
        insert - LONG_HEADER
    } else {
        insert
    }
}

/// Where reads went: `target` (replica, primary) and `reason` (fresh; lagging: the server or
/// the primary's samples are behind; own_write; not_replica: DATABASE_READ_URL is not a
/// standby; unreachable: the replica failed or timed out a check within the last second;
/// replica_error: a read that failed on the replica, read again on the primary).
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReadLabels {
    pub target: &'static str,
    pub reason: &'static str,
}

/// The replica's metrics.
#[derive(Debug, Clone, Default)]
pub struct ReplicaMetrics {
    /// `db_replica_lag_seconds`: the lag of the replica connection last checked (the
    /// setting's limit plus one second while the replica cannot be asked).
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

/// Longest a read waits for a replica connection and its freshness check (beyond a read after
/// the caller's own write's bounded wait) before the primary serves it.
pub const REPLICA_CHECK_TIMEOUT: Duration = Duration::from_millis(250);

/// How long reads skip the replica after it failed or timed out a check.
const REPLICA_BACKOFF: Duration = Duration::from_secs(1);

/// State one sampler keeps for the read pools sharing it.
#[derive(Debug, Default)]
struct Freshness {
    /// The primary's WAL position, sampled: (when the sample was asked for, position), oldest
    /// first.
    history: std::sync::Mutex<std::collections::VecDeque<(Instant, u64)>>,
    /// Until when reads skip the replica (it failed or timed out a check).
    skip_until: std::sync::Mutex<Option<Instant>>,
    /// Whether the warning that DATABASE_READ_URL is a primary was logged.
    warned_not_replica: AtomicBool,
}

/// What a replica connection's check found.
enum Checked {
    /// A standby, replayed up to this position.
    Replayed(u64),
    /// Not a standby (a primary: its data is not behind, but it is not the replica meant).
    NotReplica,
}

/// Connections for reads: a replica's when that server has replayed what the primary had
/// `max_lag` ago, else the primary's.
///
/// Freshness is decided per server, on the connection that serves the read: a sampler records
/// the primary's `pg_current_wal_lsn()` every [`ReadPool::sample_every`]; a read may go to a
/// replica connection only if that server's `pg_last_wal_replay_lsn()` (asked on that
/// connection, one round trip) is at or beyond the oldest primary position sampled within
/// `max_lag`, so it has every transaction committed on the primary more than `max_lag` before
/// the read. Several replicas behind one DATABASE_READ_URL (CloudNativePG's `-ro` service) are
/// each judged on their own. No recent enough sample (the sampler cannot reach the primary), a
/// server that is not in recovery, or a replica that fails or does not answer the check within
/// [`REPLICA_CHECK_TIMEOUT`]: the primary serves.
#[derive(Clone)]
pub struct ReadPool {
    primary: Pool,
    replica: Option<Pool>,
    /// Where the sampler asks the primary's position (default: `primary`).
    sampler: Pool,
    max_lag: Duration,
    own_write_wait: Duration,
    /// Reads waiting at once for the replica to replay their caller's write ([`wait_slots`]);
    /// one that finds none taken goes to the primary at once.
    waits: Arc<tokio::sync::Semaphore>,
    freshness: Arc<Freshness>,
    metrics: ReplicaMetrics,
}

/// How many reads may wait at once for the replica to replay their caller's write, each
/// holding one of `replica`'s connections: a quarter of them, so callers naming positions the
/// replica has not reached (or never will: the position is the caller's own header) cannot
/// take the pool every other read needs.
fn wait_slots(replica: Option<&Pool>) -> Arc<tokio::sync::Semaphore> {
    let size = replica.map_or(1, |r| r.status().max_size);
    Arc::new(tokio::sync::Semaphore::new((size / 4).max(1)))
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
    /// Reads from `replica` (when given) within `max_lag`, else from `primary`. Until the
    /// sampler ([`ReadPool::sample_lag`]) has sampled the primary, the primary serves.
    pub fn new(
        primary: Pool,
        replica: Option<Pool>,
        max_lag: Duration,
        own_write_wait: Duration,
        metrics: ReplicaMetrics,
    ) -> Self {
        Self {
            sampler: primary.clone(),
            primary,
            waits: wait_slots(replica.as_ref()),
            replica,
            max_lag,
            own_write_wait,
            freshness: Arc::default(),
            metrics,
        }
    }

    /// This pool, its sampler asking the primary's position on `sampler` (a pool of its own).
    pub fn with_sampler(mut self, sampler: Pool) -> Self {
        self.sampler = sampler;
        self
    }

    /// Another read pool over `primary` and `replica` (pools asking for other plans) that
    /// follows this one's samples and counts in its metrics: one sampler serves both.
    pub fn sharing_lag(&self, primary: Pool, replica: Option<Pool>) -> Self {
        Self {
            primary,
            waits: wait_slots(replica.as_ref()),
            replica,
            sampler: self.sampler.clone(),
            max_lag: self.max_lag,
            own_write_wait: self.own_write_wait,
            freshness: Arc::clone(&self.freshness),
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

    /// How often the sampler asks the primary its position: a quarter of the lag limit, within
    /// 50 ms and [`SAMPLE_EVERY`] (a limit of 0 samples nothing: every read is the primary's).
    pub fn sample_every(&self) -> Duration {
        if self.max_lag.is_zero() {
            return SAMPLE_EVERY;
        }
        (self.max_lag / 4).clamp(Duration::from_millis(50), SAMPLE_EVERY)
    }

    /// A connection for a read; `after` is the LSN of the caller's last write, if it wrote.
    pub async fn get(&self, after: Option<&Lsn>) -> Result<Object<AsyncPgConnection>, PoolError> {
        self.get_routed(after).await.map(|(conn, _)| conn)
    }

    /// A connection on the primary for a read whose decision is the primary's (a user's access
    /// that the access cache cannot answer), counted `reason="access"` when a replica is
    /// configured.
    pub async fn get_deciding(&self) -> Result<(Object<AsyncPgConnection>, bool), PoolError> {
        if self.replica.is_none() {
            return Ok((self.primary.get().await?, false));
        }
        self.primary_for("access").await
    }

    /// Like [`ReadPool::get`], and whether the connection is the replica's.
    pub async fn get_routed(
        &self,
        after: Option<&Lsn>,
    ) -> Result<(Object<AsyncPgConnection>, bool), PoolError> {
        let Some(replica) = &self.replica else {
            return Ok((self.primary.get().await?, false));
        };
        if self.skipping() {
            return self.primary_for("unreachable").await;
        }
        let Some(required) = self.required() else {
            return self.primary_for("lagging").await;
        };
        let own = after.map(|l| l.position().unwrap_or(u64::MAX));
        let mut conn = match tokio::time::timeout(REPLICA_CHECK_TIMEOUT, replica.get()).await {
            Ok(Ok(conn)) => conn,
            _ => {
                self.skip();
                return self.primary_for("unreachable").await;
            }
        };
        let deadline = Instant::now() + self.own_write_wait;
        let mut waiting = None;
        loop {
            let replayed = match self.check(&mut conn).await {
                Some(Checked::Replayed(at)) => at,
                Some(Checked::NotReplica) => return self.primary_for("not_replica").await,
                None => {
                    // A connection whose query was cut short is not reused.
                    drop(Object::take(conn));
                    self.skip();
                    return self.primary_for("unreachable").await;
                }
            };
            if replayed < required {
                return self.primary_for("lagging").await;
            }
            match own {
                Some(own) if replayed < own => {
                    if waiting.is_none() {
                        waiting = self.waits.try_acquire().ok();
                    }
                    if waiting.is_none() || Instant::now() >= deadline {
                        return self.primary_for("own_write").await;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ => break,
            }
        }
        self.count("replica", "fresh");
        Ok((conn, true))
    }

    /// Runs the read `f` on a connection for a read (`after` as for [`ReadPool::get`]; `f` is
    /// told whether the connection is a replica's). A read that fails on a replica with a
    /// database error classified [`DbFailure::Unavailable`] (the connection broke, the server
    /// is going away) or [`DbFailure::Retryable`] (a conflict with recovery cancelled it, a
    /// timeout) runs once more on the primary: reads are idempotent.
    pub async fn read<T>(
        &self,
        after: Option<&Lsn>,
        f: impl AsyncFn(&mut AsyncPgConnection, bool) -> Result<T, crate::Error>,
    ) -> Result<T, crate::Error> {
        let (mut conn, on_replica) = self.get_routed(after).await?;
        match f(&mut conn, on_replica).await {
            Err(e) if on_replica && read_again_on_primary(&e) => {
                drop(conn);
                let mut conn = self.primary_after_replica_error(&e).await?;
                f(&mut conn, false).await
            }
            answer => answer,
        }
    }

    /// A primary connection for a read that failed on the replica with `e` (counted as
    /// `reason="replica_error"`, logged).
    pub async fn primary_after_replica_error(
        &self,
        e: &crate::Error,
    ) -> Result<Object<AsyncPgConnection>, PoolError> {
        if let crate::Error::OnPrimary(why) = e {
            tracing::debug!(
                why,
                "a read's decision is the primary's; reading on the primary"
            );
            return self.primary_for("access").await.map(|(c, _)| c);
        }
        tracing::warn!(error = %e, "a read failed on the replica; reading on the primary");
        self.primary_for("replica_error").await.map(|(c, _)| c)
    }

    /// The position a replica must have replayed to serve a read now: the oldest primary
    /// position sampled within `max_lag` (asked for after every transaction committed more
    /// than `max_lag` ago); none when no sample is that recent.
    fn required(&self) -> Option<u64> {
        let now = Instant::now();
        let history = self
            .freshness
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        history
            .iter()
            .find(|(at, _)| now.duration_since(*at) < self.max_lag)
            .map(|(_, lsn)| *lsn)
    }

    /// Asks the replica behind `conn` whether it is a standby and how far it has replayed,
    /// within [`REPLICA_CHECK_TIMEOUT`]; records its lag. `None`: it failed or did not answer.
    async fn check(&self, conn: &mut AsyncPgConnection) -> Option<Checked> {
        use crate::Settled;
        let state = tokio::time::timeout(
            REPLICA_CHECK_TIMEOUT,
            crate::prepared(REPLICA_STATE).one::<ReplicaState>(conn),
        )
        .await
        .ok()?
        .ok()?;
        if !state.recovery {
            if !self
                .freshness
                .warned_not_replica
                .swap(true, Ordering::Relaxed)
            {
                tracing::warn!(
                    "DATABASE_READ_URL leads to a server that is not a standby \
                     (pg_is_in_recovery() is false): reads go to DATABASE_URL"
                );
            }
            return Some(Checked::NotReplica);
        }
        let replayed = state.lsn.parse::<Lsn>().ok()?.position()?;
        self.metrics.lag_seconds.set(self.lag_of(replayed));
        Some(Checked::Replayed(replayed))
    }

    /// How far behind a server replayed to `replayed` is: 0 when it has the primary's last
    /// sampled position, else the age of the newest sample it has (at least `max_lag` exactly
    /// when it may not serve); every sample kept beyond it: the oldest's age, at least the
    /// limit plus one second.
    fn lag_of(&self, replayed: u64) -> f64 {
        let now = Instant::now();
        let history = self
            .freshness
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let beyond = self.max_lag.as_secs_f64() + 1.0;
        match history.back() {
            Some((_, last)) if replayed >= *last => 0.0,
            _ => match history.iter().rev().find(|(_, lsn)| *lsn <= replayed) {
                Some((at, _)) => now.duration_since(*at).as_secs_f64(),
                None => history
                    .front()
                    .map_or(beyond, |(at, _)| now.duration_since(*at).as_secs_f64())
                    .max(beyond),
            },
        }
    }

    fn skipping(&self) -> bool {
        let until = self
            .freshness
            .skip_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|t| Instant::now() < t)
    }

    fn skip(&self) {
        *self
            .freshness
            .skip_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + REPLICA_BACKOFF);
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

    /// Samples the primary's WAL position once (within the lag limit, at most a second), and
    /// measures a replica connection's lag for `db_replica_lag_seconds`.
    pub async fn sample_lag(&self) {
        use crate::Settled;
        let Some(replica) = &self.replica else { return };
        if self.max_lag.is_zero() {
            // Every read goes to the primary: nothing to sample.
            return;
        }
        let limit = self
            .max_lag
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        let asked = Instant::now();
        let sampled = tokio::time::timeout(limit, async {
            let mut conn = self.sampler.get().await.ok()?;
            let row = crate::prepared(PRIMARY_LSN)
                .one::<LsnRow>(&mut conn)
                .await
                .ok()?;
            row.lsn.parse::<Lsn>().ok()?.position().map(record_end)
        })
        .await
        .ok()
        .flatten();
        if let Some(lsn) = sampled {
            let mut history = self
                .freshness
                .history
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            history.push_back((asked, lsn));
            // Kept beyond the limit only to report how far past it a replica lags.
            let keep = 2 * self.max_lag + 2 * SAMPLE_EVERY;
            while history
                .front()
                .is_some_and(|(at, _)| asked.duration_since(*at) > keep)
            {
                history.pop_front();
            }
        }
        // The gauge: one replica connection's lag.
        match tokio::time::timeout(REPLICA_CHECK_TIMEOUT, replica.get()).await {
            Ok(Ok(mut conn)) => {
                if self.check(&mut conn).await.is_none() {
                    drop(Object::take(conn));
                    self.metrics
                        .lag_seconds
                        .set(self.max_lag.as_secs_f64() + 1.0);
                }
            }
            _ => {
                self.metrics
                    .lag_seconds
                    .set(self.max_lag.as_secs_f64() + 1.0);
            }
        }
    }

    /// Samples every [`ReadPool::sample_every`] until `stop`.
    pub async fn sample_loop(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let every = self.sample_every();
        loop {
            tokio::select! {
                _ = self.sample_lag() => {}
                _ = &mut stop => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = &mut stop => return,
            }
        }
    }
}
