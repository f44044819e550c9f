//! One job table: its statements ([`JobTable`], made by [`job_table!`](crate::job_table)),
//! what a runner leases and what an attempt comes to, the handler a runner calls, the depths
//! and the sampler of the queue's gauges, and what an operator does with a queue (list, retry).

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rand::Rng;
use service_runtime::Settled;
use service_runtime::{Pool, prepared};
use std::future::Future;
use std::time::Duration;
use uuid::Uuid;

/// The statements of one job table: static text, made by [`job_table!`](crate::job_table).
#[derive(Debug)]
pub struct JobTable {
    /// The table, for logs.
    pub name: &'static str,
    /// `$1` jobs at most, leased for `$2` seconds under token `$3`; returns `key`, `attempts`,
    /// `round`, `enqueued_at`.
    pub(crate) lease: &'static str,
    /// Deletes the jobs `$1[i]` leased under `$2[i]`.
    pub(crate) done: &'static str,
    /// Reschedules job `$1` leased under `$2` in `$4` seconds, recording error `$3`, taking
    /// back `$5` (0 or 1) attempts.
    pub(crate) retry: &'static str,
    /// Marks job `$1` leased under `$2` dead, recording error `$3`.
    pub(crate) bury: &'static str,
    /// Schedules the next round of job `$1` leased under `$2` in `$3` seconds: enqueued then,
    /// with no attempts and no error.
    pub(crate) later: &'static str,
    /// Gives back the jobs `$1[i]` leased under `$2[i]` and not started: due at once, the
    /// attempt their lease counted taken back.
    pub(crate) release: &'static str,
    /// Jobs by state and the age of the oldest live one ([`Depths`]).
    pub(crate) depths: &'static str,
    /// Jobs in state `$1` (`''` for all) after key `$2`, `$3` at most, by key ([`JobRow`]).
    pub(crate) list: &'static str,
    /// Makes job `$1` (live or dead, not scheduled) due now with no attempts.
    pub(crate) retry_key: &'static str,
    /// Makes every job in state `$1` (`dead` or `failing`) due now with no attempts.
    pub(crate) retry_state: &'static str,
}

/// The [`JobTable`] of `$table`, whose key column is `$key` of SQL type `$ty`.
#[macro_export]
macro_rules! job_table {
    ($table:literal, $key:literal, $ty:literal) => {
        $crate::JobTable::new(
            $table,
            [
                concat!(
                    "UPDATE ", $table, " j
                        SET leased_until = CASE WHEN j.attempts > $4 THEN NULL
                                                ELSE now() + make_interval(secs => $2) END,
                            lease_token = CASE WHEN j.attempts > $4 THEN NULL ELSE $3 END,
                            attempts = CASE WHEN j.attempts > $4 THEN j.attempts ELSE j.attempts + 1 END,
                            dead_at = CASE WHEN j.attempts > $4 THEN now() END,
                            last_error = CASE WHEN j.attempts > $4
                                THEN 'its worker stopped during its last attempts without recording them (gave up after '
                                     || j.attempts || ' attempts); the last error recorded: '
                                     || coalesce(j.last_error, 'none')
                                ELSE j.last_error END
                      WHERE j.", $key, " IN (
                            SELECT ", $key, " FROM ", $table, "
                             WHERE dead_at IS NULL AND next_attempt_at <= now()
                               AND (leased_until IS NULL OR leased_until < now())
                             ORDER BY next_attempt_at LIMIT $1
                             FOR UPDATE SKIP LOCKED)
                  RETURNING j.", $key, "::text AS key, j.attempts, j.round, j.enqueued_at, now() AS leased_at,
                            j.dead_at IS NOT NULL AS abandoned"
                ),
                concat!(
                    "DELETE FROM ", $table, " t USING unnest($1::text[], $2::uuid[]) AS d(key, token)
                      WHERE t.", $key, " = d.key::", $ty, " AND t.lease_token = d.token"
                ),
                concat!(
                    "UPDATE ", $table, "
                        SET leased_until = NULL, lease_token = NULL, last_error = $3,
                            next_attempt_at = now() + make_interval(secs => $4),
                            attempts = attempts - $5
                      WHERE ", $key, " = $1::", $ty, " AND lease_token = $2"
                ),
                concat!(
                    "UPDATE ", $table, "
                        SET leased_until = NULL, lease_token = NULL, last_error = $3, dead_at = now()
                      WHERE ", $key, " = $1::", $ty, " AND lease_token = $2"
                ),
                concat!(
                    "UPDATE ", $table, "
                        SET leased_until = NULL, lease_token = NULL, last_error = NULL, attempts = 0,
                            round = round + 1, enqueued_at = now() + make_interval(secs => $3),
                            next_attempt_at = now() + make_interval(secs => $3)
                      WHERE ", $key, " = $1::", $ty, " AND lease_token = $2"
                ),
                concat!(
                    "UPDATE ", $table, " t
                        SET leased_until = NULL, lease_token = NULL, attempts = t.attempts - 1
                       FROM unnest($1::text[], $2::uuid[]) AS d(key, token)
                      WHERE t.", $key, " = d.key::", $ty, " AND t.lease_token = d.token"
                ),
                concat!(
                    "SELECT count(*) FILTER (WHERE dead_at IS NULL AND last_error IS NULL AND enqueued_at <= now()) AS pending,
                            count(*) FILTER (WHERE dead_at IS NULL AND last_error IS NOT NULL) AS failing,
                            count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead,
                            count(*) FILTER (WHERE dead_at IS NULL AND last_error IS NULL AND enqueued_at > now()) AS scheduled,
                            COALESCE(EXTRACT(EPOCH FROM now() - min(enqueued_at) FILTER (WHERE dead_at IS NULL AND enqueued_at <= now())), 0)::float8 AS oldest
                       FROM ", $table
                ),
                concat!(
                    "SELECT ", $key, "::text AS key, attempts, last_error, enqueued_at, next_attempt_at, dead_at
                       FROM ", $table, "
                      WHERE ", $key, "::text > $2
                        AND CASE $1 WHEN 'pending' THEN dead_at IS NULL AND last_error IS NULL AND enqueued_at <= now()
                                    WHEN 'scheduled' THEN dead_at IS NULL AND last_error IS NULL AND enqueued_at > now()
                                    WHEN 'failing' THEN dead_at IS NULL AND last_error IS NOT NULL
                                    WHEN 'dead' THEN dead_at IS NOT NULL
                                    ELSE true END
                      ORDER BY ", $key, "::text LIMIT $3"
                ),
                concat!(
                    "UPDATE ", $table, "
                        SET dead_at = NULL, attempts = 0, last_error = NULL, next_attempt_at = now()
                      WHERE ", $key, "::text = $1 AND (leased_until IS NULL OR leased_until < now())
                        AND NOT (dead_at IS NULL AND last_error IS NULL AND enqueued_at > now())"
                ),
                concat!(
                    "UPDATE ", $table, "
                        SET dead_at = NULL, attempts = 0, last_error = NULL, next_attempt_at = now()
                      WHERE CASE $1 WHEN 'dead' THEN dead_at IS NOT NULL
                                    WHEN 'failing' THEN dead_at IS NULL AND last_error IS NOT NULL
                                    ELSE false END
                        AND (leased_until IS NULL OR leased_until < now())"
                ),
            ],
        )
    };
}
impl JobTable {
    /// Used by [`job_table!`](crate::job_table): lease, done, retry, bury, later, release,
    /// depths, list, retry_key, retry_state.
    pub const fn new(name: &'static str, sql: [&'static str; 10]) -> Self {
        Self {
            name,
            lease: sql[0],
            done: sql[1],
            retry: sql[2],
            bury: sql[3],
            later: sql[4],
            release: sql[5],
            depths: sql[6],
            list: sql[7],
            retry_key: sql[8],
            retry_state: sql[9],
        }
    }
}

/// A leased job.
#[derive(Debug, Clone, QueryableByName)]
pub struct Leased {
    /// The job's key, as text.
    #[diesel(sql_type = Text)]
    pub key: String,
    /// Attempts so far, this one included.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// Rounds the job finished so far ([`Attempt::Later`]).
    #[diesel(sql_type = Integer)]
    pub round: i32,
    /// When the job was enqueued, or its round scheduled to start.
    #[diesel(sql_type = Timestamptz)]
    pub enqueued_at: DateTime<Utc>,
    /// When it was leased, by the database's clock (the one `enqueued_at` and every due time
    /// follow): a handler times a round against this, never its own clock.
    #[diesel(sql_type = Timestamptz)]
    pub leased_at: DateTime<Utc>,
}

/// A row the lease statement took: a job leased, or one it found abandoned and buried instead:
/// its lease expired past its last attempt and one more (both unrecorded, as when its worker
/// dies during every attempt; one result lost to the database alone gets that one more try).
#[derive(Debug, QueryableByName)]
pub(crate) struct Taken {
    #[diesel(embed)]
    pub(crate) job: Leased,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub(crate) abandoned: bool,
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Finished: the job is deleted.
    Done,
    /// Try again after `after`, recording `error` (dead instead once the attempts are spent).
    Retry { after: Duration, error: String },
    /// The service the job calls is unavailable (5xx, timeout, no connection): retried like
    /// [`Attempt::Retry`], and counted by the runner's breaker ([`crate::breaker`]); `hold` is
    /// the pause the service asked for, if it did.
    Unavailable {
        after: Duration,
        error: String,
        hold: Option<Duration>,
    },
    /// The service the job calls rate-limits the caller (429): tried again after `after` (its
    /// `Retry-After`), recording `error`, with the attempt taken back, since a rate limit says
    /// nothing about the job and must not make it dead; the breaker pauses every job for
    /// `after`.
    Throttled { after: Duration, error: String },
    /// Not done because the service's own database could not take it (a read-only server, a
    /// broken connection: [`service_runtime::db::DbFailure::Unavailable`]): tried again after
    /// `after`, recording `error`, with the attempt its lease counted taken back, so it never
    /// makes the job dead. The breaker is not told.
    Deferred { after: Duration, error: String },
    /// A permanent failure: the job is kept dead, recording `error`, until an operator retries it.
    Dead { error: String },
    /// This round is finished: the job's next round starts after `after`, as if enqueued then
    /// (scheduled until due; no attempts and no error carried over).
    Later { after: Duration },
}

/// Jobs by state, and the age of the oldest live one.
#[derive(Debug, Clone, Copy, PartialEq, QueryableByName)]
pub struct Depths {
    /// Not tried yet (or retried by an operator).
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    /// Tried and failed; will be tried again.
    #[diesel(sql_type = BigInt)]
    pub failing: i64,
    /// Given up.
    #[diesel(sql_type = BigInt)]
    pub dead: i64,
    /// Next rounds not due yet ([`Attempt::Later`]).
    #[diesel(sql_type = BigInt)]
    pub scheduled: i64,
    /// Age of the oldest job that is not dead (nor scheduled), seconds.
    #[diesel(sql_type = Double)]
    pub oldest: f64,
}

impl Depths {
    /// Jobs due or being retried (scheduled rounds apart).
    pub fn live(&self) -> i64 {
        self.pending + self.failing
    }
}

/// Counts a table's jobs by state.
pub async fn depths(conn: &mut AsyncPgConnection, table: &JobTable) -> diesel::QueryResult<Depths> {
    prepared(table.depths).one(conn).await
}

/// The state of a job, as an operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Not tried yet (or retried by an operator).
    Pending,
    /// Tried and failed; will be tried again.
    Failing,
    /// Given up: kept until an operator retries it.
    Dead,
    /// Its next round is not due yet ([`Attempt::Later`]).
    Scheduled,
}

impl JobState {
    /// The name the list and retry statements take.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Failing => "failing",
            JobState::Dead => "dead",
            JobState::Scheduled => "scheduled",
        }
    }
}

/// A job as an operator lists it.
#[derive(Debug, Clone, QueryableByName)]
pub struct JobRow {
    /// The job's key, as text.
    #[diesel(sql_type = Text)]
    pub key: String,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub enqueued_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub next_attempt_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub dead_at: Option<DateTime<Utc>>,
}

impl JobRow {
    /// Its state: dead, failing (an error recorded), scheduled (a round not due yet) or
    /// pending.
    pub fn state(&self) -> JobState {
        match (&self.dead_at, &self.last_error) {
            (Some(_), _) => JobState::Dead,
            (None, Some(_)) => JobState::Failing,
            (None, None) if self.enqueued_at > Utc::now() => JobState::Scheduled,
            (None, None) => JobState::Pending,
        }
    }
}

/// Up to `limit` jobs of `table` in `state` (every state when `None`) after key `after`, by key.
pub async fn list(
    conn: &mut AsyncPgConnection,
    table: &JobTable,
    state: Option<JobState>,
    after: &str,
    limit: i64,
) -> diesel::QueryResult<Vec<JobRow>> {
    prepared(table.list)
        .bind::<Text, _>(state.map_or("", JobState::as_str))
        .bind::<Text, _>(after)
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await
}

/// Makes job `key` due now with no attempts; 0 when there is no such job, or it is running, or
/// its next round is scheduled (its handler chose when it may run: see [`Attempt::Later`]).
pub async fn retry_key(
    conn: &mut AsyncPgConnection,
    table: &JobTable,
    key: &str,
) -> diesel::QueryResult<usize> {
    prepared(table.retry_key)
        .bind::<Text, _>(key)
        .execute(conn)
        .await
}

/// Makes every job in `state` (dead or failing; pending ones are due already) due now with no
/// attempts.
pub async fn retry_state(
    conn: &mut AsyncPgConnection,
    table: &JobTable,
    state: JobState,
) -> diesel::QueryResult<usize> {
    prepared(table.retry_state)
        .bind::<Text, _>(state.as_str())
        .execute(conn)
        .await
}

/// Does jobs of one table.
#[tonic::async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// Does one leased job (leased under `token`), with no transaction open.
    async fn attempt(&self, job: &Leased, token: Uuid) -> Attempt;

    /// The runner's breaker opened or closed (for gauges; the runner logs it).
    fn breaker_changed(&self, _open: bool) {}
}

/// Exponential backoff with "equal jitter" for the `attempts`-th attempt: `base` doubled per
/// attempt, capped at `max`, of which half is fixed and half random.
pub fn backoff(base: Duration, max: Duration, attempts: i32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempts.clamp(1, 20).saturating_sub(1) as u32)
        .min(max);
    let half = exp / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// How often [`sample_loop`] counts the queue.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Counts `table`'s jobs every few seconds and tells `sampled`, until `stop`. Runs whether or
/// not a worker drains the table, so the gauges show a queue that nobody drains.
pub async fn sample_loop(
    pool: Pool,
    table: &'static JobTable,
    sampled: impl Fn(Depths) + Send,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let counted = match pool.get().await {
            Ok(mut conn) => depths(&mut conn, table).await.map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        match counted {
            Ok(d) => sampled(d),
            Err(e) => {
                service_runtime::db::classify_error(&e);
                tracing::warn!(table = table.name, error = %e, "sampling the job queue failed")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = &mut stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 1..30 {
            let d = backoff(base, max, attempt);
            let full = Duration::from_secs(1u64 << (attempt - 1).min(20)).min(max);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
    }
}
