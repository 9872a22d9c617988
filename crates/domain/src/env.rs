//! Release environments: parsing, validation, the wire format and the diff Convox
//! shows as a release description.
//!
//! An [`Env`] is a sorted map of variable names to values. Values are often secrets
//! (database URLs, API tokens), so nothing in this module ever prints one: `Debug`
//! shows keys only, and every error names a line number or a key, never a value.
//!
//! There are two parsers on purpose. [`Env::parse`] reads what people type (`env set`
//! arguments, stdin, the file `env edit` opens) and is strict and helpful: comments,
//! `export`, quoting, and errors with line numbers. [`Env::parse_wire`] reads the
//! `K=V\n…` text the Convox CLI sends and stores: one variable per line, the value
//! verbatim, except that a value which cannot sit on one line as it is travels in
//! bash's ANSI-C quoting, `$'…'` (see [`Env::to_wire`]). A malformed line is refused,
//! naming its number, never silently dropped.
//!
//! Inside Slipway an env is always a map ([`Env`], `map<string, string>` in the
//! protos); the text form exists only at the Convox edge (the gateway) and in the
//! CLI's display.

use std::collections::BTreeMap;
use std::fmt;

/// Longest allowed env key, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// Largest variable, counted as the `KEY=VALUE` text a process receives, in bytes.
///
/// With its terminating NUL this is 128 KiB, Linux's limit on one environment string
/// (`MAX_ARG_STRLEN`): a longer variable makes every `exec` of the app fail with
/// `E2BIG`, so it is refused when set rather than at every deploy.
pub const MAX_VAR_BYTES: usize = 128 * 1024 - 1;

/// Largest environment, in bytes, counted as a process receives it: every `KEY=VALUE`
/// plus its terminating NUL (see [`Env::bytes`]). 256 KiB is far more than apps use,
/// fits any process's argument space, and keeps a release, and a page of releases,
/// well inside one gRPC message.
pub const MAX_ENV_BYTES: usize = 256 * 1024;

/// Longest key echoed back in an error message; longer keys are shortened.
const MAX_ECHO: usize = 60;

/// Why an environment, or one of its keys, was rejected.
///
/// No variant carries a value: values may be secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A key was the empty string.
    #[error("empty env key")]
    EmptyKey,
    /// A key used characters outside `[A-Za-z0-9_]` or started with a digit.
    #[error(
        "invalid env key {key:?}: keys start with a letter or '_' and contain only letters, digits and '_'"
    )]
    InvalidKey {
        /// The rejected key (shortened if very long).
        key: String,
    },
    /// A key was longer than [`MAX_KEY_LEN`] bytes.
    #[error("invalid env key {key:?}: keys are at most 256 characters, got {len}")]
    KeyTooLong {
        /// The start of the rejected key.
        key: String,
        /// The key's length in bytes.
        len: usize,
    },
    /// A non-blank, non-comment line had no `=`.
    #[error("line {line}: expected KEY=VALUE")]
    MissingEquals {
        /// 1-based line number.
        line: usize,
    },
    /// A quoted value was never closed.
    #[error("line {line}: the value of {key} opens a quote that is never closed")]
    UnterminatedQuote {
        /// 1-based line number.
        line: usize,
        /// The key whose value is malformed.
        key: String,
    },
    /// Something followed the closing quote of a quoted value.
    #[error("line {line}: the value of {key} has text after its closing quote")]
    TextAfterQuote {
        /// 1-based line number.
        line: usize,
        /// The key whose value is malformed.
        key: String,
    },
    /// A key on a given line was invalid; `error` says why.
    #[error("line {line}: {error}")]
    AtLine {
        /// 1-based line number.
        line: usize,
        /// What was wrong with the key.
        error: Box<EnvError>,
    },
    /// A key appeared on two lines of wire text.
    #[error("line {line}: duplicate env key {key} (first set on line {first})")]
    DuplicateKey {
        /// 1-based line number of the repeat.
        line: usize,
        /// The repeated key.
        key: String,
        /// 1-based line number where the key was first set.
        first: usize,
    },
    /// A `$'…'` wire value was malformed: never closed, text after the closing
    /// quote, or an escape other than `\\ \' \" \n \r \t`.
    #[error(
        "line {line}: the value of {key} starts with $' but is not a valid $'…' quoted value ({problem})"
    )]
    BadWireQuote {
        /// 1-based line number.
        line: usize,
        /// The key whose value is malformed.
        key: String,
        /// What is wrong, without the value.
        problem: &'static str,
    },
    /// The same key was both set and unset in one change.
    #[error("env key {key:?} is both set and unset")]
    BothSetAndUnset {
        /// The conflicting key.
        key: String,
    },
    /// A value contained a NUL byte, which no process environment can carry.
    #[error("env {key}: the value contains a NUL byte, which a process environment cannot carry")]
    NulInValue {
        /// The key whose value holds the NUL.
        key: String,
    },
    /// One variable was larger than [`MAX_VAR_BYTES`].
    #[error(
        "env {key} is too large: {key}=VALUE is {len} bytes, the limit is {max} bytes (128 KiB with its terminating NUL, the most a process accepts for one variable)",
        max = MAX_VAR_BYTES
    )]
    VarTooLarge {
        /// The key of the oversize variable.
        key: String,
        /// Its `KEY=VALUE` length in bytes.
        len: usize,
    },
    /// The whole environment was larger than [`MAX_ENV_BYTES`].
    #[error(
        "the env is too large: {len} bytes (KEY=VALUE plus one byte per variable), the limit is {max} bytes (256 KiB); the largest variable is {largest}",
        max = MAX_ENV_BYTES
    )]
    TooLarge {
        /// The env's size as [`Env::bytes`] counts it.
        len: usize,
        /// The key of its largest variable, a hint at what to move out.
        largest: String,
    },
}

/// Shortens a key for an error message.
fn echo(key: &str) -> String {
    if key.chars().count() <= MAX_ECHO {
        key.to_owned()
    } else {
        let mut short: String = key.chars().take(MAX_ECHO).collect();
        short.push('…');
        short
    }
}

/// Checks that `key` is a usable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`,
/// at most [`MAX_KEY_LEN`] bytes.
pub fn validate_key(key: &str) -> Result<(), EnvError> {
    if key.is_empty() {
        return Err(EnvError::EmptyKey);
    }
    let mut bytes = key.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !first_ok || !rest_ok {
        return Err(EnvError::InvalidKey { key: echo(key) });
    }
    if key.len() > MAX_KEY_LEN {
        return Err(EnvError::KeyTooLong {
            key: echo(key),
            len: key.len(),
        });
    }
    Ok(())
}

/// A release environment: variable names mapped to values, kept sorted by name.
///
/// Every key in an `Env` has passed [`validate_key`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl fmt::Debug for Env {
    /// Prints the keys only; values may be secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env")
            .field("keys", &self.vars.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Env {
    /// An empty environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps an existing map after checking every key.
    pub fn from_map(vars: BTreeMap<String, String>) -> Result<Self, EnvError> {
        for key in vars.keys() {
            validate_key(key)?;
        }
        Ok(Self { vars })
    }

    /// Parses user-written env text: one `KEY=VALUE` per line.
    ///
    /// - Blank lines and lines whose first non-blank character is `#` are skipped.
    /// - A leading `export ` is accepted and ignored, so shell env files work.
    /// - The key is trimmed; it must pass [`validate_key`].
    /// - The value is everything after the first `=`, verbatim (`FOO=` gives an empty
    ///   value), unless it is wrapped in quotes: `"..."` understands `\n`, `\"` and
    ///   `\\` escapes (other backslashes are kept), `'...'` is taken literally.
    /// - When a key repeats, the last line wins.
    ///
    /// Errors name the 1-based line number and, where relevant, the key.
    pub fn parse(text: &str) -> Result<Self, EnvError> {
        let mut vars = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim_start();
            if trimmed.trim_end().is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let trimmed = strip_export(trimmed);
            let Some((raw_key, raw_value)) = trimmed.split_once('=') else {
                return Err(EnvError::MissingEquals { line });
            };
            let key = raw_key.trim();
            validate_key(key).map_err(|error| EnvError::AtLine {
                line,
                error: Box::new(error),
            })?;
            let value = unquote(raw_value).map_err(|problem| match problem {
                QuoteProblem::Unterminated => EnvError::UnterminatedQuote {
                    line,
                    key: key.to_owned(),
                },
                QuoteProblem::TrailingText => EnvError::TextAfterQuote {
                    line,
                    key: key.to_owned(),
                },
            })?;
            vars.insert(key.to_owned(), value);
        }
        Ok(Self { vars })
    }

    /// Parses the Convox wire format (the `env` field of a release), as
    /// [`Env::to_wire`] renders it and the Convox CLI posts it back.
    ///
    /// - Text is split on `\n`; lines that are empty or only blanks are skipped.
    /// - Each other line is `KEY=VALUE`, split at its first `=`. The key is trimmed
    ///   (as Convox does) and must pass [`validate_key`].
    /// - The value is kept verbatim, unless it starts with `$'`: then it is a quoted
    ///   value (bash's ANSI-C quoting) and is decoded, see [`Env::to_wire`].
    /// - A line without `=`, with an empty or invalid key, with a key already set
    ///   on an earlier line, or with a malformed `$'…'` value is an error naming the
    ///   line by number (and the key, where there is one), never its value.
    ///
    /// Convox itself skips lines without `=` or with an empty key and lets a repeated
    /// key win; a typo there loses a variable without a word, so Slipway refuses.
    pub fn parse_wire(text: &str) -> Result<Self, EnvError> {
        let mut vars = BTreeMap::new();
        let mut lines_of: BTreeMap<String, usize> = BTreeMap::new();
        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let Some((raw_key, raw_value)) = raw.split_once('=') else {
                return Err(EnvError::MissingEquals { line });
            };
            let key = raw_key.trim();
            validate_key(key).map_err(|error| EnvError::AtLine {
                line,
                error: Box::new(error),
            })?;
            if let Some(&first) = lines_of.get(key) {
                return Err(EnvError::DuplicateKey {
                    line,
                    key: echo(key),
                    first,
                });
            }
            let value = match raw_value.strip_prefix(WIRE_QUOTE) {
                Some(body) => unquote_wire(body).map_err(|problem| EnvError::BadWireQuote {
                    line,
                    key: echo(key),
                    problem,
                })?,
                None => raw_value.to_owned(),
            };
            lines_of.insert(key.to_owned(), line);
            vars.insert(key.to_owned(), value);
        }
        Ok(Self { vars })
    }

    /// Renders the Convox wire format: sorted `K=V` lines joined by `\n`, with no
    /// trailing newline; an empty env gives `""`.
    ///
    /// A value is written verbatim, unless it contains a newline or a carriage return
    /// (which would split the line, or be dropped by a line reader at its end) or
    /// itself starts with `$'`. Such a value is written in bash's ANSI-C quoting:
    /// `$'` + the value with `\` as `\\`, `'` as `\'`, newline as `\n` and carriage
    /// return as `\r` + `'`. So `PEM=$'-----BEGIN KEY-----\nMIIE…\n-----END KEY-----\n'`
    /// is one line, `echo $'…'` in bash prints the value, and the Convox CLI's
    /// read-modify-write (`convox env set OTHER=1` posts back every line it read)
    /// carries it unchanged. [`Env::parse_wire`] decodes it back byte for byte.
    pub fn to_wire(&self) -> String {
        wire_text(&self.vars)
    }

    /// Returns a new env with every key in `unset` removed and then every entry of
    /// `set` applied. Unsetting an absent key is not an error; naming one key in both
    /// lists is, because the intent is unclear.
    pub fn apply(
        &self,
        set: &BTreeMap<String, String>,
        unset: &[String],
    ) -> Result<Self, EnvError> {
        for key in unset {
            validate_key(key)?;
            if set.contains_key(key) {
                return Err(EnvError::BothSetAndUnset { key: echo(key) });
            }
        }
        for key in set.keys() {
            validate_key(key)?;
        }
        let mut vars = self.vars.clone();
        for key in unset {
            vars.remove(key);
        }
        for (key, value) in set {
            vars.insert(key.clone(), value.clone());
        }
        Ok(Self { vars })
    }

    /// Sets one variable after checking its key, returning the previous value if any.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Option<String>, EnvError> {
        let key = key.into();
        validate_key(&key)?;
        Ok(self.vars.insert(key, value.into()))
    }

    /// Removes one variable, returning its value if it was set.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.vars.remove(key)
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// Whether `key` is set (possibly to the empty string).
    pub fn contains_key(&self, key: &str) -> bool {
        self.vars.contains_key(key)
    }

    /// The keys, in sorted order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.vars.keys().map(String::as_str)
    }

    /// The `(key, value)` pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many variables are set.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether no variables are set.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The env's size as a process receives it: every `KEY=VALUE` plus its NUL.
    /// [`Env::to_wire`] is one byte shorter (newlines between, none at the end).
    pub fn bytes(&self) -> usize {
        self.vars.iter().map(|(k, v)| var_bytes(k, v) + 1).sum()
    }

    /// Checks the bounds every stored env must keep: no value holds a NUL, no
    /// variable exceeds [`MAX_VAR_BYTES`], the whole env stays within
    /// [`MAX_ENV_BYTES`]. Errors name the key and the limit, never the value.
    ///
    /// Parsing does not check these, so an env stored before the bounds existed can
    /// still be read and listed; every new release is checked.
    pub fn check_bounds(&self) -> Result<(), EnvError> {
        for (key, value) in &self.vars {
            if value.contains('\0') {
                return Err(EnvError::NulInValue { key: echo(key) });
            }
            let len = var_bytes(key, value);
            if len > MAX_VAR_BYTES {
                return Err(EnvError::VarTooLarge {
                    key: echo(key),
                    len,
                });
            }
        }
        let len = self.bytes();
        if len > MAX_ENV_BYTES {
            let largest = self
                .vars
                .iter()
                .max_by_key(|(k, v)| var_bytes(k, v))
                .map(|(k, _)| echo(k))
                .unwrap_or_default();
            return Err(EnvError::TooLarge { len, largest });
        }
        Ok(())
    }

    /// The underlying sorted map.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// Consumes the env and returns the underlying sorted map.
    pub fn into_map(self) -> BTreeMap<String, String> {
        self.vars
    }
}

/// Renders a map of variables in the wire format of [`Env::to_wire`], without
/// checking keys: for an env held as a plain map (a proto's `map<string, string>`)
/// whose keys were checked when it was stored.
pub fn wire_text(vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (i, (key, value)) in vars.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(key);
        out.push('=');
        if needs_wire_quote(value) {
            quote_wire(value, &mut out);
        } else {
            out.push_str(value);
        }
    }
    out
}

/// How a quoted wire value opens: bash's ANSI-C quoting.
const WIRE_QUOTE: &str = "$'";

/// Whether a value must be quoted to travel as one wire line and come back the same.
fn needs_wire_quote(value: &str) -> bool {
    value.contains(['\n', '\r']) || value.starts_with(WIRE_QUOTE)
}

/// Appends `$'…'` for `value`, escaping only what must be escaped.
fn quote_wire(value: &str, out: &mut String) {
    out.push_str(WIRE_QUOTE);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            other => out.push(other),
        }
    }
    out.push('\'');
}

/// Decodes the rest of a `$'…'` value (the text after `$'`). Accepts the escapes
/// `\\ \' \" \n \r \t`, a subset of bash's; any other is refused rather than
/// guessed at, so no value is ever silently changed.
fn unquote_wire(body: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' => {
                if i + 1 != body.len() {
                    return Err("text after the closing quote");
                }
                return Ok(out);
            }
            '\\' => match chars.next() {
                Some((_, '\\')) => out.push('\\'),
                Some((_, '\'')) => out.push('\''),
                Some((_, '"')) => out.push('"'),
                Some((_, 'n')) => out.push('\n'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, 't')) => out.push('\t'),
                Some(_) => return Err("unknown escape; use \\\\ \\' \\\" \\n \\r or \\t"),
                None => return Err("the closing quote is missing"),
            },
            other => out.push(other),
        }
    }
    Err("the closing quote is missing")
}

/// The length of `KEY=VALUE`.
fn var_bytes(key: &str, value: &str) -> usize {
    key.len() + 1 + value.len()
}

/// Drops a leading `export` keyword (followed by blanks) from a line.
fn strip_export(line: &str) -> &str {
    match line.strip_prefix("export") {
        Some(rest) if rest.starts_with([' ', '\t']) => {
            let rest = rest.trim_start();
            // `export = 1` assigns a variable literally named `export`.
            if rest.starts_with('=') { line } else { rest }
        }
        _ => line,
    }
}

/// What was wrong with a quoted value; turned into an [`EnvError`] by the caller, which
/// knows the line and key.
enum QuoteProblem {
    Unterminated,
    TrailingText,
}

/// Returns the value to store for the text after `=`.
///
/// Unquoted text is kept verbatim. Text whose first non-blank character is a quote is
/// read as a quoted string, and blanks around the quotes are dropped.
fn unquote(raw: &str) -> Result<String, QuoteProblem> {
    let trimmed = raw.trim();
    if let Some(body) = trimmed.strip_prefix('\'') {
        let Some(end) = body.find('\'') else {
            return Err(QuoteProblem::Unterminated);
        };
        if end + 1 != body.len() {
            return Err(QuoteProblem::TrailingText);
        }
        return Ok(body[..end].to_owned());
    }
    if let Some(body) = trimmed.strip_prefix('"') {
        let mut out = String::with_capacity(body.len());
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    if i + 1 != body.len() {
                        return Err(QuoteProblem::TrailingText);
                    }
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, '"')) => out.push('"'),
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, other)) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => return Err(QuoteProblem::Unterminated),
                },
                other => out.push(other),
            }
        }
        return Err(QuoteProblem::Unterminated);
    }
    Ok(raw.to_owned())
}

/// Which keys an env change adds, changes and removes, each list sorted.
///
/// This is what Convox puts in a release's description (`env add:NEW change:FOO`).
/// It holds keys only, so it is safe to log and display.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvDiff {
    /// Keys only in the new env.
    pub adds: Vec<String>,
    /// Keys in both whose values differ.
    pub changes: Vec<String>,
    /// Keys only in the old env.
    pub removes: Vec<String>,
}

impl EnvDiff {
    /// Compares two environments.
    pub fn between(old: &Env, new: &Env) -> Self {
        let mut diff = Self::default();
        for (key, value) in &new.vars {
            match old.vars.get(key) {
                None => diff.adds.push(key.clone()),
                Some(before) if before != value => diff.changes.push(key.clone()),
                Some(_) => {}
            }
        }
        for key in old.vars.keys() {
            if !new.vars.contains_key(key) {
                diff.removes.push(key.clone());
            }
        }
        // BTreeMap iteration is sorted already; sorting again keeps the promise even if
        // the fields were filled in by hand.
        diff.adds.sort();
        diff.changes.sort();
        diff.removes.sort();
        diff
    }

    /// Whether nothing was added, changed or removed.
    pub fn is_empty(&self) -> bool {
        self.adds.is_empty() && self.changes.is_empty() && self.removes.is_empty()
    }

    /// Convox's text for the diff: `add:K` for each add, then `change:K`, then
    /// `remove:K`, separated by spaces, e.g. `add:NEW change:FOO`. Empty when nothing
    /// changed.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let groups = [
            ("add", &self.adds),
            ("change", &self.changes),
            ("remove", &self.removes),
        ];
        for (verb, keys) in groups {
            for key in keys {
                out.push(' ');
                out.push_str(verb);
                out.push(':');
                out.push_str(key);
            }
        }
        out.trim().to_owned()
    }

    /// The release description Convox gives an env change (`env add:NEW change:FOO`),
    /// or `None` when nothing changed.
    pub fn description(&self) -> Option<String> {
        if self.is_empty() {
            None
        } else {
            Some(format!("env {}", self.summary()))
        }
    }
}

impl fmt::Display for EnvDiff {
    /// Same as [`EnvDiff::summary`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .unwrap()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // --- keys ---------------------------------------------------------------

    #[test]
    fn valid_keys() {
        for key in ["A", "_", "FOO", "foo_bar", "_X1", "a1b2", "DATABASE_URL"] {
            validate_key(key).unwrap();
        }
        validate_key(&"K".repeat(MAX_KEY_LEN)).unwrap();
    }

    #[test]
    fn invalid_keys_are_named_with_the_rule() {
        assert_eq!(
            validate_key("1FOO").unwrap_err().to_string(),
            "invalid env key \"1FOO\": keys start with a letter or '_' and contain only letters, digits and '_'"
        );
        for key in ["FOO-BAR", "FOO BAR", "FOO.BAR", "É", "FOO=", " FOO", "$X"] {
            assert_eq!(
                validate_key(key),
                Err(EnvError::InvalidKey {
                    key: key.to_owned()
                }),
                "{key}"
            );
        }
    }

    #[test]
    fn empty_key() {
        assert_eq!(validate_key(""), Err(EnvError::EmptyKey));
        assert_eq!(EnvError::EmptyKey.to_string(), "empty env key");
    }

    #[test]
    fn overlong_key() {
        let key = "K".repeat(MAX_KEY_LEN + 1);
        let err = validate_key(&key).unwrap_err();
        assert!(matches!(err, EnvError::KeyTooLong { len: 257, .. }));
        assert!(err.to_string().len() < 200, "{err}");
    }

    // --- Env basics ---------------------------------------------------------

    #[test]
    fn from_map_validates_keys() {
        assert!(Env::from_map(map(&[("GOOD", "1")])).is_ok());
        assert_eq!(
            Env::from_map(map(&[("GOOD", "1"), ("bad-key", "2")])),
            Err(EnvError::InvalidKey {
                key: "bad-key".into()
            })
        );
    }

    #[test]
    fn accessors() {
        let e = env(&[("B", "2"), ("A", "1"), ("EMPTY", "")]);
        assert_eq!(e.len(), 3);
        assert!(!e.is_empty());
        assert_eq!(e.get("A"), Some("1"));
        assert_eq!(e.get("EMPTY"), Some(""));
        assert_eq!(e.get("NOPE"), None);
        assert!(e.contains_key("EMPTY"));
        assert!(!e.contains_key("NOPE"));
        assert_eq!(e.keys().collect::<Vec<_>>(), ["A", "B", "EMPTY"]);
        assert_eq!(
            e.iter().collect::<Vec<_>>(),
            [("A", "1"), ("B", "2"), ("EMPTY", "")]
        );
        assert_eq!(e.as_map(), &map(&[("A", "1"), ("B", "2"), ("EMPTY", "")]));
        assert_eq!(e.clone().into_map().len(), 3);
        assert!(Env::new().is_empty());
    }

    #[test]
    fn insert_and_remove() {
        let mut e = Env::new();
        assert_eq!(e.insert("A", "1"), Ok(None));
        assert_eq!(e.insert("A", "2"), Ok(Some("1".to_owned())));
        assert_eq!(
            e.insert("1A", "x"),
            Err(EnvError::InvalidKey { key: "1A".into() })
        );
        assert_eq!(e.remove("A"), Some("2".to_owned()));
        assert_eq!(e.remove("A"), None);
    }

    #[test]
    fn debug_never_shows_values() {
        let e = env(&[("SECRET", "hunter2"), ("TOKEN", "abc123")]);
        let debug = format!("{e:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("abc123"), "{debug}");
        assert!(
            debug.contains("SECRET") && debug.contains("TOKEN"),
            "{debug}"
        );
        let pretty = format!("{e:#?}");
        assert!(!pretty.contains("hunter2"), "{pretty}");
    }

    // --- user-facing parser -------------------------------------------------

    #[test]
    fn parse_basic_lines() {
        let e = Env::parse("FOO=bar\nBAZ=qux").unwrap();
        assert_eq!(e, env(&[("BAZ", "qux"), ("FOO", "bar")]));
    }

    #[test]
    fn parse_skips_blanks_and_comments() {
        let text = "\n# a comment\n   # indented comment\nFOO=1\n   \n\t\nBAR=2\n";
        assert_eq!(
            Env::parse(text).unwrap(),
            env(&[("BAR", "2"), ("FOO", "1")])
        );
    }

    #[test]
    fn parse_trims_key_and_keeps_value_verbatim() {
        let e = Env::parse("  FOO  =  spaced value  ").unwrap();
        assert_eq!(e.get("FOO"), Some("  spaced value  "));
    }

    #[test]
    fn parse_splits_at_first_equals() {
        let e = Env::parse("URL=postgres://u:p@h/db?x=1&y=2").unwrap();
        assert_eq!(e.get("URL"), Some("postgres://u:p@h/db?x=1&y=2"));
    }

    #[test]
    fn parse_allows_empty_values() {
        let e = Env::parse("FOO=\nBAR=\"\"\nBAZ=''").unwrap();
        assert_eq!(e, env(&[("BAR", ""), ("BAZ", ""), ("FOO", "")]));
    }

    #[test]
    fn parse_double_quotes_with_escapes() {
        let e = Env::parse(
            r##"A="line1\nline2"
B="say \"hi\""
C="back\\slash"
D="keep \t as is"
E="# not a comment"
F=  "padded"  "##,
        )
        .unwrap();
        assert_eq!(e.get("A"), Some("line1\nline2"));
        assert_eq!(e.get("B"), Some("say \"hi\""));
        assert_eq!(e.get("C"), Some("back\\slash"));
        assert_eq!(e.get("D"), Some("keep \\t as is"));
        assert_eq!(e.get("E"), Some("# not a comment"));
        assert_eq!(e.get("F"), Some("padded"));
    }

    #[test]
    fn parse_single_quotes_are_literal() {
        let e = Env::parse(r#"A='no \n escapes "here"'"#).unwrap();
        assert_eq!(e.get("A"), Some(r#"no \n escapes "here""#));
    }

    #[test]
    fn parse_keeps_unbalanced_inner_quotes_when_not_leading() {
        let e = Env::parse("A=it's\nB=a\"b").unwrap();
        assert_eq!(e.get("A"), Some("it's"));
        assert_eq!(e.get("B"), Some("a\"b"));
    }

    #[test]
    fn parse_rejects_bad_quoting_without_echoing_the_value() {
        let err = Env::parse("OK=1\nPASSWORD=\"hunter2").unwrap_err();
        assert_eq!(
            err,
            EnvError::UnterminatedQuote {
                line: 2,
                key: "PASSWORD".into()
            }
        );
        let msg = err.to_string();
        assert_eq!(
            msg,
            "line 2: the value of PASSWORD opens a quote that is never closed"
        );
        assert!(!format!("{err:?}").contains("hunter2"));

        assert_eq!(
            Env::parse("A='x").unwrap_err(),
            EnvError::UnterminatedQuote {
                line: 1,
                key: "A".into()
            }
        );
        assert_eq!(
            Env::parse(r#"A="x\"#).unwrap_err(),
            EnvError::UnterminatedQuote {
                line: 1,
                key: "A".into()
            }
        );
        let err = Env::parse("A=\"x\" y").unwrap_err();
        assert_eq!(
            err,
            EnvError::TextAfterQuote {
                line: 1,
                key: "A".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "line 1: the value of A has text after its closing quote"
        );
        assert_eq!(
            Env::parse("A='x'y").unwrap_err(),
            EnvError::TextAfterQuote {
                line: 1,
                key: "A".into()
            }
        );
    }

    #[test]
    fn parse_line_without_equals_names_the_line() {
        let err = Env::parse("A=1\n\nsecretvalue\n").unwrap_err();
        assert_eq!(err, EnvError::MissingEquals { line: 3 });
        assert_eq!(err.to_string(), "line 3: expected KEY=VALUE");
        assert!(!err.to_string().contains("secretvalue"));
    }

    #[test]
    fn parse_bad_key_names_line_and_key() {
        let err = Env::parse("A=1\n1FOO=x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: invalid env key \"1FOO\": keys start with a letter or '_' and contain only letters, digits and '_'"
        );
        assert_eq!(
            Env::parse("=value").unwrap_err().to_string(),
            "line 1: empty env key"
        );
    }

    #[test]
    fn parse_last_duplicate_wins() {
        let e = Env::parse("A=1\nA=2\nA=3").unwrap();
        assert_eq!(e.get("A"), Some("3"));
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn parse_accepts_export_prefix() {
        let e = Env::parse("export FOO=1\nexport\tBAR=2\n  export BAZ=\"3\"").unwrap();
        assert_eq!(e, env(&[("BAR", "2"), ("BAZ", "3"), ("FOO", "1")]));
        // A variable literally called `export`, or one that merely starts with it.
        let e = Env::parse("export=1\nexport = 2\nexported=3").unwrap();
        assert_eq!(e, env(&[("export", " 2"), ("exported", "3")]));
    }

    #[test]
    fn parse_handles_crlf() {
        let e = Env::parse("A=1\r\nB=\"2\"\r\n").unwrap();
        assert_eq!(e, env(&[("A", "1"), ("B", "2")]));
    }

    #[test]
    fn parse_empty_text() {
        assert!(Env::parse("").unwrap().is_empty());
        assert!(Env::parse("\n\n# only comments\n").unwrap().is_empty());
    }

    // --- wire format --------------------------------------------------------

    #[test]
    fn wire_round_trip() {
        let text = "BAR=baz\nFOO=bar\nFROMOLD=1";
        let e = Env::parse_wire(text).unwrap();
        assert_eq!(e, env(&[("BAR", "baz"), ("FOO", "bar"), ("FROMOLD", "1")]));
        assert_eq!(e.to_wire(), text);
    }

    #[test]
    fn to_wire_sorts_and_has_no_trailing_newline() {
        let e = env(&[("Z", "last"), ("A", "first"), ("M", "")]);
        assert_eq!(e.to_wire(), "A=first\nM=\nZ=last");
        assert_eq!(Env::new().to_wire(), "");
    }

    #[test]
    fn parse_wire_reads_convox_text() {
        // Blank lines are skipped, keys are trimmed, values are verbatim (a value that
        // merely looks quoted is not unquoted).
        let text = "\n KEY =  value with spaces \nQ=\"quoted\"\nS='single'\nE=\n  \n";
        let e = Env::parse_wire(text).unwrap();
        assert_eq!(e.get("KEY"), Some("  value with spaces "));
        assert_eq!(e.get("Q"), Some("\"quoted\""));
        assert_eq!(e.get("S"), Some("'single'"));
        assert_eq!(e.get("E"), Some(""));
        assert_eq!(e.len(), 4, "{e:?}");
    }

    #[test]
    fn parse_wire_keeps_values_verbatim() {
        let e = Env::parse_wire("A=x=y=z\nB= spaced\nC=carriage\r").unwrap();
        assert_eq!(e.get("A"), Some("x=y=z"));
        assert_eq!(e.get("B"), Some(" spaced"));
        assert_eq!(e.get("C"), Some("carriage\r"));
    }

    #[test]
    fn parse_wire_refuses_malformed_lines_by_number_without_values() {
        let cases: &[(&str, &str)] = &[
            ("A=1\nsecretvalue", "line 2: expected KEY=VALUE"),
            ("A=1\n\n=secretvalue", "line 3: empty env key"),
            ("  =secretvalue", "line 1: empty env key"),
            (
                "GOOD=1\nBAD-KEY=secretvalue",
                "line 2: invalid env key \"BAD-KEY\": keys start with a letter or '_' and contain only letters, digits and '_'",
            ),
            (
                "A=1\nB=2\nA=secretvalue",
                "line 3: duplicate env key A (first set on line 1)",
            ),
            (
                "A=1\n A =secretvalue",
                "line 2: duplicate env key A (first set on line 1)",
            ),
            (
                "P=$'secretvalue",
                "line 1: the value of P starts with $' but is not a valid $'…' quoted value (the closing quote is missing)",
            ),
            (
                "P=$'secret'value",
                "line 1: the value of P starts with $' but is not a valid $'…' quoted value (text after the closing quote)",
            ),
            (
                "P=$'secret\\qvalue'",
                "line 1: the value of P starts with $' but is not a valid $'…' quoted value (unknown escape; use \\\\ \\' \\\" \\n \\r or \\t)",
            ),
            (
                "P=$'secretvalue\\",
                "line 1: the value of P starts with $' but is not a valid $'…' quoted value (the closing quote is missing)",
            ),
        ];
        for (text, want) in cases {
            let err = Env::parse_wire(text).unwrap_err();
            assert_eq!(err.to_string(), *want, "{text:?}");
            assert!(!err.to_string().contains("secret"), "{err}");
            assert!(!format!("{err:?}").contains("secret"), "{err:?}");
        }
        assert!(matches!(
            Env::parse_wire("A=1\nA=2").unwrap_err(),
            EnvError::DuplicateKey {
                line: 2,
                first: 1,
                ..
            }
        ));
    }

    #[test]
    fn parse_wire_of_empty_text_is_empty() {
        assert!(Env::parse_wire("").unwrap().is_empty());
        assert!(Env::parse_wire("\n\n").unwrap().is_empty());
    }

    /// Values a process can receive, each of which must survive the wire unchanged.
    fn awkward_values() -> Vec<(&'static str, String)> {
        vec![
            (
                "PEM",
                "-----BEGIN PRIVATE KEY-----\nMIIEvQ+/=\nAbc\n-----END PRIVATE KEY-----\n".into(),
            ),
            ("CRLF", "line1\r\nline2\r\n".into()),
            ("TRAILING_CR", "value\r".into()),
            ("ONLY_NEWLINES", "\n\n".into()),
            ("EQUALS", "a=b==c=".into()),
            ("QUOTES", r#"'single' "double" \' \" $'x'"#.into()),
            ("DOLLAR_QUOTE", "$'looks encoded\\n'".into()),
            ("DOLLAR_QUOTE_ML", "$'\nx".into()),
            ("BACKSLASHES", r"C:\new\table\\".into()),
            ("UNICODE", "żółć 日本語 🦀 \u{200b}".into()),
            ("EMPTY", String::new()),
            ("SPACES", "  padded  ".into()),
            ("TABS", "a\tb\t".into()),
            ("CONTROL", "bell\x07esc\x1b[0m".into()),
            ("HASH", "# not a comment".into()),
            ("BIG", "x".repeat(64 * 1024)),
            ("BIG_ML", "0123456789abcdef\n".repeat(4 * 1024)),
        ]
    }

    #[test]
    fn wire_round_trips_awkward_values_byte_for_byte() {
        let e = Env::from_map(
            awkward_values()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
        .unwrap();
        let wire = e.to_wire();
        assert_eq!(wire.lines().count(), e.len(), "one line per variable");
        assert!(!wire.contains('\r'), "no carriage return reaches the wire");
        assert_eq!(Env::parse_wire(&wire).unwrap(), e);
        for (key, value) in awkward_values() {
            let one = env(&[(key, &value)]);
            assert_eq!(
                Env::parse_wire(&one.to_wire()).unwrap().get(key),
                Some(value.as_str()),
                "{key}"
            );
        }
    }

    #[test]
    fn to_wire_quotes_only_what_needs_it() {
        let e = env(&[
            ("PEM", "a\nb\n"),
            ("PLAIN", "it's \"fine\" \\n"),
            ("CR", "x\r"),
            ("LOOKS", "$'q'"),
        ]);
        assert_eq!(
            e.to_wire(),
            "CR=$'x\\r'\nLOOKS=$'$\\'q\\''\nPEM=$'a\\nb\\n'\nPLAIN=it's \"fine\" \\n"
        );
        // `$` alone, or `$'` later in a value, is not an opening quote.
        let e = env(&[("A", "$x"), ("B", "x$'y")]);
        assert_eq!(e.to_wire(), "A=$x\nB=x$'y");
        assert_eq!(Env::parse_wire(&e.to_wire()).unwrap(), e);
    }

    #[test]
    fn parse_wire_decodes_bash_escapes_it_accepts() {
        let e = Env::parse_wire(r#"A=$'tab\there \"q\" \'s\' back\\slash\r\n'"#).unwrap();
        assert_eq!(e.get("A"), Some("tab\there \"q\" 's' back\\slash\r\n"));
        assert_eq!(Env::parse_wire("A=$''").unwrap().get("A"), Some(""));
    }

    /// What the convox CLI does with the env text it reads
    /// (`pkg/structs/environment.go`): it splits lines, drops a `\r` before each line
    /// end, splits at the first `=`, trims the key and skips lines without one; it
    /// then posts the map back as sorted `K=V` lines joined by `\n`. Its line reader
    /// (Go's `bufio.Scanner`) fails on a line of 64 KiB or more.
    fn convox_cli_read_modify_write(text: &str, set: &[(&str, &str)]) -> String {
        let mut vars = BTreeMap::new();
        for line in text.split('\n') {
            assert!(
                line.len() < 64 * 1024,
                "the convox CLI cannot read this env"
            );
            let line = line.strip_suffix('\r').unwrap_or(line);
            if let Some((k, v)) = line.split_once('=')
                && !k.trim().is_empty()
            {
                vars.insert(k.trim().to_owned(), v.to_owned());
            }
        }
        for (k, v) in set {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let mut lines: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lines.sort();
        lines.join("\n")
    }

    #[test]
    fn wire_survives_the_convox_cli_read_modify_write() {
        let e = Env::from_map(
            awkward_values()
                .into_iter()
                .filter(|(k, _)| !k.starts_with("BIG"))
                .map(|(k, v)| (k.to_owned(), v))
                .chain([("LARGE_ML".to_owned(), "0123456789\n".repeat(5000))])
                .collect(),
        )
        .unwrap();
        let posted = convox_cli_read_modify_write(&e.to_wire(), &[("OTHER", "1")]);
        let mut want = e.clone();
        want.insert("OTHER", "1").unwrap();
        assert_eq!(Env::parse_wire(&posted).unwrap(), want);
        // And again: reading back what was stored changes nothing.
        let again = convox_cli_read_modify_write(&want.to_wire(), &[]);
        assert_eq!(Env::parse_wire(&again).unwrap(), want);
    }

    // --- apply --------------------------------------------------------------

    #[test]
    fn apply_unsets_then_sets() {
        let base = env(&[("A", "1"), ("B", "2"), ("C", "3")]);
        let next = base
            .apply(
                &map(&[("B", "20"), ("D", "4")]),
                &["A".into(), "MISSING".into()],
            )
            .unwrap();
        assert_eq!(next, env(&[("B", "20"), ("C", "3"), ("D", "4")]));
        // The original is untouched.
        assert_eq!(base.len(), 3);
    }

    #[test]
    fn apply_rejects_conflicts_and_bad_keys() {
        let base = env(&[("A", "1")]);
        let err = base.apply(&map(&[("X", "1")]), &["X".into()]).unwrap_err();
        assert_eq!(err.to_string(), "env key \"X\" is both set and unset");
        assert_eq!(
            base.apply(&map(&[("bad key", "1")]), &[]).unwrap_err(),
            EnvError::InvalidKey {
                key: "bad key".into()
            }
        );
        assert_eq!(
            base.apply(&BTreeMap::new(), &["".into()]).unwrap_err(),
            EnvError::EmptyKey
        );
    }

    // --- bounds -------------------------------------------------------------

    /// A value that makes `KEY=VALUE` exactly `len` bytes.
    fn value_for(key: &str, len: usize) -> String {
        "v".repeat(len - key.len() - 1)
    }

    #[test]
    fn bytes_count_each_var_with_its_nul() {
        assert_eq!(Env::new().bytes(), 0);
        let e = env(&[("A", "1"), ("BB", "")]);
        assert_eq!(e.bytes(), "A=1\0BB=\0".len());
        assert_eq!(e.bytes(), e.to_wire().len() + 1);
    }

    #[test]
    fn a_var_at_the_limit_is_accepted_one_byte_more_is_refused() {
        let at = env(&[("BIG", &value_for("BIG", MAX_VAR_BYTES))]);
        at.check_bounds().unwrap();
        let over = env(&[("BIG", &value_for("BIG", MAX_VAR_BYTES + 1))]);
        let err = over.check_bounds().unwrap_err();
        assert_eq!(
            err,
            EnvError::VarTooLarge {
                key: "BIG".into(),
                len: MAX_VAR_BYTES + 1
            }
        );
        assert_eq!(
            err.to_string(),
            "env BIG is too large: BIG=VALUE is 131072 bytes, the limit is 131071 bytes \
             (128 KiB with its terminating NUL, the most a process accepts for one variable)"
        );
    }

    #[test]
    fn the_var_limit_counts_the_key() {
        let key = "K".repeat(MAX_KEY_LEN);
        let value = "v".repeat(MAX_VAR_BYTES - MAX_KEY_LEN);
        let e = env(&[(&key, &value)]);
        assert!(matches!(
            e.check_bounds(),
            Err(EnvError::VarTooLarge { len, .. }) if len == MAX_VAR_BYTES + 1
        ));
    }

    #[test]
    fn an_env_at_the_limit_is_accepted_one_byte_more_is_refused() {
        // Two variables at the per-variable limit take 2 * 128 KiB = the env limit.
        let (a, b) = (value_for("A", MAX_VAR_BYTES), value_for("B", MAX_VAR_BYTES));
        let at = env(&[("A", &a), ("B", &b)]);
        assert_eq!(at.bytes(), MAX_ENV_BYTES);
        at.check_bounds().unwrap();
        // A third, empty variable (`C=` and its NUL) with B three bytes shorter.
        let exact = env(&[("A", &a), ("B", &b[3..]), ("C", "")]);
        assert_eq!(exact.bytes(), MAX_ENV_BYTES);
        exact.check_bounds().unwrap();
        let one_over = env(&[("A", &a), ("B", &b[2..]), ("C", "")]);
        assert_eq!(one_over.bytes(), MAX_ENV_BYTES + 1);
        let err = one_over.check_bounds().unwrap_err();
        assert_eq!(
            err,
            EnvError::TooLarge {
                len: MAX_ENV_BYTES + 1,
                largest: "A".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "the env is too large: 262145 bytes (KEY=VALUE plus one byte per variable), \
             the limit is 262144 bytes (256 KiB); the largest variable is A"
        );
    }

    #[test]
    fn a_nul_in_a_value_is_refused_naming_the_key_only() {
        let e = env(&[("OK", "fine"), ("TOKEN", "sec\0ret")]);
        let err = e.check_bounds().unwrap_err();
        assert_eq!(
            err,
            EnvError::NulInValue {
                key: "TOKEN".into()
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("TOKEN") && msg.contains("NUL"), "{msg}");
        assert!(!msg.contains("sec"), "{msg}");
        // Wire text carries the NUL through to the check.
        let wire = Env::parse_wire("TOKEN=a\0b").unwrap();
        assert!(matches!(
            wire.check_bounds(),
            Err(EnvError::NulInValue { .. })
        ));
    }

    #[test]
    fn bound_errors_never_show_values() {
        let secret = format!("hunter2{}", "x".repeat(MAX_VAR_BYTES));
        let err = env(&[("PASSWORD", &secret)]).check_bounds().unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        assert!(!format!("{err:?}").contains("hunter2"));
        assert!(err.to_string().len() < 300, "{err}");
    }

    #[test]
    fn an_empty_or_ordinary_env_is_within_bounds() {
        Env::new().check_bounds().unwrap();
        env(&[("A", "1"), ("DATABASE_URL", "postgres://u:p@h/db")])
            .check_bounds()
            .unwrap();
    }

    // --- diff ---------------------------------------------------------------

    fn description(old: &str, new: &str) -> Option<String> {
        let old = Env::parse_wire(old.trim()).unwrap();
        let new = Env::parse_wire(new.trim()).unwrap();
        EnvDiff::between(&old, &new).description()
    }

    #[test]
    fn diff_reference_examples() {
        assert_eq!(
            description("", "FOO=bar\nBAR=baz").as_deref(),
            Some("env add:BAR add:FOO")
        );
        assert_eq!(
            description("FOO=bar", "FOO=changed\nNEW=1").as_deref(),
            Some("env add:NEW change:FOO")
        );
        assert_eq!(
            description("BAR=baz\nFOO=bar", "FOO=bar").as_deref(),
            Some("env remove:BAR")
        );
        assert_eq!(
            description("FOO=1\nNEW=2\nP=3\nQ=4\nX=5", "ONLY=1").as_deref(),
            Some("env add:ONLY remove:FOO remove:NEW remove:P remove:Q remove:X")
        );
        assert_eq!(
            description("BAR=1\nBAZ=2", "BAR=9\nFOO=3").as_deref(),
            Some("env add:FOO change:BAR remove:BAZ")
        );
    }

    #[test]
    fn diff_lists_are_sorted() {
        let old = env(&[("Z", "1"), ("Y", "1"), ("C", "1"), ("B", "1")]);
        let new = env(&[("Z", "2"), ("C", "2"), ("M", "1"), ("A", "1")]);
        let d = EnvDiff::between(&old, &new);
        assert_eq!(d.adds, ["A", "M"]);
        assert_eq!(d.changes, ["C", "Z"]);
        assert_eq!(d.removes, ["B", "Y"]);
        assert_eq!(
            d.summary(),
            "add:A add:M change:C change:Z remove:B remove:Y"
        );
        assert_eq!(d.to_string(), d.summary());
    }

    #[test]
    fn diff_of_equal_envs_is_empty() {
        let e = env(&[("A", "1")]);
        let d = EnvDiff::between(&e, &e.clone());
        assert!(d.is_empty());
        assert_eq!(d.summary(), "");
        assert_eq!(d.description(), None);
        assert!(EnvDiff::between(&Env::new(), &Env::new()).is_empty());
    }

    #[test]
    fn diff_treats_empty_value_as_present() {
        let d = EnvDiff::between(&env(&[("A", "")]), &env(&[("A", "x"), ("B", "")]));
        assert_eq!(d.summary(), "add:B change:A");
    }

    #[test]
    fn diff_debug_has_no_values() {
        let d = EnvDiff::between(&env(&[("A", "secret1")]), &env(&[("A", "secret2")]));
        let debug = format!("{d:?}");
        assert!(!debug.contains("secret"), "{debug}");
    }
}
