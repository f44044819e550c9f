//! Test support for the VBase services: runs a service's real `run` on `127.0.0.1:0`, gives it a
//! migrated database of its own, a stand-in Clerk issuer and an internal caller's keys, and
//! builds requests carrying real tokens.

use ephemeral_postgres::{TestDatabase, TestDatabases};
use stand_ins::{ClerkStandIn, OrgClaim, ServiceKeys};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Request;
use tonic::transport::Channel;

mod unread;
pub mod upgrade;

pub use unread::{Unread, grpc_frame, stingy_h2_client, unread_call};

/// The shutdown future handed to a service's `run`.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A service running in this process.
#[derive(Debug)]
pub struct RunningServer {
    /// gRPC address.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningServer {
    /// Starts `run(listener, shutdown)` on `127.0.0.1:0`.
    pub async fn start<F, Fut>(run: F) -> Self
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self::start_on("127.0.0.1:0".parse().expect("address"), run).await
    }

    /// Starts `run(listener, shutdown)` on `addr` (e.g. to restart a stopped server in place).
    pub async fn start_on<F, Fut>(addr: SocketAddr, run: F) -> Self
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run(
            listener,
            Box::pin(async move {
                let _ = rx.await;
            }),
        ));
        Self {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Asks for a graceful shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(t) => t.await?,
            None => Ok(()),
        }
    }

    /// A channel to the server, retried until it connects (10 s deadline).
    pub async fn channel(&self) -> Channel {
        connect(self.addr).await
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A channel to `addr`, retried until it connects (10 s deadline).
pub async fn connect(addr: SocketAddr) -> Channel {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Channel::from_shared(format!("http://{addr}"))
            .expect("valid uri")
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "server at {addr} not reachable: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A request carrying `authorization: Bearer <token>`.
pub fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    r
}

/// A protobuf timestamp at `secs`.
pub fn ts(secs: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    })
}

/// The `sub` of [`Issuers::service`] tokens: an internal caller granted every method that
/// admits service tokens (`SERVICE_CALLERS`), so tests can drive any RPC. The webhook gateway
/// and the operators have keys of their own, each bound to its subject.
pub const INTERNAL_CALLER: &str = "internal-test";

/// The origin whose pages the test services admit (`CORS_ALLOWED_ORIGINS`).
pub const BROWSER_ORIGIN: &str = "http://localhost:5173";

/// The operator subject the test services admit (`OPERATOR_SUBJECTS`).
pub const OPERATOR: &str = "operator";

/// Trust material for a service under test: a Clerk stand-in and the gateway's service keys.
#[derive(Debug)]
pub struct Issuers {
    /// Stand-in Clerk issuer (audience `convex`).
    pub clerk: ClerkStandIn,
    /// The internal callers' keys: [`INTERNAL_CALLER`]'s (the default), the gateway's and the
    /// operators' ([`OPERATOR`]), each bound to its subject.
    pub keys: ServiceKeys,
}

impl Issuers {
    /// Fresh keys and a running JWKS stand-in.
    pub async fn new() -> Self {
        Self {
            clerk: ClerkStandIn::start("convex").await.expect("clerk stand-in"),
            keys: ServiceKeys::generate(
                "vbase-internal",
                &[INTERNAL_CALLER, token_auth::GATEWAY_SUBJECT, OPERATOR],
            )
            .expect("service keys"),
        }
    }

    /// Token settings pointing at these issuers.
    pub fn auth_args(&self) -> token_auth::AuthArgs {
        token_auth::AuthArgs {
            clerk_jwt_issuer_domain: self.clerk.issuer(),
            clerk_jwks_url: None,
            clerk_jwt_audience: "convex".into(),
            clerk_authorized_parties: vec![],
            service_jwt_issuer: "vbase-internal".into(),
            service_jwks_file: Some(self.keys.jwks_file()),
            service_jwks_url: None,
            jwks_refresh_secs: 300,
            token_max_lifetime_secs: 3600,
            clerk_require_azp: true,
            clerk_accept_pending_sessions: false,
            service_callers: format!("{INTERNAL_CALLER}=*"),
            operator_subjects: OPERATOR.into(),
        }
    }

    /// The settings every service takes, for a test server on `database_url` (a test
    /// database's, [`ephemeral_postgres::TestDatabase::url`]) with a pool of `pool_size` and
    /// these issuers. The service connects as the app role, which may read and write the
    /// tables and run no DDL, as in production; migrations would use `database_url`'s owner.
    pub fn service_args(
        &self,
        database_url: &str,
        pool_size: usize,
    ) -> service_runtime::ServiceArgs {
        service_runtime::ServiceArgs {
            db: service_runtime::DatabaseArgs {
                database_url: ephemeral_postgres::app_role_url(database_url).into(),
                database_migration_url: Some(database_url.into()),
                database_direct_url: None,
                db_pool_mode: service_runtime::db::PoolMode::Session,
                db_pool_size: pool_size,
                db_statement_timeout_ms: 10_000,
                db_idle_in_transaction_timeout_ms: 5_000,
                db_ca_file: None,
            },
            replica: Default::default(),
            auth: self.auth_args(),
            grpc: service_runtime::GrpcLimits::default(),
            browser: service_runtime::browser::BrowserArgs {
                cors_allowed_origins: vec![BROWSER_ORIGIN.into()],
            },
            shutdown: service_runtime::ShutdownArgs::default(),
            log_format: service_runtime::LogFormat::Pretty,
            migrate_on_start: false,
            processed_event_retention_hours: 72,
        }
    }

    /// A request with a service token for `audience`.
    pub fn service<T>(&self, audience: &str, msg: T) -> Request<T> {
        bearer(msg, &self.keys.token_for(audience))
    }

    /// A request with an operator's service token ([`OPERATOR`]) for `audience`.
    pub fn operator<T>(&self, audience: &str, msg: T) -> Request<T> {
        bearer(msg, &self.keys.token_as(OPERATOR, audience))
    }

    /// A request with the webhook gateway's service token for `audience`.
    pub fn gateway<T>(&self, audience: &str, msg: T) -> Request<T> {
        bearer(
            msg,
            &self.keys.token_as(token_auth::GATEWAY_SUBJECT, audience),
        )
    }

    /// A request with a user token (no active organization).
    pub fn user<T>(&self, user_id: &str, msg: T) -> Request<T> {
        bearer(
            msg,
            &self.clerk.user_token(
                user_id,
                "Token Name",
                &format!("{user_id}@example.com"),
                None,
            ),
        )
    }

    /// A request with a v2 Clerk session token (the `o` claim) whose active organization is
    /// `org_id` with `role`.
    pub fn session<T>(&self, user_id: &str, org_id: &str, role: &str, msg: T) -> Request<T> {
        let org = OrgClaim {
            id: org_id.into(),
            role: role.into(),
            slug: format!("{org_id}-slug"),
        };
        bearer(msg, &self.clerk.session_token(user_id, Some(&org)))
    }

    /// A request with a user token whose active organization is `org_id` with `role`.
    pub fn member<T>(&self, user_id: &str, org_id: &str, role: &str, msg: T) -> Request<T> {
        let org = OrgClaim {
            id: org_id.into(),
            role: role.into(),
            slug: String::new(),
        };
        bearer(
            msg,
            &self.clerk.user_token(
                user_id,
                "Token Name",
                &format!("{user_id}@example.com"),
                Some(&org),
            ),
        )
    }
}

/// A database cloned from a template migrated with `migrate` (keyed by `name` + fingerprint).
pub async fn database<F, Fut>(name: &str, fingerprint: &str, migrate: F) -> TestDatabase
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    TestDatabases::shared()
        .await
        .create(&format!("{name}_{fingerprint}"), migrate)
        .await
        .expect("test database")
}

/// Polls `probe` until it returns true (10 s deadline); panics with `what` otherwise.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if probe().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Cuts the notification connections of the caches (`crates/coherent-cache`, named
/// `coherent-cache` in `pg_stat_activity`) of `database_url`, after checking there are
/// `listeners`, and waits until as many listen again.
pub async fn cut_cache_notifications(database_url: &str, listeners: i64) {
    let count = "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name = 'coherent-cache' AND datname = current_database()";
    assert_eq!(
        scalar(database_url, count).await,
        listeners,
        "cache listeners before the cut"
    );
    execute(
        database_url,
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
          WHERE application_name = 'coherent-cache' AND datname = current_database()",
    )
    .await;
    eventually("listening again", Duration::from_secs(10), || async {
        scalar(database_url, count).await == listeners
    })
    .await;
}

/// A transaction that holds the advisory lock a service takes for one entity
/// (`service_runtime::db::lock_entity`), until dropped: the service's command for that entity
/// waits meanwhile, as behind a slow concurrent writer.
#[derive(Debug)]
pub struct EntityLock(Option<oneshot::Sender<()>>);

impl EntityLock {
    /// Takes the lock of `key` (e.g. `org:org_1`) in `database_url`.
    pub async fn hold(database_url: &str, key: &str) -> Self {
        let sql = format!(
            "SELECT pg_advisory_xact_lock(hashtextextended('{}', 7))",
            key.replace('\'', "")
        );
        Self::taken_by(database_url, &sql).await
    }

    /// Takes the whole of `table` in `database_url` (ACCESS EXCLUSIVE): every statement of a
    /// service on it waits meanwhile.
    pub async fn table(database_url: &str, table: &str) -> Self {
        Self::taken_by(
            database_url,
            &format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"),
        )
        .await
    }

    /// Runs `sql` in a transaction held open until dropped.
    async fn taken_by(database_url: &str, sql: &str) -> Self {
        use diesel_async::SimpleAsyncConnection;
        let pool =
            service_runtime::db::build_pool(database_url, 1, service_runtime::db::PlanCache::Auto)
                .expect("pool");
        let mut conn = pool.get().await.expect("connection");
        let (release, released) = oneshot::channel::<()>();
        let (held_tx, held) = oneshot::channel::<()>();
        let sql = format!("BEGIN; {sql}");
        tokio::spawn(async move {
            conn.batch_execute(&sql).await.expect("lock taken");
            let _ = held_tx.send(());
            let _ = released.await;
            conn.batch_execute("COMMIT").await.expect("lock released");
        });
        held.await.expect("lock task");
        Self(Some(release))
    }
}

impl Drop for EntityLock {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            let _ = release.send(());
        }
    }
}

/// Tables of workspace-service that outlive a deleted workspace on purpose: delivery ids,
/// tombstones, removed users, the Liveblocks outbox, migrations.
pub const WORKSPACE_BOOKKEEPING: &[&str] = &[
    "__diesel_schema_migrations",
    "processed_events",
    "workspace_tombstones",
    "removed_users",
    "liveblocks_cleanup_jobs",
    "sync_outcomes",
    "quarantined_deliveries",
    // The change log of live watches: a deleted workspace's last entry (`workspace_deleted`)
    // and its head stay until CHANGE_LOG_RETENTION_HOURS prunes both.
    "change_log",
    "change_heads",
];

/// One connection to `database_url`, for fixtures and checks beside a service.
pub(crate) async fn connection(
    database_url: &str,
) -> diesel_async::pooled_connection::deadpool::Object<diesel_async::AsyncPgConnection> {
    service_runtime::db::build_pool(database_url, 1, service_runtime::db::PlanCache::Auto)
        .expect("pool")
        .get()
        .await
        .expect("connection")
}

/// Tables of `database_url`'s `public` schema, read from the catalog (so a table added later
/// is covered), that hold rows, other than those named in `except`, with their row counts.
pub async fn tables_with_rows(database_url: &str, except: &[&str]) -> Vec<(String, i64)> {
    use diesel_async::RunQueryDsl;
    use service_runtime::Settled;
    #[derive(diesel::QueryableByName)]
    struct Table {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = connection(database_url).await;
    let tables: Vec<Table> = diesel::sql_query(
        "SELECT c.relname::text AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1",
    )
    .load(&mut conn)
    .await
    .expect("catalog");
    assert!(
        tables.len() > except.len(),
        "the catalog lists too few tables"
    );
    let mut out = Vec::new();
    for t in tables.iter().filter(|t| !except.contains(&t.name.as_str())) {
        let n: N = diesel::sql_query(format!("SELECT count(*) AS n FROM \"{}\"", t.name))
            .one(&mut conn)
            .await
            .expect("count");
        if n.n > 0 {
            out.push((t.name.clone(), n.n));
        }
    }
    out
}

/// One number from `sql` (a `SELECT` of one value castable to bigint) in `database_url`.
pub async fn scalar(database_url: &str, sql: &str) -> i64 {
    use service_runtime::Settled;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = connection(database_url).await;
    diesel::sql_query(format!("SELECT ({sql})::bigint AS n"))
        .one::<N>(&mut conn)
        .await
        .expect("one number")
        .n
}

/// The first column of every row `sql` returns, as text.
pub async fn strings(database_url: &str, sql: &str) -> Vec<String> {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct S {
        #[diesel(sql_type = diesel::sql_types::Text)]
        s: String,
    }
    let mut conn = connection(database_url).await;
    diesel::sql_query(format!("SELECT q::text AS s FROM ({sql}) AS t(q)"))
        .load::<S>(&mut conn)
        .await
        .expect("rows of one column")
        .into_iter()
        .map(|r| r.s)
        .collect()
}

/// The triggers that call `function` are exactly `checked` (`(table, trigger)`, as a cache's
/// list names them).
pub async fn assert_triggers_checked(database_url: &str, function: &str, checked: &[(&str, &str)]) {
    let mut found = strings(
        database_url,
        &format!(
            "SELECT c.relname || '.' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
              WHERE t.tgfoid = '{function}'::regproc"
        ),
    )
    .await;
    found.sort();
    let mut listed: Vec<String> = checked.iter().map(|(t, n)| format!("{t}.{n}")).collect();
    listed.sort();
    assert_eq!(found, listed, "the triggers that call {function}");
}

/// Runs `sql` (any number of statements) in `database_url` and says what PostgreSQL answered:
/// for statements that must be refused.
pub async fn try_execute(database_url: &str, sql: &str) -> Result<(), String> {
    use diesel_async::SimpleAsyncConnection;
    let pool =
        service_runtime::db::build_pool(database_url, 1, service_runtime::db::PlanCache::Auto)
            .map_err(|e| e.to_string())?;
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    conn.batch_execute(sql).await.map_err(|e| e.to_string())
}

/// Runs `sql` (any number of statements) in `database_url`: fixtures too large to build
/// through the API.
pub async fn execute(database_url: &str, sql: &str) {
    use diesel_async::SimpleAsyncConnection;
    let mut conn = connection(database_url).await;
    conn.batch_execute(sql).await.expect("fixture SQL");
}

/// The value of the `/metrics` line on `metrics_addr` that starts with `series` (its name and
/// labels, as exposed).
pub async fn metric(metrics_addr: std::net::SocketAddr, series: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the /metrics body");
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
