//! Sync commands from Clerk (via the webhook gateway): exactly once per event id, ordered by the
//! source's time, with final tombstones for deleted organizations and users.
//!
//! Locks (transaction-scoped advisory locks, always taken in this order): `org:{id}` then
//! `user:{id}`. A membership command takes both, so it can neither race a workspace delete nor
//! a user removal.

use crate::error::Error;
use crate::schema::workspaces;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::db::{lock_entity, record_delivery};
use service_runtime::{Pool, prepared};
use std::collections::BTreeMap;
use uuid::Uuid;

/// What a sync command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written.
    Applied,
    /// This event id was applied before.
    Duplicate,
    /// Newer state or a tombstone is stored.
    Stale,
}

/// A stored workspace.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = workspaces)]
pub struct WorkspaceRecord {
    pub id: Uuid,
    pub clerk_org_id: String,
    pub name: String,
    pub slug: Option<String>,
    pub owner_clerk_id: Option<String>,
    pub source_updated_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `organization.created/updated`, validated.
#[derive(Debug, Clone)]
pub struct UpsertWorkspace {
    pub event_id: String,
    pub occurred_at: DateTime<Utc>,
    pub clerk_org_id: String,
    pub name: String,
    pub slug: Option<String>,
    pub owner_clerk_id: Option<String>,
}

/// The name of the channel every workspace starts with.
pub const GENERAL: &str = "general";

async fn org_tombstoned(conn: &mut AsyncPgConnection, clerk_org_id: &str) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Hit {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        hit: bool,
    }
    let r: Hit = prepared(
        "SELECT EXISTS (SELECT 1 FROM workspace_tombstones WHERE clerk_org_id = $1) AS hit",
    )
    .bind::<Text, _>(clerk_org_id)
    .get_result(conn)
    .await?;
    Ok(r.hit)
}

async fn user_removed(conn: &mut AsyncPgConnection, clerk_user_id: &str) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Hit {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        hit: bool,
    }
    let r: Hit =
        prepared("SELECT EXISTS (SELECT 1 FROM removed_users WHERE clerk_user_id = $1) AS hit")
            .bind::<Text, _>(clerk_user_id)
            .get_result(conn)
            .await?;
    Ok(r.hit)
}

/// Finds a workspace by Clerk organization id.
pub async fn find_workspace(
    conn: &mut AsyncPgConnection,
    clerk_org_id: &str,
) -> QueryResult<Option<WorkspaceRecord>> {
    workspaces::table
        .filter(workspaces::clerk_org_id.eq(clerk_org_id))
        .select(WorkspaceRecord::as_select())
        .first(conn)
        .await
        .optional()
}

/// Creates or updates a workspace; creates `general` on first creation, in the same transaction.
pub async fn upsert_workspace(
    pool: &Pool,
    cmd: UpsertWorkspace,
) -> Result<(Outcome, Option<WorkspaceRecord>), Error> {
    let mut conn = pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        if !record_delivery(conn, &cmd.event_id).await? {
            return Ok((Outcome::Duplicate, find_workspace(conn, &cmd.clerk_org_id).await?));
        }
        lock_entity(conn, &format!("org:{}", cmd.clerk_org_id)).await?;
        if org_tombstoned(conn, &cmd.clerk_org_id).await? {
            return Ok((Outcome::Stale, None));
        }
        match find_workspace(conn, &cmd.clerk_org_id).await? {
            None => {
                let id = Uuid::now_v7();
                let ws: WorkspaceRecord = diesel::insert_into(workspaces::table)
                    .values((
                        workspaces::id.eq(id),
                        workspaces::clerk_org_id.eq(&cmd.clerk_org_id),
                        workspaces::name.eq(&cmd.name),
                        workspaces::slug.eq(&cmd.slug),
                        workspaces::owner_clerk_id.eq(&cmd.owner_clerk_id),
                        workspaces::source_updated_at.eq(cmd.occurred_at),
                    ))
                    .returning(WorkspaceRecord::as_returning())
                    .get_result(conn)
                    .await?;
                prepared(
                    "INSERT INTO channels (id, workspace_id, name, created_by) VALUES ($1, $2, $3, 'system')
                     ON CONFLICT (workspace_id, name) DO NOTHING",
                )
                .bind::<SqlUuid, _>(Uuid::now_v7())
                .bind::<SqlUuid, _>(id)
                .bind::<Text, _>(GENERAL)
                .execute(conn)
                .await?;
                Ok((Outcome::Applied, Some(ws)))
            }
            Some(existing) if existing.source_updated_at >= cmd.occurred_at => Ok((Outcome::Stale, Some(existing))),
            Some(existing) => {
                let ws: WorkspaceRecord = diesel::update(workspaces::table.find(existing.id))
                    .set((
                        workspaces::name.eq(&cmd.name),
                        workspaces::slug.eq(&cmd.slug),
                        workspaces::owner_clerk_id.eq(cmd.owner_clerk_id.clone().or(existing.owner_clerk_id)),
                        workspaces::source_updated_at.eq(cmd.occurred_at),
                        workspaces::updated_at.eq(diesel::dsl::now),
                    ))
                    .returning(WorkspaceRecord::as_returning())
                    .get_result(conn)
                    .await?;
                Ok((Outcome::Applied, Some(ws)))
            }
        }
    })
    .await
}

/// `organizationMembership.created/updated/deleted`, validated.
#[derive(Debug, Clone)]
pub struct MembershipChange {
    pub event_id: String,
    pub occurred_at: DateTime<Utc>,
    pub clerk_org_id: String,
    pub clerk_user_id: String,
    /// Normalised role; `None` for a delete.
    pub role: Option<String>,
}

/// Applies a membership upsert or delete, in source order. Deleted memberships stay as rows
/// marked deleted, so an older upsert arriving late cannot bring them back; a newer one can
/// (the user was invited again).
pub async fn change_membership(pool: &Pool, cmd: MembershipChange) -> Result<Outcome, Error> {
    let mut conn = pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        if !record_delivery(conn, &cmd.event_id).await? {
            return Ok(Outcome::Duplicate);
        }
        lock_entity(conn, &format!("org:{}", cmd.clerk_org_id)).await?;
        lock_entity(conn, &format!("user:{}", cmd.clerk_user_id)).await?;
        if org_tombstoned(conn, &cmd.clerk_org_id).await?
            || user_removed(conn, &cmd.clerk_user_id).await?
        {
            return Ok(Outcome::Stale);
        }
        // A delete wins a tie with an upsert of the same instant.
        let (role, deleted, cmp) = match &cmd.role {
            Some(r) => (r.as_str(), false, "<"),
            None => ("", true, "<="),
        };
        let n = diesel::sql_query(format!(
            "INSERT INTO memberships (clerk_org_id, clerk_user_id, role, deleted, source_updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (clerk_org_id, clerk_user_id) DO UPDATE SET
                 role = CASE WHEN EXCLUDED.deleted THEN memberships.role ELSE EXCLUDED.role END,
                 deleted = EXCLUDED.deleted, source_updated_at = EXCLUDED.source_updated_at
             WHERE memberships.source_updated_at {cmp} EXCLUDED.source_updated_at"
        ))
        .bind::<Text, _>(&cmd.clerk_org_id)
        .bind::<Text, _>(&cmd.clerk_user_id)
        .bind::<Text, _>(role)
        .bind::<diesel::sql_types::Bool, _>(deleted)
        .bind::<Timestamptz, _>(cmd.occurred_at)
        .execute(conn)
        .await?;
        Ok(if n == 1 {
            Outcome::Applied
        } else {
            Outcome::Stale
        })
    })
    .await
}

/// What removing a user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    pub outcome: Outcome,
    pub memberships: i64,
    pub read_receipts: i64,
}

/// `user.deleted`: memberships and read receipts go, messages stay marked `author_deleted`.
pub async fn remove_user(
    pool: &Pool,
    event_id: &str,
    occurred_at: DateTime<Utc>,
    clerk_user_id: &str,
) -> Result<Removal, Error> {
    let mut conn = pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        if !record_delivery(conn, event_id).await? {
            return Ok(Removal { outcome: Outcome::Duplicate, memberships: 0, read_receipts: 0 });
        }
        lock_entity(conn, &format!("user:{clerk_user_id}")).await?;
        let new = prepared(
            "INSERT INTO removed_users (clerk_user_id, removed_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind::<Text, _>(clerk_user_id)
        .bind::<Timestamptz, _>(occurred_at)
        .execute(conn)
        .await?;
        let memberships = prepared("DELETE FROM memberships WHERE clerk_user_id = $1")
            .bind::<Text, _>(clerk_user_id)
            .execute(conn)
            .await? as i64;
        let read_receipts = prepared("DELETE FROM read_receipts WHERE clerk_user_id = $1")
            .bind::<Text, _>(clerk_user_id)
            .execute(conn)
            .await? as i64;
        prepared("UPDATE messages SET author_deleted = true WHERE author_clerk_id = $1 AND NOT author_deleted")
            .bind::<Text, _>(clerk_user_id)
            .execute(conn)
            .await?;
        let outcome = if new == 1 { Outcome::Applied } else { Outcome::Stale };
        Ok(Removal { outcome, memberships, read_receipts })
    })
    .await
}

/// What a workspace deletion removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cascade {
    /// Rows deleted by table.
    pub deleted_rows: BTreeMap<String, i64>,
    /// Liveblocks rooms queued for clean-up.
    pub liveblocks_rooms_queued: i64,
}

#[derive(QueryableByName)]
struct Deleted {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// The queue's key; a unique violation on it means a room id was queued already.
const QUEUE_KEY: &str = "liveblocks_cleanup_jobs_pkey";

/// Runs `delete` (a `DELETE ... RETURNING <Liveblocks room id> AS room_id` with `$1` bound to
/// `key`) and queues the room of every row it deleted; returns how many rows it deleted.
///
/// A deleted row's room id is new to the queue: ids are generated by this service, and a row
/// is deleted once. So the rooms go in with a plain `INSERT`, inside a savepoint. Should an id
/// be queued already, the savepoint is rolled back and the step runs again with `ON CONFLICT
/// DO NOTHING`, which PostgreSQL 15 takes 1.4–1.8x as long for (speculative insertion) on the
/// 60,000 rooms of a large workspace: the guard is only paid for when it is needed.
async fn delete_and_queue(
    conn: &mut AsyncPgConnection,
    delete: &str,
    key: Uuid,
) -> QueryResult<i64> {
    let sql = |on_conflict: &str| {
        format!(
            "WITH gone AS ({delete}),
             queued AS (INSERT INTO liveblocks_cleanup_jobs (room_id) SELECT room_id FROM gone{on_conflict})
             SELECT count(*) AS n FROM gone"
        )
    };
    let run = async |conn: &mut AsyncPgConnection, sql: String| {
        let gone: Deleted = diesel::sql_query(sql)
            .bind::<SqlUuid, _>(key)
            .get_result(conn)
            .await?;
        Ok::<_, diesel::result::Error>(gone.n)
    };
    let plain = sql("");
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
            run(conn, sql(" ON CONFLICT (room_id) DO NOTHING")).await
        }
        other => other,
    }
}

/// Deletes the rooms matching `rooms_filter` and everything in them, queueing their Liveblocks
/// rooms. Runs inside the caller's transaction.
pub(crate) async fn delete_rooms_where(
    conn: &mut AsyncPgConnection,
    rooms_filter: &str,
    key: Uuid,
    out: &mut Cascade,
) -> QueryResult<()> {
    for (table, prefix) in [
        ("documents", "doc"),
        ("code_files", "code"),
        ("whiteboards", "whiteboard"),
    ] {
        let n = delete_and_queue(
            conn,
            &format!(
                "DELETE FROM {table} WHERE room_id IN (SELECT id FROM rooms WHERE {rooms_filter})
                 RETURNING '{prefix}:' || id AS room_id"
            ),
            key,
        )
        .await?;
        *out.deleted_rows.entry(table.to_owned()).or_default() += n;
        out.liveblocks_rooms_queued += n;
    }
    let meetings = diesel::sql_query(format!(
        "DELETE FROM meetings WHERE room_id IN (SELECT id FROM rooms WHERE {rooms_filter})"
    ))
    .bind::<SqlUuid, _>(key)
    .execute(conn)
    .await? as i64;
    *out.deleted_rows.entry("meetings".into()).or_default() += meetings;
    let rooms = delete_and_queue(
        conn,
        &format!("DELETE FROM rooms WHERE {rooms_filter} RETURNING 'room:' || id AS room_id"),
        key,
    )
    .await?;
    *out.deleted_rows.entry("rooms".into()).or_default() += rooms;
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

/// Deletes the channels matching `channels_filter` (`$1` = `key`) with their messages and
/// read receipts. Runs inside the caller's transaction.
///
/// The messages and read receipts go with their channel, in one pass (`ON DELETE CASCADE`):
/// deleting them first made the foreign-key check on the channel walk them all again. Their
/// counts are the difference in the transaction's own deleted-row counts.
pub(crate) async fn delete_channels_where(
    conn: &mut AsyncPgConnection,
    channels_filter: &str,
    key: Uuid,
    out: &mut Cascade,
) -> QueryResult<()> {
    let before = channel_children_deleted(conn).await?;
    let n = diesel::sql_query(format!("DELETE FROM channels WHERE {channels_filter}"))
        .bind::<SqlUuid, _>(key)
        .execute(conn)
        .await? as i64;
    let after = channel_children_deleted(conn).await?;
    *out.deleted_rows.entry("messages".into()).or_default() += after.messages - before.messages;
    *out.deleted_rows.entry("read_receipts".into()).or_default() +=
        after.read_receipts - before.read_receipts;
    *out.deleted_rows.entry("channels".into()).or_default() += n;
    Ok(())
}

/// `organization.deleted`: one transaction removes the workspace and every child row, queues
/// every Liveblocks room, and leaves a tombstone; or nothing changes. Set-based deletes over
/// indexed foreign keys, so size only costs time, never a limit.
pub async fn delete_workspace(
    pool: &Pool,
    event_id: &str,
    occurred_at: DateTime<Utc>,
    clerk_org_id: &str,
) -> Result<(Outcome, Cascade), Error> {
    let mut conn = pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        if !record_delivery(conn, event_id).await? {
            return Ok((Outcome::Duplicate, Cascade::default()));
        }
        lock_entity(conn, &format!("org:{clerk_org_id}")).await?;
        let new_tombstone = prepared(
            "INSERT INTO workspace_tombstones (clerk_org_id, deleted_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind::<Text, _>(clerk_org_id)
        .bind::<Timestamptz, _>(occurred_at)
        .execute(conn)
        .await?;
        let mut out = Cascade::default();
        let memberships = prepared("DELETE FROM memberships WHERE clerk_org_id = $1")
            .bind::<Text, _>(clerk_org_id)
            .execute(conn)
            .await? as i64;
        out.deleted_rows.insert("memberships".into(), memberships);
        let Some(ws) = find_workspace(conn, clerk_org_id).await? else {
            let outcome = if new_tombstone == 1 { Outcome::Applied } else { Outcome::Stale };
            return Ok((outcome, out));
        };
        delete_channels_where(conn, "workspace_id = $1", ws.id, &mut out).await?;
        delete_rooms_where(conn, "workspace_id = $1", ws.id, &mut out).await?;
        let n = diesel::delete(workspaces::table.find(ws.id)).execute(conn).await? as i64;
        out.deleted_rows.insert("workspaces".into(), n);
        Ok((Outcome::Applied, out))
    })
    .await
}
