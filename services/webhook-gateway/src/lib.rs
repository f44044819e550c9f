//! webhook-gateway: Clerk webhooks in, verified and typed; gRPC commands out.
//!
//! `POST /clerk` reads at most 1 MiB, verifies the Svix signature on the raw bytes, parses the
//! Clerk event into typed structs and forwards one typed command per event, answering 2xx only
//! after the service committed it. Duplicates answer 2xx with no second effect (the services
//! de-duplicate on `svix-id`); unhandled event types answer 2xx and are counted; a signed
//! delivery that cannot be applied (unparseable, or refused by a service) is kept in the owning
//! service's quarantine and answered 2xx (see [`quarantine`]); a slow or unavailable service
//! answers 503 within the deadline so Svix retries later.

pub mod clerk;
pub mod clerk_api;
pub mod forward;
pub mod log_budget;
pub mod metrics;
pub mod quarantine;
pub mod reconcile;
pub mod verify;

use bytes::Bytes;
use clerk::Malformed;
use forward::{Downstream, ForwardError, TokenSource};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use service_runtime::LogFormat;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use verify::Verifier;

/// Largest accepted webhook body.
pub const MAX_BODY: usize = 1024 * 1024;

/// How the gateway reaches the services: their URLs, its service tokens, the deadline of one
/// command. Shared by `serve` and `reconcile`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownstreamArgs {
    /// identity-service gRPC URL.
    #[arg(
        long,
        env = "IDENTITY_SERVICE_URL",
        default_value = "http://identity-service:50051"
    )]
    pub identity_service_url: String,
    /// workspace-service gRPC URL.
    #[arg(
        long,
        env = "WORKSPACE_SERVICE_URL",
        default_value = "http://workspace-service:50052"
    )]
    pub workspace_service_url: String,
    /// Issuer of the service tokens the gateway mints.
    #[arg(long, env = "SERVICE_JWT_ISSUER", default_value = "vbase-internal")]
    pub service_jwt_issuer: String,
    /// PKCS#8 PEM private key (Ed25519 recommended) that signs service tokens.
    #[arg(long, env = "SERVICE_JWT_SIGNING_KEY_FILE")]
    pub service_jwt_signing_key_file: Option<PathBuf>,
    /// Key id (`kid`) the service tokens name: the one the services' JWKS gives the key.
    /// Default: the key's RFC 7638 thumbprint (what `webhook-gateway keygen` writes).
    #[arg(long, env = "SERVICE_JWT_KEY_ID")]
    pub service_jwt_key_id: Option<String>,
    /// A ready-made service token mounted by the platform (instead of a signing key).
    #[arg(
        long,
        env = "SERVICE_TOKEN_FILE",
        conflicts_with = "service_jwt_signing_key_file"
    )]
    pub service_token_file: Option<PathBuf>,
    /// Deadline of one downstream command, seconds (keep under Svix's 15 s).
    #[arg(long, env = "DOWNSTREAM_TIMEOUT_SECS", default_value_t = 8)]
    pub downstream_timeout_secs: u64,
}

/// Configuration of the gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// HTTP listen address (`POST /clerk`, `/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// One or more `whsec_...` signing secrets, separated by spaces or commas (rotation).
    #[arg(long, env = "CLERK_WEBHOOK_SECRET", hide_env_values = true)]
    pub clerk_webhook_secret: service_runtime::Secret,
    #[command(flatten)]
    pub downstream: DownstreamArgs,
    /// `UpsertUsers` calls in flight at once: `user.created`/`user.updated` deliveries that
    /// arrive while all are busy go to identity-service together in the next call. One call
    /// at a time makes the largest batches (fewest commits); more slots let a slow call hold
    /// back fewer deliveries.
    #[arg(long, env = "IDENTITY_BATCH_SLOTS", default_value_t = 1)]
    pub identity_batch_slots: usize,
    /// Seconds a client has to send a request's headers, and again its whole body (1 to 60):
    /// a client sending a byte a minute is cut off.
    #[arg(long, env = "REQUEST_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub request_read_timeout_secs: u64,
    /// Connections served at once (1 to 100000); more wait in the listen queue.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds in-flight webhooks get to finish once the gateway is stopping (1 to 300); with
    /// the pod's preStop it must fit in its termination grace period (deploy/check.py checks
    /// it). A webhook cut off gets no 2xx, so Svix delivers it again.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECS", default_value_t = 20)]
    pub shutdown_drain_secs: u64,
    /// `json` or `pretty`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// Lifetime of the service tokens the gateway mints; each is reused for at most half of it.
pub const SERVICE_TOKEN_TTL: Duration = Duration::from_secs(60);

impl DownstreamArgs {
    /// What is out of range, if anything.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=12).contains(&self.downstream_timeout_secs) {
            return Err(format!(
                "DOWNSTREAM_TIMEOUT_SECS ({}) must be from 1 to 12 (Svix gives up after 15 s)",
                self.downstream_timeout_secs
            ));
        }
        Ok(())
    }

    /// Clients of both services (connected lazily), with `batch_slots` for user upserts.
    pub fn connect(
        &self,
        metrics: metrics::Metrics,
        batch_slots: usize,
    ) -> anyhow::Result<Downstream> {
        Downstream::new(
            &self.identity_service_url,
            &self.workspace_service_url,
            self.token_source()?,
            Duration::from_secs(self.downstream_timeout_secs),
            metrics,
            batch_slots,
        )
    }

    fn token_source(&self) -> anyhow::Result<TokenSource> {
        match (&self.service_jwt_signing_key_file, &self.service_token_file) {
            (Some(path), _) => {
                let pem = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("SERVICE_JWT_SIGNING_KEY_FILE {}: {e}", path.display())
                })?;
                let mut key = token_auth::signing::SigningKey::from_pem(&pem).map_err(|e| {
                    anyhow::anyhow!("SERVICE_JWT_SIGNING_KEY_FILE {}: {e}", path.display())
                })?;
                if let Some(kid) = &self.service_jwt_key_id {
                    let kid = kid.trim();
                    anyhow::ensure!(
                        !kid.is_empty()
                            && kid.len() <= 200
                            && kid.chars().all(|c| c.is_ascii_graphic()),
                        "SERVICE_JWT_KEY_ID must be 1 to 200 printable ASCII characters"
                    );
                    key = key.with_kid(kid);
                }
                tracing::info!(kid = key.kid(), "signing service tokens");
                Ok(TokenSource::Minted(
                    token_auth::signing::ServiceTokenMinter::new(
                        key,
                        &self.service_jwt_issuer,
                        token_auth::GATEWAY_SUBJECT,
                        SERVICE_TOKEN_TTL,
                    ),
                ))
            }
            (None, Some(path)) => Ok(TokenSource::File {
                path: path.clone(),
                cached: Mutex::new(None),
            }),
            (None, None) => {
                anyhow::bail!("SERVICE_JWT_SIGNING_KEY_FILE or SERVICE_TOKEN_FILE must be set")
            }
        }
    }
}

impl Config {
    /// What is out of range, if anything.
    pub fn check(&self) -> Result<(), String> {
        self.downstream.check()?;
        if !(1..=60).contains(&self.request_read_timeout_secs) {
            return Err(format!(
                "REQUEST_READ_TIMEOUT_SECS ({}) must be from 1 to 60",
                self.request_read_timeout_secs
            ));
        }
        if !(1..=100_000).contains(&self.max_connections) {
            return Err(format!(
                "MAX_CONNECTIONS ({}) must be from 1 to 100000",
                self.max_connections
            ));
        }
        if !(1..=300).contains(&self.shutdown_drain_secs) {
            return Err(format!(
                "SHUTDOWN_DRAIN_SECS ({}) must be from 1 to 300",
                self.shutdown_drain_secs
            ));
        }
        if self.identity_batch_slots == 0 {
            return Err("IDENTITY_BATCH_SLOTS must be at least 1".into());
        }
        Ok(())
    }
}

struct App {
    verifier: Verifier,
    downstream: Downstream,
    metrics: metrics::Metrics,
    registry: Mutex<Registry>,
    deadline: Duration,
    /// How long the body of one request may take to arrive.
    read_timeout: Duration,
    /// Log lines for refused verifications.
    refusal_logs: log_budget::LogBudget,
}

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
    let app = Arc::new(App {
        verifier,
        downstream,
        metrics,
        registry: Mutex::new(registry),
        deadline: timeout + Duration::from_secs(1),
        read_timeout,
        refusal_logs: log_budget::LogBudget::new(
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

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn route(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/clerk") => clerk_webhook(app, req).await,
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readyz(app).await,
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

async fn readyz(app: &App) -> Response<Full<Bytes>> {
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
    if a && b {
        text(StatusCode::OK, "ready\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "identity-service: {}, workspace-service: {}\n",
                ok(a),
                ok(b)
            ),
        )
    }
}

fn ok(b: bool) -> &'static str {
    if b { "serving" } else { "not serving" }
}

fn header<'a>(req: &'a http::request::Parts, svix: &str, unbranded: &str) -> Option<&'a str> {
    req.headers
        .get(svix)
        .or_else(|| req.headers.get(unbranded))
        .and_then(|v| v.to_str().ok())
}

async fn clerk_webhook(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        app.metrics.request("", "too_large");
        return text(StatusCode::PAYLOAD_TOO_LARGE, "body larger than 1 MiB\n");
    }
    let read = tokio::time::timeout(app.read_timeout, Limited::new(body, MAX_BODY).collect());
    let Ok(read) = read.await else {
        app.metrics.request("", "slow_body");
        return text(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time\n",
        );
    };
    let body = match read {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            app.metrics.request("", "too_large");
            return text(StatusCode::PAYLOAD_TOO_LARGE, "body larger than 1 MiB\n");
        }
        Err(_) => return text(StatusCode::BAD_REQUEST, "could not read the body\n"),
    };
    if body.is_empty() {
        app.metrics.request("", "empty");
        return text(StatusCode::BAD_REQUEST, "empty body\n");
    }
    if let Err(reason) = app.verifier.verify(&body, &parts.headers) {
        app.metrics
            .verification_failures
            .get_or_create(&metrics::ReasonLabels {
                reason: reason.label(),
            })
            .inc();
        // Anyone can send these: a flood costs a few lines a minute (the metric counts all).
        if let log_budget::Admit::Log { left_out } = app.refusal_logs.admit(Instant::now()) {
            tracing::warn!(%reason, left_out, "webhook refused by verification");
        }
        return text(StatusCode::BAD_REQUEST, format!("{reason}\n"));
    }
    // Verified: both headers are present and the timestamp parses.
    let svix_id = header(&parts, "svix-id", "webhook-id")
        .unwrap_or_default()
        .to_owned();
    let (event_type, command) = match clerk::to_command(&svix_id, &body) {
        Ok(c) => c,
        Err(Malformed(reason)) => {
            let event_type = quarantine::event_type_of(&body);
            let reason = format!("malformed Clerk event: {reason}");
            return quarantined(app, &svix_id, &event_type, &reason, &body, started).await;
        }
    };
    let result = match tokio::time::timeout(app.deadline, app.downstream.send(command)).await {
        Ok(r) => r,
        Err(_) => Err(ForwardError::Unavailable("deadline exceeded".into())),
    };
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(outcome) => {
            app.metrics.request(&event_type, outcome);
            tracing::info!(svix_id, event_type, outcome, ms, "webhook applied");
            text(StatusCode::OK, format!("{{\"outcome\":\"{outcome}\"}}"))
        }
        Err(ForwardError::Rejected(reason)) => {
            let reason = format!("refused by a service: {reason}");
            quarantined(app, &svix_id, &event_type, &reason, &body, started).await
        }
        Err(ForwardError::Unavailable(reason)) => {
            unavailable(app, &svix_id, &event_type, &reason, ms)
        }
    }
}

/// Keeps a signed delivery that cannot be applied in its owner's quarantine and answers 2xx;
/// when it cannot be kept, 503 (Svix retries, nothing is lost).
async fn quarantined(
    app: &App,
    svix_id: &str,
    event_type: &str,
    reason: &str,
    body: &[u8],
    started: Instant,
) -> Response<Full<Bytes>> {
    let kept = tokio::time::timeout(
        app.deadline,
        quarantine::keep(&app.downstream, svix_id, event_type, reason, body),
    )
    .await
    .unwrap_or_else(|_| Err(ForwardError::Unavailable("deadline exceeded".into())));
    let ms = started.elapsed().as_millis() as u64;
    match kept {
        Ok(()) => {
            app.metrics.request(event_type, "quarantined");
            tracing::warn!(svix_id, event_type, %reason, ms, "signed webhook cannot be applied; quarantined");
            text(StatusCode::OK, "{\"outcome\":\"quarantined\"}")
        }
        Err(e) => unavailable(app, svix_id, event_type, &format!("quarantine: {e}"), ms),
    }
}

fn unavailable(
    app: &App,
    svix_id: &str,
    event_type: &str,
    reason: &str,
    ms: u64,
) -> Response<Full<Bytes>> {
    app.metrics.request(event_type, "unavailable");
    tracing::warn!(svix_id, event_type, %reason, ms, "downstream unavailable; Svix will retry");
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "downstream unavailable, retry later\n",
    );
    r.headers_mut()
        .insert("retry-after", http::HeaderValue::from_static("5"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn secrets_never_show_in_debug() {
        #[derive(Debug, clap::Parser)]
        struct Serve {
            #[command(flatten)]
            config: Config,
        }
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let parsed =
            Serve::try_parse_from(["webhook-gateway", "--clerk-webhook-secret", secret]).unwrap();
        let shown = format!("{parsed:?}");
        assert!(shown.contains("identity-service:50051"), "{shown}");
        assert!(!shown.contains("MfKQ9r8GKYqr"), "{shown}");
        let verifier = Verifier::new(secret).unwrap();
        assert!(!format!("{verifier:?}").contains("MfKQ9r8GKYqr"));

        // The reconcile command's Clerk secret key, and the HTTP client that holds it.
        #[derive(Debug, clap::Parser)]
        struct Reconcile {
            #[command(flatten)]
            config: reconcile::config::ReconcileConfig,
        }
        let key = "sk_live_0123456789abcdefDoNotShow";
        let parsed = Reconcile::try_parse_from(["reconcile", "--clerk-secret-key", key]).unwrap();
        let shown = format!("{parsed:?}");
        assert!(shown.contains("api.clerk.com"), "{shown}");
        assert!(!shown.contains("DoNotShow"), "{shown}");
        let client = clerk_api::ClerkHttp::new(parsed.config.clerk.http()).unwrap();
        assert!(!format!("{client:?}").contains("DoNotShow"));
    }
}
