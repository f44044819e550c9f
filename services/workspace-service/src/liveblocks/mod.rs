//! The one Liveblocks client of workspace-service: the calls it makes ([`LiveblocksApi`]),
//! the reqwest implementation with the secret key and timeouts ([`HttpLiveblocks`]), and
//! [`RoomTokens`], which issues room access tokens behind a breaker. The clean-up worker
//! (`workers::liveblocks`) and the `AuthorizeLiveblocksRoom` handler share one instance.

mod gate;
mod http;

pub use gate::Gate;
pub use http::HttpLiveblocks;

use crate::config::LiveblocksArgs;
use crate::domain::room_access::RoomEntry;
use crate::error::Error;
use std::sync::Arc;
use std::time::Duration;

/// What one DELETE call achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// 204: deleted.
    Deleted,
    /// 404: already gone (done as well).
    AlreadyGone,
    /// 429 / 5xx / timeout / connection error: try again, after `after` when the server said so.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// 401 / 403: the secret key is wrong; keep the job until it is fixed.
    KeyRejected { status: u16 },
    /// Another 4xx (e.g. 422): keep the job, back off to the maximum, alert.
    Rejected { status: u16, reason: String },
}

/// What the key check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// The key was accepted.
    Valid,
    /// 401/403: the key is wrong.
    Rejected { status: u16 },
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
    /// 429 / 5xx / timeout / connection error: Liveblocks cannot answer now.
    Unavailable { reason: String },
    /// 401 / 403: the secret key is wrong.
    KeyRejected { status: u16 },
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

/// Issues room access tokens through the shared client; while Liveblocks keeps failing the
/// gate answers UNAVAILABLE at once instead of holding every caller for a timeout.
#[derive(Clone)]
pub struct RoomTokens {
    api: Option<Arc<dyn LiveblocksApi>>,
    gate: Arc<Gate>,
}

impl RoomTokens {
    /// Tokens from `api` (none without a key: every request answers UNAVAILABLE).
    pub fn new(api: Option<Arc<dyn LiveblocksApi>>) -> Self {
        Self {
            api,
            gate: Arc::new(Gate::default()),
        }
    }

    /// An access token for `entry`, or the status to answer.
    pub async fn issue(&self, entry: &RoomEntry) -> Result<AccessToken, Error> {
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
        self.gate
            .record(!matches!(answer, Err(AuthorizeError::Unavailable { .. })));
        match answer {
            Ok(token) => Ok(token),
            Err(AuthorizeError::Unavailable { reason }) => {
                tracing::warn!(%reason, "Liveblocks did not issue a room token");
                Err(Error::Unavailable(
                    "Liveblocks is unavailable: try again shortly",
                ))
            }
            Err(AuthorizeError::KeyRejected { status }) => Err(Error::Internal(format!(
                "Liveblocks rejected LIVEBLOCKS_SECRET_KEY ({status}) for a room token"
            ))),
            Err(AuthorizeError::Rejected { status, reason }) => Err(Error::Internal(format!(
                "Liveblocks refused a room token ({status}): {reason}"
            ))),
        }
    }
}
