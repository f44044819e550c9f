//! Memberships, keyed by workspace and user: the workspace id of an organization is known
//! before its workspace is (see [`workspace_id_of`]), as a membership may arrive before the
//! organization. Applied in the order of Clerk's own clock of the membership: of two
//! memberships of one user in one organization (removed, then invited again) the one created
//! later wins; within one membership id, its `updated_at`, then the time the source said it,
//! then the event id. A deleted membership stays as a row marked deleted and is final for its
//! id, so a late event of that membership cannot bring it back; a newer membership can.

use super::Outcome;
use super::access::Caller;
use super::access::workspace_for;
use super::events::timestamp;
use super::workspaces::{org_tombstoned, user_removed, workspace_id_of};
use crate::error::Error;
use crate::model::{EventId, LockKey, OrgId, Role, UserId};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::db::record_delivery;
use service_runtime::prepared;
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::workspace_event::Event;

/// `organizationMembership.created/updated/deleted`, validated.
#[derive(Debug, Clone)]
pub struct MembershipChange {
    pub event_id: EventId,
    pub occurred_at: DateTime<Utc>,
    pub org: OrgId,
    pub user: UserId,
    /// The role; `None` for a delete.
    pub role: Option<Role>,
    /// `orgmem_...`; empty when the sender did not say (ordered by `occurred_at` alone).
    pub membership_id: String,
    /// The membership's `created_at`.
    pub membership_created_at: Option<DateTime<Utc>>,
    /// When the source said it: a tie-break for upserts, and when access ended for a delete.
    pub event_time: Option<DateTime<Utc>>,
}

/// The columns both statements write, and their values `$1..$7`, the role and the workspace
/// id (`$workspace`).
macro_rules! membership_insert {
    ($role:literal, $deleted:literal, $workspace:literal) => {
        concat!(
            "INSERT INTO memberships (workspace_id, clerk_org_id, clerk_user_id, role, deleted,
                 source_updated_at, clerk_membership_id, membership_created_at, source_event_time,
                 source_event_id, deleted_at)
             VALUES (", $workspace, ", $1, $2, ", $role, ", ", $deleted, ", $3, $4,
                 COALESCE($5, '-infinity'), COALESCE($6, '-infinity'), $7,
                 CASE WHEN ", $deleted, " THEN COALESCE($6, now()) END)
             ON CONFLICT (workspace_id, clerk_user_id) DO UPDATE SET "
        )
    };
}

/// Whether the row and the command both name their membership (else: ordered by time alone).
macro_rules! known {
    () => {
        "(memberships.clerk_membership_id <> '' AND EXCLUDED.clerk_membership_id <> '')"
    };
}

/// An upsert applies to a row of an earlier membership, or to older state of the same
/// membership while it is not deleted.
const UPSERT: &str = concat!(
    membership_insert!("$8", "false", "$9"),
    "role = EXCLUDED.role, deleted = false, deleted_at = NULL,
     source_updated_at = EXCLUDED.source_updated_at,
     recorded_at = CASE WHEN memberships.clerk_membership_id = EXCLUDED.clerk_membership_id
                        THEN memberships.recorded_at ELSE now() END,
     clerk_membership_id = EXCLUDED.clerk_membership_id,
     membership_created_at = EXCLUDED.membership_created_at,
     source_event_time = EXCLUDED.source_event_time, source_event_id = EXCLUDED.source_event_id
     WHERE (", known!(), " AND (memberships.membership_created_at, memberships.clerk_membership_id)
                               < (EXCLUDED.membership_created_at, EXCLUDED.clerk_membership_id))
        OR (", known!(), " AND memberships.clerk_membership_id = EXCLUDED.clerk_membership_id
            AND NOT memberships.deleted
            AND (memberships.source_updated_at, memberships.source_event_time, memberships.source_event_id)
              < (EXCLUDED.source_updated_at, EXCLUDED.source_event_time, EXCLUDED.source_event_id))
        OR (NOT ", known!(), "
            AND (memberships.source_updated_at, memberships.source_event_time, memberships.source_event_id)
              < (EXCLUDED.source_updated_at, EXCLUDED.source_event_time, EXCLUDED.source_event_id))"
);

/// A delete ends this membership (final for its id) or an earlier one it replaced; a later
/// membership is left alone. It keeps the last role.
const DELETE: &str = concat!(
    membership_insert!("''", "true", "$8"),
    "deleted = true, deleted_at = EXCLUDED.deleted_at,
     source_updated_at = EXCLUDED.source_updated_at,
     clerk_membership_id = CASE WHEN EXCLUDED.clerk_membership_id = ''
         THEN memberships.clerk_membership_id ELSE EXCLUDED.clerk_membership_id END,
     membership_created_at = CASE WHEN EXCLUDED.clerk_membership_id = ''
         THEN memberships.membership_created_at ELSE EXCLUDED.membership_created_at END,
     source_event_time = EXCLUDED.source_event_time, source_event_id = EXCLUDED.source_event_id
     WHERE (",
    known!(),
    " AND (memberships.membership_created_at, memberships.clerk_membership_id)
                               < (EXCLUDED.membership_created_at, EXCLUDED.clerk_membership_id))
        OR (",
    known!(),
    " AND memberships.clerk_membership_id = EXCLUDED.clerk_membership_id
            AND NOT memberships.deleted)
        OR (NOT ",
    known!(),
    " AND memberships.source_updated_at <= EXCLUDED.source_updated_at)"
);

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
        let workspace = workspace_id_of(conn, &cmd.org).await?;
        let statement = prepared(if cmd.role.is_some() { UPSERT } else { DELETE })
            .bind::<Text, _>(cmd.org.as_str())
            .bind::<Text, _>(cmd.user.as_str())
            .bind::<Timestamptz, _>(cmd.occurred_at)
            .bind::<Text, _>(&cmd.membership_id)
            .bind::<Nullable<Timestamptz>, _>(cmd.membership_created_at)
            .bind::<Nullable<Timestamptz>, _>(cmd.event_time)
            .bind::<Text, _>(cmd.event_id.as_str());
        let n = match &cmd.role {
            Some(role) => {
                statement
                    .bind::<Text, _>(role.as_str())
                    .bind::<SqlUuid, _>(workspace)
                    .execute(conn)
                    .await?
            }
            None => {
                statement
                    .bind::<SqlUuid, _>(workspace)
                    .execute(conn)
                    .await?
            }
        };
        if n != 1 {
            return Ok(Outcome::Stale);
        }
        // Watchers of the workspace hear it (a membership may precede its workspace).
        if let Some(ws) = super::workspaces::find_workspace(conn, cmd.org.as_str()).await? {
            let event = match &cmd.role {
                Some(role) => Event::MemberChanged(vbase_proto::workspace::v1::Member {
                    clerk_user_id: cmd.user.as_str().to_owned(),
                    role: role.as_str().to_owned(),
                    updated_at: Some(vbase_proto::timestamp_from_millis(
                        cmd.occurred_at.timestamp_millis(),
                    )),
                }),
                None => Event::MemberRemoved(cmd.user.as_str().to_owned()),
            };
            // Under the org lock, as its deletion is: the workspace found is not deleted.
            let _ = super::changes::record_workspace(conn, ws.id, event).await?;
        }
        Ok(Outcome::Applied)
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
    /// Bytes the answer may carry.
    pub max_bytes: usize,
}

impl crate::model::paging::WireSize for MemberRecord {
    fn wire_size(&self) -> usize {
        use crate::model::paging::{FIELD, TIMESTAMP, text};
        FIELD + text(&self.clerk_user_id) + text(&self.role) + TIMESTAMP
    }
}

/// Members of a workspace by user id (a page of at most its rows and bytes), and the user id
/// the next page starts after.
pub async fn list_members(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    q: &ListMembers,
) -> Result<(Vec<MemberRecord>, Option<String>), Error> {
    let ws = workspace_for(conn, caller, &q.org).await?;
    let mut rows: Vec<MemberRecord> = prepared(
        "SELECT clerk_user_id, role, source_updated_at FROM memberships
         WHERE workspace_id = $1 AND NOT deleted AND ($2::text IS NULL OR clerk_user_id > $2)
         ORDER BY clerk_user_id LIMIT $3",
    )
    .bind::<SqlUuid, _>(ws.id)
    .bind::<Nullable<Text>, _>(q.after.as_deref())
    .bind::<BigInt, _>(q.size + 1)
    .load(conn)
    .await?;
    let keep = crate::model::paging::fitting(
        &rows,
        q.size as usize,
        crate::model::paging::row_budget(q.max_bytes),
    );
    let more = rows.len() > keep;
    rows.truncate(keep);
    let next = if more {
        rows.last().map(|m| m.clerk_user_id.clone())
    } else {
        None
    };
    Ok((rows, next))
}

impl From<MemberRecord> for pb::Member {
    fn from(r: MemberRecord) -> Self {
        pb::Member {
            clerk_user_id: r.clerk_user_id,
            role: r.role,
            updated_at: Some(timestamp(r.source_updated_at)),
        }
    }
}
