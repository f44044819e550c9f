//! Requests into checked inputs (`TryFrom<pb::...>`): where requests from the wire become the
//! domain's inputs. Records become protos in `domain::events` (the change log stores the same
//! messages the API answers with).

use crate::domain::channels::{ChannelName, NewChannel};
use crate::domain::items::NewItem;
use crate::domain::meetings::NewMeeting;
use crate::domain::memberships::{ListMembers, MembershipChange};
use crate::domain::messages::{MAX_BODY, MAX_BODY_BYTES, NewMessage};
use crate::domain::purge::DeleteWorkspace;
use crate::domain::requests;
use crate::domain::revocations::RevokeUserTokens;
use crate::domain::rooms::{ListRooms, NewRoom};
use crate::domain::users::RemoveUser;
use crate::domain::workspaces::UpsertWorkspace;
use crate::domain::{MAX_NAME, Outcome};
use crate::error::Error;
use crate::model::paging::{DEFAULT_PAGE, MAX_PAGE, PageRequest, decode_user_key};
use crate::model::{EventId, ItemKind, OrgId, Role, RoomKind, UserId};
use chrono::{DateTime, SubsecRound, Utc};
use input_validation as v;
use uuid::Uuid;
use vbase_proto::workspace::v1 as pb;

pub use crate::domain::events::timestamp;
pub use crate::domain::items::item;

// ------------------------------------------------------------------------ shared pieces

/// A required time, kept to the microsecond as PostgreSQL stores it: two times compared here
/// are the times the table's checks compare.
fn required_time(field: &str, t: Option<&prost_types::Timestamp>) -> Result<DateTime<Utc>, Error> {
    Ok(v::time(field, t)?.trunc_subsecs(6))
}

/// A message body: at most [`MAX_BODY`] characters and [`MAX_BODY_BYTES`] bytes, line breaks
/// and tabs kept.
fn body(value: &str) -> Result<String, Error> {
    let body = v::required_multiline_text("body", value, MAX_BODY)?;
    if body.len() > MAX_BODY_BYTES {
        return Err(Error::Invalid(format!(
            "body is longer than {MAX_BODY_BYTES} bytes of UTF-8 ({} bytes): split the message",
            body.len()
        )));
    }
    Ok(body)
}

/// A room's or an item's name: visible, one line, no bidirectional controls.
fn name(value: &str) -> Result<String, Error> {
    Ok(v::required_name("name", value, MAX_NAME)?)
}

fn room_kind(k: i32) -> Result<RoomKind, Error> {
    match pb::RoomKind::try_from(k) {
        Ok(pb::RoomKind::Document) => Ok(RoomKind::Document),
        Ok(pb::RoomKind::Code) => Ok(RoomKind::Code),
        Ok(pb::RoomKind::Whiteboard) => Ok(RoomKind::Whiteboard),
        Ok(pb::RoomKind::Conference) => Ok(RoomKind::Conference),
        _ => Err(Error::Invalid(
            "kind must be DOCUMENT, CODE, WHITEBOARD or CONFERENCE".into(),
        )),
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

/// The wire value of an outcome.
pub fn outcome(o: Outcome) -> i32 {
    match o {
        Outcome::Applied => pb::CommandOutcome::Applied,
        Outcome::Duplicate => pb::CommandOutcome::Duplicate,
        Outcome::Stale => pb::CommandOutcome::Stale,
    }
    .into()
}

/// A request that names one row by id.
#[derive(Debug, Clone, Copy)]
pub struct Id(pub Uuid);

/// A request that names a workspace.
#[derive(Debug, Clone)]
pub struct Org(pub OrgId);

/// A request for a page of a row's children.
#[derive(Debug, Clone, Copy)]
pub struct PageOf {
    pub id: Uuid,
    pub page: PageRequest,
}

/// A request that renames a row.
#[derive(Debug, Clone)]
pub struct Rename<N> {
    pub id: Uuid,
    pub name: N,
}

/// A request that names a room item.
#[derive(Debug, Clone, Copy)]
pub struct ItemRef {
    pub kind: ItemKind,
    pub id: Uuid,
}

/// `EditMessage`, validated.
#[derive(Debug, Clone)]
pub struct EditMessage {
    pub id: Uuid,
    pub body: String,
}

/// `MarkChannelRead`, validated.
#[derive(Debug, Clone, Copy)]
pub struct MarkRead {
    pub channel_id: Uuid,
    /// Up to this message (`None`: up to now).
    pub message_id: Option<Uuid>,
}

/// Implements `TryFrom<$req>` for a type from a closure-like body over `m`.
macro_rules! parse {
    ($req:ty => $out:ty, |$m:ident| $body:expr) => {
        impl TryFrom<$req> for $out {
            type Error = Error;
            fn try_from($m: $req) -> Result<Self, Error> {
                $body
            }
        }
    };
}

// ------------------------------------------------------------------------ sync commands

parse!(pb::UpsertWorkspaceCommand => UpsertWorkspace, |m| {
    let event_id = EventId::parse(&m.event_id)?;
    let occurred_at = v::occurred_at(m.occurred_at.as_ref())?;
    let org = OrgId::parse("clerk_org_id", &m.clerk_org_id)?;
    let name = v::required_text("name", &m.name, 256)?;
    v::text("slug", &m.slug, 256)?;
    let owner = if m.owner_clerk_id.is_empty() {
        None
    } else {
        Some(UserId::parse("owner_clerk_id", &m.owner_clerk_id)?)
    };
    Ok(UpsertWorkspace {
        event_id,
        occurred_at,
        event_time: v::optional_source_time("event_time", m.event_time.as_ref())?,
        org,
        name,
        slug: Some(m.slug.trim().to_owned()).filter(|s| !s.is_empty()),
        owner,
        clerk_created_at: v::optional_created_time("created_at", m.created_at.as_ref())?,
    })
});

parse!(pb::DeleteWorkspaceCommand => DeleteWorkspace, |m| {
    Ok(DeleteWorkspace {
        event_id: EventId::parse(&m.event_id)?,
        occurred_at: v::optional_source_time("occurred_at", m.occurred_at.as_ref())?,
        org: OrgId::parse("clerk_org_id", &m.clerk_org_id)?,
    })
});

/// The fields both membership commands carry.
struct MembershipFields<'a> {
    event_id: &'a str,
    occurred_at: Option<&'a prost_types::Timestamp>,
    org: &'a str,
    user: &'a str,
    membership_id: &'a str,
    created_at: Option<&'a prost_types::Timestamp>,
    event_time: Option<&'a prost_types::Timestamp>,
}

fn membership(f: MembershipFields<'_>, role: Option<&str>) -> Result<MembershipChange, Error> {
    if !f.membership_id.is_empty() {
        v::clerk_id("clerk_membership_id", "orgmem_", f.membership_id)?;
    }
    Ok(MembershipChange {
        event_id: EventId::parse(f.event_id)?,
        occurred_at: v::occurred_at(f.occurred_at)?,
        org: OrgId::parse("clerk_org_id", f.org)?,
        user: UserId::parse("clerk_user_id", f.user)?,
        role: role.map(Role::parse).transpose()?,
        membership_id: f.membership_id.to_owned(),
        membership_created_at: v::optional_created_time("membership_created_at", f.created_at)?,
        event_time: v::optional_source_time("event_time", f.event_time)?,
    })
}

parse!(pb::UpsertMembershipCommand => MembershipChange, |m| {
    membership(MembershipFields {
        event_id: &m.event_id,
        occurred_at: m.occurred_at.as_ref(),
        org: &m.clerk_org_id,
        user: &m.clerk_user_id,
        membership_id: &m.clerk_membership_id,
        created_at: m.membership_created_at.as_ref(),
        event_time: m.event_time.as_ref(),
    }, Some(&m.role))
});

parse!(pb::DeleteMembershipCommand => MembershipChange, |m| {
    membership(MembershipFields {
        event_id: &m.event_id,
        occurred_at: m.occurred_at.as_ref(),
        org: &m.clerk_org_id,
        user: &m.clerk_user_id,
        membership_id: &m.clerk_membership_id,
        created_at: m.membership_created_at.as_ref(),
        event_time: m.event_time.as_ref(),
    }, None)
});

parse!(pb::RemoveUserCommand => RemoveUser, |m| {
    Ok(RemoveUser {
        event_id: EventId::parse(&m.event_id)?,
        occurred_at: v::optional_source_time("occurred_at", m.occurred_at.as_ref())?,
        user: UserId::parse("clerk_user_id", &m.clerk_user_id)?,
    })
});

parse!(pb::RevokeUserTokensCommand => RevokeUserTokens, |m| {
    Ok(RevokeUserTokens {
        event_id: EventId::parse(&m.event_id)?,
        revoked_at: v::source_time("revoked_at", m.revoked_at.as_ref())?,
        user: UserId::parse("clerk_user_id", &m.clerk_user_id)?,
    })
});

// ------------------------------------------------------------------------ workspaces

parse!(pb::GetWorkspaceRequest => Org, |m| Ok(Org(OrgId::parse("clerk_org_id", &m.clerk_org_id)?)));
parse!(pb::GetUnreadCountsRequest => Org, |m| Ok(Org(OrgId::parse("clerk_org_id", &m.clerk_org_id)?)));

parse!(pb::ListMembersRequest => ListMembers, |m| {
    let org = OrgId::parse("clerk_org_id", &m.clerk_org_id)?;
    let size = v::page_size(m.page_size, DEFAULT_PAGE, MAX_PAGE)?;
    Ok(ListMembers {
        org,
        size,
        after: decode_user_key(&m.page_token)?,
        max_bytes: crate::model::paging::DEFAULT_RESPONSE_BYTES,
    })
});

// ------------------------------------------------------------------------ channels, messages

parse!(pb::CreateChannelRequest => NewChannel, |m| {
    let org = OrgId::parse("clerk_org_id", &m.clerk_org_id)?;
    Ok(NewChannel { org, name: ChannelName::parse(&m.name)? })
});

/// `ListChannels`: the workspace and the page.
#[derive(Debug, Clone)]
pub struct ListChannels {
    pub org: OrgId,
    pub page: PageRequest,
}

parse!(pb::ListChannelsRequest => ListChannels, |m| {
    let org = OrgId::parse("clerk_org_id", &m.clerk_org_id)?;
    Ok(ListChannels { org, page: PageRequest::parse(m.page_size, &m.page_token)? })
});

parse!(pb::RenameChannelRequest => Rename<ChannelName>, |m| {
    let id = v::uuid("channel_id", &m.channel_id)?;
    Ok(Rename { id, name: ChannelName::parse(&m.name)? })
});

parse!(pb::DeleteChannelRequest => Id, |m| Ok(Id(v::uuid("channel_id", &m.channel_id)?)));

parse!(pb::PostMessageRequest => NewMessage, |m| {
    let channel_id = v::uuid("channel_id", &m.channel_id)?;
    Ok(NewMessage {
        channel_id,
        body: body(&m.body)?,
        service_author: m.author_clerk_id,
        request_id: requests::parse(&m.request_id)?,
    })
});

parse!(pb::ListMessagesRequest => PageOf, |m| {
    let id = v::uuid("channel_id", &m.channel_id)?;
    Ok(PageOf { id, page: PageRequest::parse(m.page_size, &m.page_token)? })
});

parse!(pb::EditMessageRequest => EditMessage, |m| {
    let id = v::uuid("message_id", &m.message_id)?;
    Ok(EditMessage { id, body: body(&m.body)? })
});

parse!(pb::DeleteMessageRequest => Id, |m| Ok(Id(v::uuid("message_id", &m.message_id)?)));

parse!(pb::MarkChannelReadRequest => MarkRead, |m| {
    let channel_id = v::uuid("channel_id", &m.channel_id)?;
    let message_id = if m.message_id.is_empty() {
        None
    } else {
        Some(v::uuid("message_id", &m.message_id)?)
    };
    Ok(MarkRead { channel_id, message_id })
});

// ------------------------------------------------------------------------ rooms, items, meetings

parse!(pb::CreateRoomRequest => NewRoom, |m| {
    let org = OrgId::parse("clerk_org_id", &m.clerk_org_id)?;
    let kind = room_kind(m.kind)?;
    let name = name(&m.name)?;
    Ok(NewRoom { org, kind, name, request_id: requests::parse(&m.request_id)? })
});

parse!(pb::ListRoomsRequest => ListRooms, |m| {
    let org = OrgId::parse("clerk_org_id", &m.clerk_org_id)?;
    let kind = if m.kind == 0 { None } else { Some(room_kind(m.kind)?) };
    Ok(ListRooms { org, kind, page: PageRequest::parse(m.page_size, &m.page_token)? })
});

parse!(pb::RenameRoomRequest => Rename<String>, |m| {
    let id = v::uuid("room_id", &m.room_id)?;
    Ok(Rename { id, name: name(&m.name)? })
});

parse!(pb::DeleteRoomRequest => Id, |m| Ok(Id(v::uuid("room_id", &m.room_id)?)));

parse!(pb::CreateRoomItemRequest => NewItem, |m| {
    let room_id = v::uuid("room_id", &m.room_id)?;
    let kind = item_kind(m.kind)?;
    let name = name(&m.name)?;
    v::text("language", &m.language, 40)?;
    if kind != ItemKind::CodeFile && !m.language.is_empty() {
        return Err(Error::Invalid("language is for code files only".into()));
    }
    let request_id = requests::parse(&m.request_id)?;
    Ok(NewItem { room_id, kind, name, language: m.language.trim().to_owned(), request_id })
});

parse!(pb::ListRoomItemsRequest => PageOf, |m| {
    let id = v::uuid("room_id", &m.room_id)?;
    Ok(PageOf { id, page: PageRequest::parse(m.page_size, &m.page_token)? })
});

/// `RenameRoomItem`, validated.
#[derive(Debug, Clone)]
pub struct RenameItem {
    pub item: ItemRef,
    pub name: String,
}

parse!(pb::RenameRoomItemRequest => RenameItem, |m| {
    let kind = item_kind(m.kind)?;
    let id = v::uuid("item_id", &m.item_id)?;
    Ok(RenameItem { item: ItemRef { kind, id }, name: name(&m.name)? })
});

parse!(pb::DeleteRoomItemRequest => ItemRef, |m| {
    let kind = item_kind(m.kind)?;
    Ok(ItemRef { kind, id: v::uuid("item_id", &m.item_id)? })
});

parse!(pb::ScheduleMeetingRequest => NewMeeting, |m| {
    let room_id = v::uuid("room_id", &m.room_id)?;
    let starts_at = required_time("starts_at", m.starts_at.as_ref())?;
    let ends_at = required_time("ends_at", m.ends_at.as_ref())?;
    let title = v::required_name("title", &m.title, MAX_NAME)?;
    if ends_at <= starts_at {
        return Err(Error::Invalid("ends_at must be after starts_at".into()));
    }
    let request_id = requests::parse(&m.request_id)?;
    Ok(NewMeeting { room_id, title, starts_at, ends_at, request_id })
});

parse!(pb::ListMeetingsRequest => PageOf, |m| {
    let id = v::uuid("room_id", &m.room_id)?;
    Ok(PageOf { id, page: PageRequest::parse(m.page_size, &m.page_token)? })
});

parse!(pb::CancelMeetingRequest => Id, |m| Ok(Id(v::uuid("meeting_id", &m.meeting_id)?)));
