//! The rules every console response and form obey: security headers on
//! every answer, a same-origin check and a CSRF token on every POST, and
//! the session cookie's attributes.

use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq as _;

/// No inline script or style, nothing from elsewhere, no framing (a
/// Promote button clicked through a transparent frame is the threat).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// The middleware around every console route: the security headers, and
/// `no-store` on anything that does not say otherwise (pages carry
/// environment keys and CSRF tokens; the back button after logout must not
/// show them).
pub async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name: HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    response
}

/// Why a POST was refused before it did anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forbidden {
    /// `Sec-Fetch-Site` or `Origin` says another site sent it.
    CrossSite(String),
    /// No CSRF token, or not this session's.
    Token,
    /// No session (or an expired one).
    NoSession,
    /// The console is read-only.
    ReadOnly,
}

impl IntoResponse for Forbidden {
    fn into_response(self) -> Response {
        let why = match &self {
            Self::CrossSite(what) => format!("refused: a cross-site request ({what})"),
            Self::Token => "refused: the form's security token is missing or stale; \
                reload the page and submit it again"
                .to_owned(),
            Self::NoSession => "refused: you are not logged in".to_owned(),
            Self::ReadOnly => "refused: this console is read-only".to_owned(),
        };
        tracing::info!(reason = %why, "console request refused");
        (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            why,
        )
            .into_response()
    }
}

/// Refuses a state-changing request another site made a browser send:
/// `Sec-Fetch-Site` present and not `same-origin`, or `Origin` present and
/// not this host. (Both absent: not a modern browser's form post, and the
/// CSRF token still has to match.)
pub fn same_origin(method: &Method, headers: &HeaderMap) -> Result<(), Forbidden> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or_default();
        if site != "same-origin" {
            return Err(Forbidden::CrossSite(format!("Sec-Fetch-Site {site:?}")));
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or_default();
    if !host.is_empty() && same_authority(authority, host) {
        Ok(())
    } else {
        Err(Forbidden::CrossSite(format!("Origin {origin:?}")))
    }
}

/// `Origin`'s authority against `Host`, case-insensitively, a default port
/// spelled or not.
fn same_authority(origin: &str, host: &str) -> bool {
    let strip = |a: &str| {
        let a = a.trim_end_matches('/').to_ascii_lowercase();
        match a.strip_suffix(":80").or_else(|| a.strip_suffix(":443")) {
            Some(bare) => bare.to_owned(),
            None => a,
        }
    };
    strip(origin) == strip(host)
}

/// Constant-time equality of a submitted token and the expected one.
pub fn token_matches(given: Option<&str>, expected: &str) -> bool {
    match given {
        Some(given) => {
            !expected.is_empty()
                && given.len() == expected.len()
                && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
        }
        None => false,
    }
}

/// How the session cookie is named and scoped.
#[derive(Clone, Copy, Debug)]
pub struct CookiePolicy {
    /// Served over TLS (directly or behind a TLS-terminating proxy): the
    /// `__Host-` cookie with `Secure`.
    pub secure: bool,
}

impl CookiePolicy {
    /// The session cookie's name.
    pub fn session_name(&self) -> &'static str {
        if self.secure {
            "__Host-slipway_session"
        } else {
            "slipway_session"
        }
    }

    /// The login form's pre-session cookie's name.
    pub fn login_name(&self) -> &'static str {
        if self.secure {
            "__Host-slipway_login"
        } else {
            "slipway_login"
        }
    }

    /// `Set-Cookie` for a cookie of this policy (`max_age` `None`: a
    /// browser-session cookie; `Some(0)`: delete it).
    pub fn set_cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
        let scope = if self.secure {
            // `__Host-` requires Path=/ and Secure, and no Domain.
            "Path=/; Secure"
        } else {
            "Path=/console"
        };
        let age = max_age
            .map(|s| format!("; Max-Age={s}"))
            .unwrap_or_default();
        HeaderValue::from_str(&format!(
            "{name}={value}; {scope}; HttpOnly; SameSite=Strict{age}"
        ))
        .expect("cookie text is ASCII")
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn posts_from_elsewhere_are_refused() {
        let post = Method::POST;
        assert!(same_origin(&post, &headers(&[("host", "rack:1")])).is_ok());
        let same = headers(&[
            ("host", "rack:1"),
            ("origin", "http://rack:1"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(same_origin(&post, &same).is_ok());
        for bad in [
            headers(&[("host", "rack:1"), ("origin", "http://evil")]),
            headers(&[("host", "rack:1"), ("origin", "null")]),
            headers(&[("host", "rack:1"), ("sec-fetch-site", "cross-site")]),
            headers(&[("host", "rack:1"), ("sec-fetch-site", "same-site")]),
            // Typed in the address bar is fine for a GET, never a POST.
            headers(&[("host", "rack:1"), ("sec-fetch-site", "none")]),
            headers(&[("host", "rack:1"), ("origin", "http://rack:2")]),
        ] {
            assert!(same_origin(&post, &bad).is_err(), "{bad:?}");
        }
        let evil = headers(&[("host", "rack:1"), ("origin", "http://evil")]);
        assert!(same_origin(&Method::GET, &evil).is_ok());
        assert!(same_authority("RACK:80", "rack"));
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches(Some("abc"), "abc"));
        assert!(!token_matches(Some("abd"), "abc"));
        assert!(!token_matches(Some("ab"), "abc"));
        assert!(!token_matches(None, "abc"));
        assert!(!token_matches(Some(""), ""));
    }

    #[test]
    fn cookie_attributes_follow_the_transport() {
        let plain = CookiePolicy { secure: false };
        assert_eq!(
            plain.set_cookie(plain.session_name(), "v", None),
            "slipway_session=v; Path=/console; HttpOnly; SameSite=Strict"
        );
        let tls = CookiePolicy { secure: true };
        assert_eq!(
            tls.set_cookie(tls.session_name(), "v", Some(0)),
            "__Host-slipway_session=v; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
        );
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = headers(&[("cookie", "a=1; slipway_session=xyz"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, "slipway_session"), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "session"), None);
    }
}
