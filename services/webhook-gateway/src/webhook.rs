//! `POST /clerk`: the body read within its limit and its share of the bytes all requests may
//! hold at once ([`crate::body_budget`]), the Svix signature checked on the raw bytes,
//! the Clerk event parsed into one typed command and forwarded; a delivery that cannot be
//! applied is quarantined (200), an unavailable service answers 503, and a delivery a service
//! fails for a reason of its own answers 503 until its event is old enough to be quarantined
//! ([`crate::failed`]). [`App`] is what the handlers share.

use crate::clerk::Malformed;
use crate::forward::{Downstream, ForwardError};
use crate::verify::Verifier;
use crate::{body_budget, clerk, failed, log_budget, metrics, quarantine};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Largest accepted webhook body.
pub const MAX_BODY: usize = 1024 * 1024;

fn header<'a>(req: &'a http::request::Parts, svix: &str, unbranded: &str) -> Option<&'a str> {
    req.headers
        .get(svix)
        .or_else(|| req.headers.get(unbranded))
        .and_then(|v| v.to_str().ok())
}

/// What the handlers share: built by [`crate::server::run`].
pub(crate) struct App {
    pub(crate) verifier: Verifier,
    pub(crate) downstream: Downstream,
    /// Bytes of bodies held at once (`MAX_BODY_BYTES_IN_FLIGHT`).
    pub(crate) bodies: body_budget::BodyBudget,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) registry: Mutex<Registry>,
    pub(crate) deadline: Duration,
    /// Age of its event from which a delivery a service fails is quarantined
    /// (`QUARANTINE_FAILED_AFTER_SECS`).
    pub(crate) quarantine_failed_after: Duration,
    /// How long the body of one request may take to arrive.
    pub(crate) read_timeout: Duration,
    /// Log lines for refused verifications.
    pub(crate) refusal_logs: log_budget::LogBudget,
    /// Log lines for requests answered 503 for want of body budget.
    pub(crate) busy_logs: log_budget::LogBudget,
}

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) async fn clerk_webhook(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
    // The body's share of the budget, held until this handler ends (the body with it); without
    // one the body is never read.
    let share = declared.map_or(MAX_BODY, |n| n as usize);
    let Some(_share) = app.bodies.take(share, body_budget::WAIT).await else {
        return busy(app);
    };
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
    let clerk::Event {
        kind: event_type,
        command,
        event_time,
    } = match clerk::to_event(&svix_id, &body) {
        Ok(e) => e,
        Err(Malformed(reason)) => {
            let event_type = quarantine::event_type_of(&body);
            let reason = format!("malformed Clerk event: {reason}");
            return quarantined(app, &svix_id, &event_type, &reason, &body, started).await;
        }
    };
    let result = match tokio::time::timeout(left(app, started), app.downstream.send(command)).await
    {
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
        Err(ForwardError::Failed(reason)) => {
            let now = SystemTime::now();
            match failed::due(event_time.as_ref(), app.quarantine_failed_after, now) {
                Some(why) => {
                    let reason = format!("failed permanently at a service ({why}): {reason}");
                    quarantined(app, &svix_id, &event_type, &reason, &body, started).await
                }
                None => failing(app, &svix_id, &event_type, &reason, ms),
            }
        }
        // An outage or a refused token is the service's trouble, not the delivery's (and
        // keeping it takes a service that answers): 503 whatever the event's age.
        Err(ForwardError::Unavailable(reason) | ForwardError::Denied(reason)) => {
            unavailable(app, &svix_id, &event_type, &reason, ms)
        }
    }
}

/// Svix waits 15 s for an answer; every answer goes out within this of the handler's start
/// (reading the body, the command, and keeping the delivery when it cannot be applied), so a
/// slow service is answered 503 in time rather than timed out (a timeout also costs the
/// delivery a minute's penalty at Svix).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(14);

/// How long the next downstream call may take: its own deadline, within what is left of
/// [`ANSWER_WITHIN`].
fn left(app: &App, started: Instant) -> Duration {
    app.deadline
        .min(ANSWER_WITHIN.saturating_sub(started.elapsed()))
}

/// Keeps a signed delivery that cannot be applied in its owner's quarantine and answers 2xx
/// (also when its record was closed before: nothing is kept then); when the owner cannot be
/// asked, 503 (Svix retries, nothing is lost).
async fn quarantined(
    app: &App,
    svix_id: &str,
    event_type: &str,
    reason: &str,
    body: &[u8],
    started: Instant,
) -> Response<Full<Bytes>> {
    let kept = tokio::time::timeout(
        left(app, started),
        quarantine::keep(&app.downstream, svix_id, event_type, reason, body),
    )
    .await
    .unwrap_or_else(|_| Err(ForwardError::Unavailable("deadline exceeded".into())));
    let ms = started.elapsed().as_millis() as u64;
    match kept {
        Ok(quarantine::Kept::Open) => {
            app.metrics.request(event_type, "quarantined");
            tracing::warn!(svix_id, event_type, %reason, ms, "signed webhook cannot be applied; quarantined");
            text(StatusCode::OK, "{\"outcome\":\"quarantined\"}")
        }
        // Its record was resolved or discarded before (the ledger leaves it so): nothing is
        // kept. Still 2xx, as a retry would meet the same closed record; the answer and the
        // count say what happened rather than "quarantined".
        Ok(quarantine::Kept::Closed) => {
            app.metrics.request(event_type, "refused_closed");
            tracing::warn!(
                svix_id,
                event_type,
                %reason,
                ms,
                "signed webhook cannot be applied; its quarantine record was resolved or discarded before and stays so, nothing kept"
            );
            text(StatusCode::OK, "{\"outcome\":\"refused_closed\"}")
        }
        Err(e) => unavailable(app, svix_id, event_type, &format!("quarantine: {e}"), ms),
    }
}

/// Too many bodies held already: 503 (Svix retries) without reading this one.
fn busy(app: &App) -> Response<Full<Bytes>> {
    app.metrics.request("", "busy");
    // Anyone can cause these: a flood costs a few lines a minute (the metric counts all).
    if let log_budget::Admit::Log { left_out } = app.busy_logs.admit(Instant::now()) {
        tracing::warn!(
            left_out,
            "MAX_BODY_BYTES_IN_FLIGHT taken by other requests; answered 503 without reading the body"
        );
    }
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many request bodies in flight, retry later\n",
    );
    r.headers_mut()
        .insert("retry-after", http::HeaderValue::from_static("5"));
    r
}

/// A service failed the delivery for a reason of its own while its event is young: 503, so
/// Svix retries it and a fix released meanwhile applies it. Counted `failed`, apart from a
/// service unavailable.
fn failing(
    app: &App,
    svix_id: &str,
    event_type: &str,
    reason: &str,
    ms: u64,
) -> Response<Full<Bytes>> {
    app.metrics.request(event_type, "failed");
    tracing::warn!(
        svix_id,
        event_type,
        %reason,
        ms,
        "webhook failed at a service; Svix will retry, and once its event is QUARANTINE_FAILED_AFTER_SECS old it is quarantined"
    );
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "a service failed this delivery, retry later\n",
    )
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
