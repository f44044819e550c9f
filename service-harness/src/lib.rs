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

/// Trust material for a service under test: a Clerk stand-in and the gateway's service keys.
#[derive(Debug)]
pub struct Issuers {
    /// Stand-in Clerk issuer (audience `convex`).
    pub clerk: ClerkStandIn,
    /// The internal caller (`webhook-gateway`) keys.
    pub keys: ServiceKeys,
}

impl Issuers {
    /// Fresh keys and a running JWKS stand-in.
    pub async fn new() -> Self {
        Self {
            clerk: ClerkStandIn::start("convex").await.expect("clerk stand-in"),
            keys: ServiceKeys::generate("vbase-internal", "webhook-gateway").expect("service keys"),
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
        }
    }

    /// The settings every service takes, for a test server on `database_url` with a pool of
    /// `pool_size` and these issuers.
    pub fn service_args(
        &self,
        database_url: &str,
        pool_size: usize,
    ) -> service_runtime::ServiceArgs {
        service_runtime::ServiceArgs {
            db: service_runtime::DatabaseArgs {
                database_url: database_url.to_owned(),
                db_pool_size: pool_size,
                db_statement_timeout_ms: 10_000,
                db_idle_in_transaction_timeout_ms: 5_000,
            },
            auth: self.auth_args(),
            log_format: service_runtime::LogFormat::Pretty,
            migrate_on_start: false,
            processed_event_retention_hours: 72,
        }
    }

    /// A request with a service token for `audience`.
    pub fn service<T>(&self, audience: &str, msg: T) -> Request<T> {
        bearer(msg, &self.keys.token_for(audience))
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
