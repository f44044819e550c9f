//! Durable Liveblocks room clean-up: a Postgres outbox and the worker that drains it.
//!
//! Rooms are queued in the same transaction that deletes their rows. The worker leases due jobs
//! (`FOR UPDATE SKIP LOCKED`, with a lease token and expiry), calls Liveblocks with no
//! transaction open, then deletes the job (204/404) or reschedules it: 429 honours
//! `Retry-After`; 5xx, timeouts and connection errors back off exponentially with jitter; 401/403
//! stay queued, are logged once per key problem and counted. A crashed worker's lease expires
//! and another replica retries the job. Concurrency toward Liveblocks is bounded.

use crate::metrics::Metrics;
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Double, Integer, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rand::Rng;
use service_runtime::{Pool, prepared};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

/// Queues Liveblocks rooms for deletion (inside the caller's transaction).
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    room_ids: &[String],
) -> diesel::QueryResult<usize> {
    prepared(
        "INSERT INTO liveblocks_cleanup_jobs (room_id) SELECT unnest($1::text[]) ON CONFLICT (room_id) DO NOTHING",
    )
    .bind::<Array<Text>, _>(room_ids)
    .execute(conn)
    .await
}

/// What one DELETE call achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// 204: deleted.
    Deleted,
    /// 404: already gone (done as well).
    AlreadyGone,
    /// 429 / 5xx / timeout / connection error: try again, after `after` when the server said so.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// 401 / 403: the secret key is wrong; keep the job until it is fixed.
    KeyRejected { status: u16 },
    /// Another 4xx (e.g. 422): keep the job, back off to the maximum, alert.
    Rejected { status: u16, reason: String },
}

/// The one Liveblocks call the worker needs.
#[tonic::async_trait]
pub trait LiveblocksApi: Send + Sync + 'static {
    /// Deletes a room.
    async fn delete_room(&self, room_id: &str) -> Delivery;
}

/// `encodeURIComponent`: keeps `A-Z a-z 0-9 - _ . ! ~ * ' ( )`, escapes everything else.
pub fn encode_room_id(room_id: &str) -> String {
    let mut out = String::with_capacity(room_id.len() * 3);
    for b in room_id.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The real Liveblocks REST API over reqwest.
#[derive(Debug, Clone)]
pub struct HttpLiveblocks {
    client: reqwest::Client,
    base_url: String,
    secret: String,
}

impl HttpLiveblocks {
    /// `base_url` like `https://api.liveblocks.io`; each call times out after `timeout`.
    pub fn new(base_url: &str, secret: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder().timeout(timeout).build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            secret: secret.to_owned(),
        })
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[tonic::async_trait]
impl LiveblocksApi for HttpLiveblocks {
    async fn delete_room(&self, room_id: &str) -> Delivery {
        let url = format!("{}/v2/rooms/{}", self.base_url, encode_room_id(room_id));
        let resp = match self
            .client
            .delete(&url)
            .bearer_auth(&self.secret)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Delivery::Retry {
                    after: None,
                    reason: format!("request failed: {e}"),
                };
            }
        };
        let status = resp.status().as_u16();
        match status {
            200..=299 => Delivery::Deleted,
            404 => Delivery::AlreadyGone,
            401 | 403 => Delivery::KeyRejected { status },
            429 => Delivery::Retry {
                after: retry_after(resp.headers()),
                reason: "429 rate limited".into(),
            },
            500..=599 | 408 => Delivery::Retry {
                after: retry_after(resp.headers()),
                reason: format!("{status} from Liveblocks"),
            },
            _ => {
                let body = resp.text().await.unwrap_or_default();
                Delivery::Rejected {
                    status,
                    reason: body.chars().take(200).collect(),
                }
            }
        }
    }
}

/// Worker settings.
#[derive(Debug, Clone, Copy)]
pub struct CleanupSettings {
    /// Calls in flight at most (per replica).
    pub concurrency: usize,
    /// How long a leased job belongs to this worker before others may retry it.
    pub lease: Duration,
    /// Idle poll period (a local enqueue wakes the worker at once).
    pub poll: Duration,
    /// First retry delay; doubles per attempt.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Default for CleanupSettings {
    fn default() -> Self {
        Self {
            concurrency: 8,
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// Exponential backoff with "equal jitter": half fixed, half random, capped.
pub fn backoff(settings: &CleanupSettings, attempts: i32) -> Duration {
    let exp = settings
        .backoff_base
        .saturating_mul(1u32 << attempts.clamp(1, 20).saturating_sub(1) as u32)
        .min(settings.backoff_max);
    let half = exp / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

#[derive(QueryableByName)]
struct Leased {
    #[diesel(sql_type = Text)]
    room_id: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

/// Drains the outbox.
#[derive(Clone)]
pub struct CleanupWorker {
    pool: Pool,
    api: Arc<dyn LiveblocksApi>,
    settings: CleanupSettings,
    metrics: Metrics,
    wake: Arc<Notify>,
    key_problem_logged: Arc<AtomicBool>,
}

impl CleanupWorker {
    /// Creates the worker; `wake` is notified after local enqueues.
    pub fn new(
        pool: Pool,
        api: Arc<dyn LiveblocksApi>,
        settings: CleanupSettings,
        metrics: Metrics,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            pool,
            api,
            settings,
            metrics,
            wake,
            key_problem_logged: Arc::new(AtomicBool::new(false)),
        }
    }

    async fn lease(&self, n: usize, token: Uuid) -> anyhow::Result<Vec<Leased>> {
        let mut conn = self.pool.get().await?;
        Ok(prepared(
            "UPDATE liveblocks_cleanup_jobs j
                SET leased_until = now() + make_interval(secs => $2), lease_token = $3, attempts = j.attempts + 1
              WHERE j.room_id IN (
                    SELECT room_id FROM liveblocks_cleanup_jobs
                     WHERE next_attempt_at <= now() AND (leased_until IS NULL OR leased_until < now())
                     ORDER BY next_attempt_at LIMIT $1
                     FOR UPDATE SKIP LOCKED)
          RETURNING j.room_id, j.attempts",
        )
        .bind::<BigInt, _>(n as i64)
        .bind::<Double, _>(self.settings.lease.as_secs_f64())
        .bind::<SqlUuid, _>(token)
        .load(&mut conn)
        .await?)
    }

    async fn finish(
        &self,
        room_id: &str,
        token: Uuid,
        retry_in: Option<Duration>,
        error: Option<String>,
    ) -> anyhow::Result<()> {
        let mut conn = self.pool.get().await?;
        match retry_in {
            None => {
                prepared(
                    "DELETE FROM liveblocks_cleanup_jobs WHERE room_id = $1 AND lease_token = $2",
                )
                .bind::<Text, _>(room_id)
                .bind::<SqlUuid, _>(token)
                .execute(&mut conn)
                .await?;
            }
            Some(delay) => {
                prepared(
                    "UPDATE liveblocks_cleanup_jobs
                        SET leased_until = NULL, lease_token = NULL, last_error = $3,
                            next_attempt_at = now() + make_interval(secs => $4)
                      WHERE room_id = $1 AND lease_token = $2",
                )
                .bind::<Text, _>(room_id)
                .bind::<SqlUuid, _>(token)
                .bind::<Nullable<Text>, _>(error)
                .bind::<Double, _>(delay.as_secs_f64())
                .execute(&mut conn)
                .await?;
            }
        }
        Ok(())
    }

    /// Calls Liveblocks for one leased job, then records the result. `permit` bounds the calls
    /// in flight: it is released when the call returns, so recording this result (a commit)
    /// overlaps the next call instead of holding a slot.
    async fn process(&self, job: Leased, token: Uuid, permit: OwnedSemaphorePermit) {
        let delivery = self.api.delete_room(&job.room_id).await;
        drop(permit);
        let (label, retry_in, error) = match &delivery {
            Delivery::Deleted => ("deleted", None, None),
            Delivery::AlreadyGone => ("already_gone", None, None),
            Delivery::Retry { after, reason } => {
                let delay = after.map_or_else(
                    || backoff(&self.settings, job.attempts),
                    |a| a.min(Duration::from_secs(3600)),
                );
                ("retry", Some(delay), Some(reason.clone()))
            }
            Delivery::KeyRejected { status } => {
                self.metrics.liveblocks_key_rejections.inc();
                if !self.key_problem_logged.swap(true, Ordering::SeqCst) {
                    tracing::error!(
                        status,
                        "Liveblocks rejected LIVEBLOCKS_SECRET_KEY; clean-up jobs stay queued until the key is fixed"
                    );
                }
                (
                    "key_rejected",
                    Some(backoff(&self.settings, job.attempts)),
                    Some(format!("{status}: secret key rejected")),
                )
            }
            Delivery::Rejected { status, reason } => {
                tracing::error!(room_id = %job.room_id, status, %reason, "Liveblocks refused a room deletion; job kept");
                (
                    "rejected",
                    Some(self.settings.backoff_max),
                    Some(format!("{status}: {reason}")),
                )
            }
        };
        if matches!(delivery, Delivery::Deleted | Delivery::AlreadyGone) {
            self.key_problem_logged.store(false, Ordering::SeqCst);
        }
        self.metrics.liveblocks_delivery(label);
        if let Err(e) = self.finish(&job.room_id, token, retry_in, error).await {
            // The lease will expire and the job be retried: nothing is lost.
            tracing::warn!(room_id = %job.room_id, error = %e, "could not record a clean-up result; the job will be retried");
        }
    }

    /// Updates the queue-depth and oldest-job-age gauges.
    pub async fn sample_queue(&self) -> anyhow::Result<(i64, f64)> {
        #[derive(QueryableByName)]
        struct Depth {
            #[diesel(sql_type = BigInt)]
            depth: i64,
            #[diesel(sql_type = Double)]
            oldest: f64,
        }
        let mut conn = self.pool.get().await?;
        let d: Depth = prepared(
            "SELECT count(*) AS depth,
                    COALESCE(EXTRACT(EPOCH FROM now() - min(enqueued_at)), 0)::float8 AS oldest
               FROM liveblocks_cleanup_jobs",
        )
        .get_result(&mut conn)
        .await?;
        self.metrics.liveblocks_queue_depth.set(d.depth);
        self.metrics.liveblocks_oldest_job_seconds.set(d.oldest);
        Ok((d.depth, d.oldest))
    }

    /// Runs until `stop` resolves, then lets in-flight calls finish.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let permits = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut last_sample = tokio::time::Instant::now() - Duration::from_secs(60);
        loop {
            while tasks.try_join_next().is_some() {}
            if last_sample.elapsed() >= Duration::from_secs(5) {
                let _ = self.sample_queue().await;
                last_sample = tokio::time::Instant::now();
            }
            let first = tokio::select! {
                p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = &mut stop => break,
            };
            let want = 1 + permits.available_permits();
            let token = Uuid::now_v7();
            let jobs = match self.lease(want, token).await {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!(error = %e, "leasing clean-up jobs failed");
                    Vec::new()
                }
            };
            if jobs.is_empty() {
                drop(first);
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.poll) => {}
                    _ = self.wake.notified() => {}
                    _ = &mut stop => break,
                }
                continue;
            }
            let mut first = Some(first);
            for job in jobs {
                let permit = match first.take() {
                    Some(p) => p,
                    None => match Arc::clone(&permits).acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let worker = self.clone();
                tasks.spawn(async move { worker.process(job, token, permit).await });
            }
        }
        while tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_are_encoded_like_encode_uri_component() {
        assert_eq!(encode_room_id("doc:0190-ab"), "doc%3A0190-ab");
        assert_eq!(encode_room_id("a b/c"), "a%20b%2Fc");
        assert_eq!(encode_room_id("x!~*'()._"), "x!~*'()._");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let s = CleanupSettings {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            ..Default::default()
        };
        for attempt in 1..30 {
            let d = backoff(&s, attempt);
            let full =
                Duration::from_secs(1u64 << (attempt - 1).min(20)).min(Duration::from_secs(60));
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
    }
}
