//! The one place where identity-service errors become gRPC statuses.

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
    /// The command was accepted but its result was lost (the service is stopping).
    #[error("{0}")]
    Interrupted(&'static str),
    /// A broken invariant; details are logged, not returned.
    #[error("{0}")]
    Internal(&'static str),
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
            Error::Interrupted(m) => Status::unavailable(m),
            Error::Internal(m) => {
                tracing::error!(error = m, "internal error");
                Status::internal("internal error")
            }
            Error::Pool(e) => service_runtime::db::pool_status(&e),
            Error::Db(e) => service_runtime::db::status_for(&e),
        }
    }
}
