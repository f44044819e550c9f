//! What `WorkspaceService` answers on the wire: the generated server for the unary methods,
//! the watches from encoded frames ([`super::watch`]), and before either each user's quotas:
//! reads per minute (`USER_READS_PER_MINUTE`), Liveblocks room tokens per minute
//! (`USER_ROOM_TOKENS_PER_MINUTE`), watch opens per minute (`USER_WATCH_OPENS_PER_MINUTE`),
//! calls in flight (`USER_CALLS_IN_FLIGHT`, held until the answer has been sent) and the size
//! of a request ([`MAX_USER_REQUEST`]). Writes per minute are the server's
//! (`USER_WRITES_PER_MINUTE`). Internal callers are not limited here.

use super::WorkspaceApi;
use super::watch::{self, Kind};
use crate::live::watch::Live;
use service_runtime::user_quotas::UserRate;
use service_runtime::{UserQuotas, WithUserQuotas};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use token_auth::Principal;
use tonic::server::NamedService;
use tower::Service;
use vbase_proto::workspace::v1::workspace_service_server::WorkspaceServiceServer;

/// The largest request a user may send: a message body ([`MAX_BODY_BYTES`]) and its fields
/// fit many times over.
///
/// [`MAX_BODY_BYTES`]: crate::domain::messages::MAX_BODY_BYTES
pub const MAX_USER_REQUEST: usize = 64 * 1024;

/// The largest request the unary methods of `WorkspaceService` decode, from any caller (users
/// are held to [`MAX_USER_REQUEST`] before that). The largest legitimate ones are the
/// gateway's: `CompareWorkspaces`/`CompareMemberships` pages (at most 500 items,
/// `CLERK_API_PAGE_SIZE`; about 1.3 MiB when every field is as long as the service accepts),
/// and a command copied from a webhook body of up to 1 MiB, which must decode to be refused as
/// INVALID_ARGUMENT. The watches read their request themselves (at most 4 KiB).
pub const MAX_REQUEST: usize = 2 * 1024 * 1024;

/// The methods that read: their calls count against `USER_READS_PER_MINUTE`.
pub const READ_METHODS: &[&str] = &[
    "GetWorkspace",
    "ListMembers",
    "ListChannels",
    "ListMessages",
    "GetUnreadCounts",
    "ListRooms",
    "ListRoomItems",
    "ListMeetings",
];

/// The methods that ask Liveblocks for a room token: their calls count against
/// `USER_ROOM_TOKENS_PER_MINUTE`, since each is a call to Liveblocks under the project's one key
/// (whose rate limit every user's tokens and the room clean-up share).
pub const ROOM_TOKEN_METHODS: &[&str] = &["AuthorizeLiveblocksRoom"];

/// Each user's quotas of one replica.
pub struct Quotas {
    /// Of the unary calls: rates per method, calls in flight, the request's size.
    pub calls: UserQuotas,
    pub watch_opens: UserRate,
}

impl Quotas {
    /// From the settings.
    pub fn new(limits: &crate::config::CallLimitArgs) -> Self {
        Self {
            calls: UserQuotas::new(&limits.quotas, READ_METHODS, MAX_USER_REQUEST).with_rate(
                ROOM_TOKEN_METHODS,
                UserRate::per_minute(limits.user_room_tokens_per_minute, "room tokens"),
            ),
            watch_opens: UserRate::per_minute(limits.user_watch_opens_per_minute, "watch opens"),
        }
    }
}

/// The service as served.
#[derive(Clone)]
pub struct Routes {
    unary: WithUserQuotas<WorkspaceServiceServer<WorkspaceApi>>,
    live: Live,
    watch_opens: Arc<UserRate>,
    access: crate::domain::standing::AccessCache,
    roles: crate::domain::roles::Roles,
}

impl Routes {
    /// `api`'s methods, the watches of `live`, under `quotas`.
    pub fn new(api: WorkspaceApi, live: Live, quotas: Quotas) -> Self {
        Self {
            access: api.access().clone(),
            roles: api.roles().clone(),
            unary: WithUserQuotas::new(
                WorkspaceServiceServer::new(api).max_decoding_message_size(MAX_REQUEST),
                quotas.calls,
            ),
            live,
            watch_opens: Arc::new(quotas.watch_opens),
        }
    }
}

impl NamedService for Routes {
    const NAME: &'static str = crate::SERVICE_NAME;
}

type Answer = http::Response<tonic::body::Body>;

impl Service<http::Request<tonic::body::Body>> for Routes {
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        req.extensions_mut().insert(self.access.clone());
        let method = req.uri().path().rsplit_once('/').map_or("", |(_, m)| m);
        let kind = match method {
            "WatchChannel" => Kind::Channel,
            "WatchWorkspace" => Kind::Workspace,
            _ => return self.unary.call(req),
        };
        if let Some(Principal::User(u)) = req.extensions().get::<Principal>()
            && let Err(status) = self.watch_opens.check(&u.user_id)
        {
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let (live, roles) = (self.live.clone(), self.roles.clone());
        Box::pin(async move { Ok(watch::serve(live, kind, req, roles).await) })
    }
}
