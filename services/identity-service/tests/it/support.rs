//! Starts the real identity-service on 127.0.0.1:0 against its own Postgres database, with a
//! stand-in Clerk issuer and an internal caller's key pair.

#![allow(dead_code)]

use ephemeral_postgres::TestDatabase;
use identity_service::Config;
use service_harness::{Issuers, RunningServer};
use tonic::Request;
use tonic::transport::Channel;
use vbase_proto::identity::v1 as pb;
use vbase_proto::identity::v1::identity_service_client::IdentityServiceClient;

#[allow(unused_imports)]
pub use service_harness::{bearer, ts};

pub struct Env {
    pub issuers: Issuers,
    pub db: TestDatabase,
    pub server: RunningServer,
    /// Where `/metrics` is served.
    pub metrics_addr: std::net::SocketAddr,
}

pub async fn database() -> TestDatabase {
    let fp = service_runtime::db::migrations_fingerprint(&identity_service::MIGRATIONS);
    service_harness::database("identity", &fp, |url| async move {
        identity_service::migrate(&url, &service_runtime::DbTls::system_roots())
            .await
            .map(|_| ())
    })
    .await
}

pub fn config(db_url: &str, issuers: &Issuers) -> Config {
    Config {
        service: issuers.service_args(db_url, 8),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        group_commit_slots: 2,
        lookup_slots: 2,
        user_cache_bytes: 8 << 20,
        ledger: Default::default(),
        quotas: Default::default(),
    }
}

pub async fn start_server(config: Config) -> RunningServer {
    RunningServer::start(|listener, shutdown| identity_service::run(config, listener, shutdown))
        .await
}

pub async fn start() -> Env {
    start_with(|_| {}).await
}

/// Like [`start`], with the configuration changed by `tweak` first.
pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Env {
    start_on(database().await, tweak).await
}

/// Like [`start_with`], on database `db`.
pub async fn start_on(db: TestDatabase, tweak: impl FnOnce(&mut Config)) -> Env {
    let issuers = Issuers::new().await;
    let mut config = config(db.url(), &issuers);
    let port = ephemeral_postgres::unused_local_port().unwrap();
    config.metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    tweak(&mut config);
    let metrics_addr = config.metrics_addr;
    let server = start_server(config).await;
    let env = Env {
        issuers,
        db,
        server,
        metrics_addr,
    };
    env.wait_keys_loaded().await;
    env
}

impl Env {
    /// The value of the `/metrics` line that starts with `series`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        service_harness::metric(self.metrics_addr, series).await
    }

    pub async fn client(&self) -> IdentityServiceClient<Channel> {
        IdentityServiceClient::new(self.server.channel().await)
    }

    pub fn service<T>(&self, msg: T) -> Request<T> {
        self.issuers.service("identity-service", msg)
    }

    pub fn user<T>(&self, user_id: &str, msg: T) -> Request<T> {
        self.issuers.user(user_id, msg)
    }

    pub fn service_token_for(&self, audience: &str) -> String {
        self.issuers.keys.token_for(audience)
    }

    /// Waits until both key sets are loaded (a user and a service call stop failing with
    /// UNAUTHENTICATED).
    async fn wait_keys_loaded(&self) {
        let c = self.client().await;
        service_harness::eventually("keys loaded", std::time::Duration::from_secs(10), || {
            let mut c = c.clone();
            async move {
                let u = c
                    .get_current_user(self.user("user_probe", pb::GetCurrentUserRequest {}))
                    .await;
                let s = c
                    .get_user(self.service(pb::GetUserRequest {
                        clerk_id: "user_probe".into(),
                    }))
                    .await;
                let unauth = |e: Option<&tonic::Status>| {
                    e.is_some_and(|e| e.code() == tonic::Code::Unauthenticated)
                };
                !unauth(u.as_ref().err()) && !unauth(s.as_ref().err())
            }
        })
        .await;
    }
}
