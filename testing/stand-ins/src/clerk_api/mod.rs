//! Stand-in for Clerk's Backend API (the read endpoints a reconcile uses), answering as
//! Clerk's published specification says (see [`routes`] for what each route answers):
//! `Authorization: Bearer <secret>` or 401; routes under `/v1` only; 404 `resource_not_found`
//! for a missing resource; 422 `form_param_unknown` for a parameter a route does not take;
//! `starting_after` on `GET /v1/users`; `GET /v1/instance`.
//!
//! It records every request (path, decoded query, `Clerk-API-Version` header, status) and its
//! start time (to check a client's rate), and can be told to answer 429 with `Retry-After`, to
//! fail list requests with 503 from some request on, to answer a plain 404 on some paths (a
//! proxy in the way), to delete users or organizations as soon as a page lists them, or to
//! slow down.

mod routes;
mod store;

use crate::http_server::{HttpStandIn, SeenRequest};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Memberships, Ordered};
use tokio::net::TcpListener;

/// The instance a stand-in answers for unless told otherwise.
pub const DEFAULT_INSTANCE: &str = "ins_standin";

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The path as received (`/v1/users`).
    pub path: String,
    /// The query's parameters, decoded, in order.
    pub query: Vec<(String, String)>,
    /// The `Clerk-API-Version` header, if any.
    pub api_version: Option<String>,
    /// The status answered.
    pub status: u16,
}

impl Call {
    /// The names of the query's parameters.
    pub fn parameters(&self) -> Vec<&str> {
        self.query.iter().map(|(k, _)| k.as_str()).collect()
    }
}

struct State {
    users: Ordered,
    orgs: Ordered,
    memberships: Memberships,
    instance_id: String,
    latency: Duration,
    /// Requests answered 429 before normal answers resume, and the `Retry-After` they carry.
    rate_limited: (u32, u64),
    /// From this list request on (1-based), 503; single-resource reads keep answering.
    fail_from: Option<u64>,
    /// Paths (exact, after the host) answered with a plain 404, as a proxy would.
    blocked: Vec<String>,
    /// Users removed right after a `GET /v1/users` page lists them.
    remove_when_listed: Vec<String>,
    /// Organizations removed right after a `GET /v1/organizations` page lists them.
    remove_orgs_when_listed: Vec<String>,
    /// `starting_after` is ignored (a fault on demand: every page is the first).
    ignore_cursor: bool,
    /// Wrapped lists answer empty in this shape (a fault on demand: a proxy or a cache).
    empty_lists: Option<EmptyList>,
    /// Membership lists come ordered by their user's id, not by the membership's creation.
    memberships_by_user: bool,
    list_requests: u64,
    requests: u64,
    started: Vec<Instant>,
    calls: Vec<Call>,
}

/// How [`ClerkApiStandIn::answer_lists_empty`] answers a wrapped list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyList {
    /// `{"data":[]}`: no `total_count`.
    Wrapped,
    /// `[]`.
    Bare,
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
        "banned": false, "locked": false, "deprovisioned": false, "created_at": created_at, "updated_at": updated_at,
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

impl ClerkApiStandIn {
    /// Starts on `127.0.0.1:0`, accepting `secret` as the only valid key.
    pub async fn start(secret: &str) -> std::io::Result<Self> {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await?, secret)
    }

    /// Starts on `listener`.
    pub fn start_on(listener: TcpListener, secret: &str) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(State {
            users: Ordered::default(),
            orgs: Ordered::default(),
            memberships: Memberships::default(),
            instance_id: DEFAULT_INSTANCE.to_owned(),
            latency: Duration::ZERO,
            rate_limited: (0, 0),
            fail_from: None,
            blocked: Vec::new(),
            ignore_cursor: false,
            empty_lists: None,
            memberships_by_user: false,
            remove_when_listed: Vec::new(),
            remove_orgs_when_listed: Vec::new(),
            list_requests: 0,
            requests: 0,
            started: Vec::new(),
            calls: Vec::new(),
        }));
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
                let is_list = routes::is_list(&req.path);
                let (latency, n, limited, fail_from, blocked) = {
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
                    let blocked = s.blocked.contains(&req.path);
                    (s.latency, s.list_requests, limited, s.fail_from, blocked)
                };
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                let response = if blocked {
                    routes::no_route()
                } else if !authorized {
                    routes::error(401, "authentication_invalid", "Invalid authentication")
                } else if let Some(secs) = limited {
                    let mut r = routes::error(429, "too_many_requests", "Too many requests");
                    r.headers_mut()
                        .insert("retry-after", secs.to_string().parse().unwrap());
                    r
                } else if is_list && fail_from.is_some_and(|f| n >= f) {
                    routes::error(503, "service_unavailable", "Service unavailable")
                } else if req.method != hyper::Method::GET {
                    routes::error(405, "method_not_allowed", "GET only here")
                } else {
                    routes::answer(&mut st.lock().unwrap(), &req)
                };
                st.lock().unwrap().calls.push(Call {
                    path: req.path.clone(),
                    query: routes::params(&req.query),
                    api_version: req
                        .headers
                        .get("clerk-api-version")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    status: response.status().as_u16(),
                });
                response
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

    /// The instance `GET /v1/instance` names (the instance of the key).
    pub fn set_instance(&self, id: &str) {
        self.with(|s| s.instance_id = id.to_owned());
    }

    /// Adds or replaces a user.
    pub fn put_user(&self, user: Value) {
        self.with(|s| {
            s.users.put(user);
        });
    }

    /// Removes a user (as deleted in Clerk).
    pub fn remove_user(&self, id: &str) {
        self.with(|s| {
            s.users.remove(id);
        });
    }

    /// Removes each of these users right after a `GET /v1/users` page lists it (deleted in
    /// Clerk while a client pages: the id it would use as its next cursor may be gone).
    pub fn remove_users_when_listed(&self, ids: &[String]) {
        self.with(|s| s.remove_when_listed.extend(ids.iter().cloned()));
    }

    /// Adds or replaces an organization.
    pub fn put_org(&self, org: Value) {
        self.with(|s| {
            s.orgs.put(org);
        });
    }

    /// Removes each of these organizations right after a `GET /v1/organizations` page lists it
    /// (deleted in Clerk while a client pages).
    pub fn remove_orgs_when_listed(&self, ids: &[String]) {
        self.with(|s| s.remove_orgs_when_listed.extend(ids.iter().cloned()));
    }

    /// Removes an organization.
    pub fn remove_org(&self, id: &str) {
        self.with(|s| {
            s.orgs.remove(id);
        });
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

    /// Answers every wrapped list (organizations, memberships) empty, in `shape` (`None`:
    /// as Clerk does), a fault on demand: a proxy or a cache in front of Clerk.
    pub fn answer_lists_empty(&self, shape: Option<EmptyList>) {
        self.with(|s| s.empty_lists = shape);
    }

    /// Ignores `starting_after` on `GET /v1/users` (a fault on demand: every page answers as
    /// the first, as a proxy dropping the parameter or an API version without it would).
    pub fn ignore_cursor(&self, on: bool) {
        self.with(|s| s.ignore_cursor = on);
    }

    /// Orders the membership lists (`/organizations/{id}/memberships`,
    /// `/organization_memberships`) by their user instead of by the membership's creation, even
    /// with `order_by=+created_at`: Clerk's specification names user fields as the sort keys of
    /// these lists, and one reading of it is that `created_at` is the user's.
    pub fn order_memberships_by_user(&self, on: bool) {
        self.with(|s| s.memberships_by_user = on);
    }

    /// Answers requests to exactly `path` (e.g. `/v1/organization_memberships`) with a plain
    /// 404, as a proxy in front of Clerk might.
    pub fn block_path(&self, path: &str) {
        self.with(|s| s.blocked.push(path.to_owned()));
    }

    /// Waits this long before each answer.
    pub fn set_latency(&self, latency: Duration) {
        self.with(|s| s.latency = latency);
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.with(|s| s.requests)
    }

    /// Every request received so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.with(|s| s.calls.clone())
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
