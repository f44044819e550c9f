//! The change log that live watches read: one row per change of a workspace's content,
//! recorded in the change's own transaction, numbered per workspace in commit order (the
//! workspace's `change_heads` row is locked from the numbering to the commit), with the event
//! as the watcher receives it (`payload`, an encoded `ChannelEvent` without its token). The
//! same statement notifies `vbase_changes` with the workspace id, which wakes the watchers on
//! every replica once the transaction commits.
//!
//! An entry that carries a message's body names the message (`message_id`); editing or
//! deleting the message clears the body from those entries in the same transaction
//! ([`forget_message_bodies`]), so a resumed watch never replays deleted or pre-edit text.
//! Entries are pruned by number ([`prune`]): what is kept of a workspace is always every
//! number after some point, so a resume token is either answered from its very next change or
//! refused, never answered with a gap.
//!
//! A workspace's deletion closes its log ([`close`]): its entry is the last the workspace ever
//! gets. A write whose access check passed as the deletion committed finds the log closed when
//! it takes its number, and is refused (a content write) or records nothing (a sync command).

use crate::error::Error;
use chrono::{DateTime, Utc};
use diesel::sql_types::{
    Array, BigInt, Binary, Bool, Double, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use prost::Message;
use service_runtime::Settled;
use service_runtime::prepared;
use std::time::Duration;
use uuid::Uuid;
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::channel_event::Event as ChannelChange;

/// The channel NOTIFY wakes watchers on.
pub const NOTIFY_CHANNEL: &str = "vbase_changes";

/// What recording a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a closed log means the workspace was deleted: refuse the write, or record nothing"]
pub enum Recorded {
    /// Recorded with this number.
    At(i64),
    /// Not recorded: the workspace was deleted, and its deletion is its log's last entry.
    Closed,
}

impl Recorded {
    /// The number, or the answer to a write asked for in a workspace deleted while it ran
    /// (NOT_FOUND): its transaction then rolls back, so the write leaves nothing.
    pub fn or_deleted(self) -> Result<i64, Error> {
        match self {
            Recorded::At(seq) => Ok(seq),
            Recorded::Closed => Err(Error::NotFound(
                "the workspace was deleted while this call ran".into(),
            )),
        }
    }
}

/// Records `event` of `channel` in `workspace` in the caller's transaction. A posted or edited
/// message's entry names the message, whose later edit or delete clears its body.
pub async fn record_channel(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    channel: Uuid,
    event: ChannelChange,
) -> diesel::QueryResult<Recorded> {
    let message = match &event {
        ChannelChange::MessagePosted(m) | ChannelChange::MessageEdited(m) => {
            Uuid::try_parse(&m.id).ok()
        }
        _ => None,
    };
    let payload = pb::ChannelEvent {
        event: Some(event),
        ..Default::default()
    }
    .encode_to_vec();
    record(conn, workspace, Some(channel), message, payload, false).await
}

/// Records `event` of `workspace` itself (its channels, rooms, members...) in the caller's
/// transaction.
pub async fn record_workspace(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    event: pb::workspace_event::Event,
) -> diesel::QueryResult<Recorded> {
    record(conn, workspace, None, None, workspace_payload(event), false).await
}

/// Records the deletion of `workspace` in the caller's transaction and closes its log: no
/// change is numbered after it, so it stays the log's last entry (which the purge keeps and
/// watchers read last).
pub async fn close(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    deletion: pb::workspace_event::Event,
) -> diesel::QueryResult<Recorded> {
    record(
        conn,
        workspace,
        None,
        None,
        workspace_payload(deletion),
        true,
    )
    .await
}

fn workspace_payload(event: pb::workspace_event::Event) -> Vec<u8> {
    pb::WorkspaceEvent {
        event: Some(event),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A channel's changes carry the channel (`ChannelEvent`s); the workspace's own carry none
/// (`WorkspaceEvent`s). Taking the number locks the workspace's head until the commit, and a
/// closed head (`closes`, set by the deletion) numbers nothing more: a write that waited for
/// the deletion's lock then finds it closed.
async fn record(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    channel: Option<Uuid>,
    message: Option<Uuid>,
    payload: Vec<u8>,
    closes: bool,
) -> diesel::QueryResult<Recorded> {
    #[derive(QueryableByName)]
    struct Seq {
        #[diesel(sql_type = BigInt)]
        seq: i64,
    }
    let s: Option<Seq> = prepared(
        "WITH head AS (
             INSERT INTO change_heads AS h (workspace_id, seq, closed) VALUES ($1, 1, $6)
             ON CONFLICT (workspace_id) DO UPDATE SET seq = h.seq + 1, closed = $6
              WHERE NOT h.closed
             RETURNING seq),
         woken AS (SELECT pg_notify($4, $1::text) FROM head)
         INSERT INTO change_log (workspace_id, seq, channel_id, payload, message_id)
         SELECT $1, head.seq, $2, $3, $5 FROM head, woken
         RETURNING seq",
    )
    .bind::<SqlUuid, _>(workspace)
    .bind::<Nullable<SqlUuid>, _>(channel)
    .bind::<Binary, _>(payload)
    .bind::<Text, _>(NOTIFY_CHANNEL)
    .bind::<Nullable<SqlUuid>, _>(message)
    .bind::<Bool, _>(closes)
    .one(conn)
    .await
    .optional()?;
    Ok(s.map_or(Recorded::Closed, |s| Recorded::At(s.seq)))
}

/// Clears the body of `message` of `workspace` from every entry that still carries it (its
/// post, earlier edits), in the caller's transaction: called before an edit or a delete of the
/// message is recorded. The entries stay (their numbers, what happened), with an empty body.
pub async fn forget_message_bodies(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    message: Uuid,
) -> diesel::QueryResult<usize> {
    #[derive(QueryableByName)]
    struct Carrying {
        #[diesel(sql_type = BigInt)]
        seq: i64,
        #[diesel(sql_type = Binary)]
        payload: Vec<u8>,
    }
    let rows: Vec<Carrying> = prepared(
        "SELECT seq, payload FROM change_log WHERE workspace_id = $1 AND message_id = $2
         FOR UPDATE",
    )
    .bind::<SqlUuid, _>(workspace)
    .bind::<SqlUuid, _>(message)
    .load(conn)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut seqs = Vec::with_capacity(rows.len());
    let mut payloads = Vec::with_capacity(rows.len());
    for r in rows {
        let mut e = pb::ChannelEvent::decode(r.payload.as_slice())
            .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))?;
        if let Some(ChannelChange::MessagePosted(m) | ChannelChange::MessageEdited(m)) =
            e.event.as_mut()
        {
            m.body.clear();
        }
        seqs.push(r.seq);
        payloads.push(e.encode_to_vec());
    }
    prepared(
        "UPDATE change_log c SET payload = u.payload, message_id = NULL
           FROM unnest($2::bigint[], $3::bytea[]) AS u (seq, payload)
          WHERE c.workspace_id = $1 AND c.seq = u.seq",
    )
    .bind::<SqlUuid, _>(workspace)
    .bind::<Array<BigInt>, _>(seqs)
    .bind::<Array<Binary>, _>(payloads)
    .execute(conn)
    .await
}

/// A recorded change.
#[derive(Debug, Clone, QueryableByName)]
pub struct Change {
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub channel_id: Option<Uuid>,
    #[diesel(sql_type = Binary)]
    pub payload: Vec<u8>,
    #[diesel(sql_type = Timestamptz)]
    pub recorded_at: DateTime<Utc>,
}

impl Change {
    /// A channel's event as its watcher receives it, with its resume token.
    pub fn event(&self) -> Option<pb::ChannelEvent> {
        let mut e = pb::ChannelEvent::decode(self.payload.as_slice()).ok()?;
        e.resume_token = token(self.workspace_id, self.seq);
        e.recorded_at = Some(self.recorded());
        Some(e)
    }

    /// A workspace's own event as its watcher receives it, with its resume token.
    pub fn workspace_event(&self) -> Option<pb::WorkspaceEvent> {
        let mut e = pb::WorkspaceEvent::decode(self.payload.as_slice()).ok()?;
        e.resume_token = token(self.workspace_id, self.seq);
        e.recorded_at = Some(self.recorded());
        Some(e)
    }

    fn recorded(&self) -> prost_types::Timestamp {
        vbase_proto::timestamp_from_millis(self.recorded_at.timestamp_millis())
    }
}

/// The resume token after change `seq` of `workspace`.
pub fn token(workspace: Uuid, seq: i64) -> String {
    format!("{}.{seq}", workspace.simple())
}

/// The change number a token of `workspace` resumes after; `None` when it is not one.
pub fn parse_token(workspace: Uuid, token: &str) -> Option<i64> {
    let (ws, seq) = token.split_once('.')?;
    (Uuid::try_parse(ws).ok()? == workspace)
        .then(|| seq.parse::<i64>().ok().filter(|s| *s >= 0))
        .flatten()
}

/// Changes read in one go, in order.
#[derive(Debug, Default)]
pub struct Batch {
    pub changes: Vec<Change>,
    /// More changes follow the last one (the batch ended at its row or byte limit).
    pub more: bool,
}

/// The changes of `workspace` after `seq`, in order: at most `rows`, and no more payload
/// bytes than `bytes` (but at least one change, whatever its size), so what one read holds in
/// memory is bounded in bytes.
pub async fn after(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    seq: i64,
    rows: i64,
    bytes: i64,
) -> diesel::QueryResult<Batch> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(embed)]
        change: Change,
        #[diesel(sql_type = Bool)]
        followed: bool,
    }
    // The sizes are summed over the rows the LIMIT took, never over the rest of the log.
    let read: Vec<Row> = prepared(
        "SELECT workspace_id, seq, channel_id, payload, recorded_at, followed FROM (
             SELECT workspace_id, seq, channel_id, payload, recorded_at,
                    sum(octet_length(payload)) OVER w AS upto,
                    row_number() OVER w AS n,
                    lead(seq) OVER w IS NOT NULL AS followed
               FROM (SELECT workspace_id, seq, channel_id, payload, recorded_at FROM change_log
                      WHERE workspace_id = $1 AND seq > $2 ORDER BY seq LIMIT $3 + 1) l
             WINDOW w AS (ORDER BY seq)) b
          WHERE n <= $3 AND (n = 1 OR upto <= $4)
          ORDER BY seq",
    )
    .bind::<SqlUuid, _>(workspace)
    .bind::<BigInt, _>(seq)
    .bind::<BigInt, _>(rows.max(1))
    .bind::<BigInt, _>(bytes)
    .load(conn)
    .await?;
    let more = read.last().is_some_and(|r| r.followed);
    Ok(Batch {
        changes: read.into_iter().map(|r| r.change).collect(),
        more,
    })
}

/// The workspace's last change still kept, if any: a deleted workspace's is its deletion,
/// which its purge keeps while deleting the rest in no particular order.
pub async fn last(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
) -> diesel::QueryResult<Option<Change>> {
    let mut last: Vec<Change> = prepared(
        "SELECT workspace_id, seq, channel_id, payload, recorded_at FROM change_log
          WHERE workspace_id = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind::<SqlUuid, _>(workspace)
    .load(conn)
    .await?;
    Ok(last.pop())
}

/// The workspace's last change number (0: none yet), and the first one still kept (`None`:
/// none kept).
pub async fn bounds(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
) -> diesel::QueryResult<(i64, Option<i64>)> {
    #[derive(QueryableByName)]
    struct Bounds {
        #[diesel(sql_type = BigInt)]
        head: i64,
        #[diesel(sql_type = Nullable<BigInt>)]
        first: Option<i64>,
    }
    let b: Bounds = prepared(
        "SELECT COALESCE((SELECT seq FROM change_heads WHERE workspace_id = $1), 0) AS head,
                (SELECT min(seq) FROM change_log WHERE workspace_id = $1) AS first",
    )
    .bind::<SqlUuid, _>(workspace)
    .one(conn)
    .await?;
    Ok((b.head, b.first))
}

/// Deletes what is older than `keep`, by number: per workspace, every change up to the last
/// one recorded before the cut-off. A transaction's `recorded_at` is its start, so numbers and
/// times may disagree; cutting by time alone could delete a change and keep the one before
/// it, and a resume token there would then skip a change in silence. Returns how many went.
pub async fn prune(conn: &mut AsyncPgConnection, keep: Duration) -> diesel::QueryResult<usize> {
    #[derive(QueryableByName)]
    struct Cut {
        #[diesel(sql_type = SqlUuid)]
        workspace_id: Uuid,
        #[diesel(sql_type = BigInt)]
        upto: i64,
    }
    let cuts: Vec<Cut> = prepared(
        "SELECT workspace_id, max(seq) AS upto FROM change_log
          WHERE recorded_at < now() - make_interval(secs => $1)
          GROUP BY workspace_id",
    )
    .bind::<Double, _>(keep.as_secs_f64())
    .load(conn)
    .await?;
    let mut total = 0;
    for cut in cuts {
        loop {
            let n = prepared(
                "DELETE FROM change_log WHERE workspace_id = $1 AND seq IN (
                     SELECT seq FROM change_log WHERE workspace_id = $1 AND seq <= $2
                      ORDER BY seq LIMIT 5000)",
            )
            .bind::<SqlUuid, _>(cut.workspace_id)
            .bind::<BigInt, _>(cut.upto)
            .execute(conn)
            .await?;
            total += n;
            if n < 5000 {
                break;
            }
        }
    }
    // A purged workspace's head goes with its last change: nothing numbers its changes again
    // (a head being created commits with its workspace, which this snapshot does not see).
    prepared(
        "DELETE FROM change_heads h
          WHERE NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.id = h.workspace_id)
            AND NOT EXISTS (SELECT 1 FROM change_log l WHERE l.workspace_id = h.workspace_id)",
    )
    .execute(conn)
    .await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_belong_to_their_workspace() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(parse_token(a, &token(a, 42)), Some(42));
        assert_eq!(parse_token(b, &token(a, 42)), None);
        for bad in [
            "",
            "42",
            "x.1",
            &format!("{}.-1", a.simple()),
            &format!("{}.x", a.simple()),
        ] {
            assert_eq!(parse_token(a, bad), None, "{bad}");
        }
    }
}
