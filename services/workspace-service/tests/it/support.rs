//! Starts the real workspace-service on 127.0.0.1:0 against its own Postgres database, with a
//! stand-in Clerk issuer, the gateway's service keys and a Liveblocks stand-in.

#![allow(dead_code)]

use ephemeral_postgres::TestDatabase;
use service_harness::{Issuers, RunningServer};
use service_runtime::Settled;
use stand_ins::LiveblocksStandIn;
use tonic::Request;
use tonic::transport::Channel;
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;
use workspace_service::{Config, LiveblocksArgs};

#[allow(unused_imports)]
pub use service_harness::{bearer, eventually, ts};

pub const SECRET: &str = "sk_test_standin";
/// Test times are offsets from this realistic base.
pub const T0: i64 = 1_700_000_000;

pub struct Env {
    /// Where `/metrics` and `/status` are served.
    pub metrics_addr: std::net::SocketAddr,
    pub issuers: Issuers,
    pub db: TestDatabase,
    pub liveblocks: LiveblocksStandIn,
    pub server: RunningServer,
}

pub async fn database() -> TestDatabase {
    let fp = service_runtime::db::migrations_fingerprint(&workspace_service::MIGRATIONS);
    service_harness::database("workspace", &fp, |url| async move {
        workspace_service::migrate(&url, &service_runtime::DbTls::system_roots())
            .await
            .map(|_| ())
    })
    .await
}

pub fn config(db_url: &str, issuers: &Issuers, liveblocks_url: Option<&str>) -> Config {
    Config {
        service: issuers.service_args(db_url, 10),
        liveblocks: LiveblocksArgs {
            liveblocks_api_url: liveblocks_url.unwrap_or("http://127.0.0.1:9").to_owned(),
            liveblocks_secret_key: liveblocks_url.map(|_| SECRET.into()),
            liveblocks_concurrency: 8,
            liveblocks_timeout_secs: 5,
            liveblocks_lease_secs: 10,
            liveblocks_backoff_base_ms: 50,
            liveblocks_backoff_max_secs: 1,
            liveblocks_poll_ms: 50,
            liveblocks_max_attempts: 5,
            liveblocks_key_check_secs: 10,
            // A second deletion an hour later: its own test turns it on.
            liveblocks_sweep_after_secs: 0,
        },
        purge: workspace_service::PurgeArgs {
            purge_chunk_rows: 1000,
            purge_concurrency: 2,
            purge_lanes: 2,
            purge_poll_ms: 50,
            purge_lease_secs: 10,
        },
        ledger: Default::default(),
        watch: Default::default(),
        roles: Default::default(),
        access_cache_bytes: 8 << 20,
        channel_cache_bytes: 4 << 20,
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
    }
}

/// Starts the service; `with_worker` runs its Liveblocks worker against the stand-in.
pub async fn start_with(with_worker: bool) -> Env {
    start_custom(with_worker, |_| {}).await
}

/// Like [`start_with`], with the configuration changed by `tweak` first.
pub async fn start_custom(with_worker: bool, tweak: impl FnOnce(&mut Config)) -> Env {
    start_on(database().await, with_worker, tweak).await
}

/// Like [`start_custom`], on database `db`.
pub async fn start_on(db: TestDatabase, with_worker: bool, tweak: impl FnOnce(&mut Config)) -> Env {
    let issuers = Issuers::new().await;
    let liveblocks = LiveblocksStandIn::start(SECRET).await.unwrap();
    let url = liveblocks.base_url();
    let mut cfg = config(db.url(), &issuers, with_worker.then_some(url.as_str()));
    let port = ephemeral_postgres::unused_local_port().unwrap();
    cfg.metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    tweak(&mut cfg);
    let metrics_addr = cfg.metrics_addr;
    let server = RunningServer::start(|l, s| workspace_service::run(cfg, l, s)).await;
    let env = Env {
        metrics_addr,
        issuers,
        db,
        liveblocks,
        server,
    };
    env.wait_keys_loaded().await;
    env
}

/// A second replica of `env`'s service on the same database.
pub async fn second_replica(env: &Env) -> (RunningServer, WorkspaceServiceClient<Channel>) {
    let (server, client, _) = second_replica_with_metrics(env).await;
    (server, client)
}

/// [`second_replica`], and the address of its metrics.
pub async fn second_replica_with_metrics(
    env: &Env,
) -> (
    RunningServer,
    WorkspaceServiceClient<Channel>,
    std::net::SocketAddr,
) {
    let mut cfg = config(env.db.url(), &env.issuers, None);
    let port = ephemeral_postgres::unused_local_port().unwrap();
    cfg.metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let metrics = cfg.metrics_addr;
    let server = RunningServer::start(|l, s| workspace_service::run(cfg, l, s)).await;
    let client = WorkspaceServiceClient::new(server.channel().await);
    (server, client, metrics)
}

pub async fn start() -> Env {
    start_with(true).await
}

impl Env {
    /// `GET path` on the metrics port: (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.metrics_addr))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The value of the metric line that starts with `series` (name and labels).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        service_harness::metric(self.metrics_addr, series).await
    }

    /// Waits (at most 10 s) until the metric line `series` (absent: 0) satisfies `reached`.
    pub async fn metric_reaches(&self, series: &str, reached: impl Fn(f64) -> bool) {
        service_harness::eventually(series, std::time::Duration::from_secs(10), || async {
            reached(self.metric(series).await.unwrap_or(0.0))
        })
        .await;
    }

    pub async fn admin_client(
        &self,
    ) -> vbase_proto::workspace::v1::workspace_admin_service_client::WorkspaceAdminServiceClient<
        Channel,
    > {
        vbase_proto::workspace::v1::workspace_admin_service_client::WorkspaceAdminServiceClient::new(
            self.server.channel().await,
        )
    }

    pub fn operator<T>(&self, msg: T) -> Request<T> {
        self.issuers.operator("workspace-service", msg)
    }

    pub async fn client(&self) -> WorkspaceServiceClient<Channel> {
        WorkspaceServiceClient::new(self.server.channel().await)
    }

    pub fn service<T>(&self, msg: T) -> Request<T> {
        self.issuers.service("workspace-service", msg)
    }

    pub fn member<T>(&self, user: &str, org: &str, msg: T) -> Request<T> {
        self.issuers.member(user, org, "org:member", msg)
    }

    pub fn admin<T>(&self, user: &str, org: &str, msg: T) -> Request<T> {
        self.issuers.member(user, org, "org:admin", msg)
    }

    async fn wait_keys_loaded(&self) {
        let c = self.client().await;
        service_harness::eventually("keys loaded", std::time::Duration::from_secs(10), || {
            let mut c = c.clone();
            async move {
                let q = || pb::GetWorkspaceRequest {
                    clerk_org_id: "org_probe".into(),
                };
                let u = c
                    .get_workspace(self.member("user_probe", "org_probe", q()))
                    .await;
                let s = c.get_workspace(self.service(q())).await;
                let unauth = |e: Option<&tonic::Status>| {
                    e.is_some_and(|e| e.code() == tonic::Code::Unauthenticated)
                };
                !unauth(u.as_ref().err()) && !unauth(s.as_ref().err())
            }
        })
        .await;
    }

    /// Creates workspace `org` (by the gateway's command) and returns it.
    pub async fn workspace(&self, org: &str) -> pb::Workspace {
        let mut c = self.client().await;
        let r = c
            .upsert_workspace(self.service(upsert_ws(&format!("create-{org}"), 1, org, "Acme")))
            .await
            .unwrap()
            .into_inner();
        r.workspace.unwrap()
    }

    /// A connection to the test database, beside the API (fixtures and checks).
    pub async fn conn(
        &self,
    ) -> diesel_async::pooled_connection::deadpool::Object<diesel_async::AsyncPgConnection> {
        service_runtime::db::build_pool(self.db.url(), 1, workspace_service::PLANS)
            .unwrap()
            .get()
            .await
            .unwrap()
    }

    /// Rows in `table` (direct SQL, for orphan checks).
    pub async fn count(&self, table: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = self.conn().await;
        let r: N = diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
            .one(&mut conn)
            .await
            .unwrap();
        r.n
    }

    /// Liveblocks room ids in the clean-up queue, sorted.
    pub async fn queued_rooms(&self) -> Vec<String> {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Job {
            #[diesel(sql_type = diesel::sql_types::Text)]
            room_id: String,
        }
        let mut conn = self.conn().await;
        let jobs: Vec<Job> =
            diesel::sql_query("SELECT room_id FROM liveblocks_cleanup_jobs ORDER BY room_id")
                .load(&mut conn)
                .await
                .unwrap();
        jobs.into_iter().map(|j| j.room_id).collect()
    }

    /// One number from `sql` (a `SELECT` of one value castable to bigint).
    pub async fn scalar(&self, sql: &str) -> i64 {
        service_harness::scalar(self.db.url(), sql).await
    }

    /// Every table of the schema (read from the catalog, so a table added later is covered)
    /// is empty except the bookkeeping that outlives a workspace on purpose.
    pub async fn assert_only_bookkeeping_left(&self) {
        let left = service_harness::tables_with_rows(
            self.db.url(),
            service_harness::WORKSPACE_BOOKKEEPING,
        )
        .await;
        assert!(left.is_empty(), "rows left: {left:?}");
    }

    /// Holds back every purge until the returned guard is dropped: a transaction holds a
    /// `SHARE` lock on `messages`, which reads pass and deletes wait for.
    pub async fn block_purges(&self) -> Held {
        self.hold("LOCK TABLE messages IN SHARE MODE").await
    }

    /// Runs `sql` in a transaction held open (with its locks) until the guard is dropped.
    pub async fn hold(&self, sql: &str) -> Held {
        use diesel_async::SimpleAsyncConnection;
        let mut conn = self.conn().await;
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (locked_tx, locked) = tokio::sync::oneshot::channel::<()>();
        let sql = format!("BEGIN; {sql}");
        tokio::spawn(async move {
            conn.batch_execute(&sql).await.unwrap();
            let _ = locked_tx.send(());
            let _ = released.await;
            conn.batch_execute("COMMIT").await.unwrap();
        });
        locked.await.unwrap();
        Held(Some(release))
    }

    /// Waits until `n` sessions of the test database wait for a lock (10 s at most).
    pub async fn lock_waiters(&self, n: i64) {
        eventually(
            &format!("{n} sessions waiting for a lock"),
            std::time::Duration::from_secs(10),
            || async {
                self.scalar(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .await
                    == n
            },
        )
        .await;
    }

    /// Waits until every purge job finished (20 s at most).
    pub async fn purges_done(&self) {
        eventually(
            "purges done",
            std::time::Duration::from_secs(20),
            || async { self.count("purge_jobs").await == 0 },
        )
        .await;
    }

    /// Runs SQL directly (fixtures that would take too long through the API).
    pub async fn sql(&self, sql: &str) {
        use diesel_async::SimpleAsyncConnection;
        let mut conn = self.conn().await;
        conn.batch_execute(sql).await.unwrap();
    }
}

pub fn upsert_ws(event: &str, at: i64, org: &str, name: &str) -> pb::UpsertWorkspaceCommand {
    pb::UpsertWorkspaceCommand {
        event_id: event.into(),
        occurred_at: ts(T0 + at),
        clerk_org_id: org.into(),
        name: name.into(),
        slug: "acme".into(),
        owner_clerk_id: "user_owner".into(),
        event_time: None,
        ..Default::default()
    }
}

pub fn delete_ws(event: &str, at: i64, org: &str) -> pb::DeleteWorkspaceCommand {
    pb::DeleteWorkspaceCommand {
        event_id: event.into(),
        occurred_at: ts(T0 + at),
        clerk_org_id: org.into(),
        ..Default::default()
    }
}

pub fn membership(
    event: &str,
    at: i64,
    org: &str,
    user: &str,
    role: &str,
) -> pb::UpsertMembershipCommand {
    pb::UpsertMembershipCommand {
        event_id: event.into(),
        occurred_at: ts(T0 + at),
        clerk_org_id: org.into(),
        clerk_user_id: user.into(),
        role: role.into(),
        ..Default::default()
    }
}

/// See [`Env::hold`].
pub struct Held(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            let _ = release.send(());
        }
    }
}

pub use service_harness::Unread;

/// Sends `req` to `method` of the workspace service at `addr` and returns once the answer's
/// headers arrived, never reading its body.
pub async fn unread_call<T: prost::Message>(
    addr: std::net::SocketAddr,
    method: &str,
    req: Request<T>,
) -> Unread {
    let path = format!("/vbase.workspace.v1.WorkspaceService/{method}");
    service_harness::unread_call(addr, &path, req).await
}

/// Removes `user` from `org` with the triggers off for this session, so no replica hears it,
/// once `c`'s replica answers `list()` (a `ListChannels` as that user) from its access cache:
/// the cache goes on letting the user read. On a loaded machine the cache may miss its bound
/// for a moment and read through (then it holds the removal): try again.
pub async fn remove_unheard(
    env: &Env,
    c: &mut WorkspaceServiceClient<Channel>,
    user: &str,
    list: impl Fn() -> Request<pb::ListChannelsRequest>,
) {
    for _ in 0..5 {
        service_harness::execute(
            env.db.url(),
            &format!("UPDATE memberships SET deleted = false WHERE clerk_user_id = '{user}'"),
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        for _ in 0..5 {
            c.list_channels(list()).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        service_harness::execute(
            env.db.url(),
            &format!(
                "SET session_replication_role = replica;
                 UPDATE memberships SET deleted = true, deleted_at = now() + interval '2 seconds',
                        source_updated_at = now() + interval '2 seconds'
                  WHERE clerk_user_id = '{user}'"
            ),
        )
        .await;
        if c.list_channels(list()).await.is_ok() {
            return;
        }
    }
    panic!("the access cache never answered");
}
