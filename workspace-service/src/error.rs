//! The one place where workspace-service errors become gRPC statuses.

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
            Error::Pool(e) => service_runtime::db::pool_status(&e),
            Error::Db(e) => service_runtime::db::status_for(&e),
        }
    }
}
