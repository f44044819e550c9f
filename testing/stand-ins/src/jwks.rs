//! Stand-in for Clerk's Frontend API JWKS endpoint (`GET /.well-known/jwks.json`).

use crate::http_server::{HttpStandIn, json_response};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

struct State {
    jwks: Mutex<Value>,
    up: AtomicBool,
    hits: AtomicU64,
}

/// Serves a JWKS that tests can replace (key rotation) or take down (503).
pub struct JwksServer {
    server: HttpStandIn,
    state: Arc<State>,
}

impl std::fmt::Debug for JwksServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksServer")
            .field("addr", &self.server.addr())
            .finish()
    }
}

impl JwksServer {
    /// Starts on `127.0.0.1:0` serving `jwks`.
    pub async fn start(jwks: Value) -> std::io::Result<Self> {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await?, jwks)
    }

    /// Starts on a given listener serving `jwks`.
    pub fn start_on(listener: TcpListener, jwks: Value) -> std::io::Result<Self> {
        let state = Arc::new(State {
            jwks: Mutex::new(jwks),
            up: AtomicBool::new(true),
            hits: AtomicU64::new(0),
        });
        let s = Arc::clone(&state);
        let server = HttpStandIn::serve(listener, move |req| {
            let s = Arc::clone(&s);
            async move {
                s.hits.fetch_add(1, Ordering::SeqCst);
                if !s.up.load(Ordering::SeqCst) {
                    return json_response(
                        503,
                        &serde_json::json!({"errors":[{"code":"service_unavailable"}]}),
                    );
                }
                if req.method != hyper::Method::GET || req.path != "/.well-known/jwks.json" {
                    return json_response(
                        404,
                        &serde_json::json!({"errors":[{"code":"resource_not_found"}]}),
                    );
                }
                let body = s.jwks.lock().map(|j| j.clone()).unwrap_or_default();
                json_response(200, &body)
            }
        });
        Ok(Self { server, state })
    }

    /// The issuer URL (`http://127.0.0.1:<port>`), as in a token's `iss`.
    pub fn issuer(&self) -> String {
        self.server.base_url()
    }

    /// The JWKS URL.
    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.server.base_url())
    }

    /// Replaces the served key set.
    pub fn set_jwks(&self, jwks: Value) {
        if let Ok(mut j) = self.state.jwks.lock() {
            *j = jwks;
        }
    }

    /// `false` makes every request answer 503.
    pub fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }
}
