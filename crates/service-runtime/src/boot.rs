//! What both services do the same way from configuration to serving: settings, migrations on
//! start, the token verifier, the pool, the metrics registry, the prune of delivery ids, and
//! the lifecycle their workers follow.

use crate::db::{DatabaseArgs, PlanCache, Pool, SessionLimits};
use crate::grpc::{GrpcServices, Serve, StartGate};
use crate::lifecycle::{Lifecycle, Workers};
use crate::logging::LogFormat;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use token_auth::Authenticator;
use tokio::net::TcpListener;

/// Settings every service takes besides its own.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[command(flatten)]
    pub replica: crate::replica::ReplicaArgs,
    #[command(flatten)]
    pub auth: token_auth::AuthArgs,
    #[command(flatten)]
    pub grpc: crate::GrpcLimits,
    #[command(flatten)]
    pub browser: crate::browser::BrowserArgs,
    #[command(flatten)]
    pub shutdown: crate::lifecycle::ShutdownArgs,
    /// `json` or `pretty`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Apply migrations before serving.
    #[arg(long = "migrate", env = "MIGRATE_ON_START", default_value_t = false)]
    pub migrate_on_start: bool,
    /// Hours processed event ids are kept: 72 to 8760 (Svix retries for ~28 h).
    #[arg(long, env = "PROCESSED_EVENT_RETENTION_HOURS", default_value_t = 72)]
    pub processed_event_retention_hours: u64,
}

impl ServiceArgs {
    /// What is out of range, if anything.
    pub fn check(&self) -> Result<(), String> {
        self.db.check()?;
        self.grpc.check()?;
        self.shutdown.check()?;
        self.replica.check()?;
        if let (Some(_), Some(url)) = (&self.db.db_ca_file, &self.replica.database_read_url) {
            crate::db::check_tls_required("DATABASE_READ_URL", url)?;
        }
        token_auth::ServiceCallers::parse(&self.auth.service_callers)?
            .with_operators(&self.auth.operator_subjects)?;
        self.browser.origins(&self.auth.clerk_authorized_parties)?;
        if !(72..=8760).contains(&self.processed_event_retention_hours) {
            return Err(format!(
                "PROCESSED_EVENT_RETENTION_HOURS ({}) must be from 72 (Svix retries for about 28 hours) to 8760",
                self.processed_event_retention_hours
            ));
        }
        if self.db.db_pool_mode == crate::db::PoolMode::Transaction
            && self.db.database_direct_url.is_none()
        {
            // Through a pooler in transaction mode, a LISTEN session's notifications reach
            // whichever client holds its server connection, or nobody: the caches would go on
            // answering while missing changes.
            return Err("DB_POOL_MODE=transaction needs DATABASE_DIRECT_URL: a session of its own on the primary for LISTEN (the read caches, the change hub), which cannot go through the pooler".into());
        }
        if !(1..=1000).contains(&self.db.db_pool_size) {
            return Err(format!(
                "DB_POOL_SIZE ({}) must be from 1 to 1000",
                self.db.db_pool_size
            ));
        }
        Ok(())
    }
}

/// A service on its way to serving: what its handlers and workers share.
pub struct Boot {
    /// The service's database.
    pub pool: Pool,
    /// The TLS connector of every connection to the database (DB_CA_FILE): the pools',
    /// migrations' and LISTEN sessions'.
    pub db_tls: crate::DbTls,
    /// Verifies tokens (Clerk users and internal services).
    pub auth: Arc<Authenticator>,
    /// Where the service registers its metrics.
    pub registry: Registry,
    /// Where the service reports its dependencies' state (`/status`).
    pub detail: crate::metrics::HealthDetail,
    /// Phases every worker follows.
    pub lifecycle: Lifecycle,
    /// Background workers, awaited at the stop.
    pub workers: Workers,
    /// Done once the start-up work health waits for is (the role's settings, in transaction mode).
    start_gate: StartGate,
    retention_hours: u64,
    limits: crate::GrpcLimits,
    origins: Vec<http::HeaderValue>,
    shutdown: crate::lifecycle::ShutdownArgs,
}

impl Boot {
    /// The pool of reads that may lag: DATABASE_READ_URL's replica while it keeps up, else
    /// the primary's pool (unset: always the primary's, the same pool as without it). With a
    /// replica, its metrics are registered and its lag sampler runs as a worker.
    pub fn read_pool(
        &mut self,
        args: &ServiceArgs,
        plans: PlanCache,
    ) -> anyhow::Result<crate::replica::ReadPool> {
        let metrics = crate::replica::ReplicaMetrics::default();
        let reads = args.replica.read_pool(
            &args.db,
            &self.db_tls,
            self.pool.clone(),
            args.db.db_pool_size,
            plans,
            metrics.clone(),
        )?;
        if reads.has_replica() {
            metrics.register(&mut self.registry);
            self.workers.spawn(
                "replica-lag",
                reads.clone().sample_loop(self.lifecycle.stopped()),
            );
        }
        Ok(reads)
    }

    /// Migrates (when asked), builds the verifier for `audience` and the pool.
    pub async fn start(
        args: &ServiceArgs,
        audience: &str,
        migrations: impl diesel::migration::MigrationSource<diesel::pg::Pg> + Send + 'static,
        plans: PlanCache,
    ) -> anyhow::Result<Self> {
        args.check().map_err(anyhow::Error::msg)?;
        let db_tls = args.db.tls()?;
        if args.migrate_on_start {
            let applied =
                crate::db::run_migrations(args.db.migration_url().expose(), &db_tls, migrations)
                    .await?;
            tracing::info!(?applied, "migrations applied");
        }
        let auth = Arc::new(args.auth.build(audience).map_err(anyhow::Error::msg)?);
        let lifecycle = Lifecycle::default();
        let mut workers = Workers::default();
        let mut start_gate = StartGate::default();
        // Neither mode needs the database to start: a pod (re)started during an outage serves
        // health (NOT_SERVING, and /healthz for its liveness) until the database answers.
        let pool = match args.db.db_pool_mode {
            crate::db::PoolMode::Session => crate::db::build_pool_with(
                args.db.database_url.expose(),
                args.db.db_pool_size,
                plans,
                args.db.limits(),
                &db_tls,
            )?,
            crate::db::PoolMode::Transaction => {
                start_gate = StartGate::pending();
                workers.spawn(
                    "role-settings",
                    store_role_settings_when_reachable(
                        args.db.direct_url().expose().to_owned(),
                        db_tls.clone(),
                        plans,
                        args.db.limits(),
                        start_gate.clone(),
                        lifecycle.shutting_down(),
                    ),
                );
                crate::db::build_pool_with(
                    args.db.database_url.expose(),
                    args.db.db_pool_size,
                    PlanCache::Auto,
                    SessionLimits::default(),
                    &db_tls,
                )?
            }
        };
        let mut registry = Registry::default();
        crate::key_metrics::KeyMetrics::new(auth.named_key_stores()).register(&mut registry);
        Ok(Self {
            pool,
            db_tls,
            auth,
            registry,
            detail: crate::metrics::HealthDetail::default(),
            lifecycle,
            workers,
            start_gate,
            retention_hours: args.processed_event_retention_hours,
            limits: args.grpc.clone(),
            shutdown: args.shutdown,
            origins: args
                .browser
                .origins(&args.auth.clerk_authorized_parties)
                .map_err(anyhow::Error::msg)?,
        })
    }

    /// Starts the hourly prune of delivery ids; `on_pruned` hears how many went.
    pub fn prune_delivery_ids(&mut self, on_pruned: impl Fn(u64) + Send + 'static) {
        self.workers.spawn(
            "prune-delivery-ids",
            crate::db::prune_loop(
                self.pool.clone(),
                self.retention_hours,
                on_pruned,
                self.lifecycle.stopped(),
            ),
        );
    }

    /// Serves `services` on `listener` until `shutdown`, then drains and stops the workers.
    pub async fn serve(
        self,
        listener: TcpListener,
        metrics_addr: SocketAddr,
        services: GrpcServices,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        Serve {
            listener,
            metrics_addr,
            registry: self.registry,
            detail: self.detail,
            pool: self.pool,
            start_gate: self.start_gate,
            auth: self.auth,
            services,
            lifecycle: self.lifecycle,
            workers: self.workers,
            limits: self.limits,
            origins: self.origins,
            shutdown: self.shutdown,
        }
        .run(shutdown)
        .await
    }
}

/// First wait between tries to store the role's settings; it doubles up to [`SETTINGS_RETRY_MAX`].
const SETTINGS_RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between tries: how late after the database's return the pod may turn SERVING.
const SETTINGS_RETRY_MAX: Duration = Duration::from_secs(5);
/// Longest one try may take (a host that drops packets would otherwise hold it for minutes).
const SETTINGS_TRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Stores the role's session settings (`DB_POOL_MODE=transaction`) over `direct_url`, trying
/// again with backoff until it succeeds or `stop` resolves; then marks `gate` done, so health
/// may report SERVING. Until then the service serves NOT_SERVING, as a start in session mode
/// does while its pool cannot connect. Failures are logged at most once a minute.
async fn store_role_settings_when_reachable(
    direct_url: String,
    tls: crate::DbTls,
    plans: PlanCache,
    limits: SessionLimits,
    gate: StartGate,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut wait = SETTINGS_RETRY_FIRST;
    let mut logged: Option<Instant> = None;
    for attempt in 1u64.. {
        let tried = tokio::select! {
            r = tokio::time::timeout(
                SETTINGS_TRY_TIMEOUT,
                crate::db::store_role_settings(&direct_url, &tls, plans, limits),
            ) => r,
            _ = &mut stop => return,
        };
        let error = match tried {
            Ok(Ok(())) => {
                if attempt > 1 {
                    tracing::info!(attempt, "the role's session settings are stored");
                }
                gate.done();
                return;
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("no answer in {SETTINGS_TRY_TIMEOUT:?}"),
        };
        if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            tracing::warn!(
                %error,
                attempt,
                retry_in = ?wait,
                "cannot store the role's session settings (DB_POOL_MODE=transaction): NOT_SERVING until the database answers"
            );
            logged = Some(Instant::now());
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => return,
        }
        wait = (wait * 2).min(SETTINGS_RETRY_MAX);
    }
}
