//! Meetings, scheduled in conference rooms and cancelled (never deleted) by members.

use super::access::{Caller, hold_room, lookup_workspace, require_active_user, room_scope, unseen};
use super::changes::record_workspace;
use super::events::timestamp;
use super::requests::{self, Claimed, Kind};
use crate::error::Error;
use crate::model::paging::PageRequest;
use crate::model::{Cursor, Page, RoomKind};
use crate::schema::meetings;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::Settled;
use service_runtime::prepared;
use uuid::Uuid;
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::workspace_event::Event;

/// A meeting.
#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = meetings)]
pub struct MeetingRecord {
    pub id: Uuid,
    pub room_id: Uuid,
    pub title: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

impl crate::model::paging::WireSize for MeetingRecord {
    fn wire_size(&self) -> usize {
        use crate::model::paging::{FIELD, SMALL, TIMESTAMP, UUID, text};
        FIELD + 2 * UUID + text(&self.title) + 2 * TIMESTAMP + SMALL + text(&self.created_by)
    }
}

/// `ScheduleMeeting`, validated (it ends after it starts).
#[derive(Debug, Clone)]
pub struct NewMeeting {
    pub room_id: Uuid,
    pub title: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// The caller's id of this create, the same on its retries ([`requests`]).
    pub request_id: Option<Uuid>,
}

async fn conference_room(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    room_id: Uuid,
) -> Result<Uuid, Error> {
    let (ws, kind) = room_scope(conn, caller, room_id).await?;
    if kind != RoomKind::Conference {
        return Err(Error::Precondition(format!(
            "meetings live in conference rooms, this is a {} room",
            kind.as_str()
        )));
    }
    Ok(ws)
}

/// Schedules a meeting in a conference room. A retry with the request's id answers the meeting
/// it scheduled (cancelled since or not).
pub async fn schedule_meeting(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    new: &NewMeeting,
) -> Result<MeetingRecord, Error> {
    let ws = conference_room(conn, caller, new.room_id).await?;
    require_active_user(conn, caller).await?;
    let request = new.request_id.map(|id| requests::Request {
        workspace: ws,
        requester: requests::requester(caller, None),
        id,
        kind: Kind::Meeting,
        parent: new.room_id,
    });
    let id = Uuid::now_v7();
    conn.transaction::<_, Error, _>(async |conn| {
        hold_room(conn, caller, ws, new.room_id, "room").await?;
        if let Some(request) = &request
            && let Claimed::Earlier(earlier) = requests::claim(conn, request, id).await?
        {
            let m: Option<MeetingRecord> = meetings::table
                .find((ws, earlier))
                .select(MeetingRecord::as_select())
                .one(conn)
                .await
                .optional()?;
            return m.ok_or_else(|| requests::deleted_since(Kind::Meeting));
        }
        let m = diesel::insert_into(meetings::table)
            .values((
                meetings::id.eq(id),
                meetings::workspace_id.eq(ws),
                meetings::room_id.eq(new.room_id),
                meetings::title.eq(&new.title),
                meetings::starts_at.eq(new.starts_at),
                meetings::ends_at.eq(new.ends_at),
                meetings::created_by.eq(caller.actor()),
            ))
            .returning(MeetingRecord::as_returning())
            .one(conn)
            .await?;
        record_workspace(conn, ws, Event::MeetingScheduled(m.clone().into()))
            .await?
            .or_deleted()?;
        Ok(m)
    })
    .await
}

/// Meetings of a conference room, by start time.
pub async fn list_meetings(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    room_id: Uuid,
    page: &PageRequest,
) -> Result<Page<MeetingRecord>, Error> {
    let ws = conference_room(conn, caller, room_id).await?;
    let (at, id) = page.after_parts();
    let rows: Vec<MeetingRecord> = prepared(
        "SELECT id, room_id, title, starts_at, ends_at, cancelled_at, created_by, created_at FROM meetings
         WHERE workspace_id = $1 AND room_id = $2
           AND ($3::timestamptz IS NULL OR (starts_at, id) > ($3, $4))
         ORDER BY starts_at, id LIMIT $5",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<SqlUuid, _>(room_id)
    .bind::<Nullable<Timestamptz>, _>(at)
    .bind::<Nullable<SqlUuid>, _>(id)
    .bind::<BigInt, _>(page.limit())
    .load(conn)
    .await?;
    Ok(page.page(rows, |m| Cursor {
        at: m.starts_at,
        id: m.id,
    }))
}

/// Cancels a meeting (its creator or an admin; idempotent).
pub async fn cancel_meeting(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    meeting_id: Uuid,
) -> Result<MeetingRecord, Error> {
    let found = match lookup_workspace(conn, caller, "meeting").await? {
        Some(workspace) => {
            meetings::table
                .find((workspace, meeting_id))
                .select(MeetingRecord::as_select())
                .limit(1)
                .one(conn)
                .await
        }
        None => {
            meetings::table
                .filter(meetings::id.eq(meeting_id))
                .select(MeetingRecord::as_select())
                .limit(1)
                .one(conn)
                .await
        }
    };
    let m = found.optional()?.ok_or_else(|| unseen(caller, "meeting"))?;
    let (ws, _) = room_scope(conn, caller, m.room_id)
        .await
        .map_err(|_| unseen(caller, "meeting"))?;
    caller.require_creator_or_admin(&m.created_by, "cancelling someone else's meeting")?;
    conn.transaction::<_, Error, _>(async |conn| {
        hold_room(conn, caller, ws, m.room_id, "meeting").await?;
        let after = diesel::update(meetings::table.find((ws, meeting_id)))
            .set(
                meetings::cancelled_at.eq(diesel::dsl::sql::<Nullable<Timestamptz>>(
                    "COALESCE(cancelled_at, now())",
                )),
            )
            .returning(MeetingRecord::as_returning())
            .one(conn)
            .await?;
        if m.cancelled_at.is_none() {
            record_workspace(conn, ws, Event::MeetingCancelled(meeting_id.to_string()))
                .await?
                .or_deleted()?;
        }
        Ok(after)
    })
    .await
}

impl From<MeetingRecord> for pb::Meeting {
    fn from(m: MeetingRecord) -> Self {
        pb::Meeting {
            id: m.id.to_string(),
            room_id: m.room_id.to_string(),
            title: m.title,
            starts_at: Some(timestamp(m.starts_at)),
            ends_at: Some(timestamp(m.ends_at)),
            cancelled: m.cancelled_at.is_some(),
            created_by: m.created_by,
        }
    }
}
