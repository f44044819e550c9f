//! The users domain: sync commands from Clerk webhooks, client-side sync, reads.
//!
//! Each command is one SQL statement, so it is atomic without an explicit transaction:
//! - exactly once per `event_id`: the statement first inserts the id into `processed_events`
//!   (a data-modifying CTE) and writes the user only when that insert happened;
//! - the email is the newest state's, also when it has none (a user who removed their address
//!   in Clerk has none here either): keeping an older one would make the result depend on the
//!   order in which the states arrive;
//! - webhook state is ordered by Clerk's `updated_at`: older state changes nothing; two states
//!   of the same instant go to the one the source said later (`event_time`), then to the
//!   greater event id, whatever order they arrive in;
//! - a ban's revocation (`tokens_revoked_at`) only moves later, and is applied by every fresh
//!   event that carries it, also one whose state is stale: the event that told us of the ban
//!   may arrive after a newer state;
//! - a delete keeps the row as a tombstone (`deleted_at` set, personal data cleared); Clerk
//!   never reuses ids, so nothing writes to a tombstoned row again;
//! - concurrent commands for one user meet on that one row: `INSERT ... ON CONFLICT DO UPDATE`
//!   locks it and re-evaluates the guard on the newest version, so there are no lost updates,
//!   no resurrection and no unique-violation errors.

use crate::error::Error;
use crate::schema::users;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use service_runtime::Settled;
use service_runtime::{Pool, prepared};
use std::sync::Arc;

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = users)]
pub struct UserRecord {
    pub clerk_id: String,
    pub name: String,
    pub email: String,
    pub image_url: String,
    pub source_updated_at: Option<DateTime<Utc>>,
    pub claims_seen_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When Clerk last revoked all the user's sessions (a ban).
    pub tokens_revoked_at: Option<DateTime<Utc>>,
}

/// How long before a token's `iat` a revocation still counts as made after it: `iat` has whole
/// seconds, and the webhook's time and the token's come from different Clerk clocks (a second
/// allowed, as in workspace-service). No token is issued while a user is banned; the margin
/// refuses only a token minted within it after an unban.
pub const ISSUED_AT_MARGIN_SECS: i64 = 1;

/// The earliest revocation time that refuses a token issued at `issued_at` (Unix seconds).
pub fn revocation_cutoff(issued_at: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(issued_at.saturating_sub(ISSUED_AT_MARGIN_SECS), 0)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl UserRecord {
    /// Source time of the data held: the newer of the webhook state and the token claims.
    pub fn data_time(&self) -> DateTime<Utc> {
        self.source_updated_at
            .max(self.claims_seen_at)
            .unwrap_or(self.updated_at)
    }

    /// Whether Clerk revoked the user's sessions after a token issued at `issued_at` (Unix
    /// seconds), or up to [`ISSUED_AT_MARGIN_SECS`] before it.
    pub fn revoked_for(&self, issued_at: i64) -> bool {
        self.tokens_revoked_at
            .is_some_and(|at| at >= revocation_cutoff(issued_at))
    }
}

/// The refusal of a token issued before the user's ban.
pub fn revoked() -> Error {
    Error::Denied(
        "this user's sessions were revoked in Clerk (banned or deprovisioned) after the token was issued".into(),
    )
}

/// The refusal of any token of a user deleted in Clerk (which revoked all their sessions and
/// never issues them another): refused like a ban.
pub fn deleted() -> Error {
    Error::Denied(
        "this user was deleted in Clerk, which revoked all its sessions: its tokens are refused \
         (sign out; signing up again makes a new user)"
            .into(),
    )
}

/// What is held for one Clerk id. A tombstone is only [`Held::Deleted`]: none of its row is
/// kept, so it can never be answered as a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// A live user.
    Live(Arc<UserRecord>),
    /// Deleted in Clerk (final: Clerk never reuses ids).
    Deleted,
    /// No row: never synced (a new sign-up before its webhook), or no such user.
    Unknown,
}

impl Held {
    /// What `row` (tombstone or not, if any) says of its id.
    pub fn of(row: Option<UserRecord>) -> Self {
        match row {
            None => Held::Unknown,
            Some(r) if r.deleted_at.is_some() => Held::Deleted,
            Some(r) => Held::Live(Arc::new(r)),
        }
    }

    /// The live user, if any.
    pub fn live(self) -> Option<Arc<UserRecord>> {
        match self {
            Held::Live(r) => Some(r),
            Held::Deleted | Held::Unknown => None,
        }
    }

    /// Judges the holder of a user token issued at `issued_at` (Unix seconds) by their own
    /// row: refused when deleted, or banned after the token was issued; otherwise their live
    /// record, or `None` when never synced (which passes).
    pub fn admit(self, issued_at: i64) -> Result<Option<Arc<UserRecord>>, Error> {
        match self {
            Held::Deleted => Err(deleted()),
            Held::Live(r) if r.revoked_for(issued_at) => Err(revoked()),
            Held::Live(r) => Ok(Some(r)),
            Held::Unknown => Ok(None),
        }
    }
}

/// What a sync command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written (the state, or only a later revocation).
    Applied,
    /// This event id was applied before.
    Duplicate,
    /// Newer state (and no earlier revocation) or a tombstone is stored.
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
    /// When the source said it (tie-break); `None`: unknown, loses every tie.
    pub event_time: Option<DateTime<Utc>>,
    /// Banned: every token issued before this time is refused; `None`: not banned.
    pub tokens_revoked_at: Option<DateTime<Utc>>,
}

/// `user.deleted`, already validated.
#[derive(Debug, Clone)]
pub struct DeleteUser {
    pub event_id: String,
    /// When Clerk deleted the user; `None`: unknown (the time of recording is kept).
    pub occurred_at: Option<DateTime<Utc>>,
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

/// What a sync statement reports for one command.
#[derive(QueryableByName)]
struct Applied {
    /// The event id was new.
    #[diesel(sql_type = Bool)]
    fresh: bool,
    /// The user row was written.
    #[diesel(sql_type = Bool)]
    written: bool,
}

impl Applied {
    fn outcome(&self) -> Outcome {
        match (self.fresh, self.written) {
            (false, _) => Outcome::Duplicate,
            (true, false) => Outcome::Stale,
            (true, true) => Outcome::Applied,
        }
    }
}

/// Whether the proposed state (`EXCLUDED`) is newer than the stored one (a row only
/// StoreUser wrote has no webhook state: NULL, so any is newer).
macro_rules! newer_state {
    () => {
        "((users.source_updated_at, users.source_event_time, users.source_event_id)
           < (EXCLUDED.source_updated_at, EXCLUDED.source_event_time, EXCLUDED.source_event_id)
          IS NOT FALSE)"
    };
}

/// The write of an upsert to an existing user: the state when newer, the revocation when
/// later (also with a stale state), nothing to a tombstone. Evaluated on the locked row.
macro_rules! upsert_conflict {
    () => {
        concat!(
            "ON CONFLICT (clerk_id) DO UPDATE SET
                 name = CASE WHEN ", newer_state!(), " THEN EXCLUDED.name ELSE users.name END,
                 email = CASE WHEN ", newer_state!(), " THEN EXCLUDED.email ELSE users.email END,
                 image_url = CASE WHEN ", newer_state!(), " THEN EXCLUDED.image_url ELSE users.image_url END,
                 created_at = CASE WHEN ", newer_state!(), "
                     THEN LEAST(users.created_at, EXCLUDED.created_at) ELSE users.created_at END,
                 source_updated_at = CASE WHEN ", newer_state!(), "
                     THEN EXCLUDED.source_updated_at ELSE users.source_updated_at END,
                 source_event_time = CASE WHEN ", newer_state!(), "
                     THEN EXCLUDED.source_event_time ELSE users.source_event_time END,
                 source_event_id = CASE WHEN ", newer_state!(), "
                     THEN EXCLUDED.source_event_id ELSE users.source_event_id END,
                 tokens_revoked_at = GREATEST(users.tokens_revoked_at, EXCLUDED.tokens_revoked_at),
                 updated_at = now()
             WHERE users.deleted_at IS NULL
               AND (", newer_state!(), "
                    OR users.tokens_revoked_at IS DISTINCT FROM
                       GREATEST(users.tokens_revoked_at, EXCLUDED.tokens_revoked_at))"
        )
    };
}

/// Applies webhook state for a user (one statement).
pub async fn upsert_user(pool: &Pool, cmd: UpsertUser) -> Result<Outcome, Error> {
    let mut conn = pool.get().await?;
    let r: Applied = prepared(concat!(
        "WITH ev AS (
             INSERT INTO processed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING 1),
         up AS (
             INSERT INTO users (clerk_id, name, email, image_url, source_updated_at, created_at,
                                source_event_time, source_event_id, tokens_revoked_at)
             SELECT $2, $3, $4, $5, $6, COALESCE($7, now()), COALESCE($8, '-infinity'), $1, $9
             FROM ev
             ",
        upsert_conflict!(),
        "
             RETURNING 1)
         SELECT EXISTS (SELECT FROM ev) AS fresh, EXISTS (SELECT FROM up) AS written"
    ))
    .bind::<Text, _>(&cmd.event_id)
    .bind::<Text, _>(&cmd.clerk_id)
    .bind::<Text, _>(&cmd.name)
    .bind::<Text, _>(&cmd.email)
    .bind::<Text, _>(&cmd.image_url)
    .bind::<Timestamptz, _>(cmd.occurred_at)
    .bind::<Nullable<Timestamptz>, _>(cmd.created_at)
    .bind::<Nullable<Timestamptz>, _>(cmd.event_time)
    .bind::<Nullable<Timestamptz>, _>(cmd.tokens_revoked_at)
    .one(&mut conn)
    .await?;
    Ok(r.outcome())
}

#[derive(QueryableByName)]
struct BatchRow {
    #[diesel(sql_type = BigInt)]
    ord: i64,
    #[diesel(embed)]
    applied: Applied,
}

/// Applies several upserts in one statement and one commit, with the outcome of each, in order.
///
/// The result is that of applying them one at a time, newest first for each user: a repeated
/// event id (stored before, or earlier in `cmds`) is a duplicate; of the fresh events for one
/// user only the newest can be written (by `occurred_at`, then `event_time`, then event id), under
/// the same guard as [`upsert_user`], carrying the latest revocation of them all; the others
/// are stale. Event ids and users are locked in
/// sorted order, so concurrent statements wait for each other instead of deadlocking.
pub async fn upsert_users(pool: &Pool, cmds: &[UpsertUser]) -> Result<Vec<Outcome>, Error> {
    let mut conn = pool.get().await?;
    let col = |f: fn(&UpsertUser) -> String| cmds.iter().map(f).collect::<Vec<_>>();
    let rows: Vec<BatchRow> = prepared(concat!(
        "WITH input AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::timestamptz[], $7::timestamptz[], $8::timestamptz[],
                                  $9::timestamptz[])
                 WITH ORDINALITY AS t(event_id, clerk_id, name, email, image_url, source_updated_at,
                                      created_at, event_time, tokens_revoked_at, ord)),
         ev AS (
             INSERT INTO processed_events (event_id)
             SELECT DISTINCT event_id FROM input ORDER BY event_id
             ON CONFLICT DO NOTHING RETURNING event_id),
         fresh AS (
             SELECT DISTINCT ON (i.event_id) i.* FROM input i JOIN ev USING (event_id)
             ORDER BY i.event_id, i.ord),
         newest AS (
             SELECT DISTINCT ON (clerk_id) *,
                    max(tokens_revoked_at) OVER (PARTITION BY clerk_id) AS latest_revocation
             FROM fresh
             ORDER BY clerk_id, source_updated_at DESC, COALESCE(event_time, '-infinity') DESC,
                      event_id DESC, ord),
         up AS (
             INSERT INTO users (clerk_id, name, email, image_url, source_updated_at, created_at,
                                source_event_time, source_event_id, tokens_revoked_at)
             SELECT clerk_id, name, email, image_url, source_updated_at, COALESCE(created_at, now()),
                    COALESCE(event_time, '-infinity'), event_id, latest_revocation
             FROM newest ORDER BY clerk_id
             ",
        upsert_conflict!(),
        "
             RETURNING clerk_id)
         SELECT i.ord, f.ord IS NOT NULL AS fresh, (n.ord IS NOT NULL AND u.clerk_id IS NOT NULL) AS written
         FROM input i
         LEFT JOIN fresh f ON f.ord = i.ord
         LEFT JOIN newest n ON n.ord = i.ord
         LEFT JOIN up u ON u.clerk_id = n.clerk_id
         ORDER BY i.ord"
    ))
    .bind::<Array<Text>, _>(col(|c| c.event_id.clone()))
    .bind::<Array<Text>, _>(col(|c| c.clerk_id.clone()))
    .bind::<Array<Text>, _>(col(|c| c.name.clone()))
    .bind::<Array<Text>, _>(col(|c| c.email.clone()))
    .bind::<Array<Text>, _>(col(|c| c.image_url.clone()))
    .bind::<Array<Timestamptz>, _>(cmds.iter().map(|c| c.occurred_at).collect::<Vec<_>>())
    .bind::<Array<Nullable<Timestamptz>>, _>(cmds.iter().map(|c| c.created_at).collect::<Vec<_>>())
    .bind::<Array<Nullable<Timestamptz>>, _>(cmds.iter().map(|c| c.event_time).collect::<Vec<_>>())
    .bind::<Array<Nullable<Timestamptz>>, _>(
        cmds.iter().map(|c| c.tokens_revoked_at).collect::<Vec<_>>(),
    )
    .load(&mut conn)
    .await?;
    if rows.len() != cmds.len() || rows.iter().enumerate().any(|(i, r)| r.ord != i as i64 + 1) {
        return Err(Error::Internal(
            "batched upsert answered rows out of order".into(),
        ));
    }
    Ok(rows.iter().map(|r| r.applied.outcome()).collect())
}

/// Deletes a user: the row becomes a tombstone with its personal data cleared (one statement).
pub async fn delete_user(pool: &Pool, cmd: DeleteUser) -> Result<Outcome, Error> {
    let mut conn = pool.get().await?;
    let r: Applied = prepared(
        "WITH ev AS (
             INSERT INTO processed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING 1),
         up AS (
             INSERT INTO users (clerk_id, name, email, image_url, deleted_at)
             SELECT $2, '', '', '', COALESCE($3, now()) FROM ev
             ON CONFLICT (clerk_id) DO UPDATE SET
                 name = '', email = '', image_url = '', deleted_at = EXCLUDED.deleted_at, updated_at = now()
             WHERE users.deleted_at IS NULL
             RETURNING 1)
         SELECT EXISTS (SELECT FROM ev) AS fresh, EXISTS (SELECT FROM up) AS written",
    )
    .bind::<Text, _>(&cmd.event_id)
    .bind::<Text, _>(&cmd.clerk_id)
    .bind::<Nullable<Timestamptz>, _>(cmd.occurred_at)
    .one(&mut conn)
    .await?;
    Ok(r.outcome())
}

#[derive(QueryableByName)]
struct Stored {
    #[diesel(embed)]
    user: UserRecord,
    #[diesel(sql_type = Bool)]
    inserted: bool,
}

/// The seed's `storeUser`: creates the caller from token claims when unknown, refreshes name and
/// email when the token is newer than the stored data (never rolls back newer webhook data, never
/// recreates a deleted user, never writes from a token issued before the user's ban: both are
/// refused as the user's other calls are, [`Held::admit`]). Returns the record and whether it
/// was created.
pub async fn store_user(pool: &Pool, claims: TokenClaims) -> Result<(UserRecord, bool), Error> {
    let mut conn = pool.get().await?;
    // Never the email: the name is what other users see, the email only its owner.
    let name_for_new = claims
        .name
        .clone()
        .unwrap_or_else(|| "Anonymous".to_owned());
    // Writes only when the user is new, or the token is newer than the data held and says
    // something different, and the user's sessions were not revoked after the token was
    // issued; the row lock of ON CONFLICT orders it against webhook commands.
    let written: Option<Stored> = prepared(
        "INSERT INTO users AS u (clerk_id, name, email, claims_seen_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (clerk_id) DO UPDATE SET
             name = COALESCE($5, u.name), email = COALESCE($6, u.email),
             claims_seen_at = EXCLUDED.claims_seen_at, updated_at = now()
         WHERE u.deleted_at IS NULL
           AND (u.tokens_revoked_at IS NULL OR u.tokens_revoked_at < $7)
           AND GREATEST(u.source_updated_at, u.claims_seen_at) < EXCLUDED.claims_seen_at
           AND (u.name IS DISTINCT FROM COALESCE($5, u.name) OR u.email IS DISTINCT FROM COALESCE($6, u.email))
         RETURNING u.clerk_id, u.name, u.email, u.image_url, u.source_updated_at, u.claims_seen_at,
                   u.deleted_at, u.created_at, u.updated_at, u.tokens_revoked_at,
                   (xmax = 0) AS inserted",
    )
    .bind::<Text, _>(&claims.clerk_id)
    .bind::<Text, _>(&name_for_new)
    .bind::<Text, _>(claims.email.clone().unwrap_or_default())
    .bind::<Timestamptz, _>(claims.issued_at)
    .bind::<Nullable<Text>, _>(&claims.name)
    .bind::<Nullable<Text>, _>(&claims.email)
    .bind::<Timestamptz, _>(revocation_cutoff(claims.issued_at.timestamp()))
    .one(&mut conn)
    .await
    .optional()?;
    if let Some(s) = written {
        return Ok((s.user, s.inserted));
    }
    let existing: UserRecord = users::table
        .find(&claims.clerk_id)
        .select(UserRecord::as_select())
        .limit(1)
        .one(&mut conn)
        .await?;
    if existing.deleted_at.is_some() {
        return Err(deleted());
    }
    if existing.revoked_for(claims.issued_at.timestamp()) {
        return Err(revoked());
    }
    Ok((existing, false))
}

/// The row of one id, tombstone included.
pub async fn get_row(pool: &Pool, clerk_id: &str) -> Result<Option<UserRecord>, Error> {
    get_row_on(&mut *pool.get().await?, clerk_id).await
}

/// The row of one id, tombstone included, on `conn`.
pub async fn get_row_on(
    conn: &mut diesel_async::AsyncPgConnection,
    clerk_id: &str,
) -> Result<Option<UserRecord>, Error> {
    Ok(users::table
        .find(clerk_id)
        .select(UserRecord::as_select())
        .limit(1)
        .one(conn)
        .await
        .optional()?)
}

/// The rows of `ids`, tombstones included (any order; unknown ids left out).
pub async fn get_rows_on(
    conn: &mut diesel_async::AsyncPgConnection,
    ids: &[String],
) -> Result<Vec<UserRecord>, Error> {
    Ok(users::table
        .filter(users::clerk_id.eq_any(ids))
        .select(UserRecord::as_select())
        .load(conn)
        .await?)
}

/// Live users by ids (any order; unknown and deleted ids left out).
pub async fn get_users(pool: &Pool, ids: &[String]) -> Result<Vec<UserRecord>, Error> {
    get_users_on(&mut *pool.get().await?, ids).await
}

/// Live users by ids, on `conn`: the rows' statement, tombstones dropped here (one statement,
/// planned once, for every lookup by ids).
pub async fn get_users_on(
    conn: &mut diesel_async::AsyncPgConnection,
    ids: &[String],
) -> Result<Vec<UserRecord>, Error> {
    let mut rows = get_rows_on(conn, ids).await?;
    rows.retain(|u| u.deleted_at.is_none());
    Ok(rows)
}
