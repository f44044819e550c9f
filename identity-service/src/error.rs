//! The one place where identity-service errors become gRPC statuses.

use service_runtime::{DbFailure, classify};
use tonic::Status;

/// Errors of the identity domain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; the message says what to fix.
    #[error("{0}")]
    Invalid(String),
    /// No such user.
    #[error("{0}")]
    NotFound(String),
    /// The user was deleted in Clerk and cannot be recreated.
    #[error("{0}")]
    Deleted(String),
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
            Error::NotFound(m) => Status::not_found(m),
            Error::Deleted(m) => Status::failed_precondition(m),
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
