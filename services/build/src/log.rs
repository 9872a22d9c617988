//! A running build's log: an append-only byte buffer that any number of
//! readers follow live, each from its own offset, and that is stored whole in
//! the object store when the build ends.
//!
//! Because the buffer only grows and readers copy from it, whatever a reader
//! was streamed live is exactly a prefix of the stored log (the Convox CLI
//! relies on this: after a build it replays the log and prints only the
//! bytes past what it already showed).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::watch;

/// Largest log kept for one build; past it a notice is written once and
/// further output is dropped.
pub const MAX_LOG_BYTES: usize = 32 << 20;
/// Largest chunk handed to a reader at once.
const MAX_CHUNK: usize = 64 << 10;

#[derive(Debug, Default)]
struct Inner {
    buf: Vec<u8>,
    closed: bool,
    truncated: bool,
}

/// The log of one running build.
#[derive(Debug)]
pub struct BuildLog {
    inner: Mutex<Inner>,
    /// Bumped on every append and on close; readers wait on it.
    changed: watch::Sender<()>,
}

impl Default for BuildLog {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            changed: watch::Sender::new(()),
        }
    }
}

impl BuildLog {
    /// An empty, open log.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a valid buffer behind.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends raw bytes (ignored once the log is closed).
    pub fn write(&self, bytes: &[u8]) {
        {
            let mut inner = self.lock();
            if inner.closed || inner.truncated || bytes.is_empty() {
                return;
            }
            if inner.buf.len() + bytes.len() > MAX_LOG_BYTES {
                inner.truncated = true;
                inner.buf.extend_from_slice(
                    b"\n[build log truncated: output beyond 32 MiB is dropped]\n",
                );
            } else {
                inner.buf.extend_from_slice(bytes);
            }
        }
        self.changed.send_replace(());
    }

    /// Appends `text` and a newline.
    pub fn line(&self, text: impl fmt::Display) {
        self.write(format!("{text}\n").as_bytes());
    }

    /// Ends the log: readers get the rest and then the end of their stream.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.send_replace(());
    }

    /// Everything written so far.
    pub fn contents(&self) -> Bytes {
        Bytes::copy_from_slice(&self.lock().buf)
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.lock().buf.len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Follows the log from byte `offset`: every byte written, in order, then
    /// the end of the stream once the log is closed.
    pub fn follow(self: &Arc<Self>, offset: u64) -> impl Stream<Item = Bytes> + Send + 'static {
        // Subscribing before the first read means no append can be missed.
        let state = (
            self.clone(),
            self.changed.subscribe(),
            usize::try_from(offset).unwrap_or(usize::MAX),
        );
        futures::stream::unfold(state, |(log, mut changed, mut offset)| async move {
            loop {
                let (chunk, closed) = {
                    let inner = log.lock();
                    // An offset past the end waits for the log to get there.
                    let start = offset.min(inner.buf.len());
                    let end = inner.buf.len().min(start.saturating_add(MAX_CHUNK));
                    (Bytes::copy_from_slice(&inner.buf[start..end]), inner.closed)
                };
                if !chunk.is_empty() {
                    offset += chunk.len();
                    return Some((chunk, (log, changed, offset)));
                }
                if closed {
                    return None;
                }
                if changed.changed().await.is_err() {
                    return None;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    #[tokio::test]
    async fn readers_follow_live_and_end_on_close() {
        let log = BuildLog::new();
        log.line("one");
        let early = log.follow(0);
        let late_offset = log.follow(2);
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    log.line(format!("line {i}"));
                    tokio::task::yield_now().await;
                }
                log.close();
            })
        };
        let a: Vec<u8> = early.collect::<Vec<_>>().await.concat();
        let b: Vec<u8> = late_offset.collect::<Vec<_>>().await.concat();
        writer.await.unwrap();
        assert_eq!(a, log.contents());
        assert_eq!(b, log.contents()[2..]);
        // Appends after close are ignored and a new reader replays and ends.
        log.line("ignored");
        assert_eq!(log.follow(0).collect::<Vec<_>>().await.concat(), a);
    }

    #[test]
    fn oversize_output_is_truncated_once() {
        let log = BuildLog::new();
        let big = vec![b'x'; MAX_LOG_BYTES - 10];
        log.write(&big);
        log.write(&[b'y'; 100]);
        log.write(b"more");
        let text = log.contents();
        assert!(text.len() < MAX_LOG_BYTES + 100);
        assert!(String::from_utf8_lossy(&text[big.len()..]).contains("truncated"));
    }
}
