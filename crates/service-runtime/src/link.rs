//! What a response can learn about, and do to, the HTTP/1.1 connection that carries it.
//!
//! On HTTP/1.1 hyper copies a response body into its write buffer (up to about 400 KiB) as fast
//! as the body yields, whether or not the socket takes anything, and it writes the body's end
//! into that buffer too: a body that ended may still be held, unsent, for as long as the
//! connection lives. A [`Link`] tells a response when everything written so far went out
//! ([`Link::flushes`]: hyper flushes its socket only once its buffer is empty), and lets it
//! close the connection ([`Link::cut`]) when its client stopped reading, so what hyper holds
//! for it is freed. Never cut an HTTP/2 connection: it carries other calls.
//!
//! Each [`crate::connection::Admitted`] connection has one, registered under its two addresses;
//! a request finds its own through the `TcpConnectInfo` that tonic puts in its extensions
//! ([`Link::of`]).

use futures::task::AtomicWaker;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::task::Waker;
use tokio::sync::Notify;
use tonic::transport::server::TcpConnectInfo;

/// The open connections' links, by (local, peer) address.
type Registry = Mutex<HashMap<(SocketAddr, SocketAddr), Weak<Link>>>;

static LINKS: LazyLock<Registry> = LazyLock::new(Registry::default);

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
    /// The link of the connection that carried the request whose extensions are `extensions`.
    pub fn of(extensions: &http::Extensions) -> Option<Arc<Link>> {
        let info = extensions.get::<TcpConnectInfo>()?;
        let key = (info.local_addr?, info.remote_addr?);
        let links = LINKS.lock().unwrap_or_else(|p| p.into_inner());
        links.get(&key)?.upgrade()
    }

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

/// A connection's link, listed while the connection is open.
#[derive(Debug)]
pub(crate) struct Registered {
    link: Arc<Link>,
    key: Option<(SocketAddr, SocketAddr)>,
}

impl Registered {
    /// A new link for the connection between `local` and `peer` (unlisted when either is
    /// unknown: no request finds it, and a response then refuses what needs it).
    pub(crate) fn new(local: Option<SocketAddr>, peer: Option<SocketAddr>) -> Self {
        let link = Arc::new(Link::default());
        let key = local.zip(peer);
        if let Some(key) = key {
            let mut links = LINKS.lock().unwrap_or_else(|p| p.into_inner());
            links.insert(key, Arc::downgrade(&link));
        }
        Self { link, key }
    }
}

impl std::ops::Deref for Registered {
    type Target = Link;

    fn deref(&self) -> &Link {
        &self.link
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut links = LINKS.lock().unwrap_or_else(|p| p.into_inner());
        // A new connection between the same addresses may have replaced it already.
        if links
            .get(&key)
            .is_some_and(|l| std::ptr::eq(l.as_ptr(), Arc::as_ptr(&self.link)))
        {
            links.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extensions(local: SocketAddr, peer: SocketAddr) -> http::Extensions {
        let mut e = http::Extensions::new();
        e.insert(TcpConnectInfo {
            local_addr: Some(local),
            remote_addr: Some(peer),
        });
        e
    }

    #[tokio::test]
    async fn a_request_finds_its_connections_link_while_it_is_open() {
        let local: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let registered = Registered::new(Some(local), Some(peer));
        let found = Link::of(&extensions(local, peer)).expect("listed");
        assert!(std::ptr::eq(&*found, &*registered));
        let other: SocketAddr = "127.0.0.1:40002".parse().unwrap();
        assert!(Link::of(&extensions(local, other)).is_none());

        let seen = found.flushes();
        let waiting = tokio::spawn({
            let found = Arc::clone(&found);
            async move { found.flushed_after(seen).await }
        });
        tokio::task::yield_now().await;
        registered.flushed();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("a flush is heard")
            .unwrap();

        let waker = futures::task::noop_waker();
        assert!(!registered.is_cut(&waker));
        found.cut();
        assert!(registered.is_cut(&waker));
        drop(found);
        drop(registered);
        assert!(Link::of(&extensions(local, peer)).is_none(), "unlisted");
    }
}
