//! The users domain: sync commands from Clerk webhooks, client-side sync, reads.
//!
//! Rules, all enforced inside one transaction per command:
//! - exactly once per `event_id` (recorded in `processed_events` with the change);
//! - webhook state is ordered by Clerk's `updated_at`: older state changes nothing;
//! - a delete leaves a final tombstone (Clerk never reuses ids);
//! - commands for one user are serialised with a transaction-scoped advisory lock, so concurrent
//!   replicas neither lose updates nor race a delete.

use crate::error::Error;
use crate::schema::{user_tombstones, users};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text, Timestamptz};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::Pool;

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct UserRecord {
    pub clerk_id: String,
    pub name: String,
    pub email: String,
    pub image_url: String,
    pub source_updated_at: Option<DateTime<Utc>>,
    pub claims_seen_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl UserRecord {
    /// Source time of the data held: the newer of the webhook state and the token claims.
    pub fn data_time(&self) -> DateTime<Utc> {
        self.source_updated_at
            .max(self.claims_seen_at)
            .unwrap_or(self.updated_at)
    }
}

/// What a sync command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written.
    Applied,
    /// This event id was applied before.
    Duplicate,
    /// Newer state or a tombstone is stored.
    Stale,
}

/// `user.created` / `user.updated`, already validated.
#[derive(Debug, Clone)]
pub struct UpsertUser {
    pub event_id: String,
    pub occurred_at: DateTime<Utc>,
    pub clerk_id: String,
    pub name: String,
    pub email: String,
    pub image_url: String,
    pub created_at: Option<DateTime<Utc>>,
}

/// `user.deleted`, already validated.
#[derive(Debug, Clone)]
pub struct DeleteUser {
    pub event_id: String,
    pub occurred_at: DateTime<Utc>,
    pub clerk_id: String,
}

/// What a user token says about its holder.
#[derive(Debug, Clone)]
pub struct TokenClaims {
    pub clerk_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub issued_at: DateTime<Utc>,
}

async fn lock_user(conn: &mut AsyncPgConnection, clerk_id: &str) -> QueryResult<()> {
    service_runtime::db::lock_entity(conn, &format!("user:{clerk_id}")).await
}

async fn is_tombstoned(conn: &mut AsyncPgConnection, clerk_id: &str) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        user_tombstones::table.filter(user_tombstones::clerk_id.eq(clerk_id)),
    ))
    .get_result(conn)
    .await
}

/// Applies webhook state for a user.
pub async fn upsert_user(pool: &Pool, cmd: UpsertUser) -> Result<Outcome, Error> {
    let mut conn = pool.get().await?;
    let outcome = conn
        .transaction::<_, Error, _>(async |conn| {
            if !service_runtime::db::record_delivery(conn, &cmd.event_id).await? {
                return Ok(Outcome::Duplicate);
            }
            lock_user(conn, &cmd.clerk_id).await?;
            if is_tombstoned(conn, &cmd.clerk_id).await? {
                return Ok(Outcome::Stale);
            }
            let written = diesel::sql_query(
                "INSERT INTO users (clerk_id, name, email, image_url, source_updated_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, COALESCE($6, now()))
                 ON CONFLICT (clerk_id) DO UPDATE SET
                     name = EXCLUDED.name, email = EXCLUDED.email, image_url = EXCLUDED.image_url,
                     source_updated_at = EXCLUDED.source_updated_at,
                     created_at = LEAST(users.created_at, EXCLUDED.created_at),
                     updated_at = now()
                 WHERE users.source_updated_at IS NULL OR users.source_updated_at < EXCLUDED.source_updated_at",
            )
            .bind::<Text, _>(&cmd.clerk_id)
            .bind::<Text, _>(&cmd.name)
            .bind::<Text, _>(&cmd.email)
            .bind::<Text, _>(&cmd.image_url)
            .bind::<Timestamptz, _>(cmd.occurred_at)
            .bind::<Nullable<Timestamptz>, _>(cmd.created_at)
            .execute(conn)
            .await?;
            Ok(if written == 1 { Outcome::Applied } else { Outcome::Stale })
        })
        .await?;
    Ok(outcome)
}

/// Deletes a user and leaves a tombstone.
pub async fn delete_user(pool: &Pool, cmd: DeleteUser) -> Result<Outcome, Error> {
    let mut conn = pool.get().await?;
    let outcome = conn
        .transaction::<_, Error, _>(async |conn| {
            if !service_runtime::db::record_delivery(conn, &cmd.event_id).await? {
                return Ok(Outcome::Duplicate);
            }
            lock_user(conn, &cmd.clerk_id).await?;
            let new_tombstone = diesel::insert_into(user_tombstones::table)
                .values((
                    user_tombstones::clerk_id.eq(&cmd.clerk_id),
                    user_tombstones::deleted_at.eq(cmd.occurred_at),
                ))
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            let removed = diesel::delete(users::table.filter(users::clerk_id.eq(&cmd.clerk_id)))
                .execute(conn)
                .await?;
            Ok(if new_tombstone == 1 || removed == 1 {
                Outcome::Applied
            } else {
                Outcome::Stale
            })
        })
        .await?;
    Ok(outcome)
}

/// The seed's `storeUser`: creates the caller from token claims when unknown, refreshes name and
/// email when the token is newer than the stored data. Returns the record and whether it was
/// created.
pub async fn store_user(pool: &Pool, claims: TokenClaims) -> Result<(UserRecord, bool), Error> {
    let mut conn = pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        lock_user(conn, &claims.clerk_id).await?;
        if is_tombstoned(conn, &claims.clerk_id).await? {
            return Err(Error::Deleted(
                "this user was deleted in Clerk and cannot be stored again".into(),
            ));
        }
        let existing: Option<UserRecord> = users::table
            .find(&claims.clerk_id)
            .select(UserRecord::as_select())
            .first(conn)
            .await
            .optional()?;
        match existing {
            None => {
                let email = claims.email.clone().unwrap_or_default();
                let name = claims
                    .name
                    .clone()
                    .or_else(|| claims.email.clone())
                    .unwrap_or_else(|| "Anonymous".to_owned());
                let created: UserRecord = diesel::insert_into(users::table)
                    .values((
                        users::clerk_id.eq(&claims.clerk_id),
                        users::name.eq(name),
                        users::email.eq(email),
                        users::claims_seen_at.eq(claims.issued_at),
                    ))
                    .returning(UserRecord::as_returning())
                    .get_result(conn)
                    .await?;
                Ok((created, true))
            }
            Some(user) => {
                // Never roll back newer data: the token must be newer than what is stored.
                let newer = user.data_time() < claims.issued_at;
                let name = claims.name.clone().filter(|n| *n != user.name);
                let email = claims.email.clone().filter(|e| *e != user.email);
                if !newer || (name.is_none() && email.is_none()) {
                    return Ok((user, false));
                }
                let updated: UserRecord = diesel::update(users::table.find(&claims.clerk_id))
                    .set((
                        users::name.eq(name.unwrap_or(user.name)),
                        users::email.eq(email.unwrap_or(user.email)),
                        users::claims_seen_at.eq(claims.issued_at),
                        users::updated_at.eq(diesel::dsl::now),
                    ))
                    .returning(UserRecord::as_returning())
                    .get_result(conn)
                    .await?;
                Ok((updated, false))
            }
        }
    })
    .await
}

/// One user by id.
pub async fn get_user(pool: &Pool, clerk_id: &str) -> Result<Option<UserRecord>, Error> {
    let mut conn = pool.get().await?;
    Ok(users::table
        .find(clerk_id)
        .select(UserRecord::as_select())
        .first(&mut conn)
        .await
        .optional()?)
}

/// Users by ids (any order; unknown ids left out).
pub async fn get_users(pool: &Pool, ids: &[String]) -> Result<Vec<UserRecord>, Error> {
    let mut conn = pool.get().await?;
    Ok(users::table
        .filter(users::clerk_id.eq_any(ids))
        .select(UserRecord::as_select())
        .load(&mut conn)
        .await?)
}

/// Deletes processed event ids older than `keep`; returns how many were removed.
pub async fn prune_processed_events(pool: &Pool, keep: chrono::Duration) -> Result<u64, Error> {
    let mut conn = pool.get().await?;
    let keep = keep.to_std().unwrap_or_default();
    Ok(service_runtime::db::prune_processed_events(&mut conn, keep).await?)
}
