//! The build service's request-level error type and its single mapping onto
//! gRPC status codes. Internal failures are logged here and answered with a
//! bare "internal error": no SQL, paths or hosts reach the caller.
//!
//! A build that fails is not an error of the request that created it: its
//! failure is recorded on the build (status `failed` and a reason).

use tonic::Status;

use crate::objects;

/// Everything a build-service request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An idempotency key was used for a different request.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the build's state refuses it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A size limit was exceeded.
    #[error("{0}")]
    TooLarge(String),
    /// The database failed.
    #[error("database: {0}")]
    Store(#[from] sqlx::Error),
    /// The object store failed.
    #[error("object store: {0}")]
    Objects(objects::Error),
    /// Anything else that is our fault.
    #[error("{0}")]
    Internal(String),
}

impl From<objects::Error> for Error {
    fn from(err: objects::Error) -> Self {
        match err {
            objects::Error::InvalidUrl(_) | objects::Error::InvalidKey(_) => {
                Self::InvalidArgument(err.to_string())
            }
            objects::Error::NotFound(_) => Self::NotFound(err.to_string()),
            objects::Error::TooLarge { .. } => Self::TooLarge(err.to_string()),
            err => Self::Objects(err),
        }
    }
}

impl From<slipway_storage::idempotency::KeyError> for Error {
    fn from(err: slipway_storage::idempotency::KeyError) -> Self {
        match err {
            slipway_storage::idempotency::KeyError::Reused { .. } => {
                Self::AlreadyExists(err.to_string())
            }
            slipway_storage::idempotency::KeyError::Store(e) => Self::Store(e),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(msg) => Status::invalid_argument(msg),
            Error::NotFound(msg) => Status::not_found(msg),
            Error::AlreadyExists(msg) => Status::already_exists(msg),
            Error::FailedPrecondition(msg) => Status::failed_precondition(msg),
            Error::TooLarge(msg) => Status::resource_exhausted(msg),
            // PostgreSQL restarting or unreachable: a passing condition the
            // caller may retry (the pool reconnects by itself).
            Error::Store(e) if slipway_storage::is_unavailable(&e) => {
                tracing::warn!("database unavailable: {e}");
                Status::unavailable(slipway_storage::UNAVAILABLE_MESSAGE)
            }
            Error::Store(_) | Error::Objects(_) | Error::Internal(_) => {
                tracing::error!(error = %err, "request failed");
                Status::internal("internal error")
            }
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
