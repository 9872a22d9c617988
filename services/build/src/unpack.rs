//! Safe unpacking of source tarballs (gzip'd tar), the point where untrusted
//! bytes from laptops and CI enter the system.
//!
//! Every entry is checked *before* anything is written for it:
//! - its path must stay inside the destination: no `..`, no absolute paths,
//!   and no parent directory that an earlier entry made a symlink or a file;
//! - symlinks must point inside the tree (checked lexically per entry, then
//!   resolved through every link once the whole tree is there); hard links
//!   must name a regular file unpacked earlier;
//! - device files, fifos, sparse and other exotic entries are refused;
//! - caps on the compressed size, the unpacked size (per entry, from the
//!   header, before writing; and on the decompressed stream as a whole, which
//!   stops gzip bombs) and the number of entries.
//!
//! Files are created with `create_new` (never through an existing path) and
//! normalised modes (0644, or 0755 when any execute bit is set); owners and
//! times are not restored. A refusal names the entry, e.g.
//! `refusing tar entry "../escape": path leaves the source directory`.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tar::EntryType;
use tokio_util::sync::CancellationToken;

use crate::config::SourceLimits;

/// Symlink hops followed when resolving a link inside the tree.
const MAX_LINK_HOPS: usize = 40;
/// Room for tar headers and padding on top of the unpacked-size cap.
const PER_ENTRY_OVERHEAD: u64 = 1536;

/// Why a source could not be unpacked. Every variant is the user's problem
/// except `Io`.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry was refused; names the entry and why.
    #[error("refusing tar entry {path:?}: {why}")]
    Refused {
        /// The entry's path as written in the archive.
        path: String,
        /// Why it was refused.
        why: String,
    },
    /// The decompressed stream is larger than the caps allow (a gzip bomb or
    /// simply too big).
    #[error("source unpacks to more than the {limit}-byte limit")]
    TooLarge {
        /// The unpacked-size cap.
        limit: u64,
    },
    /// More entries than allowed.
    #[error("source has more than {limit} entries")]
    TooManyEntries {
        /// The entry cap.
        limit: u64,
    },
    /// The file does not start like gzip.
    #[error("source is not a gzip'd tar archive")]
    NotGzip,
    /// The archive could not be read.
    #[error("source archive is corrupt: {0}")]
    Corrupt(String),
    /// The build was cancelled while unpacking.
    #[error("cancelled")]
    Cancelled,
    /// The local filesystem failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// What was unpacked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries written (files, directories, links).
    pub entries: u64,
    /// Bytes of regular files written.
    pub bytes: u64,
}

/// What an earlier entry left at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

/// Unpacks the gzip'd tar read from `archive` (from its start) into `dest`,
/// which must be an empty directory that this build owns. On error `dest` may hold a partial tree
/// (never anything outside it); the caller removes it.
pub fn unpack(
    mut file: File,
    dest: &Path,
    limits: &SourceLimits,
    cancel: &CancellationToken,
) -> Result<Unpacked, UnpackError> {
    let mut magic = [0u8; 2];
    if file.read_exact(&mut magic).is_err() || magic != [0x1f, 0x8b] {
        return Err(UnpackError::NotGzip);
    }
    file.seek(io::SeekFrom::Start(0))
        .map_err(io_err("rewind the source archive".into()))?;
    let stream_limit = limits
        .max_unpacked_bytes
        .saturating_add(limits.max_entries.saturating_mul(PER_ENTRY_OVERHEAD))
        .saturating_add(1 << 20);
    let exceeded = Arc::new(AtomicBool::new(false));
    let reader = CappedReader {
        inner: flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(256 << 10, file)),
        remaining: stream_limit,
        exceeded: exceeded.clone(),
    };
    let mut unpacker = Unpacker {
        dest,
        limits,
        known: HashMap::new(),
        symlinks: Vec::new(),
        done: Unpacked::default(),
    };
    let result = unpacker.run(tar::Archive::new(reader), cancel);
    if exceeded.load(Ordering::Relaxed) {
        return Err(UnpackError::TooLarge {
            limit: limits.max_unpacked_bytes,
        });
    }
    result?;
    unpacker.check_symlinks()?;
    Ok(unpacker.done)
}

struct Unpacker<'a> {
    dest: &'a Path,
    limits: &'a SourceLimits,
    /// Every path written so far (explicit entries and implied parents).
    known: HashMap<PathBuf, Kind>,
    /// Symlinks written, with their names in the archive, for the final check.
    symlinks: Vec<(PathBuf, String)>,
    done: Unpacked,
}

impl Unpacker<'_> {
    fn run<R: Read>(
        &mut self,
        mut archive: tar::Archive<R>,
        cancel: &CancellationToken,
    ) -> Result<(), UnpackError> {
        let entries = archive
            .entries()
            .map_err(|e| UnpackError::Corrupt(e.to_string()))?;
        let mut seen = 0u64;
        for entry in entries {
            if cancel.is_cancelled() {
                return Err(UnpackError::Cancelled);
            }
            let mut entry = entry.map_err(|e| UnpackError::Corrupt(e.to_string()))?;
            let kind = entry.header().entry_type();
            if kind == EntryType::XGlobalHeader {
                // `git archive` writes one with the commit id; it describes
                // no file.
                continue;
            }
            seen += 1;
            if seen > self.limits.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: self.limits.max_entries,
                });
            }
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let refuse = |why: &str| UnpackError::Refused {
                path: name.clone(),
                why: why.to_owned(),
            };
            let rel = archive_path(&entry.path_bytes()).map_err(&refuse)?;
            if rel.as_os_str().is_empty() {
                if kind == EntryType::Directory {
                    continue; // `./` itself
                }
                return Err(refuse("empty path"));
            }
            self.check_parents(&rel).map_err(|why| refuse(&why))?;
            if let Some(existing) = self.known.get(&rel)
                && !(kind == EntryType::Directory && *existing == Kind::Dir)
            {
                return Err(refuse("duplicate entry"));
            }
            let target = self.dest.join(&rel);
            match kind {
                EntryType::Directory => {
                    self.make_parents(&rel)?;
                    if let std::collections::hash_map::Entry::Vacant(slot) = self.known.entry(rel) {
                        fs::create_dir(&target)
                            .map_err(io_err(format!("create directory {name}")))?;
                        set_mode(&target, 0o755)?;
                        slot.insert(Kind::Dir);
                    }
                }
                EntryType::Regular | EntryType::Continuous => {
                    let size = entry.size();
                    let total = self.done.bytes.saturating_add(size);
                    if total > self.limits.max_unpacked_bytes {
                        return Err(refuse(&format!(
                            "unpacked size exceeds the {}-byte limit",
                            self.limits.max_unpacked_bytes
                        )));
                    }
                    self.make_parents(&rel)?;
                    let mode = normal_mode(entry.header().mode().unwrap_or(0o644));
                    let mut out = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(mode)
                        .open(&target)
                        .map_err(io_err(format!("create {name}")))?;
                    // A cap hit inside the copy is reported by `unpack` (it
                    // checks the reader's flag before this error).
                    let written = io::copy(&mut (&mut entry).take(size), &mut out)
                        .map_err(|e| UnpackError::Corrupt(format!("reading {name}: {e}")))?;
                    if written != size {
                        return Err(UnpackError::Corrupt(format!(
                            "{name}: archive ends inside the file"
                        )));
                    }
                    set_mode(&target, mode)?;
                    self.done.bytes = total;
                    self.known.insert(rel, Kind::File);
                }
                EntryType::Symlink => {
                    let link = entry
                        .link_name_bytes()
                        .ok_or_else(|| refuse("symlink without a target"))?
                        .into_owned();
                    let link = PathBuf::from(std::ffi::OsStr::from_bytes(&link));
                    if !lexically_inside(&rel, &link) {
                        return Err(refuse(&format!(
                            "symlink to {:?} points outside the source directory",
                            link.display().to_string()
                        )));
                    }
                    self.make_parents(&rel)?;
                    std::os::unix::fs::symlink(&link, &target)
                        .map_err(io_err(format!("create symlink {name}")))?;
                    self.symlinks.push((rel.clone(), name.clone()));
                    self.known.insert(rel, Kind::Symlink);
                }
                EntryType::Link => {
                    let link = entry
                        .link_name_bytes()
                        .ok_or_else(|| refuse("hard link without a target"))?;
                    let link_rel = archive_path(&link)
                        .map_err(|why| refuse(&format!("hard link target: {why}")))?;
                    if self.known.get(&link_rel) != Some(&Kind::File) {
                        return Err(refuse(
                            "hard link target is not a regular file earlier in the archive",
                        ));
                    }
                    self.make_parents(&rel)?;
                    fs::hard_link(self.dest.join(&link_rel), &target)
                        .map_err(io_err(format!("create hard link {name}")))?;
                    self.known.insert(rel, Kind::File);
                }
                EntryType::Char | EntryType::Block => {
                    return Err(refuse("device files are not allowed"));
                }
                EntryType::Fifo => return Err(refuse("fifos are not allowed")),
                EntryType::GNUSparse => return Err(refuse("sparse files are not supported")),
                other => {
                    return Err(refuse(&format!(
                        "unsupported entry type {:?}",
                        other.as_byte() as char
                    )));
                }
            }
            self.done.entries += 1;
        }
        Ok(())
    }

    /// Refuses a path whose parent is a symlink or a file written earlier,
    /// so no later entry can be written through a link.
    fn check_parents(&self, rel: &Path) -> Result<(), String> {
        let mut parent = rel.parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            match self.known.get(p) {
                Some(Kind::Symlink) => {
                    return Err(format!(
                        "path passes through the symlink {:?}",
                        p.display().to_string()
                    ));
                }
                Some(Kind::File) => {
                    return Err(format!(
                        "parent {:?} is not a directory",
                        p.display().to_string()
                    ));
                }
                Some(Kind::Dir) | None => {}
            }
            parent = p.parent();
        }
        Ok(())
    }

    /// Creates the missing parent directories of `rel` (they are checked not
    /// to be links by [`Self::check_parents`]).
    fn make_parents(&mut self, rel: &Path) -> Result<(), UnpackError> {
        let mut missing = Vec::new();
        let mut parent = rel.parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            if self.known.contains_key(p) {
                break;
            }
            missing.push(p.to_path_buf());
            parent = p.parent();
        }
        for dir in missing.into_iter().rev() {
            let path = self.dest.join(&dir);
            fs::create_dir(&path).map_err(io_err(format!("create directory {}", dir.display())))?;
            set_mode(&path, 0o755)?;
            self.known.insert(dir, Kind::Dir);
        }
        Ok(())
    }

    /// Resolves every symlink through the finished tree (links to links
    /// included) and refuses any that ends up outside it.
    fn check_symlinks(&self) -> Result<(), UnpackError> {
        for (rel, name) in &self.symlinks {
            if !physically_inside(self.dest, rel)? {
                return Err(UnpackError::Refused {
                    path: name.clone(),
                    why: "symlink resolves outside the source directory (through other links)"
                        .into(),
                });
            }
        }
        Ok(())
    }
}

/// The relative path an archive entry names, or why it is refused.
fn archive_path(bytes: &[u8]) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for component in Path::new(std::ffi::OsStr::from_bytes(bytes)).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("path leaves the source directory"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed");
            }
        }
    }
    Ok(out)
}

/// Whether a link at `rel` pointing to `target` stays inside the tree when
/// read as plain text (no link followed).
fn lexically_inside(rel: &Path, target: &Path) -> bool {
    if target.as_os_str().is_empty() {
        return false;
    }
    let mut depth = rel.components().count().saturating_sub(1);
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Whether the link at `rel` resolves inside `root`, following links as the
/// kernel would but never leaving `root` to look.
fn physically_inside(root: &Path, rel: &Path) -> Result<bool, UnpackError> {
    let read_link = |path: &Path| {
        fs::read_link(root.join(path)).map_err(io_err(format!("read link {}", path.display())))
    };
    let mut stack: Vec<OsString> = rel
        .parent()
        .map(|p| p.components().map(|c| c.as_os_str().to_owned()).collect())
        .unwrap_or_default();
    let mut pending: VecDeque<OsString> = components(&read_link(rel)?);
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        match part.to_str() {
            Some("/") => return Ok(false),
            Some(".") => {}
            Some("..") => {
                if stack.pop().is_none() {
                    return Ok(false);
                }
            }
            _ => {
                stack.push(part);
                let here: PathBuf = stack.iter().collect();
                let is_link = fs::symlink_metadata(root.join(&here))
                    .is_ok_and(|m| m.file_type().is_symlink());
                if is_link {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Ok(false);
                    }
                    let target = read_link(&here)?;
                    stack.pop();
                    for c in components(&target).into_iter().rev() {
                        pending.push_front(c);
                    }
                }
            }
        }
    }
    Ok(true)
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .map(|c| match c {
            Component::RootDir | Component::Prefix(_) => OsString::from("/"),
            c => c.as_os_str().to_owned(),
        })
        .collect()
}

/// 0755 when any execute bit is set, else 0644: no setuid, no world-writable.
fn normal_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o755 } else { 0o644 }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), UnpackError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))
}

fn io_err(action: String) -> impl FnOnce(io::Error) -> UnpackError {
    move |source| UnpackError::Io { action, source }
}

/// Counts decompressed bytes and fails once more than allowed were read.
struct CappedReader<R> {
    inner: R,
    remaining: u64,
    exceeded: Arc<AtomicBool>,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.remaining.checked_sub(n as u64) {
            Some(rest) => {
                self.remaining = rest;
                Ok(n)
            }
            None => {
                self.exceeded.store(true, Ordering::Relaxed);
                Err(io::Error::other("decompressed source exceeds the size cap"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths() {
        assert_eq!(archive_path(b"./a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(archive_path(b"a/").unwrap(), PathBuf::from("a"));
        assert!(archive_path(b"../x").is_err());
        assert!(archive_path(b"a/../../x").is_err());
        assert!(archive_path(b"/etc/x").is_err());
    }

    #[test]
    fn lexical_link_check() {
        let rel = Path::new("a/link");
        assert!(lexically_inside(rel, Path::new("../b")));
        assert!(lexically_inside(rel, Path::new("./c/../d")));
        assert!(!lexically_inside(rel, Path::new("../../x")));
        assert!(!lexically_inside(rel, Path::new("/")));
        assert!(!lexically_inside(Path::new("link"), Path::new("..")));
        assert!(!lexically_inside(rel, Path::new("")));
    }

    #[test]
    fn modes_are_normalised() {
        assert_eq!(normal_mode(0o4777), 0o755);
        assert_eq!(normal_mode(0o666), 0o644);
        assert_eq!(normal_mode(0o100), 0o755);
    }
}
