//! The rule for user-chosen object keys (`POST /apps/{app}/objects/{key}`,
//! a build's manifest path): one rule, checked by the gateway before a byte
//! is read and by the build service before anything touches the store, so
//! the two can never disagree about which keys exist.
//!
//! A key becomes part of a store path (`apps/<app>/objects/<key>`), so it
//! must not escape it: no `..`, `.`, empty or absolute segments, no control
//! characters or backslashes, and a bounded length.

/// Longest object key accepted, in bytes.
pub const MAX_OBJECT_KEY_LEN: usize = 512;

/// An object key the rule refuses, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid object key {key:?}: {why}")]
pub struct ObjectKeyError {
    /// The key given (its first 200 characters).
    pub key: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Checks a user-chosen object key.
pub fn validate_object_key(key: &str) -> Result<(), ObjectKeyError> {
    let refuse = |why| {
        Err(ObjectKeyError {
            key: key.chars().take(200).collect(),
            why,
        })
    };
    if key.is_empty() {
        return refuse("must not be empty");
    }
    if key.len() > MAX_OBJECT_KEY_LEN {
        return refuse("longer than 512 bytes");
    }
    if key.starts_with('/') {
        return refuse("must be relative");
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return refuse("control characters and backslashes are not allowed");
    }
    for segment in key.split('/') {
        match segment {
            "" => return refuse("empty path segment"),
            "." | ".." => return refuse("'.' and '..' segments are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "a//b",
            "a/",
            "./a",
            "a\\b",
            "a\nb",
            "a\0b",
        ] {
            assert!(validate_object_key(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["tmp/0123abcd.tgz", "source.tgz", "a/b/c.tar.gz", "a..b"] {
            validate_object_key(good).unwrap();
        }
    }

    #[test]
    fn the_length_limit_is_inclusive() {
        validate_object_key(&"k".repeat(MAX_OBJECT_KEY_LEN)).unwrap();
        let err = validate_object_key(&"k".repeat(MAX_OBJECT_KEY_LEN + 1)).unwrap_err();
        assert_eq!(err.why, "longer than 512 bytes");
        assert_eq!(err.key.len(), 200, "the echoed key is cut");
    }

    #[test]
    fn the_message_names_the_key_and_the_reason() {
        assert_eq!(
            validate_object_key("tmp/../x.tgz").unwrap_err().to_string(),
            r#"invalid object key "tmp/../x.tgz": '.' and '..' segments are not allowed"#
        );
    }
}
