//! Room items: documents, code files and whiteboards, each in a room of the matching kind and
//! each a Liveblocks room of its own, queued for clean-up in the transaction that deletes it.

use super::access::{
    Caller, ScopeSql, hold_room, require_active_user, room_scope, scope_through_room,
};
use super::changes::record_workspace;
use super::events::timestamp;
use super::liveblocks::enqueue;
use super::requests::{self, Claimed, Kind};
use crate::error::Error;
use crate::model::paging::PageRequest;
use crate::model::{Cursor, ItemKind, Page};
use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::Settled;
use service_runtime::prepared;
use uuid::Uuid;
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::workspace_event::Event;

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

impl crate::model::paging::WireSize for ItemRecord {
    fn wire_size(&self) -> usize {
        use crate::model::paging::{FIELD, LIVEBLOCKS_ID, SMALL, TIMESTAMP, UUID, text};
        FIELD
            + LIVEBLOCKS_ID
            + 2 * UUID
            + SMALL
            + text(&self.name)
            + text(&self.language)
            + text(&self.created_by)
            + 2 * TIMESTAMP
    }
}

/// The statements of one item table. Each is static text, prepared once per connection; `$1`
/// is the item's workspace, in every one but the lookup by id alone.
struct ItemSql {
    insert: &'static str,
    /// The item `$2` of workspace `$1`.
    get: &'static str,
    list: &'static str,
    rename: &'static str,
    delete: &'static str,
    /// Select the item's workspace and creator for [`scope_through_room`].
    scope: ScopeSql,
}

/// `$lang` is the column list's `language` (only code files have one); `$cols`/`$vals` add it
/// to the insert.
macro_rules! item_sql {
    ($table:literal, $lang:literal, $cols:literal, $vals:literal) => {
        ItemSql {
            insert: concat!(
                "INSERT INTO ",
                $table,
                " (workspace_id, id, room_id, name, created_by",
                $cols,
                ") VALUES ($1, $2, $3, $4, $5",
                $vals,
                ") RETURNING id, room_id, name, ",
                $lang,
                ", created_by, created_at, updated_at"
            ),
            get: concat!(
                "SELECT id, room_id, name, ",
                $lang,
                ", created_by, created_at, updated_at FROM ",
                $table,
                " WHERE workspace_id = $1 AND id = $2"
            ),
            list: concat!(
                "SELECT id, room_id, name, ",
                $lang,
                ", created_by, created_at, updated_at FROM ",
                $table,
                " WHERE workspace_id = $1 AND room_id = $2",
                " AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4))",
                " ORDER BY created_at, id LIMIT $5"
            ),
            rename: concat!(
                "UPDATE ",
                $table,
                " SET name = $3, updated_at = now() WHERE workspace_id = $1 AND id = $2",
                " RETURNING id, room_id, name, ",
                $lang,
                ", created_by, created_at, updated_at"
            ),
            delete: concat!(
                "DELETE FROM ",
                $table,
                " WHERE workspace_id = $1 AND id = $2 RETURNING room_id"
            ),
            scope: ScopeSql {
                in_workspace: concat!(
                    "SELECT r.workspace_id, w.clerk_org_id, i.created_by AS detail FROM ",
                    $table,
                    " i JOIN rooms r ON r.workspace_id = i.workspace_id AND r.id = i.room_id",
                    " JOIN workspaces w ON w.id = r.workspace_id",
                    " WHERE i.workspace_id = $1 AND i.id = $2",
                    " AND r.deleted_at IS NULL AND w.deleted_at IS NULL"
                ),
                by_id: concat!(
                    "SELECT r.workspace_id, w.clerk_org_id, i.created_by AS detail FROM ",
                    $table,
                    " i JOIN rooms r ON r.workspace_id = i.workspace_id AND r.id = i.room_id",
                    " JOIN workspaces w ON w.id = r.workspace_id",
                    " WHERE i.id = $1 AND r.deleted_at IS NULL AND w.deleted_at IS NULL"
                ),
            },
        }
    };
}

const DOCUMENTS: ItemSql = item_sql!("documents", "''::text AS language", "", "");
const CODE_FILES: ItemSql = item_sql!("code_files", "language", ", language", ", $6");
const WHITEBOARDS: ItemSql = item_sql!("whiteboards", "''::text AS language", "", "");

fn sql(kind: ItemKind) -> &'static ItemSql {
    match kind {
        ItemKind::Document => &DOCUMENTS,
        ItemKind::CodeFile => &CODE_FILES,
        ItemKind::Whiteboard => &WHITEBOARDS,
    }
}

/// `CreateRoomItem`, validated.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub room_id: Uuid,
    pub kind: ItemKind,
    pub name: String,
    /// A code file's language (empty for other kinds).
    pub language: String,
    /// The caller's id of this create, the same on its retries ([`requests`]).
    pub request_id: Option<Uuid>,
}

/// Creates a document, code file or whiteboard in a room of the matching kind. A retry of a
/// create with its request id answers the item it made.
pub async fn create_item(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    new: &NewItem,
) -> Result<ItemRecord, Error> {
    let (ws, room_kind) = room_scope(conn, caller, new.room_id).await?;
    require_active_user(conn, caller).await?;
    if room_kind != new.kind.room_kind() {
        return Err(Error::Precondition(format!(
            "a {} room cannot hold {}",
            room_kind.as_str(),
            new.kind.table()
        )));
    }
    let request = new.request_id.map(|id| requests::Request {
        workspace: ws,
        requester: requests::requester(caller, None),
        id,
        kind: Kind::Item(new.kind),
        parent: new.room_id,
    });
    let id = Uuid::now_v7();
    let q = prepared(sql(new.kind).insert)
        .bind::<SqlUuid, _>(ws)
        .bind::<SqlUuid, _>(id)
        .bind::<SqlUuid, _>(new.room_id)
        .bind::<Text, _>(&new.name)
        .bind::<Text, _>(caller.actor());
    conn.transaction::<_, Error, _>(async |conn| {
        hold_room(conn, caller, ws, new.room_id, "room").await?;
        if let Some(request) = &request
            && let Claimed::Earlier(earlier) = requests::claim(conn, request, id).await?
        {
            let item: Option<ItemRecord> = prepared(sql(new.kind).get)
                .bind::<SqlUuid, _>(ws)
                .bind::<SqlUuid, _>(earlier)
                .one(conn)
                .await
                .optional()?;
            return item.ok_or_else(|| requests::deleted_since(Kind::Item(new.kind)));
        }
        let item: ItemRecord = if new.kind == ItemKind::CodeFile {
            q.bind::<Text, _>(&new.language).one(conn).await?
        } else {
            q.one(conn).await?
        };
        let event = Event::ItemCreated(self::item(new.kind, item.clone()));
        record_workspace(conn, ws, event).await?.or_deleted()?;
        Ok(item)
    })
    .await
}

/// Items of a room, oldest first.
pub async fn list_items(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    room_id: Uuid,
    page: &PageRequest,
) -> Result<(ItemKind, Page<ItemRecord>), Error> {
    let (ws, room_kind) = room_scope(conn, caller, room_id).await?;
    let kind = room_kind.item_kind().ok_or_else(|| {
        Error::Precondition("conference rooms hold meetings: use ListMeetings".into())
    })?;
    let (at, id) = page.after_parts();
    let rows: Vec<ItemRecord> = prepared(sql(kind).list)
        .bind::<SqlUuid, _>(ws)
        .bind::<SqlUuid, _>(room_id)
        .bind::<Nullable<Timestamptz>, _>(at)
        .bind::<Nullable<SqlUuid>, _>(id)
        .bind::<BigInt, _>(page.limit())
        .load(conn)
        .await?;
    Ok((
        kind,
        page.page(rows, |i| Cursor {
            at: i.created_at,
            id: i.id,
        }),
    ))
}

/// Checks the caller may act on the item; returns its workspace and creator.
async fn item_scope(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    kind: ItemKind,
    item_id: Uuid,
) -> Result<(Uuid, String), Error> {
    scope_through_room(conn, caller, kind.table(), &sql(kind).scope, item_id).await
}

/// Renames an item (its creator, or a role that edits rooms: one that may only read them
/// renames nothing of others').
pub async fn rename_item(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    kind: ItemKind,
    item_id: Uuid,
    name: &str,
) -> Result<ItemRecord, Error> {
    let (ws, creator) = item_scope(conn, caller, kind, item_id).await?;
    caller.require_creator_or_editor(
        &creator,
        &format!("renaming someone else's {}", kind.noun()),
    )?;
    require_active_user(conn, caller).await?;
    conn.transaction::<_, Error, _>(async |conn| {
        let item: ItemRecord = prepared(sql(kind).rename)
            .bind::<SqlUuid, _>(ws)
            .bind::<SqlUuid, _>(item_id)
            .bind::<Text, _>(name)
            .one(conn)
            .await?;
        hold_room(conn, caller, ws, item.room_id, kind.noun()).await?;
        let event = Event::ItemRenamed(self::item(kind, item.clone()));
        record_workspace(conn, ws, event).await?.or_deleted()?;
        Ok(item)
    })
    .await
}

/// Deletes an item (its creator or an admin: the Liveblocks deletion cannot be undone) and
/// queues its Liveblocks room, in one transaction; returns the room id.
pub async fn delete_item(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    kind: ItemKind,
    item_id: Uuid,
) -> Result<String, Error> {
    let (ws, creator) = item_scope(conn, caller, kind, item_id).await?;
    caller.require_creator_or_admin(
        &creator,
        &format!("deleting someone else's {}", kind.noun()),
    )?;
    let room = kind.liveblocks_room(item_id);
    #[derive(QueryableByName)]
    struct Gone {
        #[diesel(sql_type = SqlUuid)]
        room_id: Uuid,
    }
    conn.transaction::<_, Error, _>(async |conn| {
        let gone: Option<Gone> = prepared(sql(kind).delete)
            .bind::<SqlUuid, _>(ws)
            .bind::<SqlUuid, _>(item_id)
            .one(conn)
            .await
            .optional()?;
        enqueue(conn, std::slice::from_ref(&room)).await?;
        if let Some(gone) = gone {
            // The room's deletion, if one is committing, comes first and hides the item.
            hold_room(conn, caller, ws, gone.room_id, kind.noun()).await?;
            record_workspace(conn, ws, Event::ItemDeleted(item_id.to_string()))
                .await?
                .or_deleted()?;
        }
        Ok(())
    })
    .await?;
    Ok(room)
}

/// An item of `kind` as a proto.
pub fn item(kind: ItemKind, i: ItemRecord) -> pb::RoomItem {
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
        created_at: Some(timestamp(i.created_at)),
        updated_at: Some(timestamp(i.updated_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_the_statements_of_its_own_table() {
        for kind in ItemKind::ALL {
            let s = sql(kind);
            let table = kind.table();
            for stmt in [
                s.insert,
                s.get,
                s.list,
                s.rename,
                s.delete,
                s.scope.in_workspace,
                s.scope.by_id,
            ] {
                assert!(stmt.contains(&format!(" {table} ")), "{stmt}");
            }
            assert_eq!(
                s.insert.contains("$6"),
                kind == ItemKind::CodeFile,
                "only code files bind a language"
            );
        }
    }
}
