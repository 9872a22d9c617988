//! The rollout service's error type, and its single mapping onto gRPC
//! status codes. Internal failures are logged here and answered with a bare
//! "internal error": no SQL, hosts or paths reach the caller.

use tonic::Status;

/// Everything a rollout-service operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the state refuses it (another rollout of
    /// the app is in flight).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The database failed.
    #[error("database: {0}")]
    Store(#[from] sqlx::Error),
    /// Stored data could not be read back (a bug or a hand-edited row).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(msg) => Status::invalid_argument(msg),
            Error::NotFound(msg) => Status::not_found(msg),
            Error::FailedPrecondition(msg) => Status::failed_precondition(msg),
            // PostgreSQL restarting or unreachable: a passing condition the
            // caller may retry (the pool reconnects by itself).
            Error::Store(e) if slipway_storage::is_unavailable(&e) => {
                tracing::warn!("database unavailable: {e}");
                Status::unavailable(slipway_storage::UNAVAILABLE_MESSAGE)
            }
            Error::Store(_) | Error::Corrupt(_) | Error::Runtime(_) => {
                tracing::error!(error = %err, "request failed");
                Status::internal("internal error")
            }
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
