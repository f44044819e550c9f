//! Deletion in two steps. The command's transaction is short and its cost does not grow with
//! what it deletes: it marks the workspace (or room, or channel) deleted, which hides it and
//! everything in it from every RPC, and queues a purge job. The purge worker (`workers::purge`)
//! then deletes the rows in chunks ([`plan`]): each chunk deletes a bounded number of rows of
//! one table in a transaction of its own and queues the Liveblocks room of every row it
//! deletes in the same statement, so a chunk either happens whole or not at all.

mod plan;
mod windows;

pub use plan::{Piece, Planned, PurgeRun, plan};

use super::Outcome;
use super::changes::Recorded;
use crate::error::Error;
use crate::model::{EventId, LockKey, OrgId};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::Settled;
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
    /// A channel and its messages and read receipts.
    Channel,
}

impl PurgeKind {
    /// The text stored in `purge_jobs.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeKind::Workspace => "workspace",
            PurgeKind::Room => "room",
            PurgeKind::Channel => "channel",
        }
    }

    /// Reads `purge_jobs.kind`.
    pub fn from_db(text: &str) -> Result<Self, Error> {
        match text {
            "workspace" => Ok(PurgeKind::Workspace),
            "room" => Ok(PurgeKind::Room),
            "channel" => Ok(PurgeKind::Channel),
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
        .one(conn)
        .await
        .optional()?;
        let purge_queued = match hidden {
            Some(ws) => {
                let event = vbase_proto::workspace::v1::workspace_event::Event::WorkspaceDeleted(
                    vbase_proto::workspace::v1::WorkspaceDeleted {},
                );
                // Only a deletion closes a log, and the org lock orders deletions.
                if super::changes::close(conn, ws.id, event).await? == Recorded::Closed {
                    tracing::error!(workspace = %ws.id, "the change log of a live workspace was closed");
                }
                enqueue_purge(conn, PurgeKind::Workspace, ws.id).await?
            }
            None => {
                // Memberships can arrive before their organization: with no workspace row,
                // they are all there is to remove.
                let workspace = super::workspaces::workspace_id_of(conn, &cmd.org).await?;
                prepared("DELETE FROM memberships WHERE workspace_id = $1")
                    .bind::<SqlUuid, _>(workspace)
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

/// Hides room `room_id` of `workspace` and queues its purge; false if it was deleted already.
pub async fn hide_room(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    room_id: Uuid,
) -> Result<bool, Error> {
    conn.transaction::<_, Error, _>(async |conn| {
        let hidden = prepared(
            "UPDATE rooms SET deleted_at = now()
              WHERE workspace_id = $1 AND id = $2 AND deleted_at IS NULL",
        )
        .bind::<SqlUuid, _>(workspace)
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

/// Hides channel `channel_id` of `workspace` and queues its purge (inside the caller's
/// transaction); false if it was deleted already. The update waits for the writes that hold
/// the channel ([`super::access::hold_channel`]), and those that come after find it hidden.
pub async fn hide_channel(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    channel_id: Uuid,
) -> Result<bool, Error> {
    let hidden = prepared(
        "UPDATE channels SET deleted_at = now(), name = 'deleted:' || id::text
          WHERE workspace_id = $1 AND id = $2 AND deleted_at IS NULL",
    )
    .bind::<SqlUuid, _>(workspace)
    .bind::<SqlUuid, _>(channel_id)
    .execute(conn)
    .await?;
    if hidden == 0 {
        return Ok(false);
    }
    enqueue_purge(conn, PurgeKind::Channel, channel_id).await?;
    Ok(true)
}
