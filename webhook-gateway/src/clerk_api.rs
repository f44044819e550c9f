//! Clerk's Backend API, behind a small trait ([`ClerkBackend`]) with a reqwest implementation
//! ([`ClerkHttp`]) that keeps to a request rate, honours `Retry-After` on 429, retries 5xx and
//! timeouts with backoff, and stops at once on 401/403.
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

/// One authenticated GET on Clerk's Backend API.
pub trait ClerkBackend: Send + Sync {
    /// `GET {base}{path}?{query}`: the body, or `None` for 404.
    fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> impl Future<Output = Result<Option<Bytes>, ApiError>> + Send;

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
        let mut resp = self
            .http
            .get(url)
            .bearer_auth(self.settings.secret_key.expose())
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
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(format!("body over {MAX_RESPONSE_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, retry_after, Bytes::from(body)))
    }
}

impl ClerkBackend for ClerkHttp {
    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Option<Bytes>, ApiError> {
        let url = format!("{}{path}", self.settings.base_url.trim_end_matches('/'));
        let (mut retries, mut limited) = (0u32, 0u32);
        loop {
            let failure = match self.attempt(&url, query).await {
                Ok((200..=299, _, body)) => return Ok(Some(body)),
                Ok((404, _, _)) => return Ok(None),
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
                        body: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
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

/// Clerk's two list shapes.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ListBody {
    Wrapped { data: Vec<serde_json::Value> },
    Bare(Vec<serde_json::Value>),
}

/// One page of a list, oldest first: the items, each parsed on its own (an item that does not
/// parse is returned as its error, with its id when it has one, so one odd resource does not
/// stop the run), and whether this was the last page.
pub async fn list_page<T: DeserializeOwned>(
    api: &impl ClerkBackend,
    path: &str,
    offset: usize,
    limit: usize,
) -> Result<(Vec<Result<T, Unparsed>>, bool), ApiError> {
    let query = [
        ("limit", limit.to_string()),
        ("offset", offset.to_string()),
        ("order_by", "+created_at".to_owned()),
    ];
    let Some(body) = api.get(path, &query).await? else {
        return Ok((Vec::new(), true));
    };
    let items = match serde_json::from_slice::<ListBody>(&body) {
        Ok(ListBody::Wrapped { data }) | Ok(ListBody::Bare(data)) => data,
        Err(e) => {
            return Err(ApiError::Unreadable {
                path: path.to_owned(),
                reason: format!("not a list: {}", e.classify_name()),
            });
        }
    };
    let last = items.len() < limit;
    Ok((items.into_iter().map(parse_item).collect(), last))
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

/// One resource by path, or `None` for 404.
pub async fn fetch_one<T: DeserializeOwned>(
    api: &impl ClerkBackend,
    path: &str,
) -> Result<Option<Result<T, Unparsed>>, ApiError> {
    let Some(body) = api.get(path, &[]).await? else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| ApiError::Unreadable {
        path: path.to_owned(),
        reason: e.classify_name().to_owned(),
    })?;
    Ok(Some(parse_item(v)))
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
