//! Bounds on reflection calls, which need no token and stream for as long as the client keeps
//! its request open: at most `max_calls` at once per replica (beyond, RESOURCE_EXHAUSTED at
//! once), each ended at its deadline.
//!
//! The permit is held by the response body, so a call counts until hyper drops its answer, not
//! only while the handler runs (tonic's request timeout stops at the response headers). At the
//! deadline the body fails: hyper resets the stream (RST_STREAM CANCEL), which makes h2 drop the
//! data it queued for it, and tonic-reflection's task ends with its channel. A DEADLINE_EXCEEDED
//! trailer would instead wait behind the queued data of a client that never reads.
//!
//! hyper polls the body only while the stream has send window: from a peer that grants none it
//! holds one answer and never asks again, so the body cannot fail. An answer still held
//! [`CUT_AFTER`] past its deadline therefore cuts its connection ([`Link::cut`]), which
//! frees the answer and the permit; a client that reads is never cut.

use crate::connect_info::link_of;
use crate::link::Link;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

/// How long after its deadline an answer hyper still holds cuts its connection.
pub const CUT_AFTER: Duration = Duration::from_secs(1);

/// Reflection calls served at once by one replica, and how long each may last. Clones share the
/// count.
#[derive(Debug, Clone)]
pub struct ReflectionLimit {
    permits: Arc<Semaphore>,
    max_calls: usize,
    deadline: Duration,
}

impl ReflectionLimit {
    /// At most `max_calls` calls at once, each ended `deadline` after it arrived.
    pub fn new(max_calls: usize, deadline: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_calls)),
            max_calls,
            deadline,
        }
    }
}

impl<S> tower::Layer<S> for ReflectionLimit {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            limit: self.clone(),
        }
    }
}

/// A reflection service within a [`ReflectionLimit`].
#[derive(Debug, Clone)]
pub struct Limited<S> {
    inner: S,
    limit: ReflectionLimit,
}

impl<S: NamedService> NamedService for Limited<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Limited<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Ok(permit) = Arc::clone(&self.limit.permits).try_acquire_owned() else {
            let refused = Status::resource_exhausted(format!(
                "this replica already serves {} reflection calls (GRPC_REFLECTION_MAX_CALLS); retry shortly",
                self.limit.max_calls
            ));
            return Box::pin(std::future::ready(Ok(refused.into_http())));
        };
        let deadline = Instant::now() + self.limit.deadline;
        let connection = link_of(request.extensions());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|inner| {
                Body::new(Bounded {
                    inner,
                    deadline: Box::pin(tokio::time::sleep_until(deadline)),
                    _watchdog: connection.map(|c| watchdog(c, deadline + CUT_AFTER)),
                    _permit: permit,
                })
            }))
        })
    }
}

/// Cuts `connection` at `at` unless dropped first.
fn watchdog(connection: Arc<Link>, at: Instant) -> Watchdog {
    Watchdog(tokio::spawn(async move {
        tokio::time::sleep_until(at).await;
        tracing::debug!("a reflection answer is held past its deadline: cutting its connection");
        connection.cut();
    }))
}

/// The watchdog of a held answer, stopped when the answer is dropped.
struct Watchdog(tokio::task::JoinHandle<()>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A reflection answer that holds its call's permit until dropped, fails at its deadline, and
/// cuts its connection if still held [`CUT_AFTER`] later.
struct Bounded {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    _watchdog: Option<Watchdog>,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Bounded {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            let mut ended = Status::cancelled(
                "a reflection call may last GRPC_REFLECTION_CALL_SECS; this one was ended",
            );
            // hyper resets the stream with the h2 reason it finds among the error's sources.
            ended.set_source(Arc::new(h2::Error::from(h2::Reason::CANCEL)));
            return Poll::Ready(Some(Err(ended)));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
