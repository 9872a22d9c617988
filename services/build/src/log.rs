//! A running build's log: an append-only byte buffer that any number of
//! readers follow live, each from its own offset, and that is stored whole in
//! the object store when the build ends.
//!
//! Because the buffer only grows and readers copy from it, whatever a reader
//! was streamed live is exactly a prefix of the stored log (the Convox CLI
//! relies on this: after a build it replays the log and prints only the
//! bytes past what it already showed).
//!
//! With an event bus ([`LogBus`], Redis Streams shared by the replicas) the
//! running build's replica also publishes the buffer, so a replica that does
//! not run the build can stream it live. The build service's bus has one
//! stream per build: the bus's app topic keyed by the build id (one write
//! per chunk; no app stream gathering every build's bytes). Each entry is a
//! chunk of the buffer, source `log <app>` and message `<offset> <base64>`
//! (a reader stitches bytes by offset: nothing twice, and a gap is seen,
//! never papered over), and the last is `end <app>`, `<length>`. Publishing is best effort and never touches the
//! build: a task of its own reads the buffer (which is the bounded queue:
//! a slow or dead bus only means bigger chunks later), retries with a
//! backoff while the bus is down, warns once per outage for the whole
//! replica, and gives up on a build shortly after its log is closed.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use slipway_domain::{AppName, BuildId};
use slipway_events::{Event, EventBus, NewEvent, Notice, Outage, Subscription, Topic};
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

    /// Whether the log was closed (the build ended).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
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

/// Source of an entry holding a chunk of the log.
const CHUNK_SOURCE: &str = "log";
/// Source of the entry that ends a build's log.
const END_SOURCE: &str = "end";
/// Least time between two chunks published for one build: output arriving
/// meanwhile is coalesced into the next chunk (fewer, larger entries).
const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// After a failed publish, the next try after this long, doubling up to the
/// second figure while it keeps failing.
const RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(5));
/// A build's publisher stops trying this long after its log was closed.
const GIVE_UP_AFTER_CLOSE: Duration = Duration::from_secs(30);

/// One entry of a build's log stream, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusEntry {
    /// Bytes of the log starting at `offset`.
    Chunk {
        /// Where `bytes` start in the log.
        offset: u64,
        /// The bytes.
        bytes: Bytes,
    },
    /// The log ended `length` bytes long.
    End {
        /// The whole log's length.
        length: u64,
    },
}

impl BusEntry {
    /// The bus event carrying this entry for `build` of `app` (the source
    /// is the entry's kind and the app, so the log can be stored from the
    /// bus alone: [`LogBus::recover`]).
    fn to_event(&self, build: &BuildId, app: &AppName) -> NewEvent {
        let (kind, message) = match self {
            Self::Chunk { offset, bytes } => {
                (CHUNK_SOURCE, format!("{offset} {}", BASE64.encode(bytes)))
            }
            Self::End { length } => (END_SOURCE, length.to_string()),
        };
        NewEvent::now(build.as_str(), format!("{kind} {app}"), message)
    }

    /// The app of the build an entry's event belongs to.
    pub fn app_of(event: &Event) -> Option<AppName> {
        let (_, app) = event.source.split_once(' ')?;
        AppName::parse(app).ok()
    }

    /// The entry an event carries, if it is a well-formed one.
    pub fn from_event(event: &Event) -> Option<Self> {
        let kind = event.source.split(' ').next().unwrap_or_default();
        match kind {
            CHUNK_SOURCE => {
                let (offset, data) = event.message.split_once(' ')?;
                Some(Self::Chunk {
                    offset: offset.parse().ok()?,
                    bytes: BASE64.decode(data).ok()?.into(),
                })
            }
            END_SOURCE => Some(Self::End {
                length: event.message.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// Build logs on the shared event bus: the running build's replica
/// publishes, any replica follows.
pub struct LogBus {
    bus: Arc<dyn EventBus>,
    /// Whether the bus is down, as far as this replica's publishers know.
    health: Mutex<Outage>,
}

impl fmt::Debug for LogBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogBus").finish_non_exhaustive()
    }
}

impl LogBus {
    /// Build logs on `bus` (which should be the build service's own: its
    /// streams are keyed by build id).
    pub fn new(bus: Arc<dyn EventBus>) -> Arc<Self> {
        Arc::new(Self {
            bus,
            health: Mutex::default(),
        })
    }

    fn health(&self) -> MutexGuard<'_, Outage> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts publishing `log`, the log of `build` running here, in a task
    /// of its own; it ends after the end marker (or after giving up).
    pub fn publish(self: &Arc<Self>, build: BuildId, app: AppName, log: Arc<BuildLog>) {
        let bus = self.clone();
        tokio::spawn(async move { bus.publish_log(build, app, log).await });
    }

    async fn publish_log(self: Arc<Self>, build: BuildId, app: AppName, log: Arc<BuildLog>) {
        let mut chunks = std::pin::pin!(log.follow(0));
        let mut offset = 0u64;
        loop {
            let started = Instant::now();
            let entry = match chunks.next().await {
                Some(bytes) => BusEntry::Chunk { offset, bytes },
                None => BusEntry::End { length: offset },
            };
            if !self.send(&build, &app, &entry, &log).await {
                tracing::debug!(build_id = %build, "gave up publishing the build log");
                return;
            }
            match entry {
                BusEntry::Chunk { bytes, .. } => offset += bytes.len() as u64,
                BusEntry::End { .. } => return,
            }
            // Output written meanwhile comes in the next, larger chunk.
            tokio::time::sleep(PUBLISH_EVERY.saturating_sub(started.elapsed())).await;
        }
    }

    /// Publishes one entry, retrying while the bus is down; false once the
    /// build's log was closed long enough ago to give up.
    async fn send(&self, build: &BuildId, app: &AppName, entry: &BusEntry, log: &BuildLog) -> bool {
        let event = entry.to_event(build, app);
        let mut backoff = RETRY.0;
        let mut give_up_at: Option<Instant> = None;
        loop {
            match self.bus.publish(event.clone()).await {
                Ok(_) => {
                    self.succeeded();
                    return true;
                }
                Err(e) => self.failed(&e),
            }
            if log.is_closed() {
                let deadline =
                    *give_up_at.get_or_insert_with(|| Instant::now() + GIVE_UP_AFTER_CLOSE);
                if Instant::now() >= deadline {
                    return false;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY.1);
        }
    }

    fn failed(&self, e: &slipway_events::Error) {
        match self.health().failed(Instant::now()) {
            Notice::Began => tracing::warn!(
                "event bus unavailable: build logs are not streamed to other replicas until \
                 it is back (builds go on; their logs are stored when they end): {e}"
            ),
            Notice::Continues { down_for } => {
                tracing::warn!(?down_for, "event bus still unavailable: {e}")
            }
            Notice::Quiet => {}
        }
    }

    fn succeeded(&self) {
        if let Some(down_for) = self.health().succeeded() {
            tracing::info!(?down_for, "event bus is back; build logs stream again");
        }
    }

    /// What the bus retains of the log of `build`, whose replica stopped
    /// before storing it: its app and the bytes from the start up to the
    /// first gap (the start being gone, none); `None` when the bus holds
    /// nothing of it.
    pub async fn recover(
        &self,
        build: &BuildId,
    ) -> Result<Option<(AppName, Bytes)>, slipway_events::Error> {
        let subscription = self.subscribe(build).await?;
        let mut events = subscription.events.take(subscription.backlog);
        let (mut app, mut stitch, mut bytes) = (None, Stitch::new(0), Vec::new());
        while let Some(item) = events.next().await {
            let Ok(event) = item else { continue };
            let Some(entry) = BusEntry::from_event(&event) else {
                continue;
            };
            if app.is_none() {
                app = BusEntry::app_of(&event);
            }
            match stitch.take(entry) {
                Step::Send(chunk) => bytes.extend_from_slice(&chunk),
                Step::Skip => {}
                Step::Gap | Step::End => break,
            }
        }
        Ok(app.map(|app| (app, Bytes::from(bytes))))
    }

    /// The entries of `build`'s log stream: what the bus retains, then live.
    pub async fn subscribe(&self, build: &BuildId) -> Result<Subscription, slipway_events::Error> {
        self.bus
            .subscribe_with_backlog(Topic::App(build.as_str().to_owned()), None)
            .await
    }
}

/// Where a reader following the bus from its own offset stands.
#[derive(Debug)]
pub struct Stitch {
    /// The next byte the reader needs.
    pub next: u64,
}

/// What a reader does with one entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes (they start at the reader's offset).
    Send(Bytes),
    /// Nothing new (bytes already sent, or an empty chunk).
    Skip,
    /// Bytes before this chunk are missing from the stream (trimmed, or lost
    /// with a Redis restart): the rest must come from the stored log.
    Gap,
    /// The log ended.
    End,
}

impl Stitch {
    /// A reader that needs the log from `offset`.
    pub fn new(offset: u64) -> Self {
        Self { next: offset }
    }

    /// Takes one entry: the bytes past `next`, exactly once.
    pub fn take(&mut self, entry: BusEntry) -> Step {
        match entry {
            BusEntry::End { .. } => Step::End,
            BusEntry::Chunk { offset, bytes } => {
                let end = offset + bytes.len() as u64;
                if end <= self.next {
                    Step::Skip
                } else if offset > self.next {
                    Step::Gap
                } else {
                    // `self.next - offset < bytes.len()`, so this fits.
                    let skip = usize::try_from(self.next - offset).unwrap_or(usize::MAX);
                    self.next = end;
                    Step::Send(bytes.slice(skip.min(bytes.len())..))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn entries_round_trip_through_events_with_any_bytes() {
        let build = BuildId::generate();
        let app = AppName::parse("myapp").unwrap();
        for entry in [
            BusEntry::Chunk {
                offset: 7,
                bytes: Bytes::from_static(b"\xff\x00 not utf-8 \n"),
            },
            BusEntry::End { length: 42 },
        ] {
            let new = entry.to_event(&build, &app);
            assert_eq!(new.app, build.as_str());
            let event = Event::from_new(Default::default(), new);
            assert_eq!(BusEntry::from_event(&event), Some(entry));
            assert_eq!(BusEntry::app_of(&event), Some(app.clone()));
        }
        let other = Event::from_new(Default::default(), NewEvent::now("a", "log", "x y"));
        assert_eq!(BusEntry::from_event(&other), None);
    }

    #[test]
    fn stitching_sends_every_byte_once_and_reports_gaps() {
        let chunk = |offset, bytes: &'static [u8]| BusEntry::Chunk {
            offset,
            bytes: Bytes::from_static(bytes),
        };
        let mut stitch = Stitch::new(3);
        assert_eq!(stitch.take(chunk(0, b"ab")), Step::Skip);
        assert_eq!(
            stitch.take(chunk(2, b"cdef")),
            Step::Send(Bytes::from_static(b"def"))
        );
        assert_eq!(stitch.take(chunk(2, b"cdef")), Step::Skip, "a duplicate");
        assert_eq!(stitch.take(chunk(6, b"")), Step::Skip);
        assert_eq!(
            stitch.take(chunk(6, b"g")),
            Step::Send(Bytes::from_static(b"g"))
        );
        assert_eq!(stitch.next, 7);
        assert_eq!(stitch.take(chunk(9, b"j")), Step::Gap);
        assert_eq!(stitch.next, 7, "a gap sends nothing");
        assert_eq!(stitch.take(BusEntry::End { length: 10 }), Step::End);
    }

    #[tokio::test]
    async fn the_publisher_sends_the_whole_log_then_the_end() {
        let bus = Arc::new(slipway_events::InProcessBus::default());
        let logs = LogBus::new(bus.clone());
        let build = BuildId::generate();
        let mut subscription = logs.subscribe(&build).await.unwrap();
        let log = BuildLog::new();
        logs.publish(build.clone(), AppName::parse("myapp").unwrap(), log.clone());
        for i in 0..50 {
            log.write(format!("line {i}\n").as_bytes());
            if i % 10 == 0 {
                // Part of the test: the log is written over time, so the
                // publisher sends it in several pieces.
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        }
        log.close();
        let mut stitch = Stitch::new(0);
        let mut got = Vec::new();
        let read = async {
            while let Some(event) = subscription.events.next().await {
                match stitch.take(BusEntry::from_event(&event.unwrap()).unwrap()) {
                    Step::Send(bytes) => got.extend_from_slice(&bytes),
                    Step::Skip => {}
                    Step::Gap => panic!("a gap"),
                    Step::End => return,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the end marker arrives");
        assert_eq!(got, log.contents());
    }

    #[tokio::test]
    async fn the_log_of_a_build_whose_replica_stopped_is_recovered_from_the_bus() {
        let bus = Arc::new(slipway_events::InProcessBus::default());
        let logs = LogBus::new(bus.clone());
        let build = BuildId::generate();
        assert_eq!(
            logs.recover(&build).await.unwrap(),
            None,
            "nothing published"
        );
        let log = BuildLog::new();
        let app = AppName::parse("myapp").unwrap();
        logs.publish(build.clone(), app.clone(), log.clone());
        log.line("one");
        // Part of the test: the two lines reach the bus as separate entries.
        tokio::time::sleep(Duration::from_millis(100)).await;
        log.line("two");
        // The replica "stops": the log is never closed; wait for the bus.
        let recovered = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some((_, bytes)) = logs.recover(&build).await.unwrap()
                    && bytes.len() == log.len()
                {
                    return logs.recover(&build).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the bus gets the whole log");
        assert_eq!(recovered, Some((app, log.contents())));
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
