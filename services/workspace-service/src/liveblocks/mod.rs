//! The one Liveblocks client of workspace-service: the calls it makes ([`LiveblocksApi`]),
//! the reqwest implementation with the secret key and timeouts ([`HttpLiveblocks`]), and
//! [`RoomTokens`], which issues room access tokens behind a breaker. The clean-up worker
//! (`workers::liveblocks`) and the `AuthorizeLiveblocksRoom` handler share one instance.

mod gate;
mod http;
mod lifetime;

pub use gate::Gate;
pub use http::HttpLiveblocks;

use crate::config::LiveblocksArgs;
use crate::domain::room_access::RoomEntry;
use crate::error::Error;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one DELETE call achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// 204: deleted.
    Deleted,
    /// 404: already gone (done as well).
    AlreadyGone,
    /// 5xx / timeout / connection error: try again, after `after` when the server said so.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// 429: Liveblocks is rate-limiting the key; try again after `after` when it said so.
    RateLimited { after: Option<Duration> },
    /// 401 / 403 and Liveblocks' error `code` (e.g. INVALID_SECRET_KEY): usually the secret key
    /// is wrong; keep the job until it is fixed.
    KeyRejected { status: u16, code: String },
    /// Another 4xx (e.g. 422): keep the job, back off to the maximum, alert.
    Rejected { status: u16, reason: String },
}

/// What the key check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// The key was accepted.
    Valid,
    /// 401/403 and Liveblocks' error `code`: the key is wrong.
    Rejected { status: u16, code: String },
    /// 404 or a redirect (3xx) for the rooms listing: `LIVEBLOCKS_API_URL` reaches something
    /// other than Liveblocks' REST API (a path such as `/v2` in it, a proxy, `http://` where
    /// the host redirects to `https://`).
    WrongUrl { status: u16 },
    /// No answer that says either (network, 5xx, 429).
    Unknown { reason: String },
}

/// A Liveblocks access token. Secret: its `Debug` shows no part of it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    /// Wraps a token Liveblocks answered.
    pub fn new(token: String) -> Self {
        Self(token)
    }

    /// How long the token lets its holder in, from its own `exp` (and `iat`), or why that
    /// cannot be told.
    pub fn lifetime(&self, now_unix: u64) -> Result<Duration, &'static str> {
        lifetime::token_lifetime(&self.0, now_unix)
    }

    /// The token, for the answer to the client only.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(..)")
    }
}

/// Why no access token was issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    /// 5xx / 408 / timeout / connection error: Liveblocks cannot answer now.
    Unavailable { reason: String },
    /// 429: Liveblocks answered, but is rate-limiting the project's key; `retry_after` is its
    /// `Retry-After`, when it sent one.
    RateLimited { retry_after: Option<Duration> },
    /// 401 / 403 and Liveblocks' error `code`: the secret key is wrong
    /// (INVALID_SECRET_KEY, WRONG_KEY_USED, ...) or the request was refused for another reason
    /// (e.g. UNAUTHORIZED_ROOM_ACCESS).
    KeyRejected { status: u16, code: String },
    /// Another refusal (e.g. 422 for a request Liveblocks finds invalid) or an answer without a
    /// token.
    Rejected { status: u16, reason: String },
}

/// The Liveblocks calls the service makes.
#[tonic::async_trait]
pub trait LiveblocksApi: Send + Sync + 'static {
    /// Deletes a room.
    async fn delete_room(&self, room_id: &str) -> Delivery;
    /// Tries the key with a cheap authenticated read (`GET /v2/rooms?limit=1`).
    async fn check_key(&self) -> KeyState;
    /// Asks for an access token granting `entry.permissions` on `entry.room_id` only
    /// (`POST /v2/authorize-user`).
    async fn authorize_user(&self, entry: &RoomEntry) -> Result<AccessToken, AuthorizeError>;
}

/// `encodeURIComponent`: keeps `A-Z a-z 0-9 - _ . ! ~ * ' ( )`, escapes everything else.
pub fn encode_room_id(room_id: &str) -> String {
    let mut out = String::with_capacity(room_id.len() * 3);
    for b in room_id.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The client of `args`, or `None` when no secret key is set.
pub fn from_args(args: &LiveblocksArgs) -> anyhow::Result<Option<Arc<dyn LiveblocksApi>>> {
    let Some(secret) = args
        .liveblocks_secret_key
        .as_ref()
        .filter(|s| !s.is_empty())
    else {
        return Ok(None);
    };
    let api = HttpLiveblocks::new(&args.liveblocks_api_url, secret.expose(), args.timeout())?;
    Ok(Some(Arc::new(api)))
}

/// The retry advice for a 429 without `Retry-After`.
pub const RATE_LIMITED_RETRY: Duration = Duration::from_secs(1);
/// The longest retry advice passed on from a `Retry-After`.
pub const RATE_LIMITED_RETRY_MAX: Duration = Duration::from_secs(3600);

/// Liveblocks' error codes that name the secret key itself.
const KEY_CODES: &[&str] = &[
    "INVALID_SECRET_KEY",
    "MISSING_SECRET_KEY",
    "WRONG_KEY_USED",
    "INVALID_PUBLIC_KEY",
];

/// What to tell an operator after a 401/403 with `code`: the key when the code names it, else
/// nothing beyond the code (e.g. UNAUTHORIZED_ROOM_ACCESS is not the key's fault).
pub fn key_hint(code: &str) -> &'static str {
    if KEY_CODES.contains(&code) {
        ": LIVEBLOCKS_SECRET_KEY is wrong, revoked or not the project's secret key"
    } else {
        ""
    }
}

/// Why `RoomTokens::issue` handed out no token.
#[derive(Debug)]
pub enum Refused {
    /// The status to answer.
    Status(Error),
    /// Liveblocks issued a token that may outlive the sweep after a deletion, or whose
    /// lifetime cannot be read: withheld (INTERNAL), counted as `too_long_lived`.
    TooLongLived(String),
}

/// The metric label of a room-token call's result.
pub fn outcome<T>(r: &Result<T, Refused>) -> &'static str {
    match r {
        Ok(_) => "granted",
        Err(Refused::TooLongLived(_)) => "too_long_lived",
        Err(Refused::Status(e)) => match e {
            Error::Denied(_) => "denied",
            Error::NotFound(_) => "not_found",
            Error::Unavailable(_) | Error::Pool(_) => "unavailable",
            Error::RetryAfter { .. } => "rate_limited",
            Error::Invalid(_) => "invalid",
            _ => "error",
        },
    }
}

impl From<Error> for Refused {
    fn from(e: Error) -> Self {
        Self::Status(e)
    }
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Status(e) => e,
            Refused::TooLongLived(message) => Error::Internal(message),
        }
    }
}

/// Issues room access tokens through the shared client; while Liveblocks keeps failing the
/// gate answers UNAVAILABLE at once instead of holding every caller for a timeout. A 429 is
/// not such a failure: Liveblocks answered, and one caller's flood (or a rate limit that lifts
/// within seconds) must not refuse every user's tokens for the gate's cooldown, so its caller
/// is told when to retry and the gate is left as it was. A token is handed out only when its
/// own `exp` shows it living no longer than `longest` (fail closed: the sweep after a deletion
/// must outlive every token issued before it, and Liveblocks publishes no lifetime).
#[derive(Clone)]
pub struct RoomTokens {
    api: Option<Arc<dyn LiveblocksApi>>,
    gate: Arc<Gate>,
    longest: Duration,
}

impl RoomTokens {
    /// Tokens from `api` (none without a key: every request answers UNAVAILABLE), each living
    /// at most `longest` ([`crate::config::CleanupSettings::longest_token`]).
    pub fn new(api: Option<Arc<dyn LiveblocksApi>>, longest: Duration) -> Self {
        Self {
            api,
            gate: Arc::new(Gate::default()),
            longest,
        }
    }

    /// An access token for `entry`, or why none is handed out.
    pub async fn issue(&self, entry: &RoomEntry) -> Result<AccessToken, Refused> {
        let token = self.ask(entry).await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let longest = self.longest.as_secs();
        match token.lifetime(now) {
            Ok(lived) if lived <= self.longest => Ok(token),
            Ok(lived) => {
                let lifetime_secs = lived.as_secs();
                tracing::error!(
                    lifetime_secs,
                    longest_secs = longest,
                    "Liveblocks issued a room token living longer than LIVEBLOCKS_SWEEP_AFTER_SECS allows; withheld"
                );
                Err(Refused::TooLongLived(format!(
                    "Liveblocks issued a room token living {lifetime_secs} s, longer than the {longest} s LIVEBLOCKS_SWEEP_AFTER_SECS allows (it less {}): withheld; raise LIVEBLOCKS_SWEEP_AFTER_SECS to at least {} (deploy/README.md, VBaseLiveblocksTokenTooLongLived)",
                    crate::config::TOKEN_MARGIN_SECS,
                    lifetime_secs + crate::config::TOKEN_MARGIN_SECS
                )))
            }
            Err(why) => {
                tracing::error!(%why, "Liveblocks issued a room token whose lifetime cannot be read; withheld");
                Err(Refused::TooLongLived(format!(
                    "Liveblocks issued a room token whose lifetime cannot be read ({why}): withheld, as it may outlive LIVEBLOCKS_SWEEP_AFTER_SECS"
                )))
            }
        }
    }

    /// Liveblocks' token for `entry`, or the status to answer.
    async fn ask(&self, entry: &RoomEntry) -> Result<AccessToken, Error> {
        let Some(api) = &self.api else {
            return Err(Error::Unavailable(
                "Liveblocks is not configured on this service (LIVEBLOCKS_SECRET_KEY)",
            ));
        };
        if !self.gate.admits() {
            return Err(Error::Unavailable(
                "Liveblocks is unavailable: try again shortly",
            ));
        }
        let answer = api.authorize_user(entry).await;
        match &answer {
            Err(AuthorizeError::RateLimited { .. }) => {}
            Err(AuthorizeError::Unavailable { .. }) => self.gate.record(false),
            _ => self.gate.record(true),
        }
        match answer {
            Ok(token) => Ok(token),
            Err(AuthorizeError::Unavailable { reason }) => {
                tracing::warn!(%reason, "Liveblocks did not issue a room token");
                Err(Error::Unavailable(
                    "Liveblocks is unavailable: try again shortly",
                ))
            }
            Err(AuthorizeError::RateLimited { retry_after }) => {
                let after = retry_after
                    .unwrap_or(RATE_LIMITED_RETRY)
                    .clamp(RATE_LIMITED_RETRY, RATE_LIMITED_RETRY_MAX);
                // Counted (`rate_limited`), not logged at warn: nothing closes the gate here,
                // so a flood of these would be a flood of lines.
                tracing::debug!(?after, "Liveblocks rate-limited a room token (429)");
                Err(Error::RetryAfter {
                    message: "Liveblocks is rate-limiting room tokens",
                    after,
                })
            }
            Err(AuthorizeError::KeyRejected { status, code }) => Err(Error::Internal(format!(
                "Liveblocks refused a room token with {status} {code}{}",
                key_hint(&code)
            ))),
            Err(AuthorizeError::Rejected { status, reason }) => Err(Error::Internal(format!(
                "Liveblocks refused a room token ({status}): {reason}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers every room-token call with `answer`, counting the calls.
    struct Fixed {
        answer: Mutex<Result<AccessToken, AuthorizeError>>,
        calls: Mutex<u32>,
    }

    #[tonic::async_trait]
    impl LiveblocksApi for Fixed {
        async fn delete_room(&self, _: &str) -> Delivery {
            Delivery::Deleted
        }
        async fn check_key(&self) -> KeyState {
            KeyState::Valid
        }
        async fn authorize_user(&self, _: &RoomEntry) -> Result<AccessToken, AuthorizeError> {
            *self.calls.lock().unwrap() += 1;
            self.answer.lock().unwrap().clone()
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// A token shaped like Liveblocks' (claims only; the signature is never read).
    fn jwt(claims: serde_json::Value) -> AccessToken {
        use base64::Engine;
        let part = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        AccessToken::new(format!(
            "{}.{}.sig",
            part(serde_json::json!({"alg": "RS256"})),
            part(claims)
        ))
    }

    #[tokio::test]
    async fn a_token_is_handed_out_only_when_its_exp_is_within_the_bound() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        for (claims, handed_out) in [
            (serde_json::json!({"iat": now, "exp": now + 3600}), true),
            (serde_json::json!({"exp": now + 3590}), true),
            (serde_json::json!({"iat": now, "exp": now + 3601}), false),
            (serde_json::json!({"iat": now, "exp": now + 7200}), false),
            (serde_json::json!({"iat": now}), false),
        ] {
            let api = Arc::new(Fixed {
                answer: Mutex::new(Ok(jwt(claims.clone()))),
                calls: Mutex::new(0),
            });
            let tokens = RoomTokens::new(Some(api as Arc<dyn LiveblocksApi>), HOUR);
            match tokens.issue(&entry()).await {
                Ok(_) => assert!(handed_out, "{claims} handed out"),
                Err(Refused::TooLongLived(m)) => {
                    assert!(!handed_out, "{claims} withheld: {m}");
                    assert!(m.contains("LIVEBLOCKS_SWEEP_AFTER_SECS"), "{m}");
                    assert!(!m.contains("eyJ"), "no token in {m}");
                }
                Err(other) => panic!("{other:?}"),
            }
        }
    }

    fn entry() -> RoomEntry {
        RoomEntry {
            room_id: "doc:1".into(),
            user_id: "user_1".into(),
            name: None,
            avatar: None,
            permissions: crate::domain::room_access::WRITE,
        }
    }

    #[tokio::test]
    async fn a_refusal_names_liveblocks_error_code() {
        for (code, names_key) in [
            ("UNAUTHORIZED_ROOM_ACCESS", false),
            ("INVALID_SECRET_KEY", true),
        ] {
            let api = Arc::new(Fixed {
                answer: Mutex::new(Err(AuthorizeError::KeyRejected {
                    status: 403,
                    code: code.into(),
                })),
                calls: Mutex::new(0),
            });
            let tokens = RoomTokens::new(Some(api as Arc<dyn LiveblocksApi>), HOUR);
            match tokens.issue(&entry()).await.map_err(Error::from) {
                Err(Error::Internal(m)) => {
                    assert!(m.contains(&format!("403 {code}")), "{m}");
                    assert_eq!(m.contains("LIVEBLOCKS_SECRET_KEY"), names_key, "{m}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_429_tells_its_caller_when_to_retry_and_leaves_the_gate_open() {
        let api = Arc::new(Fixed {
            answer: Mutex::new(Err(AuthorizeError::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
            })),
            calls: Mutex::new(0),
        });
        let tokens = RoomTokens::new(Some(api.clone() as Arc<dyn LiveblocksApi>), HOUR);
        for _ in 0..2 * gate::FAILURES {
            let status =
                tonic::Status::from(Error::from(tokens.issue(&entry()).await.unwrap_err()));
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert_eq!(status.metadata().get("retry-after").unwrap(), "7");
        }
        assert_eq!(*api.calls.lock().unwrap(), 2 * gate::FAILURES);
        // Without Retry-After: a second.
        *api.answer.lock().unwrap() = Err(AuthorizeError::RateLimited { retry_after: None });
        let status = tonic::Status::from(Error::from(tokens.issue(&entry()).await.unwrap_err()));
        assert_eq!(status.metadata().get("retry-after").unwrap(), "1");

        // 5xx and timeouts still close it.
        *api.answer.lock().unwrap() = Err(AuthorizeError::Unavailable {
            reason: "503".into(),
        });
        for _ in 0..gate::FAILURES {
            tokens.issue(&entry()).await.unwrap_err();
        }
        let before = *api.calls.lock().unwrap();
        tokens.issue(&entry()).await.unwrap_err();
        assert_eq!(*api.calls.lock().unwrap(), before, "the gate answered");
    }
}
