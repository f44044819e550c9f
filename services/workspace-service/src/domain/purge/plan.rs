//! What a purge deletes, in which order, and one chunk of it.
//!
//! A purge is a list of pieces ([`plan`]), each the rows of one table, each to be emptied
//! only after the pieces its rows depend on (children before their parents). The worker's
//! lanes take the pieces in the plan's order as they become ready. The messages, by far the
//! biggest, are shared by every free lane (in shared time windows), and so are the channels
//! (taken a few at a time with `SKIP LOCKED`), whose deletes walk the messages' dead index
//! entries; every other piece is taken by one lane. Nothing is kept between attempts: a
//! purge resumes from the rows that are left.

use super::PurgeKind;
use super::windows::{Window, Windows};
use crate::model::{ItemKind, kinds::ROOM_PREFIX};
use diesel::QueryableByName;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use diesel_async::AsyncPgConnection;
use service_runtime::Settled;
use service_runtime::prepared;
use std::sync::atomic::{AtomicBool, Ordering};
use uuid::Uuid;

/// The rows of one table that a purge deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    Memberships,
    /// The workspace's live-update change log (message bodies among them), all but its last
    /// entry: the `workspace_deleted` its watchers read last, which retention removes.
    ChangeLog,
    /// The workspace's messages, in time windows shared by every lane on this piece.
    Messages,
    ReadReceipts,
    /// The workspace's channels, a few per chunk and shared by every free lane: each one's
    /// delete walks its messages' index entries (the foreign key's cascade), which the purge of
    /// the messages left behind.
    Channels,
    Items(ItemKind),
    Meetings,
    Rooms,
    /// The request ids of the workspace's creates (`create_requests`).
    Requests,
    /// The workspace's, the room's or the channel's own row.
    Target,
}

/// A piece in a plan: whether lanes share it, and what must be gone first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub piece: Piece,
    /// Every free lane joins it (else one lane takes it).
    pub shared: bool,
    /// Pieces that must be finished before it starts.
    pub after: &'static [Piece],
}

const fn one(piece: Piece, after: &'static [Piece]) -> Planned {
    Planned {
        piece,
        shared: false,
        after,
    }
}

const DOCUMENTS: Piece = Piece::Items(ItemKind::Document);
const CODE_FILES: Piece = Piece::Items(ItemKind::CodeFile);
const WHITEBOARDS: Piece = Piece::Items(ItemKind::Whiteboard);

/// The pieces of a purge of `kind`, in the order lanes take them (the biggest first, and the
/// parents' pieces early enough that their own long steps overlap with the rest).
pub fn plan(kind: PurgeKind) -> &'static [Planned] {
    use Piece::*;
    const WORKSPACE: &[Planned] = &[
        Planned {
            piece: Messages,
            shared: true,
            after: &[],
        },
        one(DOCUMENTS, &[]),
        one(CODE_FILES, &[]),
        one(ReadReceipts, &[]),
        Planned {
            piece: Channels,
            shared: true,
            after: &[Messages, ReadReceipts],
        },
        one(WHITEBOARDS, &[]),
        one(Meetings, &[]),
        one(Memberships, &[]),
        one(ChangeLog, &[]),
        one(Requests, &[]),
        one(Rooms, &[DOCUMENTS, CODE_FILES, WHITEBOARDS, Meetings]),
        one(Target, &[Memberships, ChangeLog, Requests, Channels, Rooms]),
    ];
    const ROOM: &[Planned] = &[
        one(DOCUMENTS, &[]),
        one(CODE_FILES, &[]),
        one(WHITEBOARDS, &[]),
        one(Meetings, &[]),
        one(Target, &[DOCUMENTS, CODE_FILES, WHITEBOARDS, Meetings]),
    ];
    const CHANNEL: &[Planned] = &[
        Planned {
            piece: Messages,
            shared: true,
            after: &[],
        },
        one(ReadReceipts, &[]),
        one(Target, &[Messages, ReadReceipts]),
    ];
    match kind {
        PurgeKind::Workspace => WORKSPACE,
        PurgeKind::Room => ROOM,
        PurgeKind::Channel => CHANNEL,
    }
}

impl Piece {
    /// The table this piece deletes from (the label of `workspace_purge_rows`).
    pub fn table(self, kind: PurgeKind) -> &'static str {
        match (self, kind) {
            (Piece::Messages, _) => "messages",
            (Piece::Channels, _) | (Piece::Target, PurgeKind::Channel) => "channels",
            (Piece::Memberships, _) => "memberships",
            (Piece::ChangeLog, _) => "change_log",
            (Piece::ReadReceipts, _) => "read_receipts",
            (Piece::Items(i), _) => i.table(),
            (Piece::Meetings, _) => "meetings",
            (Piece::Requests, _) => "create_requests",
            (Piece::Rooms, _) | (Piece::Target, PurgeKind::Room) => "rooms",
            (Piece::Target, PurgeKind::Workspace) => "workspaces",
        }
    }

    /// Whether the rows of this piece own Liveblocks rooms (which its chunks queue).
    pub fn queues_rooms(self, kind: PurgeKind) -> bool {
        !prefix(self, kind).is_empty()
    }
}

/// The Liveblocks prefix of the rooms a piece's rows own, if any.
fn prefix(piece: Piece, kind: PurgeKind) -> &'static str {
    match (piece, kind) {
        (Piece::Items(i), _) => i.prefix(),
        (Piece::Rooms, _) | (Piece::Target, PurgeKind::Room) => ROOM_PREFIX,
        _ => "",
    }
}

/// The statements that delete the rows `$pick` names (`$1` = the target, `$3` = the limit):
/// `[fast, tolerant]`. With `queue:` they also queue the Liveblocks room `$2 || ':' || id` of
/// each row; statements that queue nothing leave `$2` unused (its type is bound, so
/// PostgreSQL accepts that), and their two forms are one.
///
/// A room is queued only by the transaction that deletes its row, so the API cannot queue one
/// twice, and the fast form inserts without `ON CONFLICT`, whose speculative insertion cost a
/// third of the items' purge. Should a room be in the queue already, the fast form fails on
/// the queue's key; the chunk rolls back and that purge goes on with the tolerant form,
/// which skips the rooms queued already.
macro_rules! purge_sql {
    (queue: $pick:expr) => {
        [
            concat!(
                "WITH gone AS (DELETE FROM ", $pick, " RETURNING $2::text || ':' || id AS room_id),
                      queued AS (INSERT INTO liveblocks_cleanup_jobs (room_id) SELECT room_id FROM gone)
                 SELECT count(*) AS n FROM gone"
            ),
            concat!(
                "WITH gone AS (DELETE FROM ", $pick, " RETURNING $2::text || ':' || id AS room_id),
                      queued AS (INSERT INTO liveblocks_cleanup_jobs (room_id) SELECT room_id FROM gone
                                 ON CONFLICT (room_id) DO NOTHING)
                 SELECT count(*) AS n FROM gone"
            ),
        ]
    };
    (plain: $pick:expr) => {
        [concat!(
            "WITH gone AS (DELETE FROM ", $pick, " RETURNING 1) SELECT count(*) AS n FROM gone"
        ); 2]
    };
}

macro_rules! items_of_workspace {
    ($table:literal) => {
        purge_sql!(queue: concat!(
            $table, " WHERE ctid = ANY(ARRAY(SELECT ctid FROM ", $table,
            " WHERE workspace_id = $1 LIMIT $3))"
        ))
    };
}

/// The workspace of room `$1` (a room's purge job names the room alone): found through the
/// rooms' index on `id`, once per statement.
macro_rules! room_workspace {
    () => {
        "(SELECT workspace_id FROM rooms WHERE id = $1)"
    };
}

/// The workspace of channel `$1` once it is hidden (a channel's purge job names the channel
/// alone): found through the channels' index on `id`, once per statement. A live channel has
/// none, so its purge deletes nothing.
macro_rules! channel_workspace {
    () => {
        "(SELECT workspace_id FROM channels WHERE id = $1 AND deleted_at IS NOT NULL)"
    };
}

macro_rules! items_of_room {
    ($table:literal) => {
        purge_sql!(queue: concat!(
            $table, " WHERE ctid = ANY(ARRAY(SELECT ctid FROM ", $table,
            " WHERE workspace_id = ", room_workspace!(), " AND room_id = $1 LIMIT $3))"
        ))
    };
}

/// How many rows of `piece` one chunk deletes at most, for chunks of `limit` rows: channels go
/// one per 10,000 rows of a chunk (at least one), as each one's delete walks all its
/// messages' index entries.
fn piece_limit(piece: Piece, limit: i64) -> i64 {
    match piece {
        Piece::Channels => (limit / 10_000).max(1),
        _ => limit,
    }
}

/// The statements of `piece` (all but [`Piece::Messages`]) of a purge of `kind`, `[fast,
/// tolerant]` ([`purge_sql!`]). Parameters: `$1` the target's id, `$2` the Liveblocks prefix,
/// `$3` the limit.
fn piece_sql(kind: PurgeKind, piece: Piece) -> [&'static str; 2] {
    use ItemKind::{CodeFile, Document, Whiteboard};
    match (kind, piece) {
        (PurgeKind::Workspace, Piece::Channels) => purge_sql!(plain:
            "channels WHERE ctid = ANY(ARRAY(SELECT ctid FROM channels WHERE workspace_id = $1 LIMIT $3
                FOR UPDATE SKIP LOCKED))"),
        (PurgeKind::Workspace, Piece::ChangeLog) => purge_sql!(plain:
            "change_log WHERE ctid = ANY(ARRAY(SELECT ctid FROM change_log WHERE workspace_id = $1
                AND seq < (SELECT max(seq) FROM change_log WHERE workspace_id = $1) LIMIT $3))"),
        (PurgeKind::Workspace, Piece::Memberships) => purge_sql!(plain:
            "memberships WHERE ctid = ANY(ARRAY(SELECT ctid FROM memberships WHERE workspace_id = $1 LIMIT $3))"),
        (PurgeKind::Workspace, Piece::ReadReceipts) => purge_sql!(plain:
            "read_receipts WHERE ctid = ANY(ARRAY(SELECT ctid FROM read_receipts
                WHERE workspace_id = $1 LIMIT $3))"),
        (PurgeKind::Workspace, Piece::Requests) => purge_sql!(plain:
            "create_requests WHERE ctid = ANY(ARRAY(SELECT ctid FROM create_requests
                WHERE workspace_id = $1 LIMIT $3))"),
        (PurgeKind::Workspace, Piece::Items(Document)) => items_of_workspace!("documents"),
        (PurgeKind::Workspace, Piece::Items(CodeFile)) => items_of_workspace!("code_files"),
        (PurgeKind::Workspace, Piece::Items(Whiteboard)) => items_of_workspace!("whiteboards"),
        (PurgeKind::Workspace, Piece::Meetings) => purge_sql!(plain:
            "meetings WHERE ctid = ANY(ARRAY(SELECT ctid FROM meetings WHERE workspace_id = $1 LIMIT $3))"),
        (PurgeKind::Workspace, Piece::Rooms) => purge_sql!(queue:
            "rooms WHERE ctid = ANY(ARRAY(SELECT ctid FROM rooms WHERE workspace_id = $1 LIMIT $3))"),
        (PurgeKind::Workspace, Piece::Target) => purge_sql!(plain:
            "workspaces WHERE id = $1 AND $3 > 0"),
        (PurgeKind::Room, Piece::Items(Document)) => items_of_room!("documents"),
        (PurgeKind::Room, Piece::Items(CodeFile)) => items_of_room!("code_files"),
        (PurgeKind::Room, Piece::Items(Whiteboard)) => items_of_room!("whiteboards"),
        (PurgeKind::Room, Piece::Meetings) => purge_sql!(plain:
            concat!("meetings WHERE ctid = ANY(ARRAY(SELECT ctid FROM meetings WHERE workspace_id = ",
                room_workspace!(), " AND room_id = $1 LIMIT $3))")),
        (PurgeKind::Room, Piece::Target) => purge_sql!(queue:
            concat!("rooms WHERE workspace_id = ", room_workspace!(), " AND id = $1 AND $3 > 0")),
        (PurgeKind::Channel, Piece::ReadReceipts) => purge_sql!(plain:
            concat!("read_receipts WHERE ctid = ANY(ARRAY(SELECT ctid FROM read_receipts WHERE workspace_id = ",
                channel_workspace!(), " AND channel_id = $1 LIMIT $3))")),
        // What messages or receipts are left (written as the channel was hidden) go with it.
        (PurgeKind::Channel, Piece::Target) => purge_sql!(plain:
            concat!("channels WHERE workspace_id = ", channel_workspace!(), " AND id = $1 AND $3 > 0")),
        (PurgeKind::Workspace | PurgeKind::Channel, Piece::Messages)
        | (
            PurgeKind::Channel,
            Piece::Memberships
            | Piece::ChangeLog
            | Piece::Channels
            | Piece::Items(_)
            | Piece::Meetings
            | Piece::Rooms
            | Piece::Requests,
        )
        | (
            PurgeKind::Room,
            Piece::Memberships
            | Piece::ChangeLog
            | Piece::Messages
            | Piece::ReadReceipts
            | Piece::Channels
            | Piece::Rooms
            | Piece::Requests,
        ) => unreachable!("no statement: {piece:?} of a {kind:?} purge"),
    }
}

/// The channels' statement when none was free to take: waits for one a stranger holds (another
/// lane's chunk, or a write being refused that took its key share) and deletes it once free,
/// instead of taking the piece as finished and leaving the channel to fail the workspace's
/// own delete on its foreign key (a retry, spending one of the job's attempts).
/// By id, not `ctid`: a holder that updated the row leaves it at a new `ctid`, which the lock
/// wait follows and a `ctid` taken before it would not.
const CHANNEL_HELD: &str = purge_sql!(plain:
    "channels WHERE id IN (SELECT id FROM channels WHERE workspace_id = $1 LIMIT $3
        FOR UPDATE)")[0];

/// What one chunk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The table it deleted from.
    pub table: &'static str,
    /// Rows it deleted.
    pub rows: i64,
    /// Whether the piece may hold more rows for this lane.
    pub more: bool,
    /// Messages' windows to finish once this chunk committed.
    rest: Vec<Window>,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// One attempt at purging one target: what its lanes share.
pub struct PurgeRun {
    kind: PurgeKind,
    target: Uuid,
    limit: i64,
    windows: Windows,
    /// A room of this purge was in the queue already: queue with the tolerant statements.
    tolerant: AtomicBool,
}

impl PurgeRun {
    /// A purge of `target` in chunks of about `limit` rows.
    pub fn new(kind: PurgeKind, target: Uuid, limit: i64) -> Self {
        Self {
            kind,
            target,
            limit,
            windows: Windows::new(kind, target, limit),
            tolerant: AtomicBool::new(false),
        }
    }

    /// What is purged.
    pub fn kind(&self) -> PurgeKind {
        self.kind
    }

    /// The workspace's, the room's or the channel's id.
    pub fn target(&self) -> Uuid {
        self.target
    }

    /// Deletes the next chunk of `piece` in the caller's transaction; pass the chunk to
    /// [`PurgeRun::committed`] once that transaction committed.
    pub async fn chunk(&self, conn: &mut AsyncPgConnection, piece: Piece) -> QueryResult<Chunk> {
        let table = piece.table(self.kind);
        let (rows, more, rest) = match piece {
            Piece::Messages => match self.windows.chunk(conn).await? {
                Some((n, rest)) => (n, true, rest),
                None => (0, false, Vec::new()),
            },
            _ => {
                let limit = piece_limit(piece, self.limit);
                let [fast, tolerant] = piece_sql(self.kind, piece);
                let sql = if AtomicBool::load(&self.tolerant, Ordering::Relaxed) {
                    tolerant
                } else {
                    fast
                };
                let mut c: Count = prepared(sql)
                    .bind::<SqlUuid, _>(self.target)
                    .bind::<Text, _>(prefix(piece, self.kind))
                    .bind::<BigInt, _>(limit)
                    .one(conn)
                    .await?;
                if piece == Piece::Channels && c.n == 0 {
                    c = prepared(CHANNEL_HELD)
                        .bind::<SqlUuid, _>(self.target)
                        .bind::<Text, _>(prefix(piece, self.kind))
                        .bind::<BigInt, _>(1)
                        .one(conn)
                        .await?;
                }
                let more = match piece {
                    Piece::Target => false,
                    // None taken, even waiting: the rest are gone.
                    Piece::Channels => c.n > 0,
                    _ => c.n >= limit,
                };
                (c.n, more, Vec::new())
            }
        };
        Ok(Chunk {
            table,
            rows,
            more,
            rest,
        })
    }

    /// Whether a chunk failed with `e` because one of its rooms was in the queue already:
    /// the first time, this purge switches to the statements that skip such rooms, and the
    /// chunk (rolled back) can be taken again at once.
    pub fn queued_already(&self, e: &diesel::result::Error) -> bool {
        use diesel::result::{DatabaseErrorKind, Error as DbError};
        let conflict = matches!(e, DbError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.table_name() == Some("liveblocks_cleanup_jobs"));
        conflict && !self.tolerant.swap(true, Ordering::Relaxed)
    }

    /// Tells the purge that `chunk` committed: what it left of its window is taken next.
    pub async fn committed(&self, chunk: Chunk) {
        self.windows.put_back(chunk.rest).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_piece_has_a_statement_for_its_own_table() {
        for kind in [PurgeKind::Workspace, PurgeKind::Room, PurgeKind::Channel] {
            for planned in plan(kind) {
                let piece = planned.piece;
                if piece == Piece::Messages {
                    continue;
                }
                let [fast, tolerant] = piece_sql(kind, piece);
                for sql in [fast, tolerant] {
                    assert!(
                        sql.contains(&format!("DELETE FROM {} ", piece.table(kind))),
                        "{kind:?} {piece:?}: {sql}"
                    );
                    assert_eq!(
                        sql.contains("liveblocks_cleanup_jobs"),
                        piece.queues_rooms(kind),
                        "{kind:?} {piece:?} queues rooms exactly when its rows own one"
                    );
                }
                assert_eq!(
                    tolerant.contains("ON CONFLICT (room_id) DO NOTHING"),
                    piece.queues_rooms(kind),
                    "{kind:?} {piece:?}: the tolerant form skips rooms queued already"
                );
            }
        }
    }

    #[test]
    fn children_go_before_their_parents() {
        for kind in [PurgeKind::Workspace, PurgeKind::Room, PurgeKind::Channel] {
            let plan = plan(kind);
            let position = |p: Piece| plan.iter().position(|q| q.piece == p);
            // Every piece the plan names is in it, before what waits for it.
            for (i, planned) in plan.iter().enumerate() {
                for &first in planned.after {
                    let at = position(first).unwrap_or_else(|| panic!("{first:?} is planned"));
                    assert!(at < i, "{kind:?}: {first:?} before {:?}", planned.piece);
                }
            }
            // The target waits, directly or not, for every other piece.
            let mut before = vec![Piece::Target];
            let mut i = 0;
            while let Some(&p) = before.get(i) {
                let planned = plan[position(p).expect("planned")];
                for q in planned.after {
                    if !before.contains(q) {
                        before.push(*q);
                    }
                }
                i += 1;
            }
            assert_eq!(before.len(), plan.len(), "{kind:?}: {before:?}");
        }
        let workspace = plan(PurgeKind::Workspace);
        let after = |p: Piece| workspace.iter().find(|q| q.piece == p).unwrap().after;
        for (child, parent) in [
            (Piece::Messages, Piece::Channels),
            (Piece::ReadReceipts, Piece::Channels),
            (DOCUMENTS, Piece::Rooms),
            (CODE_FILES, Piece::Rooms),
            (WHITEBOARDS, Piece::Rooms),
            (Piece::Meetings, Piece::Rooms),
        ] {
            assert!(
                after(parent).contains(&child),
                "{child:?} before {parent:?}"
            );
        }
    }
}
