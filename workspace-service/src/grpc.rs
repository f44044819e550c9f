//! `vbase.workspace.v1.WorkspaceService`: validates input, calls the domain, maps the result.

use crate::access::Caller;
use crate::content::{self as c, ItemKind, ItemRecord, Page};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::paging::{DEFAULT_PAGE, MAX_PAGE, decode_key, encode_key};
use crate::sync::{self, Outcome, WorkspaceRecord};
use input_validation as v;
use service_runtime::Pool;
use std::sync::Arc;
use token_auth::{Access, MethodPolicy, Principal, normalize_role};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::workspace_service_server::WorkspaceService;

/// Who may call which method (handlers add the per-workspace and admin checks).
pub fn policy() -> MethodPolicy {
    let service_only = [
        "UpsertWorkspace",
        "DeleteWorkspace",
        "UpsertMembership",
        "DeleteMembership",
        "RemoveUser",
    ];
    let both = [
        "GetWorkspace",
        "ListMembers",
        "CreateChannel",
        "ListChannels",
        "RenameChannel",
        "DeleteChannel",
        "PostMessage",
        "ListMessages",
        "EditMessage",
        "DeleteMessage",
        "MarkChannelRead",
        "GetUnreadCounts",
        "CreateRoom",
        "ListRooms",
        "RenameRoom",
        "DeleteRoom",
        "CreateRoomItem",
        "ListRoomItems",
        "RenameRoomItem",
        "DeleteRoomItem",
        "ScheduleMeeting",
        "ListMeetings",
        "CancelMeeting",
    ];
    let p = service_only.iter().fold(
        MethodPolicy::new("vbase.workspace.v1.WorkspaceService"),
        |p, m| p.allow(m, Access::Service),
    );
    both.iter()
        .fold(p, |p, m| p.allow(m, Access::UserOrService))
}

/// The service implementation.
#[derive(Clone)]
pub struct WorkspaceApi {
    pool: Pool,
    metrics: Metrics,
    cleanup_wake: Arc<Notify>,
}

impl WorkspaceApi {
    /// Creates the handler set; `cleanup_wake` is notified when Liveblocks rooms are queued.
    pub fn new(pool: Pool, metrics: Metrics, cleanup_wake: Arc<Notify>) -> Self {
        Self {
            pool,
            metrics,
            cleanup_wake,
        }
    }

    fn record(&self, command: &'static str, r: Result<Outcome, &Error>) {
        let label = match r {
            Ok(Outcome::Applied) => "applied",
            Ok(Outcome::Duplicate) => "duplicate",
            Ok(Outcome::Stale) => "stale",
            Err(Error::Invalid(_)) => "invalid",
            Err(_) => "error",
        };
        self.metrics.command(command, label);
    }
}

fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    Ok(Caller::from_principal(req.extensions().get::<Principal>())?)
}

fn ts(dt: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    vbase_proto::timestamp_from_millis(dt.timestamp_millis())
}

fn outcome(o: Outcome) -> i32 {
    match o {
        Outcome::Applied => pb::CommandOutcome::Applied,
        Outcome::Duplicate => pb::CommandOutcome::Duplicate,
        Outcome::Stale => pb::CommandOutcome::Stale,
    }
    .into()
}

fn workspace(w: WorkspaceRecord) -> pb::Workspace {
    pb::Workspace {
        id: w.id.to_string(),
        clerk_org_id: w.clerk_org_id,
        name: w.name,
        slug: w.slug.unwrap_or_default(),
        owner_clerk_id: w.owner_clerk_id.unwrap_or_default(),
        created_at: Some(ts(w.created_at)),
        updated_at: Some(ts(w.source_updated_at)),
    }
}

fn channel(ch: c::ChannelRecord) -> pb::Channel {
    pb::Channel {
        id: ch.id.to_string(),
        workspace_id: ch.workspace_id.to_string(),
        name: ch.name,
        created_at: Some(ts(ch.created_at)),
    }
}

fn message(m: c::MessageRecord) -> pb::Message {
    pb::Message {
        id: m.id.to_string(),
        channel_id: m.channel_id.to_string(),
        author_clerk_id: m.author_clerk_id,
        body: m.body,
        created_at: Some(ts(m.created_at)),
        edited_at: m.edited_at.map(ts),
        author_deleted: m.author_deleted,
    }
}

fn room_kind_str(k: i32) -> Result<&'static str, Error> {
    match pb::RoomKind::try_from(k) {
        Ok(pb::RoomKind::Document) => Ok("document"),
        Ok(pb::RoomKind::Code) => Ok("code"),
        Ok(pb::RoomKind::Whiteboard) => Ok("whiteboard"),
        Ok(pb::RoomKind::Conference) => Ok("conference"),
        _ => Err(Error::Invalid(
            "kind must be DOCUMENT, CODE, WHITEBOARD or CONFERENCE".into(),
        )),
    }
}

fn room(r: c::RoomRecord) -> pb::Room {
    let kind = match r.kind.as_str() {
        "document" => pb::RoomKind::Document,
        "code" => pb::RoomKind::Code,
        "whiteboard" => pb::RoomKind::Whiteboard,
        _ => pb::RoomKind::Conference,
    };
    pb::Room {
        liveblocks_room_id: format!("room:{}", r.id),
        id: r.id.to_string(),
        workspace_id: r.workspace_id.to_string(),
        kind: kind.into(),
        name: r.name,
        created_at: Some(ts(r.created_at)),
    }
}

fn item_kind(k: i32) -> Result<ItemKind, Error> {
    match pb::ItemKind::try_from(k) {
        Ok(pb::ItemKind::Document) => Ok(ItemKind::Document),
        Ok(pb::ItemKind::CodeFile) => Ok(ItemKind::CodeFile),
        Ok(pb::ItemKind::Whiteboard) => Ok(ItemKind::Whiteboard),
        _ => Err(Error::Invalid(
            "kind must be DOCUMENT, CODE_FILE or WHITEBOARD".into(),
        )),
    }
}

fn item(kind: ItemKind, i: ItemRecord) -> pb::RoomItem {
    let proto_kind = match kind {
        ItemKind::Document => pb::ItemKind::Document,
        ItemKind::CodeFile => pb::ItemKind::CodeFile,
        ItemKind::Whiteboard => pb::ItemKind::Whiteboard,
    };
    pb::RoomItem {
        liveblocks_room_id: kind.liveblocks_room(i.id),
        id: i.id.to_string(),
        room_id: i.room_id.to_string(),
        kind: proto_kind.into(),
        name: i.name,
        language: i.language,
        created_by: i.created_by,
        created_at: Some(ts(i.created_at)),
        updated_at: Some(ts(i.updated_at)),
    }
}

fn meeting(m: c::MeetingRecord) -> pb::Meeting {
    pb::Meeting {
        id: m.id.to_string(),
        room_id: m.room_id.to_string(),
        title: m.title,
        starts_at: Some(ts(m.starts_at)),
        ends_at: Some(ts(m.ends_at)),
        cancelled: m.cancelled_at.is_some(),
        created_by: m.created_by,
    }
}

fn size(page_size: i32) -> Result<i64, Error> {
    Ok(v::page_size(page_size, DEFAULT_PAGE, MAX_PAGE)?)
}

fn required_time(
    field: &str,
    t: Option<&prost_types::Timestamp>,
) -> Result<chrono::DateTime<chrono::Utc>, Error> {
    let t = t.ok_or_else(|| Error::Invalid(format!("{field} is required")))?;
    chrono::DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32)
        .ok_or_else(|| Error::Invalid(format!("{field} is out of range")))
}

type R<T> = Result<Response<T>, Status>;

fn ok<T>(t: T) -> R<T> {
    Ok(Response::new(t))
}

#[tonic::async_trait]
impl WorkspaceService for WorkspaceApi {
    async fn upsert_workspace(
        &self,
        req: Request<pb::UpsertWorkspaceCommand>,
    ) -> R<pb::UpsertWorkspaceResponse> {
        let m = req.into_inner();
        let cmd = (|| {
            v::event_id(&m.event_id)?;
            let occurred_at = v::occurred_at(m.occurred_at.as_ref())?;
            v::org_id("clerk_org_id", &m.clerk_org_id)?;
            let name = v::required_text("name", &m.name, 256)?;
            v::text("slug", &m.slug, 256)?;
            if !m.owner_clerk_id.is_empty() {
                v::user_id("owner_clerk_id", &m.owner_clerk_id)?;
            }
            Ok::<_, Error>(sync::UpsertWorkspace {
                event_id: m.event_id.clone(),
                occurred_at,
                clerk_org_id: m.clerk_org_id.clone(),
                name,
                slug: Some(m.slug.trim().to_owned()).filter(|s| !s.is_empty()),
                owner_clerk_id: Some(m.owner_clerk_id.clone()).filter(|s| !s.is_empty()),
            })
        })();
        let result = match cmd {
            Ok(cmd) => sync::upsert_workspace(&self.pool, cmd).await,
            Err(e) => Err(e),
        };
        self.record("upsert_workspace", result.as_ref().map(|r| r.0));
        let (o, ws) = result?;
        ok(pb::UpsertWorkspaceResponse {
            outcome: outcome(o),
            workspace: ws.map(workspace),
        })
    }

    async fn delete_workspace(
        &self,
        req: Request<pb::DeleteWorkspaceCommand>,
    ) -> R<pb::DeleteWorkspaceResponse> {
        let m = req.into_inner();
        let checked = (|| {
            v::event_id(&m.event_id)?;
            let at = v::occurred_at(m.occurred_at.as_ref())?;
            v::org_id("clerk_org_id", &m.clerk_org_id)?;
            Ok::<_, Error>(at)
        })();
        let result = match checked {
            Ok(at) => sync::delete_workspace(&self.pool, &m.event_id, at, &m.clerk_org_id).await,
            Err(e) => Err(e),
        };
        self.record("delete_workspace", result.as_ref().map(|r| r.0));
        let (o, cascade) = result?;
        if cascade.liveblocks_rooms_queued > 0 {
            self.cleanup_wake.notify_waiters();
            self.cleanup_wake.notify_one();
        }
        tracing::info!(clerk_org_id = %m.clerk_org_id, rows = ?cascade.deleted_rows, rooms = cascade.liveblocks_rooms_queued, "workspace deleted");
        ok(pb::DeleteWorkspaceResponse {
            outcome: outcome(o),
            deleted_rows: cascade.deleted_rows.into_iter().collect(),
            liveblocks_rooms_queued: cascade.liveblocks_rooms_queued,
        })
    }

    async fn upsert_membership(
        &self,
        req: Request<pb::UpsertMembershipCommand>,
    ) -> R<pb::UpsertMembershipResponse> {
        let m = req.into_inner();
        let r = self
            .membership(
                "upsert_membership",
                m.event_id,
                m.occurred_at,
                m.clerk_org_id,
                m.clerk_user_id,
                Some(m.role),
            )
            .await;
        ok(pb::UpsertMembershipResponse {
            outcome: outcome(r?),
        })
    }

    async fn delete_membership(
        &self,
        req: Request<pb::DeleteMembershipCommand>,
    ) -> R<pb::DeleteMembershipResponse> {
        let m = req.into_inner();
        let r = self
            .membership(
                "delete_membership",
                m.event_id,
                m.occurred_at,
                m.clerk_org_id,
                m.clerk_user_id,
                None,
            )
            .await;
        ok(pb::DeleteMembershipResponse {
            outcome: outcome(r?),
        })
    }

    async fn remove_user(&self, req: Request<pb::RemoveUserCommand>) -> R<pb::RemoveUserResponse> {
        let m = req.into_inner();
        let checked = (|| {
            v::event_id(&m.event_id)?;
            let at = v::occurred_at(m.occurred_at.as_ref())?;
            v::user_id("clerk_user_id", &m.clerk_user_id)?;
            Ok::<_, Error>(at)
        })();
        let result = match checked {
            Ok(at) => sync::remove_user(&self.pool, &m.event_id, at, &m.clerk_user_id).await,
            Err(e) => Err(e),
        };
        self.record("remove_user", result.as_ref().map(|r| r.outcome));
        let r = result?;
        ok(pb::RemoveUserResponse {
            outcome: outcome(r.outcome),
            memberships_removed: r.memberships,
            read_receipts_removed: r.read_receipts,
        })
    }

    async fn get_workspace(
        &self,
        req: Request<pb::GetWorkspaceRequest>,
    ) -> R<pb::GetWorkspaceResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        v::org_id("clerk_org_id", &m.clerk_org_id)?;
        let mut conn = self.pool.get().await.map_err(Error::from)?;
        let ws = c::workspace_for(&mut conn, &who, &m.clerk_org_id).await?;
        ok(pb::GetWorkspaceResponse {
            workspace: Some(workspace(ws)),
        })
    }

    async fn list_members(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> R<pb::ListMembersResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        v::org_id("clerk_org_id", &m.clerk_org_id)?;
        let n = size(m.page_size)?;
        let (rows, next) = c::list_members(
            &self.pool,
            &who,
            &m.clerk_org_id,
            n,
            decode_key(&m.page_token)?,
        )
        .await?;
        ok(pb::ListMembersResponse {
            members: rows
                .into_iter()
                .map(|r| pb::Member {
                    clerk_user_id: r.clerk_user_id,
                    role: r.role,
                    updated_at: Some(ts(r.source_updated_at)),
                })
                .collect(),
            next_page_token: next.map(|k| encode_key(&k)).unwrap_or_default(),
        })
    }

    async fn create_channel(
        &self,
        req: Request<pb::CreateChannelRequest>,
    ) -> R<pb::CreateChannelResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        v::org_id("clerk_org_id", &m.clerk_org_id)?;
        let ch = c::create_channel(&self.pool, &who, &m.clerk_org_id, &m.name).await?;
        ok(pb::CreateChannelResponse {
            channel: Some(channel(ch)),
        })
    }

    async fn list_channels(
        &self,
        req: Request<pb::ListChannelsRequest>,
    ) -> R<pb::ListChannelsResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        v::org_id("clerk_org_id", &m.clerk_org_id)?;
        let Page {
            items,
            next_page_token,
        } = c::list_channels(
            &self.pool,
            &who,
            &m.clerk_org_id,
            size(m.page_size)?,
            &m.page_token,
        )
        .await?;
        ok(pb::ListChannelsResponse {
            channels: items.into_iter().map(channel).collect(),
            next_page_token,
        })
    }

    async fn rename_channel(
        &self,
        req: Request<pb::RenameChannelRequest>,
    ) -> R<pb::RenameChannelResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let id = v::uuid("channel_id", &m.channel_id)?;
        let ch = c::rename_channel(&self.pool, &who, id, &m.name).await?;
        ok(pb::RenameChannelResponse {
            channel: Some(channel(ch)),
        })
    }

    async fn delete_channel(
        &self,
        req: Request<pb::DeleteChannelRequest>,
    ) -> R<pb::DeleteChannelResponse> {
        let who = caller(&req)?;
        let id = v::uuid("channel_id", &req.get_ref().channel_id)?;
        let n = c::delete_channel(&self.pool, &who, id).await?;
        ok(pb::DeleteChannelResponse {
            messages_deleted: n,
        })
    }

    async fn post_message(
        &self,
        req: Request<pb::PostMessageRequest>,
    ) -> R<pb::PostMessageResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let id = v::uuid("channel_id", &m.channel_id)?;
        let msg = c::post_message(&self.pool, &who, id, &m.body, &m.author_clerk_id).await?;
        ok(pb::PostMessageResponse {
            message: Some(message(msg)),
        })
    }

    async fn list_messages(
        &self,
        req: Request<pb::ListMessagesRequest>,
    ) -> R<pb::ListMessagesResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let id = v::uuid("channel_id", &m.channel_id)?;
        let Page {
            items,
            next_page_token,
        } = c::list_messages(&self.pool, &who, id, size(m.page_size)?, &m.page_token).await?;
        ok(pb::ListMessagesResponse {
            messages: items.into_iter().map(message).collect(),
            next_page_token,
        })
    }

    async fn edit_message(
        &self,
        req: Request<pb::EditMessageRequest>,
    ) -> R<pb::EditMessageResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let id = v::uuid("message_id", &m.message_id)?;
        let msg = c::edit_message(&self.pool, &who, id, &m.body).await?;
        ok(pb::EditMessageResponse {
            message: Some(message(msg)),
        })
    }

    async fn delete_message(
        &self,
        req: Request<pb::DeleteMessageRequest>,
    ) -> R<pb::DeleteMessageResponse> {
        let who = caller(&req)?;
        let id = v::uuid("message_id", &req.get_ref().message_id)?;
        c::delete_message(&self.pool, &who, id).await?;
        ok(pb::DeleteMessageResponse {})
    }

    async fn mark_channel_read(
        &self,
        req: Request<pb::MarkChannelReadRequest>,
    ) -> R<pb::MarkChannelReadResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let id = v::uuid("channel_id", &m.channel_id)?;
        let up_to = if m.message_id.is_empty() {
            None
        } else {
            Some(v::uuid("message_id", &m.message_id)?)
        };
        let at = c::mark_read(&self.pool, &who, id, up_to).await?;
        ok(pb::MarkChannelReadResponse {
            last_read_at: Some(ts(at)),
        })
    }

    async fn get_unread_counts(
        &self,
        req: Request<pb::GetUnreadCountsRequest>,
    ) -> R<pb::GetUnreadCountsResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        v::org_id("clerk_org_id", &m.clerk_org_id)?;
        let counts = c::unread_counts(&self.pool, &who, &m.clerk_org_id).await?;
        ok(pb::GetUnreadCountsResponse {
            counts: counts
                .into_iter()
                .map(|(id, unread)| pb::UnreadCount {
                    channel_id: id.to_string(),
                    unread,
                })
                .collect(),
        })
    }

    async fn create_room(&self, req: Request<pb::CreateRoomRequest>) -> R<pb::CreateRoomResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        v::org_id("clerk_org_id", &m.clerk_org_id)?;
        let kind = room_kind_str(m.kind)?;
        let r = c::create_room(&self.pool, &who, &m.clerk_org_id, kind, &m.name).await?;
        ok(pb::CreateRoomResponse {
            room: Some(room(r)),
        })
    }

    async fn list_rooms(&self, req: Request<pb::ListRoomsRequest>) -> R<pb::ListRoomsResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        v::org_id("clerk_org_id", &m.clerk_org_id)?;
        let kind = if m.kind == 0 {
            None
        } else {
            Some(room_kind_str(m.kind)?)
        };
        let Page {
            items,
            next_page_token,
        } = c::list_rooms(
            &self.pool,
            &who,
            &m.clerk_org_id,
            kind,
            size(m.page_size)?,
            &m.page_token,
        )
        .await?;
        ok(pb::ListRoomsResponse {
            rooms: items.into_iter().map(room).collect(),
            next_page_token,
        })
    }

    async fn rename_room(&self, req: Request<pb::RenameRoomRequest>) -> R<pb::RenameRoomResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let id = v::uuid("room_id", &m.room_id)?;
        let r = c::rename_room(&self.pool, &who, id, &m.name).await?;
        ok(pb::RenameRoomResponse {
            room: Some(room(r)),
        })
    }

    async fn delete_room(&self, req: Request<pb::DeleteRoomRequest>) -> R<pb::DeleteRoomResponse> {
        let who = caller(&req)?;
        let id = v::uuid("room_id", &req.get_ref().room_id)?;
        let queued = c::delete_room(&self.pool, &who, id).await?;
        self.cleanup_wake.notify_one();
        ok(pb::DeleteRoomResponse {
            liveblocks_rooms_queued: queued,
        })
    }

    async fn create_room_item(
        &self,
        req: Request<pb::CreateRoomItemRequest>,
    ) -> R<pb::CreateRoomItemResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let id = v::uuid("room_id", &m.room_id)?;
        let kind = item_kind(m.kind)?;
        let i = c::create_item(&self.pool, &who, id, kind, &m.name, &m.language).await?;
        ok(pb::CreateRoomItemResponse {
            item: Some(item(kind, i)),
        })
    }

    async fn list_room_items(
        &self,
        req: Request<pb::ListRoomItemsRequest>,
    ) -> R<pb::ListRoomItemsResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let id = v::uuid("room_id", &m.room_id)?;
        let (
            kind,
            Page {
                items,
                next_page_token,
            },
        ) = c::list_items(&self.pool, &who, id, size(m.page_size)?, &m.page_token).await?;
        ok(pb::ListRoomItemsResponse {
            items: items.into_iter().map(|i| item(kind, i)).collect(),
            next_page_token,
        })
    }

    async fn rename_room_item(
        &self,
        req: Request<pb::RenameRoomItemRequest>,
    ) -> R<pb::RenameRoomItemResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let kind = item_kind(m.kind)?;
        let id = v::uuid("item_id", &m.item_id)?;
        let i = c::rename_item(&self.pool, &who, kind, id, &m.name).await?;
        ok(pb::RenameRoomItemResponse {
            item: Some(item(kind, i)),
        })
    }

    async fn delete_room_item(
        &self,
        req: Request<pb::DeleteRoomItemRequest>,
    ) -> R<pb::DeleteRoomItemResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let kind = item_kind(m.kind)?;
        let id = v::uuid("item_id", &m.item_id)?;
        let room_id = c::delete_item(&self.pool, &who, kind, id).await?;
        self.cleanup_wake.notify_one();
        ok(pb::DeleteRoomItemResponse {
            liveblocks_room_id: room_id,
        })
    }

    async fn schedule_meeting(
        &self,
        req: Request<pb::ScheduleMeetingRequest>,
    ) -> R<pb::ScheduleMeetingResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let id = v::uuid("room_id", &m.room_id)?;
        let starts = required_time("starts_at", m.starts_at.as_ref())?;
        let ends = required_time("ends_at", m.ends_at.as_ref())?;
        let mt = c::schedule_meeting(&self.pool, &who, id, &m.title, starts, ends).await?;
        ok(pb::ScheduleMeetingResponse {
            meeting: Some(meeting(mt)),
        })
    }

    async fn list_meetings(
        &self,
        req: Request<pb::ListMeetingsRequest>,
    ) -> R<pb::ListMeetingsResponse> {
        let who = caller(&req)?;
        let m = req.into_inner();
        let id = v::uuid("room_id", &m.room_id)?;
        let Page {
            items,
            next_page_token,
        } = c::list_meetings(&self.pool, &who, id, size(m.page_size)?, &m.page_token).await?;
        ok(pb::ListMeetingsResponse {
            meetings: items.into_iter().map(meeting).collect(),
            next_page_token,
        })
    }

    async fn cancel_meeting(
        &self,
        req: Request<pb::CancelMeetingRequest>,
    ) -> R<pb::CancelMeetingResponse> {
        let who = caller(&req)?;
        let id = v::uuid("meeting_id", &req.get_ref().meeting_id)?;
        let mt = c::cancel_meeting(&self.pool, &who, id).await?;
        ok(pb::CancelMeetingResponse {
            meeting: Some(meeting(mt)),
        })
    }
}

impl WorkspaceApi {
    async fn membership(
        &self,
        command: &'static str,
        event_id: String,
        occurred_at: Option<prost_types::Timestamp>,
        clerk_org_id: String,
        clerk_user_id: String,
        role: Option<String>,
    ) -> Result<Outcome, Error> {
        let checked = (|| {
            v::event_id(&event_id)?;
            let at = v::occurred_at(occurred_at.as_ref())?;
            v::org_id("clerk_org_id", &clerk_org_id)?;
            v::user_id("clerk_user_id", &clerk_user_id)?;
            let role = match &role {
                Some(r) => {
                    let r = v::required_text("role", r, 64)?;
                    Some(normalize_role(&r))
                }
                None => None,
            };
            Ok::<_, Error>(sync::MembershipChange {
                event_id: event_id.clone(),
                occurred_at: at,
                clerk_org_id: clerk_org_id.clone(),
                clerk_user_id: clerk_user_id.clone(),
                role,
            })
        })();
        let result = match checked {
            Ok(cmd) => sync::change_membership(&self.pool, cmd).await,
            Err(e) => Err(e),
        };
        self.record(command, result.as_ref().copied());
        result
    }
}
