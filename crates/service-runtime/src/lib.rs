//! What each VBase gRPC service runs besides its handlers: structured logging, the Prometheus
//! `/metrics` endpoint, the Postgres pool and migrations, a health watch that reports SERVING only
//! while the database answers, the tonic server with auth, health, reflection and drain for
//! one or several gRPC services, the lifecycle that background workers follow, and the one
//! mapping of domain errors to gRPC statuses.

pub mod activity;
pub mod boot;
pub mod browser;
pub mod cache_metrics;
pub mod cli;
pub mod connect_info;
pub mod connection;
pub mod count_calls;
pub mod db;
pub mod error;
pub mod grpc;
pub mod key_metrics;
pub mod lent;
pub mod lifecycle;
pub mod limits;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod open_services;
pub mod prepared;
pub mod quota_service;
pub mod read_after;
pub mod reflection_limit;
pub mod replica;
pub mod secret;
pub mod secret_files;
pub mod settled;
pub mod shutdown;
pub mod tls;
pub mod user_limits;
pub mod user_quotas;

pub use boot::{Boot, ServiceArgs};
pub use db::{DatabaseArgs, DbFailure, Pool, classify};
pub use error::Error;
pub use grpc::{GrpcServices, Serve, StartGate, serve_grpc, watch_database};
pub use lifecycle::{Lifecycle, Phase, ShutdownArgs, Workers};
pub use limits::GrpcLimits;
pub use logging::{LogFormat, init_logging};
pub use metrics::serve_metrics;
pub use prepared::prepared;
pub use quota_service::{UserQuotaArgs, UserQuotas, WithUserQuotas};
pub use secret::Secret;
pub use settled::Settled;
pub use shutdown::shutdown_signal;
pub use tls::DbTls;
