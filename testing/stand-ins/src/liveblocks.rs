//! Stand-in for the Liveblocks REST API's `DELETE /v2/rooms/{roomId}`, `GET /v2/rooms`,
//! `POST /v2/authorize-user` (see [`crate::liveblocks_authorize`]) and `POST /v2/identify-user`
//! (see [`crate::liveblocks_identify`]).
//!
//! Answers as Liveblocks' published API (v2.openapi.json) does: 204 with no body when the room
//! existed, 404 `ROOM_NOT_FOUND` once it is gone; 401 `MISSING_SECRET_KEY` without a key, 401
//! `WRONG_KEY_USED` for a public key (`pk_...`) and 403 `INVALID_SECRET_KEY` for a wrong one (on
//! every endpoint); error bodies with `error`, `message`, `suggestion` and `docs`; the listing
//! takes a `limit` of 1 to 100 (422 otherwise) and answers `{"nextCursor":null,"data":[]}` (no
//! live rooms are kept here). It can be told to fail (503), rate-limit (429 with `Retry-After`),
//! refuse (422), stand for a host that is not Liveblocks (404 pages) or slow down, on every
//! endpoint, and records every successful deletion, every repeated one (404 after a 204) and the
//! peak concurrency, overall and per room.
//!
//! Where Liveblocks documents nothing, the stand-in's answer is its own and marked so: the 503
//! and 429 bodies, a `Retry-After`, 405 for `/v2/rooms/{id}` calls other than DELETE (get-room
//! and update-room are not modelled), 404 `NOT_FOUND` for an unknown path, and 404 for a room id
//! over 128 characters. A room nobody connected to is deleted with 204: Liveblocks' older spec
//! answers 404 `ROOM_NOT_FOUND` for a room it does not have, its newer lists no 404 for this
//! call; our clean-up treats both as done.

use crate::http_server::{HttpStandIn, SeenRequest, empty_response, json_response};
use crate::liveblocks_authorize::{self as authorize, Authorization};
use crate::liveblocks_identify::{self as identify, Identification};
use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// How the stand-in answers for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveblocksMode {
    /// Normal operation.
    Up,
    /// 503 for everything.
    Down,
    /// 429 with `Retry-After: secs`.
    RateLimited { retry_after_secs: u64 },
    /// 429 with `Retry-After` as an HTTP-date `retry_after_secs` from the answer (RFC 9110's
    /// other form).
    RateLimitedUntil { retry_after_secs: u64 },
    /// 422 for every deletion (a permanent refusal).
    Unprocessable,
    /// Not Liveblocks at all (a wrong host, a proxy): a plain 404 page for every request.
    NotLiveblocks,
}

/// An error answer in Liveblocks' shape.
fn error(status: u16, code: &str, message: &str) -> hyper::Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"error": code, "message": message, "suggestion": "", "docs": "https://liveblocks.io/docs/api-reference/rest-api-endpoints"}),
    )
}

/// The answer of a mode that fails every request, if this one does. Liveblocks documents no
/// 503 or 429 body, nor `Retry-After`: these are the stand-in's own.
fn failure(mode: &LiveblocksMode) -> Option<hyper::Response<Full<Bytes>>> {
    match mode {
        LiveblocksMode::Down => Some(error(503, "SERVICE_UNAVAILABLE", "Service unavailable.")),
        LiveblocksMode::RateLimited { retry_after_secs } => {
            let mut r = error(429, "TOO_MANY_REQUESTS", "Rate limit exceeded.");
            r.headers_mut()
                .insert("retry-after", (*retry_after_secs).into());
            Some(r)
        }
        LiveblocksMode::RateLimitedUntil { retry_after_secs } => {
            let mut r = error(429, "TOO_MANY_REQUESTS", "Rate limit exceeded.");
            let at = std::time::SystemTime::now() + Duration::from_secs(*retry_after_secs);
            if let Ok(v) = httpdate::fmt_http_date(at).parse() {
                r.headers_mut().insert("retry-after", v);
            }
            Some(r)
        }
        LiveblocksMode::NotLiveblocks => {
            let mut r = hyper::Response::new(Full::new(Bytes::from_static(
                b"<html><body><h1>404 Not Found</h1></body></html>",
            )));
            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("text/html"),
            );
            Some(r)
        }
        LiveblocksMode::Up | LiveblocksMode::Unprocessable => None,
    }
}

/// The key check of every endpoint: 401 without a secret key or with a public key, 403 for a
/// wrong one.
fn key_refusal(expected_auth: &str, req: &SeenRequest) -> Option<hyper::Response<Full<Bytes>>> {
    match req
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        Some(v) if v == expected_auth => None,
        None => Some(error(401, "MISSING_SECRET_KEY", "Missing secret key.")),
        Some(v) if v.starts_with("Bearer pk_") => Some(error(
            401,
            "WRONG_KEY_USED",
            "A public key was used where a secret key is expected.",
        )),
        Some(_) => Some(error(403, "INVALID_SECRET_KEY", "Invalid secret key.")),
    }
}

#[derive(Default)]
struct State {
    mode: Option<LiveblocksMode>,
    latency: Duration,
    deleted: Vec<String>,
    not_found: Vec<String>,
    gone: HashSet<String>,
    requests: u64,
    in_flight: usize,
    peak_in_flight: usize,
    in_flight_rooms: HashMap<String, usize>,
    overlapping_same_room: u64,
    log_deletions: bool,
    authorizations: Vec<Authorization>,
    authorize_requests: u64,
    identifications: Vec<Identification>,
    identify_requests: u64,
    /// Lifetime of the access tokens issued from now on, seconds.
    token_secs: u64,
}

/// A running Liveblocks stand-in.
pub struct LiveblocksStandIn {
    server: HttpStandIn,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for LiveblocksStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveblocksStandIn")
            .field("addr", &self.server.addr())
            .finish()
    }
}

/// Decodes `%XX` escapes of a path segment.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl LiveblocksStandIn {
    /// Starts on `127.0.0.1:0`, accepting `secret` as the only valid key.
    pub async fn start(secret: &str) -> std::io::Result<Self> {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await?, secret)
    }

    /// Starts on `listener`.
    pub fn start_on(listener: TcpListener, secret: &str) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(State {
            mode: Some(LiveblocksMode::Up),
            token_secs: authorize::TOKEN_SECS,
            ..State::default()
        }));
        let s = Arc::clone(&state);
        let expected = format!("Bearer {secret}");
        let server = HttpStandIn::serve(listener, move |req: SeenRequest| {
            let s = Arc::clone(&s);
            let expected = expected.clone();
            async move { handle(&s, &expected, req).await }
        });
        Ok(Self { server, state })
    }

    /// Base URL (`LIVEBLOCKS_API_URL`).
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// Changes how requests are answered.
    pub fn set_mode(&self, mode: LiveblocksMode) {
        if let Ok(mut s) = self.state.lock() {
            s.mode = Some(mode);
        }
    }

    /// Adds latency to every answer.
    pub fn set_latency(&self, latency: Duration) {
        if let Ok(mut s) = self.state.lock() {
            s.latency = latency;
        }
    }

    /// How long the access tokens issued from now on live (`exp - iat`), seconds: an hour
    /// unless told otherwise, as no published document states Liveblocks' lifetime.
    pub fn set_token_secs(&self, secs: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.token_secs = secs;
        }
    }

    /// Logs each deletion at info level (development stack).
    pub fn log_deletions(&self, on: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.log_deletions = on;
        }
    }

    /// A client connecting to `room` with access token `token` (Liveblocks' WebSocket), as
    /// Liveblocks admits it: a token this stand-in issued, unexpired, granting the room. A room
    /// that does not exist is created, as Liveblocks does on connect: a deleted one is back,
    /// and its next deletion answers 204 again.
    pub fn connect(&self, token: &str, room: &str) -> Result<(), String> {
        authorize::admits(token, room, unix_now())?;
        if let Ok(mut s) = self.state.lock() {
            s.gone.remove(room);
        }
        Ok(())
    }

    /// Room ids deleted with a 204, in order (a room appears once per successful deletion).
    pub fn deleted(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.deleted.clone())
            .unwrap_or_default()
    }

    /// Room ids whose deletion was answered 404 because an earlier one succeeded, in order (a
    /// deletion repeated, e.g. after a crash between the call and its bookkeeping).
    pub fn not_found(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.not_found.clone())
            .unwrap_or_default()
    }

    /// The access tokens issued, in order: what each was asked to grant.
    pub fn authorizations(&self) -> Vec<Authorization> {
        self.state
            .lock()
            .map(|s| s.authorizations.clone())
            .unwrap_or_default()
    }

    /// `POST /v2/authorize-user` requests received, answered or not.
    pub fn authorize_requests(&self) -> u64 {
        self.state
            .lock()
            .map(|s| s.authorize_requests)
            .unwrap_or_default()
    }

    /// The ID tokens issued, in order: whom each identifies.
    pub fn identifications(&self) -> Vec<Identification> {
        self.state
            .lock()
            .map(|s| s.identifications.clone())
            .unwrap_or_default()
    }

    /// `POST /v2/identify-user` requests received, answered or not.
    pub fn identify_requests(&self) -> u64 {
        self.state
            .lock()
            .map(|s| s.identify_requests)
            .unwrap_or_default()
    }

    /// Requests received.
    pub fn requests(&self) -> u64 {
        self.state.lock().map(|s| s.requests).unwrap_or_default()
    }

    /// Highest number of requests in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.state
            .lock()
            .map(|s| s.peak_in_flight)
            .unwrap_or_default()
    }

    /// How often a request for a room arrived while another for the same room was in flight.
    pub fn overlapping_same_room(&self) -> u64 {
        self.state
            .lock()
            .map(|s| s.overlapping_same_room)
            .unwrap_or_default()
    }
}

async fn handle(
    state: &Mutex<State>,
    expected_auth: &str,
    req: SeenRequest,
) -> hyper::Response<Full<Bytes>> {
    if req.path == "/v2/rooms" && req.method == hyper::Method::GET {
        return list_rooms(state, expected_auth, &req).await;
    }
    if req.path == "/v2/authorize-user" {
        return issue_token(state, expected_auth, req, TokenKind::Access).await;
    }
    if req.path == "/v2/identify-user" {
        return issue_token(state, expected_auth, req, TokenKind::Id).await;
    }
    let Some(raw_id) = req
        .path
        .strip_prefix("/v2/rooms/")
        .filter(|r| !r.is_empty() && !r.contains('/'))
    else {
        // Not documented by Liveblocks: the stand-in's own answer to a path it does not serve.
        return error(404, "NOT_FOUND", "Not found.");
    };
    let room = percent_decode(raw_id);
    let (latency, mode) = {
        let Ok(mut s) = state.lock() else {
            return empty_response(500);
        };
        s.requests += 1;
        s.in_flight += 1;
        s.peak_in_flight = s.peak_in_flight.max(s.in_flight);
        let n = s.in_flight_rooms.entry(room.clone()).or_default();
        *n += 1;
        if *n > 1 {
            s.overlapping_same_room += 1;
        }
        (s.latency, s.mode.clone().unwrap_or(LiveblocksMode::Up))
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let Ok(mut s) = state.lock() else {
        return empty_response(500);
    };
    s.in_flight -= 1;
    if let Some(n) = s.in_flight_rooms.get_mut(&room) {
        *n -= 1;
    }
    if let Some(r) = failure(&mode) {
        return r;
    }
    if req.method != hyper::Method::DELETE {
        // Not Liveblocks': get-room and update-room are not modelled here.
        return error(405, "METHOD_NOT_ALLOWED", "Method not allowed.");
    }
    if let Some(r) = key_refusal(expected_auth, &req) {
        return r;
    }
    if mode == LiveblocksMode::Unprocessable {
        return error(422, "UNPROCESSABLE_ENTITY", "The room cannot be deleted.");
    }
    // An id over Liveblocks' 128 characters: the answer is not documented, 404 is the stand-in's.
    if room.len() > 128 || s.gone.contains(&room) {
        if s.gone.contains(&room) {
            s.not_found.push(room.clone());
        }
        return error(404, "ROOM_NOT_FOUND", "Room not found.");
    }
    s.gone.insert(room.clone());
    s.deleted.push(room.clone());
    if s.log_deletions {
        tracing::info!(room_id = %room, "liveblocks stand-in: room deleted");
    }
    empty_response(204)
}

/// Which token endpoint was called.
#[derive(Clone, Copy)]
enum TokenKind {
    /// `POST /v2/authorize-user`: an access token.
    Access,
    /// `POST /v2/identify-user`: an ID token.
    Id,
}

/// `POST /v2/authorize-user` and `POST /v2/identify-user`: the mode and latency apply as to
/// deletions; then the key, then the body; an issued token is recorded. Not counted in
/// [`LiveblocksStandIn::requests`].
async fn issue_token(
    state: &Mutex<State>,
    expected_auth: &str,
    req: SeenRequest,
    kind: TokenKind,
) -> hyper::Response<Full<Bytes>> {
    let (latency, mode) = {
        let Ok(mut s) = state.lock() else {
            return empty_response(500);
        };
        match kind {
            TokenKind::Access => s.authorize_requests += 1,
            TokenKind::Id => s.identify_requests += 1,
        }
        (s.latency, s.mode.clone().unwrap_or(LiveblocksMode::Up))
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(r) = failure(&mode) {
        return r;
    }
    if req.method != hyper::Method::POST {
        return error(405, "METHOD_NOT_ALLOWED", "Method not allowed.");
    }
    if let Some(r) = key_refusal(expected_auth, &req) {
        return r;
    }
    let now = unix_now();
    let issued = match kind {
        TokenKind::Access => authorize::check(&req.body).map(|grant| {
            record(state, |s| {
                let token =
                    authorize::token(&grant, s.authorizations.len() as u64, now, s.token_secs);
                s.authorizations.push(grant);
                token
            })
        }),
        TokenKind::Id => identify::check(&req.body).map(|who| {
            record(state, |s| {
                let token = identify::token(&who, s.identifications.len() as u64, now);
                s.identifications.push(who);
                token
            })
        }),
    };
    match issued {
        Ok(Some(token)) => json_response(200, &json!({ "token": token })),
        Ok(None) => empty_response(500),
        Err((status, code, message)) => error(status, code, &message),
    }
}

/// Runs `f` on the state (None when its lock is poisoned).
fn record<T>(state: &Mutex<State>, f: impl FnOnce(&mut State) -> T) -> Option<T> {
    state.lock().ok().map(|mut s| f(&mut s))
}

/// `GET /v2/rooms`: the mode, latency and key apply as to deletions; no rooms are listed. Not
/// counted in [`LiveblocksStandIn::requests`], which counts deletions.
async fn list_rooms(
    state: &Mutex<State>,
    expected_auth: &str,
    req: &SeenRequest,
) -> hyper::Response<Full<Bytes>> {
    let Some((latency, mode)) = record(state, |s| {
        (s.latency, s.mode.clone().unwrap_or(LiveblocksMode::Up))
    }) else {
        return empty_response(500);
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(r) = failure(&mode) {
        return r;
    }
    if let Some(r) = key_refusal(expected_auth, req) {
        return r;
    }
    // `limit` is 1 to 100 (20 when absent); the 422 is documented, its code is the stand-in's.
    let limit = req
        .query
        .split('&')
        .find_map(|kv| kv.strip_prefix("limit="))
        .map(|v| v.parse::<u32>().ok().filter(|l| (1..=100).contains(l)));
    if limit == Some(None) {
        return error(
            422,
            "INVALID_REQUEST",
            "limit must be an integer from 1 to 100.",
        );
    }
    json_response(200, &json!({"nextCursor": null, "data": []}))
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::{LiveblocksMode, LiveblocksStandIn, percent_decode};
    use serde_json::{Value, json};

    async fn post(
        live: &LiveblocksStandIn,
        key: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/v2/identify-user", live.base_url()))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn identify_user_answers_an_id_token_and_records_whom() {
        let live = LiveblocksStandIn::start("sk_test").await.unwrap();
        let body = json!({"userId": "user_1", "groupIds": ["org_1"],
                          "userInfo": {"name": "Ada", "avatar": "https://img.example/ada.png"}});
        let (status, answer) = post(&live, "sk_test", body.to_string()).await;
        assert_eq!(status, 200, "{answer}");
        let token = answer["token"].as_str().unwrap();
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(
            answer.as_object().unwrap().len(),
            1,
            "only the token: {answer}"
        );
        let who = live.identifications();
        assert_eq!(who.len(), 1);
        assert_eq!(
            (who[0].user_id.as_str(), who[0].group_ids.clone()),
            ("user_1", vec!["org_1".to_owned()])
        );
        assert_eq!(who[0].user_info["name"], "Ada");
        assert!(
            live.authorizations().is_empty(),
            "an ID token grants nothing"
        );

        // Refusals as for authorize-user: the key first, then the body; nothing recorded.
        let (status, answer) = post(&live, "sk_wrong", body.to_string()).await;
        assert_eq!(
            (status, &answer["error"]),
            (403, &json!("INVALID_SECRET_KEY"))
        );
        let (status, answer) = post(&live, "sk_test", "{").await;
        assert_eq!((status, &answer["error"]), (400, &json!("INVALID_JSON")));
        let (status, answer) = post(&live, "sk_test", r#"{"groupIds":["g"]}"#).await;
        assert_eq!((status, &answer["error"]), (422, &json!("INVALID_REQUEST")));
        live.set_mode(LiveblocksMode::Down);
        assert_eq!(post(&live, "sk_test", body.to_string()).await.0, 503);
        assert_eq!(live.identifications().len(), 1);
        assert_eq!(live.identify_requests(), 5);
    }

    #[tokio::test]
    async fn a_repeated_deletion_is_answered_404_and_recorded() {
        let live = LiveblocksStandIn::start("sk_test").await.unwrap();
        let delete = || async {
            reqwest::Client::new()
                .delete(format!("{}/v2/rooms/doc%3A1", live.base_url()))
                .bearer_auth("sk_test")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        };
        assert_eq!(delete().await, 204);
        assert!(live.not_found().is_empty());
        assert_eq!(delete().await, 404);
        assert_eq!(live.deleted(), ["doc:1"]);
        assert_eq!(live.not_found(), ["doc:1"]);
    }

    /// Every endpoint checks the key as Liveblocks does (401 without one, 403 for a wrong one)
    /// and fails in every mode, the listing included.
    #[tokio::test]
    async fn keys_and_modes_apply_to_every_endpoint() {
        let live = LiveblocksStandIn::start("sk_test").await.unwrap();
        let base = live.base_url();
        let call = |method: reqwest::Method, path: &'static str, key: Option<&'static str>| {
            let mut r = reqwest::Client::new()
                .request(method, format!("{base}{path}"))
                .header("content-type", "application/json")
                .body(r#"{"userId":"u","permissions":{"doc:1":["room:write"]}}"#);
            if let Some(key) = key {
                r = r.bearer_auth(key);
            }
            async move {
                let resp = r.send().await.unwrap();
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap();
                let code = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned));
                (status, code)
            }
        };
        let endpoints = [
            (reqwest::Method::GET, "/v2/rooms?limit=1"),
            (reqwest::Method::POST, "/v2/authorize-user"),
            (reqwest::Method::POST, "/v2/identify-user"),
            (reqwest::Method::DELETE, "/v2/rooms/doc%3A9"),
        ];
        for (method, path) in endpoints.clone() {
            assert_eq!(
                call(method.clone(), path, None).await,
                (401, Some("MISSING_SECRET_KEY".into())),
                "{path}"
            );
            assert_eq!(
                call(method, path, Some("sk_wrong")).await,
                (403, Some("INVALID_SECRET_KEY".into())),
                "{path}"
            );
        }
        for (mode, want) in [
            (
                LiveblocksMode::Down,
                (503, Some("SERVICE_UNAVAILABLE".to_owned())),
            ),
            (
                LiveblocksMode::RateLimited {
                    retry_after_secs: 2,
                },
                (429, Some("TOO_MANY_REQUESTS".to_owned())),
            ),
            (LiveblocksMode::NotLiveblocks, (404, None)),
        ] {
            live.set_mode(mode.clone());
            for (method, path) in endpoints.clone() {
                assert_eq!(
                    call(method, path, Some("sk_test")).await,
                    want,
                    "{mode:?} {path}"
                );
            }
        }
        live.set_mode(LiveblocksMode::Up);
        assert_eq!(
            call(reqwest::Method::GET, "/v2/rooms?limit=1", Some("sk_test")).await,
            (200, None)
        );
    }

    async fn status_and_code(r: reqwest::RequestBuilder) -> (u16, Option<String>) {
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        (status, body["error"].as_str().map(str::to_owned))
    }

    #[tokio::test]
    async fn a_public_key_is_answered_wrong_key_used_on_every_endpoint() {
        let live = LiveblocksStandIn::start("sk_test").await.unwrap();
        let base = live.base_url();
        let c = reqwest::Client::new();
        for r in [
            c.get(format!("{base}/v2/rooms?limit=1")),
            c.delete(format!("{base}/v2/rooms/doc%3A1")),
            c.post(format!("{base}/v2/authorize-user"))
                .body(r#"{"userId":"u","permissions":{"doc:1":["room:write"]}}"#),
            c.post(format!("{base}/v2/identify-user"))
                .body(r#"{"userId":"u"}"#),
        ] {
            assert_eq!(
                status_and_code(r.bearer_auth("pk_test_abc")).await,
                (401, Some("WRONG_KEY_USED".into()))
            );
        }
        assert!(live.deleted().is_empty() && live.authorizations().is_empty());
    }

    #[tokio::test]
    async fn a_rate_limit_can_say_until_when_as_an_http_date() {
        let live = LiveblocksStandIn::start("sk_test").await.unwrap();
        live.set_mode(LiveblocksMode::RateLimitedUntil {
            retry_after_secs: 120,
        });
        let r = reqwest::Client::new()
            .delete(format!("{}/v2/rooms/doc%3A1", live.base_url()))
            .bearer_auth("sk_test")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 429);
        let at = httpdate::parse_http_date(r.headers()["retry-after"].to_str().unwrap()).unwrap();
        let ahead = at
            .duration_since(std::time::SystemTime::now())
            .unwrap()
            .as_secs();
        assert!((115..=120).contains(&ahead), "{ahead}");
    }

    #[tokio::test]
    async fn the_listing_takes_a_limit_of_1_to_100() {
        let live = LiveblocksStandIn::start("sk_test").await.unwrap();
        let list = |q: &'static str| {
            let url = format!("{}/v2/rooms{q}", live.base_url());
            status_and_code(reqwest::Client::new().get(url).bearer_auth("sk_test"))
        };
        for good in ["", "?limit=1", "?limit=100"] {
            assert_eq!(list(good).await.0, 200, "{good}");
        }
        for bad in ["?limit=0", "?limit=101", "?limit=x"] {
            assert_eq!(list(bad).await.0, 422, "{bad}");
        }
    }

    #[tokio::test]
    async fn access_tokens_live_as_long_as_told() {
        let live = LiveblocksStandIn::start("sk_test").await.unwrap();
        let exp_minus_iat = || async {
            let r: Value = reqwest::Client::new()
                .post(format!("{}/v2/authorize-user", live.base_url()))
                .bearer_auth("sk_test")
                .body(r#"{"userId":"u","permissions":{"doc:1":["room:write"]}}"#)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let claims = r["token"].as_str().unwrap().split('.').nth(1).unwrap();
            use base64::Engine;
            let claims: Value = serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(claims)
                    .unwrap(),
            )
            .unwrap();
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap()
        };
        assert_eq!(exp_minus_iat().await, 3600);
        live.set_token_secs(7200);
        assert_eq!(exp_minus_iat().await, 7200);
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("doc%3Aabc"), "doc:abc");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
