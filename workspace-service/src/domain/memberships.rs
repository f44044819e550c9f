//! Memberships, keyed by Clerk organization and user (they may arrive before the
//! organization), applied in the source's order. A deleted membership stays as a row marked
//! deleted, so an older upsert arriving late cannot bring it back; a newer one can (the user
//! was invited again).

use super::Outcome;
use super::access::Caller;
use super::workspaces::{org_tombstoned, user_removed, workspace_for};
use crate::error::Error;
use crate::model::{EventId, LockKey, OrgId, Role, UserId};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::db::record_delivery;
use service_runtime::prepared;

/// `organizationMembership.created/updated/deleted`, validated.
#[derive(Debug, Clone)]
pub struct MembershipChange {
    pub event_id: EventId,
    pub occurred_at: DateTime<Utc>,
    pub org: OrgId,
    pub user: UserId,
    /// The role; `None` for a delete.
    pub role: Option<Role>,
}

/// An upsert applies only over strictly older state.
const UPSERT: &str =
    "INSERT INTO memberships (clerk_org_id, clerk_user_id, role, deleted, source_updated_at)
     VALUES ($1, $2, $3, false, $4)
     ON CONFLICT (clerk_org_id, clerk_user_id) DO UPDATE SET
         role = EXCLUDED.role, deleted = false, source_updated_at = EXCLUDED.source_updated_at
     WHERE memberships.source_updated_at < EXCLUDED.source_updated_at";

/// A delete also wins a tie with an upsert of the same instant; it keeps the last role.
const DELETE: &str =
    "INSERT INTO memberships (clerk_org_id, clerk_user_id, role, deleted, source_updated_at)
     VALUES ($1, $2, '', true, $3)
     ON CONFLICT (clerk_org_id, clerk_user_id) DO UPDATE SET
         deleted = true, source_updated_at = EXCLUDED.source_updated_at
     WHERE memberships.source_updated_at <= EXCLUDED.source_updated_at";

/// Applies a membership upsert or delete, in source order.
pub async fn change_membership(
    conn: &mut AsyncPgConnection,
    cmd: &MembershipChange,
) -> Result<Outcome, Error> {
    conn.transaction::<_, Error, _>(async |conn| {
        if !record_delivery(conn, cmd.event_id.as_str()).await? {
            return Ok(Outcome::Duplicate);
        }
        LockKey::lock_membership(conn, &cmd.org, &cmd.user).await?;
        if org_tombstoned(conn, &cmd.org).await? || user_removed(conn, &cmd.user).await? {
            return Ok(Outcome::Stale);
        }
        let n = match &cmd.role {
            Some(role) => {
                prepared(UPSERT)
                    .bind::<Text, _>(cmd.org.as_str())
                    .bind::<Text, _>(cmd.user.as_str())
                    .bind::<Text, _>(role.as_str())
                    .bind::<Timestamptz, _>(cmd.occurred_at)
                    .execute(conn)
                    .await?
            }
            None => {
                prepared(DELETE)
                    .bind::<Text, _>(cmd.org.as_str())
                    .bind::<Text, _>(cmd.user.as_str())
                    .bind::<Timestamptz, _>(cmd.occurred_at)
                    .execute(conn)
                    .await?
            }
        };
        Ok(if n == 1 {
            Outcome::Applied
        } else {
            Outcome::Stale
        })
    })
    .await
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

/// `ListMembers`, validated.
#[derive(Debug, Clone)]
pub struct ListMembers {
    pub org: OrgId,
    pub size: i64,
    /// Start after this user id.
    pub after: Option<String>,
}

/// Members of a workspace by user id, and the user id the next page starts after.
pub async fn list_members(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    q: &ListMembers,
) -> Result<(Vec<MemberRecord>, Option<String>), Error> {
    workspace_for(conn, caller, &q.org).await?;
    let mut rows: Vec<MemberRecord> = prepared(
        "SELECT clerk_user_id, role, source_updated_at FROM memberships
         WHERE clerk_org_id = $1 AND NOT deleted AND ($2::text IS NULL OR clerk_user_id > $2)
         ORDER BY clerk_user_id LIMIT $3",
    )
    .bind::<Text, _>(q.org.as_str())
    .bind::<Nullable<Text>, _>(q.after.as_deref())
    .bind::<BigInt, _>(q.size + 1)
    .load(conn)
    .await?;
    let more = rows.len() as i64 > q.size;
    rows.truncate(q.size as usize);
    let next = if more {
        rows.last().map(|m| m.clerk_user_id.clone())
    } else {
        None
    };
    Ok((rows, next))
}
