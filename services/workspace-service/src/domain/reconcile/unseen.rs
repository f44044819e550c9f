//! A run's deletion candidates, page by page and counted: what the comparisons recorded (and
//! is still live as recorded), and what is held without a place in Clerk's order that no
//! listing placed (created here before the run started).

use crate::error::Error;
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use service_runtime::Settled;
use service_runtime::prepared;
use uuid::Uuid;

/// A page of candidates: which, after which key.
#[derive(Debug, Clone)]
pub struct Unseen {
    pub run: Uuid,
    pub started_at: DateTime<Utc>,
    /// An organization id, or `org_id/user_id` for memberships; empty: from the start.
    pub after: String,
    pub limit: i64,
    /// One organization (`org_...`) or user (`user_...`) only, when not empty.
    pub scope: String,
}

/// The candidate workspaces, for `$1` run, `$2` start, `$3` scope.
macro_rules! workspace_candidates {
    () => {
        "
    SELECT c.clerk_org_id FROM reconcile_candidates c
      JOIN workspaces w ON w.clerk_org_id = c.clerk_org_id AND w.deleted_at IS NULL
     WHERE c.run_id = $1 AND c.kind = 'workspace' AND NOT c.listed
    UNION
    SELECT w.clerk_org_id FROM workspaces w
     WHERE w.deleted_at IS NULL AND w.clerk_created_at = '-infinity'
       AND w.created_at < $2 AND w.updated_at < $2 AND ($3 = '' OR w.clerk_org_id = $3)"
    };
}

/// The candidate memberships, for `$1` run, `$2` start, `$3` scope.
macro_rules! membership_candidates {
    () => {
        "
    SELECT m.clerk_org_id, m.clerk_user_id, m.clerk_membership_id,
           NULLIF(m.membership_created_at, '-infinity') AS membership_created_at,
           m.source_updated_at
      FROM reconcile_candidates c
      JOIN memberships m ON m.clerk_org_id = c.clerk_org_id AND m.clerk_user_id = c.clerk_user_id
                        AND m.clerk_membership_id = c.clerk_membership_id AND NOT m.deleted
     WHERE c.run_id = $1 AND c.kind = 'membership' AND NOT c.listed
    UNION ALL
    SELECT m.clerk_org_id, m.clerk_user_id, m.clerk_membership_id, NULL, m.source_updated_at
      FROM memberships m
     WHERE NOT m.deleted AND m.membership_created_at = '-infinity' AND m.recorded_at < $2
       AND ($3 = '' OR m.clerk_org_id = $3 OR m.clerk_user_id = $3)"
    };
}

#[derive(QueryableByName)]
struct OrgKey {
    #[diesel(sql_type = Text)]
    clerk_org_id: String,
}

/// The run's candidate workspaces by organization id, after `q.after`.
pub async fn unseen_orgs(conn: &mut AsyncPgConnection, q: &Unseen) -> Result<Vec<String>, Error> {
    let rows: Vec<OrgKey> = prepared(concat!(
        "SELECT clerk_org_id FROM (",
        workspace_candidates!(),
        ") u WHERE clerk_org_id > $4 ORDER BY clerk_org_id LIMIT $5"
    ))
    .bind::<SqlUuid, _>(q.run)
    .bind::<Timestamptz, _>(q.started_at)
    .bind::<Text, _>(&q.scope)
    .bind::<Text, _>(&q.after)
    .bind::<BigInt, _>(q.limit)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.clerk_org_id).collect())
}

/// A live membership held.
#[derive(Debug, Clone, QueryableByName)]
pub struct HeldMembership {
    #[diesel(sql_type = Text)]
    pub clerk_org_id: String,
    #[diesel(sql_type = Text)]
    pub clerk_user_id: String,
    /// Empty for a membership recorded before memberships were keyed by id.
    #[diesel(sql_type = Text)]
    pub clerk_membership_id: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub membership_created_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Timestamptz)]
    pub source_updated_at: DateTime<Utc>,
}

/// The run's candidate memberships by organization and user, after `q.after`
/// (`org_id/user_id`).
pub async fn unseen_memberships(
    conn: &mut AsyncPgConnection,
    q: &Unseen,
) -> Result<Vec<HeldMembership>, Error> {
    let (after_org, after_user) = q.after.split_once('/').unwrap_or((q.after.as_str(), ""));
    let rows: Vec<HeldMembership> = prepared(concat!(
        "SELECT clerk_org_id, clerk_user_id, clerk_membership_id, membership_created_at,
                source_updated_at FROM (",
        membership_candidates!(),
        ") u WHERE (clerk_org_id, clerk_user_id) > ($4, $5)
            ORDER BY clerk_org_id, clerk_user_id LIMIT $6"
    ))
    .bind::<SqlUuid, _>(q.run)
    .bind::<Timestamptz, _>(q.started_at)
    .bind::<Text, _>(&q.scope)
    .bind::<Text, _>(after_org)
    .bind::<Text, _>(after_user)
    .bind::<BigInt, _>(q.limit)
    .load(conn)
    .await?;
    Ok(rows)
}

/// Which candidates to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Workspaces,
    Memberships,
}

#[derive(QueryableByName)]
struct Counts {
    #[diesel(sql_type = BigInt)]
    candidates: i64,
    #[diesel(sql_type = BigInt)]
    held: i64,
}

/// The run's candidates of `kind` in all, and how many live ones are held (the deletion
/// budget's base).
pub async fn counts(
    conn: &mut AsyncPgConnection,
    kind: Kind,
    q: &Unseen,
) -> Result<(i64, i64), Error> {
    let sql = match kind {
        Kind::Workspaces => concat!(
            "SELECT (SELECT count(*) FROM (",
            workspace_candidates!(),
            ") u) AS candidates,
             (SELECT count(*) FROM workspaces WHERE deleted_at IS NULL) AS held"
        ),
        Kind::Memberships => concat!(
            "SELECT (SELECT count(*) FROM (",
            membership_candidates!(),
            ") u) AS candidates,
             (SELECT count(*) FROM memberships WHERE NOT deleted) AS held"
        ),
    };
    let c: Counts = prepared(sql)
        .bind::<SqlUuid, _>(q.run)
        .bind::<Timestamptz, _>(q.started_at)
        .bind::<Text, _>(&q.scope)
        .one(conn)
        .await?;
    Ok((c.candidates, c.held))
}

/// Forgets the run's candidates, and those of runs that never finished (two days on).
pub async fn finish(conn: &mut AsyncPgConnection, run: Uuid) -> Result<u64, Error> {
    let n = prepared(
        "DELETE FROM reconcile_candidates WHERE run_id = $1 OR recorded_at < now() - interval '2 days'",
    )
    .bind::<SqlUuid, _>(run)
    .execute(conn)
    .await?;
    // `reconcile_seen`: written only by pods of a release without `reconcile_candidates`,
    // while a rollout still runs them.
    prepared("DELETE FROM reconcile_seen WHERE run_id = $1 OR seen_at < now() - interval '2 days'")
        .bind::<SqlUuid, _>(run)
        .execute(conn)
        .await?;
    Ok(n as u64)
}
