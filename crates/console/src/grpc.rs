//! Calls to the services on a console user's behalf, and what a failed
//! one shows: the services' refusals are written for people (the gateway
//! passes them on too), so they are shown as they are; a broken service is
//! logged here and shown as unavailable, without its details.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use slipway_api::release::v1 as rpb;
use tonic::Code;

use crate::Console;
use crate::views;

/// A gRPC request carrying the console user as its audit actor, and the
/// user's address (`source`) as its audit source (`slipway_rpc::actor`).
pub(crate) fn as_actor<T>(message: T, actor: &str, source: &str) -> tonic::Request<T> {
    slipway_rpc::actor::Actor::new(actor, source).request(message)
}

/// A page that could not be shown.
#[derive(Debug)]
pub(crate) enum PageError {
    /// The app, release or promotion does not exist (or is not the app's).
    NotFound(String),
    /// A call failed.
    Upstream(tonic::Status),
}

impl From<tonic::Status> for PageError {
    fn from(status: tonic::Status) -> Self {
        Self::Upstream(status)
    }
}

impl PageError {
    /// The HTTP status and the sentence shown.
    pub(crate) fn describe(&self) -> (StatusCode, String) {
        match self {
            Self::NotFound(what) => (StatusCode::NOT_FOUND, format!("{what} not found")),
            Self::Upstream(status) => describe_status(status),
        }
    }
}

/// The HTTP status and the sentence for a failed call.
pub(crate) fn describe_status(status: &tonic::Status) -> (StatusCode, String) {
    let message = status.message().to_owned();
    match status.code() {
        Code::NotFound => (StatusCode::NOT_FOUND, message),
        Code::InvalidArgument | Code::OutOfRange => (StatusCode::BAD_REQUEST, message),
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => {
            (StatusCode::CONFLICT, message)
        }
        Code::PermissionDenied => (StatusCode::FORBIDDEN, message),
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
            tracing::warn!(code = ?status.code(), "console call failed: {message}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "a Slipway service is unavailable right now; try again in a moment".to_owned(),
            )
        }
        _ => {
            tracing::error!(code = ?status.code(), "console call failed: {message}");
            (
                StatusCode::BAD_GATEWAY,
                "a Slipway service failed; the rack's log has the details".to_owned(),
            )
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, message) = self.describe();
        views::error_page(status, &message)
    }
}

impl Console {
    /// The app, or not found.
    pub(crate) async fn app(&self, name: &str) -> Result<rpb::App, PageError> {
        let app = self
            .release()
            .get_app(rpb::GetAppRequest {
                name: name.to_owned(),
            })
            .await?
            .into_inner()
            .app;
        app.ok_or_else(|| PageError::NotFound(format!("app {name}")))
    }

    /// A release of the app (`id` empty: the newest), or not found.
    pub(crate) async fn release_of(&self, app: &str, id: &str) -> Result<rpb::Release, PageError> {
        self.release()
            .get_release(rpb::GetReleaseRequest {
                app: app.to_owned(),
                id: id.to_owned(),
            })
            .await?
            .into_inner()
            .release
            .ok_or_else(|| PageError::NotFound(format!("release {id}")))
    }

    /// A promotion of the app, or not found (another app's is not shown).
    pub(crate) async fn promotion_of(
        &self,
        app: &str,
        id: &str,
    ) -> Result<rpb::Promotion, PageError> {
        let promotion = self
            .release()
            .get_promotion(rpb::GetPromotionRequest { id: id.to_owned() })
            .await?
            .into_inner()
            .promotion
            .filter(|p| p.app == app);
        promotion.ok_or_else(|| PageError::NotFound(format!("promotion {id} of app {app}")))
    }
}
