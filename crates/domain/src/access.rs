//! Who may do what: the roles of scoped tokens, the app patterns that scope
//! them, token names, and the rule that decides a request ([`Grant::allows`]).
//! The gateway checks every request with it; the release service validates
//! tokens with the same types when they are created.

use std::fmt;
use std::str::FromStr;

/// What a credential may do. Ordered: each role includes the ones below.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Every GET and stream.
    Read,
    /// Also builds, env changes, promote, rollback, cancel, run, scale and
    /// restart on the apps in scope.
    Deploy,
    /// Everything, on every app, including creating and deleting apps and
    /// managing tokens.
    Admin,
}

impl Role {
    /// `read`, `deploy` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Deploy => "deploy",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = AccessError;

    fn from_str(s: &str) -> Result<Self, AccessError> {
        match s {
            "read" => Ok(Self::Read),
            "deploy" => Ok(Self::Deploy),
            "admin" => Ok(Self::Admin),
            other => Err(AccessError(format!(
                "unknown role {other:?}: use read, deploy or admin"
            ))),
        }
    }
}

/// A refused token name, role or pattern; the message says what is allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AccessError(pub String);

/// Longest token name.
pub const MAX_TOKEN_NAME: usize = 63;

/// Checks a token name: 1 to 63 of lowercase letters, digits, `-`, `_`
/// and `.`, starting with a letter or digit (it appears in URLs, metadata,
/// log lines and the audit trail).
pub fn check_token_name(name: &str) -> Result<(), AccessError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TOKEN_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(AccessError(format!(
            "invalid token name {name:?}: 1 to {MAX_TOKEN_NAME} lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

/// An app name pattern: an app name, or one with `*` standing for any run
/// of characters (`web`, `web-*`, `*-staging`, `*`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AppPattern(String);

impl AppPattern {
    /// Parses a pattern: app-name characters (lowercase letters, digits,
    /// `-`) and `*`, 1 to 63 of them.
    pub fn parse(text: &str) -> Result<Self, AccessError> {
        let ok = !text.is_empty()
            && text.len() <= 63
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*');
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(AccessError(format!(
                "invalid app pattern {text:?}: an app name, with '*' for any characters (web, web-*)"
            )))
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `app` fits the pattern.
    pub fn matches(&self, app: &str) -> bool {
        glob(self.0.as_bytes(), app.as_bytes())
    }
}

impl fmt::Display for AppPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `*`-only glob matching, iterative (no backtracking blow-up).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// What a credential holds: a role on a set of apps (every app when the
/// set is empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The role.
    pub role: Role,
    /// The apps it applies to; empty: every app.
    pub apps: Vec<AppPattern>,
}

/// What a request needs: a role, on one app or on the whole rack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    /// The least role that may do it.
    pub role: Role,
    /// The app it touches; `None` for rack-wide requests (listing apps,
    /// creating one, tokens, the rack-wide audit trail).
    pub app: Option<String>,
    /// What it does, for the refusal (`deleting apps`, `promoting`).
    pub what: &'static str,
}

impl Grant {
    /// The rack password's grant: admin on everything.
    pub fn admin() -> Self {
        Self {
            role: Role::Admin,
            apps: Vec::new(),
        }
    }

    /// Whether the grant covers every app.
    pub fn every_app(&self) -> bool {
        self.apps.is_empty()
    }

    /// Whether `app` is in scope.
    pub fn covers(&self, app: &str) -> bool {
        self.every_app() || self.apps.iter().any(|p| p.matches(app))
    }

    /// The scope as written (`web, web-*`), or `every app`.
    pub fn scope(&self) -> String {
        if self.every_app() {
            "every app".to_owned()
        } else {
            self.apps
                .iter()
                .map(AppPattern::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    /// Decides `need`. `Err` carries the refusal sentence, naming the
    /// credential (`token ci-web`), its role and scope, the app, and what
    /// the request needs.
    pub fn allows(&self, who: &str, need: &Need) -> Result<(), String> {
        let in_scope = match &need.app {
            Some(app) => self.covers(app),
            // Rack-wide requests: only a grant on every app reaches them,
            // unless reading (listing is filtered to the scope).
            None => self.every_app() || need.role == Role::Read,
        };
        if self.role >= need.role && in_scope {
            return Ok(());
        }
        let on = match &need.app {
            Some(app) => app.clone(),
            None => "the rack".to_owned(),
        };
        if self.role < need.role {
            Err(format!(
                "{who} has role {} on {}; {} needs {}",
                self.role,
                self.scope(),
                need.what,
                need.role
            ))
        } else {
            Err(format!(
                "{who} has role {} on {}, not on {on}; {} needs {} on {on}",
                self.role,
                self.scope(),
                need.what,
                need.role
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(role: Role, apps: &[&str]) -> Grant {
        Grant {
            role,
            apps: apps.iter().map(|a| AppPattern::parse(a).unwrap()).collect(),
        }
    }

    fn need(role: Role, app: Option<&str>, what: &'static str) -> Need {
        Need {
            role,
            app: app.map(str::to_owned),
            what,
        }
    }

    #[test]
    fn patterns_match_whole_names() {
        let p = AppPattern::parse("web-*").unwrap();
        assert!(p.matches("web-1"));
        assert!(p.matches("web-"));
        assert!(!p.matches("web"));
        assert!(!p.matches("api-web-1"));
        let exact = AppPattern::parse("web").unwrap();
        assert!(exact.matches("web") && !exact.matches("web2"));
        let mid = AppPattern::parse("*-stag*ing").unwrap();
        assert!(mid.matches("a-staging") && mid.matches("a-stagXing"));
        assert!(!mid.matches("a-prod"));
        assert!(AppPattern::parse("*").unwrap().matches("anything"));
        assert!(AppPattern::parse("Web").is_err());
        assert!(AppPattern::parse("").is_err());
        assert!(AppPattern::parse("a,b").is_err());
    }

    #[test]
    fn roles_parse_and_order() {
        assert_eq!("deploy".parse::<Role>().unwrap(), Role::Deploy);
        assert!("root".parse::<Role>().is_err());
        assert!(Role::Read < Role::Deploy && Role::Deploy < Role::Admin);
    }

    #[test]
    fn token_names_are_plain() {
        assert!(check_token_name("ci-web").is_ok());
        assert!(check_token_name("a.b_c-1").is_ok());
        for bad in ["", "-x", "Ci", "a b", "a:b", &"x".repeat(64)] {
            assert!(check_token_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refusals_name_the_token_its_role_the_app_and_the_need() {
        let deploy = grant(Role::Deploy, &["web"]);
        let refusal = deploy
            .allows(
                "token ci-web",
                &need(Role::Admin, Some("web"), "deleting apps"),
            )
            .unwrap_err();
        assert_eq!(
            refusal,
            "token ci-web has role deploy on web; deleting apps needs admin"
        );
        assert!(
            deploy
                .allows(
                    "token ci-web",
                    &need(Role::Deploy, Some("web"), "promoting")
                )
                .is_ok()
        );
        let other = deploy
            .allows(
                "token ci-web",
                &need(Role::Deploy, Some("api"), "promoting"),
            )
            .unwrap_err();
        assert!(other.contains("not on api"), "{other}");
        // Reads of rack-wide lists are allowed (they are filtered); other
        // rack-wide requests need a grant on every app.
        assert!(
            deploy
                .allows("t", &need(Role::Read, None, "listing apps"))
                .is_ok()
        );
        assert!(
            grant(Role::Admin, &[])
                .allows("t", &need(Role::Admin, None, "creating apps"))
                .is_ok()
        );
        let read = grant(Role::Read, &[]);
        assert!(
            read.allows("t", &need(Role::Read, Some("x"), "reading"))
                .is_ok()
        );
        assert!(
            read.allows("t", &need(Role::Deploy, Some("x"), "promoting"))
                .unwrap_err()
                .contains("needs deploy")
        );
    }
}
