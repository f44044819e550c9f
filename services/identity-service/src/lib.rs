//! identity-service: VBase users kept in step with Clerk, over gRPC, on Postgres.
//!
//! `main.rs` parses [`Config`] and calls [`run`]; tests call [`run`] on `127.0.0.1:0`.

pub mod batch;
mod error;
mod grpc;
mod metrics;
pub mod reconcile;
mod schema;
pub mod users;

use diesel_migrations::embed_migrations;
use service_runtime::{Boot, GrpcServices, ServiceArgs, UserQuotas, WithUserQuotas};
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use vbase_proto::identity::v1::identity_service_server::IdentityServiceServer;

/// The schema migrations of identity-service: its own and the delivery ledger's.
pub const MIGRATIONS: delivery_ledger::migrations::WithLedger =
    delivery_ledger::migrations::with_ledger(embed_migrations!("migrations"));

/// gRPC service name, as reported by health checks.
pub const SERVICE_NAME: &str = "vbase.identity.v1.IdentityService";
/// Audience that service tokens for this service must carry.
pub const AUDIENCE: &str = "identity-service";
/// The largest request `IdentityService` decodes.
pub use grpc::MAX_REQUEST;

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
    pub service: ServiceArgs,
    /// gRPC listen address.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// Prometheus `/metrics` listen address.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9091")]
    pub metrics_addr: SocketAddr,
    /// Webhook upserts run as at most this many concurrent statements (1 to DB_POOL_SIZE);
    /// commands that arrive while all are busy are committed together in the next one (group
    /// commit). Fewer slots make bigger batches under load; an idle service runs each command
    /// at once.
    #[arg(long, env = "GROUP_COMMIT_SLOTS", default_value_t = 4)]
    pub group_commit_slots: usize,
    #[command(flatten)]
    pub ledger: delivery_ledger::LedgerArgs,
    /// Lookups of users by id (GetCurrentUser, GetUser) run as at most this many concurrent
    /// queries (1 to DB_POOL_SIZE); lookups that arrive while all are busy go together in the
    /// next one.
    #[arg(long, env = "LOOKUP_SLOTS", default_value_t = 2)]
    pub lookup_slots: usize,
    /// Bytes this replica's cache of user rows (GetCurrentUser, GetUser) may hold; 0 turns it
    /// off and every lookup reads the database. Entries follow every change within 80 ms
    /// (PostgreSQL notifications).
    #[arg(long, env = "USER_CACHE_BYTES", default_value_t = 8 << 20)]
    pub user_cache_bytes: u64,
    /// Each user's reads per minute and calls in flight, as workspace-service has them.
    #[command(flatten)]
    pub quotas: service_runtime::UserQuotaArgs,
}

impl service_runtime::cli::CheckConfig for Config {
    fn check(&self) -> Result<(), String> {
        self.service.check()?;
        self.ledger.check()?;
        self.quotas.check()?;
        let pool = self.service.db.db_pool_size;
        for (name, slots) in [
            ("GROUP_COMMIT_SLOTS", self.group_commit_slots),
            ("LOOKUP_SLOTS", self.lookup_slots),
        ] {
            if !(1..=pool).contains(&slots) {
                return Err(format!(
                    "{name} ({slots}) must be from 1 to DB_POOL_SIZE ({pool}): each slot holds a connection"
                ));
            }
        }
        Ok(())
    }
}

/// Callers whose last write each replica of the service remembers for their reads
/// (`service_runtime::replica::OwnWrites`); beyond, the oldest writes are forgotten first.
pub const OWN_WRITES_MAX_CALLERS: usize = 100_000;

/// Applies pending migrations to `database_url`, connecting through `tls`.
pub async fn migrate(
    database_url: &str,
    tls: &service_runtime::DbTls,
) -> anyhow::Result<Vec<String>> {
    service_runtime::db::run_migrations(database_url, tls, MIGRATIONS).await
}

/// Runs the service on `listener` until `shutdown` resolves, then drains, stops its workers
/// and waits for them.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use service_runtime::cli::CheckConfig;
    config.check().map_err(anyhow::Error::msg)?;
    let mut boot = Boot::start(&config.service, AUDIENCE, MIGRATIONS, PLANS).await?;
    let metrics = metrics::Metrics::register(&mut boot.registry);
    let pruned = metrics.pruned_events.clone();
    boot.prune_delivery_ids(move |n| {
        pruned.inc_by(n);
    });
    let ledger = delivery_ledger::Ledger::new(
        boot.pool.clone(),
        metrics.tally.clone(),
        &config.ledger,
        &mut boot.registry,
    );
    boot.workers.spawn(
        "ledger-upkeep",
        ledger.clone().upkeep(boot.lifecycle.stopped()),
    );
    let cache = batch::user_cache(config.user_cache_bytes);
    boot.workers.spawn(
        "user-cache",
        coherent_cache::listen(
            cache.clone(),
            config.service.db.direct_url().expose().to_owned(),
            boot.db_tls.clone(),
            batch::NOTIFY_CHANNEL,
            batch::NOTIFY_TRIGGERS,
            batch::apply_notification,
            boot.lifecycle.stopped(),
        ),
    );
    service_runtime::cache_metrics::CacheMetrics::default()
        .with("user", &cache)
        .register(&mut boot.registry);
    let reads = boot.read_pool(&config.service, PLANS)?;
    let api = grpc::IdentityApi::new(
        boot.pool.clone(),
        reads,
        service_runtime::replica::OwnWrites::new(
            config.service.replica.own_write_memory(),
            OWN_WRITES_MAX_CALLERS,
        ),
        ledger.clone(),
        metrics,
        config.group_commit_slots,
        config.lookup_slots,
        cache,
    );
    // Users' calls behind their quotas; internal callers' go straight through.
    let quotas = UserQuotas::new(&config.quotas, grpc::READ_METHODS, grpc::MAX_USER_REQUEST);
    let served = WithUserQuotas::new(
        IdentityServiceServer::new(api).max_decoding_message_size(grpc::MAX_REQUEST),
        quotas,
    );
    let services = ledger.mount(GrpcServices::new().add(served, grpc::policy()));
    boot.serve(listener, config.metrics_addr, services, shutdown)
        .await
}
