//! `vbase.workspace.v1.WorkspaceService`: each handler checks its request into a typed input
//! ([`convert`]), takes a connection, calls the domain and maps the result. The trait impl
//! here only routes each method to its resource's handler; [`routes::Routes`] puts the
//! watches (served from encoded frames) and each user's quotas in front of it.

/// Runs a read RPC's `$body` (a future using `$conn: &mut AsyncPgConnection` and
/// `$who: &Caller`) for caller `$caller`, whose read must see `$reading.seen`, on `$api.$pool` (`reads`, or
/// `hot` for statements whose best plan does not depend on their parameters): on the replica
/// while it keeps up and has replayed it, else on the primary; a read that fails on the
/// replica for a lost connection or a conflict with recovery runs again on the primary
/// (`service_runtime::replica::read_again_on_primary`). Read on the replica, a user's access
/// is decided by the access cache or on the primary, never on the replica's rows (which may
/// predate a revocation): a user this replica has no access cache for reads the primary from
/// the start, and one the cache misses is read again there (`Error::OnPrimary`). A macro, not
/// a function taking an async closure: the handlers' futures must be `Send` for every
/// lifetime, which such a closure cannot promise.
macro_rules! read_on {
    ($api:expr, $pool:ident, $caller:expr, $reading:expr, |$conn:ident, $who:ident| $body:expr) => {{
        use service_runtime::lent::Lent;
        let caller: $crate::domain::access::Caller = $caller;
        let reading: $crate::grpc::Reading = $reading;
        // Without a replica every read is the primary's: no need to ask the cache here.
        let deciding = $api.$pool.has_replica() && caller.decides_on_primary();
        let (replica_or_primary, on_replica) = if deciding {
            $api.$pool.get_deciding().await
        } else {
            $api.$pool.get_routed(reading.seen.as_ref()).await
        }
        .map_err($crate::error::Error::from)?;
        let mut lent = Lent::new(replica_or_primary, reading.turn.clone());
        let first = {
            let $who = &if on_replica {
                caller.clone().reading_replica()
            } else {
                caller.clone()
            };
            let $conn: &mut diesel_async::AsyncPgConnection = &mut lent;
            $body.await
        };
        lent.returned();
        match first {
            Err(e) if on_replica && service_runtime::replica::read_again_on_primary(&e) => {
                let primary = $api
                    .$pool
                    .primary_after_replica_error(&e)
                    .await
                    .map_err($crate::error::Error::from)?;
                let mut lent = Lent::new(primary, reading.turn);
                let $who = &caller;
                let again = {
                    let $conn: &mut diesel_async::AsyncPgConnection = &mut lent;
                    $body.await
                };
                lent.returned();
                again
            }
            answer => answer,
        }
    }};
}

mod channels;
pub mod convert;
mod items;
mod meetings;
mod messages;
pub mod policy;
mod reconcile;
mod room_access;
mod rooms;
pub mod routes;
mod sync;
mod watch;
mod workspaces;

use crate::domain::Outcome;
use crate::domain::access::Caller;
use crate::domain::channels::ChannelList;
use crate::domain::roles::Roles;
use crate::domain::standing::AccessCache;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::workers::Wakes;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::Object;
use service_runtime::Pool;
use service_runtime::replica::{Lsn, OwnWrites, ReadPool};
use service_runtime::user_quotas::Turn;
use std::future::Future;
use token_auth::Principal;
use tonic::{Request, Response, Status};
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::workspace_service_server::WorkspaceService;

pub use policy::policy;

/// What a handler answers.
type R<T> = Result<Response<T>, Status>;

fn ok<T>(t: T) -> R<T> {
    Ok(Response::new(t))
}

/// Whose writes a caller's reads must see: `user:<id>` or `service:<subject>`.
fn subject<T>(req: &Request<T>) -> Option<String> {
    match req.extensions().get::<Principal>()? {
        Principal::User(u) => Some(format!("user:{}", u.user_id)),
        Principal::Service(s) => Some(format!("service:{}", s.name)),
    }
}

/// What the hot reads use: a pool whose statements keep one plan ([`crate::READ_PLANS`]), with
/// its replica's pool asking for the same plans, and the replica's access and channel caches.
pub struct HotReads {
    pub pool: ReadPool,
    pub access: AccessCache,
    pub channels: ChannelList,
}

/// Where the other reads go: the primary's pool (the service's own) and the replica's, and
/// the LSN of each caller's last write here, which their reads wait for.
pub struct Reads {
    pub pool: ReadPool,
    pub own_writes: OwnWrites,
}

/// The service implementation.
#[derive(Clone)]
pub struct WorkspaceApi {
    pool: Pool,
    /// The pool of the hot reads, whose statements keep one plan ([`crate::READ_PLANS`]).
    hot: ReadPool,
    /// The read RPCs' pool: the replica's while it keeps up, else the primary's.
    reads: ReadPool,
    /// Each caller's last write here (only while a replica is configured).
    own_writes: OwnWrites,
    ledger: delivery_ledger::Ledger,
    metrics: Metrics,
    wakes: Wakes,
    /// Liveblocks room tokens (the shared client behind a breaker).
    room_tokens: crate::liveblocks::RoomTokens,
    /// Bytes one answer may carry (`RESPONSE_MAX_BYTES`).
    response_bytes: usize,
    /// The replica's access cache (callers find it in their request's extensions).
    access: AccessCache,
    /// The replica's cache of each workspace's channels.
    channels: ChannelList,
    /// What each organization role may do (`ORG_ADMIN_ROLES`, `ORG_EDITOR_ROLES`).
    roles: Roles,
}

impl WorkspaceApi {
    /// Creates the handler set; `wakes` tell the workers when Liveblocks rooms or a purge are
    /// queued; `room_tokens` issues Liveblocks room tokens; pages carry at most
    /// `response_bytes`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Pool,
        reads: Reads,
        hot: HotReads,
        ledger: delivery_ledger::Ledger,
        metrics: Metrics,
        wakes: Wakes,
        room_tokens: crate::liveblocks::RoomTokens,
        response_bytes: usize,
        roles: Roles,
    ) -> Self {
        let HotReads {
            pool: hot,
            access,
            channels,
        } = hot;
        let Reads {
            pool: reads,
            own_writes,
        } = reads;
        Self {
            pool,
            hot,
            reads,
            own_writes,
            ledger,
            metrics,
            wakes,
            room_tokens,
            response_bytes,
            access,
            channels,
            roles,
        }
    }

    /// The replica's access cache.
    pub fn access(&self) -> &AccessCache {
        &self.access
    }

    /// What each organization role may do.
    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    /// The verified caller and the request checked into `I`.
    fn accept<T, I>(&self, req: Request<T>) -> Result<(Caller, I), Status>
    where
        I: TryFrom<T, Error = Error>,
    {
        let caller = Caller::from_principal(req.extensions().get::<Principal>(), &self.roles)?
            .with_access(req.extensions().get::<AccessCache>());
        Ok((caller, I::try_from(req.into_inner())?))
    }

    /// Forgets this replica's cached access to `org` (after a write to it here, so this
    /// replica reads it back at once; the others hear it from PostgreSQL).
    fn forget_org(&self, org: &str) {
        self.access.invalidate_where(|(o, _)| o == org);
    }

    /// A pooled connection for one request.
    async fn conn(&self) -> Result<Object<AsyncPgConnection>, Error> {
        Ok(self.pool.get().await?)
    }

    /// The caller, the request checked into `I`, and what its read must see and holds, for a
    /// read RPC.
    fn accept_read<T, I>(&self, req: Request<T>) -> Result<(Caller, I, Reading), Status>
    where
        I: TryFrom<T, Error = Error>,
    {
        let remembered = if self.reads.has_replica() {
            subject(&req).and_then(|s| self.own_writes.after(&s))
        } else {
            None
        };
        let seen = service_runtime::read_after::read_after(&req, remembered)?;
        let turn = req.extensions().get::<Turn>().cloned();
        let (caller, input) = self.accept(req)?;
        // A write made through another process may not have reached this one's caches yet.
        let caller = if seen.is_some() {
            caller.reading_through()
        } else {
            caller
        };
        Ok((caller, input, Reading { seen, turn }))
    }

    /// Whose write `req` is, while a replica is configured (else nothing is remembered).
    fn writer<T>(&self, req: &Request<T>) -> Option<String> {
        if self.reads.has_replica() {
            subject(req)
        } else {
            None
        }
    }

    /// Remembers where the write of `who` committed, so its next reads here see it (only while
    /// a replica is configured: otherwise every read is the primary's).
    async fn wrote<T>(&self, who: Option<String>, answer: R<T>) -> R<T> {
        let mut answer = answer;
        if let (Some(who), Ok(r)) = (who, &mut answer) {
            let lsn = match self.pool.get().await {
                Ok(mut conn) => service_runtime::replica::commit_lsn(&mut conn).await.ok(),
                Err(_) => None,
            };
            if let Some(lsn) = &lsn {
                service_runtime::read_after::tell(r, lsn);
            }
            // Unknown: the caller's reads wait the bounded wait, then go to the primary.
            self.own_writes
                .record(&who, lsn.unwrap_or_else(Lsn::unknown));
        }
        answer
    }

    /// Runs `work` on a pooled connection in a task of its own. A caller that goes away (its
    /// deadline passed, it reset the stream) drops the handler but not the task, so a
    /// transaction that `work` began still ends in a commit or a rollback instead of being
    /// abandoned on a connection that holds its locks. A retry of a command that committed
    /// this way is answered DUPLICATE. A user's call passes its turn (`turn`), which the task
    /// keeps: a user who gives up on their calls cannot leave more of them running than their
    /// turns.
    async fn detached<T, F, Fut>(&self, turn: Option<Turn>, work: F) -> Result<T, Error>
    where
        F: FnOnce(Object<AsyncPgConnection>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let _turn = turn;
            work(pool.get().await?).await
        })
        .await
        .map_err(|e| Error::Internal(format!("a detached database task failed: {e}")))?
    }

    /// Tells the Liveblocks worker that rooms were queued.
    fn wake_cleanup(&self) {
        self.wakes.cleanup.notify_one();
    }

    /// Tells the purge worker that a purge was queued.
    fn wake_purge(&self) {
        self.wakes.purge.notify_one();
    }

    /// Counts a sync command by outcome.
    fn record(&self, command: &'static str, r: Result<Outcome, &Error>) {
        let label = match r {
            Ok(o) => o.label(),
            Err(e) => e.metric_label(),
        };
        self.metrics.command(command, label);
    }
}

/// What a read RPC must see and holds: the LSN of the caller's last write here, and the
/// user's turn, kept until PostgreSQL is done with the read ([`Lent`]).
pub(crate) struct Reading {
    seen: Option<Lsn>,
    turn: Option<Turn>,
}

#[tonic::async_trait]
impl WorkspaceService for WorkspaceApi {
    async fn upsert_workspace(
        &self,
        req: Request<pb::UpsertWorkspaceCommand>,
    ) -> R<pb::UpsertWorkspaceResponse> {
        let who = self.writer(&req);
        self.wrote(who, sync::upsert_workspace(self, req).await)
            .await
    }

    async fn delete_workspace(
        &self,
        req: Request<pb::DeleteWorkspaceCommand>,
    ) -> R<pb::DeleteWorkspaceResponse> {
        let who = self.writer(&req);
        self.wrote(who, sync::delete_workspace(self, req).await)
            .await
    }

    async fn upsert_membership(
        &self,
        req: Request<pb::UpsertMembershipCommand>,
    ) -> R<pb::UpsertMembershipResponse> {
        let who = self.writer(&req);
        self.wrote(who, sync::upsert_membership(self, req).await)
            .await
    }

    async fn delete_membership(
        &self,
        req: Request<pb::DeleteMembershipCommand>,
    ) -> R<pb::DeleteMembershipResponse> {
        let who = self.writer(&req);
        self.wrote(who, sync::delete_membership(self, req).await)
            .await
    }

    async fn remove_user(&self, req: Request<pb::RemoveUserCommand>) -> R<pb::RemoveUserResponse> {
        let who = self.writer(&req);
        self.wrote(who, sync::remove_user(self, req).await).await
    }

    async fn revoke_user_tokens(
        &self,
        req: Request<pb::RevokeUserTokensCommand>,
    ) -> R<pb::RevokeUserTokensResponse> {
        let who = self.writer(&req);
        self.wrote(who, sync::revoke_user_tokens(self, req).await)
            .await
    }

    async fn compare_workspaces(
        &self,
        req: Request<pb::CompareWorkspacesRequest>,
    ) -> R<pb::CompareResponse> {
        reconcile::compare_workspaces(self, req).await
    }

    async fn compare_memberships(
        &self,
        req: Request<pb::CompareMembershipsRequest>,
    ) -> R<pb::CompareResponse> {
        reconcile::compare_memberships(self, req).await
    }

    async fn list_unseen_workspaces(
        &self,
        req: Request<pb::ListUnseenRequest>,
    ) -> R<pb::ListUnseenWorkspacesResponse> {
        reconcile::list_unseen_workspaces(self, req).await
    }

    async fn list_unseen_memberships(
        &self,
        req: Request<pb::ListUnseenRequest>,
    ) -> R<pb::ListUnseenMembershipsResponse> {
        reconcile::list_unseen_memberships(self, req).await
    }

    async fn finish_reconcile(
        &self,
        req: Request<pb::FinishReconcileRequest>,
    ) -> R<pb::FinishReconcileResponse> {
        let who = self.writer(&req);
        self.wrote(who, reconcile::finish_reconcile(self, req).await)
            .await
    }

    async fn get_workspace(
        &self,
        req: Request<pb::GetWorkspaceRequest>,
    ) -> R<pb::GetWorkspaceResponse> {
        workspaces::get_workspace(self, req).await
    }

    async fn list_members(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> R<pb::ListMembersResponse> {
        workspaces::list_members(self, req).await
    }

    async fn create_channel(
        &self,
        req: Request<pb::CreateChannelRequest>,
    ) -> R<pb::CreateChannelResponse> {
        let who = self.writer(&req);
        self.wrote(who, channels::create_channel(self, req).await)
            .await
    }

    async fn list_channels(
        &self,
        req: Request<pb::ListChannelsRequest>,
    ) -> R<pb::ListChannelsResponse> {
        channels::list_channels(self, req).await
    }

    async fn rename_channel(
        &self,
        req: Request<pb::RenameChannelRequest>,
    ) -> R<pb::RenameChannelResponse> {
        let who = self.writer(&req);
        self.wrote(who, channels::rename_channel(self, req).await)
            .await
    }

    async fn delete_channel(
        &self,
        req: Request<pb::DeleteChannelRequest>,
    ) -> R<pb::DeleteChannelResponse> {
        let who = self.writer(&req);
        self.wrote(who, channels::delete_channel(self, req).await)
            .await
    }

    async fn post_message(
        &self,
        req: Request<pb::PostMessageRequest>,
    ) -> R<pb::PostMessageResponse> {
        let who = self.writer(&req);
        self.wrote(who, messages::post_message(self, req).await)
            .await
    }

    async fn list_messages(
        &self,
        req: Request<pb::ListMessagesRequest>,
    ) -> R<pb::ListMessagesResponse> {
        messages::list_messages(self, req).await
    }

    async fn edit_message(
        &self,
        req: Request<pb::EditMessageRequest>,
    ) -> R<pb::EditMessageResponse> {
        let who = self.writer(&req);
        self.wrote(who, messages::edit_message(self, req).await)
            .await
    }

    async fn delete_message(
        &self,
        req: Request<pb::DeleteMessageRequest>,
    ) -> R<pb::DeleteMessageResponse> {
        let who = self.writer(&req);
        self.wrote(who, messages::delete_message(self, req).await)
            .await
    }

    async fn mark_channel_read(
        &self,
        req: Request<pb::MarkChannelReadRequest>,
    ) -> R<pb::MarkChannelReadResponse> {
        let who = self.writer(&req);
        self.wrote(who, messages::mark_channel_read(self, req).await)
            .await
    }

    // The watches are answered by `routes::Routes` with frames encoded once per change
    // (`watch::serve`); the generated routes below are never reached.
    type WatchChannelStream = futures::stream::Empty<Result<pb::ChannelEvent, Status>>;
    type WatchWorkspaceStream = futures::stream::Empty<Result<pb::WorkspaceEvent, Status>>;

    async fn watch_workspace(
        &self,
        _req: Request<pb::WatchWorkspaceRequest>,
    ) -> R<Self::WatchWorkspaceStream> {
        Err(Error::Internal("WatchWorkspace reached the generated route".into()).into())
    }

    async fn watch_channel(
        &self,
        _req: Request<pb::WatchChannelRequest>,
    ) -> R<Self::WatchChannelStream> {
        Err(Error::Internal("WatchChannel reached the generated route".into()).into())
    }

    async fn get_unread_counts(
        &self,
        req: Request<pb::GetUnreadCountsRequest>,
    ) -> R<pb::GetUnreadCountsResponse> {
        messages::get_unread_counts(self, req).await
    }

    async fn create_room(&self, req: Request<pb::CreateRoomRequest>) -> R<pb::CreateRoomResponse> {
        let who = self.writer(&req);
        self.wrote(who, rooms::create_room(self, req).await).await
    }

    async fn list_rooms(&self, req: Request<pb::ListRoomsRequest>) -> R<pb::ListRoomsResponse> {
        rooms::list_rooms(self, req).await
    }

    async fn rename_room(&self, req: Request<pb::RenameRoomRequest>) -> R<pb::RenameRoomResponse> {
        let who = self.writer(&req);
        self.wrote(who, rooms::rename_room(self, req).await).await
    }

    async fn delete_room(&self, req: Request<pb::DeleteRoomRequest>) -> R<pb::DeleteRoomResponse> {
        let who = self.writer(&req);
        self.wrote(who, rooms::delete_room(self, req).await).await
    }

    async fn create_room_item(
        &self,
        req: Request<pb::CreateRoomItemRequest>,
    ) -> R<pb::CreateRoomItemResponse> {
        let who = self.writer(&req);
        self.wrote(who, items::create_room_item(self, req).await)
            .await
    }

    async fn list_room_items(
        &self,
        req: Request<pb::ListRoomItemsRequest>,
    ) -> R<pb::ListRoomItemsResponse> {
        items::list_room_items(self, req).await
    }

    async fn rename_room_item(
        &self,
        req: Request<pb::RenameRoomItemRequest>,
    ) -> R<pb::RenameRoomItemResponse> {
        let who = self.writer(&req);
        self.wrote(who, items::rename_room_item(self, req).await)
            .await
    }

    async fn delete_room_item(
        &self,
        req: Request<pb::DeleteRoomItemRequest>,
    ) -> R<pb::DeleteRoomItemResponse> {
        let who = self.writer(&req);
        self.wrote(who, items::delete_room_item(self, req).await)
            .await
    }

    async fn schedule_meeting(
        &self,
        req: Request<pb::ScheduleMeetingRequest>,
    ) -> R<pb::ScheduleMeetingResponse> {
        let who = self.writer(&req);
        self.wrote(who, meetings::schedule_meeting(self, req).await)
            .await
    }

    async fn list_meetings(
        &self,
        req: Request<pb::ListMeetingsRequest>,
    ) -> R<pb::ListMeetingsResponse> {
        meetings::list_meetings(self, req).await
    }

    async fn cancel_meeting(
        &self,
        req: Request<pb::CancelMeetingRequest>,
    ) -> R<pb::CancelMeetingResponse> {
        let who = self.writer(&req);
        self.wrote(who, meetings::cancel_meeting(self, req).await)
            .await
    }

    async fn authorize_liveblocks_room(
        &self,
        req: Request<pb::AuthorizeLiveblocksRoomRequest>,
    ) -> R<pb::AuthorizeLiveblocksRoomResponse> {
        room_access::authorize_liveblocks_room(self, req).await
    }
}
