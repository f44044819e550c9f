//! What tonic puts in every request of an [`crate::connection::Admitted`] connection, and how a
//! request finds its connection's parts.

use crate::activity::Activity;
use crate::link::Link;
use std::sync::Arc;
use tonic::transport::server::TcpConnectInfo;

/// The peer's address, the connection's calls in flight, and its link.
#[derive(Debug, Clone)]
pub struct AdmittedInfo {
    /// The TCP peer, for tonic's `Request::remote_addr`.
    pub tcp: TcpConnectInfo,
    /// The connection's calls in flight.
    pub activity: Arc<Activity>,
    /// What its responses learn of it and may do to it.
    pub link: Arc<Link>,
}

/// The link of the connection that carried the request whose extensions are `extensions`.
pub fn link_of(extensions: &http::Extensions) -> Option<Arc<Link>> {
    extensions
        .get::<AdmittedInfo>()
        .map(|info| Arc::clone(&info.link))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_finds_its_connections_link() {
        let link = Arc::new(Link::default());
        let mut extensions = http::Extensions::new();
        assert!(link_of(&extensions).is_none());
        extensions.insert(AdmittedInfo {
            tcp: TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            },
            activity: Activity::new(),
            link: Arc::clone(&link),
        });
        assert!(Arc::ptr_eq(&link_of(&extensions).unwrap(), &link));
    }
}
