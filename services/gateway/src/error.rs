//! How the gateway answers errors: plain text `message\n` with the status the
//! Convox rack uses, which the `convox` CLI prints as `ERROR: message`. gRPC
//! codes become HTTP statuses in exactly one `match`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use slipway_api::refusal::Refusal;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What the user sees after `ERROR: `.
    pub message: String,
}

impl ApiError {
    /// A 400 naming what is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// A 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    /// The 401 of a failed login.
    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "invalid authentication".into(),
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let message = status.message().to_owned();
        let code = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            // The Convox rack answers 403 for "app is currently updating"
            // and 400 for the other promotion refusals: the release service
            // names the refusal's kind in the status metadata, never only in
            // its words.
            Code::FailedPrecondition => match Refusal::of(&status) {
                Some(Refusal::AppUpdating) => StatusCode::FORBIDDEN,
                Some(
                    Refusal::OlderRelease
                    | Refusal::EmptyManifest
                    | Refusal::InvalidManifest
                    | Refusal::MissingEnv,
                )
                | None => StatusCode::BAD_REQUEST,
            },
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded | Code::Cancelled => StatusCode::GATEWAY_TIMEOUT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
                tracing::error!(code = ?status.code(), "upstream call failed: {message}");
                return Self {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: "internal error".into(),
                };
            }
        };
        let message = match status.code() {
            Code::Unavailable => format!("service unavailable: {message}"),
            _ => message,
        };
        Self {
            status: code,
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, format!("{}\n", self.message)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"convox\""),
            );
        }
        response
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn a_refusal_kind_picks_the_status_not_the_words() {
        let updating = ApiError::from(Refusal::AppUpdating.status("app is currently updating"));
        assert_eq!(updating.status, StatusCode::FORBIDDEN);
        assert_eq!(updating.message, "app is currently updating");
        let reworded = ApiError::from(Refusal::AppUpdating.status("a rollout is in progress"));
        assert_eq!(reworded.status, StatusCode::FORBIDDEN);
        for kind in Refusal::ALL {
            let want = if kind == Refusal::AppUpdating {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::BAD_REQUEST
            };
            assert_eq!(ApiError::from(kind.status("no")).status, want, "{kind:?}");
        }
        // The words alone no longer make a 403.
        let words = ApiError::from(Status::failed_precondition("app is currently updating"));
        assert_eq!(words.status, StatusCode::BAD_REQUEST);
    }
}
