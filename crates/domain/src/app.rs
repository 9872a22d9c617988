//! Application names.
//!
//! An app name ends up in Kubernetes namespaces (`<rack>-<app>`), hostnames, database
//! keys and URL paths, so it is restricted to a DNS-label-friendly alphabet: lowercase
//! letters, digits and `-`, starting with a letter and not ending with `-`. `rack` and
//! `system` are reserved because the rack itself uses them. Validating once, here, means
//! no other layer has to guess what an unchecked string might contain.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest allowed app name, in characters.
pub const MAX_APP_NAME_LEN: usize = 30;

/// Names the rack keeps for itself.
pub const RESERVED_APP_NAMES: [&str; 2] = ["rack", "system"];

/// Longest input echoed back in an error message; longer input is shortened.
const MAX_ECHO: usize = 40;

/// Why a string is not a usable app name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppNameError {
    /// The name was empty.
    #[error("app name is empty")]
    Empty,
    /// The name has characters outside `[a-z0-9-]`, does not start with a letter, or is too long.
    #[error(
        "invalid app name {input:?}: use lowercase letters, digits and '-', starting with a letter, at most 30 characters"
    )]
    InvalidCharacters {
        /// The rejected input (shortened if very long).
        input: String,
    },
    /// The name is longer than [`MAX_APP_NAME_LEN`].
    #[error("invalid app name {input:?}: at most 30 characters, got {len}")]
    TooLong {
        /// The rejected input (shortened if very long).
        input: String,
        /// How many characters the input had.
        len: usize,
    },
    /// The name ends with `-`, which DNS labels forbid.
    #[error("invalid app name {input:?}: must not end with '-'")]
    TrailingHyphen {
        /// The rejected input.
        input: String,
    },
    /// The name is one the rack keeps for itself.
    #[error("app name is reserved: {name}")]
    Reserved {
        /// The reserved name.
        name: String,
    },
}

/// A validated application name, e.g. `myapp` or `billing-api`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppName(String);

/// Shortens `input` for an error message.
fn echo(input: &str) -> String {
    if input.chars().count() <= MAX_ECHO {
        input.to_owned()
    } else {
        let mut short: String = input.chars().take(MAX_ECHO).collect();
        short.push('…');
        short
    }
}

impl AppName {
    /// Validates `input` as an app name.
    ///
    /// Input is taken as is: no trimming or case folding, so `MyApp` is rejected rather
    /// than silently becoming a different name from the one the user typed.
    pub fn parse(input: &str) -> Result<Self, AppNameError> {
        if input.is_empty() {
            return Err(AppNameError::Empty);
        }
        let mut chars = input.chars();
        let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !starts_with_letter || !rest_ok {
            return Err(AppNameError::InvalidCharacters { input: echo(input) });
        }
        // Only ASCII is left at this point, so byte length is character length.
        if input.len() > MAX_APP_NAME_LEN {
            return Err(AppNameError::TooLong {
                input: echo(input),
                len: input.len(),
            });
        }
        if input.ends_with('-') {
            return Err(AppNameError::TrailingHyphen {
                input: input.to_owned(),
            });
        }
        if RESERVED_APP_NAMES.contains(&input) {
            return Err(AppNameError::Reserved {
                name: input.to_owned(),
            });
        }
        Ok(Self(input.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the name and returns its text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AppName {
    type Err = AppNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for AppName {
    type Error = AppNameError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl TryFrom<&str> for AppName {
    type Error = AppNameError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<AppName> for String {
    fn from(name: AppName) -> String {
        name.0
    }
}

impl AsRef<str> for AppName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_names() {
        for ok in [
            "myapp",
            "a",
            "billing-api",
            "app2",
            "a-b-c",
            "x--y",
            "web1-2",
        ] {
            assert_eq!(AppName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn accepts_exactly_thirty_characters() {
        let name = format!("a{}", "b".repeat(29));
        assert_eq!(AppName::parse(&name).unwrap().into_string(), name);
    }

    #[test]
    fn rejects_thirty_one_characters() {
        let name = format!("a{}", "b".repeat(30));
        let err = AppName::parse(&name).unwrap_err();
        assert_eq!(
            err,
            AppNameError::TooLong {
                input: name.clone(),
                len: 31
            }
        );
        assert_eq!(
            err.to_string(),
            format!("invalid app name \"{name}\": at most 30 characters, got 31")
        );
    }

    #[test]
    fn rejects_bad_characters_with_the_rule_in_the_message() {
        let err = AppName::parse("My_App").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid app name \"My_App\": use lowercase letters, digits and '-', starting with a letter, at most 30 characters"
        );
        for bad in [
            "1app", "-app", "app_x", "App", "app.x", "app x", " app", "app/", "ápp",
        ] {
            assert!(
                matches!(
                    AppName::parse(bad),
                    Err(AppNameError::InvalidCharacters { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(AppName::parse(""), Err(AppNameError::Empty));
        assert_eq!(AppNameError::Empty.to_string(), "app name is empty");
    }

    #[test]
    fn rejects_trailing_hyphen() {
        let err = AppName::parse("app-").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid app name \"app-\": must not end with '-'"
        );
    }

    #[test]
    fn rejects_reserved_names() {
        assert_eq!(
            AppName::parse("rack").unwrap_err().to_string(),
            "app name is reserved: rack"
        );
        assert_eq!(
            AppName::parse("system").unwrap_err().to_string(),
            "app name is reserved: system"
        );
        // Only the exact names are reserved.
        assert!(AppName::parse("racks").is_ok());
        assert!(AppName::parse("system-2").is_ok());
    }

    #[test]
    fn long_garbage_is_shortened_in_errors() {
        let msg = AppName::parse(&"X".repeat(5000)).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn display_fromstr_and_serde() {
        let name: AppName = "myapp".parse().unwrap();
        assert_eq!(name.to_string(), "myapp");
        assert_eq!(serde_json::to_string(&name).unwrap(), r#""myapp""#);
        let back: AppName = serde_json::from_str(r#""myapp""#).unwrap();
        assert_eq!(back, name);
        let err = serde_json::from_str::<AppName>(r#""rack""#).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        let s: String = name.clone().into();
        assert_eq!(s, "myapp");
        assert_eq!(AppName::try_from(s).unwrap(), name);
    }
}
