//! The change log that live watches read: one row per change of a workspace's content,
//! recorded in the change's own transaction, numbered per workspace in commit order (the
//! workspace's `change_heads` row is locked from the numbering to the commit), with the event
//! as the watcher receives it (`payload`, an encoded `ChannelEvent` without its token). The
//! same statement notifies `vbase_changes` with the workspace id, which wakes the watchers on
//! every replica once the transaction commits.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Binary, Double, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use prost::Message;
use service_runtime::prepared;
use std::time::Duration;
use uuid::Uuid;
use vbase_proto::workspace::v1 as pb;

/// The channel NOTIFY wakes watchers on.
pub const NOTIFY_CHANNEL: &str = "vbase_changes";

/// Records `event` of `channel` in `workspace` in the caller's transaction; returns its number.
pub async fn record_channel(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    channel: Uuid,
    event: pb::channel_event::Event,
) -> diesel::QueryResult<i64> {
    let payload = pb::ChannelEvent {
        event: Some(event),
        ..Default::default()
    }
    .encode_to_vec();
    record(conn, workspace, Some(channel), payload).await
}

/// Records `event` of `workspace` itself (its channels, rooms, members...) in the caller's
/// transaction; returns its number.
pub async fn record_workspace(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    event: pb::workspace_event::Event,
) -> diesel::QueryResult<i64> {
    let payload = pb::WorkspaceEvent {
        event: Some(event),
        ..Default::default()
    }
    .encode_to_vec();
    record(conn, workspace, None, payload).await
}

/// A channel's changes carry the channel (`ChannelEvent`s); the workspace's own carry none
/// (`WorkspaceEvent`s).
async fn record(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    channel: Option<Uuid>,
    payload: Vec<u8>,
) -> diesel::QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Seq {
        #[diesel(sql_type = BigInt)]
        seq: i64,
    }
    let s: Seq = prepared(
        "WITH head AS (
             INSERT INTO change_heads AS h (workspace_id, seq) VALUES ($1, 1)
             ON CONFLICT (workspace_id) DO UPDATE SET seq = h.seq + 1
             RETURNING seq),
         woken AS (SELECT pg_notify($4, $1::text))
         INSERT INTO change_log (workspace_id, seq, channel_id, payload)
         SELECT $1, head.seq, $2, $3 FROM head, woken
         RETURNING seq",
    )
    .bind::<SqlUuid, _>(workspace)
    .bind::<Nullable<SqlUuid>, _>(channel)
    .bind::<Binary, _>(payload)
    .bind::<Text, _>(NOTIFY_CHANNEL)
    .get_result(conn)
    .await?;
    Ok(s.seq)
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

/// Up to `limit` changes of `workspace` after `seq`, in order.
pub async fn after(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    seq: i64,
    limit: i64,
) -> diesel::QueryResult<Vec<Change>> {
    prepared(
        "SELECT workspace_id, seq, channel_id, payload, recorded_at FROM change_log
          WHERE workspace_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind::<SqlUuid, _>(workspace)
    .bind::<BigInt, _>(seq)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
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
    .get_result(conn)
    .await?;
    Ok((b.head, b.first))
}

/// Deletes changes older than `keep` (in batches); returns how many went.
pub async fn prune(conn: &mut AsyncPgConnection, keep: Duration) -> diesel::QueryResult<usize> {
    let mut total = 0;
    loop {
        let n = prepared(
            "DELETE FROM change_log WHERE (workspace_id, seq) IN (
                 SELECT workspace_id, seq FROM change_log
                  WHERE recorded_at < now() - make_interval(secs => $1) LIMIT 5000)",
        )
        .bind::<Double, _>(keep.as_secs_f64())
        .execute(conn)
        .await?;
        total += n;
        if n < 5000 {
            return Ok(total);
        }
    }
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
