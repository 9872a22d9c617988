//! How the local runtime keeps apps away from the rack and from each other.
//!
//! An app process never runs in the data directory. Each release gets a
//! working copy of its artifact under the apps directory (outside the data
//! directory, `<data-dir>-apps` unless `--apps-dir` says otherwise):
//!
//! ```text
//! <apps>/                        root, 0711: apps can pass, not list
//! <apps>/<app>/                  root:<app gid>, 0710: only that app passes
//! <apps>/<app>/<release>/        root:<app gid>, 0710
//! <apps>/<app>/<release>/<key>/  the working copy, owned by the app's user
//! ```
//!
//! When the rack runs as root, every app's processes run as an unprivileged
//! user of its own (uid and gid of the same number from `--app-uid-range`,
//! no supplementary groups), assigned once per app and kept in its records, so
//! an app cannot read the rack's keys, databases or logs (the data
//! directory is 0700 root), another app's files (0710 directories of another
//! group) or another app's `/proc/PID/environ` (another uid), and cannot
//! change its artifact (it only ever gets a copy; the artifact is verified
//! again before a later build reuses it). When the rack does not run as
//! root, apps share its user: the layout is the same, the protection is not,
//! and the runtime says so once at start.
//!
//! A working copy lives as long as a process of its release uses it:
//! [`Isolation::prepare`] makes it (or finds it) and counts the user,
//! [`Isolation::release`] removes it after the last one. Anything that
//! starts app processes (the runtime's services; one-off processes later)
//! goes through `prepare`, [`Launch::apply`] and `release`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::os::unix::fs::{PermissionsExt as _, chown, lchown};
use std::path::{Path, PathBuf};

use super::error::IsolationError;
use super::records::LocalRecords;

/// A range of uids (and the gids of the same numbers) for app users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UidRange {
    /// First uid.
    pub low: u32,
    /// Last uid.
    pub high: u32,
}

impl UidRange {
    /// The default, `1900000000-1900065535`: clear of the ids `useradd`
    /// hands out as subordinate ids (100000-600100000, so rootless
    /// containers of local users cannot map onto app users), of
    /// systemd-nspawn's container range (524288-1879048191) and below 2^31
    /// (tools that treat ids as signed).
    pub const DEFAULT: Self = Self {
        low: 1_900_000_000,
        high: 1_900_065_535,
    };

    /// Parses `LOW-HIGH`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (low, high) = text
            .split_once('-')
            .ok_or_else(|| format!("expected LOW-HIGH, got {text:?}"))?;
        let parse = |n: &str| {
            n.trim()
                .parse::<u32>()
                .map_err(|_| format!("invalid uid {n:?}"))
        };
        let (low, high) = (parse(low)?, parse(high)?);
        // Never root or a system user; never the 32-bit -1 ("no change").
        if low < 1000 || low > high || high == u32::MAX {
            return Err(format!(
                "expected 1000 <= LOW <= HIGH < 4294967295, got {low}-{high}"
            ));
        }
        Ok(Self { low, high })
    }

    fn len(self) -> u64 {
        u64::from(self.high - self.low) + 1
    }

    fn contains(self, uid: u32) -> bool {
        (self.low..=self.high).contains(&uid)
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

/// The apps directory for a data directory when none is configured: beside
/// it, `<data-dir>-apps` (never inside: the data directory is 0700).
pub fn default_apps_dir(data_dir: &Path) -> PathBuf {
    let abs = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let abs: PathBuf = abs.components().collect();
    let mut name = abs
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "slipway".into());
    name.push("-apps");
    abs.parent().unwrap_or(Path::new("/")).join(name)
}

/// How to start one app process: where, and as whom.
#[derive(Clone, Debug)]
pub(crate) struct Launch {
    /// Its working directory (the service's directory in the copy).
    pub(crate) dir: PathBuf,
    /// The root of the release's working copy (`HOME` of an app user).
    pub(crate) home: PathBuf,
    /// The app's uid (and gid), when the rack runs as root.
    pub(crate) user: Option<u32>,
}

impl Launch {
    /// Sets the working directory and, as root, the app's user with no
    /// supplementary groups (std drops them when a uid is set) and its
    /// `HOME`. Call after the command's env is set.
    pub(crate) fn apply(&self, cmd: &mut tokio::process::Command) {
        cmd.current_dir(&self.dir);
        if let Some(uid) = self.user {
            cmd.uid(uid).gid(uid).env("HOME", &self.home);
        }
    }
}

/// The local runtime's isolation of apps (see the module docs).
pub(crate) struct Isolation {
    apps_dir: PathBuf,
    uids: UidRange,
    /// Whether app processes get users of their own (the rack is root).
    root: bool,
    records: LocalRecords,
    /// Processes using each `(app, release)` working copy.
    in_use: tokio::sync::Mutex<BTreeMap<(String, String), usize>>,
    /// Serialises uid assignment.
    assign: tokio::sync::Mutex<()>,
}

impl Isolation {
    /// Sets up the apps directory; as root, checks that the uid range is
    /// usable. Says once when apps will share the rack's user.
    pub(crate) fn start(
        apps_dir: PathBuf,
        uids: UidRange,
        records: LocalRecords,
    ) -> Result<Self, IsolationError> {
        let euid = nix::unistd::geteuid().as_raw();
        let root = euid == 0;
        if root {
            for (map, what) in [
                ("/proc/self/uid_map", "uids"),
                ("/proc/self/gid_map", "gids"),
            ] {
                if let Ok(text) = fs::read_to_string(map)
                    && !id_map_covers(&text, uids)
                {
                    return Err(IsolationError::UidsNotMapped {
                        uids,
                        what,
                        map,
                        ids: text.split_whitespace().collect::<Vec<_>>().join(" "),
                    });
                }
            }
        } else {
            tracing::warn!(
                "the rack does not run as root: apps run as its own user (uid {euid}) and can \
                 read its data directory, keys included; run it as root to give every app a \
                 user of its own"
            );
        }
        create_apps_dir(&apps_dir, root, euid)?;
        if root && let Err(e) = reachable(&apps_dir) {
            tracing::warn!("{e}; apps will fail to start until it is");
        }
        Ok(Self {
            apps_dir,
            uids,
            root,
            records,
            in_use: tokio::sync::Mutex::new(BTreeMap::new()),
            assign: tokio::sync::Mutex::new(()),
        })
    }

    /// Makes (or finds) the working copy of `release` of `app` whose
    /// artifact is the directory `artifact`, and counts one more user of
    /// it: pair with [`Isolation::release`].
    pub(crate) async fn prepare(
        &self,
        app: &str,
        release: &str,
        artifact: &Path,
    ) -> Result<Launch, IsolationError> {
        check_component("app", app)?;
        check_component("release", release)?;
        if self.root {
            reachable(&self.apps_dir)?;
        }
        let user = match self.root {
            true => Some(self.user(app).await?),
            false => None,
        };
        let (source, rel, key) = source_root(artifact);
        let release_dir = {
            let mut in_use = self.in_use.lock().await;
            // The directories are made under the lock, so that `release`
            // cannot remove them between here and the copy.
            let made = self.make_release_dir(app, release, user);
            if made.is_ok() {
                *in_use
                    .entry((app.to_owned(), release.to_owned()))
                    .or_default() += 1;
            }
            made.map_err(|source| IsolationError::WorkingDir {
                release: release.to_owned(),
                source,
            })?
        };
        let copied = tokio::task::spawn_blocking({
            let (release_dir, source) = (release_dir, source.clone());
            move || ensure_copy(&release_dir, &key, &source, user)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        match copied {
            Ok(copy) => Ok(Launch {
                dir: copy.join(rel),
                home: copy,
                user,
            }),
            Err(e) => {
                self.release(app, release).await;
                Err(IsolationError::Copy {
                    artifact: source,
                    release: release.to_owned(),
                    source: e,
                })
            }
        }
    }

    /// Counts a process found running after a restart as a user of its
    /// release's working copy.
    pub(crate) async fn adopt(&self, app: &str, release: &str) {
        *self
            .in_use
            .lock()
            .await
            .entry((app.to_owned(), release.to_owned()))
            .or_default() += 1;
    }

    /// One user of the working copy is gone; the last one removes it.
    pub(crate) async fn release(&self, app: &str, release: &str) {
        let aside = {
            let mut in_use = self.in_use.lock().await;
            let key = (app.to_owned(), release.to_owned());
            match in_use.get_mut(&key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    return;
                }
                Some(_) => {
                    in_use.remove(&key);
                }
                None => return,
            }
            let app_dir = self.apps_dir.join(app);
            let aside = self.put_aside(&app_dir.join(release));
            // Gone with the app's last release (fails while others remain).
            let _ = fs::remove_dir(&app_dir);
            aside
        };
        if let Some(aside) = aside {
            remove_in_background(aside);
        }
    }

    /// Removes what no process uses: working copies a crash or a stop of
    /// the runtime left behind. Call after re-adopting processes.
    pub(crate) async fn sweep(&self) {
        let in_use = self.in_use.lock().await;
        let Ok(apps) = fs::read_dir(&self.apps_dir) else {
            return;
        };
        let mut doomed = Vec::new();
        for app in apps.flatten() {
            let name = app.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                doomed.push(app.path());
                continue;
            }
            if !app.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for release in fs::read_dir(app.path()).into_iter().flatten().flatten() {
                let release_name = release.file_name().to_string_lossy().into_owned();
                if !in_use.contains_key(&(name.clone(), release_name)) {
                    doomed.extend(self.put_aside(&release.path()));
                } else {
                    // Copies a crash interrupted.
                    let copies = fs::read_dir(release.path()).into_iter().flatten().flatten();
                    doomed.extend(
                        copies
                            .filter(|c| c.file_name().to_string_lossy().starts_with(".copy-"))
                            .map(|c| c.path()),
                    );
                }
            }
            let _ = fs::remove_dir(app.path());
        }
        drop(in_use);
        for path in doomed {
            remove_in_background(path);
        }
    }

    /// The app's uid: the one it has, or a new one. The first candidate is
    /// a hash of the name (so a rack that lost its database tends to give
    /// an app the same uid again), then the next free one; uids that have
    /// an account on this machine are skipped.
    async fn user(&self, app: &str) -> Result<u32, IsolationError> {
        let _serial = self.assign.lock().await;
        let store_err = |source| IsolationError::AssignUser {
            app: app.to_owned(),
            source,
        };
        if let Some(uid) = self.records.app_user(app).await.map_err(store_err)? {
            if !self.uids.contains(uid) {
                tracing::warn!(
                    app,
                    uid,
                    "the app keeps its uid from outside --app-uid-range {}",
                    self.uids
                );
            }
            return Ok(uid);
        }
        let taken: BTreeSet<u32> = self
            .records
            .app_users()
            .await
            .map_err(store_err)?
            .into_iter()
            .collect();
        let size = self.uids.len();
        let start = fnv1a(app.as_bytes()) % size;
        for i in 0..size {
            let uid = self.uids.low + ((start + i) % size) as u32;
            if taken.contains(&uid) || has_account(uid) {
                continue;
            }
            if self
                .records
                .assign_app_user(app, uid)
                .await
                .map_err(store_err)?
            {
                tracing::info!(app, uid, "assigned a user to the app");
                return Ok(uid);
            }
            if let Some(uid) = self.records.app_user(app).await.map_err(store_err)? {
                return Ok(uid);
            }
        }
        Err(IsolationError::NoFreeUid {
            app: app.to_owned(),
            uids: self.uids,
        })
    }

    /// `<apps>/<app>/<release>`, made if missing: as root, root-owned,
    /// 0710 and of the app's group, so only the app's user (and root)
    /// passes and only root changes it; else 0700.
    fn make_release_dir(&self, app: &str, release: &str, user: Option<u32>) -> io::Result<PathBuf> {
        let app_dir = self.apps_dir.join(app);
        let release_dir = app_dir.join(release);
        let mode = if user.is_some() { 0o710 } else { 0o700 };
        for dir in [&app_dir, &release_dir] {
            match DirBuilder::new().mode(mode).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let meta = fs::symlink_metadata(dir)?;
                    if !meta.is_dir() {
                        return Err(io::Error::other(format!(
                            "{} is not a directory",
                            dir.display()
                        )));
                    }
                }
                Err(e) => return Err(e),
            }
            if let Some(gid) = user {
                chown(dir, Some(0), Some(gid))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
            }
        }
        Ok(release_dir)
    }

    /// Renames `path` to a fresh name in the apps directory (atomic, so no
    /// process sees it half-removed); `None` if it does not exist.
    fn put_aside(&self, path: &Path) -> Option<PathBuf> {
        let aside = self
            .apps_dir
            .join(format!(".gone-{:016x}", rand::random::<u64>()));
        match fs::rename(path, &aside) {
            Ok(()) => Some(aside),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!("failed to remove {}: {e}", path.display());
                None
            }
        }
    }
}

/// Creates the apps directory: 0711 root's when root (apps pass through it
/// to their own), else 0700. An existing one must be ours and writable by
/// nobody else, or another user could swap an app's directory for theirs.
fn create_apps_dir(dir: &Path, root: bool, euid: u32) -> Result<(), IsolationError> {
    let mode = if root { 0o711 } else { 0o700 };
    let fail = |source| IsolationError::AppsDir {
        dir: dir.to_owned(),
        source,
    };
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(fail)?;
    }
    match DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {
            // Exactly this mode, whatever the umask.
            fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(fail)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(dir).map_err(fail)?;
            if !meta.is_dir() || meta.uid() != euid || meta.mode() & 0o022 != 0 {
                return Err(IsolationError::AppsDirUnsafe {
                    dir: dir.to_owned(),
                    euid,
                });
            }
            Ok(())
        }
        Err(e) => Err(fail(e)),
    }
}

/// Whether app users can reach `dir`: every directory above it must be
/// searchable by others.
fn reachable(dir: &Path) -> Result<(), IsolationError> {
    for ancestor in dir.ancestors().skip(1) {
        if let Ok(meta) = fs::metadata(ancestor)
            && meta.mode() & 0o001 == 0
        {
            return Err(IsolationError::Unreachable {
                dir: dir.to_owned(),
                ancestor: ancestor.to_owned(),
                mode: meta.mode() & 0o7777,
            });
        }
    }
    Ok(())
}

/// Whether `text` (a `/proc/self/{u,g}id_map`) maps every id of `range`.
fn id_map_covers(text: &str, range: UidRange) -> bool {
    text.lines().any(|line| {
        let fields: Vec<u64> = line
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        matches!(fields[..], [inside, _, count]
            if inside <= u64::from(range.low) && u64::from(range.high) < inside + count)
    })
}

/// Whether `uid` belongs to an account of this machine.
fn has_account(uid: u32) -> bool {
    matches!(
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Ok(Some(_))
    )
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// App names and release ids become directory names: plain ones only.
fn check_component(what: &'static str, name: &str) -> Result<(), IsolationError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(IsolationError::BadName {
            what,
            name: name.to_owned(),
        })
    }
}

/// What to copy for an artifact directory: the snapshot it lies in (a
/// service's `build.path` may look at its siblings), the artifact's path
/// inside it, and a name for the copy.
fn source_root(artifact: &Path) -> (PathBuf, PathBuf, String) {
    let is_snapshot = |name: &str| {
        name.strip_prefix("sha256-")
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    for root in artifact.ancestors() {
        if let Some(name) = root.file_name().and_then(|n| n.to_str())
            && is_snapshot(name)
        {
            let rel = artifact.strip_prefix(root).unwrap_or(Path::new(""));
            return (root.to_owned(), rel.to_owned(), name.to_owned());
        }
    }
    let key = format!(
        "dir-{:016x}",
        fnv1a(artifact.as_os_str().as_encoded_bytes())
    );
    (artifact.to_owned(), PathBuf::new(), key)
}

/// `<release_dir>/<key>`, copied from `source` unless it exists: into a
/// fresh hidden directory first, handed to the app's user, then renamed
/// into place, so a copy is whole or absent.
fn ensure_copy(
    release_dir: &Path,
    key: &str,
    source: &Path,
    user: Option<u32>,
) -> io::Result<PathBuf> {
    let dest = release_dir.join(key);
    if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
        return Ok(dest);
    }
    let staging = release_dir.join(format!(".copy-{:016x}", rand::random::<u64>()));
    let done = copy_tree(source, &staging)
        .and_then(|()| match user {
            Some(uid) => chown_tree(&staging, uid),
            None => Ok(()),
        })
        .and_then(|()| fs::rename(&staging, &dest));
    match done {
        Ok(()) => Ok(dest),
        // Another process of the release made it first.
        Err(_) if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) => {
            let _ = remove_tree(&staging);
            Ok(dest)
        }
        Err(e) => {
            let _ = remove_tree(&staging);
            Err(e)
        }
    }
}

/// Copies a tree: directories 0700, files 0600 (0700 when executable),
/// links as links; nothing is followed. `io::copy` uses
/// `copy_file_range`, which shares blocks where the filesystem can.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    DirBuilder::new().mode(0o700).create(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (source, dest) = (entry.path(), to.join(entry.file_name()));
        let meta = fs::symlink_metadata(&source)?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&source)?, &dest)?;
        } else if kind.is_dir() {
            copy_tree(&source, &dest)?;
        } else if kind.is_file() {
            let mode = if meta.mode() & 0o111 != 0 {
                0o700
            } else {
                0o600
            };
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&dest)?;
            io::copy(&mut fs::File::open(&source)?, &mut out)?;
        }
        // Snapshots hold nothing else (unpacking refuses devices and fifos).
    }
    Ok(())
}

/// Gives every entry of a tree to `uid` (and the gid of that number),
/// without following links.
fn chown_tree(root: &Path, uid: u32) -> io::Result<()> {
    for entry in fs::read_dir(root)? {
        let path = entry?.path();
        if fs::symlink_metadata(&path)?.is_dir() {
            chown_tree(&path, uid)?;
        } else {
            lchown(&path, Some(uid), Some(uid))?;
        }
    }
    lchown(root, Some(uid), Some(uid))
}

/// Removes a tree whatever its owner made of its modes.
fn remove_tree(root: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    if !meta.is_dir() {
        return fs::remove_file(root);
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(root)? {
        remove_tree(&entry?.path())?;
    }
    fs::remove_dir(root)
}

fn remove_in_background(path: PathBuf) {
    tokio::task::spawn_blocking(move || {
        if let Err(e) = remove_tree(&path) {
            tracing::warn!("failed to remove {}: {e}", path.display());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_ranges_parse_and_refuse_root_and_system_users() {
        assert_eq!(
            UidRange::parse("200000-265535").unwrap(),
            UidRange {
                low: 200_000,
                high: 265_535
            }
        );
        assert_eq!(UidRange::DEFAULT.len(), 65_536);
        for bad in ["0-10", "999-2000", "5-3", "x", "2000-4294967295", "-"] {
            assert!(UidRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn id_maps_must_cover_the_whole_range() {
        let range = UidRange::DEFAULT;
        assert!(id_map_covers("         0          0 4294967295\n", range));
        assert!(!id_map_covers("         0     100000      65536\n", range));
        assert!(!id_map_covers("0 0 1900000000\n1900000000 1 100\n", range));
    }

    #[test]
    fn an_apps_dir_behind_a_private_directory_is_unreachable() {
        let base = tempfile::tempdir().unwrap();
        let apps = base.path().join("rack-apps");
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let e = reachable(&apps).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("{} is mode 0700", base.path().display())),
            "{e}"
        );
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o711)).unwrap();
        reachable(&apps).unwrap();
    }

    #[test]
    fn the_apps_dir_is_beside_the_data_dir() {
        assert_eq!(
            default_apps_dir(Path::new("/var/lib/slipway/rack")),
            Path::new("/var/lib/slipway/rack-apps")
        );
        assert_eq!(
            default_apps_dir(Path::new("/srv/data/./rollout/")),
            Path::new("/srv/data/rollout-apps")
        );
        assert!(default_apps_dir(Path::new(".slipway")).is_absolute());
    }

    #[test]
    fn snapshots_are_copied_whole_and_other_directories_as_they_are() {
        let hex = "ab".repeat(32);
        let (root, rel, key) =
            source_root(&Path::new("/d/artifacts").join(format!("sha256-{hex}/web/app")));
        assert_eq!(
            root,
            Path::new("/d/artifacts").join(format!("sha256-{hex}"))
        );
        assert_eq!(rel, Path::new("web/app"));
        assert_eq!(key, format!("sha256-{hex}"));
        let (root, rel, key) = source_root(Path::new("/tmp/x/sha256-short"));
        assert_eq!(root, Path::new("/tmp/x/sha256-short"));
        assert_eq!(rel, Path::new(""));
        assert!(key.starts_with("dir-"));
    }

    #[test]
    fn names_that_could_leave_the_apps_dir_are_refused() {
        for ok in ["myapp", "RABCDEFGHIJ", "web-1.2_x"] {
            check_component("app", ok).unwrap();
        }
        for bad in ["", "..", ".hidden", "a/b", "-x", &"a".repeat(129)] {
            assert!(check_component("app", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn copies_keep_contents_links_and_the_execute_bit_only() {
        let base = tempfile::tempdir().unwrap();
        let src = base.path().join("src");
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::write(src.join("bin/run"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("bin/run"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::write(src.join("data"), "x").unwrap();
        std::os::unix::fs::symlink("bin/run", src.join("link")).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o555)).unwrap();
        let release = base.path().join("release");
        fs::create_dir(&release).unwrap();
        let copy = ensure_copy(&release, "k", &src, None).unwrap();
        assert_eq!(copy, release.join("k"));
        let mode = |p: &str| fs::symlink_metadata(copy.join(p)).unwrap().mode() & 0o777;
        assert_eq!(
            (mode(""), mode("bin"), mode("bin/run"), mode("data")),
            (0o700, 0o700, 0o700, 0o600)
        );
        assert_eq!(
            fs::read_link(copy.join("link")).unwrap(),
            Path::new("bin/run")
        );
        assert_eq!(fs::read_to_string(copy.join("data")).unwrap(), "x");
        // Found, not copied again; nothing left beside it.
        fs::write(copy.join("data"), "changed by the app").unwrap();
        ensure_copy(&release, "k", &src, None).unwrap();
        assert_eq!(
            fs::read_to_string(copy.join("data")).unwrap(),
            "changed by the app"
        );
        assert_eq!(fs::read_dir(&release).unwrap().count(), 1);
        remove_tree(&copy).unwrap();
        assert!(!copy.exists());
    }
}
