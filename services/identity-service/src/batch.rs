//! Group commit for webhook upserts, and coalesced lookups by id.
//!
//! Clerk sends one webhook per change, and under load many arrive at once. Each `UpsertUser`
//! still answers only after its own event is committed, but commands that arrive while the
//! database is busy share one statement and one commit ([`users::upsert_users`]). Batch sizes
//! follow the load ([`micro_batch`]): an idle service runs each command at once, alone. A batch
//! that fails is replayed one command at a time, so each caller gets its own outcome or its own
//! error, never a neighbour's.

use crate::error::Error;
use crate::users::{self, Outcome, UpsertUser, UserRecord};
use micro_batch::{MicroBatcher, SubmitError};
use service_runtime::Pool;
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
/// in a batch reads data at least as new as when it arrived.
#[derive(Clone)]
pub struct UserLookups {
    batcher: MicroBatcher<String, Result<Option<UserRecord>, Error>>,
    pool: Pool,
    cache: UserCache,
}

/// The replica's cache of live user rows (`None`: no live user) by Clerk id.
pub type UserCache = coherent_cache::Coherent<String, Option<Arc<UserRecord>>>;

/// The channel the `users` table's triggers notify with `u <clerk_id>` (or `*`).
pub const NOTIFY_CHANNEL: &str = "vbase_users";

/// A user cache of at most `bytes` (0: off).
pub fn user_cache(bytes: u64) -> UserCache {
    UserCache::new(bytes, |id, user| {
        let row = user.as_ref().map_or(0, |u| {
            std::mem::size_of::<UserRecord>()
                + u.clerk_id.len()
                + u.name.len()
                + u.email.len()
                + u.image_url.len()
        });
        (std::mem::size_of::<(String, Option<Arc<UserRecord>>)>() + 64 + id.len() + row) as u64
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
        pool: Pool,
        slots: usize,
        cache: UserCache,
        on_batch: impl Fn(usize) + Send + Sync + 'static,
    ) -> Self {
        let batcher = start_over(&pool, slots, MAX_LOOKUP, on_batch, lookup);
        Self {
            batcher,
            pool,
            cache,
        }
    }

    /// One live user by id: from the replica's cache when it may answer, else from the
    /// database (kept in the cache unless a change to users was heard meanwhile).
    pub async fn get(&self, clerk_id: &str) -> Result<Option<Arc<UserRecord>>, Error> {
        let key = clerk_id.to_owned();
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit);
        }
        let ticket = self.cache.ticket();
        let found = match self.batcher.submit(key.clone()).await {
            Ok(r) => r,
            Err(_) => users::get_user(&self.pool, clerk_id).await,
        }?
        .map(Arc::new);
        self.cache.insert(ticket, key, found.clone());
        Ok(found)
    }

    /// Forgets `clerk_id` here (after a write to it on this replica, so it reads it back at
    /// once; the other replicas hear it from PostgreSQL).
    pub fn forget(&self, clerk_id: &str) {
        self.cache.invalidate(&clerk_id.to_owned());
    }
}

async fn lookup(pool: Pool, ids: Vec<String>) -> Vec<Result<Option<UserRecord>, Error>> {
    if let [one] = ids.as_slice() {
        return vec![users::get_user(&pool, one).await];
    }
    match users::get_users(&pool, &ids).await {
        Ok(found) => {
            let by_id: HashMap<String, UserRecord> =
                found.into_iter().map(|u| (u.clerk_id.clone(), u)).collect();
            ids.iter().map(|id| Ok(by_id.get(id).cloned())).collect()
        }
        Err(e) => {
            tracing::warn!(error = %e, ids = ids.len(), "batched lookup failed; looking up one at a time");
            futures::future::join_all(ids.iter().map(|id| users::get_user(&pool, id))).await
        }
    }
}
