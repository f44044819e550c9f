//! Webhook ingest: signed `user.updated` deliveries through the gateway, against the same upsert
//! sent straight to PostgreSQL on prepared statements.

use crate::load::{Bench, Direct, load, settle};
use crate::probes::{BatchProbe, CpuProbe};
use crate::report::Report;
use anyhow::Result;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use token_auth::signing::now_secs;
use vbase_stack::sign_webhook;

/// A signed delivery: body and headers, ready to send.
pub type Delivery = (bytes::Bytes, http::HeaderMap);

/// `n` signed `user.updated` deliveries over `users` users, made before the clock starts:
/// signing is the sender's (Svix's) work, not the gateway's. `tag` keeps warm-up users and
/// deliveries apart.
pub fn signed_deliveries(
    secret: &str,
    tag: &str,
    n: usize,
    users: usize,
    base_ms: i64,
) -> Result<Arc<Vec<Delivery>>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let body = user_updated(&format!("user_{tag}{}", i % users), base_ms + i as i64);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::HOST,
            http::HeaderValue::from_static("gateway"),
        );
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        for (k, v) in sign_webhook(secret, &format!("msg_{tag}_{i}"), &body)? {
            headers.insert(k, v.parse()?);
        }
        out.push((bytes::Bytes::from(body), headers));
    }
    Ok(Arc::new(out))
}

/// One keep-alive HTTP/1.1 connection per load worker, as Svix keeps one per delivery in flight.
#[derive(Clone)]
pub struct Http(
    Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>>>>,
);

impl Http {
    pub async fn connect(addr: &str) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self(Arc::new(tokio::sync::Mutex::new(send))))
    }

    /// POSTs one delivery to `/clerk`; true on 200.
    pub async fn post(self, (body, headers): Delivery) -> bool {
        let mut req = http::Request::new(Full::new(body));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = http::Uri::from_static("/clerk");
        *req.headers_mut() = headers;
        let mut conn = self.0.lock().await;
        if conn.ready().await.is_err() {
            return false;
        }
        match conn.send_request(req).await {
            Ok(resp) => {
                let ok = resp.status() == http::StatusCode::OK;
                ok && resp.into_body().collect().await.is_ok()
            }
            Err(_) => false,
        }
    }
}

pub fn user_updated(user: &str, updated_ms: i64) -> Vec<u8> {
    json!({"data": {"id": user, "object": "user", "first_name": "Bench", "last_name": format!("{updated_ms}"),
                    "primary_email_address_id": "idn_1", "image_url": "https://img.clerk.com/b",
                    "email_addresses": [{"id": "idn_1", "email_address": format!("{user}@example.org")}],
                    "created_at": 1_700_000_000_000_i64, "updated_at": updated_ms},
           "object": "event", "type": "user.updated", "timestamp": updated_ms})
    .to_string()
    .into_bytes()
}

/// The ingest row (also run before the reads row, which reads the users it writes).
pub async fn run(b: &Bench<'_>, report: &mut Report) -> Result<()> {
    let (stack, s, c, users) = (b.stack, &b.scale, b.concurrency, b.users);
    let (rows, cpu, batching) = (&mut report.rows, &mut report.cpu, &mut report.batching);
    // 1. Webhook ingest vs the same upsert straight to PostgreSQL.
    let secret = stack.state.webhook_secret.clone();
    let addr = stack
        .state
        .gateway_url
        .trim_start_matches("http://")
        .to_owned();
    let base_ms = now_secs() * 1000 - 86_400_000;
    let mut senders = Vec::new();
    for _ in 0..c {
        senders.push(Http::connect(&addr).await?);
    }
    // Warm-up, not measured: the services open their pooled connections and prepare their
    // statements, as the baseline's connections are opened before its clock starts.
    let warm = signed_deliveries(&secret, "w", 8 * c, users, base_ms)?;
    load(senders.clone(), 8 * c, move |h: Http, i| {
        h.post(warm[i].clone())
    })
    .await;
    let deliveries = signed_deliveries(&secret, "b", s.ingest, users, base_ms)?;
    // Both sides start from the same state: vacuumed, and no checkpoint owed for earlier
    // writes (one falling inside a timed phase makes that side pay for full-page writes).
    settle(&b.conns[0].db).await?;
    let batches = BatchProbe::start(stack, "identity_upsert_batch_size").await;
    let probe = CpuProbe::start(stack);
    let ours = load(senders, s.ingest, move |h: Http, i| {
        h.post(deliveries[i].clone())
    })
    .await;
    cpu.push(format!("ingest, ours: {}", probe.per_call(s.ingest)));
    if let Some(b) = batches {
        batching.push(b.report("ingest upserts (group commit)").await);
    }
    settle(&b.conns[0].db).await?;
    let probe = CpuProbe::start(stack);
    let base = load(b.conns.clone(), s.ingest, move |d: Direct, i| async move {
        let ts =
            std::time::SystemTime::UNIX_EPOCH + Duration::from_millis((base_ms + i as i64) as u64);
        d.db.execute(
            &d.upsert,
            &[
                &format!("user_p{}", i % users),
                &"Bench",
                &"p@example.org",
                &"https://img.clerk.com/b",
                &ts,
            ],
        )
        .await
        .is_ok()
    })
    .await;
    cpu.push(format!("ingest, baseline: {}", probe.per_call(s.ingest)));
    rows.push([
        format!(
            "webhook ingest, {} signed `user.updated` at concurrency {c}",
            s.ingest
        ),
        format!(
            "{:.0} events/s, p50 {:.1} ms, p99 {:.1} ms ({} errors)",
            ours.rate(),
            ours.pct(0.5),
            ours.pct(0.99),
            ours.errors
        ),
        format!(
            "{:.0} upserts/s, p50 {:.1} ms, p99 {:.1} ms",
            base.rate(),
            base.pct(0.5),
            base.pct(0.99)
        ),
        format!(
            "{:.2}x rate (goal >= 0.5), p99 {:.1} ms (goal <= 50)",
            ours.rate() / base.rate(),
            ours.pct(0.99)
        ),
    ]);
    Ok(())
}
