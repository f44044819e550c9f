//! identity-service: VBase users kept in step with Clerk, over gRPC, on Postgres.
//!
//! `main.rs` parses [`Config`] and calls [`run`]; tests call [`run`] on `127.0.0.1:0`.

pub mod batch;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod schema;
pub mod users;

use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use service_runtime::{Background, DatabaseArgs, LogFormat};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use vbase_proto::identity::v1::identity_service_server::IdentityServiceServer;

/// The schema migrations of identity-service.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// gRPC service name, as reported by health checks.
pub const SERVICE_NAME: &str = "vbase.identity.v1.IdentityService";
/// Audience that service tokens for this service must carry.
pub const AUDIENCE: &str = "identity-service";

/// How PostgreSQL plans identity-service's statements. Every one looks users up by key or by
/// an array of keys (batched lookups and upserts), and PostgreSQL's default would plan those
/// that take an array again on every execution ([`PlanCache::GenericOnly`]).
///
/// [`PlanCache::GenericOnly`]: service_runtime::db::PlanCache::GenericOnly
pub const PLANS: service_runtime::db::PlanCache = service_runtime::db::PlanCache::GenericOnly;

/// Configuration of `identity-service serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[command(flatten)]
    pub auth: token_auth::AuthArgs,
    /// gRPC listen address.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// Prometheus `/metrics` listen address.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9091")]
    pub metrics_addr: SocketAddr,
    /// `json` or `pretty`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Apply migrations before serving.
    #[arg(long = "migrate", env = "MIGRATE_ON_START", default_value_t = false)]
    pub migrate_on_start: bool,
    /// Webhook upserts run as at most this many concurrent statements; commands that arrive
    /// while all are busy are committed together in the next one (group commit). Fewer slots
    /// make bigger batches under load; an idle service runs each command at once.
    #[arg(long, env = "GROUP_COMMIT_SLOTS", default_value_t = 4)]
    pub group_commit_slots: usize,
    /// Lookups of users by id (GetCurrentUser, GetUser) run as at most this many concurrent
    /// queries; lookups that arrive while all are busy go together in the next one.
    #[arg(long, env = "LOOKUP_SLOTS", default_value_t = 2)]
    pub lookup_slots: usize,
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
    let slots = |n: usize| n.clamp(1, config.db.db_pool_size.max(1));
    let (commit_slots, lookup_slots) =
        (slots(config.group_commit_slots), slots(config.lookup_slots));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let background = Background::default();
    let pruned = metrics.pruned_events.clone();
    tokio::spawn(service_runtime::db::prune_loop(
        pool.clone(),
        config.processed_event_retention_hours,
        move |n| {
            pruned.inc_by(n);
        },
        background.stopped(),
    ));
    service_runtime::serve_service(
        listener,
        config.metrics_addr,
        registry,
        pool.clone(),
        token_auth::AuthLayer::new(auth, grpc::policy()),
        IdentityServiceServer::new(grpc::IdentityApi::new(
            pool,
            metrics,
            commit_slots,
            lookup_slots,
        )),
        background,
        shutdown,
    )
    .await
}
