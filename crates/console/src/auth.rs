//! Login, logout and the two guards every other route goes through:
//! [`Viewer`] for pages (no session: off to the login page) and [`Posted`]
//! for forms (same origin, a session, and its CSRF token, else 403 before
//! anything is done). HTTP Basic credentials are never looked at.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Deserialize;

use crate::security::{self, Forbidden};
use crate::session::{self, Session, SessionKey};
use crate::{Console, views};

/// A logged-in browser looking at a page.
pub(crate) struct Viewer {
    pub(crate) session: Session,
    /// The client's address (`ip:port`), for the audit trail.
    pub(crate) source: String,
}

/// The client's address as the server saw it (`ip:port`; empty when not
/// known), the audit trail's source, as the gateway records it for API
/// calls.
pub(crate) fn source_of(extensions: &axum::http::Extensions) -> String {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default()
}

/// What a page answers without a session: the login page, coming back
/// here afterwards.
pub(crate) struct ToLogin(String);

impl IntoResponse for ToLogin {
    fn into_response(self) -> Response {
        Redirect::to(&format!("/console/login?next={}", encode(&self.0))).into_response()
    }
}

impl FromRequestParts<Console> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Response> {
        match console.session(&parts.headers).await {
            Ok(Some((_, session))) => {
                if let Some(refused) = out_of_scope(console, &session, parts.uri.path()) {
                    return Err(refused);
                }
                Ok(Self {
                    session,
                    source: source_of(&parts.extensions),
                })
            }
            Ok(None) => {
                let here = parts
                    .uri
                    .path_and_query()
                    .map_or("/console/", |p| p.as_str());
                Err(ToLogin(here.to_owned()).into_response())
            }
            Err(response) => Err(response),
        }
    }
}

/// A form posted by a logged-in browser of this site, with its fields.
pub(crate) struct Posted {
    pub(crate) session: Session,
    /// The client's address (`ip:port`), for the audit trail.
    pub(crate) source: String,
    pub(crate) key: SessionKey,
    pub(crate) fields: Vec<(String, String)>,
}

impl Posted {
    /// The first value of field `name`.
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        field(&self.fields, name)
    }
}

fn field<'f>(fields: &'f [(String, String)], name: &str) -> Option<&'f str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl FromRequest<Console> for Posted {
    type Rejection = Response;

    async fn from_request(request: Request, console: &Console) -> Result<Self, Response> {
        security::same_origin(request.method(), request.headers())
            .map_err(IntoResponse::into_response)?;
        let (key, session) = match console.session(request.headers()).await? {
            Some(found) => found,
            None => return Err(Forbidden::NoSession.into_response()),
        };
        if let Some(refused) = out_of_scope(console, &session, request.uri().path()) {
            return Err(refused);
        }
        let source = source_of(request.extensions());
        // Not a form (or not one we can read): it carries no token either.
        let fields = axum::Form::<Vec<(String, String)>>::from_request(request, console)
            .await
            .map(|f| f.0)
            .unwrap_or_default();
        if !security::token_matches(field(&fields, "csrf"), &session.csrf) {
            return Err(Forbidden::Token.into_response());
        }
        Ok(Self {
            session,
            source,
            key,
            fields,
        })
    }
}

/// The refusal of a page or form of an app a token session's scope
/// leaves out; `None` when the session may see it.
fn out_of_scope(console: &Console, session: &Session, path: &str) -> Option<Response> {
    let app = path
        .strip_prefix("/console/apps/")
        .and_then(|rest| rest.split('/').next())
        .filter(|app| !app.is_empty());
    match app {
        Some(app) if !console.may_see(session, app) => Some(views::error_page(
            StatusCode::FORBIDDEN,
            &format!("{} may not see {app}", session.actor),
        )),
        _ => None,
    }
}

impl Console {
    /// The valid session a request's cookie names, kept alive; `None` when
    /// there is none (or it expired, or the password changed since, or its
    /// token was revoked or expired).
    async fn session(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<(SessionKey, Session)>, Response> {
        let inner = &self.inner;
        let Some(id) = security::cookie(headers, inner.cookies.session_name()) else {
            return Ok(None);
        };
        let key = SessionKey::of(id);
        let found = inner.sessions.get(&key).await.map_err(store_failed)?;
        let Some(mut session) = found else {
            return Ok(None);
        };
        let now = Utc::now();
        let password = session::password_fingerprint(inner.password.as_ref().map(|p| p.expose()));
        if session.password != password
            || !inner.lifetimes.valid(&session, now)
            || !self.token_usable(&session)
        {
            inner.sessions.remove(&key).await.map_err(store_failed)?;
            return Ok(None);
        }
        // Idle expiry moves on use; a write a minute is plenty for that.
        if (now - session.last_seen) > chrono::Duration::seconds(60) {
            session.last_seen = now;
            let ttl = inner.lifetimes.ttl(&session, now);
            inner
                .sessions
                .put(&key, &session, ttl)
                .await
                .map_err(store_failed)?;
        }
        Ok(Some((key, session)))
    }

    /// Whether a login from `peer` must wait first, and how long.
    fn login_wait(&self, peer: Option<IpAddr>) -> Option<Duration> {
        let peer = peer?;
        let failures = self.inner.failures.lock().expect("failures lock");
        let (count, last) = failures.get(&peer)?;
        let wait = backoff(*count)?;
        let waited = last.elapsed();
        (waited < wait).then(|| wait - waited)
    }

    fn login_failed(&self, peer: Option<IpAddr>) {
        let Some(peer) = peer else { return };
        let mut failures = self.inner.failures.lock().expect("failures lock");
        if failures.len() > 10_000 {
            failures.retain(|_, (_, last)| last.elapsed() < Duration::from_secs(3600));
        }
        let entry = failures
            .entry(peer)
            .or_insert((0, tokio::time::Instant::now()));
        *entry = (entry.0 + 1, tokio::time::Instant::now());
    }
}

/// After 5 failures in a row, each attempt waits 1 s, 2 s, 4 s… (at most
/// a minute) after the previous failure.
fn backoff(failures: u32) -> Option<Duration> {
    let over = failures.checked_sub(5)?;
    Some(Duration::from_secs(1u64 << over.min(6)).min(Duration::from_secs(60)))
}

fn store_failed(e: session::StoreError) -> Response {
    tracing::error!("failed to use the console session store: {e}");
    views::error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "the session store is unavailable; try again in a moment",
    )
}

#[derive(Deserialize)]
pub(crate) struct Next {
    next: Option<String>,
}

/// `GET /console/login`: the form, with a fresh pre-session token in a
/// cookie and the form (double submit), so a login cannot be forged from
/// another site either.
pub(crate) async fn login_page(
    State(console): State<Console>,
    Query(next): Query<Next>,
    headers: HeaderMap,
) -> Response {
    let next = safe_next(next.next.as_deref());
    if let Ok(Some(_)) = console.session(&headers).await {
        return Redirect::to(&next).into_response();
    }
    login_form(&console, &next, None, StatusCode::OK)
}

fn login_form(console: &Console, next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let token = session::random_token();
    let cookies = console.inner.cookies;
    let mut response = views::login(next, &token, error, status);
    response.headers_mut().append(
        header::SET_COOKIE,
        cookies.set_cookie(cookies.login_name(), &token, Some(3600)),
    );
    response
}

/// `POST /console/login`.
pub(crate) async fn login(State(console): State<Console>, request: Request) -> Response {
    let source = source_of(request.extensions());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Err(refused) = security::same_origin(request.method(), request.headers()) {
        return refused.into_response();
    }
    let cookies = console.inner.cookies;
    let expected = security::cookie(request.headers(), cookies.login_name())
        .unwrap_or_default()
        .to_owned();
    let fields = axum::Form::<Vec<(String, String)>>::from_request(request, &console)
        .await
        .map(|f| f.0)
        .unwrap_or_default();
    if !security::token_matches(field(&fields, "csrf"), &expected) {
        return Forbidden::Token.into_response();
    }
    let next = safe_next(field(&fields, "next"));
    if let Some(wait) = console.login_wait(peer) {
        let message = format!(
            "Too many failed logins from your address: wait {} s and try again.",
            wait.as_secs().max(1)
        );
        return login_form(
            &console,
            &next,
            Some(&message),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let actor = match field(&fields, "name").map(str::trim).unwrap_or_default() {
        "" => "console".to_owned(),
        name if valid_name(name) => format!("console:{name}"),
        _ => {
            return login_form(
                &console,
                &next,
                Some("Your name may only use letters, digits and . _ @ - (at most 40)."),
                StatusCode::BAD_REQUEST,
            );
        }
    };
    let given = field(&fields, "password").unwrap_or_default();
    let right = match &console.inner.password {
        Some(expected) => security::token_matches(Some(given), expected.expose()),
        None => true,
    };
    // A scoped token logs in with its role, under its own name.
    let token = if right {
        None
    } else {
        console.inner.tokens.as_ref().and_then(|t| t.login(given))
    };
    let (actor, grant) = match token {
        Some((id, name, grant)) => (
            format!("token:{name}"),
            Some(crate::access::SessionGrant::new(id, &grant)),
        ),
        None => (actor, None),
    };
    if !right && grant.is_none() {
        console.login_failed(peer);
        tracing::info!(target: "slipway_console::audit", action = "login.failed", %actor, peer = ?peer, "console login refused");
        return login_form(
            &console,
            &next,
            Some("Wrong password."),
            StatusCode::UNAUTHORIZED,
        );
    }
    if let Some(peer) = peer {
        console
            .inner
            .failures
            .lock()
            .expect("failures lock")
            .remove(&peer);
    }
    let now = Utc::now();
    let session = Session {
        actor: actor.clone(),
        csrf: session::random_token(),
        created: now,
        last_seen: now,
        password: session::password_fingerprint(
            console.inner.password.as_ref().map(|p| p.expose()),
        ),
        grant,
    };
    let id = session::random_token();
    let ttl = console.inner.lifetimes.ttl(&session, now);
    if let Err(e) = console
        .inner
        .sessions
        .put(&SessionKey::of(&id), &session, ttl)
        .await
    {
        return store_failed(e);
    }
    tracing::info!(target: "slipway_console::audit", action = "login", %actor, "console login");
    console.audit(&actor, &source, "console.login", "", "");
    let mut response = Redirect::to(&next).into_response();
    let h = response.headers_mut();
    h.append(
        header::SET_COOKIE,
        cookies.set_cookie(cookies.session_name(), &id, None),
    );
    h.append(
        header::SET_COOKIE,
        cookies.set_cookie(cookies.login_name(), "", Some(0)),
    );
    response
}

/// `POST /console/logout`: the session record is deleted, so the cookie
/// is worthless even if a copy survives.
pub(crate) async fn logout(State(console): State<Console>, posted: Posted) -> Response {
    if let Err(e) = console.inner.sessions.remove(&posted.key).await {
        return store_failed(e);
    }
    tracing::info!(target: "slipway_console::audit", action = "logout", actor = %posted.session.actor, "console logout");
    let cookies = console.inner.cookies;
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        cookies.set_cookie(cookies.session_name(), "", Some(0)),
    );
    response
}

/// A self-declared name for the audit log (until real users exist).
fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
}

/// Where to go after login: a console path of this site, never elsewhere.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/console/")
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_owned()
        }
        _ => "/console/".to_owned(),
    }
}

/// Percent-encodes a query value.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_console() {
        assert_eq!(safe_next(Some("/console/apps/a")), "/console/apps/a");
        for bad in [
            "https://evil/",
            "//evil/console/",
            "/console/\\evil",
            "/apps",
            "/console/\nx",
        ] {
            assert_eq!(safe_next(Some(bad)), "/console/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/console/");
    }

    #[test]
    fn names_are_plain() {
        assert!(valid_name("ann.b@example-1"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("<script>"));
        assert!(!valid_name(&"a".repeat(41)));
    }

    #[test]
    fn failed_logins_back_off() {
        assert_eq!(backoff(4), None);
        assert_eq!(backoff(5), Some(Duration::from_secs(1)));
        assert_eq!(backoff(7), Some(Duration::from_secs(4)));
        assert_eq!(backoff(50), Some(Duration::from_secs(60)));
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(encode("/console/a?x=1&y"), "/console/a%3Fx%3D1%26y");
    }
}
