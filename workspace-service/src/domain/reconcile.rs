//! Reconcile with Clerk's listing, one page at a time and within a fixed memory bound: the
//! gateway sends each page of organizations (memberships) as Clerk lists them; the comparisons
//! say how each compares with what is held and record the keys as seen by the run, and the
//! `unseen_*` queries then list, by key, what is held that the run never saw (the deletion
//! candidates, which the gateway confirms with Clerk before it sends a delete). Nothing here
//! writes a workspace or membership: differences go through the ordinary sync commands.

use crate::error::Error;
use crate::model::Role;
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use service_runtime::prepared;
use uuid::Uuid;

/// Most items in one comparison, and most keys in one page of candidates.
pub const MAX_PAGE: usize = 1000;

/// How a listed resource compares with what is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// Not held.
    Missing,
    /// Held with older state, or the same instant with other content.
    Older,
    /// Held as listed.
    Same,
    /// Held with newer state, or deleted here (final).
    Newer,
}

/// An organization as Clerk lists it.
#[derive(Debug, Clone)]
pub struct ListedOrg {
    pub org: String,
    pub name: String,
    pub slug: String,
    /// Empty when Clerk does not say.
    pub owner: String,
    pub updated_at: DateTime<Utc>,
}

/// A membership as Clerk lists it.
#[derive(Debug, Clone)]
pub struct ListedMembership {
    pub org: String,
    pub user: String,
    pub role: Role,
    pub membership_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(QueryableByName)]
struct Compared {
    #[diesel(sql_type = BigInt)]
    ord: i64,
    #[diesel(sql_type = Integer)]
    comparison: i32,
}

fn comparisons(rows: Vec<Compared>, expected: usize) -> Result<Vec<Comparison>, Error> {
    if rows.len() != expected || rows.iter().enumerate().any(|(i, r)| r.ord != i as i64 + 1) {
        return Err(Error::Internal(
            "comparison answered rows out of order".into(),
        ));
    }
    rows.iter()
        .map(|r| match r.comparison {
            1 => Ok(Comparison::Missing),
            2 => Ok(Comparison::Older),
            3 => Ok(Comparison::Same),
            4 => Ok(Comparison::Newer),
            other => Err(Error::Internal(format!("unknown comparison {other}"))),
        })
        .collect()
}

/// Compares a page of organizations with the workspaces held, and records them as seen.
pub async fn compare_orgs(
    conn: &mut AsyncPgConnection,
    run: Uuid,
    page: &[ListedOrg],
) -> Result<Vec<Comparison>, Error> {
    let col = |f: fn(&ListedOrg) -> String| page.iter().map(f).collect::<Vec<_>>();
    let rows: Vec<Compared> = prepared(
        "WITH input AS (
             SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
                 WITH ORDINALITY AS t(org, name, slug, owner, updated_at, ord)),
         seen AS (
             INSERT INTO reconcile_seen (run_id, kind, key)
             SELECT DISTINCT $1::uuid, 'workspace', org FROM input ORDER BY 3
             ON CONFLICT DO NOTHING)
         SELECT i.ord, CASE
                 WHEN EXISTS (SELECT 1 FROM workspace_tombstones t WHERE t.clerk_org_id = i.org) THEN 4
                 WHEN w.id IS NULL THEN 1
                 WHEN w.source_updated_at < i.updated_at THEN 2
                 WHEN w.source_updated_at > i.updated_at THEN 4
                 WHEN w.name = i.name AND COALESCE(w.slug, '') = i.slug
                      AND (i.owner = '' OR w.owner_clerk_id = i.owner) THEN 3
                 ELSE 2 END AS comparison
           FROM input i LEFT JOIN workspaces w ON w.clerk_org_id = i.org AND w.deleted_at IS NULL
          ORDER BY i.ord",
    )
    .bind::<SqlUuid, _>(run)
    .bind::<Array<Text>, _>(col(|o| o.org.clone()))
    .bind::<Array<Text>, _>(col(|o| o.name.clone()))
    .bind::<Array<Text>, _>(col(|o| o.slug.clone()))
    .bind::<Array<Text>, _>(col(|o| o.owner.clone()))
    .bind::<Array<Timestamptz>, _>(page.iter().map(|o| o.updated_at).collect::<Vec<_>>())
    .load(conn)
    .await?;
    comparisons(rows, page.len())
}

/// Compares a page of memberships with those held, and records them as seen. A membership of
/// a deleted organization or user, or one replaced here by a later membership, is `Newer`.
pub async fn compare_memberships(
    conn: &mut AsyncPgConnection,
    run: Uuid,
    page: &[ListedMembership],
) -> Result<Vec<Comparison>, Error> {
    let col = |f: fn(&ListedMembership) -> String| page.iter().map(f).collect::<Vec<_>>();
    let time = |f: fn(&ListedMembership) -> DateTime<Utc>| page.iter().map(f).collect::<Vec<_>>();
    let rows: Vec<Compared> = prepared(
        "WITH input AS (
             SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::timestamptz[], $7::timestamptz[])
                 WITH ORDINALITY AS t(org, usr, role, mid, created_at, updated_at, ord)),
         seen AS (
             INSERT INTO reconcile_seen (run_id, kind, key)
             SELECT DISTINCT $1::uuid, 'membership', org || '/' || usr FROM input ORDER BY 3
             ON CONFLICT DO NOTHING)
         SELECT i.ord, CASE
                 WHEN EXISTS (SELECT 1 FROM workspace_tombstones t WHERE t.clerk_org_id = i.org)
                   OR EXISTS (SELECT 1 FROM removed_users r WHERE r.clerk_user_id = i.usr) THEN 4
                 WHEN m.clerk_org_id IS NULL THEN 1
                 WHEN m.clerk_membership_id <> ''
                  AND (m.membership_created_at, m.clerk_membership_id) > (i.created_at, i.mid) THEN 4
                 WHEN m.clerk_membership_id <> i.mid THEN 2
                 WHEN m.deleted THEN 4
                 WHEN m.source_updated_at < i.updated_at THEN 2
                 WHEN m.source_updated_at > i.updated_at THEN 4
                 WHEN m.role = i.role THEN 3
                 ELSE 2 END AS comparison
           FROM input i
           LEFT JOIN memberships m ON m.clerk_org_id = i.org AND m.clerk_user_id = i.usr
          ORDER BY i.ord",
    )
    .bind::<SqlUuid, _>(run)
    .bind::<Array<Text>, _>(col(|m| m.org.clone()))
    .bind::<Array<Text>, _>(col(|m| m.user.clone()))
    .bind::<Array<Text>, _>(col(|m| m.role.as_str().to_owned()))
    .bind::<Array<Text>, _>(col(|m| m.membership_id.clone()))
    .bind::<Array<Timestamptz>, _>(time(|m| m.created_at))
    .bind::<Array<Timestamptz>, _>(time(|m| m.updated_at))
    .load(conn)
    .await?;
    comparisons(rows, page.len())
}

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

#[derive(QueryableByName)]
struct OrgKey {
    #[diesel(sql_type = Text)]
    clerk_org_id: String,
}

/// Live workspaces created and last written before the run started that it did not see.
pub async fn unseen_orgs(conn: &mut AsyncPgConnection, q: &Unseen) -> Result<Vec<String>, Error> {
    let rows: Vec<OrgKey> = prepared(
        "SELECT w.clerk_org_id FROM workspaces w
          WHERE w.clerk_org_id > $3 AND ($5 = '' OR w.clerk_org_id = $5)
            AND w.deleted_at IS NULL AND w.created_at < $2 AND w.updated_at < $2
            AND NOT EXISTS (SELECT 1 FROM reconcile_seen s
                             WHERE s.run_id = $1 AND s.kind = 'workspace' AND s.key = w.clerk_org_id)
          ORDER BY w.clerk_org_id LIMIT $4",
    )
    .bind::<SqlUuid, _>(q.run)
    .bind::<Timestamptz, _>(q.started_at)
    .bind::<Text, _>(&q.after)
    .bind::<BigInt, _>(q.limit)
    .bind::<Text, _>(&q.scope)
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

/// Live memberships recorded before the run started that it did not see, by organization and
/// user.
pub async fn unseen_memberships(
    conn: &mut AsyncPgConnection,
    q: &Unseen,
) -> Result<Vec<HeldMembership>, Error> {
    let (after_org, after_user) = q.after.split_once('/').unwrap_or((q.after.as_str(), ""));
    let rows: Vec<HeldMembership> = prepared(
        "SELECT m.clerk_org_id, m.clerk_user_id, m.clerk_membership_id,
                NULLIF(m.membership_created_at, '-infinity') AS membership_created_at,
                m.source_updated_at
           FROM memberships m
          WHERE (m.clerk_org_id, m.clerk_user_id) > ($3, $4)
            AND ($6 = '' OR m.clerk_org_id = $6 OR m.clerk_user_id = $6)
            AND NOT m.deleted AND m.recorded_at < $2 AND m.membership_created_at < $2
            AND NOT EXISTS (SELECT 1 FROM reconcile_seen s
                             WHERE s.run_id = $1 AND s.kind = 'membership'
                               AND s.key = m.clerk_org_id || '/' || m.clerk_user_id)
          ORDER BY m.clerk_org_id, m.clerk_user_id LIMIT $5",
    )
    .bind::<SqlUuid, _>(q.run)
    .bind::<Timestamptz, _>(q.started_at)
    .bind::<Text, _>(after_org)
    .bind::<Text, _>(after_user)
    .bind::<BigInt, _>(q.limit)
    .bind::<Text, _>(&q.scope)
    .load(conn)
    .await?;
    Ok(rows)
}

/// Forgets the run's keys, and those of runs that never finished (two days on).
pub async fn finish(conn: &mut AsyncPgConnection, run: Uuid) -> Result<u64, Error> {
    let n = prepared(
        "DELETE FROM reconcile_seen WHERE run_id = $1 OR seen_at < now() - interval '2 days'",
    )
    .bind::<SqlUuid, _>(run)
    .execute(conn)
    .await?;
    Ok(n as u64)
}
