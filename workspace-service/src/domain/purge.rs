//! Deletion in two steps. The command's transaction is short and its cost does not grow with
//! what it deletes: it marks the workspace (or room) deleted, which hides it and everything in
//! it from every RPC, and queues a purge job. The purge worker (`workers::purge`) then runs
//! [`purge_chunk`] until it answers [`Chunk::Finished`]: each call deletes at most `limit` rows
//! of one table in the caller's transaction and queues the Liveblocks room of every row it
//! deletes in the same statement, so a chunk either happens whole or not at all.

use super::Outcome;
use crate::error::Error;
use crate::model::{EventId, ItemKind, LockKey, OrgId, kinds::ROOM_PREFIX};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::db::record_delivery;
use service_runtime::prepared;
use uuid::Uuid;

/// What a purge job deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeKind {
    /// A workspace and everything in it.
    Workspace,
    /// A room and its items and meetings.
    Room,
}

impl PurgeKind {
    /// The text stored in `purge_jobs.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeKind::Workspace => "workspace",
            PurgeKind::Room => "room",
        }
    }

    /// Reads `purge_jobs.kind`.
    pub fn from_db(text: &str) -> Result<Self, Error> {
        match text {
            "workspace" => Ok(PurgeKind::Workspace),
            "room" => Ok(PurgeKind::Room),
            other => Err(Error::Internal(format!("unknown purge kind {other:?}"))),
        }
    }
}

/// Queues the purge of `target` (inside the caller's transaction); false if it was queued.
pub async fn enqueue_purge(
    conn: &mut AsyncPgConnection,
    kind: PurgeKind,
    target: Uuid,
) -> QueryResult<bool> {
    let n = prepared(
        "INSERT INTO purge_jobs (target_id, kind) VALUES ($1, $2) ON CONFLICT (target_id) DO NOTHING",
    )
    .bind::<SqlUuid, _>(target)
    .bind::<Text, _>(kind.as_str())
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// `organization.deleted`, validated.
#[derive(Debug, Clone)]
pub struct DeleteWorkspace {
    pub event_id: EventId,
    /// When Clerk deleted it; `None`: unknown (the time of recording is kept).
    pub occurred_at: Option<DateTime<Utc>>,
    pub org: OrgId,
}

/// What deleting a workspace did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deletion {
    pub outcome: Outcome,
    /// Whether this command queued the purge of a workspace's rows.
    pub purge_queued: bool,
}

/// `organization.deleted`: records the delivery, leaves the tombstone, hides the workspace and
/// queues its purge, in one transaction of four statements whatever the workspace's size.
pub async fn delete_workspace(
    conn: &mut AsyncPgConnection,
    cmd: &DeleteWorkspace,
) -> Result<Deletion, Error> {
    conn.transaction::<_, Error, _>(async |conn| {
        if !record_delivery(conn, cmd.event_id.as_str()).await? {
            return Ok(Deletion {
                outcome: Outcome::Duplicate,
                purge_queued: false,
            });
        }
        LockKey::Org(&cmd.org).lock(conn).await?;
        let new_tombstone = prepared(
            "INSERT INTO workspace_tombstones (clerk_org_id, deleted_at) VALUES ($1, COALESCE($2, now())) ON CONFLICT DO NOTHING",
        )
        .bind::<Text, _>(cmd.org.as_str())
        .bind::<Nullable<Timestamptz>, _>(cmd.occurred_at)
        .execute(conn)
        .await?;
        #[derive(QueryableByName)]
        struct Hidden {
            #[diesel(sql_type = SqlUuid)]
            id: Uuid,
        }
        let hidden: Option<Hidden> = prepared(
            "UPDATE workspaces SET deleted_at = now() WHERE clerk_org_id = $1 AND deleted_at IS NULL RETURNING id",
        )
        .bind::<Text, _>(cmd.org.as_str())
        .get_result(conn)
        .await
        .optional()?;
        let purge_queued = match hidden {
            Some(ws) => {
                let event = vbase_proto::workspace::v1::workspace_event::Event::WorkspaceDeleted(
                    vbase_proto::workspace::v1::WorkspaceDeleted {},
                );
                super::changes::record_workspace(conn, ws.id, event).await?;
                enqueue_purge(conn, PurgeKind::Workspace, ws.id).await?
            }
            None => {
                // Memberships can arrive before their organization: with no workspace row,
                // they are all there is to remove.
                prepared("DELETE FROM memberships WHERE clerk_org_id = $1")
                    .bind::<Text, _>(cmd.org.as_str())
                    .execute(conn)
                    .await?;
                false
            }
        };
        let outcome = if new_tombstone == 1 || purge_queued {
            Outcome::Applied
        } else {
            Outcome::Stale
        };
        Ok(Deletion {
            outcome,
            purge_queued,
        })
    })
    .await
}

/// Hides room `room_id` and queues its purge; false if it was deleted already.
pub async fn hide_room(conn: &mut AsyncPgConnection, room_id: Uuid) -> Result<bool, Error> {
    conn.transaction::<_, Error, _>(async |conn| {
        let hidden =
            prepared("UPDATE rooms SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL")
                .bind::<SqlUuid, _>(room_id)
                .execute(conn)
                .await?;
        if hidden == 0 {
            return Ok(false);
        }
        Ok(enqueue_purge(conn, PurgeKind::Room, room_id).await?)
    })
    .await
}

/// One table's share of a purge, in the order the purge takes them (children before parents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Memberships,
    Messages,
    ReadReceipts,
    Channels,
    Items(ItemKind),
    Meetings,
    Rooms,
    /// The workspace's or the room's own row.
    Target,
}

impl Step {
    /// The steps of a purge of `kind`, in order.
    pub fn plan(kind: PurgeKind) -> &'static [Step] {
        const WORKSPACE: &[Step] = &[
            Step::Memberships,
            Step::Messages,
            Step::ReadReceipts,
            Step::Channels,
            Step::Items(ItemKind::Document),
            Step::Items(ItemKind::CodeFile),
            Step::Items(ItemKind::Whiteboard),
            Step::Meetings,
            Step::Rooms,
            Step::Target,
        ];
        const ROOM: &[Step] = &[
            Step::Items(ItemKind::Document),
            Step::Items(ItemKind::CodeFile),
            Step::Items(ItemKind::Whiteboard),
            Step::Meetings,
            Step::Target,
        ];
        match kind {
            PurgeKind::Workspace => WORKSPACE,
            PurgeKind::Room => ROOM,
        }
    }

    /// The table this step deletes from (the label of `workspace_purge_rows`).
    pub fn table(self, kind: PurgeKind) -> &'static str {
        match (self, kind) {
            (Step::Memberships, _) => "memberships",
            (Step::Messages, _) => "messages",
            (Step::ReadReceipts, _) => "read_receipts",
            (Step::Channels, _) => "channels",
            (Step::Items(i), _) => i.table(),
            (Step::Meetings, _) => "meetings",
            (Step::Rooms, _) | (Step::Target, PurgeKind::Room) => "rooms",
            (Step::Target, PurgeKind::Workspace) => "workspaces",
        }
    }

    /// The Liveblocks prefix of the rooms this step's rows own, if any.
    fn prefix(self, kind: PurgeKind) -> &'static str {
        match (self, kind) {
            (Step::Items(i), _) => i.prefix(),
            (Step::Rooms, _) | (Step::Target, PurgeKind::Room) => ROOM_PREFIX,
            _ => "",
        }
    }
}

/// Deletes the rows `$pick` names (`$1` = the target, `$3` = the limit); with `queue:` also
/// queues the Liveblocks room `$2 || ':' || id` of each. Statements that queue nothing leave
/// `$2` unused (its type is bound, so PostgreSQL accepts that).
macro_rules! purge_sql {
    (queue: $pick:expr) => {
        concat!(
            "WITH gone AS (DELETE FROM ", $pick, " RETURNING $2::text || ':' || id AS room_id),
                  queued AS (INSERT INTO liveblocks_cleanup_jobs (room_id) SELECT room_id FROM gone
                             ON CONFLICT (room_id) DO NOTHING)
             SELECT count(*) AS n FROM gone"
        )
    };
    (plain: $pick:expr) => {
        concat!(
            "WITH gone AS (DELETE FROM ", $pick, " RETURNING 1) SELECT count(*) AS n FROM gone"
        )
    };
}

macro_rules! items_of_workspace {
    ($table:literal) => {
        purge_sql!(queue: concat!(
            $table, " WHERE ctid = ANY(ARRAY(SELECT i.ctid FROM rooms r JOIN ", $table,
            " i ON i.room_id = r.id WHERE r.workspace_id = $1 LIMIT $3))"
        ))
    };
}

macro_rules! items_of_room {
    ($table:literal) => {
        purge_sql!(queue: concat!(
            $table, " WHERE ctid = ANY(ARRAY(SELECT ctid FROM ", $table, " WHERE room_id = $1 LIMIT $3))"
        ))
    };
}

/// The statement of `step` for a purge of `kind` (all but [`Step::Messages`], which walks each
/// channel's index with a cursor: [`MESSAGES_AFTER`]). Parameters: `$1` the target's id, `$2`
/// the Liveblocks prefix, `$3` the limit.
fn step_sql(kind: PurgeKind, step: Step) -> &'static str {
    use ItemKind::{CodeFile, Document, Whiteboard};
    match (kind, step) {
        (PurgeKind::Workspace, Step::Memberships) => purge_sql!(plain:
            "memberships WHERE ctid = ANY(ARRAY(SELECT m.ctid FROM workspaces w JOIN memberships m
                ON m.clerk_org_id = w.clerk_org_id WHERE w.id = $1 LIMIT $3))"),
        (PurgeKind::Workspace, Step::ReadReceipts) => purge_sql!(plain:
            "read_receipts WHERE ctid = ANY(ARRAY(SELECT r.ctid FROM channels c JOIN read_receipts r
                ON r.channel_id = c.id WHERE c.workspace_id = $1 LIMIT $3))"),
        (PurgeKind::Workspace, Step::Channels) => purge_sql!(plain:
            "channels WHERE ctid = ANY(ARRAY(SELECT ctid FROM channels WHERE workspace_id = $1 LIMIT $3))"),
        (PurgeKind::Workspace, Step::Items(Document)) => items_of_workspace!("documents"),
        (PurgeKind::Workspace, Step::Items(CodeFile)) => items_of_workspace!("code_files"),
        (PurgeKind::Workspace, Step::Items(Whiteboard)) => items_of_workspace!("whiteboards"),
        (PurgeKind::Workspace, Step::Meetings) => purge_sql!(plain:
            "meetings WHERE ctid = ANY(ARRAY(SELECT m.ctid FROM rooms r JOIN meetings m
                ON m.room_id = r.id WHERE r.workspace_id = $1 LIMIT $3))"),
        (PurgeKind::Workspace, Step::Rooms) => purge_sql!(queue:
            "rooms WHERE ctid = ANY(ARRAY(SELECT ctid FROM rooms WHERE workspace_id = $1 LIMIT $3))"),
        (PurgeKind::Workspace, Step::Target) => purge_sql!(plain:
            "workspaces WHERE id = $1 AND $3 > 0"),
        (PurgeKind::Room, Step::Items(Document)) => items_of_room!("documents"),
        (PurgeKind::Room, Step::Items(CodeFile)) => items_of_room!("code_files"),
        (PurgeKind::Room, Step::Items(Whiteboard)) => items_of_room!("whiteboards"),
        (PurgeKind::Room, Step::Meetings) => purge_sql!(plain:
            "meetings WHERE ctid = ANY(ARRAY(SELECT ctid FROM meetings WHERE room_id = $1 LIMIT $3))"),
        (PurgeKind::Room, Step::Target) => purge_sql!(queue: "rooms WHERE id = $1 AND $3 > 0"),
        (PurgeKind::Room, _) | (PurgeKind::Workspace, Step::Messages) => {
            unreachable!("no statement: {step:?} of a {kind:?} purge")
        }
    }
}

/// The channels of a workspace, whose messages the purge walks one channel at a time.
const CHANNELS_OF: &str = "SELECT id FROM channels WHERE workspace_id = $1 ORDER BY id";

/// The first chunk of a channel: its newest `$4` messages below the cursor `($2, $3)`, found
/// through the channel's index and deleted in one range. Returns how many went, the oldest
/// deleted (the new cursor) and the newest, whose distance sets the next chunk's window.
const MESSAGES_FIRST: &str = "WITH bound AS (
        SELECT created_at, id FROM messages
         WHERE channel_id = $1 AND (created_at, id) < ($2, $3)
         ORDER BY created_at DESC, id DESC OFFSET $4 - 1 LIMIT 1),
     top AS (
        SELECT created_at FROM messages WHERE channel_id = $1 AND (created_at, id) < ($2, $3)
         ORDER BY created_at DESC, id DESC LIMIT 1),
     gone AS (
        DELETE FROM messages WHERE channel_id = $1 AND (created_at, id) < ($2, $3)
           AND (created_at, id) >= (COALESCE((SELECT created_at FROM bound), '-infinity'),
                                    COALESCE((SELECT id FROM bound), '00000000-0000-0000-0000-000000000000'))
        RETURNING 1)
     SELECT (SELECT count(*) FROM gone) AS n, (SELECT created_at FROM bound) AS bound_at,
            (SELECT id FROM bound) AS bound_id, (SELECT created_at FROM top) AS top_at";

/// The next chunk of a channel: the messages in a window of `$4` seconds below the newest
/// message under the cursor `($2, $3)`, deleted in one range scan of the channel's index (no
/// second pass to count them first). Returns how many went and the window's lower end, below
/// which the channel's messages now all lie (none: the channel is empty).
const MESSAGES_WINDOW: &str = "WITH hi AS (
        SELECT created_at, id FROM messages WHERE channel_id = $1 AND (created_at, id) < ($2, $3)
         ORDER BY created_at DESC, id DESC LIMIT 1),
     gone AS (
        DELETE FROM messages WHERE channel_id = $1
           AND (created_at, id) <= ((SELECT created_at FROM hi), (SELECT id FROM hi))
           AND created_at >= (SELECT created_at FROM hi) - make_interval(secs => $4)
        RETURNING 1)
     SELECT (SELECT count(*) FROM gone) AS n,
            (SELECT created_at FROM hi) - make_interval(secs => $4) AS lo";

/// Where a channel's messages are: below `cursor`, in windows of `window` seconds that each
/// held about a chunk's worth at the rate seen so far.
#[derive(Debug, Clone, Copy)]
struct ChannelCursor {
    cursor: (DateTime<Utc>, Uuid),
    window: Option<f64>,
}

impl ChannelCursor {
    fn start() -> Self {
        Self {
            cursor: (DateTime::<Utc>::MAX_UTC, Uuid::max()),
            window: None,
        }
    }
}

/// Where a purge is: the step, and for messages the channel and the cursor in it.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Index into [`Step::plan`].
    pub step: usize,
    /// Channels whose messages are still to go (loaded at the messages step).
    channels: Option<Vec<Uuid>>,
    channel: Option<ChannelCursor>,
}

/// What one [`purge_chunk`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Deleted `rows` from `table`; more may follow.
    Deleted { table: &'static str, rows: i64 },
    /// Nothing is left: the target's own row is gone too.
    Finished,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Deletes the next chunk of at most `limit` rows of the purge of `target`, in the caller's
/// transaction, and moves `progress` on.
pub async fn purge_chunk(
    conn: &mut AsyncPgConnection,
    kind: PurgeKind,
    target: Uuid,
    limit: i64,
    progress: &mut Progress,
) -> QueryResult<Chunk> {
    let plan = Step::plan(kind);
    loop {
        let Some(&step) = plan.get(progress.step) else {
            return Ok(Chunk::Finished);
        };
        let table = step.table(kind);
        let n = if step == Step::Messages {
            match messages_chunk(conn, target, limit, progress).await? {
                Some(n) => n,
                None => {
                    progress.step += 1;
                    continue;
                }
            }
        } else {
            let c: Count = prepared(step_sql(kind, step))
                .bind::<SqlUuid, _>(target)
                .bind::<Text, _>(step.prefix(kind))
                .bind::<BigInt, _>(limit)
                .get_result(conn)
                .await?;
            if c.n < limit {
                progress.step += 1;
            }
            c.n
        };
        if n > 0 {
            return Ok(Chunk::Deleted { table, rows: n });
        }
        if step == Step::Target {
            return Ok(Chunk::Finished);
        }
    }
}

/// The next chunk of messages; `None` once every channel is empty.
///
/// A channel's first chunk finds its boundary through the index (exactly `limit` rows); later
/// chunks delete a window of time sized from the rate seen so far, which costs one pass over
/// the rows instead of two. A window that held more or fewer rows than `limit` resizes the
/// next one (by at most 4x either way).
async fn messages_chunk(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    limit: i64,
    progress: &mut Progress,
) -> QueryResult<Option<i64>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    #[derive(QueryableByName)]
    struct First {
        #[diesel(sql_type = BigInt)]
        n: i64,
        #[diesel(sql_type = Nullable<Timestamptz>)]
        bound_at: Option<DateTime<Utc>>,
        #[diesel(sql_type = Nullable<SqlUuid>)]
        bound_id: Option<Uuid>,
        #[diesel(sql_type = Nullable<Timestamptz>)]
        top_at: Option<DateTime<Utc>>,
    }
    #[derive(QueryableByName)]
    struct Window {
        #[diesel(sql_type = BigInt)]
        n: i64,
        #[diesel(sql_type = Nullable<Timestamptz>)]
        lo: Option<DateTime<Utc>>,
    }
    if progress.channels.is_none() {
        let ids: Vec<Id> = prepared(CHANNELS_OF)
            .bind::<SqlUuid, _>(workspace)
            .load(conn)
            .await?;
        progress.channels = Some(ids.into_iter().rev().map(|c| c.id).collect());
    }
    let channels = progress.channels.as_mut().expect("loaded above");
    while let Some(&channel) = channels.last() {
        let at = progress.channel.get_or_insert_with(ChannelCursor::start);
        let (cursor_at, cursor_id) = at.cursor;
        let n = match at.window {
            None => {
                let f: First = prepared(MESSAGES_FIRST)
                    .bind::<SqlUuid, _>(channel)
                    .bind::<Timestamptz, _>(cursor_at)
                    .bind::<SqlUuid, _>(cursor_id)
                    .bind::<BigInt, _>(limit)
                    .get_result(conn)
                    .await?;
                match (f.bound_at, f.bound_id, f.top_at) {
                    (Some(bound_at), Some(bound_id), Some(top_at)) => {
                        at.cursor = (bound_at, bound_id);
                        let span = (top_at - bound_at).as_seconds_f64();
                        at.window = Some(span.max(0.001));
                    }
                    // Fewer than `limit` were left: all of them went.
                    _ => {
                        channels.pop();
                        progress.channel = None;
                    }
                }
                f.n
            }
            Some(window) => {
                let w: Window = prepared(MESSAGES_WINDOW)
                    .bind::<SqlUuid, _>(channel)
                    .bind::<Timestamptz, _>(cursor_at)
                    .bind::<SqlUuid, _>(cursor_id)
                    .bind::<diesel::sql_types::Double, _>(window)
                    .get_result(conn)
                    .await?;
                match w.lo {
                    Some(lo) => {
                        at.cursor = (lo, Uuid::nil());
                        let scale = (limit as f64 / w.n.max(1) as f64).clamp(0.25, 4.0);
                        at.window = Some((window * scale).max(0.001));
                    }
                    None => {
                        channels.pop();
                        progress.channel = None;
                    }
                }
                w.n
            }
        };
        if n > 0 {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_has_a_statement_for_its_own_table() {
        for kind in [PurgeKind::Workspace, PurgeKind::Room] {
            assert_eq!(Step::plan(kind).last(), Some(&Step::Target));
            for &step in Step::plan(kind) {
                if step == Step::Messages {
                    continue;
                }
                let sql = step_sql(kind, step);
                assert!(
                    sql.contains(&format!("DELETE FROM {} ", step.table(kind))),
                    "{kind:?} {step:?}: {sql}"
                );
                assert_eq!(
                    sql.contains("liveblocks_cleanup_jobs"),
                    !step.prefix(kind).is_empty(),
                    "{kind:?} {step:?} queues rooms exactly when its rows own one"
                );
            }
        }
    }
}
