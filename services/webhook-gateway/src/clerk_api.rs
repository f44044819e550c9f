//! Clerk's Backend API, behind a small trait ([`ClerkBackend`]) with a reqwest implementation
//! ([`ClerkHttp`]) that pins the API version (`Clerk-API-Version`), keeps to a request rate,
//! honours `Retry-After` on 429, retries 5xx and timeouts with backoff, and stops at once on
//! 401/403.
//!
//! Any answer other than 2xx is an [`ApiError`]: a listing that cannot be trusted must never
//! read as "complete and empty". Only [`fetch_one`] reads one answer as "gone": a 404 whose
//! body carries Clerk's `resource_not_found` error code, which Clerk sends for a missing
//! resource; a 404 without it (a wrong `CLERK_API_URL`, a proxy) is an error like any other.
//!
//! The reconciler reads typed resources through [`list_page`] and [`fetch_one`], which parse
//! Clerk's list shapes (`GET /users` answers a bare array, the other lists `{data, total_count}`)
//! into the same structs the webhooks use.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use service_runtime::Secret;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The Backend API version this client speaks (the specification it was checked against),
/// sent as `Clerk-API-Version` on every request.
pub const API_VERSION: &str = "2026-05-12";
/// Largest accepted response body (500 users of a few KiB each fit many times over).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Longest `Retry-After` honoured; a longer one waits this long, then asks again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// 429 answers in a row after which the run stops.
pub const MAX_RATE_LIMITED_IN_A_ROW: u32 = 20;

/// Why a request to Clerk failed for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 401/403: the secret key is wrong or lacks access. The run stops.
    #[error(
        "Clerk refused the secret key ({status} on {path}): check CLERK_SECRET_KEY is this instance's sk_... key"
    )]
    Unauthorized { status: u16, path: String },
    /// 5xx, timeouts or connection errors outlasted the retry budget, or 429 did.
    #[error("Clerk did not answer {path} after {attempts} attempts: {last}")]
    Exhausted {
        path: String,
        attempts: u32,
        last: String,
    },
    /// 404; with `resource_not_found`, Clerk's own answer for a missing resource. Without it,
    /// the address is not Clerk's Backend API as expected.
    #[error("{}", not_found_text(.path, *.resource_not_found))]
    NotFound {
        path: String,
        resource_not_found: bool,
    },
    /// Another status, not worth a retry (for example 422 for a bad parameter).
    #[error("Clerk answered {status} on {path}: {body}")]
    Refused {
        status: u16,
        path: String,
        body: String,
    },
    /// The body is not the shape Clerk documents.
    #[error("Clerk's answer on {path} is not readable: {reason}")]
    Unreadable { path: String, reason: String },
}

fn not_found_text(path: &str, resource_not_found: bool) -> String {
    if resource_not_found {
        format!("Clerk answered 404 resource_not_found on {path}")
    } else {
        format!(
            "Clerk answered 404 on {path} without Clerk's resource_not_found code: \
             check CLERK_API_URL is Clerk's Backend API with its version path (https://api.clerk.com/v1)"
        )
    }
}

impl ApiError {
    /// The same error, said of a list request: any error there stops the run before anything
    /// is deleted.
    pub fn on_list(self) -> Self {
        match self {
            ApiError::NotFound { path, .. } => ApiError::Refused {
                status: 404,
                path: path.clone(),
                body: format!(
                    "a list answered 404, so the listing cannot be trusted: check CLERK_API_URL \
                     is Clerk's Backend API with its version path (https://api.clerk.com/v1); \
                     nothing is deleted ({path})"
                ),
            },
            e => e,
        }
    }
}

/// One authenticated GET on Clerk's Backend API.
pub trait ClerkBackend: Send + Sync {
    /// `GET {base}{path}?{query}`: the body of a 2xx answer; any other answer is an error.
    fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> impl Future<Output = Result<Bytes, ApiError>> + Send;

    /// Requests sent so far (retries included).
    fn requests(&self) -> u64;
}

/// At most `max` requests start in any window of `period`: a sliding log of start times, so
/// the limit holds over every window, not only aligned ones (a token bucket would let a full
/// burst follow a full window).
#[derive(Debug)]
pub struct RateWindow {
    max: usize,
    period: Duration,
    starts: Mutex<VecDeque<Instant>>,
}

impl RateWindow {
    /// A window admitting `max` (at least 1) starts per `period`.
    pub fn new(max: usize, period: Duration) -> Self {
        Self {
            max: max.max(1),
            period,
            starts: Mutex::new(VecDeque::new()),
        }
    }

    /// Waits until one more request may start, and records it.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut starts = self.starts.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                while starts
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.period)
                {
                    starts.pop_front();
                }
                if starts.len() < self.max {
                    starts.push_back(now);
                    return;
                }
                self.period - now.duration_since(starts[0])
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Settings of [`ClerkHttp`].
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// e.g. `https://api.clerk.com/v1` (no trailing slash needed).
    pub base_url: String,
    pub secret_key: Secret,
    /// Requests per window.
    pub max_requests: usize,
    pub window: Duration,
    /// Retries of a 5xx or timeout (after the first attempt).
    pub max_retries: u32,
    /// First backoff; doubled per retry, at most 30 s.
    pub retry_base: Duration,
    /// Deadline of one request.
    pub timeout: Duration,
}

/// Clerk's Backend API over HTTPS.
#[derive(Debug)]
pub struct ClerkHttp {
    http: reqwest::Client,
    settings: HttpSettings,
    window: RateWindow,
    sent: AtomicU64,
}

impl ClerkHttp {
    /// A client; fails when the URL is not https (http only on loopback).
    pub fn new(settings: HttpSettings) -> Result<Self, String> {
        if !token_auth::acceptable_jwks_url(&settings.base_url) {
            return Err(format!(
                "CLERK_API_URL {:?} must be an https URL (http only on localhost)",
                settings.base_url
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            http,
            window: RateWindow::new(settings.max_requests, settings.window),
            settings,
            sent: AtomicU64::new(0),
        })
    }

    fn backoff(&self, retry: u32) -> Duration {
        self.settings
            .retry_base
            .saturating_mul(1 << retry.min(16))
            .min(Duration::from_secs(30))
    }

    /// One attempt: the status, `Retry-After` and the body (capped).
    async fn attempt(
        &self,
        url: &str,
        query: &[(&str, String)],
    ) -> Result<(u16, Option<Duration>, Bytes), String> {
        self.window.acquire().await;
        self.sent.fetch_add(1, Ordering::Relaxed);
        let url =
            reqwest::Url::parse_with_params(url, query).map_err(|e| format!("request URL: {e}"))?;
        let resp = self
            .http
            .get(url)
            .bearer_auth(self.settings.secret_key.expose())
            .header("Clerk-API-Version", API_VERSION)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = capped_body::read(resp, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, retry_after, body))
    }
}

/// Whether a body is Clerk's error shape (`{"errors": [{"code": ...}]}`) naming `code`.
pub fn has_error_code(body: &[u8], code: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: Option<String>,
    }
    serde_json::from_slice::<Errors>(body)
        .is_ok_and(|e| e.errors.iter().any(|x| x.code.as_deref() == Some(code)))
}

/// The start of a body, for an error message.
fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

impl ClerkBackend for ClerkHttp {
    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Bytes, ApiError> {
        let url = format!("{}{path}", self.settings.base_url.trim_end_matches('/'));
        let (mut retries, mut limited) = (0u32, 0u32);
        loop {
            let failure = match self.attempt(&url, query).await {
                Ok((200..=299, _, body)) => return Ok(body),
                Ok((404, _, body)) => {
                    return Err(ApiError::NotFound {
                        path: path.to_owned(),
                        resource_not_found: has_error_code(&body, "resource_not_found"),
                    });
                }
                Ok((status @ (401 | 403), _, _)) => {
                    return Err(ApiError::Unauthorized {
                        status,
                        path: path.to_owned(),
                    });
                }
                Ok((429, retry_after, _)) => {
                    limited += 1;
                    if limited > MAX_RATE_LIMITED_IN_A_ROW {
                        return Err(ApiError::Exhausted {
                            path: path.to_owned(),
                            attempts: retries + limited,
                            last: "429 Too Many Requests".into(),
                        });
                    }
                    let wait = retry_after
                        .unwrap_or(Duration::from_secs(1))
                        .min(MAX_RETRY_AFTER);
                    tracing::warn!(
                        path,
                        wait_secs = wait.as_secs(),
                        "Clerk answered 429; waiting as told"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Ok((status @ 500..=599, _, _)) => format!("{status}"),
                Ok((status, _, body)) => {
                    return Err(ApiError::Refused {
                        status,
                        path: path.to_owned(),
                        body: snippet(&body),
                    });
                }
                Err(e) => e,
            };
            limited = 0;
            if retries >= self.settings.max_retries {
                return Err(ApiError::Exhausted {
                    path: path.to_owned(),
                    attempts: retries + 1,
                    last: failure,
                });
            }
            let wait = self.backoff(retries);
            tracing::warn!(
                path,
                failure,
                retry_in_ms = wait.as_millis() as u64,
                "Clerk request failed; retrying"
            );
            tokio::time::sleep(wait).await;
            retries += 1;
        }
    }

    fn requests(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Whether Clerk answers the list at `path` with a bare array: `GET /users` does; every other
/// list we read answers `{data, total_count}`.
fn answers_bare(path: &str) -> bool {
    path == "/users"
}

/// Clerk's two list shapes.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ListBody {
    Wrapped {
        data: Vec<serde_json::Value>,
        total_count: Option<i64>,
    },
    Bare(Vec<serde_json::Value>),
}

/// How a list request asks for its page: each endpoint takes only the parameters Clerk
/// documents for it (an undocumented one may answer 422 `form_param_unknown`).
#[derive(Debug, Clone)]
pub struct ListQuery<'a> {
    /// Items per page (1 to 500).
    pub limit: usize,
    /// Where the page starts.
    pub start: Start<'a>,
    /// `order_by=+created_at` (oldest first), for the endpoints that document `order_by`.
    pub oldest_first: bool,
    /// Further documented parameters (a filter such as `user_id`).
    pub filter: &'a [(&'a str, String)],
}

/// Where a page starts.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// `offset` (organizations and memberships: their lists have no cursor).
    Offset(usize),
    /// `starting_after` the id of the previous page's last item (`GET /users`, which
    /// documents it for the `created_at` orderings); `None` for the first page.
    After(Option<&'a str>),
}

/// One page of a list.
#[derive(Debug)]
pub struct ListPage<T> {
    /// The items, each parsed on its own (an item that does not parse is returned as its
    /// error, with its id when it has one, so one odd resource does not stop the run).
    pub items: Vec<Result<T, Unparsed>>,
    /// Fewer items than asked for: the last page.
    pub last: bool,
    /// The id of the page's last item (the next cursor).
    pub last_id: Option<String>,
    /// The ids of the items before the last, in order: earlier cursors, should Clerk refuse
    /// the last (its user deleted since).
    pub earlier_ids: Vec<String>,
}

/// One page of the list at `path`, as `q` asks. Any answer other than 2xx is an error: a list
/// that cannot be read must never read as empty (a listing reports it through
/// [`ApiError::on_list`]).
pub async fn list_page<T: DeserializeOwned>(
    api: &impl ClerkBackend,
    path: &str,
    q: &ListQuery<'_>,
) -> Result<ListPage<T>, ApiError> {
    let mut query = vec![("limit", q.limit.to_string())];
    match q.start {
        Start::Offset(offset) => query.push(("offset", offset.to_string())),
        Start::After(Some(id)) => query.push(("starting_after", id.to_owned())),
        Start::After(None) => {}
    }
    if q.oldest_first {
        query.push(("order_by", "+created_at".to_owned()));
    }
    query.extend(q.filter.iter().map(|(k, v)| (*k, v.clone())));
    let body = api.get(path, &query).await?;
    let unreadable = |reason: String| ApiError::Unreadable {
        path: path.to_owned(),
        reason,
    };
    let (items, total) = match serde_json::from_slice::<ListBody>(&body) {
        Ok(ListBody::Wrapped { data, total_count }) => (data, Some(total_count)),
        Ok(ListBody::Bare(data)) if answers_bare(path) => (data, None),
        Ok(ListBody::Bare(_)) => {
            return Err(unreadable(
                "a bare list where Clerk answers {data, total_count}".into(),
            ));
        }
        Err(e) => return Err(unreadable(format!("not a list: {}", e.classify_name()))),
    };
    let last = items.len() < q.limit;
    // A wrapped list states its length: a body without it, or a last page that ends before it
    // (`{"data":[]}` from a proxy or a cache), is not Clerk's answer and must never read as
    // "nothing there".
    if let Some(total) = total {
        let total = total
            .filter(|t| *t >= 0)
            .ok_or_else(|| unreadable("a list without a total_count".into()))?;
        let offset = match q.start {
            Start::Offset(o) => o,
            Start::After(_) => 0,
        };
        if last && ((offset + items.len()) as i64) < total {
            return Err(unreadable(format!(
                "a last page ending at {} of a list of total_count {total}",
                offset + items.len()
            )));
        }
    }
    let id_of = |v: &serde_json::Value| v.get("id").and_then(|i| i.as_str()).map(str::to_owned);
    let last_id = items.last().and_then(id_of);
    let earlier_ids = items
        .split_last()
        .map(|(_, earlier)| earlier.iter().filter_map(id_of).collect())
        .unwrap_or_default();
    Ok(ListPage {
        items: items.into_iter().map(parse_item).collect(),
        last,
        last_id,
        earlier_ids,
    })
}

/// A listed resource that did not parse.
#[derive(Debug, Clone)]
pub struct Unparsed {
    /// Its `id`, when it has one.
    pub id: Option<String>,
    /// What is wrong (no values quoted).
    pub reason: String,
}

fn parse_item<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, Unparsed> {
    let id = v.get("id").and_then(|i| i.as_str()).map(str::to_owned);
    serde_json::from_value(v).map_err(|e| Unparsed {
        id,
        reason: crate::clerk::describe(&e),
    })
}

/// One resource by path, or `None` when Clerk answers that it does not exist (404 with
/// `resource_not_found`). Any other answer but 2xx is an error.
pub async fn fetch_one<T: DeserializeOwned>(
    api: &impl ClerkBackend,
    path: &str,
) -> Result<Option<Result<T, Unparsed>>, ApiError> {
    let body = match api.get(path, &[]).await {
        Ok(body) => body,
        Err(ApiError::NotFound {
            resource_not_found: true,
            ..
        }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| ApiError::Unreadable {
        path: path.to_owned(),
        reason: e.classify_name().to_owned(),
    })?;
    Ok(Some(parse_item(v)))
}

/// `GET /instance`: the instance the secret key belongs to.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Instance {
    /// `ins_...`
    pub id: String,
    /// `development` or `production`.
    #[serde(default)]
    pub environment_type: Option<String>,
}

/// Asks Clerk which instance the secret key belongs to.
pub async fn instance(api: &impl ClerkBackend) -> Result<Instance, ApiError> {
    let body = api.get("/instance", &[]).await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::Unreadable {
        path: "/instance".into(),
        reason: e.classify_name().to_owned(),
    })
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not valid JSON",
            serde_json::error::Category::Data => "unexpected shape",
            serde_json::error::Category::Eof => "ends early",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clerks_own_not_found_reads_as_gone() {
        let clerk = br#"{"errors":[{"message":"not found","long_message":"No user was found","code":"resource_not_found"}],"clerk_trace_id":"t"}"#;
        assert!(has_error_code(clerk, "resource_not_found"));
        for other in [
            &b"404 page not found"[..],
            br#"{"errors":[{"message":"x","long_message":"x","code":"form_param_unknown"}]}"#,
            br#"{"error":"resource_not_found"}"#,
            b"",
        ] {
            assert!(!has_error_code(other, "resource_not_found"));
        }
        let e = ApiError::NotFound {
            path: "/users".into(),
            resource_not_found: false,
        }
        .on_list();
        let text = e.to_string();
        assert!(
            text.contains("404") && text.contains("/users") && text.contains("CLERK_API_URL"),
            "{text}"
        );
    }
}
