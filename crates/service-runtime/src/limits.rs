//! What one gRPC server admits, so that no caller can hold it: connections at once, the time a
//! connection has for its handshake, to live and to stay idle, calls per connection, the time of a call,
//! HTTP/2 keepalive, streams reset before they were served (the HTTP/2 "rapid reset"
//! attack), streams the server had to reset because of the peer's frames ("MadeYouReset"), and
//! reflection calls (at once, and their length).

use crate::connection::Deadlines;
use crate::reflection_limit::ReflectionLimit;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Streams a client may reset before the server accepted them, per connection; beyond it the
/// connection is closed with GOAWAY ENHANCE_YOUR_CALM (the protection against HTTP/2 rapid
/// reset, set explicitly rather than left to the library's default).
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server may reset itself because of the peer's frames (a WINDOW_UPDATE that
/// overflows a window, for one), per connection; beyond it GOAWAY ENHANCE_YOUR_CALM. h2's own
/// default, which tonic turns off unless set (HTTP/2 "MadeYouReset", CVE-2025-8671).
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
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
    /// Longest a call's handler may take to start its answer, seconds (1 to 600); then it is
    /// answered CANCELLED. Streams and unread answers are bounded by other settings.
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
    /// Seconds a new connection has, from accept, to send its HTTP/2 preface and first frame
    /// or its first HTTP/1 request head (1 to 120); then it is closed, and its connection
    /// permit freed.
    #[arg(
        long = "grpc-handshake-timeout-secs",
        env = "GRPC_HANDSHAKE_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub handshake_timeout_secs: u64,
    /// Seconds a connection lives (60 to 604800): then the server closes it gracefully (HTTP/2
    /// GOAWAY: calls in flight finish, the client opens a new connection for the next ones).
    #[arg(
        long = "grpc-max-connection-age-secs",
        env = "GRPC_MAX_CONNECTION_AGE_SECS",
        default_value_t = 1800
    )]
    pub max_connection_age_secs: u64,
    /// Seconds calls in flight get after the maximum age (at least GRPC_REQUEST_TIMEOUT_SECS,
    /// at most 3600); then the connection is cut (a watch still open ends, its client resumes).
    #[arg(
        long = "grpc-max-connection-age-grace-secs",
        env = "GRPC_MAX_CONNECTION_AGE_GRACE_SECS",
        default_value_t = 30
    )]
    pub max_connection_age_grace_secs: u64,
    /// Seconds a connection may go without a call in flight (1 to 86400); then it is closed and
    /// its connection permit freed. HTTP/2 pings do not count as calls.
    #[arg(
        long = "grpc-max-connection-idle-secs",
        env = "GRPC_MAX_CONNECTION_IDLE_SECS",
        default_value_t = 300
    )]
    pub max_connection_idle_secs: u64,
    /// Reflection calls one replica serves at once (1 to 1024); more are refused with
    /// RESOURCE_EXHAUSTED. Reflection needs no token, and each call may hold answers in memory.
    #[arg(
        long = "grpc-reflection-max-calls",
        env = "GRPC_REFLECTION_MAX_CALLS",
        default_value_t = 16
    )]
    pub reflection_max_calls: usize,
    /// Seconds a reflection call may last, answers included (1 to 600); then its stream is
    /// reset. Tools such as grpcurl need milliseconds.
    #[arg(
        long = "grpc-reflection-call-secs",
        env = "GRPC_REFLECTION_CALL_SECS",
        default_value_t = 10
    )]
    pub reflection_call_secs: u64,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_concurrent_streams: 256,
            request_timeout_secs: 30,
            keepalive_secs: 60,
            user_writes_per_minute: 600,
            handshake_timeout_secs: 10,
            max_connection_age_secs: 1800,
            max_connection_age_grace_secs: 30,
            max_connection_idle_secs: 300,
            reflection_max_calls: 16,
            reflection_call_secs: 10,
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
        if !(1..=120).contains(&self.handshake_timeout_secs) {
            return Err(format!(
                "GRPC_HANDSHAKE_TIMEOUT_SECS ({}) must be from 1 to 120",
                self.handshake_timeout_secs
            ));
        }
        if !(60..=604_800).contains(&self.max_connection_age_secs) {
            return Err(format!(
                "GRPC_MAX_CONNECTION_AGE_SECS ({}) must be from 60 to 604800",
                self.max_connection_age_secs
            ));
        }
        if !(self.request_timeout_secs..=3600).contains(&self.max_connection_age_grace_secs) {
            return Err(format!(
                "GRPC_MAX_CONNECTION_AGE_GRACE_SECS ({}) must be from GRPC_REQUEST_TIMEOUT_SECS ({}), so calls in flight finish, to 3600",
                self.max_connection_age_grace_secs, self.request_timeout_secs
            ));
        }
        if !(1..=86_400).contains(&self.max_connection_idle_secs) {
            return Err(format!(
                "GRPC_MAX_CONNECTION_IDLE_SECS ({}) must be from 1 to 86400",
                self.max_connection_idle_secs
            ));
        }
        if !(1..=1024).contains(&self.reflection_max_calls) {
            return Err(format!(
                "GRPC_REFLECTION_MAX_CALLS ({}) must be from 1 to 1024",
                self.reflection_max_calls
            ));
        }
        if !(1..=600).contains(&self.reflection_call_secs) {
            return Err(format!(
                "GRPC_REFLECTION_CALL_SECS ({}) must be from 1 to 600",
                self.reflection_call_secs
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
            .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
            // The graceful close at the maximum age; `Admitted` cuts the connection after the
            // grace (tonic's own grace setting would skip the graceful close).
            .max_connection_age(Duration::from_secs(self.max_connection_age_secs))
    }

    /// The deadlines of each connection: its handshake, its life (age and grace), and its idle
    /// limit.
    pub fn deadlines(&self) -> Deadlines {
        Deadlines {
            handshake: Duration::from_secs(self.handshake_timeout_secs),
            lifetime: Duration::from_secs(
                self.max_connection_age_secs + self.max_connection_age_grace_secs,
            ),
            idle: Duration::from_secs(self.max_connection_idle_secs),
        }
    }

    /// The bounds of reflection calls: a fresh count, for one server.
    pub fn reflection(&self) -> ReflectionLimit {
        ReflectionLimit::new(
            self.reflection_max_calls,
            Duration::from_secs(self.reflection_call_secs),
        )
    }

    /// The admission of connections: one permit per connection served.
    pub fn admission(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(self.max_connections))
    }
}
