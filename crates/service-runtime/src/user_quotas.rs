//! Per-user quotas a service applies to its own methods: a rate per minute ([`UserRate`]),
//! calls in flight at once ([`UserInFlight`], held until the answer has been sent; of which a
//! few run their handlers at once, the others waiting in line), and the
//! size of a request body ([`capped_request`]). Each refusal is RESOURCE_EXHAUSTED with a
//! message that says what to do. They count per replica.

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body::{Body, Frame, SizeHint};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Checks between two prunes of users who have not called lately.
const PRUNE_EVERY: u64 = 10_000;

/// RESOURCE_EXHAUSTED for too many `what` (e.g. "writes"), with when to retry: the message,
/// `retry-after` (seconds) and `grpc-retry-pushback-ms`.
pub fn too_many(what: &str, wait: Duration) -> Status {
    let ms = wait.as_millis().max(1) as u64;
    crate::error::with_retry_advice(
        Status::resource_exhausted(format!("too many {what} by this user: retry in {ms} ms")),
        wait,
    )
}

/// A rate per user: `per_minute` calls, as a burst of as many.
pub struct UserRate {
    limiter: DefaultKeyedRateLimiter<String>,
    what: &'static str,
    checks: AtomicU64,
}

impl std::fmt::Debug for UserRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRate")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl UserRate {
    /// `per_minute` (at least 1) calls of `what` (as the refusal names them) per user.
    pub fn per_minute(per_minute: u32, what: &'static str) -> Self {
        let n = NonZeroU32::new(per_minute.max(1)).expect("at least 1");
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(n).allow_burst(n)),
            what,
            checks: AtomicU64::new(0),
        }
    }

    /// Counts a call of `user`; refused when over the rate.
    #[allow(clippy::ptr_arg)] // the limiter's keys are Strings: no copy made per call
    pub fn check(&self, user: &String) -> Result<(), Status> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
        }
        match self.limiter.check_key(user) {
            Ok(()) => Ok(()),
            Err(not_until) => Err(too_many(
                self.what,
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
        }
    }
}

/// A user's calls in flight, and the turns their handlers take ([`InFlight::turn`]).
type Calls = Arc<Mutex<HashMap<String, (usize, Arc<Semaphore>)>>>;

/// Calls in flight per user, of which at most `running` run their handler at once.
#[derive(Debug, Clone)]
pub struct UserInFlight {
    max: usize,
    running: usize,
    setting: &'static str,
    counts: Calls,
}

/// One call in flight; ends when dropped.
#[derive(Debug)]
pub struct InFlight {
    user: String,
    /// Taken when the call ends, before its entry is judged idle.
    turns: Option<Arc<Semaphore>>,
    counts: Calls,
}

impl InFlight {
    /// Waits for one of the user's turns to run a handler (which may hold a database
    /// connection): held until the handler has answered, so one user's calls take at most
    /// `running` of a replica's connections, and their other calls in flight wait in line.
    pub async fn turn(&self) -> Option<Turn> {
        let permit = Arc::clone(self.turns.as_ref()?)
            .acquire_owned()
            .await
            .ok()?;
        Some(Turn {
            _held: Arc::new(HeldTurn {
                permit: Some(permit),
                user: self.user.clone(),
                counts: Arc::clone(&self.counts),
            }),
        })
    }
}

/// One of a user's turns ([`InFlight::turn`]), in the request's extensions: work a handler
/// goes on with after its caller has gone (a task it spawns) keeps a clone, so the turn ends
/// when that work does, not when the client gives up.
#[derive(Debug, Clone)]
pub struct Turn {
    _held: Arc<HeldTurn>,
}

#[derive(Debug)]
struct HeldTurn {
    permit: Option<OwnedSemaphorePermit>,
    user: String,
    counts: Calls,
}

/// Forgets `user`'s entry once nothing holds its turns: no call in flight and no turn held
/// (each holds a clone of the semaphore).
fn forget_if_idle(counts: &Calls, user: &str) {
    let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((n, turns)) = counts.get(user)
        && *n == 0
        && Arc::strong_count(turns) == 1
    {
        counts.remove(user);
    }
}

impl Drop for HeldTurn {
    fn drop(&mut self) {
        drop(self.permit.take());
        forget_if_idle(&self.counts, &self.user);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        drop(self.turns.take());
        {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((n, _)) = counts.get_mut(&self.user) {
                *n -= 1;
            }
        }
        forget_if_idle(&self.counts, &self.user);
    }
}

impl UserInFlight {
    /// At most `max` calls of one user at once, `running` of them in their handlers;
    /// `setting` names the limit in the refusal.
    pub fn new(max: usize, running: usize, setting: &'static str) -> Self {
        Self {
            max: max.max(1),
            running: running.max(1),
            setting,
            counts: Arc::default(),
        }
    }

    /// Starts a call of `user`; refused when they have `max` in flight.
    pub fn enter(&self, user: &str) -> Result<InFlight, Status> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (n, turns) = counts
            .entry(user.to_owned())
            .or_insert_with(|| (0, Arc::new(Semaphore::new(self.running))));
        if *n >= self.max {
            return Err(Status::resource_exhausted(format!(
                "this user has {} calls in flight ({}): wait for an answer before the next call",
                self.max, self.setting
            )));
        }
        *n += 1;
        Ok(InFlight {
            user: user.to_owned(),
            turns: Some(Arc::clone(turns)),
            counts: Arc::clone(&self.counts),
        })
    }
}

/// A response body that keeps `G` (an [`InFlight`], say) until the answer has been sent: its
/// data goes out in pieces of at most [`PIECE`] bytes, and HTTP/2 asks for the next piece only
/// once the client's window has room, so `G` is held while a client that does not read still
/// has most of the answer to take (without the pieces, the HTTP/2 layer takes a whole answer
/// at once and buffers it).
#[derive(Debug)]
pub struct Holding<B, G> {
    inner: B,
    pending: Bytes,
    held: Option<G>,
}

/// The largest piece of an answer handed to HTTP/2 at once.
pub const PIECE: usize = 16 * 1024;

impl<B, G> Holding<B, G> {
    /// `inner`, holding `held`.
    pub fn new(inner: B, held: G) -> Self {
        Self {
            inner,
            pending: Bytes::new(),
            held: Some(held),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin, G: Unpin> Body for Holding<B, G> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(PIECE);
                let piece = self.pending.split_to(n);
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            let polled = Pin::new(&mut self.inner).poll_frame(cx);
            match polled {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.pending = data,
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                Poll::Ready(None) => {
                    self.held = None;
                    return Poll::Ready(None);
                }
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        hint.set_lower(hint.lower() + pending);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

/// A request body cut off after `max` bytes: reading past them fails with RESOURCE_EXHAUSTED
/// (a gRPC server answers the call with it), so an oversized request is never held whole.
#[derive(Debug)]
pub struct Capped<B> {
    inner: B,
    left: usize,
    max: usize,
}

/// `req` with its body capped at `max` bytes.
pub fn capped_request<B>(req: http::Request<B>, max: usize) -> http::Request<tonic::body::Body>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    req.map(|inner| {
        tonic::body::Body::new(Capped {
            inner,
            left: max,
            max,
        })
    })
}

impl<B> Body for Capped<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if data.len() > self.left {
                        let max = self.max;
                        return Poll::Ready(Some(Err(Box::new(Status::resource_exhausted(
                            format!("the request is larger than {max} bytes: send less per call"),
                        )))));
                    }
                    self.left -= data.len();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn a_users_rate_and_calls_in_flight_are_theirs_alone() {
        let rate = UserRate::per_minute(2, "reads");
        let (a, b) = ("user_a".to_owned(), "user_b".to_owned());
        rate.check(&a).unwrap();
        rate.check(&a).unwrap();
        let refused = rate.check(&a).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("too many reads"), "{refused:?}");
        assert!(refused.metadata().get("retry-after").is_some());
        rate.check(&b).unwrap();

        let in_flight = UserInFlight::new(2, 2, "USER_CALLS_IN_FLIGHT");
        let one = in_flight.enter("user_a").unwrap();
        let _two = in_flight.enter("user_a").unwrap();
        let refused = in_flight.enter("user_a").unwrap_err();
        assert!(
            refused.message().contains("USER_CALLS_IN_FLIGHT"),
            "{refused:?}"
        );
        in_flight.enter("user_b").unwrap();
        drop(one);
        in_flight.enter("user_a").unwrap();
    }

    #[tokio::test]
    async fn a_users_calls_take_turns_others_do_not_wait() {
        let in_flight = UserInFlight::new(4, 1, "USER_CALLS_IN_FLIGHT");
        let (first, second) = (
            in_flight.enter("user_a").unwrap(),
            in_flight.enter("user_a").unwrap(),
        );
        let turn = first.turn().await.expect("a turn");
        let waiting = tokio::time::timeout(Duration::from_millis(100), second.turn()).await;
        assert!(waiting.is_err(), "a second turn while the first runs");
        let other = in_flight.enter("user_b").unwrap();
        assert!(
            other.turn().await.is_some(),
            "another user waits for no one"
        );
        drop(turn);
        assert!(second.turn().await.is_some(), "the turn passes on");
    }

    #[tokio::test]
    async fn a_turn_outliving_its_call_still_counts_and_is_forgotten_after() {
        let in_flight = UserInFlight::new(4, 1, "USER_CALLS_IN_FLIGHT");
        let call = in_flight.enter("user_a").unwrap();
        let turn = call.turn().await.expect("a turn");
        // The client gave up; the handler's work goes on with the turn.
        drop(call);
        let next = in_flight.enter("user_a").unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(100), next.turn()).await;
        assert!(waiting.is_err(), "a turn while the abandoned work runs");
        drop(turn);
        let again = next.turn().await.expect("the turn passes on");
        drop((again, next));
        let held = in_flight.counts.lock().unwrap().len();
        assert_eq!(held, 0, "nothing kept of a user with no calls and no turns");
    }

    #[tokio::test]
    async fn a_held_answer_goes_out_in_pieces() {
        let answer = http_body_util::Full::new(Bytes::from(vec![7u8; 40_000]));
        let mut body = Holding::new(answer, ());
        let mut sizes = Vec::new();
        while let Some(frame) = body.frame().await {
            sizes.push(frame.unwrap().into_data().unwrap().len());
        }
        assert_eq!(sizes, [PIECE, PIECE, 40_000 - 2 * PIECE]);
    }

    #[tokio::test]
    async fn a_capped_body_fails_past_its_bytes() {
        let small = capped_request(
            http::Request::new(http_body_util::Full::new(Bytes::from_static(b"12345"))),
            5,
        );
        assert_eq!(
            small.into_body().collect().await.unwrap().to_bytes(),
            Bytes::from_static(b"12345")
        );
        let large = capped_request(
            http::Request::new(http_body_util::Full::new(Bytes::from_static(b"123456"))),
            5,
        );
        let status = large.into_body().collect().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    }
}
