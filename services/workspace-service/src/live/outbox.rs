//! One watch stream's queue of frames, between its task (which fills it) and the HTTP response
//! body (which the HTTP layer drains as fast as the client reads). The queue is counted in
//! bytes and each frame carries when it was queued, so its task can tell a client that does not
//! read (a frame unread for more than [`UNREAD_GRACE`]) from one that reads as fast as frames
//! come, and end the first; ending clears the queue at once, so a stream that ended holds no
//! events while its client stays connected. The response then carries the final status as gRPC
//! trailers; when the client is behind, the stream is cut instead (the trailers could not reach
//! it): on HTTP/2 the body fails, so hyper resets the stream (RST_STREAM ENHANCE_YOUR_CALM,
//! which gRPC clients read as RESOURCE_EXHAUSTED) and h2 drops what it queued; on HTTP/1.1,
//! where hyper stops polling a body whose bytes it cannot write, the connection is closed.
//!
//! What the response holds (the user's place among their watches, the replica's stream permit)
//! is given back only once both the task and the body are gone, so those caps count responses
//! the HTTP layer still holds, not running tasks.
//!
//! What "read" means depends on the transport. HTTP/2: hyper asks for the next frame only once
//! the previous one fitted the client's window. HTTP/1.1: hyper copies frames into its write
//! buffer while the socket takes nothing; a frame is read once the connection's [`Link`] has
//! flushed after hyper took it.

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame as BodyFrame;
use service_runtime::link::Link;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::Status;

/// How long a frame may stay unread (queued, or taken by the HTTP layer and not yet out)
/// before its client counts as behind.
pub const UNREAD_GRACE: Duration = Duration::from_secs(1);

/// What carries the response, as far as telling whether its client reads.
#[derive(Debug, Clone)]
pub enum Transport {
    Http2,
    /// HTTP/1.1 (gRPC-Web): this connection's flushes and kill switch.
    Http1(Arc<Link>),
}

#[derive(Default)]
struct State {
    /// Frames and when each was queued.
    queue: VecDeque<(Bytes, Instant)>,
    bytes: usize,
    /// The oldest frame the HTTP layer took that the client may not have read: when it was
    /// queued, and the link's flush count when it was taken (HTTP/1.1).
    taken: Option<(Instant, u64)>,
    /// The final status, once the stream ended.
    trailers: Option<HeaderMap>,
    /// Since when the end (trailers or a cut) has been the next thing to send.
    end_since: Option<Instant>,
    /// The stream was cut: the body fails rather than end.
    cut: bool,
    /// The body gave its end (trailers, or its failure).
    done: bool,
    /// The response body is gone (the client left, or the HTTP layer finished with it).
    gone: bool,
    body_waker: Option<Waker>,
}

struct Shared {
    state: Mutex<State>,
    transport: Transport,
    /// The body took a frame.
    taken: Notify,
    /// The body was dropped.
    dropped: Notify,
    /// Given back when both sides are gone.
    _held: Box<dyn Send + Sync>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The link's flush count now (0 on HTTP/2).
    fn flushes(&self) -> u64 {
        match &self.transport {
            Transport::Http2 => 0,
            Transport::Http1(link) => link.flushes(),
        }
    }

    /// Since when the oldest frame (or the end) the client has not read has waited.
    fn unread_since(&self, s: &State) -> Option<Instant> {
        let taken = s
            .taken
            .filter(|(_, seen)| match &self.transport {
                Transport::Http2 => true,
                Transport::Http1(link) => link.flushes() <= *seen,
            })
            .map(|(t, _)| t);
        let end = if s.done { None } else { s.end_since };
        [taken, s.queue.front().map(|(_, t)| *t), end]
            .into_iter()
            .flatten()
            .min()
    }

    /// Records that the HTTP layer took something queued at `queued`.
    fn take(&self, s: &mut State, queued: Instant) {
        s.taken = match (&self.transport, s.taken) {
            // HTTP/1.1: the oldest not flushed since stays the oldest.
            (Transport::Http1(link), Some(old)) if link.flushes() <= old.1 => Some(old),
            _ => Some((queued, self.flushes())),
        };
    }
}

/// The task's side.
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The response body's side: yields the queued frames, then the trailers (or fails, once cut).
pub struct Body {
    shared: Arc<Shared>,
    done: bool,
}

/// A new queue and its response body, carried by `transport`; `held` is given back once both
/// are gone.
pub fn pair(transport: Transport, held: impl Send + Sync + 'static) -> (Outbox, Body) {
    let shared = Arc::new(Shared {
        state: Mutex::default(),
        transport,
        taken: Notify::new(),
        dropped: Notify::new(),
        _held: Box::new(held),
    });
    (
        Outbox {
            shared: Arc::clone(&shared),
        },
        Body {
            shared,
            done: false,
        },
    )
}

impl Outbox {
    /// Queues `frame` for the client.
    pub fn push(&self, frame: Bytes) {
        let waker = {
            let mut s = self.shared.lock();
            if s.gone || s.cut {
                return;
            }
            s.bytes += frame.len();
            s.queue.push_back((frame, Instant::now()));
            s.body_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Bytes queued and not yet taken by the HTTP layer.
    pub fn queued(&self) -> usize {
        self.shared.lock().bytes
    }

    /// When the client counts as behind if it reads nothing more: [`UNREAD_GRACE`] after the
    /// oldest frame it has not read was queued (`None`: it has read everything).
    pub fn behind_at(&self) -> Option<Instant> {
        let s = self.shared.lock();
        self.shared.unread_since(&s).map(|t| t + UNREAD_GRACE)
    }

    /// Whether the client is behind at `now`: more than `budget` bytes wait in the queue, or a
    /// frame has been unread (queued, or taken by the HTTP layer and not yet out) for more
    /// than [`UNREAD_GRACE`]. A client that reads as frames come is not, even right after a
    /// push.
    pub fn behind(&self, budget: usize, now: Instant) -> bool {
        self.queued() > budget || self.behind_at().is_some_and(|at| at <= now)
    }

    /// Resolves once no more than `bytes` are queued.
    pub async fn drained_to(&self, bytes: usize) {
        loop {
            let taken = self.shared.taken.notified();
            if self.queued() <= bytes {
                return;
            }
            taken.await;
        }
    }

    /// Resolves once the client has gone (its response body dropped).
    pub async fn closed(&self) {
        loop {
            let dropped = self.shared.dropped.notified();
            if self.shared.lock().gone {
                return;
            }
            dropped.await;
        }
    }

    /// Ends the stream with `status` now: what is still queued is dropped (the client resumes
    /// with the last token it received).
    pub fn end_now(&self, status: &Status) {
        let dropped = self.end(status, true);
        drop(dropped);
    }

    /// Ends the stream with `status` after what is queued.
    pub fn end_after(&self, status: &Status) {
        self.end(status, false);
    }

    fn end(&self, status: &Status, clear: bool) -> VecDeque<(Bytes, Instant)> {
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            Status::internal("internal error")
                .add_header(&mut trailers)
                .expect("a fixed status encodes");
        }
        let (dropped, waker) = {
            let mut s = self.shared.lock();
            let dropped = if clear {
                s.bytes = 0;
                std::mem::take(&mut s.queue)
            } else {
                VecDeque::new()
            };
            if s.queue.is_empty() {
                s.end_since = Some(Instant::now());
            }
            s.trailers = Some(trailers);
            (dropped, s.body_waker.take())
        };
        if let Some(w) = waker {
            w.wake();
        }
        dropped
    }

    /// Ends the stream without a status, dropping what is queued: the body fails when next
    /// polled (HTTP/2: hyper resets the stream), and an HTTP/1.1 connection is closed at once.
    pub fn cut(&self) {
        let (dropped, waker) = {
            let mut s = self.shared.lock();
            s.bytes = 0;
            s.trailers = None;
            s.cut = true;
            s.end_since.get_or_insert_with(Instant::now);
            (std::mem::take(&mut s.queue), s.body_waker.take())
        };
        drop(dropped);
        if let Some(w) = waker {
            w.wake();
        }
        if let Transport::Http1(link) = &self.shared.transport {
            link.cut();
        }
    }

    /// Resolves once the stream's end has reached its client (HTTP/2: hyper took it; HTTP/1.1:
    /// and flushed it), or the client has gone; a client that stops reading before that
    /// (something unread, the end included, and nothing taken or flushed for
    /// [`UNREAD_GRACE`]) is [cut](Outbox::cut). On HTTP/2 a client still reading a backlog,
    /// however slowly, gets the end; on HTTP/1.1 progress is a flush of hyper's whole write
    /// buffer, so a client more than a second from emptying it is cut and resumes with its last
    /// token. Returns whether it was cut.
    pub async fn settle(&self) -> bool {
        // The client's last sign of reading: the end, then each frame taken or flushed since.
        let mut progress = Instant::now();
        loop {
            let taken = self.shared.taken.notified();
            let dropped = self.shared.dropped.notified();
            let (seen, behind_at) = {
                let s = self.shared.lock();
                if s.cut {
                    return false;
                }
                let flushed = match (&self.shared.transport, s.taken) {
                    (Transport::Http1(link), Some((_, seen))) if link.flushes() <= seen => {
                        Some(seen)
                    }
                    _ => None,
                };
                if (s.done && flushed.is_none()) || (s.gone && !s.done) {
                    return false;
                }
                let at = self
                    .shared
                    .unread_since(&s)
                    .map(|t| t.max(progress) + UNREAD_GRACE);
                (flushed, at)
            };
            if behind_at.is_some_and(|at| at <= Instant::now()) {
                self.cut();
                return true;
            }
            let flushed = async {
                match (&self.shared.transport, seen) {
                    (Transport::Http1(link), Some(seen)) => link.flushed_after(seen).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = taken => progress = Instant::now(),
                _ = dropped => {}
                _ = flushed => progress = Instant::now(),
                _ = sleep_until(behind_at) => {}
            }
        }
    }
}

/// Resolves at `at`; never when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Drop for Outbox {
    /// A task that ends without a status (the client went away) leaves nothing queued.
    fn drop(&mut self) {
        let dropped = {
            let mut s = self.shared.lock();
            if s.trailers.is_none() {
                s.bytes = 0;
                std::mem::take(&mut s.queue)
            } else {
                VecDeque::new()
            }
        };
        drop(dropped);
    }
}

/// What a cut body fails with: hyper resets an HTTP/2 stream with the reason it finds in it.
fn cut_error() -> h2::Error {
    h2::Error::from(h2::Reason::ENHANCE_YOUR_CALM)
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let shared = Arc::clone(&self.shared);
        let mut s = shared.lock();
        if s.cut {
            s.done = true;
            drop(s);
            self.done = true;
            return Poll::Ready(Some(Err(cut_error())));
        }
        if let Some((frame, queued)) = s.queue.pop_front() {
            s.bytes -= frame.len();
            shared.take(&mut s, queued);
            if s.queue.is_empty() && s.trailers.is_some() {
                s.end_since = Some(Instant::now());
            }
            drop(s);
            shared.taken.notify_one();
            return Poll::Ready(Some(Ok(BodyFrame::data(frame))));
        }
        if let Some(trailers) = s.trailers.take() {
            let since = s.end_since.unwrap_or_else(Instant::now);
            shared.take(&mut s, since);
            s.done = true;
            drop(s);
            self.done = true;
            shared.taken.notify_one();
            return Poll::Ready(Some(Ok(BodyFrame::trailers(trailers))));
        }
        if matches!(shared.transport, Transport::Http2) {
            // hyper asks again: what it took fitted the client's window.
            s.taken = None;
        }
        s.body_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let dropped = {
            let mut s = self.shared.lock();
            s.gone = true;
            s.bytes = 0;
            std::mem::take(&mut s.queue)
        };
        drop(dropped);
        self.shared.dropped.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn frames_then_the_status_and_ending_now_drops_what_is_queued() {
        let (outbox, mut body) = pair(Transport::Http2, ());
        outbox.push(Bytes::from_static(b"one"));
        outbox.push(Bytes::from_static(b"two"));
        assert_eq!(outbox.queued(), 6);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"one"));
        outbox.drained_to(3).await;
        outbox.end_now(&Status::resource_exhausted("behind"));
        assert_eq!(outbox.queued(), 0, "nothing stays queued after the end");
        let end = body.frame().await.unwrap().unwrap();
        let trailers = end.into_trailers().unwrap();
        let status = Status::from_header_map(&trailers).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn a_client_is_behind_once_a_frame_stays_unread_past_the_grace_or_the_budget() {
        let (outbox, mut body) = pair(Transport::Http2, ());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let pushed = Instant::now();
        outbox.push(Bytes::from_static(b"one"));
        let late = Instant::now() + UNREAD_GRACE + Duration::from_millis(1);
        assert!(!outbox.behind(1024, pushed), "just queued");
        assert!(outbox.behind(2, pushed), "more than its budget unread");
        assert!(outbox.behind(1024, late), "queued past the grace");
        let polled = Pin::new(&mut body).poll_frame(&mut cx);
        assert!(matches!(polled, Poll::Ready(Some(Ok(_)))));
        assert!(
            outbox.behind(1024, late),
            "the HTTP/2 layer holds it and has not asked again"
        );
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert!(!outbox.behind(1024, late), "waiting for the next frame");
        assert_eq!(outbox.behind_at(), None);
        let before = Instant::now();
        outbox.push(Bytes::from_static(b"two"));
        let at = outbox.behind_at().expect("one unread");
        assert!(at >= before + UNREAD_GRACE && at <= Instant::now() + UNREAD_GRACE);
    }

    #[tokio::test]
    async fn ending_after_the_queue_delivers_it_first_and_a_dropped_body_is_seen() {
        let (outbox, mut body) = pair(Transport::Http2, ());
        outbox.push(Bytes::from_static(b"last"));
        outbox.end_after(&Status::permission_denied("deleted"));
        let data = body.frame().await.unwrap().unwrap();
        assert_eq!(data.into_data().unwrap(), Bytes::from_static(b"last"));
        assert!(body.frame().await.unwrap().unwrap().is_trailers());
        drop(body);
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.closed())
            .await
            .expect("the task learns that the client left");
    }

    #[tokio::test]
    async fn a_client_behind_at_the_end_is_cut_and_the_body_fails_rather_than_end() {
        let (outbox, mut body) = pair(Transport::Http2, ());
        outbox.push(Bytes::from_static(b"one"));
        outbox.push(Bytes::from_static(b"two"));
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        // The HTTP layer holds "one" for want of window: at the end the client is behind.
        outbox.end_now(&Status::unauthenticated("expired"));
        let settled = tokio::spawn(async move { (outbox.settle().await, outbox) });
        tokio::time::sleep(UNREAD_GRACE * 2).await;
        let (cut, outbox) = settled.await.unwrap();
        assert!(cut, "the end could not reach the client");
        assert_eq!(outbox.queued(), 0);
        let failed = body.frame().await.unwrap().unwrap_err();
        assert_eq!(failed.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM));
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn an_end_the_client_takes_settles_and_what_is_held_goes_with_both_sides() {
        let held = Arc::new(());
        let (outbox, mut body) = pair(Transport::Http2, Arc::clone(&held));
        outbox.push(Bytes::from_static(b"one"));
        assert!(body.frame().await.unwrap().unwrap().is_data());
        outbox.end_now(&Status::unauthenticated("expired"));
        let settled = tokio::spawn(async move { (outbox.settle().await, outbox) });
        assert!(body.frame().await.unwrap().unwrap().is_trailers());
        let (cut, outbox) = settled.await.unwrap();
        assert!(!cut);
        drop(outbox);
        assert_eq!(Arc::strong_count(&held), 2, "the body still holds it");
        drop(body);
        assert_eq!(Arc::strong_count(&held), 1);
    }
}
