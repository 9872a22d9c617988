//! The release service's error type, and its single mapping onto gRPC
//! status codes. Internal failures are logged here and answered with a bare
//! "internal error": no SQL, hosts or paths reach the caller.

use tonic::Status;

/// Everything a release-service operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but a record's state refuses it (e.g. a stale
    /// rollout report).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The app's state refuses a promotion (or deleting the app). Answered
    /// with its kind as a machine-readable detail, which the gateway maps.
    #[error(transparent)]
    Refused(#[from] crate::model::PromotionRefusal),
    /// The rollout service could not be reached.
    #[error("rollout service: {0}")]
    Rollout(String),
    /// The database failed.
    #[error("database: {0}")]
    Store(#[from] sqlx::Error),
    /// A sealed env could not be opened.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
}

impl slipway_storage::StoreError for Error {
    fn driver_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Store(e) => Some(e),
            _ => None,
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
            Error::Refused(refusal) => refusal.kind().status(refusal.to_string()),
            Error::Rollout(msg) => {
                tracing::warn!("failed to reach the rollout service: {msg}");
                Status::unavailable(format!("rollout service unavailable: {msg}"))
            }
            Error::Store(e) if slipway_storage::is_unavailable(&e) => {
                tracing::warn!("database unavailable: {e}");
                Status::unavailable(slipway_storage::UNAVAILABLE_MESSAGE)
            }
            Error::Store(_) | Error::Crypto(_) => {
                tracing::error!(error = %err, "request failed");
                Status::internal("internal error")
            }
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
