//! Workspace content for users and services: members, channels, messages, read receipts,
//! rooms, room items (documents, code files, whiteboards) and meetings.
//!
//! Every function checks access itself (the workspace is only known after a lookup), then
//! queries. Lists use keyset pagination on `(time, id)`, stable under concurrent inserts.

use crate::access::{Caller, unseen};
use crate::error::Error;
use crate::paging::{Cursor, decode, encode};
use crate::schema::{channels, meetings, messages, rooms};
use crate::sync::{
    Cascade, WorkspaceRecord, delete_channels_where, delete_rooms_where, find_workspace,
};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::{Pool, prepared};
use uuid::Uuid;

/// A channel.
#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = channels)]
pub struct ChannelRecord {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub name: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
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

/// A room.
#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = rooms)]
pub struct RoomRecord {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub kind: String,
    pub name: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

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

/// A member.
#[derive(Debug, Clone, QueryableByName)]
pub struct MemberRecord {
    #[diesel(sql_type = Text)]
    pub clerk_user_id: String,
    #[diesel(sql_type = Text)]
    pub role: String,
    #[diesel(sql_type = Timestamptz)]
    pub source_updated_at: DateTime<Utc>,
}

/// The three kinds of item that live in rooms and have a Liveblocks room each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Document,
    CodeFile,
    Whiteboard,
}

impl ItemKind {
    /// Table holding this kind.
    pub fn table(self) -> &'static str {
        match self {
            ItemKind::Document => "documents",
            ItemKind::CodeFile => "code_files",
            ItemKind::Whiteboard => "whiteboards",
        }
    }

    /// Liveblocks room prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            ItemKind::Document => "doc",
            ItemKind::CodeFile => "code",
            ItemKind::Whiteboard => "whiteboard",
        }
    }

    /// The room kind that holds this item kind.
    pub fn room_kind(self) -> &'static str {
        match self {
            ItemKind::Document => "document",
            ItemKind::CodeFile => "code",
            ItemKind::Whiteboard => "whiteboard",
        }
    }

    /// The item kind a room kind holds (conference rooms hold meetings instead).
    pub fn for_room(room_kind: &str) -> Option<Self> {
        match room_kind {
            "document" => Some(ItemKind::Document),
            "code" => Some(ItemKind::CodeFile),
            "whiteboard" => Some(ItemKind::Whiteboard),
            _ => None,
        }
    }

    /// `{prefix}:{id}`.
    pub fn liveblocks_room(self, id: Uuid) -> String {
        format!("{}:{id}", self.prefix())
    }
}

/// A document, code file or whiteboard.
#[derive(Debug, Clone, QueryableByName)]
pub struct ItemRecord {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub room_id: Uuid,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Text)]
    pub language: String,
    #[diesel(sql_type = Text)]
    pub created_by: String,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
}

/// A page of results and the token of the next one (empty on the last page).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

fn page<T>(mut rows: Vec<T>, size: i64, cursor: impl Fn(&T) -> Cursor) -> Page<T> {
    let more = rows.len() as i64 > size;
    rows.truncate(size as usize);
    let next_page_token = match (more, rows.last()) {
        (true, Some(last)) => encode(cursor(last)),
        _ => String::new(),
    };
    Page {
        items: rows,
        next_page_token,
    }
}

fn split(c: Option<Cursor>) -> (Option<DateTime<Utc>>, Option<Uuid>) {
    (c.map(|c| c.at), c.map(|c| c.id))
}

/// The workspace of `clerk_org_id`, if the caller may act there.
pub async fn workspace_for(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    clerk_org_id: &str,
) -> Result<WorkspaceRecord, Error> {
    caller.check_org(clerk_org_id)?;
    find_workspace(conn, clerk_org_id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("workspace {clerk_org_id} is not synced (yet)")))
}

#[derive(QueryableByName)]
struct Scope {
    #[diesel(sql_type = SqlUuid)]
    workspace_id: Uuid,
    #[diesel(sql_type = Text)]
    clerk_org_id: String,
    #[diesel(sql_type = Text)]
    detail: String,
}

/// Resolves the workspace of a child row and checks the caller may act there. `sql` selects
/// `workspace_id`, `clerk_org_id` and `detail` for `$1`.
async fn scope(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    what: &str,
    sql: &'static str,
    id: Uuid,
) -> Result<(Uuid, String), Error> {
    let found: Option<Scope> = prepared(sql)
        .bind::<SqlUuid, _>(id)
        .get_result(conn)
        .await
        .optional()?;
    let s = found.ok_or_else(|| unseen(caller, what))?;
    caller
        .check_org(&s.clerk_org_id)
        .map_err(|_| unseen(caller, what))?;
    Ok((s.workspace_id, s.detail))
}

async fn channel_scope(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    channel_id: Uuid,
) -> Result<Uuid, Error> {
    scope(
        conn,
        caller,
        "channel",
        "SELECT c.workspace_id, w.clerk_org_id, c.name AS detail FROM channels c JOIN workspaces w ON w.id = c.workspace_id WHERE c.id = $1",
        channel_id,
    )
    .await
    .map(|(w, _)| w)
}

/// Returns the room's workspace id and kind.
async fn room_scope(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    room_id: Uuid,
) -> Result<(Uuid, String), Error> {
    scope(
        conn,
        caller,
        "room",
        "SELECT r.workspace_id, w.clerk_org_id, r.kind AS detail FROM rooms r JOIN workspaces w ON w.id = r.workspace_id WHERE r.id = $1",
        room_id,
    )
    .await
}

// ------------------------------------------------------------------------------------ members

/// Members of a workspace, by user id.
pub async fn list_members(
    pool: &Pool,
    caller: &Caller,
    org: &str,
    size: i64,
    after: Option<String>,
) -> Result<(Vec<MemberRecord>, Option<String>), Error> {
    let mut conn = pool.get().await?;
    workspace_for(&mut conn, caller, org).await?;
    let mut rows: Vec<MemberRecord> = prepared(
        "SELECT clerk_user_id, role, source_updated_at FROM memberships
         WHERE clerk_org_id = $1 AND NOT deleted AND ($2::text IS NULL OR clerk_user_id > $2)
         ORDER BY clerk_user_id LIMIT $3",
    )
    .bind::<Text, _>(org)
    .bind::<Nullable<Text>, _>(after)
    .bind::<BigInt, _>(size + 1)
    .load(&mut conn)
    .await?;
    let more = rows.len() as i64 > size;
    rows.truncate(size as usize);
    let next = if more {
        rows.last().map(|m| m.clerk_user_id.clone())
    } else {
        None
    };
    Ok((rows, next))
}

// ------------------------------------------------------------------------------------ channels

/// Checks a channel name: 1..=80 of lowercase letters, digits, `-`, `_`.
pub fn channel_name(name: &str) -> Result<String, Error> {
    let n = name.trim().to_lowercase();
    if n.is_empty()
        || n.len() > 80
        || !n
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(Error::Invalid(format!(
            "channel name must be 1..=80 lowercase letters, digits, '-' or '_', got {:?}",
            name.chars().take(80).collect::<String>()
        )));
    }
    Ok(n)
}

fn name_taken(e: diesel::result::Error, name: &str) -> Error {
    match e {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ) => Error::Exists(format!(
            "a channel named {name:?} already exists in this workspace"
        )),
        other => other.into(),
    }
}

/// Creates a channel.
pub async fn create_channel(
    pool: &Pool,
    caller: &Caller,
    org: &str,
    name: &str,
) -> Result<ChannelRecord, Error> {
    let name = channel_name(name)?;
    let mut conn = pool.get().await?;
    let ws = workspace_for(&mut conn, caller, org).await?;
    diesel::insert_into(channels::table)
        .values((
            channels::id.eq(Uuid::now_v7()),
            channels::workspace_id.eq(ws.id),
            channels::name.eq(&name),
            channels::created_by.eq(caller.actor()),
        ))
        .returning(ChannelRecord::as_returning())
        .get_result(&mut conn)
        .await
        .map_err(|e| name_taken(e, &name))
}

/// Channels of a workspace, oldest first.
pub async fn list_channels(
    pool: &Pool,
    caller: &Caller,
    org: &str,
    size: i64,
    token: &str,
) -> Result<Page<ChannelRecord>, Error> {
    let (at, id) = split(decode(token)?);
    let mut conn = pool.get().await?;
    let ws = workspace_for(&mut conn, caller, org).await?;
    let rows: Vec<ChannelRecord> = prepared(
        "SELECT id, workspace_id, name, created_by, created_at, updated_at FROM channels WHERE workspace_id = $1
           AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
         ORDER BY created_at, id LIMIT $4",
    )
    .bind::<SqlUuid, _>(ws.id)
    .bind::<Nullable<Timestamptz>, _>(at)
    .bind::<Nullable<SqlUuid>, _>(id)
    .bind::<BigInt, _>(size + 1)
    .load(&mut conn)
    .await?;
    Ok(page(rows, size, |c| Cursor {
        at: c.created_at,
        id: c.id,
    }))
}

/// Renames a channel (admins).
pub async fn rename_channel(
    pool: &Pool,
    caller: &Caller,
    channel_id: Uuid,
    name: &str,
) -> Result<ChannelRecord, Error> {
    let name = channel_name(name)?;
    let mut conn = pool.get().await?;
    channel_scope(&mut conn, caller, channel_id).await?;
    caller.require_admin("renaming a channel")?;
    diesel::update(channels::table.find(channel_id))
        .set((
            channels::name.eq(&name),
            channels::updated_at.eq(diesel::dsl::now),
        ))
        .returning(ChannelRecord::as_returning())
        .get_result(&mut conn)
        .await
        .map_err(|e| name_taken(e, &name))
}

/// Deletes a channel with its messages and read receipts (admins); returns messages deleted.
pub async fn delete_channel(pool: &Pool, caller: &Caller, channel_id: Uuid) -> Result<i64, Error> {
    let mut conn = pool.get().await?;
    channel_scope(&mut conn, caller, channel_id).await?;
    caller.require_admin("deleting a channel")?;
    let out = conn
        .transaction::<_, Error, _>(async |conn| {
            let mut out = Cascade::default();
            delete_channels_where(conn, "id = $1", channel_id, &mut out).await?;
            Ok(out)
        })
        .await?;
    Ok(out
        .deleted_rows
        .get("messages")
        .copied()
        .unwrap_or_default())
}

// ------------------------------------------------------------------------------------ messages

/// Longest message body.
pub const MAX_BODY: usize = 10_000;

/// Posts a message as the caller (services name the author).
pub async fn post_message(
    pool: &Pool,
    caller: &Caller,
    channel_id: Uuid,
    body: &str,
    service_author: &str,
) -> Result<MessageRecord, Error> {
    let body = input_validation::required_text("body", body, MAX_BODY)?;
    let author = match caller.user_id() {
        Some(u) => u.to_owned(),
        None => {
            input_validation::user_id("author_clerk_id", service_author)?;
            service_author.to_owned()
        }
    };
    let mut conn = pool.get().await?;
    channel_scope(&mut conn, caller, channel_id).await?;
    Ok(diesel::insert_into(messages::table)
        .values((
            messages::id.eq(Uuid::now_v7()),
            messages::channel_id.eq(channel_id),
            messages::author_clerk_id.eq(author),
            messages::body.eq(body),
            messages::created_at.eq(Utc::now()),
        ))
        .returning(MessageRecord::as_returning())
        .get_result(&mut conn)
        .await?)
}

/// Messages of a channel, newest first.
pub async fn list_messages(
    pool: &Pool,
    caller: &Caller,
    channel_id: Uuid,
    size: i64,
    token: &str,
) -> Result<Page<MessageRecord>, Error> {
    let (at, id) = split(decode(token)?);
    let mut conn = pool.get().await?;
    channel_scope(&mut conn, caller, channel_id).await?;
    let rows: Vec<MessageRecord> = prepared(
        "SELECT id, channel_id, author_clerk_id, body, author_deleted, created_at, edited_at FROM messages WHERE channel_id = $1
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4",
    )
    .bind::<SqlUuid, _>(channel_id)
    .bind::<Nullable<Timestamptz>, _>(at)
    .bind::<Nullable<SqlUuid>, _>(id)
    .bind::<BigInt, _>(size + 1)
    .load(&mut conn)
    .await?;
    Ok(page(rows, size, |m| Cursor {
        at: m.created_at,
        id: m.id,
    }))
}

async fn message_in_scope(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    message_id: Uuid,
) -> Result<MessageRecord, Error> {
    let m: MessageRecord = messages::table
        .find(message_id)
        .select(MessageRecord::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| unseen(caller, "message"))?;
    channel_scope(conn, caller, m.channel_id)
        .await
        .map_err(|_| unseen(caller, "message"))?;
    Ok(m)
}

/// Edits a message (its author only).
pub async fn edit_message(
    pool: &Pool,
    caller: &Caller,
    message_id: Uuid,
    body: &str,
) -> Result<MessageRecord, Error> {
    let body = input_validation::required_text("body", body, MAX_BODY)?;
    let mut conn = pool.get().await?;
    let m = message_in_scope(&mut conn, caller, message_id).await?;
    if let Some(u) = caller.user_id()
        && u != m.author_clerk_id
    {
        return Err(Error::Denied("only the author may edit a message".into()));
    }
    Ok(diesel::update(messages::table.find(message_id))
        .set((messages::body.eq(body), messages::edited_at.eq(Utc::now())))
        .returning(MessageRecord::as_returning())
        .get_result(&mut conn)
        .await?)
}

/// Deletes a message (its author, or an admin for anyone's).
pub async fn delete_message(pool: &Pool, caller: &Caller, message_id: Uuid) -> Result<(), Error> {
    let mut conn = pool.get().await?;
    let m = message_in_scope(&mut conn, caller, message_id).await?;
    if caller.user_id() != Some(m.author_clerk_id.as_str()) {
        caller.require_admin("deleting someone else's message")?;
    }
    diesel::delete(messages::table.find(message_id))
        .execute(&mut conn)
        .await?;
    Ok(())
}

// ------------------------------------------------------------------------------------ read receipts

/// Marks a channel read for the calling user up to `message_id` (or now). Never moves back.
pub async fn mark_read(
    pool: &Pool,
    caller: &Caller,
    channel_id: Uuid,
    message_id: Option<Uuid>,
) -> Result<DateTime<Utc>, Error> {
    let user = caller
        .user_id()
        .ok_or_else(|| {
            Error::Invalid("read receipts belong to users: call with a user token".into())
        })?
        .to_owned();
    let mut conn = pool.get().await?;
    channel_scope(&mut conn, caller, channel_id).await?;
    let at = match message_id {
        None => Utc::now(),
        Some(mid) => messages::table
            .filter(
                messages::id
                    .eq(mid)
                    .and(messages::channel_id.eq(channel_id)),
            )
            .select(messages::created_at)
            .first(&mut conn)
            .await
            .optional()?
            .ok_or_else(|| Error::NotFound("no such message in this channel".into()))?,
    };
    #[derive(QueryableByName)]
    struct At {
        #[diesel(sql_type = Timestamptz)]
        last_read_at: DateTime<Utc>,
    }
    let r: At = prepared(
        "INSERT INTO read_receipts (channel_id, clerk_user_id, last_read_at) VALUES ($1, $2, $3)
         ON CONFLICT (channel_id, clerk_user_id) DO UPDATE
           SET last_read_at = GREATEST(read_receipts.last_read_at, EXCLUDED.last_read_at)
         RETURNING last_read_at",
    )
    .bind::<SqlUuid, _>(channel_id)
    .bind::<Text, _>(&user)
    .bind::<Timestamptz, _>(at)
    .get_result(&mut conn)
    .await?;
    Ok(r.last_read_at)
}

/// Unread messages per channel for the calling user (others' messages after their receipt).
pub async fn unread_counts(
    pool: &Pool,
    caller: &Caller,
    org: &str,
) -> Result<Vec<(Uuid, i64)>, Error> {
    let user = caller
        .user_id()
        .ok_or_else(|| {
            Error::Invalid("unread counts belong to users: call with a user token".into())
        })?
        .to_owned();
    let mut conn = pool.get().await?;
    let ws = workspace_for(&mut conn, caller, org).await?;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = BigInt)]
        unread: i64,
    }
    let rows: Vec<Row> = prepared(
        "SELECT c.id, (SELECT count(*) FROM messages m
                        WHERE m.channel_id = c.id AND m.author_clerk_id <> $2
                          AND m.created_at > COALESCE(r.last_read_at, '-infinity')) AS unread
         FROM channels c
         LEFT JOIN read_receipts r ON r.channel_id = c.id AND r.clerk_user_id = $2
         WHERE c.workspace_id = $1
         ORDER BY c.created_at, c.id",
    )
    .bind::<SqlUuid, _>(ws.id)
    .bind::<Text, _>(&user)
    .load(&mut conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.unread)).collect())
}

// ------------------------------------------------------------------------------------ rooms

/// Longest room/item/meeting name.
pub const MAX_NAME: usize = 120;

/// Creates a room of `kind` (`document`, `code`, `whiteboard`, `conference`).
pub async fn create_room(
    pool: &Pool,
    caller: &Caller,
    org: &str,
    kind: &'static str,
    name: &str,
) -> Result<RoomRecord, Error> {
    let name = input_validation::required_text("name", name, MAX_NAME)?;
    let mut conn = pool.get().await?;
    let ws = workspace_for(&mut conn, caller, org).await?;
    Ok(diesel::insert_into(rooms::table)
        .values((
            rooms::id.eq(Uuid::now_v7()),
            rooms::workspace_id.eq(ws.id),
            rooms::kind.eq(kind),
            rooms::name.eq(name),
            rooms::created_by.eq(caller.actor()),
        ))
        .returning(RoomRecord::as_returning())
        .get_result(&mut conn)
        .await?)
}

/// Rooms of a workspace (optionally of one kind), oldest first.
pub async fn list_rooms(
    pool: &Pool,
    caller: &Caller,
    org: &str,
    kind: Option<&'static str>,
    size: i64,
    token: &str,
) -> Result<Page<RoomRecord>, Error> {
    let (at, id) = split(decode(token)?);
    let mut conn = pool.get().await?;
    let ws = workspace_for(&mut conn, caller, org).await?;
    let rows: Vec<RoomRecord> = prepared(
        "SELECT id, workspace_id, kind, name, created_by, created_at, updated_at FROM rooms WHERE workspace_id = $1 AND ($2::text IS NULL OR kind = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4))
         ORDER BY created_at, id LIMIT $5",
    )
    .bind::<SqlUuid, _>(ws.id)
    .bind::<Nullable<Text>, _>(kind)
    .bind::<Nullable<Timestamptz>, _>(at)
    .bind::<Nullable<SqlUuid>, _>(id)
    .bind::<BigInt, _>(size + 1)
    .load(&mut conn)
    .await?;
    Ok(page(rows, size, |r| Cursor {
        at: r.created_at,
        id: r.id,
    }))
}

/// Renames a room (admins).
pub async fn rename_room(
    pool: &Pool,
    caller: &Caller,
    room_id: Uuid,
    name: &str,
) -> Result<RoomRecord, Error> {
    let name = input_validation::required_text("name", name, MAX_NAME)?;
    let mut conn = pool.get().await?;
    room_scope(&mut conn, caller, room_id).await?;
    caller.require_admin("renaming a room")?;
    Ok(diesel::update(rooms::table.find(room_id))
        .set((rooms::name.eq(name), rooms::updated_at.eq(diesel::dsl::now)))
        .returning(RoomRecord::as_returning())
        .get_result(&mut conn)
        .await?)
}

/// Deletes a room with its contents (admins); returns how many Liveblocks rooms it queued.
pub async fn delete_room(pool: &Pool, caller: &Caller, room_id: Uuid) -> Result<i64, Error> {
    let mut conn = pool.get().await?;
    room_scope(&mut conn, caller, room_id).await?;
    caller.require_admin("deleting a room")?;
    let out = conn
        .transaction::<_, Error, _>(async |conn| {
            let mut out = Cascade::default();
            delete_rooms_where(conn, "id = $1", room_id, &mut out).await?;
            Ok(out)
        })
        .await?;
    Ok(out.liveblocks_rooms_queued)
}

// ------------------------------------------------------------------------------------ room items

fn item_select(kind: ItemKind) -> String {
    let language = if kind == ItemKind::CodeFile {
        "language"
    } else {
        "''::text AS language"
    };
    format!(
        "SELECT id, room_id, name, {language}, created_by, created_at, updated_at FROM {}",
        kind.table()
    )
}

/// Creates a document, code file or whiteboard in a room of the matching kind.
pub async fn create_item(
    pool: &Pool,
    caller: &Caller,
    room_id: Uuid,
    kind: ItemKind,
    name: &str,
    language: &str,
) -> Result<ItemRecord, Error> {
    let name = input_validation::required_text("name", name, MAX_NAME)?;
    input_validation::text("language", language, 40)?;
    if kind != ItemKind::CodeFile && !language.is_empty() {
        return Err(Error::Invalid("language is for code files only".into()));
    }
    let mut conn = pool.get().await?;
    let (_, room_kind) = room_scope(&mut conn, caller, room_id).await?;
    if room_kind != kind.room_kind() {
        return Err(Error::Precondition(format!(
            "a {room_kind} room cannot hold {}",
            kind.table()
        )));
    }
    let (cols, vals) = if kind == ItemKind::CodeFile {
        (", language", ", $5")
    } else {
        ("", "")
    };
    let sql = format!(
        "INSERT INTO {t} (id, room_id, name, created_by{cols}) VALUES ($1, $2, $3, $4{vals})
         RETURNING id, room_id, name, {lang}, created_by, created_at, updated_at",
        t = kind.table(),
        lang = if kind == ItemKind::CodeFile {
            "language"
        } else {
            "''::text AS language"
        },
    );
    let q = diesel::sql_query(sql)
        .bind::<SqlUuid, _>(Uuid::now_v7())
        .bind::<SqlUuid, _>(room_id)
        .bind::<Text, _>(name)
        .bind::<Text, _>(caller.actor());
    let item = if kind == ItemKind::CodeFile {
        q.bind::<Text, _>(language.trim())
            .get_result(&mut conn)
            .await?
    } else {
        q.get_result(&mut conn).await?
    };
    Ok(item)
}

/// Items of a room, oldest first.
pub async fn list_items(
    pool: &Pool,
    caller: &Caller,
    room_id: Uuid,
    size: i64,
    token: &str,
) -> Result<(ItemKind, Page<ItemRecord>), Error> {
    let (at, id) = split(decode(token)?);
    let mut conn = pool.get().await?;
    let (_, room_kind) = room_scope(&mut conn, caller, room_id).await?;
    let kind = ItemKind::for_room(&room_kind).ok_or_else(|| {
        Error::Precondition("conference rooms hold meetings: use ListMeetings".into())
    })?;
    let rows: Vec<ItemRecord> = diesel::sql_query(format!(
        "{} WHERE room_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
         ORDER BY created_at, id LIMIT $4",
        item_select(kind)
    ))
    .bind::<SqlUuid, _>(room_id)
    .bind::<Nullable<Timestamptz>, _>(at)
    .bind::<Nullable<SqlUuid>, _>(id)
    .bind::<BigInt, _>(size + 1)
    .load(&mut conn)
    .await?;
    Ok((
        kind,
        page(rows, size, |i| Cursor {
            at: i.created_at,
            id: i.id,
        }),
    ))
}

async fn item_scope(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    kind: ItemKind,
    item_id: Uuid,
) -> Result<(), Error> {
    // One static statement per table, so each is prepared once per connection.
    macro_rules! item_scope_sql {
        ($table:literal) => {
            concat!(
                "SELECT r.workspace_id, w.clerk_org_id, r.kind AS detail FROM ",
                $table,
                " i JOIN rooms r ON r.id = i.room_id JOIN workspaces w ON w.id = r.workspace_id WHERE i.id = $1"
            )
        };
    }
    let sql = match kind {
        ItemKind::Document => item_scope_sql!("documents"),
        ItemKind::CodeFile => item_scope_sql!("code_files"),
        ItemKind::Whiteboard => item_scope_sql!("whiteboards"),
    };
    scope(conn, caller, kind.table(), sql, item_id)
        .await
        .map(|_| ())
}

/// Renames an item.
pub async fn rename_item(
    pool: &Pool,
    caller: &Caller,
    kind: ItemKind,
    item_id: Uuid,
    name: &str,
) -> Result<ItemRecord, Error> {
    let name = input_validation::required_text("name", name, MAX_NAME)?;
    let mut conn = pool.get().await?;
    item_scope(&mut conn, caller, kind, item_id).await?;
    let lang = if kind == ItemKind::CodeFile {
        "language"
    } else {
        "''::text AS language"
    };
    Ok(diesel::sql_query(format!(
        "UPDATE {} SET name = $2, updated_at = now() WHERE id = $1
         RETURNING id, room_id, name, {lang}, created_by, created_at, updated_at",
        kind.table()
    ))
    .bind::<SqlUuid, _>(item_id)
    .bind::<Text, _>(name)
    .get_result(&mut conn)
    .await?)
}

/// Deletes an item and queues its Liveblocks room, in one transaction.
pub async fn delete_item(
    pool: &Pool,
    caller: &Caller,
    kind: ItemKind,
    item_id: Uuid,
) -> Result<String, Error> {
    let mut conn = pool.get().await?;
    item_scope(&mut conn, caller, kind, item_id).await?;
    let room = kind.liveblocks_room(item_id);
    conn.transaction::<_, Error, _>(async |conn| {
        diesel::sql_query(format!("DELETE FROM {} WHERE id = $1", kind.table()))
            .bind::<SqlUuid, _>(item_id)
            .execute(conn)
            .await?;
        crate::cleanup::enqueue(conn, std::slice::from_ref(&room)).await?;
        Ok(())
    })
    .await?;
    Ok(room)
}

// ------------------------------------------------------------------------------------ meetings

async fn conference_room(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    room_id: Uuid,
) -> Result<(), Error> {
    let (_, kind) = room_scope(conn, caller, room_id).await?;
    if kind != "conference" {
        return Err(Error::Precondition(format!(
            "meetings live in conference rooms, this is a {kind} room"
        )));
    }
    Ok(())
}

/// Schedules a meeting in a conference room.
pub async fn schedule_meeting(
    pool: &Pool,
    caller: &Caller,
    room_id: Uuid,
    title: &str,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
) -> Result<MeetingRecord, Error> {
    let title = input_validation::required_text("title", title, MAX_NAME)?;
    if ends_at <= starts_at {
        return Err(Error::Invalid("ends_at must be after starts_at".into()));
    }
    let mut conn = pool.get().await?;
    conference_room(&mut conn, caller, room_id).await?;
    Ok(diesel::insert_into(meetings::table)
        .values((
            meetings::id.eq(Uuid::now_v7()),
            meetings::room_id.eq(room_id),
            meetings::title.eq(title),
            meetings::starts_at.eq(starts_at),
            meetings::ends_at.eq(ends_at),
            meetings::created_by.eq(caller.actor()),
        ))
        .returning(MeetingRecord::as_returning())
        .get_result(&mut conn)
        .await?)
}

/// Meetings of a conference room, by start time.
pub async fn list_meetings(
    pool: &Pool,
    caller: &Caller,
    room_id: Uuid,
    size: i64,
    token: &str,
) -> Result<Page<MeetingRecord>, Error> {
    let (at, id) = split(decode(token)?);
    let mut conn = pool.get().await?;
    conference_room(&mut conn, caller, room_id).await?;
    let rows: Vec<MeetingRecord> = prepared(
        "SELECT id, room_id, title, starts_at, ends_at, cancelled_at, created_by, created_at FROM meetings WHERE room_id = $1
           AND ($2::timestamptz IS NULL OR (starts_at, id) > ($2, $3))
         ORDER BY starts_at, id LIMIT $4",
    )
    .bind::<SqlUuid, _>(room_id)
    .bind::<Nullable<Timestamptz>, _>(at)
    .bind::<Nullable<SqlUuid>, _>(id)
    .bind::<BigInt, _>(size + 1)
    .load(&mut conn)
    .await?;
    Ok(page(rows, size, |m| Cursor {
        at: m.starts_at,
        id: m.id,
    }))
}

/// Cancels a meeting (idempotent).
pub async fn cancel_meeting(
    pool: &Pool,
    caller: &Caller,
    meeting_id: Uuid,
) -> Result<MeetingRecord, Error> {
    let mut conn = pool.get().await?;
    let m: MeetingRecord = meetings::table
        .find(meeting_id)
        .select(MeetingRecord::as_select())
        .first(&mut conn)
        .await
        .optional()?
        .ok_or_else(|| unseen(caller, "meeting"))?;
    room_scope(&mut conn, caller, m.room_id)
        .await
        .map_err(|_| unseen(caller, "meeting"))?;
    Ok(diesel::update(meetings::table.find(meeting_id))
        .set(
            meetings::cancelled_at.eq(diesel::dsl::sql::<Nullable<Timestamptz>>(
                "COALESCE(cancelled_at, now())",
            )),
        )
        .returning(MeetingRecord::as_returning())
        .get_result(&mut conn)
        .await?)
}
