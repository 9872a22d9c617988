//! Build and release identifiers.
//!
//! Convox names a build `B` and a release `R` followed by ten random capital letters
//! (`BNWASACYDUC`, `RIISQQWMSOI`). The `convox` CLI echoes whatever the server returns,
//! but users type these ids back in, often in lower case because the real rack looks
//! them up case-insensitively. So parsing accepts either case and normalises to upper
//! case, and generation draws from a CSPRNG because ids appear in URLs and must not be
//! guessable from one another.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Number of random letters after the one-letter prefix.
const RANDOM_LEN: usize = 10;

/// Longest input echoed back in an error message; longer input is shortened.
const MAX_ECHO: usize = 40;

/// Why a string is not a valid build or release id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The text is not `R` followed by ten letters.
    #[error("invalid release id {input:?}: expected R followed by 10 letters")]
    InvalidReleaseId {
        /// The rejected input (shortened if very long).
        input: String,
    },
    /// The text is not `B` followed by ten letters.
    #[error("invalid build id {input:?}: expected B followed by 10 letters")]
    InvalidBuildId {
        /// The rejected input (shortened if very long).
        input: String,
    },
    /// The text is not `P` followed by 32 hexadecimal digits.
    #[error("invalid promotion id {input:?}: expected P followed by 32 hexadecimal digits")]
    InvalidPromotionId {
        /// The rejected input (shortened if very long).
        input: String,
    },
}

/// Shortens `input` for an error message so a huge bogus id cannot flood a log line.
fn echo(input: &str) -> String {
    if input.chars().count() <= MAX_ECHO {
        input.to_owned()
    } else {
        let mut short: String = input.chars().take(MAX_ECHO).collect();
        short.push('…');
        short
    }
}

/// Draws `prefix` plus ten uniformly random letters A–Z from the thread-local CSPRNG.
fn generate_with(prefix: char) -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(1 + RANDOM_LEN);
    id.push(prefix);
    for _ in 0..RANDOM_LEN {
        id.push(char::from(rng.random_range(b'A'..=b'Z')));
    }
    id
}

/// Returns the upper-cased id if `input` is `prefix` (either case) plus ten ASCII letters.
fn normalise(input: &str, prefix: char) -> Option<String> {
    let bytes = input.as_bytes();
    if bytes.len() != 1 + RANDOM_LEN {
        return None;
    }
    if !bytes[0].eq_ignore_ascii_case(&(prefix as u8)) {
        return None;
    }
    if !bytes.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    Some(input.to_ascii_uppercase())
}

macro_rules! define_id {
    (
        $(#[$meta:meta])*
        $name:ident, $prefix:literal, $variant:ident, $noun:literal
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("Creates a fresh random ", $noun, " id: `", $prefix, "` plus ten letters A–Z.")]
            pub fn generate() -> Self {
                Self(generate_with($prefix))
            }

            #[doc = concat!("Parses a ", $noun, " id, accepting lower case and normalising it to upper case.")]
            pub fn parse(input: &str) -> Result<Self, IdError> {
                normalise(input, $prefix)
                    .map(Self)
                    .ok_or_else(|| IdError::$variant { input: echo(input) })
            }

            /// The id as text, always upper case.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Consumes the id and returns its text.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;

            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

define_id!(
    /// Identifies a release: `R` followed by ten capital letters, e.g. `RIISQQWMSOI`.
    ReleaseId, 'R', InvalidReleaseId, "release"
);

define_id!(
    /// Identifies a build: `B` followed by ten capital letters, e.g. `BNWASACYDUC`.
    BuildId, 'B', InvalidBuildId, "build"
);

/// Number of hexadecimal digits after a promotion id's `P`.
const PROMOTION_HEX_LEN: usize = 32;

/// Identifies a promotion (and the rollout that carries it out): `P`
/// followed by 32 lower-case hexadecimal digits, 128 random bits, e.g.
/// `P3f1c9e0a4b7d42c8a1e5f60b9c2d7e31`. Promotions are not typed back by
/// hand the way releases are, so the id is long rather than short; parsing
/// accepts either case and normalises to `P` plus lower case.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PromotionId(String);

impl PromotionId {
    /// Creates a fresh id from the thread-local CSPRNG.
    pub fn generate() -> Self {
        let bits: u128 = rand::rng().random();
        Self(format!("P{bits:032x}"))
    }

    /// Parses a promotion id.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let bytes = input.as_bytes();
        let shaped = bytes.len() == 1 + PROMOTION_HEX_LEN
            && bytes[0].eq_ignore_ascii_case(&b'P')
            && bytes[1..].iter().all(u8::is_ascii_hexdigit);
        if !shaped {
            return Err(IdError::InvalidPromotionId { input: echo(input) });
        }
        Ok(Self(format!("P{}", input[1..].to_ascii_lowercase())))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the id and returns its text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for PromotionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PromotionId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for PromotionId {
    type Error = IdError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PromotionId> for String {
    fn from(id: PromotionId) -> String {
        id.0
    }
}

impl AsRef<str> for PromotionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn assert_shape(id: &str, prefix: char) {
        assert_eq!(id.len(), 11, "{id}");
        assert!(id.starts_with(prefix), "{id}");
        assert!(id[1..].bytes().all(|b| b.is_ascii_uppercase()), "{id}");
    }

    #[test]
    fn generated_ids_have_the_convox_shape() {
        for _ in 0..200 {
            assert_shape(ReleaseId::generate().as_str(), 'R');
            assert_shape(BuildId::generate().as_str(), 'B');
        }
    }

    #[test]
    fn generated_ids_do_not_repeat() {
        let ids: HashSet<_> = (0..1000).map(|_| ReleaseId::generate()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn generated_ids_use_the_whole_alphabet() {
        let mut seen = HashSet::new();
        for _ in 0..500 {
            seen.extend(BuildId::generate().as_str()[1..].chars());
        }
        assert_eq!(seen.len(), 26);
    }

    #[test]
    fn generated_ids_parse_back() {
        let id = ReleaseId::generate();
        assert_eq!(ReleaseId::parse(id.as_str()).unwrap(), id);
        let id = BuildId::generate();
        assert_eq!(id.as_str().parse::<BuildId>().unwrap(), id);
    }

    #[test]
    fn parse_accepts_upper_case() {
        let id = ReleaseId::parse("RIISQQWMSOI").unwrap();
        assert_eq!(id.as_str(), "RIISQQWMSOI");
        assert_eq!(id.to_string(), "RIISQQWMSOI");
    }

    #[test]
    fn parse_upper_cases_lower_and_mixed_case() {
        assert_eq!(
            ReleaseId::parse("riisqqwmsoi").unwrap().as_str(),
            "RIISQQWMSOI"
        );
        assert_eq!(
            BuildId::parse("bNwAsAcYdUc").unwrap().into_string(),
            "BNWASACYDUC"
        );
    }

    #[test]
    fn parse_rejects_wrong_prefix() {
        let err = ReleaseId::parse("BNWASACYDUC").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid release id "BNWASACYDUC": expected R followed by 10 letters"#
        );
        let err = BuildId::parse("RIISQQWMSOI").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid build id "RIISQQWMSOI": expected B followed by 10 letters"#
        );
    }

    #[test]
    fn parse_rejects_wrong_length_and_characters() {
        for bad in [
            "",
            "R",
            "xyz",
            "RABCDEFGHI",
            "RABCDEFGHIJK",
            "RABCDEFGH1J",
            "RABCDEFGH-J",
            "RABCDEFGHÉ",
            " RABCDEFGHIJ",
        ] {
            let err = ReleaseId::parse(bad).unwrap_err();
            assert_eq!(
                err,
                IdError::InvalidReleaseId {
                    input: bad.to_owned()
                }
            );
        }
        assert_eq!(
            ReleaseId::parse("xyz").unwrap_err().to_string(),
            r#"invalid release id "xyz": expected R followed by 10 letters"#
        );
    }

    #[test]
    fn errors_shorten_huge_input() {
        let huge = "R".repeat(10_000);
        let msg = ReleaseId::parse(&huge).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.contains('…'));
    }

    #[test]
    fn serde_round_trips_as_a_plain_string() {
        let id = ReleaseId::parse("RABCDEFGHIJ").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, r#""RABCDEFGHIJ""#);
        let back: ReleaseId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        let lower: BuildId = serde_json::from_str(r#""babcdefghij""#).unwrap();
        assert_eq!(lower.as_str(), "BABCDEFGHIJ");
    }

    #[test]
    fn serde_rejects_invalid_ids() {
        let err = serde_json::from_str::<ReleaseId>(r#""nope""#).unwrap_err();
        assert!(err.to_string().contains("invalid release id"), "{err}");
        assert!(serde_json::from_str::<BuildId>(r#""RABCDEFGHIJ""#).is_err());
    }

    #[test]
    fn ids_order_by_text() {
        let a = BuildId::parse("BAAAAAAAAAA").unwrap();
        let b = BuildId::parse("BAAAAAAAAAB").unwrap();
        assert!(a < b);
    }

    #[test]
    fn try_from_and_into_string() {
        let id = BuildId::try_from("BABCDEFGHIJ").unwrap();
        let s: String = id.clone().into();
        assert_eq!(s, "BABCDEFGHIJ");
        assert_eq!(BuildId::try_from(s).unwrap(), id);
        assert_eq!(id.as_ref(), "BABCDEFGHIJ");
    }

    #[test]
    fn promotion_ids_are_p_and_32_hex_digits_and_parse_back() {
        let id = PromotionId::generate();
        assert_eq!(id.as_str().len(), 33, "{id}");
        assert!(id.as_str().starts_with('P'), "{id}");
        assert_eq!(PromotionId::parse(id.as_str()).unwrap(), id);
        assert_ne!(PromotionId::generate(), id);
        let upper = format!("p{}", id.as_str()[1..].to_ascii_uppercase());
        assert_eq!(PromotionId::parse(&upper).unwrap(), id);
    }

    #[test]
    fn malformed_promotion_ids_are_refused_with_the_shape() {
        for bad in [
            "",
            "P",
            "Pxyz",
            "myapp-p1",
            "RIISQQWMSOI",
            &format!("P{}", "0".repeat(33)),
        ] {
            let err = PromotionId::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("P followed by 32 hexadecimal digits"),
                "{bad}: {err}"
            );
        }
    }
}
