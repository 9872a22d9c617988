//! `.dockerignore` matching with Docker's semantics (moby/patternmatcher),
//! which differ from `.gitignore`: patterns are anchored at the context root
//! (`*.md` does not match `docs/a.md`; `**/*.md` does), `*` and `?` never
//! cross `/`, `**` spans any number of directories, a pattern that matches a
//! parent directory excludes everything below it, `!` re-includes, and the
//! last matching pattern wins.
//!
//! Approximations: character classes support ranges and `^` negation only
//! (no `[:alpha:]` classes), and a pattern that fails to parse matches
//! nothing (Docker would refuse the build).

use std::path::Path;

/// The parsed patterns of one `.dockerignore`.
#[derive(Clone, Debug, Default)]
pub(crate) struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Clone, Debug)]
struct Pattern {
    /// `!pattern`: re-include what earlier patterns excluded.
    exception: bool,
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Literal(char),
    /// `*`: any run of characters other than `/`.
    Star,
    /// `?`: one character other than `/`.
    Any,
    /// `**/` (or `**` inside a pattern): nothing, or anything ending in `/`.
    Dirs,
    /// `**` at the end: anything at all.
    Rest,
    /// `[...]`: one character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl DockerIgnore {
    /// Reads `dir/.dockerignore`; no file means no patterns.
    pub(crate) fn load(dir: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(dir.join(".dockerignore")) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Parses the file's text: `#` comments, blank lines skipped, `!`
    /// exceptions, patterns cleaned like Go's `filepath.Clean` and made
    /// relative (a leading `/` is dropped).
    pub(crate) fn parse(text: &str) -> Self {
        let patterns = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .filter_map(|line| {
                let (exception, pattern) = match line.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, line),
                };
                if pattern.is_empty() {
                    return None;
                }
                let cleaned = clean(pattern);
                let cleaned = if cleaned.len() > 1 {
                    cleaned.trim_start_matches('/').to_owned()
                } else {
                    cleaned
                };
                compile(&cleaned).map(|tokens| Pattern { exception, tokens })
            })
            .collect();
        Self { patterns }
    }

    /// True when some pattern is an exception (`!…`): then an excluded
    /// directory must still be walked, as something inside may come back.
    pub(crate) fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }

    /// Whether `path` (relative, `/`-separated, no `./`) is excluded: the
    /// last pattern matching it or one of its parent directories decides.
    pub(crate) fn excludes(&self, path: &str) -> bool {
        let parents: Vec<&str> = match path.rsplit_once('/') {
            Some((parent, _)) => parent.split('/').collect(),
            None => Vec::new(),
        };
        let mut excluded = false;
        for pattern in &self.patterns {
            // Only a pattern that could change the verdict is evaluated.
            if pattern.exception != excluded {
                continue;
            }
            let mut matched = matches(&pattern.tokens, &chars(path));
            if !matched {
                matched = (1..=parents.len())
                    .any(|n| matches(&pattern.tokens, &chars(&parents[..n].join("/"))));
            }
            if matched {
                excluded = !pattern.exception;
            }
        }
        excluded
    }
}

fn chars(text: &str) -> Vec<char> {
    text.chars().collect()
}

/// Go's `filepath.Clean` for `/`-separated patterns.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            ".." if rooted => {}
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// Turns a cleaned pattern into tokens; `None` for a malformed class.
fn compile(pattern: &str) -> Option<Vec<Token>> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i >= chars.len() {
                    Token::Rest
                } else {
                    Token::Dirs
                });
                continue;
            }
            '*' => tokens.push(Token::Star),
            '?' => tokens.push(Token::Any),
            '\\' => {
                i += 1;
                tokens.push(Token::Literal(*chars.get(i)?));
            }
            '[' => {
                let (token, next) = class(&chars, i + 1)?;
                tokens.push(token);
                i = next;
                continue;
            }
            c => tokens.push(Token::Literal(c)),
        }
        i += 1;
    }
    Some(tokens)
}

/// Parses a class body starting after `[`; returns it and the index after `]`.
fn class(chars: &[char], mut i: usize) -> Option<(Token, usize)> {
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let mut c = *chars.get(i)?;
        if c == ']' && !first {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        first = false;
        if c == '\\' {
            i += 1;
            c = *chars.get(i)?;
        }
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|e| *e != ']') {
            ranges.push((c, chars[i + 2]));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
}

/// Whether the tokens match all of `text`.
fn matches(tokens: &[Token], text: &[char]) -> bool {
    let Some((token, rest)) = tokens.split_first() else {
        return text.is_empty();
    };
    match token {
        Token::Literal(c) => text.first() == Some(c) && matches(rest, &text[1..]),
        Token::Any => text.first().is_some_and(|c| *c != '/') && matches(rest, &text[1..]),
        Token::Class { negated, ranges } => {
            text.first().is_some_and(|c| {
                *c != '/' && ranges.iter().any(|(lo, hi)| lo <= c && c <= hi) != *negated
            }) && matches(rest, &text[1..])
        }
        Token::Star => {
            let run = text.iter().take_while(|c| **c != '/').count();
            (0..=run).any(|n| matches(rest, &text[n..]))
        }
        Token::Rest => true,
        Token::Dirs => {
            matches(rest, text)
                || (1..=text.len()).any(|n| text[n - 1] == '/' && matches(rest, &text[n..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text)
    }

    #[test]
    fn names_match_at_the_root_and_exclude_what_is_below() {
        let i = ignore("node_modules\n# a comment\n\n/tmp/\n");
        assert!(i.excludes("node_modules"));
        assert!(i.excludes("node_modules/a/b.js"));
        assert!(i.excludes("tmp/x"));
        assert!(!i.excludes("src/node_modules"));
        assert!(!i.excludes("node_modules2"));
        assert!(!i.excludes("# a comment"));
    }

    #[test]
    fn stars_stay_within_one_directory() {
        let i = ignore("*.md\ndocs/*.txt");
        assert!(i.excludes("README.md"));
        assert!(!i.excludes("docs/a.md"));
        assert!(i.excludes("docs/a.txt"));
        assert!(!i.excludes("docs/sub/a.txt"));
    }

    #[test]
    fn double_stars_span_directories() {
        let i = ignore("**/*.log\nbuild/**\na/**/z");
        assert!(i.excludes("x.log"));
        assert!(i.excludes("deep/down/x.log"));
        assert!(i.excludes("build/anything/at/all"));
        assert!(i.excludes("a/z"));
        assert!(i.excludes("a/b/c/z"));
        assert!(!i.excludes("a/b/c/zz"));
    }

    #[test]
    fn exceptions_reinclude_and_the_last_match_wins() {
        let i = ignore("*.md\n!README.md\n");
        assert!(i.excludes("CHANGES.md"));
        assert!(!i.excludes("README.md"));
        assert!(i.has_exceptions());
        let i = ignore("!README.md\n*.md\n");
        assert!(i.excludes("README.md"));
    }

    #[test]
    fn question_marks_classes_and_escapes() {
        let i = ignore("file?.txt\n[a-c]x\n[^a-z]y\nstar\\*");
        assert!(i.excludes("file1.txt"));
        assert!(!i.excludes("file10.txt"));
        assert!(i.excludes("bx"));
        assert!(!i.excludes("dx"));
        assert!(i.excludes("1y"));
        assert!(!i.excludes("ay"));
        assert!(i.excludes("star*"));
        assert!(!i.excludes("starry"));
    }

    #[test]
    fn patterns_are_cleaned_like_go() {
        assert_eq!(clean("./a//b/../c/"), "a/c");
        assert_eq!(clean("/x/./y"), "/x/y");
        assert_eq!(clean("."), ".");
        let i = ignore("./.git\n/secret/");
        assert!(i.excludes(".git"));
        assert!(i.excludes(".git/HEAD"));
        assert!(i.excludes("secret/key"));
    }
}
