//! The page templates (askama, `templates/`) and the small formatting the
//! pages share: times, statuses in words, the frame around every page.

use askama::Template;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};

use crate::assets;
use crate::session::Session;

/// The frame every page shares.
pub(crate) struct Chrome {
    /// The page's title (and its `<h1>` unless the page says otherwise).
    pub(crate) title: String,
    /// Who is logged in, if anyone.
    pub(crate) actor: Option<String>,
    /// The session's CSRF token, for the logout form (and the page's own).
    pub(crate) csrf: String,
    /// A live page still changing: without JavaScript it refreshes itself.
    pub(crate) refresh: bool,
    /// The status stream the page follows (with JavaScript), if any.
    pub(crate) live: Option<Live>,
    /// The stylesheet's path (content-hashed).
    pub(crate) css: &'static str,
    /// The script's path (content-hashed).
    pub(crate) js: &'static str,
    /// The icon's path (content-hashed).
    pub(crate) favicon: &'static str,
}

impl Chrome {
    /// The frame for a logged-in page.
    pub(crate) fn new(title: impl Into<String>, session: &Session) -> Self {
        Self {
            title: title.into(),
            actor: Some(session.actor.clone()),
            csrf: session.csrf.clone(),
            refresh: false,
            live: None,
            css: assets::css_path(),
            js: assets::js_path(),
            favicon: assets::favicon_path(),
        }
    }

    /// The frame for a page shown without a session.
    pub(crate) fn anonymous(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            actor: None,
            csrf: String::new(),
            refresh: false,
            live: None,
            css: assets::css_path(),
            js: assets::js_path(),
            favicon: assets::favicon_path(),
        }
    }
}

/// A page's status stream: when it sends a version other than the one the
/// page was rendered with, the script renders the page again.
pub(crate) struct Live {
    pub(crate) stream: String,
    pub(crate) version: String,
}

/// A point in time as pages show it: relative text, exact UTC on hover
/// and in the `datetime` attribute.
pub(crate) struct When {
    pub(crate) iso: String,
    pub(crate) ago: String,
}

impl When {
    pub(crate) fn of(t: Option<&prost_types::Timestamp>, now: DateTime<Utc>) -> Self {
        match t.filter(|t| t.seconds > 0) {
            Some(t) => {
                let at = slipway_api::from_timestamp(t);
                Self {
                    iso: at.to_rfc3339_opts(SecondsFormat::Secs, true),
                    ago: ago(now - at),
                }
            }
            None => Self {
                iso: String::new(),
                ago: "never".to_owned(),
            },
        }
    }
}

fn ago(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    let (n, unit) = match s {
        ..=4 => return "just now".to_owned(),
        5..=59 => (s, "second"),
        60..=3599 => (s / 60, "minute"),
        3600..=86_399 => (s / 3600, "hour"),
        _ => (s / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// A promotion state in the words the pages use.
pub(crate) fn state_words(state: i32) -> &'static str {
    slipway_api::promotion::promotion_state(state).map_or("unknown", |s| match s {
        slipway_domain::PromotionState::Pending => "pending",
        slipway_domain::PromotionState::RollingOut => "rolling out",
        slipway_domain::PromotionState::Succeeded => "succeeded",
        slipway_domain::PromotionState::RolledBack => "rolled back",
        slipway_domain::PromotionState::Failed => "failed",
        slipway_domain::PromotionState::Cancelled => "cancelled",
    })
}

/// Whether a promotion state is still moving.
pub(crate) fn in_flight(state: i32) -> bool {
    matches!(
        slipway_api::promotion::promotion_state(state),
        Ok(slipway_domain::PromotionState::Pending | slipway_domain::PromotionState::RollingOut)
    )
}

/// A rendered page as a response.
pub(crate) fn html<T: Template>(page: &T, status: StatusCode) -> Response {
    match page.render() {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("failed to render a console page: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    chrome: Chrome,
    message: &'a str,
}

/// A page saying what went wrong.
pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error").to_owned();
    html(
        &ErrorPage {
            chrome: Chrome::anonymous(title),
            message,
        },
        status,
    )
}

/// Any other path under `/console/`.
pub(crate) async fn not_found() -> Response {
    error_page(StatusCode::NOT_FOUND, "There is no such console page.")
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    chrome: Chrome,
    next: &'a str,
    token: &'a str,
    error: Option<&'a str>,
}

/// The login form.
pub(crate) fn login(next: &str, token: &str, error: Option<&str>, status: StatusCode) -> Response {
    html(
        &LoginPage {
            chrome: Chrome::anonymous("Log in"),
            next,
            token,
            error,
        },
        status,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let d = chrono::Duration::seconds;
        assert_eq!(ago(d(2)), "just now");
        assert_eq!(ago(d(61)), "1 minute ago");
        assert_eq!(ago(d(7200)), "2 hours ago");
        assert_eq!(ago(d(86_400 * 3)), "3 days ago");
    }
}
