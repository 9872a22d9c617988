//! The event bus on Redis Streams, for the scale setup: any replica
//! publishes, any replica tails, so a gateway replica can stream a rollout
//! driven by another.
//!
//! Layout: one stream per app, `<prefix>:v1:app:<app>`, holding every event
//! of the app; a rollout's events also go to `<prefix>:v1:rollout:<id>`
//! (a rollout reader knows only the rollout id), written by the same Lua
//! script with the same id, so both streams agree. Each write trims the
//! stream (`MAXLEN ~ N`) and refreshes its TTL: Redis holds only what can be
//! lost (rollout history is durable in the rollout service's database).
//!
//! Ids never go backwards. Redis hands out `<server millis>-<seq>`, but a
//! Redis restarted without persistence starts every stream empty, and a
//! server whose clock is behind would then hand out ids lower than readers
//! already saw (readers resuming "after" them would skip the new events).
//! So the publish script picks the id itself: the successor of the greatest
//! of the stream's last id, the server's time, and this bus's *floor* (the
//! highest id it handed out or delivered to a reader). A reader that finds
//! its stream reset anyway (its last generated id below what the reader saw:
//! Redis lost it, or the TTL expired, and no publisher that knew the old
//! ids wrote since) reports a lag and reads the new stream from its start:
//! everything in it is new to the reader, so nothing is duplicated.
//!
//! Reads: the backlog is read at subscription (XRANGE pages up to the
//! stream's last id then), so [`Subscription::backlog`] is exact; live
//! events come from `XREAD BLOCK` on a connection of the reader's own (a
//! blocking read would stall a shared multiplexed connection), which the
//! reader re-opens, with backoff, whenever it breaks. Publishing takes a
//! shared connection opened lazily (the bus can be built while Redis is
//! down) and bounded by [`RedisConfig::timeout`], so a dead Redis answers
//! [`Error::Unavailable`] quickly instead of hanging the caller.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Script};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use crate::{Error, Event, EventBus, EventId, NewEvent, Subscription, Topic};

/// Picks the id (see the module docs), appends to every stream in KEYS,
/// trims and refreshes the TTL. ARGV: floor ms, floor seq, max length,
/// trim mode (`~` or `=`), TTL seconds, then the entry's field/value pairs.
const PUBLISH: &str = r"
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function last_generated(key)
  local info = redis.pcall('XINFO', 'STREAM', key)
  if type(info) ~= 'table' or info.err then return 0, 0 end
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return parse(info[i + 1]) end
  end
  return 0, 0
end
local ms, seq = tonumber(ARGV[1]), tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  local kms, kseq = last_generated(key)
  if kms > ms or (kms == ms and kseq > seq) then ms, seq = kms, kseq end
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if now > ms then ms, seq = now, 0 else seq = seq + 1 end
local id = string.format('%d-%d', ms, seq)
for _, key in ipairs(KEYS) do
  redis.call('XADD', key, 'MAXLEN', ARGV[4], ARGV[3], id, unpack(ARGV, 6))
  redis.call('EXPIRE', key, ARGV[5])
end
return id
";

/// A stream's last generated id, its highest deleted id (XDEL), its first
/// retained id and how many entries were ever removed (trimming leaves no
/// deleted id); `0-0`s and 0 for a stream that does not exist.
const INFO: &str = r"
local info = redis.pcall('XINFO', 'STREAM', KEYS[1])
if type(info) ~= 'table' or info.err then return {'0-0', '0-0', '0-0', 0} end
local f = {}
for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
local removed = (tonumber(f['entries-added']) or 0) - (tonumber(f['length']) or 0)
return {f['last-generated-id'] or '0-0', f['max-deleted-entry-id'] or '0-0',
        f['recorded-first-entry-id'] or '0-0', removed}
";

/// What a reader needs to know of its stream.
struct StreamState {
    /// The last id Redis generated for it.
    last: EventId,
    /// The highest id deleted from it.
    deleted: EventId,
    /// Its first retained id.
    first: EventId,
    /// Whether entries were ever trimmed or deleted.
    removed: bool,
}

impl StreamState {
    /// Whether a reader positioned at `after` lost events: some after it
    /// were deleted, or it is older than the retained history (trimmed).
    fn lost_after(&self, after: EventId) -> bool {
        self.deleted > after || (self.removed && after < self.first && self.first > after.next(0))
    }
}

/// Entries read per XRANGE/XREAD call.
const PAGE: usize = 500;
/// Live events buffered per subscriber before the reader waits for it.
const LIVE_BUFFER: usize = 1024;
/// A reader's reconnection backoff: first and longest wait.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// Where the Redis bus keeps its streams and how it bounds them.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `redis+unix:///path`.
    pub url: String,
    /// First part of every key (`<prefix>:v1:<kind>:<id>`): the owning
    /// service's name, or a unique one per test.
    pub prefix: String,
    /// Entries kept per stream (app or rollout).
    pub max_len: usize,
    /// Trim to exactly `max_len` instead of `MAXLEN ~` (Redis trims whole
    /// nodes of about 100 entries, which is cheaper): for small retentions
    /// and the tests of the trimming itself.
    pub exact_trim: bool,
    /// Time to live of a stream, refreshed on every write.
    pub ttl: Duration,
    /// Upper bound of one publish (connecting included) and of setting up a
    /// subscription; past it the call fails [`Error::Unavailable`].
    pub timeout: Duration,
    /// How long one blocking read waits before the reader looks at its
    /// stream (reset or trimmed while idle) and reads again.
    pub block: Duration,
}

impl RedisConfig {
    /// Defaults: 10 000 entries per stream (approximately), a day of TTL, a
    /// 1 s bound on calls, 2 s blocking reads.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: prefix.into(),
            max_len: crate::DEFAULT_HISTORY,
            exact_trim: false,
            ttl: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(1),
            block: Duration::from_secs(2),
        }
    }
}

/// The URL without its password.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("max_len", &self.max_len)
            .field("exact_trim", &self.exact_trim)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .field("block", &self.block)
            .finish()
    }
}

/// An event bus on Redis Streams (see the module docs).
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    config: RedisConfig,
    /// The publishing connection, opened on first use, dropped when broken.
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// The highest id handed out or delivered: no later publish goes below.
    floor: Mutex<EventId>,
    publish: Script,
    info: Script,
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBus")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn unavailable(action: &str, e: impl fmt::Display) -> Error {
    Error::Unavailable(format!("{action}: {e}"))
}

/// Whether the connection an error came from is unusable from now on (as
/// opposed to a command the server refused).
fn breaks_connection(e: &redis::RedisError) -> bool {
    !matches!(e.kind(), redis::ErrorKind::Server(_))
}

impl RedisBus {
    /// A bus on the Redis `config.url` names. Does no I/O: the connection
    /// is opened on first use, so the bus can be built while Redis is down.
    pub fn new(config: RedisConfig) -> Result<Self, Error> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            Error::InvalidConfig(format!("redis url {}: {e}", redacted(&config.url)))
        })?;
        if config.prefix.is_empty() || config.prefix.contains(':') {
            return Err(Error::InvalidConfig(format!(
                "redis key prefix must be non-empty and without ':', got {:?}",
                config.prefix
            )));
        }
        if config.max_len == 0 || config.ttl < Duration::from_secs(1) {
            return Err(Error::InvalidConfig(
                "redis streams need max_len >= 1 and a ttl of at least 1s".into(),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                config,
                conn: tokio::sync::Mutex::new(None),
                floor: Mutex::new(EventId::default()),
                publish: Script::new(PUBLISH),
                info: Script::new(INFO),
            }),
        })
    }

    /// The key of the stream holding `topic`'s events.
    pub fn key(&self, topic: &Topic) -> String {
        let prefix = &self.inner.config.prefix;
        match topic {
            Topic::App(app) => format!("{prefix}:v1:app:{app}"),
            Topic::Rollout(id) => format!("{prefix}:v1:rollout:{id}"),
        }
    }

    async fn publish_inner(&self, event: &NewEvent) -> Result<EventId, Error> {
        match self.publish_once(event).await {
            // A connection Redis dropped (it restarted, say) carried nothing:
            // one retry on a fresh one. Were the drop to come after Redis ran
            // the script, Redis died with the event unsaved anyway.
            Err((e, true)) if e.is_connection_dropped() || e.is_connection_refusal() => {
                self.publish_once(event).await
            }
            other => other,
        }
        .map_err(|(e, _)| unavailable("publish to redis", e))
        .and_then(|id| {
            let id: EventId = id.parse()?;
            self.inner.raise_floor(id);
            Ok(id)
        })
    }

    /// One attempt; on failure, the error and whether the connection was a
    /// cached one (opened by an earlier call).
    async fn publish_once(&self, event: &NewEvent) -> Result<String, (redis::RedisError, bool)> {
        let inner = &self.inner;
        let (mut conn, cached) = inner.shared_connection().await.map_err(|e| (e, false))?;
        let floor = inner.floor();
        let mut keys = vec![self.key(&Topic::App(event.app.clone()))];
        if let Some(rollout) = &event.rollout {
            keys.push(self.key(&Topic::Rollout(rollout.clone())));
        }
        let mut call = inner.publish.prepare_invoke();
        for key in &keys {
            call.key(key);
        }
        call.arg(floor.ms)
            .arg(floor.seq)
            .arg(inner.config.max_len)
            .arg(if inner.config.exact_trim { "=" } else { "~" })
            .arg(inner.config.ttl.as_secs().max(1))
            .arg("t")
            .arg(event.time.timestamp_nanos_opt().unwrap_or_default())
            .arg("a")
            .arg(&event.app)
            .arg("s")
            .arg(&event.source)
            .arg("m")
            .arg(&event.message);
        if let Some(rollout) = &event.rollout {
            call.arg("r").arg(rollout);
        }
        match call.invoke_async(&mut conn).await {
            Ok(id) => Ok(id),
            Err(e) => {
                if breaks_connection(&e) {
                    *inner.conn.lock().await = None;
                }
                Err((e, cached))
            }
        }
    }

    async fn open(
        &self,
        key: &str,
        after: Option<EventId>,
    ) -> Result<(Reader, Vec<Result<Event, Error>>), Error> {
        // Reaching Redis is bounded by `timeout`; the backlog pages after
        // it, by the connection's response timeout each (a long backlog
        // may take longer than one call's bound).
        let timeout = self.inner.config.timeout;
        let started = async {
            let mut reader = Reader {
                bus: self.inner.clone(),
                key: key.to_owned(),
                conn: Some(self.inner.reader_connection().await?),
                last: after.unwrap_or_default(),
                top: EventId::default(),
            };
            let state = reader.info().await?;
            Ok::<_, Error>((reader, state))
        };
        let (mut reader, state) =
            tokio::time::timeout(timeout, started).await.map_err(|_| {
                Error::Unavailable(format!("subscribe on redis: no answer within {timeout:?}"))
            })??;
        let top = state.last;
        reader.top = top;
        let mut backlog = Vec::new();
        if after.is_some_and(|after| state.lost_after(after)) {
            backlog.push(Err(Error::Lagged { missed: None }));
        }
        while reader.last < top {
            let before = reader.last;
            let page = reader.range(top).await?;
            let full = page.len() == PAGE;
            for entry in page {
                if let Some(event) = reader.accept(entry) {
                    backlog.push(Ok(event));
                }
            }
            if !full || reader.last == before {
                break;
            }
        }
        Ok((reader, backlog))
    }
}

impl Inner {
    fn floor(&self) -> EventId {
        *self.floor.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn raise_floor(&self, id: EventId) {
        let mut floor = self.floor.lock().unwrap_or_else(|e| e.into_inner());
        if id > *floor {
            *floor = id;
        }
    }

    /// The publishing connection, and whether it was opened before.
    async fn shared_connection(&self) -> Result<(MultiplexedConnection, bool), redis::RedisError> {
        let mut conn = self.conn.lock().await;
        if let Some(conn) = &*conn {
            return Ok((conn.clone(), true));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            .set_response_timeout(Some(self.config.timeout));
        let new = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *conn = Some(new.clone());
        Ok((new, false))
    }

    /// A connection for one reader: its blocking reads wait `block`, so
    /// replies may take that long and a bit.
    async fn reader_connection(&self) -> Result<MultiplexedConnection, Error> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            .set_response_timeout(Some(self.config.block + self.config.timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| unavailable("connect to redis", e))
    }
}

/// One subscriber's position in one stream.
struct Reader {
    bus: Arc<Inner>,
    key: String,
    /// `None` while reconnecting.
    conn: Option<MultiplexedConnection>,
    /// The last id delivered (or the id resumed after).
    last: EventId,
    /// The highest last-generated id seen of the stream: if the stream's
    /// falls below it, the stream was reset.
    top: EventId,
}

impl Reader {
    fn conn(&mut self) -> Result<&mut MultiplexedConnection, Error> {
        self.conn
            .as_mut()
            .ok_or_else(|| Error::Unavailable("not connected".into()))
    }

    fn failed(&mut self, action: &str, e: redis::RedisError) -> Error {
        if breaks_connection(&e) {
            self.conn = None;
        }
        unavailable(action, e)
    }

    /// The stream's ids and trimming.
    async fn info(&mut self) -> Result<StreamState, Error> {
        let script = self.bus.info.clone();
        let call = script.key(&self.key);
        let reply: Result<(String, String, String, i64), _> = call.invoke_async(self.conn()?).await;
        let (last, deleted, first, removed) =
            reply.map_err(|e| self.failed("read a redis stream's state", e))?;
        Ok(StreamState {
            last: last.parse()?,
            deleted: deleted.parse()?,
            first: first.parse()?,
            removed: removed > 0,
        })
    }

    /// A page of entries after `last`, up to `until`.
    async fn range(&mut self, until: EventId) -> Result<Vec<StreamId>, Error> {
        let reply: Result<StreamRangeReply, _> = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg(format!("({}", self.last))
            .arg(until.to_string())
            .arg("COUNT")
            .arg(PAGE)
            .query_async(self.conn()?)
            .await;
        Ok(reply
            .map_err(|e| self.failed("read a redis stream", e))?
            .ids)
    }

    /// Live entries after `last`, waiting up to `block` for one.
    async fn read(&mut self) -> Result<Vec<StreamId>, Error> {
        let block = self.bus.config.block.as_millis().max(1);
        let reply: Result<Option<StreamReadReply>, _> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(PAGE)
            .arg("BLOCK")
            .arg(u64::try_from(block).unwrap_or(u64::MAX))
            .arg("STREAMS")
            .arg(&self.key)
            .arg(self.last.to_string())
            .query_async(self.conn()?)
            .await;
        let reply = reply.map_err(|e| self.failed("tail a redis stream", e))?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect())
    }

    /// Takes an entry read after `last`: moves past it, and returns it as an
    /// event unless it is malformed (written by something else).
    fn accept(&mut self, entry: StreamId) -> Option<Event> {
        let id: EventId = entry.id.parse().ok()?;
        if id <= self.last {
            return None;
        }
        self.last = id;
        self.top = self.top.max(id);
        self.bus.raise_floor(id);
        decode(id, &entry)
    }

    /// Looks at the stream after an idle wait or a reconnection: a lag
    /// report if it was reset (its ids restart below what we saw) or trimmed
    /// past our position.
    async fn check(&mut self) -> Result<Option<Error>, Error> {
        let state = self.info().await?;
        if state.last < self.top {
            self.top = state.last;
            self.last = EventId::default();
            return Ok(Some(Error::Lagged { missed: None }));
        }
        self.top = state.last;
        // Reported once: the next read returns the retained entries, which
        // moves the reader past the gap.
        Ok(state
            .lost_after(self.last)
            .then_some(Error::Lagged { missed: None }))
    }

    /// Follows the stream into `tx` until the subscriber goes away.
    async fn follow(mut self, tx: mpsc::Sender<Result<Event, Error>>) {
        let mut backoff = BACKOFF.0;
        // After a reconnection or an idle wait, the stream is looked at
        // before reading on.
        let mut look = false;
        loop {
            if self.conn.is_none() {
                let Ok(conn) = self.bus.reader_connection().await else {
                    if !pause(&tx, &mut backoff).await {
                        return;
                    }
                    continue;
                };
                self.conn = Some(conn);
                look = true;
            }
            if look {
                match self.check().await {
                    Ok(lag) => {
                        look = false;
                        if let Some(lag) = lag
                            && tx.send(Err(lag)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(_) => {
                        if !pause(&tx, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let entries = tokio::select! {
                () = tx.closed() => return,
                entries = self.read() => entries,
            };
            let Ok(entries) = entries else {
                // A broken connection is re-opened; a refused command (the
                // key is not a stream, say) is retried, never in a busy loop.
                if !pause(&tx, &mut backoff).await {
                    return;
                }
                continue;
            };
            backoff = BACKOFF.0;
            if entries.is_empty() {
                look = true;
                continue;
            }
            for entry in entries {
                if let Some(event) = self.accept(entry)
                    && tx.send(Ok(event)).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Waits out one backoff step and lengthens the next; false when the
/// subscriber went away meanwhile.
async fn pause(tx: &mpsc::Sender<Result<Event, Error>>, backoff: &mut Duration) -> bool {
    tokio::select! {
        () = tx.closed() => return false,
        () = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(BACKOFF.1);
    true
}

/// An entry's fields as an event: `t` (nanoseconds since the epoch), `a`
/// (app), `s` (source), `m` (message), `r` (rollout, when in one).
fn decode(id: EventId, entry: &StreamId) -> Option<Event> {
    let nanos: i64 = entry.get("t")?;
    Some(Event {
        id,
        time: DateTime::<Utc>::from_timestamp_nanos(nanos),
        app: entry.get("a")?,
        rollout: entry.get("r"),
        source: entry.get("s")?,
        message: entry.get("m")?,
    })
}

#[async_trait::async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, event: NewEvent) -> Result<EventId, Error> {
        let timeout = self.inner.config.timeout;
        match tokio::time::timeout(timeout, self.publish_inner(&event)).await {
            Ok(result) => result,
            Err(_) => {
                // A connection that does not answer is not reused.
                *self.inner.conn.lock().await = None;
                Err(Error::Unavailable(format!(
                    "publish to redis: no answer within {timeout:?}"
                )))
            }
        }
    }

    async fn subscribe_with_backlog(
        &self,
        topic: Topic,
        after: Option<EventId>,
    ) -> Result<Subscription, Error> {
        let key = self.key(&topic);
        let (reader, backlog) = self.open(&key, after).await?;
        let (tx, rx) = mpsc::channel(LIVE_BUFFER);
        tokio::spawn(reader.follow(tx));
        Ok(Subscription {
            backlog: backlog.len(),
            events: Box::pin(tokio_stream::iter(backlog).chain(ReceiverStream::new(rx))),
        })
    }
}

#[cfg(test)]
mod tests;
