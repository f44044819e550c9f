//! The one place where workspace-service errors become gRPC statuses.

use service_runtime::{DbFailure, classify};
use tonic::Status;

/// Errors of the workspace domain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; the message says what to fix.
    #[error("{0}")]
    Invalid(String),
    /// The caller may not act here (also answered for things outside the caller's workspace,
    /// so existence does not leak).
    #[error("{0}")]
    Denied(String),
    /// Not found (only said where existence is no secret to the caller).
    #[error("{0}")]
    NotFound(String),
    /// Already exists (e.g. a channel name).
    #[error("{0}")]
    Exists(String),
    /// The request does not fit the current state (e.g. a document in a code room).
    #[error("{0}")]
    Precondition(String),
    /// A database error.
    #[error("database error: {0}")]
    Db(#[from] diesel::result::Error),
    /// No connection could be had.
    #[error("database unavailable: {0}")]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
}

impl From<input_validation::Invalid> for Error {
    fn from(e: input_validation::Invalid) -> Self {
        Error::Invalid(e.0)
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(m) => Status::invalid_argument(m),
            Error::Denied(m) => Status::permission_denied(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::Exists(m) => Status::already_exists(m),
            Error::Precondition(m) => Status::failed_precondition(m),
            Error::Pool(e) => {
                tracing::warn!(error = %e, "database pool unavailable");
                Status::unavailable("database unavailable, retry later")
            }
            Error::Db(e) => match classify(&e) {
                DbFailure::NotFound => Status::not_found("not found"),
                DbFailure::UniqueViolation => Status::already_exists("already exists"),
                DbFailure::Unavailable | DbFailure::Retryable => {
                    tracing::warn!(error = %e, "transient database failure");
                    Status::unavailable("database unavailable, retry later")
                }
                DbFailure::ForeignKeyViolation | DbFailure::Other => {
                    tracing::error!(error = %e, "database error");
                    Status::internal("internal error")
                }
            },
        }
    }
}
