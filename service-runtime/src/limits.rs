//! What one gRPC server admits, so that no caller can hold it: connections at once, calls
//! per connection, the time of a call, HTTP/2 keepalive, and streams reset before they were
//! served (the HTTP/2 "rapid reset" attack).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Streams a client may reset before the server accepted them, per connection; beyond it the
/// connection is closed with GOAWAY ENHANCE_YOUR_CALM (the protection against HTTP/2 rapid
/// reset, set explicitly rather than left to the library's default).
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// The longest a peer has to answer a keepalive ping before its connection is closed (a third
/// of the interval when that is shorter).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Limits of the gRPC server.
#[derive(Debug, Clone, clap::Args)]
pub struct GrpcLimits {
    /// Connections served at once (1 to 100000); more wait in the listen queue.
    #[arg(
        long = "grpc-max-connections",
        env = "GRPC_MAX_CONNECTIONS",
        default_value_t = 4096
    )]
    pub max_connections: usize,
    /// Calls in flight on one HTTP/2 connection (1 to 10000); a client's further calls wait.
    #[arg(
        long = "grpc-max-concurrent-streams",
        env = "GRPC_MAX_CONCURRENT_STREAMS",
        default_value_t = 256
    )]
    pub max_concurrent_streams: u32,
    /// Longest a call may run, seconds (1 to 600); then it is answered CANCELLED.
    #[arg(
        long = "grpc-request-timeout-secs",
        env = "GRPC_REQUEST_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub request_timeout_secs: u64,
    /// HTTP/2 keepalive ping interval, seconds (5 to 3600); a peer that does not answer
    /// within 20 s (a third of the interval, when shorter) is disconnected.
    #[arg(
        long = "grpc-keepalive-secs",
        env = "GRPC_KEEPALIVE_SECS",
        default_value_t = 60
    )]
    pub keepalive_secs: u64,
    /// A user's calls to methods that change data, per minute (a burst of as many); beyond,
    /// RESOURCE_EXHAUSTED with when to retry. 1 to 1000000.
    #[arg(
        long = "user-writes-per-minute",
        env = "USER_WRITES_PER_MINUTE",
        default_value_t = 600
    )]
    pub user_writes_per_minute: u32,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_concurrent_streams: 256,
            request_timeout_secs: 30,
            keepalive_secs: 60,
            user_writes_per_minute: 600,
        }
    }
}

impl GrpcLimits {
    /// What is out of range, if anything.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=100_000).contains(&self.max_connections) {
            return Err(format!(
                "GRPC_MAX_CONNECTIONS ({}) must be from 1 to 100000",
                self.max_connections
            ));
        }
        if !(1..=10_000).contains(&self.max_concurrent_streams) {
            return Err(format!(
                "GRPC_MAX_CONCURRENT_STREAMS ({}) must be from 1 to 10000",
                self.max_concurrent_streams
            ));
        }
        if !(1..=600).contains(&self.request_timeout_secs) {
            return Err(format!(
                "GRPC_REQUEST_TIMEOUT_SECS ({}) must be from 1 to 600",
                self.request_timeout_secs
            ));
        }
        if !(1..=1_000_000).contains(&self.user_writes_per_minute) {
            return Err(format!(
                "USER_WRITES_PER_MINUTE ({}) must be from 1 to 1000000",
                self.user_writes_per_minute
            ));
        }
        if !(5..=3600).contains(&self.keepalive_secs) {
            return Err(format!(
                "GRPC_KEEPALIVE_SECS ({}) must be from 5 to 3600",
                self.keepalive_secs
            ));
        }
        Ok(())
    }

    /// The tonic server builder with these limits.
    pub fn server(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .max_concurrent_streams(Some(self.max_concurrent_streams))
            .timeout(Duration::from_secs(self.request_timeout_secs))
            .http2_keepalive_interval(Some(Duration::from_secs(self.keepalive_secs)))
            .http2_keepalive_timeout(Some(
                KEEPALIVE_TIMEOUT.min(Duration::from_secs(self.keepalive_secs) / 3),
            ))
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
    }

    /// The admission of connections: one permit per connection served.
    pub fn admission(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(self.max_connections))
    }
}

/// A connection that holds one of the server's connection permits until it closes.
#[derive(Debug)]
pub struct Admitted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Admitted {
    /// `stream`, counted against the permit's server until dropped.
    pub fn new(stream: TcpStream, permit: OwnedSemaphorePermit) -> Self {
        Self {
            stream,
            _permit: permit,
        }
    }
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
