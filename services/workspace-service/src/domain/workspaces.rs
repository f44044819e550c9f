//! Workspaces (= Clerk organizations): created and updated by `organization.*` events in the
//! source's order, never brought back after a deletion's tombstone.

use super::Outcome;
use super::events::timestamp;
use crate::error::Error;
use crate::model::{EventId, LockKey, OrgId, UserId};
use crate::schema::workspaces;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::Settled;
use service_runtime::db::record_delivery;
use service_runtime::prepared;
use uuid::Uuid;
use vbase_proto::workspace::v1 as pb;

/// A stored workspace.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = workspaces)]
#[diesel(check_for_backend(diesel::pg::Pg))]
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
    pub event_id: EventId,
    pub occurred_at: DateTime<Utc>,
    /// When the source said it (tie-break between states of the same `occurred_at`).
    pub event_time: Option<DateTime<Utc>>,
    pub org: OrgId,
    pub name: String,
    pub slug: Option<String>,
    pub owner: Option<UserId>,
    /// Clerk's `created_at` of the organization, when the source said it.
    pub clerk_created_at: Option<DateTime<Utc>>,
}

/// The name of the channel every workspace starts with.
pub const GENERAL: &str = "general";

/// The namespace of workspace ids derived from Clerk organization ids. Fixed for good: a new
/// workspace's id is [`derived_workspace_id`] of its organization, so a membership that arrives
/// before its organization already holds the id of the workspace it belongs to.
pub const WORKSPACE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x8c3b5a64_2f1e_4d7a_9b0c_5e6f7a8b9c0d);

/// The UUIDv5 (RFC 9562, SHA-1) of `org` in [`WORKSPACE_ID_NAMESPACE`]: the id of a workspace
/// created for organization `org` (what PostgreSQL's `uuid_generate_v5` gives).
pub fn derived_workspace_id(org: &str) -> Uuid {
    use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
    let mut name = WORKSPACE_ID_NAMESPACE.as_bytes().to_vec();
    name.extend_from_slice(org.as_bytes());
    let hash = digest(&SHA1_FOR_LEGACY_USE_ONLY, &name);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_ref()[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x50;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

#[derive(QueryableByName)]
struct HeldId {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// The workspace id of organization `org`: the id of its workspace row if it has one (also a
/// deleted one, being purged; workspaces older than derived ids keep theirs), else
/// [`derived_workspace_id`], which its workspace will get.
pub async fn workspace_id_of(conn: &mut AsyncPgConnection, org: &OrgId) -> QueryResult<Uuid> {
    let held: Option<HeldId> = prepared("SELECT id FROM workspaces WHERE clerk_org_id = $1")
        .bind::<Text, _>(org.as_str())
        .one(conn)
        .await
        .optional()?;
    Ok(held.map_or_else(|| derived_workspace_id(org.as_str()), |h| h.id))
}

#[derive(QueryableByName)]
struct Hit {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    hit: bool,
}

/// Whether the organization was deleted (final: Clerk never reuses ids).
pub async fn org_tombstoned(conn: &mut AsyncPgConnection, org: &OrgId) -> QueryResult<bool> {
    let r: Hit = prepared(
        "SELECT EXISTS (SELECT 1 FROM workspace_tombstones WHERE clerk_org_id = $1) AS hit",
    )
    .bind::<Text, _>(org.as_str())
    .one(conn)
    .await?;
    Ok(r.hit)
}

/// Whether the workspace `id` was deleted: hidden (its purge under way) or gone.
pub async fn workspace_deleted(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    let r: Hit = prepared(
        "SELECT NOT EXISTS (SELECT 1 FROM workspaces WHERE id = $1 AND deleted_at IS NULL) AS hit",
    )
    .bind::<SqlUuid, _>(id)
    .one(conn)
    .await?;
    Ok(r.hit)
}

/// Whether the user was deleted (final).
pub async fn user_removed(conn: &mut AsyncPgConnection, user: &UserId) -> QueryResult<bool> {
    let r: Hit =
        prepared("SELECT EXISTS (SELECT 1 FROM removed_users WHERE clerk_user_id = $1) AS hit")
            .bind::<Text, _>(user.as_str())
            .one(conn)
            .await?;
    Ok(r.hit)
}

/// Finds a workspace by Clerk organization id; a deleted one (being purged) is not found.
pub async fn find_workspace(
    conn: &mut AsyncPgConnection,
    org: &str,
) -> QueryResult<Option<WorkspaceRecord>> {
    workspaces::table
        .filter(workspaces::clerk_org_id.eq(org))
        .filter(workspaces::deleted_at.is_null())
        .select(WorkspaceRecord::as_select())
        .limit(1)
        .one(conn)
        .await
        .optional()
}

/// Creates or updates a workspace; creates `general` on first creation, in the same transaction.
pub async fn upsert_workspace(
    conn: &mut AsyncPgConnection,
    cmd: &UpsertWorkspace,
) -> Result<(Outcome, Option<WorkspaceRecord>), Error> {
    conn.transaction::<_, Error, _>(async |conn| {
        if !record_delivery(conn, cmd.event_id.as_str()).await? {
            return Ok((
                Outcome::Duplicate,
                find_workspace(conn, cmd.org.as_str()).await?,
            ));
        }
        LockKey::Org(&cmd.org).lock(conn).await?;
        if org_tombstoned(conn, &cmd.org).await? {
            return Ok((Outcome::Stale, None));
        }
        let owner = cmd.owner.as_ref().map(UserId::as_str);
        match find_workspace(conn, cmd.org.as_str()).await? {
            None => {
                // No row of the organization (a deleted one left its tombstone, seen above).
                let id = derived_workspace_id(cmd.org.as_str());
                let ws: WorkspaceRecord = diesel::insert_into(workspaces::table)
                    .values((
                        workspaces::id.eq(id),
                        workspaces::clerk_org_id.eq(cmd.org.as_str()),
                        workspaces::name.eq(&cmd.name),
                        workspaces::slug.eq(&cmd.slug),
                        workspaces::owner_clerk_id.eq(owner),
                        workspaces::source_updated_at.eq(cmd.occurred_at),
                        workspaces::source_event_id.eq(cmd.event_id.as_str()),
                        // None: the column's default, '-infinity' (loses every tie).
                        cmd.event_time.map(|t| workspaces::source_event_time.eq(t)),
                        // None: '-infinity', until a webhook or a reconcile run says it.
                        cmd.clerk_created_at
                            .map(|t| workspaces::clerk_created_at.eq(t)),
                    ))
                    .returning(WorkspaceRecord::as_returning())
                    .one(conn)
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
            Some(existing) => {
                // Newer state, or the same instant said later (then the greater event id).
                let ws: Option<WorkspaceRecord> = prepared(
                    "UPDATE workspaces SET name = $2, slug = $3,
                         owner_clerk_id = COALESCE($4, owner_clerk_id), source_updated_at = $5,
                         source_event_time = COALESCE($6, '-infinity'), source_event_id = $7,
                         clerk_created_at = COALESCE($8, clerk_created_at), updated_at = now()
                     WHERE id = $1
                       AND (source_updated_at, source_event_time, source_event_id)
                         < ($5, COALESCE($6, '-infinity'), $7)
                     RETURNING id, clerk_org_id, name, slug, owner_clerk_id, source_updated_at,
                               created_at, updated_at",
                )
                .bind::<SqlUuid, _>(existing.id)
                .bind::<Text, _>(&cmd.name)
                .bind::<Nullable<Text>, _>(&cmd.slug)
                .bind::<Nullable<Text>, _>(owner)
                .bind::<Timestamptz, _>(cmd.occurred_at)
                .bind::<Nullable<Timestamptz>, _>(cmd.event_time)
                .bind::<Text, _>(cmd.event_id.as_str())
                .bind::<Nullable<Timestamptz>, _>(cmd.clerk_created_at)
                .one(conn)
                .await
                .optional()?;
                Ok(match ws {
                    Some(ws) => {
                        let event = vbase_proto::workspace::v1::workspace_event::Event::WorkspaceRenamed(
                            ws.clone().into(),
                        );
                        // Under the org lock, as a deletion is: not deleted.
                        let _ = super::changes::record_workspace(conn, ws.id, event).await?;
                        (Outcome::Applied, Some(ws))
                    }
                    None => (Outcome::Stale, Some(existing)),
                })
            }
        }
    })
    .await
}

impl From<WorkspaceRecord> for pb::Workspace {
    fn from(w: WorkspaceRecord) -> Self {
        pb::Workspace {
            id: w.id.to_string(),
            clerk_org_id: w.clerk_org_id,
            name: w.name,
            slug: w.slug.unwrap_or_default(),
            owner_clerk_id: w.owner_clerk_id.unwrap_or_default(),
            created_at: Some(timestamp(w.created_at)),
            updated_at: Some(timestamp(w.source_updated_at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_uuid_v5_of_the_organization_id() {
        // Python's uuid.uuid5(namespace, name) gives the same.
        for (org, id) in [
            ("org_a", "3afa1be0-d00d-5697-b911-2289dad1bc39"),
            ("org_2bWq9XyZ", "68eb4989-21dc-54c1-9121-c1bf4ac26f78"),
        ] {
            let derived = derived_workspace_id(org);
            assert_eq!(derived.to_string(), id, "{org}");
            assert_eq!(derived.get_version_num(), 5);
        }
    }
}
