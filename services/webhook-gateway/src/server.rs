//! The HTTP server: the accept loop with its connection limit, read deadlines and graceful
//! drain, and the routes (`POST /clerk` to [`crate::webhook`], health, readiness, the
//! services' state, metrics).

use crate::config::Config;
use crate::verify::Verifier;
use crate::webhook::{App, clerk_webhook, text};
use crate::{body_budget, log_budget, metrics};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Runs the gateway on `listener` until `shutdown`; then stops accepting, finishes in-flight
/// requests (`SHUTDOWN_DRAIN_SECS` at most) and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.check().map_err(anyhow::Error::msg)?;
    let verifier =
        Verifier::new(config.clerk_webhook_secret.expose()).map_err(anyhow::Error::msg)?;
    let mut registry = Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let timeout = Duration::from_secs(config.downstream.downstream_timeout_secs);
    let read_timeout = Duration::from_secs(config.request_read_timeout_secs);
    let downstream = config
        .downstream
        .connect(metrics.clone(), config.identity_batch_slots)?;
    let bodies = body_budget::BodyBudget::new(
        config.max_body_bytes_in_flight,
        metrics.body_bytes_in_flight.clone(),
    );
    let app = Arc::new(App {
        verifier,
        downstream,
        bodies,
        metrics,
        registry: Mutex::new(registry),
        deadline: timeout + Duration::from_secs(1),
        quarantine_failed_after: Duration::from_secs(config.quarantine_failed_after_secs),
        read_timeout,
        refusal_logs: log_budget::LogBudget::new(
            log_budget::REFUSALS_LOGGED_PER_MINUTE,
            Duration::from_secs(60),
        ),
        busy_logs: log_budget::LogBudget::new(
            log_budget::REFUSALS_LOGGED_PER_MINUTE,
            Duration::from_secs(60),
        ),
    });
    let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    tracing::info!(addr = %listener.local_addr()?, "webhook-gateway listening");

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // At most MAX_CONNECTIONS at once: the next accept waits for a free slot.
        let slot = tokio::select! {
            slot = Arc::clone(&connections).acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, for one: pause instead of spinning a core.
                    tracing::warn!(error = %e, "accept failed; pausing 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Replies go out as soon as they are written (no Nagle wait for the sender's ACK).
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let service = hyper::service::service_fn(move |req| {
            let app = Arc::clone(&app);
            async move { Ok::<_, Infallible>(route(&app, req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutdown requested; finishing in-flight webhooks");
    let drain = Duration::from_secs(config.shutdown_drain_secs);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?drain, "some connections did not finish in time");
    }
    Ok(())
}

async fn route(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/clerk") => clerk_webhook(app, req).await,
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        // Ready while it serves: with a service down the gateway itself answers 503 (Svix
        // retries) and counts it, so VBaseWebhook5xx can fire. Were it unready instead, the
        // ingress would answer 503 for every pod and no metric would see it.
        (&Method::GET, "/readyz") => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/status") => downstream_status(app).await,
        (&Method::GET, "/metrics") => match service_runtime::metrics::encode(&app.registry) {
            Some(out) => {
                let mut r = text(StatusCode::OK, out);
                r.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static(service_runtime::metrics::CONTENT_TYPE),
                );
                r
            }
            None => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics encoding failed\n",
            ),
        },
        (_, "/clerk") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Whether both services report SERVING: 200, or 503 naming the one that does not. For
/// operators (the runbook); readiness does not depend on it.
async fn downstream_status(app: &App) -> Response<Full<Bytes>> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let (identity, workspace) = app.downstream.channels();
    let check = |ch: tonic::transport::Channel, service: &'static str| async move {
        let mut c = HealthClient::new(ch);
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            c.check(HealthCheckRequest {
                service: service.into(),
            }),
        )
        .await;
        matches!(r, Ok(Ok(ref resp)) if resp.get_ref().status == ServingStatus::Serving as i32)
    };
    let (a, b) = tokio::join!(
        check(identity, "vbase.identity.v1.IdentityService"),
        check(workspace, "vbase.workspace.v1.WorkspaceService")
    );
    let status = if a && b {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(
        status,
        format!(
            "identity-service: {}, workspace-service: {}\n",
            ok(a),
            ok(b)
        ),
    )
}

fn ok(b: bool) -> &'static str {
    if b { "serving" } else { "not serving" }
}
