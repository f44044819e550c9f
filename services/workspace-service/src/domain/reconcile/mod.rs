//! Reconcile with Clerk's listing, one page at a time and within a fixed memory bound. Clerk
//! lists organizations and memberships oldest first (`created_at`, then id), and both are
//! held in that order too (`workspaces_clerk_created_idx`, `memberships_created_idx`), so each
//! side is merged like two sorted lists, as identity-service merges users: the gateway sends
//! each page with the stretch of the order it covers, the comparison says how each listed
//! resource compares with what is held, and records as the run's deletion candidates what is
//! held in that stretch that the page does not list ([`unseen`] lists them; the gateway
//! confirms each with Clerk before it sends a delete). A run over data in step writes nothing.
//!
//! Rows whose place in that order is not known yet (workspaces synced before Clerk's
//! `created_at` was kept, memberships from before membership ids) get it from the first page
//! that lists them; the ones no listing named are candidates at the end.

pub mod unseen;

pub use unseen::{Unseen, counts, finish, unseen_memberships, unseen_orgs};

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
    /// Held with newer state, or gone with its organization or user deleted here (which
    /// compares [`Comparison::DeletedHere`] in its own listing).
    Newer,
    /// Deleted here (final; a membership, for its membership id), yet listed: a race with
    /// Clerk's deletion, or a wrong deletion here. Nothing is written either way.
    DeletedHere,
}

/// An organization as Clerk lists it.
#[derive(Debug, Clone)]
pub struct ListedOrg {
    pub org: String,
    pub name: String,
    pub slug: String,
    /// Empty when Clerk does not say.
    pub owner: String,
    pub created_at: DateTime<Utc>,
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

/// A position in the listing order: (`created_at`, id).
pub type Position = (DateTime<Utc>, String);

/// One page of Clerk's listing and the stretch of the order it covers.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub run: Uuid,
    pub started_at: DateTime<Utc>,
    pub items: Vec<T>,
    /// After this position (`None`: from the first one).
    pub after: Option<Position>,
    /// Up to this position, inclusive (`None`: to the last one).
    pub through: Option<Position>,
    /// Only this organization (or, for memberships, user) may become a candidate (empty: any).
    pub scope: String,
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
            5 => Ok(Comparison::DeletedHere),
            other => Err(Error::Internal(format!("unknown comparison {other}"))),
        })
        .collect()
}

/// Compares a page of organizations with the workspaces held, gives the listed ones that had
/// no place in the order yet Clerk's `created_at`, and records the workspaces held in the
/// page's stretch (created and last written before the run started) that it does not list as
/// candidates; a listed workspace held outside the stretch is marked listed, so no page counts
/// it, whichever is compared first. One statement; the stretch is an index range scan (the row comparisons are
/// repeated as a range of `created_at` alone: the planner estimates that one well, and the two
/// row bounds apart as half of the table each, which made it scan the whole table).
pub async fn compare_orgs(
    conn: &mut AsyncPgConnection,
    q: &Page<ListedOrg>,
) -> Result<Vec<Comparison>, Error> {
    let page = &q.items;
    let col = |f: fn(&ListedOrg) -> String| page.iter().map(f).collect::<Vec<_>>();
    let time = |f: fn(&ListedOrg) -> DateTime<Utc>| page.iter().map(f).collect::<Vec<_>>();
    let rows: Vec<Compared> = prepared(
        "WITH input AS (
             SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::timestamptz[], $7::timestamptz[])
                 WITH ORDINALITY AS t(org, name, slug, owner, created_at, updated_at, ord)),
         placed AS (
             UPDATE workspaces w SET clerk_created_at = i.created_at FROM input i
              WHERE w.clerk_org_id = i.org AND w.deleted_at IS NULL
                AND w.clerk_created_at = '-infinity'),
         candidates AS (
             INSERT INTO reconcile_candidates (run_id, kind, clerk_org_id)
             SELECT $1::uuid, 'workspace', w.clerk_org_id FROM workspaces w
              WHERE w.deleted_at IS NULL
                AND (w.clerk_created_at, w.clerk_org_id) > (COALESCE($9, '-infinity'), $10)
                AND (w.clerk_created_at, w.clerk_org_id) <= (COALESCE($11, 'infinity'), $12)
                AND w.clerk_created_at BETWEEN COALESCE($9, '-infinity') AND COALESCE($11, 'infinity')
                AND w.clerk_created_at > '-infinity'
                AND w.created_at < $8 AND w.updated_at < $8
                AND ($13 = '' OR w.clerk_org_id = $13)
                AND NOT EXISTS (SELECT 1 FROM input i WHERE i.org = w.clerk_org_id)
             ON CONFLICT DO NOTHING),
         listed_elsewhere AS (
             INSERT INTO reconcile_candidates (run_id, kind, clerk_org_id, listed)
             SELECT DISTINCT $1::uuid, 'workspace', w.clerk_org_id, true
               FROM input i JOIN workspaces w ON w.clerk_org_id = i.org AND w.deleted_at IS NULL
              WHERE NOT ((w.clerk_created_at, w.clerk_org_id) > (COALESCE($9, '-infinity'), $10)
                     AND (w.clerk_created_at, w.clerk_org_id) <= (COALESCE($11, 'infinity'), $12))
             ON CONFLICT (run_id, kind, clerk_org_id, clerk_user_id) DO UPDATE SET listed = true)
         SELECT i.ord, CASE
                 WHEN EXISTS (SELECT 1 FROM workspace_tombstones t WHERE t.clerk_org_id = i.org) THEN 5
                 WHEN w.id IS NULL THEN 1
                 WHEN w.source_updated_at < i.updated_at THEN 2
                 WHEN w.source_updated_at > i.updated_at THEN 4
                 WHEN w.name = i.name AND COALESCE(w.slug, '') = i.slug
                      AND (i.owner = '' OR w.owner_clerk_id = i.owner) THEN 3
                 ELSE 2 END AS comparison
           FROM input i LEFT JOIN workspaces w ON w.clerk_org_id = i.org AND w.deleted_at IS NULL
          ORDER BY i.ord",
    )
    .bind::<SqlUuid, _>(q.run)
    .bind::<Array<Text>, _>(col(|o| o.org.clone()))
    .bind::<Array<Text>, _>(col(|o| o.name.clone()))
    .bind::<Array<Text>, _>(col(|o| o.slug.clone()))
    .bind::<Array<Text>, _>(col(|o| o.owner.clone()))
    .bind::<Array<Timestamptz>, _>(time(|o| o.created_at))
    .bind::<Array<Timestamptz>, _>(time(|o| o.updated_at))
    .bind::<Timestamptz, _>(q.started_at)
    .bind::<Nullable<Timestamptz>, _>(q.after.as_ref().map(|p| p.0))
    .bind::<Text, _>(q.after.as_ref().map_or("", |p| p.1.as_str()))
    .bind::<Nullable<Timestamptz>, _>(q.through.as_ref().map(|p| p.0))
    .bind::<Text, _>(q.through.as_ref().map_or("", |p| p.1.as_str()))
    .bind::<Text, _>(&q.scope)
    .load(conn)
    .await?;
    comparisons(rows, page.len())
}

/// Compares a page of memberships with those held, gives a live membership held without its
/// id (from before memberships carried one) the id and `created_at` Clerk lists for it, and
/// records the memberships held in the page's stretch (recorded and created before the run
/// started) that it does not list as candidates, with the membership id held (a listed one
/// held outside the stretch is marked listed, so no page counts it). A live row so
/// placed compares as that membership (it is compared as it will be held). A membership of a
/// deleted organization or user, or one replaced here by a later membership, is `Newer` (the
/// organization or user is reported by its own comparison); this very membership id deleted
/// here is `DeletedHere`.
pub async fn compare_memberships(
    conn: &mut AsyncPgConnection,
    q: &Page<ListedMembership>,
) -> Result<Vec<Comparison>, Error> {
    let page = &q.items;
    let col = |f: fn(&ListedMembership) -> String| page.iter().map(f).collect::<Vec<_>>();
    let time = |f: fn(&ListedMembership) -> DateTime<Utc>| page.iter().map(f).collect::<Vec<_>>();
    let rows: Vec<Compared> = prepared(
        "WITH input AS (
             SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::timestamptz[], $7::timestamptz[])
                 WITH ORDINALITY AS t(org, usr, role, mid, created_at, updated_at, ord)),
         placed AS (
             UPDATE memberships m SET clerk_membership_id = i.mid, membership_created_at = i.created_at
               FROM input i
              WHERE m.clerk_org_id = i.org AND m.clerk_user_id = i.usr
                AND m.clerk_membership_id = '' AND NOT m.deleted),
         candidates AS (
             INSERT INTO reconcile_candidates
                    (run_id, kind, clerk_org_id, clerk_user_id, clerk_membership_id)
             SELECT $1::uuid, 'membership', m.clerk_org_id, m.clerk_user_id, m.clerk_membership_id
               FROM memberships m
              WHERE NOT m.deleted
                AND (m.membership_created_at, m.clerk_membership_id) > (COALESCE($9, '-infinity'), $10)
                AND (m.membership_created_at, m.clerk_membership_id) <= (COALESCE($11, 'infinity'), $12)
                AND m.membership_created_at BETWEEN COALESCE($9, '-infinity') AND COALESCE($11, 'infinity')
                AND m.membership_created_at > '-infinity'
                AND m.recorded_at < $8 AND m.membership_created_at < $8
                AND ($13 = '' OR m.clerk_org_id = $13 OR m.clerk_user_id = $13)
                AND NOT EXISTS (SELECT 1 FROM input i WHERE i.mid = m.clerk_membership_id)
             ON CONFLICT DO NOTHING),
         listed_elsewhere AS (
             INSERT INTO reconcile_candidates
                    (run_id, kind, clerk_org_id, clerk_user_id, clerk_membership_id, listed)
             SELECT DISTINCT ON (m.clerk_org_id, m.clerk_user_id)
                    $1::uuid, 'membership', m.clerk_org_id, m.clerk_user_id, m.clerk_membership_id, true
               FROM input i
               JOIN memberships m ON m.clerk_org_id = i.org AND m.clerk_user_id = i.usr
                                 AND m.clerk_membership_id = i.mid AND NOT m.deleted
              WHERE NOT ((m.membership_created_at, m.clerk_membership_id) > (COALESCE($9, '-infinity'), $10)
                     AND (m.membership_created_at, m.clerk_membership_id) <= (COALESCE($11, 'infinity'), $12))
             ON CONFLICT (run_id, kind, clerk_org_id, clerk_user_id) DO UPDATE SET listed = true)
         SELECT i.ord, CASE
                 WHEN EXISTS (SELECT 1 FROM workspace_tombstones t WHERE t.clerk_org_id = i.org)
                   OR EXISTS (SELECT 1 FROM removed_users r WHERE r.clerk_user_id = i.usr) THEN 4
                 WHEN m.clerk_org_id IS NULL THEN 1
                 WHEN m.clerk_membership_id <> ''
                  AND (m.membership_created_at, m.clerk_membership_id) > (i.created_at, i.mid) THEN 4
                 WHEN m.clerk_membership_id <> i.mid
                  AND (m.clerk_membership_id <> '' OR m.deleted) THEN 2
                 WHEN m.deleted THEN 5
                 WHEN m.source_updated_at < i.updated_at THEN 2
                 WHEN m.source_updated_at > i.updated_at THEN 4
                 WHEN m.role = i.role THEN 3
                 ELSE 2 END AS comparison
           FROM input i
           LEFT JOIN memberships m ON m.clerk_org_id = i.org AND m.clerk_user_id = i.usr
          ORDER BY i.ord",
    )
    .bind::<SqlUuid, _>(q.run)
    .bind::<Array<Text>, _>(col(|m| m.org.clone()))
    .bind::<Array<Text>, _>(col(|m| m.user.clone()))
    .bind::<Array<Text>, _>(col(|m| m.role.as_str().to_owned()))
    .bind::<Array<Text>, _>(col(|m| m.membership_id.clone()))
    .bind::<Array<Timestamptz>, _>(time(|m| m.created_at))
    .bind::<Array<Timestamptz>, _>(time(|m| m.updated_at))
    .bind::<Timestamptz, _>(q.started_at)
    .bind::<Nullable<Timestamptz>, _>(q.after.as_ref().map(|p| p.0))
    .bind::<Text, _>(q.after.as_ref().map_or("", |p| p.1.as_str()))
    .bind::<Nullable<Timestamptz>, _>(q.through.as_ref().map(|p| p.0))
    .bind::<Text, _>(q.through.as_ref().map_or("", |p| p.1.as_str()))
    .bind::<Text, _>(&q.scope)
    .load(conn)
    .await?;
    comparisons(rows, page.len())
}
