//! Messages of a channel: posted by members (or by a service naming the author), edited by
//! their author, deleted by their author or an admin.

use super::access::{
    Caller, channel_scope, hold_channel, lookup_workspace, parent_gone, require_active_user, unseen,
};
use super::changes;
use super::events::timestamp;
use super::requests::{self, Claimed, Kind};
use crate::error::Error;
use crate::model::paging::{FIELD, PageRequest, SMALL, TIMESTAMP, UUID, WireSize};
use crate::model::{Cursor, Page, UserId};
use crate::schema::messages;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::Settled;
use service_runtime::prepared;
use uuid::Uuid;
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::channel_event::Event;

/// Longest message body, in characters.
pub const MAX_BODY: usize = 10_000;
/// Longest message body, in bytes (UTF-8): 10,000 characters of 3 bytes (CJK) fit, 8,192 of
/// 4 bytes (emoji). What a body costs in memory, in a page or in a live event, is its bytes.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// What a message adds to its body and author in an answer, at most.
const MESSAGE_FIXED: usize = FIELD + 2 * UUID + 2 * FIELD + 2 * TIMESTAMP + SMALL;

/// A message's columns as read: `author_deleted` is true once the author was deleted in Clerk
/// (`removed_users`), so removing a user rewrites none of their messages.
macro_rules! message_columns {
    () => {
        "id, channel_id, author_clerk_id, body,
         (author_deleted OR EXISTS (SELECT 1 FROM removed_users u WHERE u.clerk_user_id = author_clerk_id))
           AS author_deleted,
         created_at, edited_at"
    };
}

/// A message.
#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = messages)]
pub struct MessageRecord {
    pub id: Uuid,
    pub channel_id: Uuid,
    pub author_clerk_id: String,
    pub body: String,
    pub author_deleted: bool,
    pub created_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
}

impl WireSize for MessageRecord {
    fn wire_size(&self) -> usize {
        self.body.len() + self.author_clerk_id.len() + MESSAGE_FIXED
    }
}

/// `PostMessage`, validated.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub channel_id: Uuid,
    pub body: String,
    /// The author a service names (users post as themselves; checked when a service calls).
    pub service_author: String,
    /// The caller's id of this post, the same on its retries ([`requests`]).
    pub request_id: Option<Uuid>,
}

/// Posts a message as the caller (services name the author); watchers of the channel hear it.
/// A retry of a post with its request id answers the message the post made.
pub async fn post_message(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    new: &NewMessage,
) -> Result<MessageRecord, Error> {
    let author = match caller.user_id() {
        Some(u) => u.to_owned(),
        None => UserId::parse("author_clerk_id", &new.service_author)?
            .as_str()
            .to_owned(),
    };
    let workspace = channel_scope(conn, caller, new.channel_id).await?;
    require_active_user(conn, caller).await?;
    let request = new.request_id.map(|id| requests::Request {
        workspace,
        requester: requests::requester(caller, Some(&author)),
        id,
        kind: Kind::Message,
        parent: new.channel_id,
    });
    let id = Uuid::now_v7();
    conn.transaction::<_, Error, _>(async |conn| {
        hold_channel(conn, caller, workspace, new.channel_id, "channel").await?;
        if let Some(request) = &request
            && let Claimed::Earlier(earlier) = requests::claim(conn, request, id).await?
        {
            return find_message(conn, workspace, earlier)
                .await?
                .ok_or_else(|| requests::deleted_since(Kind::Message));
        }
        let m: MessageRecord = prepared(concat!(
            "INSERT INTO messages (id, channel_id, author_clerk_id, body, created_at, workspace_id)
             VALUES ($1, $2, $3, $4, clock_timestamp(), $5) RETURNING ",
            message_columns!()
        ))
        .bind::<SqlUuid, _>(id)
        .bind::<SqlUuid, _>(new.channel_id)
        .bind::<Text, _>(&author)
        .bind::<Text, _>(&new.body)
        .bind::<SqlUuid, _>(workspace)
        .one(conn)
        .await
        .map_err(parent_gone(caller, "channel"))?;
        let event = Event::MessagePosted(m.clone().into());
        changes::record_channel(conn, workspace, m.channel_id, event)
            .await?
            .or_deleted()?;
        Ok(m)
    })
    .await
}

/// Message `id` of `workspace`, if it exists.
async fn find_message(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    id: Uuid,
) -> Result<Option<MessageRecord>, Error> {
    Ok(prepared(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE workspace_id = $1 AND id = $2"
    ))
    .bind::<SqlUuid, _>(workspace)
    .bind::<SqlUuid, _>(id)
    .one(conn)
    .await
    .optional()?)
}

/// Messages of a channel, newest first, a page of at most its rows and bytes. The bytes are
/// counted in the query (`octet_length` reads a stored body's size without reading the
/// body), so no more than one message past the page's bytes is ever read into memory.
pub async fn list_messages(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    channel_id: Uuid,
    page: &PageRequest,
) -> Result<Page<MessageRecord>, Error> {
    let workspace = channel_scope(conn, caller, channel_id).await?;
    let (at, id) = page.after_parts();
    // The rows that start within the budget or right at its end: the page, and one row past
    // it when the bytes cut it (which `page` then drops, and which says that more follow; a
    // page that fills the budget exactly is followed by a row starting at its end).
    let rows: Vec<MessageRecord> = prepared(concat!(
        "SELECT ",
        message_columns!(),
        " FROM (
             SELECT id, channel_id, author_clerk_id, body, author_deleted, created_at, edited_at,
                    sum(octet_length(body) + octet_length(author_clerk_id) + $5)
                      OVER (ORDER BY created_at DESC, id DESC) AS upto,
                    octet_length(body) + octet_length(author_clerk_id) + $5 AS own
               FROM (SELECT id, channel_id, author_clerk_id, body, author_deleted, created_at, edited_at
                       FROM messages WHERE workspace_id = $7 AND channel_id = $1
                        AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
                      ORDER BY created_at DESC, id DESC LIMIT $4) l) p
          WHERE upto - own <= $6
          ORDER BY created_at DESC, id DESC"
    ))
    .bind::<SqlUuid, _>(channel_id)
    .bind::<Nullable<Timestamptz>, _>(at)
    .bind::<Nullable<SqlUuid>, _>(id)
    .bind::<BigInt, _>(page.limit())
    .bind::<BigInt, _>(MESSAGE_FIXED as i64)
    .bind::<BigInt, _>(page.row_bytes() as i64)
    .bind::<SqlUuid, _>(workspace)
    .load(conn)
    .await?;
    Ok(page.page(rows, |m| Cursor {
        at: m.created_at,
        id: m.id,
    }))
}

/// The message and its workspace, when the caller may act on it.
async fn message_in_scope(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    message_id: Uuid,
) -> Result<(MessageRecord, Uuid), Error> {
    let found = match lookup_workspace(conn, caller, "message").await? {
        Some(workspace) => {
            messages::table
                .find((workspace, message_id))
                .select(MessageRecord::as_select())
                .limit(1)
                .one(conn)
                .await
        }
        None => {
            messages::table
                .filter(messages::id.eq(message_id))
                .select(MessageRecord::as_select())
                .limit(1)
                .one(conn)
                .await
        }
    };
    let m = found.optional()?.ok_or_else(|| unseen(caller, "message"))?;
    let workspace = channel_scope(conn, caller, m.channel_id)
        .await
        .map_err(|_| unseen(caller, "message"))?;
    Ok((m, workspace))
}

/// Edits a message (its author only); watchers of the channel hear it, and the change log
/// keeps only the new text.
pub async fn edit_message(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    message_id: Uuid,
    body: &str,
) -> Result<MessageRecord, Error> {
    let (m, workspace) = message_in_scope(conn, caller, message_id).await?;
    if let Some(u) = caller.user_id()
        && u != m.author_clerk_id
    {
        return Err(Error::Denied("only the author may edit a message".into()));
    }
    require_active_user(conn, caller).await?;
    conn.transaction::<_, Error, _>(async |conn| {
        hold_channel(conn, caller, workspace, m.channel_id, "message").await?;
        let m: MessageRecord = prepared(concat!(
            "UPDATE messages SET body = $2, edited_at = $3 WHERE workspace_id = $4 AND id = $1 RETURNING ",
            message_columns!()
        ))
        .bind::<SqlUuid, _>(message_id)
        .bind::<Text, _>(body)
        .bind::<Timestamptz, _>(Utc::now())
        .bind::<SqlUuid, _>(workspace)
        .one(conn)
        .await?;
        // The old text leaves the change log with the edit.
        changes::forget_message_bodies(conn, workspace, message_id).await?;
        let event = Event::MessageEdited(m.clone().into());
        changes::record_channel(conn, workspace, m.channel_id, event).await?.or_deleted()?;
        Ok(m)
    })
    .await
}

/// Deletes a message (its author, or an admin for anyone's); watchers of the channel hear it,
/// and the change log keeps none of its text.
pub async fn delete_message(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    message_id: Uuid,
) -> Result<(), Error> {
    let (m, workspace) = message_in_scope(conn, caller, message_id).await?;
    caller.require_creator_or_admin(&m.author_clerk_id, "deleting someone else's message")?;
    conn.transaction::<_, Error, _>(async |conn| {
        let gone = diesel::delete(messages::table.find((workspace, message_id)))
            .execute(conn)
            .await?;
        if gone == 1 {
            changes::forget_message_bodies(conn, workspace, message_id).await?;
            let event = Event::MessageDeleted(message_id.to_string());
            changes::record_channel(conn, workspace, m.channel_id, event)
                .await?
                .or_deleted()?;
        }
        Ok(())
    })
    .await
}

impl From<MessageRecord> for pb::Message {
    fn from(m: MessageRecord) -> Self {
        pb::Message {
            id: m.id.to_string(),
            channel_id: m.channel_id.to_string(),
            author_clerk_id: m.author_clerk_id,
            body: m.body,
            created_at: Some(timestamp(m.created_at)),
            edited_at: m.edited_at.map(timestamp),
            author_deleted: m.author_deleted,
        }
    }
}
