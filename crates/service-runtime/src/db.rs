//! Postgres pool, migrations, and classification of database failures.

use crate::tls::DbTls;
use anyhow::Context;
use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool as DeadPool;
use diesel_migrations::MigrationHarness;
use std::time::Duration;

/// The connection pool type of the services.
pub type Pool = DeadPool<AsyncPgConnection>;

/// Database settings shared by the services.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. `postgres://identity:secret@db:5432/vbase`: a role that may read
    /// and write the service's tables, without DDL rights (deploy/README.md, "One database, two roles per service").
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: crate::Secret,
    /// PostgreSQL URL that migrations connect with (`migrate`, `serve --migrate`): the role that
    /// owns the service's schema. Default: DATABASE_URL.
    #[arg(long, env = "DATABASE_MIGRATION_URL", hide_env_values = true)]
    pub database_migration_url: Option<crate::Secret>,
    /// PostgreSQL URL of a session of its own on the primary, never through a pooler in
    /// transaction mode, as the same role as DATABASE_URL: workspace-service's LISTEN
    /// connection, and where DB_POOL_MODE=transaction stores the session settings. Default:
    /// DATABASE_URL.
    #[arg(long, env = "DATABASE_DIRECT_URL", hide_env_values = true)]
    pub database_direct_url: Option<crate::Secret>,
    /// What DATABASE_URL reaches: `session` (PostgreSQL, or a pooler in session mode: each
    /// pooled connection is a session, given its settings with SET), or `transaction` (a pooler
    /// in transaction mode, such as CloudNativePG's Pooler: PgBouncer 1.21 or later with
    /// max_prepared_statements above 0). In `transaction` mode nothing is SET on the pooled
    /// connections; the settings are stored on the role at start (ALTER ROLE, over
    /// DATABASE_DIRECT_URL), and every server connection the pooler opens takes them.
    #[arg(long, env = "DB_POOL_MODE", value_enum, default_value_t = PoolMode::Session)]
    pub db_pool_mode: PoolMode,
    /// Maximum pooled connections (1 to 1000).
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,
    /// Longest a statement may run, milliseconds (PostgreSQL's `statement_timeout`; 0 = no
    /// limit).
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_MS", default_value_t = 10_000)]
    pub db_statement_timeout_ms: u64,
    /// Longest a session may sit idle inside a transaction before PostgreSQL ends it and
    /// releases its locks, milliseconds (`idle_in_transaction_session_timeout`; 0 = no limit).
    #[arg(
        long,
        env = "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub db_idle_in_transaction_timeout_ms: u64,
    /// PEM file of CA certificates the database server's certificate may be signed by, besides
    /// the system's roots: the provider's CA (bundle), e.g. mounted from a Secret.
    /// Each URL's `sslmode` says whether TLS is used (`require`: always; `prefer`, the default:
    /// when the server offers it; `disable`: never); whenever it is, the server's certificate and
    /// host name are verified, and a server that is not trusted is refused. With it set,
    /// every database URL must say `sslmode=require`.
    #[arg(long, env = "DB_CA_FILE")]
    pub db_ca_file: Option<std::path::PathBuf>,
}

impl DatabaseArgs {
    /// What is wrong, if anything: each URL must be one tokio-postgres takes, and DB_CA_FILE
    /// a readable file holding a certificate.
    pub fn check(&self) -> Result<(), String> {
        check_url("DATABASE_URL", &self.database_url)?;
        if let Some(url) = &self.database_migration_url {
            check_url("DATABASE_MIGRATION_URL", url)?;
        }
        if let Some(url) = &self.database_direct_url {
            check_url("DATABASE_DIRECT_URL", url)?;
        }
        if let Some(path) = &self.db_ca_file {
            crate::tls::ca_file_roots(path).map_err(|e| format!("{e:#}"))?;
            check_tls_required("DATABASE_URL", &self.database_url)?;
            for (name, url) in [
                ("DATABASE_MIGRATION_URL", &self.database_migration_url),
                ("DATABASE_DIRECT_URL", &self.database_direct_url),
            ] {
                if let Some(url) = url {
                    check_tls_required(name, url)?;
                }
            }
        }
        Ok(())
    }

    /// The URL migrations connect with: DATABASE_MIGRATION_URL, else DATABASE_URL.
    pub fn migration_url(&self) -> &crate::Secret {
        self.database_migration_url
            .as_ref()
            .unwrap_or(&self.database_url)
    }

    /// The URL of a session of its own on the primary: DATABASE_DIRECT_URL, else DATABASE_URL.
    pub fn direct_url(&self) -> &crate::Secret {
        self.database_direct_url
            .as_ref()
            .unwrap_or(&self.database_url)
    }

    /// The TLS connector of every database connection of the process, trusting the system's
    /// roots and DB_CA_FILE: made once at start, an error naming DB_CA_FILE when that file
    /// cannot be used.
    pub fn tls(&self) -> anyhow::Result<DbTls> {
        DbTls::new(self.db_ca_file.as_deref())
    }

    /// Builds another pool over DATABASE_URL of at most `max_size` connections asking for
    /// `plans`, connecting through `tls`. In `transaction` mode nothing is SET on a pooled
    /// connection, so its plans and limits are the role's (those stored at start), whatever
    /// `plans` asks.
    pub fn extra_pool(
        &self,
        tls: &DbTls,
        max_size: usize,
        plans: PlanCache,
    ) -> anyhow::Result<Pool> {
        let url = self.database_url.expose();
        match self.db_pool_mode {
            PoolMode::Session => build_pool_with(url, max_size, plans, self.limits(), tls),
            PoolMode::Transaction => build_pool_with(
                url,
                max_size,
                PlanCache::Auto,
                SessionLimits::default(),
                tls,
            ),
        }
    }

    /// The session limits these settings ask for.
    pub fn limits(&self) -> SessionLimits {
        SessionLimits {
            statement_timeout_ms: self.db_statement_timeout_ms,
            idle_in_transaction_timeout_ms: self.db_idle_in_transaction_timeout_ms,
        }
    }
}

/// Whether `url`, the value of setting `name`, is a connection string tokio-postgres takes: if
/// not, why, in one line naming the setting and never the URL (it may hold a password).
/// libpq's `sslmode=verify-ca` and `verify-full` are not among them; `require` verifies the
/// server as `verify-full` does (crate::tls).
pub(crate) fn check_url(name: &str, url: &crate::Secret) -> Result<(), String> {
    let Err(e) = url.expose().parse::<tokio_postgres::Config>() else {
        return Ok(());
    };
    let hint = if url.expose().contains("sslmode=verify-") {
        " (use sslmode=require: it verifies the server's certificate and host name, as libpq's verify-full does)"
    } else {
        ""
    };
    Err(format!(
        "{name} is not a PostgreSQL URL: {}{hint}",
        crate::tls::with_causes(&e)
    ))
}

/// With DB_CA_FILE set, TLS is meant: `url` (setting `name`, already checked by
/// [`check_url`]) must say `sslmode=require`. Under `prefer`, tokio-postgres's default, a
/// server (or anyone in between) that declines TLS gets the connection, password exchange
/// and all, in plain text.
pub(crate) fn check_tls_required(name: &str, url: &crate::Secret) -> Result<(), String> {
    match url.expose().parse::<tokio_postgres::Config>() {
        Ok(c) if c.get_ssl_mode() == tokio_postgres::config::SslMode::Require => Ok(()),
        _ => Err(format!(
            "{name} must say sslmode=require when DB_CA_FILE is set: without it (prefer is \
             the default) a server, or anyone in between, that declines TLS gets the \
             connection in plain text"
        )),
    }
}

/// What the pool's URL reaches (`DB_POOL_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolMode {
    /// Each connection is a server session of its own: settings are SET on it.
    Session,
    /// A pooler in transaction mode: a connection's transactions may run on any server
    /// session, so nothing is SET on it; the settings are the role's.
    Transaction,
}

/// Stores `plans` and `limits` as the defaults of the role `direct_url` connects as (which must
/// be the pool's role), for the pool of a service behind a pooler in transaction mode: every
/// server session opened from then on starts with them. A role may set its own defaults.
pub async fn store_role_settings(
    direct_url: &str,
    tls: &DbTls,
    plans: PlanCache,
    limits: SessionLimits,
) -> anyhow::Result<()> {
    use diesel_async::SimpleAsyncConnection;
    let mut conn = tls
        .establish(direct_url)
        .await
        .context("connecting to DATABASE_DIRECT_URL to store the role's session settings")?;
    let plan = match plans {
        PlanCache::Auto => "RESET plan_cache_mode".to_owned(),
        PlanCache::CustomOnly => "SET plan_cache_mode = force_custom_plan".to_owned(),
        PlanCache::GenericOnly => "SET plan_cache_mode = force_generic_plan".to_owned(),
    };
    // Numbers only: nothing here comes from outside the process as text.
    let sql = format!(
        "ALTER ROLE CURRENT_USER {plan};
         ALTER ROLE CURRENT_USER SET statement_timeout = {};
         ALTER ROLE CURRENT_USER SET idle_in_transaction_session_timeout = {};",
        limits.statement_timeout_ms, limits.idle_in_transaction_timeout_ms
    );
    conn.batch_execute(&sql)
        .await
        .context("storing the role's session settings (ALTER ROLE CURRENT_USER SET)")
}

/// Limits set on every pooled connection, so neither a runaway statement nor a transaction
/// left open by a dropped caller holds locks for long. 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionLimits {
    pub statement_timeout_ms: u64,
    pub idle_in_transaction_timeout_ms: u64,
}

/// How PostgreSQL plans the statements a connection keeps prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanCache {
    /// PostgreSQL's default: after five executions it may keep one generic plan. Right when
    /// every statement looks rows up by key, so no parameter value changes the best plan.
    Auto,
    /// Plan every execution for its actual parameters (`plan_cache_mode = force_custom_plan`),
    /// keeping only the parse. For services whose statements page with optional cursors or
    /// take a `LIMIT` as a parameter: a generic plan there can walk a whole index per page.
    CustomOnly,
    /// Plan each statement once, for any parameters (`plan_cache_mode = force_generic_plan`).
    /// For services whose statements look rows up by key or by an array of keys. Left to
    /// itself, PostgreSQL plans a statement that takes an array (`= ANY($1)`, `unnest($1)`)
    /// again on every execution: the plan for the actual (short) array always looks cheaper
    /// than one for an array of unknown length, so the generic plan is never chosen.
    GenericOnly,
}

impl PlanCache {
    /// The statement that sets this mode on a new connection, if not PostgreSQL's default.
    fn setting(self) -> Option<&'static str> {
        match self {
            PlanCache::Auto => None,
            PlanCache::CustomOnly => Some("SET plan_cache_mode = force_custom_plan"),
            PlanCache::GenericOnly => Some("SET plan_cache_mode = force_generic_plan"),
        }
    }
}

/// Builds a pool of at most `max_size` (at least 1) connections with no session limits,
/// trusting the system's roots alone (tests and tools); services use [`build_pool_with`].
pub fn build_pool(url: &str, max_size: usize, plans: PlanCache) -> anyhow::Result<Pool> {
    build_pool_with(
        url,
        max_size,
        plans,
        SessionLimits::default(),
        &DbTls::system_roots(),
    )
}

/// Builds a pool of at most `max_size` (at least 1) connections, each with `limits` and made
/// through `tls`, that fails fast (5 s) when the database is unreachable.
pub fn build_pool_with(
    url: &str,
    max_size: usize,
    plans: PlanCache,
    limits: SessionLimits,
    tls: &DbTls,
) -> anyhow::Result<Pool> {
    anyhow::ensure!(max_size >= 1, "DB_POOL_SIZE must be at least 1");
    use diesel_async::RunQueryDsl;
    // Fast recycling: no `SELECT 1` round trip per checkout. The health watch probes the
    // database every 2 s, and a broken connection surfaces as UNAVAILABLE on first use.
    let mut config = diesel_async::pooled_connection::ManagerConfig::default();
    config.recycling_method = diesel_async::pooled_connection::RecyclingMethod::Fast;
    let tls = tls.clone();
    config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        let tls = tls.clone();
        Box::pin(async move {
            let mut conn = tls.establish(&url).await?;
            if let Some(setting) = plans.setting() {
                diesel::sql_query(setting)
                    .execute(&mut conn)
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            }
            if limits != SessionLimits::default() {
                diesel::sql_query(
                    "SELECT set_config('statement_timeout', $1, false),
                            set_config('idle_in_transaction_session_timeout', $2, false)",
                )
                .bind::<diesel::sql_types::Text, _>(limits.statement_timeout_ms.to_string())
                .bind::<diesel::sql_types::Text, _>(
                    limits.idle_in_transaction_timeout_ms.to_string(),
                )
                .execute(&mut conn)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            }
            Ok(conn)
        })
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    DeadPool::builder(manager)
        .pre_recycle(deadpool::managed::Hook::sync_fn(|_, metrics| {
            if retired(metrics.created) {
                return Err(deadpool::managed::HookError::Message(
                    "connected before the server turned read-only".into(),
                ));
            }
            Ok(())
        }))
        .max_size(max_size)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .context("building the database pool")
}

/// Applies pending migrations over a connection to `url` made through `tls`, then closes it.
pub async fn run_migrations(
    url: &str,
    tls: &DbTls,
    migrations: impl MigrationSource<Pg> + Send + 'static,
) -> anyhow::Result<Vec<String>> {
    use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
    let conn = tls
        .establish(url)
        .await
        .context("connecting to the database to migrate")?;
    // diesel's migration harness is blocking: it runs on a blocking thread, where the wrapper
    // drives the connection on this runtime.
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        // Replicas may migrate at once (init containers): one runs, the others wait, then
        // find nothing pending. The lock is released when the connection closes. Its key is
        // the schema the migrations go into (each service's own, holding its migrations
        // table), so one service's long migration never holds up the other's pods in a
        // shared database.
        {
            use diesel::RunQueryDsl;
            diesel::sql_query(
                "SELECT pg_advisory_lock(7340261, hashtext(coalesce(current_schema(), '')))",
            )
            .execute(&mut conn)
            .context("taking the migration lock")?;
        }
        let applied = conn
            .run_pending_migrations(migrations)
            .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
        Ok(applied.iter().map(ToString::to_string).collect())
    })
    .await
    .context("migration task")?
}

/// Connections made before this instant are dropped at their next checkout.
static RETIRED_BEFORE: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

/// Retires every pooled connection open now, in every pool of the process: each is closed at
/// its next checkout instead of being handed out, and a new one is made in its place. Called
/// when a statement finds its server read-only (SQLSTATE 25006): the connection reached a
/// standby, or a primary that was demoted under it (a failover behind a pooler or a virtual
/// address). New connections are made with the URL's `target_session_attrs=read-write`, so they
/// find the primary. Connections of other pools are made anew too: a cost of one connection
/// each, once per such event.
pub fn retire_connections() {
    *RETIRED_BEFORE.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
}

/// Whether a connection made at `created` has been retired.
fn retired(created: std::time::Instant) -> bool {
    RETIRED_BEFORE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some_and(|before| created <= before)
}

/// Whether `e` says the server refused a write because it is read-only (SQLSTATE 25006: a
/// standby, or `default_transaction_read_only`).
pub fn is_read_only_server(e: &diesel::result::Error) -> bool {
    matches!(
        e,
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ReadOnlyTransaction,
            _
        )
    )
}

/// What kind of database failure happened, for mapping onto gRPC codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// No row.
    NotFound,
    /// Unique constraint violated.
    UniqueViolation,
    /// Foreign key violated.
    ForeignKeyViolation,
    /// Serialization failure or deadlock: safe to retry.
    Retryable,
    /// The database is unreachable or the connection broke.
    Unavailable,
    /// Anything else.
    Other,
}

/// Classifies a diesel error. The one classification of every database error, the calls'
/// ([`status_for`]) and the background work's (jobs, loops: [`classify_error`]): a read-only
/// server found anywhere retires the pool's stale connections ([`retire_connections`]).
pub fn classify(e: &diesel::result::Error) -> DbFailure {
    use diesel::result::{DatabaseErrorKind as K, Error as E};
    if is_read_only_server(e) {
        retire_connections();
    }
    match e {
        E::NotFound => DbFailure::NotFound,
        E::DatabaseError(K::UniqueViolation, _) => DbFailure::UniqueViolation,
        E::DatabaseError(K::ForeignKeyViolation, _) => DbFailure::ForeignKeyViolation,
        E::DatabaseError(K::SerializationFailure, _) => DbFailure::Retryable,
        // A connection that broke mid-statement (no SQLSTATE: the server went away), or a
        // server that takes no writes (a standby, or a primary being demoted).
        E::DatabaseError(
            K::ClosedConnection | K::UnableToSendCommand | K::ReadOnlyTransaction,
            _,
        )
        | E::BrokenTransactionManager => DbFailure::Unavailable,
        E::DatabaseError(_, info)
            if info.message().contains("deadlock detected")
                || info.message().contains("statement timeout") =>
        {
            DbFailure::Retryable
        }
        // 57P01-57P03 and the 08 class: "terminating connection ...", "the database system is
        // shutting down / starting up / in recovery mode".
        E::DatabaseError(K::Unknown, info)
            if info.message().contains("connection")
                || info.message().contains("terminating")
                || info.message().starts_with("the database system is") =>
        {
            DbFailure::Unavailable
        }
        _ => DbFailure::Other,
    }
}

/// [`classify`] for the errors of background work, which carry a database error among others:
/// the first diesel error in `e`'s chain is classified; a pool or connection error is
/// [`DbFailure::Unavailable`]; `None` when `e` holds no database error.
pub fn classify_error(e: &anyhow::Error) -> Option<DbFailure> {
    e.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<diesel::result::Error>() {
            Some(classify(e))
        } else if cause
            .downcast_ref::<diesel_async::pooled_connection::deadpool::PoolError>()
            .is_some()
            || cause.downcast_ref::<diesel::ConnectionError>().is_some()
        {
            Some(DbFailure::Unavailable)
        } else {
            None
        }
    })
}

/// A short fingerprint of a migration set (names), to key test templates by schema version.
pub fn migrations_fingerprint(migrations: &impl MigrationSource<Pg>) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Ok(list) = migrations.migrations() {
        for m in list {
            m.name().to_string().hash(&mut h);
        }
    }
    format!("{:x}", h.finish())
}

/// Exactly-once delivery: records `event_id` in the service's `processed_events` table (same
/// transaction as the change). Returns false when it was recorded before (a duplicate).
pub async fn record_delivery(
    conn: &mut AsyncPgConnection,
    event_id: &str,
) -> diesel::QueryResult<bool> {
    use diesel_async::RunQueryDsl;
    let n = crate::prepared(
        "INSERT INTO processed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind::<diesel::sql_types::Text, _>(event_id)
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// Serialises writers of one entity (`key`) until the current transaction ends.
pub async fn lock_entity(conn: &mut AsyncPgConnection, key: &str) -> diesel::QueryResult<()> {
    use diesel_async::RunQueryDsl;
    crate::prepared("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
        .bind::<diesel::sql_types::Text, _>(key)
        .execute(conn)
        .await
        .map(|_| ())
}

/// One batch of [`prune_processed_events`]: up to 5,000 ids older than `$1` seconds. The ids
/// go to the delete as an array, so it finds them through the primary key; as an `IN
/// (subquery)`, PostgreSQL chose a hash join over a scan of the whole table for every batch.
pub const PRUNE_PROCESSED_EVENTS: &str = "DELETE FROM processed_events WHERE event_id = ANY(ARRAY(
     SELECT event_id FROM processed_events
     WHERE processed_at < now() - make_interval(secs => $1) LIMIT 5000))";

/// Deletes processed event ids older than `keep`, in batches of 5000; returns how many.
pub async fn prune_processed_events(
    conn: &mut AsyncPgConnection,
    keep: Duration,
) -> diesel::QueryResult<u64> {
    use diesel_async::RunQueryDsl;
    let keep_secs = keep.as_secs() as f64;
    let mut total = 0u64;
    loop {
        let n = crate::prepared(PRUNE_PROCESSED_EVENTS)
            .bind::<diesel::sql_types::Double, _>(keep_secs)
            .execute(conn)
            .await?;
        total += n as u64;
        if n < 5000 {
            return Ok(total);
        }
    }
}

/// The gRPC status for a database error: NOT_FOUND, ALREADY_EXISTS, UNAVAILABLE for transient
/// failures (retry later), INTERNAL otherwise. Details are logged, never returned.
pub fn status_for(e: &diesel::result::Error) -> tonic::Status {
    match classify(e) {
        DbFailure::NotFound => tonic::Status::not_found("not found"),
        DbFailure::UniqueViolation => tonic::Status::already_exists("already exists"),
        DbFailure::Unavailable | DbFailure::Retryable => {
            tracing::warn!(error = %e, "transient database failure");
            tonic::Status::unavailable("database unavailable, retry later")
        }
        DbFailure::ForeignKeyViolation | DbFailure::Other => {
            tracing::error!(error = %e, "database error");
            tonic::Status::internal("internal error")
        }
    }
}

/// The gRPC status when no pooled connection can be had.
pub fn pool_status(e: &diesel_async::pooled_connection::deadpool::PoolError) -> tonic::Status {
    tracing::warn!(error = %e, "database pool unavailable");
    tonic::Status::unavailable("database unavailable, retry later")
}

/// Background job of both services: every hour, prunes processed event ids older than
/// `keep_hours` and reports how many went to `on_pruned`; stops with `stop`.
pub async fn prune_loop(
    pool: Pool,
    keep_hours: u64,
    on_pruned: impl Fn(u64) + Send,
    stop: impl std::future::Future<Output = ()>,
) {
    let keep = Duration::from_secs(keep_hours * 3600);
    tokio::pin!(stop);
    loop {
        let pruned = match pool.get().await {
            Ok(mut conn) => prune_processed_events(&mut conn, keep)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        match pruned {
            Ok(0) => {}
            Ok(n) => {
                on_pruned(n);
                tracing::info!(pruned = n, "pruned processed event ids");
            }
            Err(error) => {
                classify_error(&error);
                tracing::warn!(%error, "pruning processed event ids failed")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = &mut stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{DatabaseArgs, PoolMode, check_url};

    #[test]
    fn a_ca_file_that_cannot_be_used_is_a_configuration_error_naming_it() {
        let args = DatabaseArgs {
            database_url: "postgres://app@db/vbase?sslmode=require".into(),
            database_migration_url: None,
            database_direct_url: None,
            db_pool_mode: PoolMode::Session,
            db_pool_size: 16,
            db_statement_timeout_ms: 10_000,
            db_idle_in_transaction_timeout_ms: 5_000,
            db_ca_file: Some("/nonexistent/ca.pem".into()),
        };
        let problem = args.check().unwrap_err();
        assert!(
            problem.starts_with("DB_CA_FILE (/nonexistent/ca.pem) cannot be read: "),
            "{problem}"
        );
    }

    #[test]
    fn a_url_asking_for_verify_full_is_refused_naming_the_setting_not_the_password() {
        let url = "postgres://app:hunter2@db:5432/vbase?sslmode=verify-full".into();
        let problem = check_url("DATABASE_URL", &url).unwrap_err();
        assert!(problem.starts_with("DATABASE_URL "), "{problem}");
        assert!(problem.contains("sslmode"), "{problem}");
        assert!(problem.contains("use sslmode=require"), "{problem}");
        assert!(!problem.contains("hunter2"), "{problem}");
    }

    #[test]
    fn with_a_ca_file_every_url_must_require_tls() {
        let ca = tempfile::NamedTempFile::new().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["db".into()]).unwrap();
        std::fs::write(ca.path(), cert.cert.pem()).unwrap();
        let args = |url: &str, direct: Option<&str>| DatabaseArgs {
            database_url: url.into(),
            database_migration_url: None,
            database_direct_url: direct.map(Into::into),
            db_pool_mode: PoolMode::Session,
            db_pool_size: 16,
            db_statement_timeout_ms: 10_000,
            db_idle_in_transaction_timeout_ms: 5_000,
            db_ca_file: Some(ca.path().to_owned()),
        };
        let require = "postgres://app:pw@db/vbase?sslmode=require";
        assert_eq!(args(require, Some(require)).check(), Ok(()));
        for weak in [
            "postgres://app:pw@db/vbase",
            "postgres://app:pw@db/vbase?sslmode=prefer",
            "postgres://app:pw@db/vbase?sslmode=disable",
        ] {
            let problem = args(weak, None).check().unwrap_err();
            assert!(
                problem.starts_with("DATABASE_URL must say sslmode=require"),
                "{problem}"
            );
            assert!(!problem.contains("pw@"), "{problem}");
            let problem = args(require, Some(weak)).check().unwrap_err();
            assert!(
                problem.starts_with("DATABASE_DIRECT_URL must say sslmode=require"),
                "{problem}"
            );
        }
    }

    #[test]
    fn the_sslmodes_tokio_postgres_knows_are_taken() {
        for mode in ["disable", "prefer", "require"] {
            let url = format!("postgres://app:pw@db/vbase?sslmode={mode}").into();
            assert_eq!(check_url("DATABASE_URL", &url), Ok(()));
        }
    }
}
