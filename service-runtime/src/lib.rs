//! What each VBase gRPC service runs besides its handlers: structured logging, the Prometheus
//! `/metrics` endpoint, the Postgres pool and migrations, a health watch that reports SERVING only
//! while the database answers, and the tonic server with auth, health, reflection and drain.

pub mod cli;
pub mod db;
pub mod grpc;
pub mod logging;
pub mod metrics;
pub mod prepared;
pub mod shutdown;

pub use db::{DatabaseArgs, DbFailure, Pool, classify};
pub use grpc::{Background, serve_grpc, serve_service, watch_database};
pub use logging::{LogFormat, init_logging};
pub use metrics::serve_metrics;
pub use prepared::prepared;
pub use shutdown::shutdown_signal;
