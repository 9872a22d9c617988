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
mod tests;
