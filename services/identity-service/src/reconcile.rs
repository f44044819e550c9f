//! Reconcile with Clerk's listing, one page at a time and within a fixed memory bound. Clerk
//! lists users oldest first, and users are held in the same order (`users_created_idx`:
//! Clerk's `created_at`, then id), so both sides merge like two sorted lists: the gateway sends
//! each page with the stretch of the order it covers, and [`compare`] says how each listed user
//! compares with the one held and records the users held in that stretch that the page does
//! not list as the run's deletion candidates. [`unseen`] lists those (the gateway confirms each
//! with Clerk before it sends a delete). A run over users in step writes nothing; the
//! differences go through the ordinary sync commands and their ordering guard.

use crate::error::Error;
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use service_runtime::Settled;
use service_runtime::{Pool, prepared};
use uuid::Uuid;

/// Most items in one comparison, and most ids in one page of candidates.
pub const MAX_PAGE: usize = 1000;

/// How a listed user compares with the one held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// Not held.
    Missing,
    /// Held with older state, or the same instant with other content.
    Older,
    /// Held as listed.
    Same,
    /// Held with newer state.
    Newer,
    /// Deleted here (final), yet listed: a race with Clerk's deletion, or a wrong deletion
    /// here. Nothing is written either way.
    DeletedHere,
}

/// A user as Clerk lists it (mapped as for a webhook).
#[derive(Debug, Clone)]
pub struct Listed {
    pub clerk_id: String,
    pub name: String,
    pub email: String,
    pub image_url: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(QueryableByName)]
struct Compared {
    #[diesel(sql_type = BigInt)]
    ord: i64,
    #[diesel(sql_type = Integer)]
    comparison: i32,
}

/// A position in the order users are listed in: (`created_at`, id).
pub type Position = (DateTime<Utc>, String);

/// One page of Clerk's listing and the stretch of the order it covers.
#[derive(Debug, Clone)]
pub struct Page {
    pub run: Uuid,
    pub started_at: DateTime<Utc>,
    pub users: Vec<Listed>,
    /// After this position (`None`: from the first user).
    pub after: Option<Position>,
    /// Up to this position, inclusive (`None`: to the last user).
    pub through: Option<Position>,
    /// Only this user may become a candidate (empty: any).
    pub scope: String,
}

/// Compares a page with the users held, and records as the run's candidates the users held in
/// the page's stretch (created and last written before the run started) that it does not
/// list. A listed user held outside the stretch (with another `created_at` than Clerk's) is
/// marked listed, so the page whose stretch holds it never counts it, whichever page is
/// compared first. One statement; the stretch is an index range scan.
pub async fn compare(pool: &Pool, q: &Page) -> Result<Vec<Comparison>, Error> {
    let mut conn = pool.get().await?;
    let page = &q.users;
    let col = |f: fn(&Listed) -> String| page.iter().map(f).collect::<Vec<_>>();
    let rows: Vec<Compared> = prepared(
        "WITH input AS (
             SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
                 WITH ORDINALITY AS t(clerk_id, name, email, image_url, updated_at, ord)),
         candidates AS (
             INSERT INTO reconcile_candidates (run_id, clerk_id)
             SELECT $1::uuid, u.clerk_id FROM users u
              WHERE (u.created_at, u.clerk_id) > (COALESCE($8, '-infinity'), $9)
                AND (u.created_at, u.clerk_id) <= (COALESCE($10, 'infinity'), $11)
                AND u.created_at < $7 AND u.updated_at < $7 AND u.deleted_at IS NULL
                AND ($12 = '' OR u.clerk_id = $12)
                AND NOT EXISTS (SELECT 1 FROM input i WHERE i.clerk_id = u.clerk_id)
             ON CONFLICT DO NOTHING),
         listed_elsewhere AS (
             INSERT INTO reconcile_candidates (run_id, clerk_id, listed)
             SELECT DISTINCT $1::uuid, u.clerk_id, true
               FROM input i JOIN users u ON u.clerk_id = i.clerk_id AND u.deleted_at IS NULL
              WHERE NOT ((u.created_at, u.clerk_id) > (COALESCE($8, '-infinity'), $9)
                     AND (u.created_at, u.clerk_id) <= (COALESCE($10, 'infinity'), $11))
             ON CONFLICT (run_id, clerk_id) DO UPDATE SET listed = true)
         SELECT i.ord, CASE
                 WHEN u.clerk_id IS NULL THEN 1
                 WHEN u.deleted_at IS NOT NULL THEN 5
                 WHEN u.source_updated_at IS NULL OR u.source_updated_at < i.updated_at THEN 2
                 WHEN u.source_updated_at > i.updated_at THEN 4
                 WHEN (u.name, u.email, u.image_url) = (i.name, i.email, i.image_url) THEN 3
                 ELSE 2 END AS comparison
           FROM input i LEFT JOIN users u ON u.clerk_id = i.clerk_id
          ORDER BY i.ord",
    )
    .bind::<SqlUuid, _>(q.run)
    .bind::<Array<Text>, _>(col(|l| l.clerk_id.clone()))
    .bind::<Array<Text>, _>(col(|l| l.name.clone()))
    .bind::<Array<Text>, _>(col(|l| l.email.clone()))
    .bind::<Array<Text>, _>(col(|l| l.image_url.clone()))
    .bind::<Array<Timestamptz>, _>(page.iter().map(|l| l.updated_at).collect::<Vec<_>>())
    .bind::<Timestamptz, _>(q.started_at)
    .bind::<Nullable<Timestamptz>, _>(q.after.as_ref().map(|p| p.0))
    .bind::<Text, _>(q.after.as_ref().map(|p| p.1.as_str()).unwrap_or_default())
    .bind::<Nullable<Timestamptz>, _>(q.through.as_ref().map(|p| p.0))
    .bind::<Text, _>(q.through.as_ref().map(|p| p.1.as_str()).unwrap_or_default())
    .bind::<Text, _>(&q.scope)
    .load(&mut conn)
    .await?;
    if rows.len() != page.len() || rows.iter().enumerate().any(|(i, r)| r.ord != i as i64 + 1) {
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

/// A page of the run's candidates, after which id.
#[derive(Debug, Clone)]
pub struct Unseen {
    pub run: Uuid,
    pub after: String,
    pub limit: i64,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = Text)]
    clerk_id: String,
}

/// The run's candidates that are still live, by id, after `q.after`.
pub async fn unseen(pool: &Pool, q: &Unseen) -> Result<Vec<String>, Error> {
    let mut conn = pool.get().await?;
    let rows: Vec<Id> = prepared(
        "SELECT c.clerk_id FROM reconcile_candidates c
           JOIN users u ON u.clerk_id = c.clerk_id AND u.deleted_at IS NULL
          WHERE c.run_id = $1 AND NOT c.listed AND c.clerk_id > $2
          ORDER BY c.clerk_id LIMIT $3",
    )
    .bind::<SqlUuid, _>(q.run)
    .bind::<Text, _>(&q.after)
    .bind::<BigInt, _>(q.limit)
    .load(&mut conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.clerk_id).collect())
}

#[derive(QueryableByName)]
struct Counts {
    #[diesel(sql_type = BigInt)]
    candidates: i64,
    #[diesel(sql_type = BigInt)]
    held: i64,
}

/// The run's live candidates in all, and the live users held (the deletion budget's base).
pub async fn counts(pool: &Pool, run: Uuid) -> Result<(i64, i64), Error> {
    let mut conn = pool.get().await?;
    let c: Counts = prepared(
        "SELECT (SELECT count(*) FROM reconcile_candidates c
                   JOIN users u ON u.clerk_id = c.clerk_id AND u.deleted_at IS NULL
                  WHERE c.run_id = $1 AND NOT c.listed) AS candidates,
                (SELECT count(*) FROM users WHERE deleted_at IS NULL) AS held",
    )
    .bind::<SqlUuid, _>(run)
    .one(&mut conn)
    .await?;
    Ok((c.candidates, c.held))
}

/// Forgets the run's candidates, and those of runs that never finished (two days on).
pub async fn finish(pool: &Pool, run: Uuid) -> Result<u64, Error> {
    let mut conn = pool.get().await?;
    let n = prepared(
        "DELETE FROM reconcile_candidates WHERE run_id = $1 OR recorded_at < now() - interval '2 days'",
    )
    .bind::<SqlUuid, _>(run)
    .execute(&mut conn)
    .await?;
    Ok(n as u64)
}
