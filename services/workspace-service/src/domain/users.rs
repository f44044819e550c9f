//! Users deleted in Clerk: their memberships and read receipts go; their messages stay and
//! read as written by a deleted author (through `removed_users`: no message is rewritten, so
//! the command's cost does not grow with how much the user wrote). The removal is final.

use super::Outcome;
use crate::error::Error;
use crate::model::{EventId, LockKey, UserId};
use chrono::{DateTime, Utc};
use diesel::sql_types::{Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::db::record_delivery;
use service_runtime::prepared;

/// `user.deleted`, validated.
#[derive(Debug, Clone)]
pub struct RemoveUser {
    pub event_id: EventId,
    /// When Clerk deleted the user; `None`: unknown (the time of recording is kept, which
    /// refuses every token issued before it).
    pub occurred_at: Option<DateTime<Utc>>,
    pub user: UserId,
}

/// What removing a user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    pub outcome: Outcome,
    pub memberships: i64,
    pub read_receipts: i64,
}

/// `user.deleted`: memberships and read receipts go, messages stay.
pub async fn remove_user(conn: &mut AsyncPgConnection, cmd: &RemoveUser) -> Result<Removal, Error> {
    let user = cmd.user.as_str();
    conn.transaction::<_, Error, _>(async |conn| {
        if !record_delivery(conn, cmd.event_id.as_str()).await? {
            return Ok(Removal {
                outcome: Outcome::Duplicate,
                memberships: 0,
                read_receipts: 0,
            });
        }
        LockKey::User(&cmd.user).lock(conn).await?;
        let new = prepared(
            "INSERT INTO removed_users (clerk_user_id, removed_at) VALUES ($1, COALESCE($2, now())) ON CONFLICT DO NOTHING",
        )
        .bind::<Text, _>(user)
        .bind::<Nullable<Timestamptz>, _>(cmd.occurred_at)
        .execute(conn)
        .await?;
        #[derive(diesel::QueryableByName)]
        struct Left {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
            workspace_id: Option<uuid::Uuid>,
        }
        // The workspaces the user leaves, whose watchers hear it.
        let left: Vec<Left> = prepared(
            "WITH gone AS (DELETE FROM memberships WHERE clerk_user_id = $1 RETURNING workspace_id)
             SELECT w.id AS workspace_id FROM gone
               LEFT JOIN workspaces w ON w.id = gone.workspace_id AND w.deleted_at IS NULL",
        )
        .bind::<Text, _>(user)
        .load(conn)
        .await?;
        let memberships = left.len() as i64;
        // Each record locks its workspace's `change_heads` row until the commit: in workspace
        // order, so two removals sharing workspaces wait for each other instead of deadlocking.
        let mut workspaces: Vec<uuid::Uuid> = left.into_iter().filter_map(|l| l.workspace_id).collect();
        workspaces.sort_unstable();
        workspaces.dedup();
        for ws in workspaces {
            let event = vbase_proto::workspace::v1::workspace_event::Event::MemberRemoved(user.to_owned());
            // A workspace deleted since it was read here has closed its log (its watchers
            // heard the deletion, its purge takes the rest): nothing to tell.
            let _ = super::changes::record_workspace(conn, ws, event).await?;
        }
        let read_receipts = prepared("DELETE FROM read_receipts WHERE clerk_user_id = $1")
            .bind::<Text, _>(user)
            .execute(conn)
            .await? as i64;
        let outcome = if new == 1 {
            Outcome::Applied
        } else {
            Outcome::Stale
        };
        Ok(Removal {
            outcome,
            memberships,
            read_receipts,
        })
    })
    .await
}
