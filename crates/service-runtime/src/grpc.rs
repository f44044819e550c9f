//! The tonic server every service runs: its gRPC services behind the auth layer, health,
//! reflection (v1 + v1alpha) for all of them, and the two-step shutdown.

use crate::connection::Admitted;
use crate::db::Pool;
use crate::lifecycle::{Lifecycle, Workers};
use crate::limits::GrpcLimits;
use crate::user_limits::UserWriteLimit;
use diesel_async::RunQueryDsl;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use token_auth::{AuthLayer, Authenticator, MethodPolicy};
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The gRPC services one server serves, each with the access policy of its methods.
#[derive(Debug, Default)]
pub struct GrpcServices {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    policy: MethodPolicy,
}

impl GrpcServices {
    /// No services yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `service`, whose methods `policy` declares (it must name the same service).
    ///
    /// # Panics
    /// If `policy` declares another service than `S::NAME`: a programming error that would
    /// deny every call to the service.
    #[must_use]
    pub fn add<S>(mut self, service: S, policy: MethodPolicy) -> Self
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
        assert_eq!(
            policy.services(),
            vec![S::NAME],
            "the policy added with a service must declare that service's methods"
        );
        self.routes.add_service(service);
        self.names.push(S::NAME);
        self.policy = self.policy.merge(policy);
        self
    }

    /// The fully qualified names of the services.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }
}

async fn report(reporter: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    for name in names.iter().chain(std::iter::once(&"")) {
        reporter.set_service_status(*name, status).await;
    }
}

/// Serves `services` behind `auth` with health (of `reporter`'s statuses) and reflection on `listener` until `shutdown`
/// resolves, then reports NOT_SERVING and drains in-flight calls. Native gRPC and gRPC-Web
/// (HTTP/1.1 or HTTP/2) share the port; pages of `origins` get CORS grants.
pub async fn serve_grpc(
    listener: TcpListener,
    limits: &GrpcLimits,
    origins: Vec<http::HeaderValue>,
    auth: Arc<Authenticator>,
    services: GrpcServices,
    reporter: HealthReporter,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let GrpcServices {
        mut routes,
        names,
        policy,
    } = services;
    crate::open_services::add(&mut routes, &reporter, &names, &limits.reflection())?;
    let shutdown = async move {
        shutdown.await;
        // Stop advertising readiness first, then let tonic drain.
        report(&reporter, &names, ServingStatus::NotServing).await;
    };
    // At most `max_connections` at once: the next accept waits for a connection to close.
    let deadlines = limits.deadlines();
    let incoming = futures::stream::unfold(
        (listener, limits.admission()),
        move |(listener, admission)| async move {
            let permit = Arc::clone(&admission).acquire_owned().await.ok()?;
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        // Replies go out as soon as they are written (no Nagle wait).
                        let _ = stream.set_nodelay(true);
                        let conn =
                            Ok::<_, std::io::Error>(Admitted::new(stream, permit, deadlines));
                        return Some((conn, (listener, admission)));
                    }
                    Err(e) => {
                        // Out of file descriptors, for one: pause instead of spinning a core.
                        tracing::warn!(error = %e, "accept failed; pausing 100 ms");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        },
    );
    // Every call counts on its connection's activity (the idle limit); CORS answers preflights
    // and grants origins; gRPC-Web becomes gRPC; then authentication (it puts the principal in
    // the request), then the user's write rate.
    let writes = UserWriteLimit::new(limits.user_writes_per_minute, policy.clone());
    limits
        .server()
        .accept_http1(true)
        .layer(crate::count_calls::CountCalls)
        .layer(crate::browser::cors(origins))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(AuthLayer::new(auth, policy))
        .layer(writes)
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Whether the start-up work that must precede SERVING is done: with `DB_POOL_MODE=transaction`,
/// storing the role's session settings, which waits for the database. Done unless made
/// [`StartGate::pending`]. Cheap to clone; every clone sees the same state.
#[derive(Debug, Clone)]
pub struct StartGate(Arc<std::sync::atomic::AtomicBool>);

impl Default for StartGate {
    fn default() -> Self {
        Self(Arc::new(std::sync::atomic::AtomicBool::new(true)))
    }
}

impl StartGate {
    /// Not done yet: the health watch reports NOT_SERVING until [`StartGate::done`].
    pub fn pending() -> Self {
        Self(Arc::new(std::sync::atomic::AtomicBool::new(false)))
    }

    /// The work is done.
    pub fn done(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the work is done.
    pub fn is_done(&self) -> bool {
        // Not `self.0.load`: diesel's `RunQueryDsl::load` is in scope.
        std::sync::atomic::AtomicBool::load(&self.0, std::sync::atomic::Ordering::Acquire)
    }
}

/// Reports `services` (and the server as a whole, `""`) SERVING while `start` is done and
/// `SELECT 1` succeeds on `pool`, NOT_SERVING otherwise; checks every `interval` until `stop`
/// resolves.
pub async fn watch_database(
    pool: Pool,
    start: StartGate,
    reporter: HealthReporter,
    services: Vec<&'static str>,
    interval: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut last: Option<bool> = None;
    loop {
        let ok = start.is_done()
            && tokio::time::timeout(Duration::from_secs(3), async {
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
            report(&reporter, &services, status).await;
            if ok {
                tracing::info!(?services, "database reachable: SERVING");
            } else {
                tracing::warn!(?services, "database unreachable: NOT_SERVING");
            }
            last = Some(ok);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut stop => return,
        }
    }
}

/// What a service runs around its handlers.
pub struct Serve {
    /// The gRPC port.
    pub listener: TcpListener,
    /// Where `/metrics` listens.
    pub metrics_addr: std::net::SocketAddr,
    /// The metrics to expose.
    pub registry: prometheus_client::registry::Registry,
    /// The dependencies' detail on `/status`.
    pub detail: crate::metrics::HealthDetail,
    /// The pool whose database health follows.
    pub pool: Pool,
    /// Start-up work health waits for besides the database (done by default).
    pub start_gate: StartGate,
    /// Verifies tokens for the services' policies.
    pub auth: Arc<Authenticator>,
    /// The gRPC services.
    pub services: GrpcServices,
    /// Phases of the service.
    pub lifecycle: Lifecycle,
    /// The service's background workers, awaited after the stop.
    pub workers: Workers,
    /// What the gRPC server admits.
    pub limits: GrpcLimits,
    /// Origins whose pages may call with gRPC-Web.
    pub origins: Vec<http::HeaderValue>,
    /// How long the drain and the workers' stop may take.
    pub shutdown: crate::lifecycle::ShutdownArgs,
}

impl Serve {
    /// Serves `/metrics`, health that follows the database, and the gRPC services until
    /// `shutdown` resolves. Then: shutting down (NOT_SERVING, drain of at most
    /// `SHUTDOWN_DRAIN_SECS`), stopped (every background worker ends and is awaited, at most
    /// `SHUTDOWN_WORKER_STOP_SECS`).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Serve {
            listener,
            metrics_addr,
            registry,
            detail,
            pool,
            start_gate,
            auth,
            services,
            lifecycle,
            mut workers,
            limits,
            origins,
            shutdown: budget,
        } = self;
        let registry = Arc::new(std::sync::Mutex::new(registry));
        let metrics_listener = TcpListener::bind(metrics_addr).await?;
        workers.spawn(
            "metrics",
            crate::metrics::serve_metrics(metrics_listener, registry, detail, lifecycle.stopped()),
        );
        let names = services.names().to_vec();
        let reporter = HealthReporter::new();
        report(&reporter, &names, ServingStatus::NotServing).await;
        workers.spawn(
            "health",
            watch_database(
                pool,
                start_gate,
                reporter.clone(),
                names.clone(),
                Duration::from_secs(2),
                lifecycle.shutting_down(),
            ),
        );
        tracing::info!(services = ?names, addr = %listener.local_addr()?, "listening");
        let on_shutdown = lifecycle.clone();
        let shutdown = async move {
            shutdown.await;
            on_shutdown.begin_shutdown();
        };
        let server = serve_grpc(
            listener, &limits, origins, auth, services, reporter, shutdown,
        );
        // A client that never acknowledges the GOAWAY must not hold the drain open forever.
        let draining = lifecycle.shutting_down();
        let drain_deadline = async move {
            draining.await;
            tokio::time::sleep(budget.drain()).await;
        };
        let result = tokio::select! {
            r = server => r,
            _ = drain_deadline => {
                tracing::warn!(timeout = ?budget.drain(), "in-flight calls did not finish in time; exiting anyway");
                Ok(())
            }
        };
        lifecycle.stop();
        let unfinished = workers.join(budget.worker_stop()).await;
        if unfinished.is_empty() {
            tracing::info!("stopped");
        }
        result
    }
}
