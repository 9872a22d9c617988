//! The CLI's own stdin and stdout for a session with a one-off (`run`,
//! `exec`).
//!
//! Pipes (`pg_dump … | slipway run web psql`, or a program driving the CLI)
//! are read and written through the reactor, non-blocking, with their
//! buffers widened to 1 MiB: each chunk is one syscall on this thread.
//! tokio's own stdin and stdout hand every read and write to a thread of
//! the blocking pool and back, which on a 100 MB copy costs more than the
//! copy itself. Anything else (a terminal, a file, `/dev/null`) keeps
//! tokio's stdio.
//!
//! `O_NONBLOCK` is a flag of the open file description, which the CLI may
//! share with whatever else holds it (the shell's next command in
//! `(slipway run …; cat) < fifo`), so the flags are put back when
//! [`Stdio::flags`] is dropped; the CLI drops it before it exits.

use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::stat::{SFlag, fstat};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;

/// What a pipe's buffer is widened to (Linux's limit for a user).
const PIPE_SIZE: i32 = 1 << 20;

/// stdin and stdout as async streams, for as long as this lives.
pub(crate) struct Stdio {
    /// The CLI's stdin.
    pub(crate) input: Box<dyn AsyncRead + Unpin + Send>,
    /// The CLI's stdout.
    pub(crate) output: Box<dyn AsyncWrite + Unpin + Send>,
    /// Puts the pipes' flags back when dropped.
    pub(crate) flags: Flags,
}

/// The descriptions whose flags were changed (through a duplicate of their
/// descriptor, which shares them), with their flags before; put back on
/// drop.
pub(crate) struct Flags(Vec<(OwnedFd, OFlag)>);

impl Stdio {
    /// The process's stdin and stdout.
    pub(crate) fn open() -> Self {
        let mut restore = Vec::new();
        let stdin = std::io::stdin();
        let input: Box<dyn AsyncRead + Unpin + Send> = match fifo(stdin.as_fd(), &mut restore)
            .and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok())
        {
            Some(pipe) => Box::new(pipe),
            None => Box::new(tokio::io::stdin()),
        };
        let stdout = std::io::stdout();
        let output: Box<dyn AsyncWrite + Unpin + Send> = match fifo(stdout.as_fd(), &mut restore)
            .and_then(|fd| pipe::Sender::from_owned_fd(fd).ok())
        {
            Some(pipe) => Box::new(pipe),
            None => Box::new(tokio::io::stdout()),
        };
        Self {
            input,
            output,
            flags: Flags(restore),
        }
    }
}

impl Drop for Flags {
    fn drop(&mut self) {
        for (fd, flags) in &self.0 {
            let _ = fcntl(fd, FcntlArg::F_SETFL(*flags));
        }
    }
}

/// A duplicate of `fd` when it is a pipe (its buffer widened, best effort),
/// noting its flags in `restore`; `None` for anything else.
fn fifo(fd: BorrowedFd<'_>, restore: &mut Vec<(OwnedFd, OFlag)>) -> Option<OwnedFd> {
    let stat = fstat(fd).ok()?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFIFO {
        return None;
    }
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).ok()?);
    let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    let owned = fd.try_clone_to_owned().ok()?;
    restore.push((fd.try_clone_to_owned().ok()?, flags));
    Some(owned)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use nix::fcntl::{FcntlArg, OFlag, fcntl};

    use super::{Flags, fifo};

    fn flags(fd: &impl std::os::fd::AsFd) -> OFlag {
        OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL).unwrap())
    }

    #[test]
    fn pipes_are_taken_and_their_flags_put_back_other_files_are_left_alone() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let (reader, _writer) = std::io::pipe().unwrap();
        let mut restore = Vec::new();
        let dup = fifo(reader.as_fd(), &mut restore).expect("a pipe is taken");
        assert_eq!(restore.len(), 1);
        assert_eq!(restore[0].1, flags(&reader));
        assert!(!flags(&reader).contains(OFlag::O_NONBLOCK));
        // The duplicate shares the description: what tokio sets on it shows
        // on the original, which is why the flags are put back.
        let input = runtime
            .block_on(async { tokio::net::unix::pipe::Receiver::from_owned_fd(dup) })
            .unwrap();
        assert!(flags(&reader).contains(OFlag::O_NONBLOCK));
        drop(Flags(restore));
        assert!(!flags(&reader).contains(OFlag::O_NONBLOCK));
        drop(input);

        let file = tempfile::tempfile().unwrap();
        let mut restore = Vec::new();
        assert!(fifo(file.as_fd(), &mut restore).is_none());
        assert!(restore.is_empty());
    }
}
