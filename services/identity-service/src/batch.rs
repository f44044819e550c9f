//! Group commit for webhook upserts, and coalesced lookups by id.
//!
//! Clerk sends one webhook per change, and under load many arrive at once. Each `UpsertUser`
//! still answers only after its own event is committed, but commands that arrive while the
//! database is busy share one statement and one commit ([`users::upsert_users`]). Batch sizes
//! follow the load ([`micro_batch`]): an idle service runs each command at once, alone. A batch
//! that fails is replayed one command at a time, so each caller gets its own outcome or its own
//! error, never a neighbour's.

use crate::error::Error;
use crate::users::{self, Held, Outcome, UpsertUser, UserRecord};
use micro_batch::{MicroBatcher, SubmitError};
use service_runtime::Pool;
use service_runtime::replica::{Lsn, ReadPool};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

/// Largest number of commands in one statement.
pub const MAX_BATCH: usize = 64;

/// Queues upserts and applies them in batches, `slots` statements at a time.
#[derive(Clone)]
pub struct UpsertBatcher {
    batcher: MicroBatcher<UpsertUser, Result<Outcome, Error>>,
    pool: Pool,
}

impl UpsertBatcher {
    /// Starts the dispatcher; `on_batch` sees the size of every batch.
    pub fn start(
        pool: Pool,
        slots: usize,
        on_batch: impl Fn(usize) + Send + Sync + 'static,
    ) -> Self {
        let batcher = start_over(&pool, slots, MAX_BATCH, on_batch, apply);
        Self { batcher, pool }
    }

    /// Applies one upsert; returns when it is committed (or refused).
    pub async fn upsert(&self, cmd: UpsertUser) -> Result<Outcome, Error> {
        match self.batcher.submit(cmd).await {
            Ok(r) => r,
            // The dispatcher is gone (shutting down): apply it directly.
            Err(SubmitError::Stopped(cmd)) => users::upsert_user(&self.pool, cmd).await,
            Err(SubmitError::Lost) => Err(Error::Unavailable(
                "the command's batch ended without its result; retry",
            )),
        }
    }
}

/// A batcher whose batches run `run` on `pool`; `on_batch` sees the size of every batch.
fn start_over<T, R, Fut>(
    pool: &Pool,
    slots: usize,
    max_batch: usize,
    on_batch: impl Fn(usize) + Send + Sync + 'static,
    run: impl Fn(Pool, Vec<T>) -> Fut + Send + Sync + 'static,
) -> MicroBatcher<T, R>
where
    T: Send + 'static,
    R: Send + 'static,
    Fut: Future<Output = Vec<R>> + Send + 'static,
{
    let pool = pool.clone();
    MicroBatcher::start(slots, max_batch, move |items: Vec<T>| {
        on_batch(items.len());
        run(pool.clone(), items)
    })
}

async fn apply(pool: Pool, cmds: Vec<UpsertUser>) -> Vec<Result<Outcome, Error>> {
    if let [one] = cmds.as_slice() {
        return vec![users::upsert_user(&pool, one.clone()).await];
    }
    match users::upsert_users(&pool, &cmds).await {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(e) => {
            tracing::warn!(error = %e, commands = cmds.len(), "batched upsert failed; applying one at a time");
            futures::future::join_all(cmds.into_iter().map(|c| users::upsert_user(&pool, c))).await
        }
    }
}

/// Largest number of ids in one lookup.
pub const MAX_LOOKUP: usize = 128;

/// Looks users up by id; lookups that arrive while `slots` queries are running go to the
/// database together as one `= ANY($1)` query (one round trip instead of one each). A lookup
/// in a batch reads data at least as new as when it arrived: a batch reads the replica (while
/// it keeps up) or the primary. A lookup that must see its caller's last write (`after`, while
/// a replica is configured) is never batched: it waits for the replica to replay that position
/// (up to `DB_READ_YOUR_WRITES_WAIT_MS`, then reads the primary) on its own, so a position,
/// honest or forged (`x-vbase-lsn: FFFFFFFF/FFFFFFFF`), delays no other caller's lookup.
#[derive(Clone)]
pub struct UserLookups {
    batcher: MicroBatcher<Lookup, Result<Found, Error>>,
    /// Lookups that carry a read position run on their own, at most `LOOKUP_SLOTS` at once
    /// like the batches: each may hold a replica connection while it waits for its position,
    /// and a caller sending positions it made up must not take every connection.
    positioned: Arc<tokio::sync::Semaphore>,
    reads: ReadPool,
    cache: UserCache,
}

/// One batched lookup: the id.
type Lookup = String;

/// What a lookup found, and whether a replica answered.
type Found = (Held, bool);

/// The replica's cache of what is held by Clerk id: a live user's row, a deletion (no data of
/// it), or no row.
pub type UserCache = coherent_cache::Coherent<String, Held>;

/// The channel the `users` table's triggers notify with `u <clerk_id>` (or `*`).
pub const NOTIFY_CHANNEL: &str = "vbase_users";

/// The triggers that send [`NOTIFY_CHANNEL`]'s notifications (migration `user_notifications`).
pub const NOTIFY_TRIGGERS: &[coherent_cache::Trigger] = &[
    ("users", "cached_rows"),
    ("users", "cached_update"),
    ("users", "cached_truncate"),
];

/// A user cache of at most `bytes` (0: off).
pub fn user_cache(bytes: u64) -> UserCache {
    UserCache::new(bytes, |id, held| {
        let row = match held {
            Held::Live(u) => {
                std::mem::size_of::<UserRecord>()
                    + u.clerk_id.len()
                    + u.name.len()
                    + u.email.len()
                    + u.image_url.len()
            }
            Held::Deleted | Held::Unknown => 0,
        };
        (std::mem::size_of::<(String, Held)>() + 64 + id.len() + row) as u64
    })
}

/// Applies one notification of [`NOTIFY_CHANNEL`].
pub fn apply_notification(cache: &UserCache, payload: &str) {
    match payload.strip_prefix("u ") {
        Some(id) => cache.invalidate(&id.to_owned()),
        None => cache.clear(),
    }
}

impl UserLookups {
    /// Starts the dispatcher; `on_batch` sees the size of every batch.
    pub fn start(
        reads: ReadPool,
        slots: usize,
        cache: UserCache,
        on_batch: impl Fn(usize) + Send + Sync + 'static,
    ) -> Self {
        let pool = reads.clone();
        let batcher = MicroBatcher::start(slots, MAX_LOOKUP, move |items: Vec<Lookup>| {
            on_batch(items.len());
            lookup(pool.clone(), items)
        });
        Self {
            batcher,
            positioned: Arc::new(tokio::sync::Semaphore::new(slots.max(1))),
            reads,
            cache,
        }
    }

    /// What is held for an id (a live user, a deletion, nothing), at least as new as `after`
    /// (the caller's last write): from the replica's cache when it may answer and there is no
    /// `after`, else from the database (kept in the cache unless a change to users was heard
    /// meanwhile, or a replica answered: its row may predate a change the cache already heard
    /// of). A read with `after` never comes from the cache: the write may have committed
    /// through another replica whose notification this one has not heard yet.
    pub async fn get(&self, clerk_id: &str, after: Option<Lsn>) -> Result<Held, Error> {
        self.held(clerk_id, after, false).await
    }

    /// What is held for the caller `clerk_id`, to decide whether its token is admitted: as
    /// [`UserLookups::get`], but with a read replica configured, what the cache cannot answer is
    /// read on the primary, never on the replica, whose row may predate a deletion or a ban
    /// (kept in the cache as a primary's read is).
    pub async fn caller(&self, clerk_id: &str, after: Option<Lsn>) -> Result<Held, Error> {
        self.held(clerk_id, after, true).await
    }

    async fn held(
        &self,
        clerk_id: &str,
        after: Option<Lsn>,
        on_primary: bool,
    ) -> Result<Held, Error> {
        let key = clerk_id.to_owned();
        if after.is_none()
            && let Some(hit) = self.cache.get(&key)
        {
            return Ok(hit);
        }
        let ticket = self.cache.ticket();
        // Without a replica every read is the primary's: a position changes nothing.
        let replica = self.reads.has_replica();
        let (found, on_replica) = match after.filter(|_| replica) {
            _ if on_primary && replica => users::get_row(self.reads.primary(), clerk_id)
                .await
                .map(|u| (Held::of(u), false)),
            Some(after) => {
                let _slot = self
                    .positioned
                    .acquire()
                    .await
                    .map_err(|_| Error::Internal("the lookup slots are closed".into()))?;
                read_users(&self.reads, Some(&after), std::slice::from_ref(&key))
                    .await
                    .map(|(found, on_replica)| (Held::of(found.into_iter().next()), on_replica))
            }
            None => match self.batcher.submit(key.clone()).await {
                Ok(r) => r,
                Err(_) => users::get_row(self.reads.primary(), clerk_id)
                    .await
                    .map(|u| (Held::of(u), false)),
            },
        }?;
        if !on_replica {
            self.cache.insert(ticket, key, found.clone());
        }
        Ok(found)
    }

    /// Forgets `clerk_id` here (after a write to it on this replica, so it reads it back at
    /// once; the other replicas hear it from PostgreSQL).
    pub fn forget(&self, clerk_id: &str) {
        self.cache.invalidate(&clerk_id.to_owned());
    }
}

/// The rows of `ids`, tombstones included (one statement for one id, another for several).
async fn query_users(
    conn: &mut diesel_async::AsyncPgConnection,
    ids: &[String],
) -> Result<Vec<UserRecord>, Error> {
    if let [one] = ids {
        Ok(users::get_row_on(conn, one).await?.into_iter().collect())
    } else {
        users::get_rows_on(conn, ids).await
    }
}

/// The rows of `ids`, tombstones included, read at least as new as `after`, and whether a
/// replica answered.
async fn read_users(
    reads: &ReadPool,
    after: Option<&Lsn>,
    ids: &[String],
) -> Result<(Vec<UserRecord>, bool), Error> {
    let (mut conn, on_replica) = reads.get_routed(after).await?;
    match query_users(&mut conn, ids).await {
        // A read that fails on the replica (lost connection, conflict with recovery) is read
        // again on the primary.
        Err(e) if on_replica && service_runtime::replica::read_again_on_primary(&e) => {
            drop(conn);
            let mut conn = reads.primary_after_replica_error(&e).await?;
            Ok((query_users(&mut conn, ids).await?, false))
        }
        found => Ok((found?, on_replica)),
    }
}

async fn lookup(reads: ReadPool, ids: Vec<Lookup>) -> Vec<Result<Found, Error>> {
    match read_users(&reads, None, &ids).await {
        Ok((found, on_replica)) => {
            let by_id: HashMap<String, UserRecord> =
                found.into_iter().map(|u| (u.clerk_id.clone(), u)).collect();
            ids.iter()
                .map(|id| Ok((Held::of(by_id.get(id).cloned()), on_replica)))
                .collect()
        }
        Err(e) if ids.len() == 1 => vec![Err(e)],
        Err(e) => {
            tracing::warn!(error = %e, ids = ids.len(), "batched lookup failed; looking up one at a time on the primary");
            let pool = reads.primary();
            futures::future::join_all(ids.iter().map(|id| async move {
                users::get_row(pool, id).await.map(|u| (Held::of(u), false))
            }))
            .await
        }
    }
}
