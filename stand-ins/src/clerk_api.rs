//! Stand-in for Clerk's Backend API (the read endpoints a reconcile uses).
//!
//! Answers as Clerk does: `Authorization: Bearer <secret>` or 401; `GET /v1/users` a bare JSON
//! array, the organization and membership lists `{data, total_count}`; `limit` 1..=500 (else
//! 422), `offset`, `order_by=+created_at` (oldest first; the default is newest first); single
//! resources 200 or 404. It counts requests and keeps their start times (to check a client's
//! rate), and can be told to answer 429 with `Retry-After`, to fail with 503 from some request
//! on, or to slow down.

use crate::http_server::{HttpStandIn, SeenRequest, json_response};
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Resources kept in list order (`created_at`, then id), found by id: a page costs its size,
/// not the collection's sort, so the stand-in answers at once at any size.
#[derive(Default)]
struct Ordered {
    by_order: BTreeMap<(i64, String), Value>,
    order_of: HashMap<String, (i64, String)>,
}

impl Ordered {
    fn put(&mut self, v: Value) {
        let id = id_of(&v);
        self.remove(&id);
        let key = (v["created_at"].as_i64().unwrap_or_default(), id.clone());
        self.order_of.insert(id, key.clone());
        self.by_order.insert(key, v);
    }

    fn remove(&mut self, id: &str) {
        if let Some(key) = self.order_of.remove(id) {
            self.by_order.remove(&key);
        }
    }

    fn get(&self, id: &str) -> Option<&Value> {
        self.order_of.get(id).and_then(|k| self.by_order.get(k))
    }

    fn len(&self) -> usize {
        self.by_order.len()
    }

    /// Oldest first, or newest first.
    fn in_order(&self, oldest_first: bool) -> Box<dyn Iterator<Item = &Value> + '_> {
        if oldest_first {
            Box::new(self.by_order.values())
        } else {
            Box::new(self.by_order.values().rev())
        }
    }
}

#[derive(Default)]
struct State {
    users: Ordered,
    orgs: Ordered,
    memberships: Ordered,
    latency: Duration,
    /// Requests answered 429 before normal answers resume, and the `Retry-After` they carry.
    rate_limited: (u32, u64),
    /// From this list request on (1-based), 503; single-resource reads keep answering.
    fail_from: Option<u64>,
    list_requests: u64,
    requests: u64,
    started: Vec<Instant>,
}

/// A running stand-in of Clerk's Backend API.
pub struct ClerkApiStandIn {
    server: HttpStandIn,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for ClerkApiStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClerkApiStandIn")
            .field("addr", &self.server.addr())
            .finish()
    }
}

/// A `UserJSON` as Clerk returns it (the fields that matter and a few that do not).
pub fn user_json(id: &str, first: &str, email: &str, created_at: i64, updated_at: i64) -> Value {
    json!({
        "id": id, "object": "user", "username": null, "first_name": first, "last_name": "Example",
        "image_url": format!("https://img.clerk.com/{id}"), "has_image": false,
        "primary_email_address_id": format!("idn_{id}"),
        "email_addresses": [{"id": format!("idn_{id}"), "object": "email_address", "email_address": email,
                             "verification": {"status": "verified", "strategy": "email_code"}, "linked_to": []}],
        "phone_numbers": [], "web3_wallets": [], "external_accounts": [],
        "public_metadata": {}, "private_metadata": {}, "unsafe_metadata": {},
        "banned": false, "locked": false, "created_at": created_at, "updated_at": updated_at,
        "last_sign_in_at": null, "last_active_at": null
    })
}

/// An `OrganizationJSON`.
pub fn org_json(id: &str, name: &str, created_by: &str, created_at: i64, updated_at: i64) -> Value {
    json!({
        "id": id, "object": "organization", "name": name, "slug": name.to_lowercase().replace(' ', "-"),
        "image_url": "", "has_image": false, "members_count": null, "max_allowed_memberships": 5,
        "admin_delete_enabled": true, "public_metadata": {}, "created_by": created_by,
        "created_at": created_at, "updated_at": updated_at
    })
}

/// An `OrganizationMembershipJSON` of `user` in `org`.
pub fn membership_json(
    id: &str,
    org: &str,
    user: &str,
    role: &str,
    created_at: i64,
    updated_at: i64,
) -> Value {
    json!({
        "id": id, "object": "organization_membership", "role": role, "permissions": [],
        "public_metadata": {}, "created_at": created_at, "updated_at": updated_at,
        "organization": {"id": org, "object": "organization", "name": org, "slug": org,
                         "created_at": created_at, "updated_at": created_at},
        "public_user_data": {"user_id": user, "identifier": format!("{user}@example.org"),
                             "first_name": null, "last_name": null, "image_url": "", "has_image": false}
    })
}

fn error(status: u16, code: &str, message: &str) -> hyper::Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"errors": [{"message": message, "long_message": message, "code": code}]}),
    )
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn answer(state: &State, req: &SeenRequest) -> hyper::Response<Full<Bytes>> {
    let path = req.path.strip_prefix("/v1").unwrap_or(&req.path);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let limit = match query_param(&req.query, "limit").map(str::parse::<usize>) {
        None => 10,
        Some(Ok(l)) if (1..=500).contains(&l) => l,
        Some(_) => {
            return error(
                422,
                "form_param_value_invalid",
                "limit must be between 1 and 500",
            );
        }
    };
    let offset = query_param(&req.query, "offset")
        .and_then(|o| o.parse::<usize>().ok())
        .unwrap_or(0);
    let oldest_first = matches!(
        query_param(&req.query, "order_by"),
        Some("%2Bcreated_at" | "+created_at" | "created_at")
    );
    let page = |items: &mut dyn Iterator<Item = &Value>| -> Vec<Value> {
        items.skip(offset).take(limit).cloned().collect()
    };
    let wrapped = |items: Vec<&Value>| {
        let total = items.len();
        json_response(
            200,
            &json!({"data": page(&mut items.into_iter()), "total_count": total}),
        )
    };
    let memberships_where = |f: &dyn Fn(&Value) -> bool| {
        state
            .memberships
            .in_order(oldest_first)
            .filter(|m| f(m))
            .collect::<Vec<_>>()
    };
    let not_found = || error(404, "resource_not_found", "not found");
    match segments.as_slice() {
        ["users"] => json_response(
            200,
            &Value::Array(page(&mut state.users.in_order(oldest_first))),
        ),
        ["users", "count"] => json_response(
            200,
            &json!({"object": "total_count", "total_count": state.users.len()}),
        ),
        ["users", id] => state
            .users
            .get(id)
            .map_or_else(not_found, |u| json_response(200, u)),
        ["users", id, "organization_memberships"] => wrapped(memberships_where(&|m| {
            m["public_user_data"]["user_id"] == *id
        })),
        ["organizations"] => wrapped(state.orgs.in_order(oldest_first).collect()),
        ["organizations", id] => state
            .orgs
            .get(id)
            .map_or_else(not_found, |o| json_response(200, o)),
        ["organizations", id, "memberships"] => {
            wrapped(memberships_where(&|m| m["organization"]["id"] == *id))
        }
        ["organization_memberships"] => wrapped(memberships_where(&|_| true)),
        _ => not_found(),
    }
}

impl ClerkApiStandIn {
    /// Starts on `127.0.0.1:0`, accepting `secret` as the only valid key.
    pub async fn start(secret: &str) -> std::io::Result<Self> {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await?, secret)
    }

    /// Starts on `listener`.
    pub fn start_on(listener: TcpListener, secret: &str) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let st = Arc::clone(&state);
        let expected = format!("Bearer {secret}");
        let server = HttpStandIn::serve(listener, move |req: SeenRequest| {
            let st = Arc::clone(&st);
            let authorized = req
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                == Some(expected.as_str());
            async move {
                let is_list = req.query.contains("limit=");
                let (latency, n, limited, fail_from) = {
                    let mut s = st.lock().unwrap();
                    s.requests += 1;
                    if is_list {
                        s.list_requests += 1;
                    }
                    s.started.push(Instant::now());
                    let limited = (s.rate_limited.0 > 0).then_some(s.rate_limited.1);
                    if limited.is_some() {
                        s.rate_limited.0 -= 1;
                    }
                    (s.latency, s.list_requests, limited, s.fail_from)
                };
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                if !authorized {
                    return error(401, "authentication_invalid", "Invalid authentication");
                }
                if let Some(secs) = limited {
                    let mut r = error(429, "too_many_requests", "Too many requests");
                    r.headers_mut()
                        .insert("retry-after", secs.to_string().parse().unwrap());
                    return r;
                }
                if is_list && fail_from.is_some_and(|f| n >= f) {
                    return error(503, "service_unavailable", "Service unavailable");
                }
                if req.method != hyper::Method::GET {
                    return error(405, "method_not_allowed", "GET only here");
                }
                answer(&st.lock().unwrap(), &req)
            }
        });
        Ok(Self { server, state })
    }

    /// `http://127.0.0.1:<port>/v1` (`CLERK_API_URL`).
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.server.base_url())
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// Adds or replaces a user.
    pub fn put_user(&self, user: Value) {
        self.with(|s| s.users.put(user));
    }

    /// Removes a user (as deleted in Clerk).
    pub fn remove_user(&self, id: &str) {
        self.with(|s| s.users.remove(id));
    }

    /// Adds or replaces an organization.
    pub fn put_org(&self, org: Value) {
        self.with(|s| s.orgs.put(org));
    }

    /// Removes an organization.
    pub fn remove_org(&self, id: &str) {
        self.with(|s| s.orgs.remove(id));
    }

    /// Adds or replaces a membership.
    pub fn put_membership(&self, m: Value) {
        self.with(|s| s.memberships.put(m));
    }

    /// Removes a membership by its id.
    pub fn remove_membership(&self, id: &str) {
        self.with(|s| s.memberships.remove(id));
    }

    /// Answers the next `n` requests 429 with `Retry-After: secs`.
    pub fn rate_limit_next(&self, n: u32, retry_after_secs: u64) {
        self.with(|s| s.rate_limited = (n, retry_after_secs));
    }

    /// Answers list requests with 503 after the next `n` (`None`: never); single-resource
    /// reads keep answering.
    pub fn fail_lists_after(&self, n: Option<u64>) {
        self.with(|s| s.fail_from = n.map(|n| s.list_requests + n + 1));
    }

    /// Waits this long before each answer.
    pub fn set_latency(&self, latency: Duration) {
        self.with(|s| s.latency = latency);
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.with(|s| s.requests)
    }

    /// The most requests that started within any `window`.
    pub fn peak_requests_in(&self, window: Duration) -> usize {
        self.with(|s| {
            let t = &s.started;
            let mut best = 0;
            let mut lo = 0;
            for hi in 0..t.len() {
                while t[hi].duration_since(t[lo]) >= window {
                    lo += 1;
                }
                best = best.max(hi - lo + 1);
            }
            best
        })
    }
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_owned()
}
