//! Prometheus text exposition on `GET /metrics`, and the health detail of the service's
//! dependencies on `GET /status`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// What a service knows about the dependencies that do not decide its readiness (e.g. the
/// Liveblocks key): one line per component on `GET /status`, 200 when every one is fine, 503
/// naming those that are not.
#[derive(Debug, Clone, Default)]
pub struct HealthDetail {
    components: Arc<Mutex<std::collections::BTreeMap<&'static str, Result<String, String>>>>,
}

impl HealthDetail {
    /// Records the state of `component`: `Ok(note)` when fine, `Err(problem)` when not.
    pub fn set(&self, component: &'static str, state: Result<String, String>) {
        if let Ok(mut c) = self.components.lock() {
            c.insert(component, state);
        }
    }

    /// The `/status` text, and whether every component is fine.
    pub fn report(&self) -> (bool, String) {
        let Ok(c) = self.components.lock() else {
            return (false, "status unavailable\n".to_owned());
        };
        let mut text = String::new();
        let mut fine = true;
        for (name, state) in c.iter() {
            match state {
                Ok(note) => text.push_str(&format!("{name}: ok {note}\n")),
                Err(problem) => {
                    fine = false;
                    text.push_str(&format!("{name}: PROBLEM {problem}\n"));
                }
            }
        }
        if text.is_empty() {
            text.push_str("no components\n");
        }
        (fine, text)
    }
}

/// Serves `registry` on `listener` (`GET /metrics`; `GET /healthz` answers 200; `GET /status`
/// the [`HealthDetail`]) until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    registry: Arc<Mutex<Registry>>,
    detail: HealthDetail,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let registry = Arc::clone(&registry);
        let detail = detail.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let registry = Arc::clone(&registry);
                let detail = detail.clone();
                async move { Ok::<_, Infallible>(respond(&req, &registry, &detail)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Content type of the Prometheus/OpenMetrics text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes `registry` as Prometheus text; `None` if it cannot be encoded.
pub fn encode(registry: &Mutex<Registry>) -> Option<String> {
    let mut text = String::new();
    let r = registry.lock().ok()?;
    prometheus_client::encoding::text::encode(&mut text, &r).ok()?;
    Some(text)
}

fn respond(
    req: &Request<Incoming>,
    registry: &Mutex<Registry>,
    detail: &HealthDetail,
) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => match encode(registry) {
            Some(text) => (200, CONTENT_TYPE, text),
            None => (500, "text/plain", "metrics encoding failed\n".to_owned()),
        },
        ("GET", "/healthz") => (200, "text/plain", "ok\n".to_owned()),
        ("GET", "/status") => match detail.report() {
            (true, text) => (200, "text/plain", text),
            (false, text) => (503, "text/plain", text),
        },
        _ => (404, "text/plain", "not found\n".to_owned()),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
