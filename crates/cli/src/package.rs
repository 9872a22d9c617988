//! Source packaging for `build` and `deploy`: a gzip'd tar of the directory
//! like the `convox` CLI's, with relative names (no `./`), directories
//! ending in `/`, `.dockerignore` applied (see [`crate::dockerignore`]),
//! `.git/` included unless ignored, and symlinks stored as links. Headers are
//! deterministic (fixed mtime, owner 0, mode 644/755) so that identical
//! trees give identical tarballs.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{Builder, EntryType, Header, HeaderMode};

use crate::dockerignore::DockerIgnore;

/// The mtime tar's deterministic mode uses, for directory entries too.
const DETERMINISTIC_MTIME: u64 = 1_153_704_088;

/// One entry to pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Relative, `/`-separated; directories end in `/`.
    pub(crate) name: String,
    /// What it is.
    pub(crate) kind: Kind,
}

/// An entry's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
}

/// The entries of `dir` that go into the tarball, parents before children,
/// names sorted within a directory.
pub(crate) fn entries(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    let ignore = DockerIgnore::load(dir)
        .with_context(|| format!("read {}", dir.join(".dockerignore").display()))?;
    let mut out = Vec::new();
    walk(dir, "", &ignore, &mut out)?;
    Ok(out)
}

fn walk(
    root: &Path,
    prefix: &str,
    ignore: &DockerIgnore,
    out: &mut Vec<Entry>,
) -> anyhow::Result<()> {
    let dir = root.join(prefix);
    let mut children: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("read directory {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("read directory {}", dir.display()))?;
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let Some(name) = child.file_name().to_str().map(str::to_owned) else {
            anyhow::bail!("{}: file names must be UTF-8", child.path().display());
        };
        let relative = format!("{prefix}{name}");
        let file_type = child
            .file_type()
            .with_context(|| format!("inspect {}", child.path().display()))?;
        let excluded = ignore.excludes(&relative);
        if file_type.is_dir() {
            if !excluded {
                out.push(Entry {
                    name: format!("{relative}/"),
                    kind: Kind::Dir,
                });
            }
            // An excluded directory may still hold something an exception re-includes.
            if !excluded || ignore.has_exceptions() {
                walk(root, &format!("{relative}/"), ignore, out)?;
            }
        } else if excluded {
            continue;
        } else if file_type.is_symlink() {
            out.push(Entry {
                name: relative,
                kind: Kind::Symlink,
            });
        } else if file_type.is_file() {
            out.push(Entry {
                name: relative,
                kind: Kind::File,
            });
        }
        // Sockets, fifos and devices are not source.
    }
    Ok(())
}

/// The gzip'd tarball of `dir`.
pub(crate) fn package(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let entries = entries(dir)?;
    let mut builder = Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    builder.mode(HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    for entry in &entries {
        let path = dir.join(entry.name.trim_end_matches('/'));
        match entry.kind {
            Kind::Dir => append_dir(&mut builder, &entry.name),
            Kind::File | Kind::Symlink => builder.append_path_with_name(&path, &entry.name),
        }
        .with_context(|| format!("add {} to the source tarball", path.display()))?;
    }
    let mut gzip = builder.into_inner().context("finish the source tarball")?;
    gzip.flush().context("compress the source tarball")?;
    gzip.finish().context("compress the source tarball")
}

/// A directory entry whose name keeps its trailing `/` (the tar crate drops
/// it, so short names are written into the header directly).
fn append_dir<W: std::io::Write>(builder: &mut Builder<W>, name: &str) -> std::io::Result<()> {
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    header.set_mtime(DETERMINISTIC_MTIME);
    header.set_uid(0);
    header.set_gid(0);
    let bytes = name.as_bytes();
    let slot = &mut header.as_old_mut().name;
    if bytes.len() < slot.len() {
        slot[..bytes.len()].copy_from_slice(bytes);
        header.set_cksum();
        builder.append(&header, std::io::empty())
    } else {
        // Long names go through the GNU long-name extension, without the slash.
        builder.append_data(&mut header, name.trim_end_matches('/'), std::io::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["src/nested", "node_modules/pkg", ".git/objects", "docs"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for (f, text) in [
            (
                ".dockerignore",
                "node_modules\n*.log\ndocs/*\n!docs/keep.md\n",
            ),
            ("convox.yml", "services:\n  web:\n    build: .\n"),
            ("Dockerfile", "FROM scratch\n"),
            ("src/main.rs", "fn main() {}\n"),
            (
                "src/nested/x.log",
                "nested logs are kept: *.log is anchored\n",
            ),
            ("debug.log", "dropped\n"),
            ("node_modules/pkg/index.js", "dropped\n"),
            (".git/HEAD", "ref: refs/heads/main\n"),
            ("docs/drop.md", "dropped\n"),
            ("docs/keep.md", "kept\n"),
        ] {
            std::fs::write(root.join(f), text).unwrap();
        }
        std::os::unix::fs::symlink("src/main.rs", root.join("link")).unwrap();
        dir
    }

    #[test]
    fn entries_honour_dockerignore_and_keep_git() {
        let dir = tree();
        let names: Vec<String> = entries(dir.path())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            names,
            [
                ".dockerignore",
                ".git/",
                ".git/HEAD",
                ".git/objects/",
                "Dockerfile",
                "convox.yml",
                "docs/",
                "docs/keep.md",
                "link",
                "src/",
                "src/main.rs",
                "src/nested/",
                "src/nested/x.log",
            ]
        );
    }

    #[test]
    fn tarballs_have_relative_names_and_file_contents() {
        let dir = tree();
        let tgz = package(dir.path()).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]));
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let raw = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            assert!(!raw.starts_with("./") && !raw.starts_with('/'), "{raw}");
            if raw == "src/main.rs" {
                let mut text = String::new();
                entry.read_to_string(&mut text).unwrap();
                assert_eq!(text, "fn main() {}\n");
            }
            if raw == "link" {
                assert_eq!(entry.header().entry_type(), EntryType::Symlink);
                assert_eq!(
                    entry.link_name().unwrap().unwrap().to_str(),
                    Some("src/main.rs")
                );
            }
            seen.push(raw);
        }
        assert!(seen.contains(&"src/".to_owned()), "{seen:?}");
        assert!(seen.contains(&".git/HEAD".to_owned()));
        assert!(
            !seen
                .iter()
                .any(|s| s.starts_with("node_modules") || s == "debug.log" || s == "docs/drop.md")
        );
        // Deterministic: the same tree packs to the same bytes.
        assert_eq!(tgz, package(dir.path()).unwrap());
    }

    #[test]
    fn ignoring_git_drops_it() {
        let dir = tree();
        std::fs::write(dir.path().join(".dockerignore"), ".git\n").unwrap();
        let names: Vec<String> = entries(dir.path())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(!names.iter().any(|n| n.starts_with(".git")), "{names:?}");
        assert!(names.contains(&"node_modules/pkg/index.js".to_owned()));
    }
}
