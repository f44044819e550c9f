//! workspace-service: VBase workspaces (= Clerk organizations) and their content over gRPC, on
//! Postgres, with the atomic cascade delete and the durable Liveblocks room clean-up.
//!
//! Layout: `model` (typed ids, kinds, pages), `domain` (one module per resource; functions
//! take a connection), `grpc` (handlers per resource, request conversion, access policy),
//! [`workers`] (background work on job tables). `main.rs` parses [`Config`] and calls [`run`];
//! tests call [`run`] on `127.0.0.1:0`.

mod admin;
mod config;
mod domain;
mod error;
mod grpc;
pub mod live;
pub mod liveblocks;
pub mod metrics;
mod model;
mod schema;
pub mod workers;

pub use config::{
    CallLimitArgs, Config, LiveblocksArgs, MIN_SWEEP_AFTER_SECS, PurgeArgs, RoleArgs, WatchArgs,
};
pub use domain::workspaces::{WORKSPACE_ID_NAMESPACE, derived_workspace_id};
/// The triggers whose notifications keep the access and channel caches coherent (checked
/// while the caches answer).
pub use domain::{channels::CHANNELS_TRIGGERS, standing::NOTIFY_TRIGGERS as ACCESS_TRIGGERS};

use diesel_migrations::embed_migrations;
use service_runtime::{Boot, GrpcServices};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use vbase_proto::workspace::v1::workspace_admin_service_server::WorkspaceAdminServiceServer;

/// The schema migrations of workspace-service: its own and the delivery ledger's.
pub const MIGRATIONS: delivery_ledger::migrations::WithLedger =
    delivery_ledger::migrations::with_ledger(embed_migrations!("migrations"));

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

/// How PostgreSQL plans the statements of the hot reads (the access check by key, the channel
/// list): once per connection, for any parameters. They run on a pool of their own (half of
/// `DB_POOL_SIZE`), so the rest keep [`PLANS`]. A channel page's plan does not depend on its
/// cursor: the indexes that find a workspace's channels (by name, and the key by id) do not
/// hold their order, so every page is read through one of them and sorted.
pub const READ_PLANS: service_runtime::db::PlanCache = service_runtime::db::PlanCache::GenericOnly;

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
    service_runtime::cli::CheckConfig::check(&config).map_err(anyhow::Error::msg)?;
    let cleanup_settings = config.liveblocks.settings().map_err(anyhow::Error::msg)?;
    let purge_settings = config.purge.settings().map_err(anyhow::Error::msg)?;
    let live_settings = config.watch.settings().map_err(anyhow::Error::msg)?;
    let roles = config.roles.roles().map_err(anyhow::Error::msg)?;
    let mut boot = Boot::start(&config.service, AUDIENCE, MIGRATIONS, PLANS).await?;
    let metrics = metrics::Metrics::register(&mut boot.registry);
    let liveblocks = liveblocks::from_args(&config.liveblocks)?;
    let wakes = workers::start(
        &mut boot,
        liveblocks.clone(),
        cleanup_settings,
        purge_settings,
        &metrics,
    )?;
    boot.prune_delivery_ids(|_| {});

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
    let admin = admin::WorkspaceAdmin {
        pool: boot.pool.clone(),
        wakes: wakes.clone(),
    };
    let memory = live::frames::Memory::new(
        live_settings.total_bytes,
        metrics.watch_buffered_bytes.clone(),
    );
    let access = domain::standing::access_cache(config.access_cache_bytes);
    let channels = domain::listings::listing_cache(config.channel_cache_bytes);
    let hub = live::hub::Hub::new(
        boot.pool.clone(),
        Arc::clone(&memory),
        [access.heard(), channels.heard()]
            .into_iter()
            .flatten()
            .collect(),
    );
    boot.workers.spawn(
        "change-hub",
        hub.clone().run(
            // LISTEN needs a session of its own on the primary (NOTIFY is not replicated, and
            // a pooler in transaction mode hands sessions round).
            config.service.db.direct_url().expose().to_owned(),
            boot.db_tls.clone(),
            boot.lifecycle.stopped(),
        ),
    );
    boot.workers.spawn(
        "change-log-prune",
        live::prune::prune_loop(
            boot.pool.clone(),
            live_settings.retention,
            live::prune::EVERY,
            boot.lifecycle.stopped(),
        ),
    );
    let reads = boot.read_pool(&config.service, PLANS)?;
    let db = &config.service.db;
    let replica = &config.service.replica;
    let live = live::watch::Live::new(
        boot.pool.clone(),
        reads.clone(),
        hub,
        memory,
        live_settings,
        boot.lifecycle.clone(),
        metrics.clone(),
    );
    boot.workers.spawn(
        "read-caches",
        coherent_cache::listen_all(
            [
                coherent_cache::subscribe(
                    &access,
                    domain::standing::NOTIFY_CHANNEL,
                    domain::standing::NOTIFY_TRIGGERS,
                    domain::standing::apply_notification,
                ),
                coherent_cache::subscribe(
                    &channels,
                    domain::channels::CHANNELS_NOTIFY,
                    domain::channels::CHANNELS_TRIGGERS,
                    domain::listings::apply_notification,
                ),
            ]
            .into_iter()
            .flatten()
            .collect(),
            // One session of its own on the primary for both caches, as the change hub's.
            config.service.db.direct_url().expose().to_owned(),
            boot.db_tls.clone(),
            boot.lifecycle.stopped(),
        ),
    );
    service_runtime::cache_metrics::CacheMetrics::default()
        .with("access", &access)
        .with("channels", &channels)
        .register(&mut boot.registry);
    let hot_size = (db.db_pool_size / 2).max(1);
    let hot = reads.sharing_lag(
        db.extra_pool(&boot.db_tls, hot_size, READ_PLANS)?,
        replica.pool(db, &boot.db_tls, hot_size, READ_PLANS)?,
    );
    let api = grpc::WorkspaceApi::new(
        boot.pool.clone(),
        grpc::Reads {
            pool: reads,
            own_writes: service_runtime::replica::OwnWrites::new(
                replica.own_write_memory(),
                OWN_WRITES_MAX_CALLERS,
            ),
        },
        grpc::HotReads {
            pool: hot,
            access,
            channels,
        },
        ledger.clone(),
        metrics,
        wakes,
        liveblocks::RoomTokens::new(liveblocks, cleanup_settings.longest_token()),
        config.watch.calls.response_max_bytes,
        roles,
    );
    let routes =
        grpc::routes::Routes::new(api, live, grpc::routes::Quotas::new(&config.watch.calls));
    let services = ledger.mount(GrpcServices::new().add(routes, grpc::policy()).add(
        WorkspaceAdminServiceServer::new(admin).max_decoding_message_size(admin::ADMIN_MAX_REQUEST),
        admin::policy(),
    ));
    boot.serve(listener, config.metrics_addr, services, shutdown)
        .await
}
