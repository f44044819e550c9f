//! What a response can learn about, and do to, the connection that carries it.
//!
//! On HTTP/1.1 hyper copies a response body into its write buffer (up to about 400 KiB) as fast
//! as the body yields, whether or not the socket takes anything, and it writes the body's end
//! into that buffer too: a body that ended may still be held, unsent, for as long as the
//! connection lives. A [`Link`] tells a response when everything written so far went out
//! ([`Link::flushes`]: hyper flushes its socket only once its buffer is empty), and lets it
//! close the connection ([`Link::cut`]) when its client stopped reading, so what hyper holds
//! for it is freed. A cut ends every call the connection carries: a watch cuts only HTTP/1.1
//! connections (one call at a time); a reflection answer cuts an HTTP/2 one only once it is
//! held past its deadline, a peer granting no window, which nothing else can end.
//!
//! Each [`crate::connection::Admitted`] connection has one; a request finds its own with
//! [`crate::connect_info::link_of`].

use futures::task::AtomicWaker;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Waker;
use tokio::sync::Notify;

/// One connection's flush count and kill switch.
#[derive(Debug, Default)]
pub struct Link {
    flushes: AtomicU64,
    flushed: Notify,
    cut: AtomicBool,
    /// The connection's task, woken when it is cut.
    connection: AtomicWaker,
}

impl Link {
    /// How many times the connection's writer has found its buffer empty so far: a body part
    /// handed over before this count grew has gone out to the socket.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    /// Resolves once [`Link::flushes`] passes `seen`.
    pub async fn flushed_after(&self, seen: u64) {
        loop {
            let flushed = self.flushed.notified();
            if self.flushes() > seen {
                return;
            }
            flushed.await;
        }
    }

    /// Closes the connection: its next read or write fails, so hyper drops it and everything
    /// it holds.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.connection.wake();
    }

    /// Whether the connection was cut; `waker` hears when it is.
    pub(crate) fn is_cut(&self, waker: &Waker) -> bool {
        self.connection.register(waker);
        self.cut.load(Ordering::SeqCst)
    }

    /// The writer found its buffer empty.
    pub(crate) fn flushed(&self) {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.flushed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_flush_is_heard_and_a_cut_is_seen() {
        let link = Arc::new(Link::default());
        let seen = link.flushes();
        let waiting = tokio::spawn({
            let link = Arc::clone(&link);
            async move { link.flushed_after(seen).await }
        });
        tokio::task::yield_now().await;
        link.flushed();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("a flush is heard")
            .unwrap();

        let waker = futures::task::noop_waker();
        assert!(!link.is_cut(&waker));
        link.cut();
        assert!(link.is_cut(&waker));
    }
}
