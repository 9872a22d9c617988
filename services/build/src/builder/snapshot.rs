//! The snapshot builder (the embedded default): the unpacked source becomes
//! an immutable, content-addressed directory that the local runtime runs
//! each service's `command` in.
//!
//! The address is a SHA-256 over the file tree: every path (sorted bytewise),
//! its kind, whether a file is executable, file contents and link targets.
//! Owners, times and other mode bits are not restored by unpacking and so do
//! not count. Identical sources therefore share one artifact (the log says
//! so), and different sources never do. A new artifact is made read-only
//! and owner-only (0500/0400: apps never run in it, the local runtime gives
//! each release a copy) and moved into place with one `rename`, so a
//! half-written artifact is never visible and two identical builds racing
//! each other end up sharing the winner's.
//!
//! An artifact is verified before it is reused: its tree is hashed again
//! and must still have the name's digest. One changed since (by anything
//! that could write the data directory: on a rack not running as root, an
//! app shares its user) is replaced by the fresh source, so a later build
//! never runs what someone slipped into an earlier one. Hashing the stored
//! tree costs as much as hashing the source did, and only on reuse.

use std::fs;
use std::io::{self, Read as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Artifacts, BuildError, BuildJob, Builder, service_dir};

/// Builds snapshot artifacts under one directory.
#[derive(Clone, Debug)]
pub struct SnapshotBuilder {
    artifacts: PathBuf,
}

impl SnapshotBuilder {
    /// A builder keeping artifacts in `artifacts` (an absolute directory on
    /// the same filesystem as the build work directories).
    pub fn new(artifacts: PathBuf) -> Self {
        Self { artifacts }
    }
}

#[async_trait::async_trait]
impl Builder for SnapshotBuilder {
    fn name(&self) -> &'static str {
        "snapshot"
    }

    async fn build(&self, job: BuildJob<'_>) -> Result<Artifacts, BuildError> {
        job.log.line("Hashing source...");
        let source = job.source.to_path_buf();
        let artifacts = self.artifacts.clone();
        let cancel = job.cancel.clone();
        let (name, stored) =
            tokio::task::spawn_blocking(move || store_snapshot(&source, &artifacts, &cancel))
                .await
                .map_err(|e| BuildError::Failed(format!("snapshot task failed: {e}")))??;
        let short = &name[..name.len().min("sha256-".len() + 12)];
        match stored {
            Stored::Reused => job.log.line(format!(
                "Reusing snapshot {short} (source unchanged, verified)"
            )),
            Stored::Created => job.log.line(format!("Created snapshot {short}")),
            Stored::Replaced => job.log.line(format!(
                "Replaced snapshot {short}: it had been changed since it was made"
            )),
        }
        let root = self.artifacts.join(&name);
        let mut out = Artifacts::new();
        for (service_name, service) in &job.manifest.services {
            let artifact = match (&service.build, &service.image) {
                (Some(build), _) => file_url(&service_dir(&root, service_name, &build.path)?),
                (None, Some(image)) => image.clone(),
                // A service with only a command runs it in the source root.
                (None, None) => file_url(&root),
            };
            job.log.line(format!("Service {service_name}: {artifact}"));
            out.insert(service_name.clone(), artifact);
        }
        Ok(out)
    }
}

/// What [`store_snapshot`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Moved the source into place.
    Created,
    /// Found the artifact there, intact.
    Reused,
    /// Found it changed, and put the source in its place.
    Replaced,
}

/// Hashes `source` and moves it to `<artifacts>/sha256-<hex>` unless an
/// intact artifact of that digest exists already (verified by hashing it
/// again; a changed one is replaced). Returns the artifact's name and what
/// was done.
pub fn store_snapshot(
    source: &Path,
    artifacts: &Path,
    cancel: &CancellationToken,
) -> Result<(String, Stored), BuildError> {
    let digest = tree_digest(source, cancel)?;
    let name = format!("sha256-{digest}");
    let dest = artifacts.join(&name);
    let mut replaced = false;
    if fs::symlink_metadata(&dest).is_ok() {
        match verify(&dest, &digest, cancel) {
            Ok(true) => return Ok((name, Stored::Reused)),
            Err(BuildError::Cancelled) => return Err(BuildError::Cancelled),
            Ok(false) | Err(_) => {
                tracing::warn!(
                    artifact = %dest.display(),
                    "snapshot artifact changed since it was made; replacing it"
                );
                discard(artifacts, &dest)?;
                replaced = true;
            }
        }
    }
    slipway_storage::files::create_private_dir_all(artifacts)
        .map_err(BuildError::io(format!("create {}", artifacts.display())))?;
    make_read_only(source)?;
    let created = if replaced {
        Stored::Replaced
    } else {
        Stored::Created
    };
    match fs::rename(source, &dest) {
        Ok(()) => Ok((name, created)),
        // Another build of the same source got there first.
        Err(_) if dest.is_dir() => Ok((name, Stored::Reused)),
        Err(e) => Err(BuildError::io(format!(
            "move snapshot into {}",
            dest.display()
        ))(e)),
    }
}

/// Whether the artifact at `dest` still hashes to `digest`.
fn verify(dest: &Path, digest: &str, cancel: &CancellationToken) -> Result<bool, BuildError> {
    if !fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) {
        return Ok(false);
    }
    Ok(tree_digest(dest, cancel)? == digest)
}

/// Moves a bad artifact out of the way in one `rename` (so no build sees
/// it half-removed), then removes it.
fn discard(artifacts: &Path, dest: &Path) -> Result<(), BuildError> {
    let aside = artifacts.join(format!(".discarded-{:016x}", rand::random::<u64>()));
    fs::rename(dest, &aside).map_err(BuildError::io(format!("move {} aside", dest.display())))?;
    remove_tree(&aside).map_err(BuildError::io(format!("remove {}", aside.display())))
}

/// The hex SHA-256 of a file tree (see the module docs for what counts).
pub fn tree_digest(root: &Path, cancel: &CancellationToken) -> Result<String, BuildError> {
    let mut hasher = Sha256::new();
    hash_dir(root, Path::new(""), &mut hasher, cancel)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn hash_dir(
    root: &Path,
    rel: &Path,
    hasher: &mut Sha256,
    cancel: &CancellationToken,
) -> Result<(), BuildError> {
    if cancel.is_cancelled() {
        return Err(BuildError::Cancelled);
    }
    let dir = root.join(rel);
    let mut names = fs::read_dir(&dir)
        .map_err(BuildError::io(format!("read {}", dir.display())))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(BuildError::io(format!("read {}", dir.display())))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path)
            .map_err(BuildError::io(format!("stat {}", path.display())))?;
        let rel_bytes = rel.as_os_str().as_bytes();
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path)
                .map_err(BuildError::io(format!("read link {}", path.display())))?;
            frame(hasher, b"L", rel_bytes);
            frame(hasher, b"T", target.as_os_str().as_bytes());
        } else if meta.is_dir() {
            frame(hasher, b"D", rel_bytes);
            hash_dir(root, &rel, hasher, cancel)?;
        } else if meta.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            frame(hasher, if exec { b"X" } else { b"F" }, rel_bytes);
            hasher.update(meta.len().to_le_bytes());
            hash_file(&path, hasher).map_err(BuildError::io(format!("read {}", path.display())))?;
        } else {
            return Err(BuildError::Failed(format!(
                "unexpected file type at {}",
                rel.display()
            )));
        }
    }
    Ok(())
}

/// A tag and a length-prefixed value, so no two trees hash the same stream.
fn frame(hasher: &mut Sha256, tag: &[u8], value: &[u8]) {
    hasher.update(tag);
    hasher.update((value.len() as u64).to_le_bytes());
    hasher.update(value);
}

fn hash_file(path: &Path, hasher: &mut Sha256) -> io::Result<()> {
    let mut file = fs::File::open(path)?;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// Leaves the owner read (and execute) permission only on every file and
/// directory under `root` (directories last, so the walk can still read
/// them): read-only, and nobody else's to read.
fn make_read_only(root: &Path) -> Result<(), BuildError> {
    for entry in fs::read_dir(root).map_err(BuildError::io(format!("read {}", root.display())))? {
        let entry = entry.map_err(BuildError::io(format!("read {}", root.display())))?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)
            .map_err(BuildError::io(format!("stat {}", path.display())))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_dir() {
            make_read_only(&path)?;
        } else {
            let mode = meta.permissions().mode() & 0o500;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(BuildError::io(format!("chmod {}", path.display())))?;
        }
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o500))
        .map_err(BuildError::io(format!("chmod {}", root.display())))
}

/// Removes a tree that may contain read-only directories.
pub fn remove_tree(root: &Path) -> io::Result<()> {
    match fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(meta) if !meta.is_dir() => return fs::remove_file(root),
        Ok(_) => {}
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(root)? {
        let path = entry?.path();
        if fs::symlink_metadata(&path)?.is_dir() {
            remove_tree(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    fs::remove_dir(root)
}

/// `file://` URL of an absolute path.
fn file_url(path: &Path) -> String {
    match url::Url::from_file_path(path) {
        Ok(url) => url.to_string(),
        Err(()) => format!("file://{}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, body: &str, mode: u32) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, body).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn digest_covers_paths_modes_contents_and_links() {
        let never = CancellationToken::new();
        let base = tempfile::tempdir().unwrap();
        let make = |name: &str| {
            let dir = base.path().join(name);
            write(&dir, "a/b.txt", "hello", 0o644);
            write(&dir, "run.sh", "#!/bin/sh", 0o755);
            std::os::unix::fs::symlink("a/b.txt", dir.join("link")).unwrap();
            dir
        };
        let one = tree_digest(&make("one"), &never).unwrap();
        assert_eq!(one, tree_digest(&make("two"), &never).unwrap());

        let changed = make("content");
        write(&changed, "a/b.txt", "hellO", 0o644);
        let moved = make("path");
        fs::rename(moved.join("a/b.txt"), moved.join("a/c.txt")).unwrap();
        let mode = make("mode");
        fs::set_permissions(mode.join("run.sh"), fs::Permissions::from_mode(0o644)).unwrap();
        let link = make("link");
        fs::remove_file(link.join("link")).unwrap();
        std::os::unix::fs::symlink("run.sh", link.join("link")).unwrap();
        let mut all = vec![one];
        for dir in [changed, moved, mode, link] {
            all.push(tree_digest(&dir, &never).unwrap());
        }
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "{all:?}");
    }

    #[test]
    fn read_only_trees_can_be_removed() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("t");
        write(&dir, "x/y/z", "1", 0o644);
        make_read_only(&dir).unwrap();
        for path in ["x", "x/y", "x/y/z"] {
            let mode = fs::metadata(dir.join(path)).unwrap().permissions().mode();
            assert_eq!(mode & 0o222, 0, "{path} is writable");
            assert_eq!(mode & 0o077, 0, "{path} is open to others");
        }
        remove_tree(&dir).unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn an_artifact_changed_since_it_was_made_is_replaced_before_reuse() {
        let never = CancellationToken::new();
        let base = tempfile::tempdir().unwrap();
        let artifacts = base.path().join("artifacts");
        let source = |name: &str| {
            let dir = base.path().join(name);
            write(&dir, "app/run.sh", "#!/bin/sh\necho hi\n", 0o755);
            dir
        };
        let (name, stored) = store_snapshot(&source("one"), &artifacts, &never).unwrap();
        assert_eq!(stored, Stored::Created);
        let (again, stored) = store_snapshot(&source("two"), &artifacts, &never).unwrap();
        assert_eq!((again.as_str(), stored), (name.as_str(), Stored::Reused));

        // Tamper with it the way its owner could: chmod, write, add a file.
        let dest = artifacts.join(&name);
        for dir in [dest.clone(), dest.join("app")] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        }
        write(&dest, "app/run.sh", "#!/bin/sh\necho pwned\n", 0o755);
        let (again, stored) = store_snapshot(&source("three"), &artifacts, &never).unwrap();
        assert_eq!((again.as_str(), stored), (name.as_str(), Stored::Replaced));
        assert_eq!(
            fs::read_to_string(dest.join("app/run.sh")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        assert_eq!(tree_digest(&dest, &never).unwrap(), name["sha256-".len()..]);
        let names: Vec<_> = fs::read_dir(&artifacts)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            [std::ffi::OsString::from(&name)],
            "nothing left aside"
        );
    }
}
