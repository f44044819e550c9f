//! Prometheus text exposition on `GET /metrics`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// Serves `registry` on `listener` (`GET /metrics`; `GET /healthz` answers 200) until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    registry: Arc<Mutex<Registry>>,
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
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let registry = Arc::clone(&registry);
                async move { Ok::<_, Infallible>(respond(&req, &registry)) }
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

fn respond(req: &Request<Incoming>, registry: &Mutex<Registry>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => match encode(registry) {
            Some(text) => (200, CONTENT_TYPE, text),
            None => (500, "text/plain", "metrics encoding failed\n".to_owned()),
        },
        ("GET", "/healthz") => (200, "text/plain", "ok\n".to_owned()),
        _ => (404, "text/plain", "not found\n".to_owned()),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
