//! Rooms of a workspace (document, code, whiteboard, conference), each a Liveblocks room of
//! its own: created by members, renamed and deleted by admins.

use super::access::workspace_for;
use super::access::{Caller, require_active_user, room_scope, unseen};
use super::changes::record_workspace;
use super::events::timestamp;
use super::purge::hide_room;
use super::requests::{self, Claimed, Kind};
use crate::error::Error;
use crate::model::paging::PageRequest;
use crate::model::{Cursor, OrgId, Page, RoomKind};
use crate::schema::rooms;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::Settled;
use service_runtime::prepared;
use uuid::Uuid;
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::workspace_event::Event;

/// A room as stored.
#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = rooms)]
struct RoomRow {
    id: Uuid,
    workspace_id: Uuid,
    kind: String,
    name: String,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A room.
#[derive(Debug, Clone)]
pub struct RoomRecord {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub kind: RoomKind,
    pub name: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl crate::model::paging::WireSize for RoomRecord {
    fn wire_size(&self) -> usize {
        use crate::model::paging::{FIELD, LIVEBLOCKS_ID, SMALL, TIMESTAMP, UUID, text};
        FIELD + LIVEBLOCKS_ID + 2 * UUID + SMALL + text(&self.name) + TIMESTAMP
    }
}

impl TryFrom<RoomRow> for RoomRecord {
    type Error = Error;
    fn try_from(r: RoomRow) -> Result<Self, Error> {
        Ok(Self {
            kind: RoomKind::from_db(&r.kind).map_err(|e| Error::Internal(e.to_string()))?,
            id: r.id,
            workspace_id: r.workspace_id,
            name: r.name,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// `CreateRoom`, validated.
#[derive(Debug, Clone)]
pub struct NewRoom {
    pub org: OrgId,
    pub kind: RoomKind,
    pub name: String,
    /// The caller's id of this create, the same on its retries ([`requests`]).
    pub request_id: Option<Uuid>,
}

/// Creates a room. A retry of a create with its request id answers the room it made.
pub async fn create_room(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    new: &NewRoom,
) -> Result<RoomRecord, Error> {
    let ws = workspace_for(conn, caller, &new.org).await?;
    require_active_user(conn, caller).await?;
    let request = new.request_id.map(|id| requests::Request {
        workspace: ws.id,
        requester: requests::requester(caller, None),
        id,
        kind: Kind::Room,
        parent: ws.id,
    });
    let id = Uuid::now_v7();
    conn.transaction::<_, Error, _>(async |conn| {
        if let Some(request) = &request
            && let Claimed::Earlier(earlier) = requests::claim(conn, request, id).await?
        {
            let row: Option<RoomRow> = rooms::table
                .find((ws.id, earlier))
                .filter(rooms::deleted_at.is_null())
                .select(RoomRow::as_select())
                .one(conn)
                .await
                .optional()?;
            return row
                .ok_or_else(|| requests::deleted_since(Kind::Room))?
                .try_into();
        }
        let row: RoomRow = diesel::insert_into(rooms::table)
            .values((
                rooms::id.eq(id),
                rooms::workspace_id.eq(ws.id),
                rooms::kind.eq(new.kind.as_str()),
                rooms::name.eq(&new.name),
                rooms::created_by.eq(caller.actor()),
            ))
            .returning(RoomRow::as_returning())
            .one(conn)
            .await?;
        let room: RoomRecord = row.try_into()?;
        record_workspace(conn, ws.id, Event::RoomCreated(room.clone().into()))
            .await?
            .or_deleted()?;
        Ok(room)
    })
    .await
}

/// `ListRooms`, validated.
#[derive(Debug, Clone)]
pub struct ListRooms {
    pub org: OrgId,
    /// Only rooms of this kind (`None`: all).
    pub kind: Option<RoomKind>,
    pub page: PageRequest,
}

/// Rooms of a workspace (optionally of one kind), oldest first.
pub async fn list_rooms(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    q: &ListRooms,
) -> Result<Page<RoomRecord>, Error> {
    let ws = workspace_for(conn, caller, &q.org).await?;
    let (at, id) = q.page.after_parts();
    let rows: Vec<RoomRow> = prepared(
        "SELECT id, workspace_id, kind, name, created_by, created_at, updated_at FROM rooms WHERE workspace_id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR kind = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4))
         ORDER BY created_at, id LIMIT $5",
    )
    .bind::<SqlUuid, _>(ws.id)
    .bind::<Nullable<Text>, _>(q.kind.map(RoomKind::as_str))
    .bind::<Nullable<Timestamptz>, _>(at)
    .bind::<Nullable<SqlUuid>, _>(id)
    .bind::<BigInt, _>(q.page.limit())
    .load(conn)
    .await?;
    let rows = rows
        .into_iter()
        .map(RoomRecord::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(q.page.page(rows, |r| Cursor {
        at: r.created_at,
        id: r.id,
    }))
}

/// Renames a room (admins).
pub async fn rename_room(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    room_id: Uuid,
    name: &str,
) -> Result<RoomRecord, Error> {
    let (ws, _) = room_scope(conn, caller, room_id).await?;
    caller.require_admin("renaming a room")?;
    conn.transaction::<_, Error, _>(async |conn| {
        // Not a deleted room (its deletion may have committed since the scope check).
        let row: RoomRow = diesel::update(rooms::table.find((ws, room_id)))
            .filter(rooms::deleted_at.is_null())
            .set((rooms::name.eq(name), rooms::updated_at.eq(diesel::dsl::now)))
            .returning(RoomRow::as_returning())
            .one(conn)
            .await
            .optional()?
            .ok_or_else(|| unseen(caller, "room"))?;
        let room: RoomRecord = row.try_into()?;
        record_workspace(conn, ws, Event::RoomRenamed(room.clone().into()))
            .await?
            .or_deleted()?;
        Ok(room)
    })
    .await
}

/// Deletes a room with its contents (admins): hidden at once, purged in the background.
/// Returns whether this call queued the purge.
pub async fn delete_room(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    room_id: Uuid,
) -> Result<bool, Error> {
    let (ws, _) = room_scope(conn, caller, room_id).await?;
    caller.require_admin("deleting a room")?;
    conn.transaction::<_, Error, _>(async |conn| {
        let hidden = hide_room(conn, ws, room_id).await?;
        if hidden {
            record_workspace(conn, ws, Event::RoomDeleted(room_id.to_string()))
                .await?
                .or_deleted()?;
        }
        Ok(hidden)
    })
    .await
}

impl From<RoomRecord> for pb::Room {
    fn from(r: RoomRecord) -> Self {
        let kind = match r.kind {
            RoomKind::Document => pb::RoomKind::Document,
            RoomKind::Code => pb::RoomKind::Code,
            RoomKind::Whiteboard => pb::RoomKind::Whiteboard,
            RoomKind::Conference => pb::RoomKind::Conference,
        };
        pb::Room {
            liveblocks_room_id: RoomKind::liveblocks_room(r.id),
            id: r.id.to_string(),
            workspace_id: r.workspace_id.to_string(),
            kind: kind.into(),
            name: r.name,
            created_at: Some(timestamp(r.created_at)),
        }
    }
}
