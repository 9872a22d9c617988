//! Finds where a key path (`services.web.port`) sits in the convox.yml text.
//!
//! The YAML parser reports positions for syntax errors only; once the document is a
//! tree, positions are gone. Rather than write a position-tracking YAML loader, this
//! module scans the source lines the way a person would: find `services:` at the top,
//! then `web:` indented under it, then `port:` under that. It understands block style
//! (which is what convox.yml files use); for flow style (`{port: 80}`) it settles for
//! the deepest part of the path it could find, which still points the user at the
//! right neighbourhood.

use std::fmt;

/// One step in a path through the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    /// A mapping key.
    Key(String),
    /// A 0-based position in a list.
    Index(usize),
}

/// A path from the document root, e.g. `services.web.environment[2]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct KeyPath(Vec<Seg>);

impl KeyPath {
    /// The document root.
    pub(super) fn root() -> Self {
        Self::default()
    }

    /// This path extended by a mapping key.
    pub(super) fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        Self(segs)
    }

    /// This path extended by a list position.
    pub(super) fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }

    fn segs(&self) -> &[Seg] {
        &self.0
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) if i == 0 => f.write_str(key)?,
                Seg::Key(key) => write!(f, ".{key}")?,
                Seg::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A 1-based line and column in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub(super) line: usize,
    pub(super) column: usize,
}

/// Line-based index of a YAML document's block structure.
pub(super) struct Locator<'a> {
    lines: Vec<&'a str>,
}

/// Where a key or list item was found on its line (0-based).
struct Hit {
    line: usize,
    indent: usize,
    /// Column of the value, if the value starts on the same line.
    value_col: Option<usize>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(source: &'a str) -> Self {
        Self {
            lines: source.lines().collect(),
        }
    }

    /// Position of the first line with any content; used for whole-document errors.
    pub(super) fn first_content(&self) -> Option<Position> {
        self.lines
            .iter()
            .enumerate()
            .find_map(|(i, line)| indent_of(line).map(|indent| (i, indent)))
            .map(|(line, indent)| Position {
                line: line + 1,
                column: indent + 1,
            })
    }

    /// Best-effort position of `path`: the value if it starts on the key's line,
    /// otherwise the key. Falls back to the deepest ancestor that could be found.
    pub(super) fn find(&self, path: &KeyPath) -> Option<Position> {
        let mut start = 0;
        let mut end = self.lines.len();
        let mut best = None;
        for seg in path.segs() {
            let Some(hit) = self.find_in(seg, start, end) else {
                break;
            };
            best = Some(Position {
                line: hit.line + 1,
                column: hit.value_col.unwrap_or(hit.indent) + 1,
            });
            start = hit.line + 1;
            end = self.block_end(hit.line, hit.indent, end);
        }
        best
    }

    /// Finds `seg` among the direct children in lines `start..end`.
    fn find_in(&self, seg: &Seg, start: usize, end: usize) -> Option<Hit> {
        let child_indent = (start..end).find_map(|i| indent_of(self.lines[i]))?;
        let children = (start..end).filter(|&i| indent_of(self.lines[i]) == Some(child_indent));
        match seg {
            Seg::Key(key) => children.into_iter().find_map(|i| {
                let content = &self.lines[i][child_indent..];
                let value_at = match_key(content, key)?;
                Some(Hit {
                    line: i,
                    indent: child_indent,
                    value_col: value_at.map(|at| child_indent + at),
                })
            }),
            Seg::Index(index) => children
                .filter(|&i| is_item(&self.lines[i][child_indent..]))
                .nth(*index)
                .map(|i| {
                    let content = &self.lines[i][child_indent..];
                    let after_dash = &content[1..];
                    let skipped = after_dash.len() - after_dash.trim_start().len();
                    let value_at = 1 + skipped;
                    let has_value = value_at < content.len();
                    Hit {
                        line: i,
                        indent: child_indent,
                        value_col: has_value.then_some(child_indent + value_at),
                    }
                }),
        }
    }

    /// The end (exclusive) of the block owned by the key or item on `line`.
    ///
    /// The block runs until a content line indented no deeper than `indent`, except
    /// that list items at the same indent still belong to a key (`key:\n- a\n- b`).
    fn block_end(&self, line: usize, indent: usize, limit: usize) -> usize {
        let owner_is_item = is_item(&self.lines[line][indent..]);
        (line + 1..limit)
            .find(|&i| match indent_of(self.lines[i]) {
                None => false,
                Some(n) if n < indent => true,
                Some(n) if n == indent => owner_is_item || !is_item(&self.lines[i][n..]),
                Some(_) => false,
            })
            .unwrap_or(limit)
    }
}

/// Indentation of a content line, or `None` for blank and comment-only lines.
fn indent_of(line: &str) -> Option<usize> {
    let content = line.trim_start_matches(' ');
    if content.trim().is_empty() || content.starts_with('#') {
        None
    } else {
        Some(line.len() - content.len())
    }
}

/// Whether `content` (a line without its indentation) is a block list item.
fn is_item(content: &str) -> bool {
    content == "-" || content.starts_with("- ") || content.starts_with("-\t")
}

/// If `content` is the mapping entry for `key`, returns where its value starts on the
/// line (`Some(None)` when the value is on later lines).
fn match_key(content: &str, key: &str) -> Option<Option<usize>> {
    let after_key = if let Some(quote) = content.chars().next().filter(|c| *c == '"' || *c == '\'')
    {
        let body = &content[1..];
        let close = body.find(quote)?;
        if &body[..close] != key {
            return None;
        }
        1 + close + 1
    } else {
        let rest = content.strip_prefix(key)?;
        let pad = rest.len() - rest.trim_start_matches([' ', '\t']).len();
        key.len() + pad
    };
    let rest = content[after_key..].strip_prefix(':')?;
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    let value = rest.trim_start();
    let value_at = content.len() - value.len();
    if value.is_empty() || value.starts_with('#') {
        Some(None)
    } else {
        Some(Some(value_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(parts: &[&str]) -> KeyPath {
        parts
            .iter()
            .fold(KeyPath::root(), |p, part| match part.parse::<usize>() {
                Ok(i) => p.index(i),
                Err(_) => p.key(part),
            })
    }

    fn at(source: &str, parts: &[&str]) -> Option<(usize, usize)> {
        Locator::new(source)
            .find(&path(parts))
            .map(|p| (p.line, p.column))
    }

    const DOC: &str = "\
# comment
environment:
  - TOP
services:
  web:
    build: .
    port: 3000
    environment:
    - FOO
    -   BAR=1
    health:
      path: /health
  worker:
    'command': bin/work
";

    #[test]
    fn displays_paths() {
        assert_eq!(
            path(&["services", "web", "environment", "1"]).to_string(),
            "services.web.environment[1]"
        );
        assert_eq!(KeyPath::root().to_string(), "");
    }

    #[test]
    fn finds_keys_and_values() {
        assert_eq!(at(DOC, &["services"]), Some((4, 1)));
        assert_eq!(at(DOC, &["services", "web"]), Some((5, 3)));
        assert_eq!(at(DOC, &["services", "web", "port"]), Some((7, 11)));
        assert_eq!(
            at(DOC, &["services", "web", "health", "path"]),
            Some((12, 13))
        );
        assert_eq!(at(DOC, &["services", "worker", "command"]), Some((14, 16)));
    }

    #[test]
    fn finds_list_items_at_the_parent_indent() {
        assert_eq!(
            at(DOC, &["services", "web", "environment", "0"]),
            Some((9, 7))
        );
        assert_eq!(
            at(DOC, &["services", "web", "environment", "1"]),
            Some((10, 9))
        );
        assert_eq!(at(DOC, &["environment", "0"]), Some((3, 5)));
    }

    #[test]
    fn does_not_leave_the_parent_block() {
        // `command` exists only under worker, so looking under web stops at web.
        assert_eq!(at(DOC, &["services", "web", "command"]), Some((5, 3)));
        // The top-level environment is not services.web.environment.
        assert_eq!(at(DOC, &["services", "environment"]), Some((4, 1)));
    }

    #[test]
    fn keys_must_match_exactly() {
        let doc = "services:\n  webby: {}\n  web: {}\n";
        assert_eq!(at(doc, &["services", "web"]), Some((3, 8)));
        assert_eq!(at("port:80\n", &["port"]), None);
    }

    #[test]
    fn missing_paths() {
        assert_eq!(at(DOC, &["nope"]), None);
        assert_eq!(at("", &["services"]), None);
    }

    #[test]
    fn first_content_line() {
        let loc = Locator::new("\n# c\n  key: 1\n");
        assert_eq!(loc.first_content(), Some(Position { line: 3, column: 3 }));
        assert_eq!(Locator::new("\n\n").first_content(), None);
    }
}
