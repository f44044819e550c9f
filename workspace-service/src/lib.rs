//! workspace-service: VBase workspaces (= Clerk organizations) and their content over gRPC, on
//! Postgres, with the atomic cascade delete and the durable Liveblocks room clean-up.
//!
//! `main.rs` parses [`Config`] and calls [`run`]; tests call [`run`] on `127.0.0.1:0`.

pub mod access;
pub mod cleanup;
pub mod content;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod paging;
pub mod schema;
pub mod sync;

use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use service_runtime::{Background, DatabaseArgs, LogFormat};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use vbase_proto::workspace::v1::workspace_service_server::WorkspaceServiceServer;

/// The schema migrations of workspace-service.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// gRPC service name, as reported by health checks.
pub const SERVICE_NAME: &str = "vbase.workspace.v1.WorkspaceService";
/// Audience that service tokens for this service must carry.
pub const AUDIENCE: &str = "workspace-service";

/// How PostgreSQL plans workspace-service's statements: for each execution's actual parameters.
/// Its pages take optional cursors and its job lease takes a `LIMIT`, and a generic plan made
/// the lease re-run its subquery once per row ([`PlanCache::CustomOnly`]).
///
/// [`PlanCache::CustomOnly`]: service_runtime::db::PlanCache::CustomOnly
pub const PLANS: service_runtime::db::PlanCache = service_runtime::db::PlanCache::CustomOnly;

/// Liveblocks clean-up settings.
#[derive(Debug, Clone, clap::Args)]
pub struct LiveblocksArgs {
    /// Liveblocks REST API base URL.
    #[arg(
        long,
        env = "LIVEBLOCKS_API_URL",
        default_value = "https://api.liveblocks.io"
    )]
    pub liveblocks_api_url: String,
    /// Liveblocks secret key (`sk_...`). Without it rooms stay queued and nothing is sent.
    #[arg(long, env = "LIVEBLOCKS_SECRET_KEY", hide_env_values = true)]
    pub liveblocks_secret_key: Option<String>,
    /// Deletions in flight at once, per replica.
    #[arg(long, env = "LIVEBLOCKS_CONCURRENCY", default_value_t = 8)]
    pub liveblocks_concurrency: usize,
    /// Timeout of one Liveblocks call, seconds.
    #[arg(long, env = "LIVEBLOCKS_TIMEOUT_SECS", default_value_t = 10)]
    pub liveblocks_timeout_secs: u64,
    /// Lease of a job, seconds: after a crash the job is retried once it expires.
    #[arg(long, env = "LIVEBLOCKS_LEASE_SECS", default_value_t = 60)]
    pub liveblocks_lease_secs: u64,
    /// First retry delay, milliseconds (doubles per attempt, with jitter).
    #[arg(long, env = "LIVEBLOCKS_BACKOFF_BASE_MS", default_value_t = 1000)]
    pub liveblocks_backoff_base_ms: u64,
    /// Longest retry delay, seconds.
    #[arg(long, env = "LIVEBLOCKS_BACKOFF_MAX_SECS", default_value_t = 300)]
    pub liveblocks_backoff_max_secs: u64,
    /// Idle poll period of the worker, milliseconds.
    #[arg(long, env = "LIVEBLOCKS_POLL_MS", default_value_t = 1000)]
    pub liveblocks_poll_ms: u64,
}

impl LiveblocksArgs {
    /// The worker settings.
    pub fn settings(&self) -> cleanup::CleanupSettings {
        cleanup::CleanupSettings {
            concurrency: self.liveblocks_concurrency.clamp(1, 256),
            lease: Duration::from_secs(
                self.liveblocks_lease_secs
                    .max(self.liveblocks_timeout_secs + 5),
            ),
            poll: Duration::from_millis(self.liveblocks_poll_ms.max(10)),
            backoff_base: Duration::from_millis(self.liveblocks_backoff_base_ms.max(1)),
            backoff_max: Duration::from_secs(self.liveblocks_backoff_max_secs.max(1)),
        }
    }
}

/// Configuration of `workspace-service serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[command(flatten)]
    pub auth: token_auth::AuthArgs,
    #[command(flatten)]
    pub liveblocks: LiveblocksArgs,
    /// gRPC listen address.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:50052")]
    pub grpc_addr: SocketAddr,
    /// Prometheus `/metrics` listen address.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9092")]
    pub metrics_addr: SocketAddr,
    /// `json` or `pretty`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Apply migrations before serving.
    #[arg(long = "migrate", env = "MIGRATE_ON_START", default_value_t = false)]
    pub migrate_on_start: bool,
    /// Hours processed event ids are kept (at least 72: Svix retries for ~28 h).
    #[arg(long, env = "PROCESSED_EVENT_RETENTION_HOURS", default_value_t = 72)]
    pub processed_event_retention_hours: u64,
}

/// Applies pending migrations to `database_url`.
pub async fn migrate(database_url: &str) -> anyhow::Result<Vec<String>> {
    service_runtime::db::run_migrations(database_url, MIGRATIONS).await
}

/// Runs the service on `listener` until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if config.migrate_on_start {
        let applied = migrate(&config.db.database_url).await?;
        tracing::info!(?applied, "migrations applied");
    }
    let auth = Arc::new(config.auth.build(AUDIENCE).map_err(anyhow::Error::msg)?);
    let pool =
        service_runtime::db::build_pool(&config.db.database_url, config.db.db_pool_size, PLANS)?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let background = Background::default();
    let wake = Arc::new(tokio::sync::Notify::new());

    match &config.liveblocks.liveblocks_secret_key {
        Some(secret) if !secret.is_empty() => {
            let api = cleanup::HttpLiveblocks::new(
                &config.liveblocks.liveblocks_api_url,
                secret,
                Duration::from_secs(config.liveblocks.liveblocks_timeout_secs.max(1)),
            )?;
            let worker = cleanup::CleanupWorker::new(
                pool.clone(),
                Arc::new(api),
                config.liveblocks.settings(),
                metrics.clone(),
                Arc::clone(&wake),
            );
            tokio::spawn(worker.run(background.stopped()));
        }
        _ => tracing::warn!(
            "LIVEBLOCKS_SECRET_KEY is not set: Liveblocks rooms are queued but not deleted until it is"
        ),
    }
    tokio::spawn(service_runtime::db::prune_loop(
        pool.clone(),
        config.processed_event_retention_hours,
        |_| {},
        background.stopped(),
    ));

    service_runtime::serve_service(
        listener,
        config.metrics_addr,
        registry,
        pool.clone(),
        token_auth::AuthLayer::new(auth, grpc::policy()),
        WorkspaceServiceServer::new(grpc::WorkspaceApi::new(pool, metrics, wake)),
        background,
        shutdown,
    )
    .await
}
