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

/// A position in the primary's WAL, as PostgreSQL prints it (`16/B374D848`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lsn(String);

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

    /// A connection for a read; `after` is the LSN of the caller's last write, if it wrote.
    pub async fn get(&self, after: Option<&Lsn>) -> Result<Object<AsyncPgConnection>, PoolError> {
        let Some(replica) = &self.replica else {
            return self.primary.get().await;
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
        Ok(conn)
    }

    async fn primary_for(
        &self,
        reason: &'static str,
    ) -> Result<Object<AsyncPgConnection>, PoolError> {
        self.count("primary", reason);
        self.primary.get().await
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

    /// Samples the lag every second until `stop`.
    pub async fn sample_loop(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            self.sample_lag().await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
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
