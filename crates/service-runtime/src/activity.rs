//! The calls in flight on one connection, so that a connection with none for a while can be
//! closed (grpc-go's `MaxConnectionIdle`; neither tonic nor hyper has an idle limit for HTTP/2).
//!
//! A call counts from the moment its request reaches the server's outermost layer
//! ([`CountCalls`]) until its response body ends or is dropped, so a stream still sending its
//! answer, or waiting for its client to read it, is a call. HTTP/2 pings, SETTINGS and window
//! updates never reach the layers, so they are not calls. The connection reads its
//! [`Activity`] from each request's extensions, where tonic puts the connection's
//! [`crate::connection::AdmittedInfo`].

use futures::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::time::Instant;

/// The calls in flight on one connection, since when it has had none, and whether a call asked
/// for the connection to be cut.
#[derive(Debug)]
pub struct Activity {
    calls: AtomicUsize,
    cut: AtomicBool,
    /// When the count last fell to 0 (or the connection was accepted).
    idle_since: Mutex<Instant>,
    /// The connection's task, woken when the count falls to 0 so it arms its idle timer.
    connection: AtomicWaker,
}

impl Activity {
    /// No call yet, idle from now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            cut: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            connection: AtomicWaker::new(),
        })
    }

    /// A call has begun; it ends when the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Call {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Call(Arc::clone(self))
    }

    /// Asks the connection to cut itself off: for a call whose answer hyper holds and no
    /// longer polls (a peer that grants no window), which nothing else can end.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.connection.wake();
    }

    /// Whether [`Activity::cut`] was called; `waker` hears of it.
    pub fn is_cut(&self, waker: &Waker) -> bool {
        self.connection.register(waker);
        self.cut.load(Ordering::SeqCst)
    }

    /// Since when no call has been in flight, or `None` while one is; `waker` hears when the
    /// last call in flight ends.
    pub fn idle_since(&self, waker: &Waker) -> Option<Instant> {
        self.connection.register(waker);
        if self.calls.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(*self.idle_since.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One call in flight; its end (the drop) may leave the connection idle.
#[derive(Debug)]
pub struct Call(Arc<Activity>);

impl Drop for Call {
    fn drop(&mut self) {
        let mut since = self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        if self.0.calls.fetch_sub(1, Ordering::SeqCst) == 1 {
            *since = Instant::now();
            drop(since);
            self.0.connection.wake();
        }
    }
}

/// The layer that counts every call on its connection's [`Activity`]; outermost, so that every
/// call counts whatever the inner layers answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountCalls;

impl<S> tower::Layer<S> for CountCalls {
    type Service = Counting<S>;

    fn layer(&self, inner: S) -> Counting<S> {
        Counting(inner)
    }
}

/// A service whose calls count on their connection's [`Activity`].
#[derive(Debug, Clone)]
pub struct Counting<S>(S);

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Counting<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: http_body::Body + Send + 'static,
{
    type Response = http::Response<Counted<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let info = request
            .extensions()
            .get::<crate::connection::AdmittedInfo>()
            .cloned();
        let call = info.map(|info| {
            // tonic's `Request::remote_addr` looks for the TCP information itself.
            request.extensions_mut().insert(info.tcp);
            info.activity.begin()
        });
        let answer = self.0.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|inner| Counted {
                inner: Box::pin(inner),
                _call: call,
            }))
        })
    }
}

/// A response body that keeps its call in flight until it is dropped.
#[derive(Debug)]
pub struct Counted<B> {
    inner: Pin<Box<B>>,
    _call: Option<Call>,
}

impl<B: http_body::Body> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
