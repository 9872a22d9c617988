//! Upload files written around the page cache (`O_DIRECT`).
//!
//! An uploaded source is written once and read once, by the build that
//! follows it. Copying it into the page cache first cost more than the
//! network transfer itself: on the virtual machines we measured, every
//! fresh page-cache page is a page the host must back, and
//! `copy_folio_from_iter` was a third of an upload's CPU time. With
//! `O_DIRECT` the device reads the bytes straight from one reused,
//! page-aligned buffer, so the guest copies each byte once (into that
//! buffer) and allocates nothing per upload.
//!
//! Where the filesystem refuses `O_DIRECT` (tmpfs, some FUSE mounts) the
//! writer carries on with ordinary buffered writes; the file is the same.

use std::fs::File;
use std::io::{self, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Mutex;

/// `O_DIRECT` transfers start on, and are multiples of, this many bytes
/// (the largest logical block size Linux devices use).
const ALIGN: usize = 4096;
/// Bytes gathered before each write: large enough that the device sees few
/// requests, small enough that a pooled buffer is cheap to keep.
const BLOCK: usize = 2 << 20;
/// Buffers kept for later uploads (one per upload written at once).
const POOLED: usize = 4;

/// Spare aligned buffers. A fresh one is a fresh set of pages to fault in,
/// so they are reused rather than freed.
static POOL: Mutex<Vec<AlignedBlock>> = Mutex::new(Vec::new());

/// `BLOCK` bytes starting on an `ALIGN` boundary, inside a larger vector.
struct AlignedBlock {
    storage: Vec<u8>,
    start: usize,
}

impl AlignedBlock {
    fn take() -> Self {
        let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
        pooled.unwrap_or_else(|| {
            let storage = vec![0u8; BLOCK + ALIGN];
            let start = storage.as_ptr().align_offset(ALIGN);
            Self { storage, start }
        })
    }

    fn give_back(self) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED {
            pool.push(self);
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + BLOCK]
    }
}

/// A new file written front to back, around the page cache when it can be.
pub struct DirectFile {
    file: File,
    block: Option<AlignedBlock>,
    /// Bytes waiting in `block`.
    filled: usize,
    /// Bytes already handed to the file.
    flushed: u64,
    direct: bool,
}

impl DirectFile {
    /// Creates `path` owner-only (0600), which must not exist.
    pub fn create_new(path: &Path) -> io::Result<Self> {
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(slipway_storage::files::FILE_MODE)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        let (file, direct) = match direct {
            Ok(file) => (file, true),
            // The filesystem has no direct I/O; nothing was created.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(slipway_storage::files::FILE_MODE)
                    .open(path)?,
                false,
            ),
            Err(e) => return Err(e),
        };
        Ok(Self {
            file,
            block: Some(AlignedBlock::take()),
            filled: 0,
            flushed: 0,
            direct,
        })
    }

    /// Whether writes bypass the page cache.
    #[cfg(test)]
    pub(crate) fn is_direct(&self) -> bool {
        self.direct
    }

    /// Appends `data`.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = (BLOCK - self.filled).min(data.len());
            let filled = self.filled;
            self.block_bytes()[filled..filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == BLOCK {
                self.flush_block(BLOCK)?;
            }
        }
        Ok(())
    }

    /// Writes what is left and trims the padding of the last block; returns
    /// the file's size. The file is not fsynced (see `objects::put_stream`).
    pub fn finish(mut self) -> io::Result<u64> {
        let size = self.flushed + self.filled as u64;
        let tail = self.filled;
        if tail > 0 {
            // Direct transfers are whole blocks: pad with zeros, then cut
            // the file back to its real length.
            let padded = tail.next_multiple_of(ALIGN);
            self.block_bytes()[tail..padded].fill(0);
            self.flush_block(padded)?;
        }
        self.file.set_len(size)?;
        Ok(size)
    }

    fn block_bytes(&mut self) -> &mut [u8] {
        self.block
            .as_mut()
            .expect("the block lives as long as the file")
            .bytes()
    }

    /// Writes the first `len` bytes of the block at `flushed`.
    fn flush_block(&mut self, len: usize) -> io::Result<()> {
        let block = self
            .block
            .as_mut()
            .expect("the block lives as long as the file");
        let bytes = &block.storage[block.start..block.start + len];
        match self.file.write_all(bytes) {
            Ok(()) => {}
            // Some filesystems accept the flag at open and refuse the
            // transfer; go on without it from the same offset.
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!("direct writes refused ({e}); writing through the page cache");
                self.direct = false;
                self.file = reopen_buffered(&self.file)?;
                self.file.seek(SeekFrom::Start(self.flushed))?;
                self.file.write_all(bytes)?;
            }
            Err(e) => return Err(e),
        }
        // Only the final, padded block is not a whole `BLOCK`; `finish`
        // trims the padding, so counting `filled` keeps `flushed` exact.
        self.flushed += self.filled.min(len) as u64;
        self.filled = 0;
        Ok(())
    }
}

impl Drop for DirectFile {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            block.give_back();
        }
    }
}

/// The same open file, without `O_DIRECT`, through `/proc/self/fd`.
fn reopen_buffered(file: &File) -> io::Result<File> {
    use std::os::fd::AsRawFd as _;
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn files_hold_exactly_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        // Empty, under one alignment unit, exactly one block, and one
        // straddling blocks in odd-sized writes.
        for (i, len) in [0, 1, ALIGN - 1, BLOCK, 2 * BLOCK + 12_345]
            .into_iter()
            .enumerate()
        {
            let path = dir.path().join(format!("f{i}"));
            let data = pattern(len);
            let mut file = DirectFile::create_new(&path).unwrap();
            for piece in data.chunks(777_777) {
                file.write(piece).unwrap();
            }
            assert_eq!(file.finish().unwrap(), len as u64);
            assert_eq!(std::fs::read(&path).unwrap(), data, "length {len}");
        }
    }

    #[test]
    fn existing_files_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taken");
        std::fs::write(&path, b"keep").unwrap();
        let e = DirectFile::create_new(&path).err().expect("must refuse");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    }

    #[test]
    fn filesystems_without_direct_io_get_the_same_file() {
        // /dev/shm is tmpfs, which refuses O_DIRECT at open.
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let path = dir.path().join("f");
        let data = pattern(BLOCK + 99);
        let mut file = DirectFile::create_new(&path).unwrap();
        file.write(&data).unwrap();
        assert_eq!(file.finish().unwrap(), data.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn uploads_on_the_data_disk_bypass_the_page_cache() {
        // The test's temporary directory is on the same kind of disk as the
        // object store here (ext4 on CI), which supports direct I/O.
        let dir = tempfile::tempdir().unwrap();
        let file = DirectFile::create_new(&dir.path().join("f")).unwrap();
        let on_tmpfs = std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(dir.path())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("tmpfs"))
            .unwrap_or(false);
        assert_eq!(file.is_direct(), !on_tmpfs);
    }
}
