//! Authentication, checked before routing and failing closed.
//!
//! HTTP Basic as the Convox rack does it: the user name is ignored, the
//! password is compared in constant time with the rack's. The CLI sends the
//! password in its percent-escaped URL form, so both the raw and the decoded
//! forms are accepted.
//!
//! [`authenticate_first`] wraps the whole router, so a request is judged
//! before any route (or the 404 fallback) sees it. Only a real websocket
//! upgrade on one of the [`SOCKET_ROUTES`] may pass with bad credentials,
//! marked [`SocketCaller::Refused`], so that its handler reports the failed
//! login inside the stream as the real rack does. Handlers take [`Caller`]
//! or [`SocketCaller`] as extractors, which answer 401 when the middleware
//! did not vouch for the request: no handler runs anonymously by accident.
//!
//! The password of the Basic credentials may also be a scoped token
//! (`slp_…`, see `tokens.rs`): the same middleware then decides whether
//! its role and app scope allow the request (`access.rs`), answering 403
//! with a sentence naming the token, its role, the app and what is needed,
//! before any handler runs, so a refused request changes nothing. The rack
//! password is an admin credential. Every credential is also held to the
//! per-credential cap on requests in flight.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use slipway_domain::access::Grant;
use slipway_rpc::actor::Actor;
use subtle::ConstantTimeEq as _;

use crate::AppState;
use crate::error::ApiError;
use crate::logins::Refusal;
use crate::tokens::{TOKEN_PREFIX, TokenGrant, TokenRefusal, Tokens};

/// The websocket routes, whose failed logins are reported in the stream.
/// The router registers exactly these paths as sockets.
pub const SOCKET_ROUTES: [&str; 5] = [
    "/apps/{app}/builds/{id}/logs",
    "/apps/{app}/logs",
    "/apps/{app}/services/{service}/logs",
    "/apps/{app}/promotions/{id}/events",
    "/apps/{app}/processes/{pid}/exec",
];

/// Who made a request, as far as the gateway knows. As an extractor it
/// answers 401 unless [`authenticate_first`] authenticated the request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The credential's name (`password`, `token:NAME`) and the client's
    /// address: what every call to the services carries, never what the
    /// client claims (`X-Convox-Actor` is ignored).
    pub actor: Actor,
    /// What the credential may do.
    pub grant: Grant,
    /// The scoped token, when the credential is one (streams re-check it).
    pub token: Option<Arc<TokenGrant>>,
}

impl Caller {
    /// The credential in a refusal: `token ci-web`, `the rack password`.
    pub fn describe(&self) -> String {
        match &self.token {
            Some(token) => format!("token {}", token.name),
            None => "the rack password".to_owned(),
        }
    }

    /// Completes when the credential stops being usable (a token revoked
    /// or expired, or no longer checkable); never for the rack password.
    pub async fn ended(self, tokens: Arc<Tokens>) {
        match self.token {
            Some(token) => tokens.ended(token).await,
            None => std::future::pending().await,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(ApiError::unauthorized)
    }
}

/// The caller of a socket route: authenticated, or refused with the
/// refusal still to be reported inside the stream. As an extractor it
/// answers 401 unless [`authenticate_first`] judged the request.
#[derive(Clone, Debug)]
pub enum SocketCaller {
    /// Valid credentials.
    Authenticated(Caller),
    /// A websocket upgrade with missing or wrong credentials, or with
    /// credentials whose role does not allow the stream: the sentence to
    /// report.
    Refused(String),
}

impl SocketCaller {
    /// True when the stream may be served.
    pub fn authorised(&self) -> bool {
        matches!(self, Self::Authenticated(_))
    }

    /// Why the stream is refused (empty when it is not).
    pub fn refusal(&self) -> &str {
        match self {
            Self::Authenticated(_) => "",
            Self::Refused(why) => why,
        }
    }

    /// Completes when the caller's credential stops being usable (see
    /// [`Caller::ended`]); at once for a refused caller.
    pub async fn ended(self, tokens: Arc<Tokens>) {
        if let Self::Authenticated(caller) = self {
            caller.ended(tokens).await;
        }
    }
}

/// The mark [`authenticate_first`] leaves on a socket upgrade whose login
/// failed or was refused, for its handler to report inside the stream.
#[derive(Clone, Debug)]
struct LoginRefused(String);

impl<S: Send + Sync> FromRequestParts<S> for SocketCaller {
    type Rejection = ApiError;

    /// The [`Caller`] the middleware vouched for, else its refusal mark,
    /// else 401.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(Self::Authenticated(caller.clone()));
        }
        if let Some(LoginRefused(why)) = parts.extensions.get::<LoginRefused>() {
            return Ok(Self::Refused(why.clone()));
        }
        Err(ApiError::unauthorized())
    }
}

/// How the gateway checks credentials.
#[derive(Clone)]
pub enum Authentication {
    /// HTTP Basic with this password.
    Password(slipway_domain::Secret),
    /// Anything goes (`--insecure-no-auth`, loopback only).
    Disabled,
}

/// The middleware around the whole router: refuses cross-site browser
/// requests, throttles sources that failed too often, checks credentials,
/// then whether they allow the request, and holds the request to its
/// credential's cap on requests in flight.
pub async fn authenticate_first(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Err(refusal) = same_origin(request.method(), request.headers(), request.uri()) {
        return refusal.into_response();
    }
    let peer_addr = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let peer = peer_addr.map(|a| a.ip());
    if let Some(wait) = state.logins.throttled(peer) {
        return Refusal::TooManyFailures { wait }.into_response();
    }
    let source = peer_addr.map(|a| a.to_string()).unwrap_or_default();
    let caller = match authenticate(&state, request.headers(), &source) {
        Ok(caller) => caller,
        Err(Failure::TokensUnavailable) => {
            return ApiError {
                status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                message: "tokens cannot be checked right now (the release service is unreachable); try again shortly, or use the rack password".into(),
            }
            .into_response();
        }
        Err(failure) => {
            state.logins.failed(peer, failure);
            if is_socket_upgrade(&request) {
                request
                    .extensions_mut()
                    .insert(LoginRefused("invalid authentication".into()));
                return next.run(request).await;
            }
            return ApiError::unauthorized().into_response();
        }
    };
    let need = crate::access::need(
        request.method(),
        request.uri().path(),
        request.uri().query(),
    );
    if let Err(why) = caller.grant.allows(&caller.describe(), &need) {
        tracing::info!(actor = %caller.actor, method = %request.method(), path = %request.uri().path(), "request refused: {why}");
        crate::audit::refused(&state, &caller, request.method(), &need, &why);
        if is_socket_upgrade(&request) {
            request.extensions_mut().insert(LoginRefused(why));
            return next.run(request).await;
        }
        return ApiError {
            status: axum::http::StatusCode::FORBIDDEN,
            message: why,
        }
        .into_response();
    }
    let Some(_in_flight) = state.in_flight.enter(&caller.actor.name) else {
        return ApiError {
            status: axum::http::StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "too many requests in flight for {} (at most {}): wait for some to finish",
                caller.describe(),
                state.in_flight.cap()
            ),
        }
        .into_response();
    };
    request.extensions_mut().insert(caller.clone());
    // Every call the handler makes carries the caller (slipway_rpc::actor):
    // each service audits the changes it makes for it, in their
    // transactions (the build and rollout services through their audit
    // outboxes).
    slipway_rpc::actor::scope(caller.actor.clone(), next.run(request)).await
}

/// Why credentials were refused (for the log; never the password).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No `Authorization: Basic` header, or one that does not decode.
    Missing,
    /// A password that is not the rack's.
    WrongPassword,
    /// A token (`slp_…`) that is not usable: unknown, revoked or expired.
    UnknownToken,
    /// A token that cannot be judged: the token table is not fresh.
    TokensUnavailable,
}

impl Failure {
    /// For the log line.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Missing => "no credentials",
            Self::WrongPassword => "wrong password",
            Self::UnknownToken => "unknown token",
            Self::TokensUnavailable => "token table unavailable",
        }
    }
}

/// The caller of a request whose headers carry valid credentials: the
/// rack password (admin), or a usable scoped token. `source` is the
/// client's address, for the audit trail.
pub fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    source: &str,
) -> Result<Caller, Failure> {
    let credentials = basic_credentials(headers);
    let expected = match &state.authentication {
        Authentication::Disabled => {
            return Ok(Caller {
                actor: Actor::new("no-auth", source),
                grant: Grant::admin(),
                token: None,
            });
        }
        Authentication::Password(expected) => expected.expose(),
    };
    let Some((_, password)) = &credentials else {
        return Err(Failure::Missing);
    };
    if equal(password, expected) || equal(&percent_decode(password), expected) {
        return Ok(Caller {
            actor: Actor::password(source),
            grant: Grant::admin(),
            token: None,
        });
    }
    if !password.starts_with(TOKEN_PREFIX) {
        return Err(Failure::WrongPassword);
    }
    match state.tokens.check(password) {
        Ok(token) => Ok(Caller {
            actor: Actor::token(&token.name, source),
            grant: token.grant.clone(),
            token: Some(token),
        }),
        Err(TokenRefusal::Unknown) => Err(Failure::UnknownToken),
        Err(TokenRefusal::Unavailable) => Err(Failure::TokensUnavailable),
    }
}

/// True for a websocket upgrade request.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// True only for a complete websocket handshake (RFC 6455 §4.1) on one of
/// the [`SOCKET_ROUTES`]: anything less is judged like any other request.
fn is_socket_upgrade(request: &Request) -> bool {
    let headers = request.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    request.method() == Method::GET
        && is_websocket(headers)
        && has_token(header::CONNECTION, "upgrade")
        && headers.contains_key(header::SEC_WEBSOCKET_KEY)
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13")
        && SOCKET_ROUTES
            .iter()
            .any(|pattern| path_matches(pattern, request.uri().path()))
}

/// Whether `path` fits a route `pattern` whose `{name}` segments match any
/// one non-empty segment.
fn path_matches(pattern: &str, path: &str) -> bool {
    let mut given = path.split('/');
    let mut wanted = pattern.split('/');
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') => {
                if g.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// Refuses what a browser sends on another site's behalf: a state-changing
/// request or a websocket upgrade whose `Sec-Fetch-Site` is not same-origin
/// (or `none`, typed by the user), or whose `Origin` is not this rack. The
/// `convox` and `slipway` CLIs send neither header.
fn same_origin(method: &Method, headers: &HeaderMap, uri: &axum::http::Uri) -> Result<(), Refusal> {
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if safe && !is_websocket(headers) {
        return Ok(());
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or_default();
        if !matches!(site, "same-origin" | "none") {
            return Err(Refusal::CrossSite {
                what: format!("Sec-Fetch-Site {site:?}"),
            });
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.to_string()));
    let matches = match (origin.split_once("://"), host) {
        (Some((scheme, authority)), Some(host)) => {
            normalise(scheme, authority) == normalise(scheme, &host)
        }
        _ => false,
    };
    if matches {
        Ok(())
    } else {
        Err(Refusal::CrossSite {
            what: format!("Origin {origin:?}"),
        })
    }
}

/// `host[:port]` lower-cased, without the scheme's default port.
fn normalise(scheme: &str, authority: &str) -> String {
    let authority = authority.trim_end_matches('/').to_ascii_lowercase();
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => "",
    };
    match authority.strip_suffix(default) {
        Some(bare) if !default.is_empty() => bare.to_owned(),
        _ => authority,
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
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

/// The source address failures are counted against: the address itself,
/// or its /64 for IPv6 (one host usually holds a whole /64).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn socket_patterns_match_whole_segments_only() {
        assert!(path_matches("/apps/{app}/logs", "/apps/myapp/logs"));
        assert!(!path_matches("/apps/{app}/logs", "/apps//logs"));
        assert!(!path_matches("/apps/{app}/logs", "/apps/myapp/logs/x"));
        assert!(!path_matches("/apps/{app}/logs", "/apps/myapp/releases"));
        assert!(path_matches(
            "/apps/{app}/builds/{id}/logs",
            "/apps/a/builds/B1/logs"
        ));
        assert!(!path_matches(
            "/apps/{app}/builds/{id}/logs",
            "/apps/a/builds/B1"
        ));
    }

    #[test]
    fn basic_scheme_is_case_insensitive() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("convox:pw");
        for scheme in ["Basic", "basic", "BASIC", "bAsIc"] {
            let h = headers(&[("authorization", &format!("{scheme} {encoded}"))]);
            assert_eq!(
                basic_credentials(&h),
                Some(("convox".into(), "pw".into())),
                "{scheme}"
            );
        }
        let h = headers(&[("authorization", &format!("Bearer {encoded}"))]);
        assert_eq!(basic_credentials(&h), None);
    }

    #[test]
    fn cross_site_browser_requests_are_refused() {
        let uri: axum::http::Uri = "/apps".parse().unwrap();
        let post = Method::POST;
        // The CLI sends neither header.
        assert!(same_origin(&post, &headers(&[("host", "rack:5443")]), &uri).is_ok());
        // Same origin, default port spelled or not.
        let same = headers(&[("host", "rack:5443"), ("origin", "http://rack:5443")]);
        assert!(same_origin(&post, &same, &uri).is_ok());
        let default = headers(&[("host", "rack"), ("origin", "https://RACK:443")]);
        assert!(same_origin(&post, &default, &uri).is_ok());
        let evil = headers(&[("host", "rack:5443"), ("origin", "http://evil.example")]);
        assert!(same_origin(&post, &evil, &uri).is_err());
        let null = headers(&[("host", "rack:5443"), ("origin", "null")]);
        assert!(same_origin(&post, &null, &uri).is_err());
        let fetched = headers(&[("host", "rack:5443"), ("sec-fetch-site", "cross-site")]);
        assert!(same_origin(&post, &fetched, &uri).is_err());
        let same_site = headers(&[("host", "rack:5443"), ("sec-fetch-site", "same-site")]);
        assert!(same_origin(&post, &same_site, &uri).is_err());
        // Reads are not state-changing, upgrades are.
        assert!(same_origin(&Method::GET, &evil, &uri).is_ok());
        let upgrade = headers(&[
            ("host", "rack:5443"),
            ("origin", "http://evil.example"),
            ("upgrade", "websocket"),
        ]);
        assert!(same_origin(&Method::GET, &upgrade, &uri).is_err());
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source_of(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
