//! gRPC plumbing for the subcommands that call the running stack.

use anyhow::{Context, Result};
use tonic::transport::Channel;

/// A channel to `addr` (`host:port`).
pub async fn connect(addr: &str) -> Result<Channel> {
    Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr} (is the stack running?)"))
}

/// `msg` with `authorization: Bearer token`.
pub fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// A status as one short line: `NOT_FOUND: no such workspace`.
pub fn status_line(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}
