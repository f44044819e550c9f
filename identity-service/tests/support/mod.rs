//! Starts the real identity-service on 127.0.0.1:0 against its own Postgres database, with a
//! stand-in Clerk issuer and an internal caller's key pair.

#![allow(dead_code)]

use ephemeral_postgres::{TestDatabase, TestDatabases};
use identity_service::Config;
use service_runtime::{DatabaseArgs, LogFormat};
use stand_ins::{ClerkStandIn, OrgClaim, ServiceKeys};
use std::net::SocketAddr;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Request;
use tonic::transport::Channel;
use vbase_proto::identity::v1::identity_service_client::IdentityServiceClient;

pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.take().unwrap().await?
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub struct Env {
    pub clerk: ClerkStandIn,
    pub keys: ServiceKeys,
    pub db: TestDatabase,
    pub server: Server,
}

pub async fn database() -> TestDatabase {
    let template = format!(
        "identity_{}",
        service_runtime::db::migrations_fingerprint(&identity_service::MIGRATIONS)
    );
    TestDatabases::shared()
        .await
        .create(&template, |url| async move {
            identity_service::migrate(&url).await.map(|_| ())
        })
        .await
        .expect("test database")
}

pub fn config(db_url: &str, clerk: &ClerkStandIn, keys: &ServiceKeys) -> Config {
    Config {
        db: DatabaseArgs {
            database_url: db_url.to_owned(),
            db_pool_size: 8,
        },
        auth: token_auth::AuthArgs {
            clerk_jwt_issuer_domain: clerk.issuer(),
            clerk_jwks_url: None,
            clerk_jwt_audience: "convex".into(),
            clerk_authorized_parties: vec![],
            service_jwt_issuer: "vbase-internal".into(),
            service_jwks_file: Some(keys.jwks_file()),
            service_jwks_url: None,
            jwks_refresh_secs: 300,
        },
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        log_format: LogFormat::Pretty,
        migrate_on_start: false,
        processed_event_retention_hours: 72,
    }
}

pub async fn start_server(config: Config) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(identity_service::run(config, listener, async move {
        let _ = rx.await;
    }));
    Server {
        addr,
        stop: Some(tx),
        task: Some(task),
    }
}

pub async fn start() -> Env {
    let clerk = ClerkStandIn::start("convex").await.unwrap();
    let keys = ServiceKeys::generate("vbase-internal", "webhook-gateway").unwrap();
    let db = database().await;
    let server = start_server(config(db.url(), &clerk, &keys)).await;
    let env = Env {
        clerk,
        keys,
        db,
        server,
    };
    env.wait_keys_loaded().await;
    env
}

impl Env {
    pub async fn client(&self) -> IdentityServiceClient<Channel> {
        connect(self.server.addr).await
    }

    pub fn service<T>(&self, msg: T) -> Request<T> {
        bearer(msg, &self.keys.token_for("identity-service"))
    }

    pub fn user<T>(&self, user_id: &str, msg: T) -> Request<T> {
        let token = self.clerk.user_token(
            user_id,
            "Token Name",
            &format!("{user_id}@example.com"),
            None,
        );
        bearer(msg, &token)
    }

    pub fn user_in_org<T>(&self, user_id: &str, org: &OrgClaim, msg: T) -> Request<T> {
        bearer(
            msg,
            &self
                .clerk
                .user_token(user_id, "Token Name", "t@example.com", Some(org)),
        )
    }

    /// Waits until both key sets are loaded (a user and a service call stop failing with
    /// UNAUTHENTICATED).
    async fn wait_keys_loaded(&self) {
        let mut c = self.client().await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let u = c
                .get_current_user(self.user(
                    "user_probe",
                    vbase_proto::identity::v1::GetCurrentUserRequest {},
                ))
                .await;
            let s = c
                .get_user(self.service(vbase_proto::identity::v1::GetUserRequest {
                    clerk_id: "user_probe".into(),
                }))
                .await;
            let unauth = |e: Option<&tonic::Status>| {
                e.is_some_and(|e| e.code() == tonic::Code::Unauthenticated)
            };
            if !unauth(u.as_ref().err()) && !unauth(s.as_ref().err()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "keys never loaded: {u:?} {s:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
}

pub fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

pub async fn connect(addr: SocketAddr) -> IdentityServiceClient<Channel> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match IdentityServiceClient::connect(format!("http://{addr}")).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "server not reachable: {e}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

pub fn ts(secs: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    })
}
