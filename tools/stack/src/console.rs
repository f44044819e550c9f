//! The console page of the local stack: the page itself (built from the TypeScript client of
//! `testing/e2e/browser`, embedded in this binary) and the development helpers it needs that
//! the services never offer: who the development users are and which organizations they are
//! in (what Clerk's frontend would tell the app), their tokens, operators' tokens for the admin
//! services, and `webhook-gateway replay-quarantined`. Served by `vbase-stack up` on 127.0.0.1
//! only, answering only requests addressed to that host (no other site can reach it through a
//! rebound DNS name).

use crate::tokens;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use vbase_stack::StackState;

const INDEX: &str = include_str!("../console/index.html");
/// Built by `npm run build:console` in testing/e2e/browser (CI checks it is current).
const BUNDLE: &str = include_str!("../console/console.js");

/// What the console's helpers need of the running stack.
pub struct Console {
    pub state: StackState,
    pub port: u16,
    pub identity_db: String,
    pub workspace_db: String,
    /// The gateway binary (`replay-quarantined`).
    pub gateway: PathBuf,
}

/// The origins the page is served from (the services' CORS must allow them).
pub fn origins(port: u16) -> String {
    format!("http://localhost:{port},http://127.0.0.1:{port}")
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, kind: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", http::HeaderValue::from_static(kind));
    r.headers_mut()
        .insert("cache-control", http::HeaderValue::from_static("no-store"));
    r
}

fn json_answer(v: serde_json::Value) -> Answer {
    answer(StatusCode::OK, "application/json", v.to_string())
}

fn refuse(status: StatusCode, why: &str) -> Answer {
    answer(status, "text/plain; charset=utf-8", format!("{why}\n"))
}

/// A query parameter, if it is made only of the characters Clerk and Svix ids use.
fn param(req: &Request<hyper::body::Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        let ok = k == name
            && (1..=128).contains(&v.len())
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-:.".contains(c));
        ok.then(|| v.to_owned())
    })
}

async fn db(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

impl Console {
    fn host_allowed(&self, req: &Request<hyper::body::Incoming>) -> bool {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        host == format!("localhost:{}", self.port) || host == format!("127.0.0.1:{}", self.port)
    }

    /// A request a browser sends from another site's page carries that site's origin: the
    /// helpers answer only the console's own pages (and tools, which send no origin).
    fn origin_allowed(&self, req: &Request<hyper::body::Incoming>) -> bool {
        match req.headers().get(http::header::ORIGIN) {
            None => true,
            Some(o) => o
                .to_str()
                .is_ok_and(|o| origins(self.port).split(',').any(|ours| ours == o)),
        }
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Answer {
        if !self.host_allowed(&req) {
            return refuse(StatusCode::MISDIRECTED_REQUEST, "unknown host");
        }
        if req.uri().path().starts_with("/dev/") && !self.origin_allowed(&req) {
            return refuse(StatusCode::FORBIDDEN, "another site's page");
        }
        let result = match (req.method(), req.uri().path()) {
            (&Method::GET, "/") => Ok(answer(StatusCode::OK, "text/html; charset=utf-8", INDEX)),
            (&Method::GET, "/console.js") => Ok(answer(StatusCode::OK, "text/javascript", BUNDLE)),
            (&Method::GET, "/config") => Ok(json_answer(json!({
                "identityUrl": format!("http://{}", self.state.identity_addr),
                "workspaceUrl": format!("http://{}", self.state.workspace_addr),
            }))),
            (&Method::GET, "/dev/directory") => self.directory().await,
            (&Method::GET, "/dev/token") => self.user_token(&req).await,
            (&Method::GET, "/dev/operator-token") => match param(&req, "service") {
                Some(s) => {
                    tokens::operator(&self.state, &s).map(|t| json_answer(json!({"token": t})))
                }
                None => Ok(refuse(StatusCode::BAD_REQUEST, "service= is required")),
            },
            (&Method::POST, "/dev/replay") => self.replay(&req).await,
            _ => Ok(refuse(StatusCode::NOT_FOUND, "not found")),
        };
        result.unwrap_or_else(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")))
    }

    /// Development users (identity-service's, and every member) and their memberships in
    /// workspaces that are not deleted.
    async fn directory(&self) -> anyhow::Result<Answer> {
        let users = db(&self.identity_db)
            .await?
            .query(
                "SELECT clerk_id, name FROM users WHERE deleted_at IS NULL ORDER BY clerk_id LIMIT 500",
                &[],
            )
            .await?;
        let members = db(&self.workspace_db)
            .await?
            .query(
                "SELECT m.clerk_user_id, m.clerk_org_id, m.role FROM memberships m
                 JOIN workspaces w ON w.clerk_org_id = m.clerk_org_id AND w.deleted_at IS NULL
                 WHERE NOT m.deleted ORDER BY 1, 2 LIMIT 2000",
                &[],
            )
            .await?;
        let users: Vec<_> = users
            .iter()
            .map(|r| json!({"id": r.get::<_, String>(0), "name": r.get::<_, String>(1)}))
            .collect();
        let memberships: Vec<_> = members
            .iter()
            .map(|r| {
                json!({"user": r.get::<_, String>(0), "org": r.get::<_, String>(1),
                       "role": r.get::<_, String>(2)})
            })
            .collect();
        Ok(json_answer(
            json!({"users": users, "memberships": memberships}),
        ))
    }

    /// A user's token, active in `org` with their role there (`org:member` when they are not
    /// a member: the services then refuse it, as they would a real one).
    async fn user_token(&self, req: &Request<hyper::body::Incoming>) -> anyhow::Result<Answer> {
        let Some(user) = param(req, "user") else {
            return Ok(refuse(StatusCode::BAD_REQUEST, "user= is required"));
        };
        let org = param(req, "org");
        let mut role = "org:member".to_owned();
        if let Some(org) = &org {
            let row = db(&self.workspace_db)
                .await?
                .query_opt(
                    "SELECT role FROM memberships WHERE clerk_org_id = $1 AND clerk_user_id = $2 AND NOT deleted",
                    &[org, &user],
                )
                .await?;
            if let Some(r) = row {
                role = r.get(0);
            }
        }
        let email = format!("{user}@example.com");
        let token = tokens::user(&self.state, &user, org.as_deref(), &role, &user, &email)?;
        Ok(json_answer(json!({"token": token, "role": role})))
    }

    /// `webhook-gateway replay-quarantined --id ID` with the stack's gateway settings.
    async fn replay(&self, req: &Request<hyper::body::Incoming>) -> anyhow::Result<Answer> {
        let Some(id) = param(req, "id") else {
            return Ok(refuse(StatusCode::BAD_REQUEST, "id= is required"));
        };
        let out = tokio::process::Command::new(&self.gateway)
            .args(["replay-quarantined", "--id", &id])
            .envs(self.state.reconcile_env.iter().map(|(k, v)| (k, v)))
            .env("LOG_FORMAT", "pretty")
            .env("RUST_LOG", "warn")
            .output()
            .await?;
        Ok(json_answer(json!({
            "ok": out.status.success(),
            "output": format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        })))
    }
}

/// Serves the console on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, console: Arc<Console>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let console = console.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let console = console.clone();
                async move { Ok::<_, Infallible>(console.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
