//! Reconcile with Clerk's listing, one page at a time and within a fixed memory bound: the
//! gateway sends each page of users as Clerk lists them; [`compare`] says how each compares
//! with what is held and records the ids as seen by the run, and [`unseen`] then lists, by
//! key, the live users held that the run never saw (the deletion candidates, which the gateway
//! confirms with Clerk before it sends a delete). Nothing here writes a user: the differences
//! go through the ordinary sync commands and their ordering guard.

use crate::error::Error;
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Integer, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
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
    /// Held with newer state, or deleted here (final).
    Newer,
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

/// Compares a page with the users held, and records its ids as seen by `run`. One statement.
pub async fn compare(pool: &Pool, run: Uuid, page: &[Listed]) -> Result<Vec<Comparison>, Error> {
    let mut conn = pool.get().await?;
    let col = |f: fn(&Listed) -> String| page.iter().map(f).collect::<Vec<_>>();
    let rows: Vec<Compared> = prepared(
        "WITH input AS (
             SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
                 WITH ORDINALITY AS t(clerk_id, name, email, image_url, updated_at, ord)),
         seen AS (
             INSERT INTO reconcile_seen (run_id, clerk_id)
             SELECT DISTINCT $1::uuid, clerk_id FROM input ORDER BY 2
             ON CONFLICT DO NOTHING)
         SELECT i.ord, CASE
                 WHEN u.clerk_id IS NULL THEN 1
                 WHEN u.deleted_at IS NOT NULL THEN 4
                 WHEN u.source_updated_at IS NULL OR u.source_updated_at < i.updated_at THEN 2
                 WHEN u.source_updated_at > i.updated_at THEN 4
                 WHEN (u.name, u.email, u.image_url) = (i.name, i.email, i.image_url) THEN 3
                 ELSE 2 END AS comparison
           FROM input i LEFT JOIN users u ON u.clerk_id = i.clerk_id
          ORDER BY i.ord",
    )
    .bind::<SqlUuid, _>(run)
    .bind::<Array<Text>, _>(col(|l| l.clerk_id.clone()))
    .bind::<Array<Text>, _>(col(|l| l.name.clone()))
    .bind::<Array<Text>, _>(col(|l| l.email.clone()))
    .bind::<Array<Text>, _>(col(|l| l.image_url.clone()))
    .bind::<Array<Timestamptz>, _>(page.iter().map(|l| l.updated_at).collect::<Vec<_>>())
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
            other => Err(Error::Internal(format!("unknown comparison {other}"))),
        })
        .collect()
}

/// A page of candidates: which ids, after which key.
#[derive(Debug, Clone)]
pub struct Unseen {
    pub run: Uuid,
    pub started_at: DateTime<Utc>,
    pub after: String,
    pub limit: i64,
    /// One user only, when not empty.
    pub scope: String,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = Text)]
    clerk_id: String,
}

/// Live users held, created and last written before the run started, that the run did not
/// see; by id, after `q.after`. Walks the primary key with an index probe per user, so a page
/// costs its own size, not the table's.
pub async fn unseen(pool: &Pool, q: &Unseen) -> Result<Vec<String>, Error> {
    let mut conn = pool.get().await?;
    let rows: Vec<Id> = prepared(
        "SELECT u.clerk_id FROM users u
          WHERE u.clerk_id > $3 AND ($5 = '' OR u.clerk_id = $5)
            AND u.deleted_at IS NULL AND u.created_at < $2 AND u.updated_at < $2
            AND NOT EXISTS (SELECT 1 FROM reconcile_seen s WHERE s.run_id = $1 AND s.clerk_id = u.clerk_id)
          ORDER BY u.clerk_id LIMIT $4",
    )
    .bind::<SqlUuid, _>(q.run)
    .bind::<Timestamptz, _>(q.started_at)
    .bind::<Text, _>(&q.after)
    .bind::<BigInt, _>(q.limit)
    .bind::<Text, _>(&q.scope)
    .load(&mut conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.clerk_id).collect())
}

/// Forgets the run's ids, and those of runs that never finished (two days on).
pub async fn finish(pool: &Pool, run: Uuid) -> Result<u64, Error> {
    let mut conn = pool.get().await?;
    let n = prepared(
        "DELETE FROM reconcile_seen WHERE run_id = $1 OR seen_at < now() - interval '2 days'",
    )
    .bind::<SqlUuid, _>(run)
    .execute(&mut conn)
    .await?;
    Ok(n as u64)
}
