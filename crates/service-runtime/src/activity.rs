//! The calls in flight on one connection, so that a connection with none for a while can be
//! closed (grpc-go's `MaxConnectionIdle`; neither tonic nor hyper has an idle limit for HTTP/2).
//!
//! A call counts from the moment its request reaches the server's outermost layer
//! ([`crate::count_calls::CountCalls`]) until its response body ends or is dropped, so a stream still sending its
//! answer, or waiting for its client to read it, is a call. HTTP/2 pings, SETTINGS and window
//! updates never reach the layers, so they are not calls. The connection reads its
//! [`Activity`] from each request's extensions, where tonic puts the connection's
//! [`crate::connect_info::AdmittedInfo`].

use futures::task::AtomicWaker;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use tokio::time::Instant;

/// The calls in flight on one connection, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    calls: AtomicUsize,
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
            idle_since: Mutex::new(Instant::now()),
            connection: AtomicWaker::new(),
        })
    }

    /// A call has begun; it ends when the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Call {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Call(Arc::clone(self))
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
