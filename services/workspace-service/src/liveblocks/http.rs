//! The Liveblocks REST API over reqwest: one client, the secret key, the timeouts.

use super::{AccessToken, AuthorizeError, Delivery, KeyState, LiveblocksApi, encode_room_id};
use crate::domain::room_access::RoomEntry;
use serde_json::{Map, Value, json};
use std::time::Duration;

/// Longest wait for a room token: a browser is waiting to open the room.
pub const AUTHORIZE_TIMEOUT: Duration = Duration::from_secs(3);

/// The largest answer read from Liveblocks (a token, or an error body).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A 404 that is not Liveblocks' `ROOM_NOT_FOUND`: the URL reaches something else.
const NOT_LIVEBLOCKS: &str = "404 without ROOM_NOT_FOUND: LIVEBLOCKS_API_URL does not reach Liveblocks' REST API (give the bare origin, e.g. https://api.liveblocks.io, without /v2)";

/// Why a redirect (3xx) is a misconfiguration, with where it pointed (a URL, never a key).
fn redirected(status: u16, headers: &reqwest::header::HeaderMap) -> String {
    let to: String = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("nowhere")
        .chars()
        .take(200)
        .collect();
    format!(
        "{status} redirect to {to}: LIVEBLOCKS_API_URL does not reach Liveblocks' REST API itself (redirects are not followed; give the origin that answers, e.g. https://api.liveblocks.io)"
    )
}

/// The real Liveblocks REST API over reqwest.
#[derive(Debug, Clone)]
pub struct HttpLiveblocks {
    client: reqwest::Client,
    base_url: String,
    secret: service_runtime::Secret,
    /// The timeout of a room-token call: [`AUTHORIZE_TIMEOUT`], or `timeout` if shorter.
    authorize_timeout: Duration,
}

impl HttpLiveblocks {
    /// `base_url` like `https://api.liveblocks.io`; each call times out after `timeout`
    /// (room-token calls after [`AUTHORIZE_TIMEOUT`] if that is shorter).
    pub fn new(base_url: &str, secret: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            // A redirect is never followed: reqwest would drop the key on a change of scheme or
            // host (the redirected call then looks like a rejected key) or send it to another
            // host. A 3xx is reported as a wrong LIVEBLOCKS_API_URL instead.
            client: reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            secret: secret.into(),
            authorize_timeout: timeout.min(AUTHORIZE_TIMEOUT),
        })
    }
}

/// `Retry-After` (RFC 9110): delta-seconds, or an HTTP-date counted from now (`None` when it
/// is missing, unreadable or already past: the caller's default applies).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    retry_after_at(headers, std::time::SystemTime::now())
}

fn retry_after_at(
    headers: &reqwest::header::HeaderMap,
    now: std::time::SystemTime,
) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(now).ok().filter(|d| !d.is_zero())
}

/// The body of `POST /v2/authorize-user`: one room, its permissions, and the user's info
/// when the token had any.
fn authorize_body(entry: &RoomEntry) -> Value {
    let info = user_info(entry.name.as_deref(), entry.avatar.as_deref());
    let mut body = json!({
        "userId": entry.user_id,
        "permissions": { entry.room_id.clone(): entry.permissions },
    });
    if !info.is_empty() {
        body["userInfo"] = Value::Object(info);
    }
    body
}

/// The longest `userInfo` Liveblocks takes, in characters of its JSON (its documented limit).
const MAX_USER_INFO: usize = 1024;

/// The user's name and avatar for the room's other users, within Liveblocks' limit: a long
/// avatar URL is left out first (the name is what presence shows), then the name is shortened.
/// Beyond the limit Liveblocks refuses the token, and the user could never enter a room.
fn user_info(name: Option<&str>, avatar: Option<&str>) -> Map<String, Value> {
    let fits = |info: &Map<String, Value>| {
        Value::Object(info.clone()).to_string().chars().count() <= MAX_USER_INFO
    };
    let mut info = Map::new();
    if let Some(name) = name {
        info.insert("name".into(), json!(name));
    }
    if let Some(avatar) = avatar {
        info.insert("avatar".into(), json!(avatar));
        if !fits(&info) {
            info.remove("avatar");
        }
    }
    if let Some(name) = name.filter(|_| !fits(&info)) {
        // The longest beginning of the name that fits, escapes counted.
        info.insert("name".into(), json!(""));
        let mut room =
            MAX_USER_INFO.saturating_sub(Value::Object(info.clone()).to_string().chars().count());
        let mut end = 0;
        for (i, c) in name.char_indices() {
            let cost = json!(c.to_string()).to_string().chars().count() - 2;
            if cost > room {
                break;
            }
            room -= cost;
            end = i + c.len_utf8();
        }
        info.insert("name".into(), json!(&name[..end]));
    }
    info
}

/// The body of an answer, within [`MAX_ANSWER_BYTES`] (empty when it cannot be read).
async fn body_of(resp: reqwest::Response) -> String {
    capped_body::text(resp, MAX_ANSWER_BYTES)
        .await
        .unwrap_or_default()
}

/// The `error` code of a Liveblocks error body (never the whole body; only the characters a
/// code has, so nothing else from the body reaches a log).
fn error_code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("error")?.as_str().map(|s| {
                s.chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .take(80)
                    .collect::<String>()
            })
        })
        .filter(|code| !code.is_empty())
        .unwrap_or_else(|| "no error code".into())
}

#[tonic::async_trait]
impl LiveblocksApi for HttpLiveblocks {
    async fn check_key(&self) -> KeyState {
        let url = format!("{}/v2/rooms?limit=1", self.base_url);
        match self
            .client
            .get(&url)
            .bearer_auth(self.secret.expose())
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => KeyState::Valid,
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => KeyState::Rejected {
                status: r.status().as_u16(),
                code: error_code(&body_of(r).await),
            },
            Ok(r) if r.status().as_u16() == 404 || r.status().is_redirection() => {
                KeyState::WrongUrl {
                    status: r.status().as_u16(),
                }
            }
            Ok(r) => KeyState::Unknown {
                reason: format!("{} from Liveblocks", r.status().as_u16()),
            },
            Err(e) => KeyState::Unknown {
                reason: format!("request failed: {e}"),
            },
        }
    }

    async fn delete_room(&self, room_id: &str) -> Delivery {
        let url = format!("{}/v2/rooms/{}", self.base_url, encode_room_id(room_id));
        let resp = match self
            .client
            .delete(&url)
            .bearer_auth(self.secret.expose())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Delivery::Retry {
                    after: None,
                    reason: format!("request failed: {e}"),
                };
            }
        };
        let status = resp.status().as_u16();
        match status {
            200..=299 => Delivery::Deleted,
            // Like a 404 from something else: nothing was deleted, and asking again would not
            // change where the URL leads.
            300..=399 => Delivery::Rejected {
                status,
                reason: redirected(status, resp.headers()),
            },
            // Only Liveblocks' own "no such room" is done: any other 404 (a path under a wrong
            // base URL, a proxy) would finish every job without deleting anything.
            404 => match capped_body::text(resp, MAX_ANSWER_BYTES).await {
                Ok(body) if error_code(&body) == "ROOM_NOT_FOUND" => Delivery::AlreadyGone,
                Ok(_) => Delivery::Rejected {
                    status,
                    reason: NOT_LIVEBLOCKS.into(),
                },
                // Cut off before it said what it is: asked again, not taken for either.
                Err(e) => Delivery::Retry {
                    after: None,
                    reason: format!("404 whose body could not be read: {e}"),
                },
            },
            401 | 403 => Delivery::KeyRejected {
                status,
                code: error_code(&body_of(resp).await),
            },
            429 => Delivery::RateLimited {
                after: retry_after(resp.headers()),
            },
            500..=599 | 408 => Delivery::Retry {
                after: retry_after(resp.headers()),
                reason: format!("{status} from Liveblocks"),
            },
            _ => Delivery::Rejected {
                status,
                reason: error_code(&body_of(resp).await),
            },
        }
    }

    async fn authorize_user(&self, entry: &RoomEntry) -> Result<AccessToken, AuthorizeError> {
        let url = format!("{}/v2/authorize-user", self.base_url);
        let unavailable = |reason: String| AuthorizeError::Unavailable { reason };
        let resp = self
            .client
            .post(&url)
            .bearer_auth(self.secret.expose())
            .timeout(self.authorize_timeout)
            .json(&authorize_body(entry))
            .send()
            .await
            .map_err(|e| unavailable(format!("request failed: {e}")))?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => {}
            300..=399 => {
                return Err(AuthorizeError::Rejected {
                    status,
                    reason: redirected(status, resp.headers()),
                });
            }
            401 | 403 => {
                return Err(AuthorizeError::KeyRejected {
                    status,
                    code: error_code(&body_of(resp).await),
                });
            }
            429 => {
                return Err(AuthorizeError::RateLimited {
                    retry_after: retry_after(resp.headers()),
                });
            }
            408 | 500..=599 => return Err(unavailable(format!("{status} from Liveblocks"))),
            _ => {
                return Err(AuthorizeError::Rejected {
                    status,
                    reason: error_code(&body_of(resp).await),
                });
            }
        }
        // The body holds the token: it is parsed, never logged.
        let body = capped_body::read(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| unavailable(format!("answer not read: {e}")))?;
        let body: Value = serde_json::from_slice(&body)
            .map_err(|e| unavailable(format!("answer not JSON: {e}")))?;
        match body.get("token").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => Ok(AccessToken::new(t.to_owned())),
            _ => Err(AuthorizeError::Rejected {
                status,
                reason: "the answer holds no token".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: Option<&str>, avatar: Option<&str>) -> RoomEntry {
        RoomEntry {
            room_id: "doc:1".into(),
            user_id: "user_1".into(),
            name: name.map(Into::into),
            avatar: avatar.map(Into::into),
            permissions: crate::domain::room_access::WRITE,
        }
    }

    #[test]
    fn the_body_names_one_room_and_only_the_user_info_the_token_had() {
        assert_eq!(
            authorize_body(&entry(Some("Ada"), Some("https://img/a"))),
            json!({"userId": "user_1", "userInfo": {"name": "Ada", "avatar": "https://img/a"},
                   "permissions": {"doc:1": ["room:write"]}})
        );
        assert_eq!(
            authorize_body(&entry(None, None)),
            json!({"userId": "user_1", "permissions": {"doc:1": ["room:write"]}})
        );
    }

    #[test]
    fn user_info_stays_within_liveblocks_limit() {
        let len =
            |info: &Map<String, Value>| Value::Object(info.clone()).to_string().chars().count();
        let long_url = format!("https://img.example/{}", "a".repeat(1100));
        // A long avatar goes first; the name is kept whole.
        let info = user_info(Some("Ada"), Some(&long_url));
        assert_eq!(Value::Object(info), json!({"name": "Ada"}));
        // A name too long alone is shortened to fit, escapes counted.
        for name in ["é".repeat(2000), "\"\\".repeat(700), "x".repeat(1020)] {
            let info = user_info(Some(&name), Some("https://img/a"));
            assert!(len(&info) <= MAX_USER_INFO, "{}", len(&info));
            assert!(
                len(&info) > MAX_USER_INFO - 8,
                "no more is cut than needed: {}",
                len(&info)
            );
            let kept = info["name"].as_str().unwrap();
            assert!(name.starts_with(kept));
        }
        // What fits is sent as it is.
        let fits = user_info(Some("Ada"), Some("https://img/a"));
        assert_eq!(fits.len(), 2);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let header = |v: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(reqwest::header::RETRY_AFTER, v.parse().unwrap());
            h
        };
        let date = |d: Duration| httpdate::fmt_http_date(now + d);
        assert_eq!(
            retry_after_at(&header("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after_at(&header(&date(Duration::from_secs(120))), now),
            Some(Duration::from_secs(120))
        );
        // The other two date forms RFC 9110 asks recipients to take (`now` is 22:13:20).
        assert_eq!(
            retry_after_at(&header("Tuesday, 14-Nov-23 22:15:20 GMT"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after_at(&header("Tue Nov 14 22:15:20 2023"), now),
            Some(Duration::from_secs(120))
        );
        // Unreadable, or a date not after now: the caller's default.
        for none in ["", "soon", "-5", "Tue, 14 Nov 2023 22:13:20 GMT"] {
            assert_eq!(retry_after_at(&header(none), now), None, "{none:?}");
        }
        assert_eq!(
            retry_after_at(&reqwest::header::HeaderMap::new(), now),
            None
        );
    }

    #[test]
    fn room_ids_are_encoded_like_encode_uri_component() {
        assert_eq!(encode_room_id("doc:0190-ab"), "doc%3A0190-ab");
        assert_eq!(encode_room_id("a b/c"), "a%20b%2Fc");
        assert_eq!(encode_room_id("x!~*'()._"), "x!~*'()._");
    }

    /// Answers one request with `answer` (status line, headers and as much body as it holds),
    /// then closes the connection.
    async fn answer_once(answer: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = s.read(&mut request).await;
            let _ = s.write_all(answer.as_bytes()).await;
        });
        url
    }

    /// A redirect is not followed (it would arrive without the key, or take it elsewhere): it
    /// is a wrong URL for the key check and a permanent refusal for the calls.
    #[tokio::test]
    async fn a_redirect_is_reported_as_a_wrong_url_not_followed() {
        const MOVED: &str = "HTTP/1.1 301 Moved Permanently\r\nlocation: https://127.0.0.1:9/v2/rooms\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let api =
            |url: String| HttpLiveblocks::new(&url, "sk_test", Duration::from_secs(5)).unwrap();
        assert_eq!(
            api(answer_once(MOVED).await).check_key().await,
            KeyState::WrongUrl { status: 301 }
        );
        match api(answer_once(MOVED).await).delete_room("doc:1").await {
            Delivery::Rejected {
                status: 301,
                reason,
            } => {
                assert!(reason.contains("LIVEBLOCKS_API_URL"), "{reason}");
                assert!(reason.contains("https://127.0.0.1:9/v2/rooms"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let entry = entry(None, None);
        match api(answer_once(MOVED).await).authorize_user(&entry).await {
            Err(AuthorizeError::Rejected {
                status: 301,
                reason,
            }) => {
                assert!(reason.contains("LIVEBLOCKS_API_URL"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A 401/403 keeps Liveblocks' `error` code, so the log names the cause (a room refused is
    /// not a wrong key).
    #[tokio::test]
    async fn a_401_or_403_keeps_liveblocks_error_code() {
        const REFUSED: &str = "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: 59\r\nconnection: close\r\n\r\n{\"error\":\"UNAUTHORIZED_ROOM_ACCESS\",\"message\":\"no\\naccess\"}";
        const WRONG_KEY: &str = "HTTP/1.1 401 Unauthorized\r\ncontent-length: 26\r\nconnection: close\r\n\r\n{\"error\":\"WRONG_KEY_USED\"}";
        let api =
            |url: String| HttpLiveblocks::new(&url, "sk_test", Duration::from_secs(5)).unwrap();
        let entry = entry(None, None);
        assert_eq!(
            api(answer_once(REFUSED).await).authorize_user(&entry).await,
            Err(AuthorizeError::KeyRejected {
                status: 403,
                code: "UNAUTHORIZED_ROOM_ACCESS".into()
            })
        );
        assert_eq!(
            api(answer_once(WRONG_KEY).await).delete_room("doc:1").await,
            Delivery::KeyRejected {
                status: 401,
                code: "WRONG_KEY_USED".into()
            }
        );
        assert_eq!(
            api(answer_once(WRONG_KEY).await).check_key().await,
            KeyState::Rejected {
                status: 401,
                code: "WRONG_KEY_USED".into()
            }
        );
    }

    #[tokio::test]
    async fn a_404_is_a_room_gone_only_when_liveblocks_says_so() {
        let delete = |url: String| async move {
            HttpLiveblocks::new(&url, "sk_test", Duration::from_secs(5))
                .unwrap()
                .delete_room("doc:1")
                .await
        };
        let gone = answer_once(
            "HTTP/1.1 404 Not Found\r\ncontent-length: 26\r\nconnection: close\r\n\r\n{\"error\":\"ROOM_NOT_FOUND\"}",
        )
        .await;
        assert_eq!(delete(gone).await, Delivery::AlreadyGone);
        let page = answer_once(
            "HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot here!",
        )
        .await;
        assert!(matches!(
            delete(page).await,
            Delivery::Rejected { status: 404, .. }
        ));
        // The connection closes before the body it announced: asked again, not decided.
        let cut = answer_once(
            "HTTP/1.1 404 Not Found\r\ncontent-length: 500\r\nconnection: close\r\n\r\n{\"error\":\"ROOM_",
        )
        .await;
        assert!(
            matches!(delete(cut).await, Delivery::Retry { .. }),
            "a body cut off is neither gone nor refused"
        );
    }
}
