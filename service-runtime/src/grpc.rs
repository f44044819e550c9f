//! The tonic server every service runs: auth layer, health, reflection (v1 + v1alpha), drain.

use crate::db::Pool;
use diesel_async::RunQueryDsl;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Serves `service` behind `auth` with health and reflection on `listener` until `shutdown`
/// resolves, then reports NOT_SERVING and drains in-flight calls.
pub async fn serve_grpc<S>(
    listener: TcpListener,
    auth: token_auth::AuthLayer,
    service: S,
    health: (
        HealthReporter,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ),
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let (reporter, health_service) = health;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vbase_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(S::NAME)
        .with_service_name("grpc.health.v1.Health")
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(vbase_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(S::NAME)
        .with_service_name("grpc.health.v1.Health")
        .build_v1alpha()?;
    let name = S::NAME;
    let shutdown = async move {
        shutdown.await;
        // Stop advertising readiness first, then let tonic drain.
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
    };
    // Replies go out as soon as they are written (no Nagle wait for the caller's ACK).
    let incoming = tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |conn| {
        if let Ok(stream) = &conn {
            let _ = stream.set_nodelay(true);
        }
        conn
    });
    tonic::transport::Server::builder()
        .layer(auth)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Reports `service` (and the server as a whole, `""`) SERVING while `SELECT 1` succeeds on
/// `pool`, NOT_SERVING otherwise; checks every `interval` until `stop` resolves.
pub async fn watch_database(
    pool: Pool,
    reporter: HealthReporter,
    service: &'static str,
    interval: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut last: Option<bool> = None;
    loop {
        let ok = tokio::time::timeout(Duration::from_secs(3), async {
            let mut conn = pool.get().await.ok()?;
            diesel::sql_query("SELECT 1").execute(&mut conn).await.ok()
        })
        .await
        .ok()
        .flatten()
        .is_some();
        if last != Some(ok) {
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(service, status).await;
            reporter.set_service_status("", status).await;
            if ok {
                tracing::info!(service, "database reachable: SERVING");
            } else {
                tracing::warn!(service, "database unreachable: NOT_SERVING");
            }
            last = Some(ok);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut stop => return,
        }
    }
}

/// How long a shutdown waits for in-flight calls (under Kubernetes' default 30 s grace period).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Signals background tasks to stop once the server has drained.
#[derive(Debug, Clone)]
pub struct Background {
    tx: tokio::sync::watch::Sender<bool>,
}

impl Default for Background {
    fn default() -> Self {
        Self {
            tx: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Background {
    /// A future that resolves when [`Background::stop`] is called.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Stops every task waiting on [`Background::stopped`].
    pub fn stop(&self) {
        let _ = self.tx.send(true);
    }
}

/// Everything a service runs around its handlers: `/metrics` on `metrics_addr`, health that
/// follows the database, the gRPC server behind `auth` on `listener`. Returns after `shutdown`
/// and the drain; then stops `background`.
#[allow(clippy::too_many_arguments)]
pub async fn serve_service<S>(
    listener: TcpListener,
    metrics_addr: std::net::SocketAddr,
    registry: prometheus_client::registry::Registry,
    pool: Pool,
    auth: token_auth::AuthLayer,
    service: S,
    background: Background,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let registry = std::sync::Arc::new(std::sync::Mutex::new(registry));
    let metrics_listener = TcpListener::bind(metrics_addr).await?;
    tokio::spawn(crate::metrics::serve_metrics(
        metrics_listener,
        registry,
        background.stopped(),
    ));
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(S::NAME, ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    tokio::spawn(watch_database(
        pool,
        reporter.clone(),
        S::NAME,
        Duration::from_secs(2),
        background.stopped(),
    ));
    tracing::info!(service = S::NAME, addr = %listener.local_addr()?, "listening");
    // A client that never acknowledges the GOAWAY must not hold the drain open forever.
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = drain_tx.send(());
    };
    let server = serve_grpc(
        listener,
        auth,
        service,
        (reporter, health_service),
        shutdown,
    );
    let drain_deadline = async move {
        if drain_rx.await.is_ok() {
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        r = server => r,
        _ = drain_deadline => {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "in-flight calls did not finish in time; exiting anyway");
            Ok(())
        }
    };
    background.stop();
    result
}
