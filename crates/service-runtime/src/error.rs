//! The errors of a service's domain and the one place they become gRPC statuses. Messages of
//! the client-facing kinds say what to fix; database and internal details are logged, never
//! returned.

use std::time::Duration;
use tonic::Status;

/// What a domain function can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; the message says what to fix. INVALID_ARGUMENT.
    #[error("{0}")]
    Invalid(String),
    /// The caller may not act here (also answered for things the caller cannot see, so
    /// existence does not leak). PERMISSION_DENIED.
    #[error("{0}")]
    Denied(String),
    /// Not found (only said where existence is no secret to the caller). NOT_FOUND.
    #[error("{0}")]
    NotFound(String),
    /// Already exists (e.g. a channel name). ALREADY_EXISTS.
    #[error("{0}")]
    Exists(String),
    /// The request does not fit the current state (e.g. a deleted user, a document in a code
    /// room). FAILED_PRECONDITION.
    #[error("{0}")]
    Precondition(String),
    /// Accepted but not finished (the service is stopping): retry. UNAVAILABLE.
    #[error("{0}")]
    Unavailable(&'static str),
    /// Not now, and when to try again (a service we call is rate-limiting us): UNAVAILABLE
    /// with `retry-after` (seconds) and `grpc-retry-pushback-ms`.
    #[error("{message} (retry after {after:?})")]
    RetryAfter {
        message: &'static str,
        after: Duration,
    },
    /// A read on a database replica came to a decision the replica's rows must not make (a
    /// user's access that the access cache could not answer: the replica may predate its
    /// revocation); [`crate::replica::read_again_on_primary`] sends it to the primary. Answered
    /// as UNAVAILABLE should it ever reach a caller.
    #[error("{0}")]
    OnPrimary(&'static str),
    /// A broken invariant; logged, answered as INTERNAL without details.
    #[error("{0}")]
    Internal(String),
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

impl Error {
    /// The database failure behind this error ([`crate::db::classify`]: a read-only server
    /// retires the stale connections), if it is one; a pool error is `Unavailable`.
    pub fn db_failure(&self) -> Option<crate::db::DbFailure> {
        match self {
            Error::Db(e) => Some(crate::db::classify(e)),
            Error::Pool(_) => Some(crate::db::DbFailure::Unavailable),
            _ => None,
        }
    }

    /// A short label for metrics: `invalid` for the caller's mistakes, `error` otherwise.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            _ => "error",
        }
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
            Error::Unavailable(m) | Error::OnPrimary(m) => Status::unavailable(m),
            Error::RetryAfter { message, after } => {
                let secs = after.as_millis().div_ceil(1000).max(1);
                with_retry_advice(
                    Status::unavailable(format!("{message}: retry in {secs} s")),
                    after,
                )
            }
            Error::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error")
            }
            Error::Pool(e) => crate::db::pool_status(&e),
            Error::Db(e) => crate::db::status_for(&e),
        }
    }
}

/// `status` with when to try again: `retry-after` (whole seconds, at least 1) and
/// `grpc-retry-pushback-ms`.
pub fn with_retry_advice(mut status: Status, wait: Duration) -> Status {
    let ms = wait.as_millis().max(1) as u64;
    let md = status.metadata_mut();
    if let Ok(v) = ms.div_ceil(1000).to_string().parse() {
        md.insert("retry-after", v);
    }
    if let Ok(v) = ms.to_string().parse() {
        md.insert("grpc-retry-pushback-ms", v);
    }
    status
}
