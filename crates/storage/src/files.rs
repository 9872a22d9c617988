//! Owner-only local state. Every service keeps its data directory 0700 and
//! the files in it 0600 (keys, SQLite databases, sources, logs), *created*
//! with those modes rather than chmod'ed after, so there is no moment in
//! which another user could open them. The one chmod is for a directory or
//! file left looser by an older version: it is tightened at start, with a
//! warning.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Mode of private directories.
pub const DIR_MODE: u32 = 0o700;
/// Mode of private files.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` owner-only (0700) if it does not exist, its missing
/// parents with the default mode (a parent is not ours to lock down: the
/// apps directory of the local runtime may sit beside `dir`); tightens an
/// existing `dir` that others could enter.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {
            tighten(dir, DIR_MODE)
        }
        Err(e) => Err(e),
    }
}

/// Creates `dir` and its missing parents owner-only (0700): for directories
/// inside a data directory, where every level is private.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Options that create a file owner-only (0600) when it does not exist.
pub fn private_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Removes group and other permissions from an existing `path` (with a
/// warning): the fix for state written by an older version. `mode` is what
/// the owner keeps at most.
pub fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let current = meta.permissions().mode() & 0o7777;
    if current & 0o077 == 0 {
        return Ok(());
    }
    let tightened = current & mode & 0o700;
    tracing::warn!(
        path = %path.display(),
        "{} was mode {current:04o}, readable by other users; changing it to {tightened:04o}",
        path.display()
    );
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(tightened))
}

/// Creates the SQLite database file at `path` owner-only when it does not
/// exist (SQLite gives its `-wal` and `-shm` files the database's mode), or
/// tightens an existing one and its companions.
pub(crate) fn prepare_sqlite_file(path: &Path) -> io::Result<()> {
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
        return Ok(());
    }
    match private_file_options()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut name = path.as_os_str().to_owned();
                name.push(suffix);
                match tighten(Path::new(&name), FILE_MODE) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            Ok(())
        }
        // A directory that does not exist yet is the caller's to create;
        // let SQLite report it the way it always has.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn directories_and_files_are_created_owner_only_and_old_ones_tightened() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("a/data");
        create_private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        assert_ne!(
            mode(&root.path().join("a")),
            0o700,
            "parents keep the default"
        );
        create_private_dir_all(&data.join("x/y")).unwrap();
        assert_eq!(mode(&data.join("x")), 0o700);
        assert_eq!(mode(&data.join("x/y")), 0o700);

        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);

        let db = data.join("x.db");
        prepare_sqlite_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        std::fs::write(data.join("x.db-wal"), b"").unwrap();
        std::fs::set_permissions(
            data.join("x.db-wal"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        prepare_sqlite_file(&db).unwrap();
        assert_eq!(mode(&data.join("x.db-wal")), 0o600);
    }
}
