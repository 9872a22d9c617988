//! HTTP Basic authentication as the Convox rack does it: the user name is
//! ignored, the password is compared in constant time with the rack's. The
//! CLI sends the password in its percent-escaped URL form, so both the raw
//! and the decoded forms are accepted.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use subtle::ConstantTimeEq as _;

use crate::AppState;
use crate::error::ApiError;

/// Who made a request, as far as the gateway knows.
#[derive(Clone, Debug)]
pub struct Caller {
    /// `X-Convox-Actor` when given, else the Basic user name.
    pub actor: String,
}

/// Checks credentials; refuses with 401 `invalid authentication`. Websocket
/// upgrades pass through: their handlers upgrade first and report a failed
/// login inside the stream, as the real rack does.
pub async fn require_auth(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if is_websocket(request.headers()) {
        return next.run(request).await;
    }
    match authenticate(&state, request.headers()) {
        Some(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}

/// The caller of a request whose headers carry valid credentials.
pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Option<Caller> {
    let (user, password) = basic_credentials(headers).unwrap_or_default();
    let expected = state.password.expose();
    let ok = expected.is_empty()
        || equal(&password, expected)
        || equal(&percent_decode(&password), expected);
    if !ok {
        return None;
    }
    let actor = headers
        .get("x-convox-actor")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .unwrap_or(if user.is_empty() {
            "convox".to_owned()
        } else {
            user
        });
    Some(Caller { actor })
}

/// True for a websocket upgrade request.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':').unwrap_or((text.as_str(), ""));
    Some((user.to_owned(), password.to_owned()))
}

fn equal(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}
