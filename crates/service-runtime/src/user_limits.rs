//! A per-user rate of writes: a user's calls to the methods a policy marks as writes are
//! admitted at `USER_WRITES_PER_MINUTE` (a burst of as many), then answered RESOURCE_EXHAUSTED
//! with when to retry (`retry-after` seconds, `grpc-retry-pushback-ms`). Reads, internal
//! callers and other users are not affected. A tower layer after the auth layer, which put the
//! verified principal into the request.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use token_auth::{MethodPolicy, Principal};
use tonic::Status;

/// Checks between two prunes of users who have not written lately.
const PRUNE_EVERY: u64 = 10_000;

/// The layer: `writes_per_minute` per user on the methods `policy` marks as writes.
#[derive(Clone)]
pub struct UserWriteLimit {
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    policy: Arc<MethodPolicy>,
    checks: Arc<AtomicU64>,
}

impl std::fmt::Debug for UserWriteLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserWriteLimit").finish_non_exhaustive()
    }
}

impl UserWriteLimit {
    /// `writes_per_minute` (at least 1) per user.
    pub fn new(writes_per_minute: u32, policy: MethodPolicy) -> Self {
        let n = NonZeroU32::new(writes_per_minute.max(1)).expect("at least 1");
        Self {
            limiter: Arc::new(RateLimiter::keyed(Quota::per_minute(n).allow_burst(n))),
            policy: Arc::new(policy),
            checks: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The refusal for `req`, if it is a user's write over the rate.
    fn refusal<B>(&self, req: &http::Request<B>) -> Option<Status> {
        if !self.policy.is_write(req.uri().path()) {
            return None;
        }
        let Some(Principal::User(user)) = req.extensions().get::<Principal>() else {
            return None;
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
        }
        let not_until = self.limiter.check_key(&user.user_id).err()?;
        let status = crate::user_quotas::too_many(
            "writes",
            not_until.wait_time_from(DefaultClock::default().now()),
        );
        Some(status)
    }
}

impl<S> tower::Layer<S> for UserWriteLimit {
    type Service = UserWriteLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        UserWriteLimitService {
            inner,
            limit: self.clone(),
        }
    }
}

/// The service produced by [`UserWriteLimit`].
#[derive(Clone, Debug)]
pub struct UserWriteLimitService<S> {
    inner: S,
    limit: UserWriteLimit,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for UserWriteLimitService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self.limit.refusal(&req) {
            Some(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
            None => Box::pin(self.inner.call(req)),
        }
    }
}
