//! One watch stream's queue of frames, between its task (which fills it) and the HTTP response
//! body (which HTTP/2 drains as fast as the client grants window). The queue is counted in
//! bytes and each frame carries when it was queued, so its task can tell a client that does not
//! read (a frame unread for more than [`UNREAD_GRACE`]) from one that reads as fast as frames
//! come, and end the first; ending clears the queue at once,
//! so a stream that ended holds no events while its client stays connected. The response
//! then carries the final status as gRPC trailers.

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame as BodyFrame;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::Status;

/// How long a frame may stay unread (queued, or held by the HTTP/2 layer for want of window)
/// before its client counts as behind.
pub const UNREAD_GRACE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    /// Frames and when each was queued.
    queue: VecDeque<(Bytes, Instant)>,
    bytes: usize,
    /// When the frame the HTTP/2 layer took last and has not asked past was queued (`None`:
    /// it waits for the next frame).
    held_since: Option<Instant>,
    /// The final status, once the stream ended.
    trailers: Option<HeaderMap>,
    /// The response body is gone (the client left).
    gone: bool,
    body_waker: Option<Waker>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// The body took a frame.
    taken: Notify,
    /// The body was dropped.
    dropped: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The task's side.
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The response body's side: yields the queued frames, then the trailers.
pub struct Body {
    shared: Arc<Shared>,
    done: bool,
}

/// A new queue and its response body.
pub fn pair() -> (Outbox, Body) {
    let shared = Arc::new(Shared::default());
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
            if s.gone {
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

    /// Bytes queued and not yet taken by the HTTP/2 layer.
    pub fn queued(&self) -> usize {
        self.shared.lock().bytes
    }

    /// When the client counts as behind if it reads nothing more: [`UNREAD_GRACE`] after the
    /// oldest frame it has not read was queued (`None`: it has read everything).
    pub fn behind_at(&self) -> Option<Instant> {
        let s = self.shared.lock();
        let oldest = match (s.held_since, s.queue.front()) {
            (Some(held), Some((_, queued))) => Some(held.min(*queued)),
            (held, queued) => held.or(queued.map(|(_, t)| *t)),
        };
        oldest.map(|t| t + UNREAD_GRACE)
    }

    /// Whether the client is behind at `now`: more than `budget` bytes wait in the queue, or a
    /// frame has been unread (queued, or held by the HTTP/2 layer for want of window) for more
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
                s.held_since = None;
                std::mem::take(&mut s.queue)
            } else {
                VecDeque::new()
            };
            s.trailers = Some(trailers);
            (dropped, s.body_waker.take())
        };
        if let Some(w) = waker {
            w.wake();
        }
        dropped
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

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut s = self.shared.lock();
        if let Some((frame, queued)) = s.queue.pop_front() {
            s.bytes -= frame.len();
            s.held_since = Some(queued);
            drop(s);
            self.shared.taken.notify_one();
            return Poll::Ready(Some(Ok(BodyFrame::data(frame))));
        }
        if let Some(trailers) = s.trailers.take() {
            drop(s);
            self.done = true;
            return Poll::Ready(Some(Ok(BodyFrame::trailers(trailers))));
        }
        s.held_since = None;
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
        let (outbox, mut body) = pair();
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
        let (outbox, mut body) = pair();
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
        let (outbox, mut body) = pair();
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
}
