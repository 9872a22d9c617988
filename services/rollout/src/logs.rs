//! An app's log (`StreamAppLogs`): the backlog since a point in time, then
//! live events. The backlog merges two sources, because neither is whole on
//! its own: the durable log of the app's rollouts (survives restarts and the
//! bus trimming its history, but holds only rollout events) and what the bus
//! retains (process output and runtime events outside rollouts too). A
//! rollout event is in both; it is sent once.
//!
//! The bus is subscribed to before the durable log is read, so an event
//! recorded in between is either in what was read (and then skipped when it
//! arrives live) or arrives live; none is lost. The subscription says how
//! many of its items are backlog, so the backlog ends exactly there. When
//! the bus is unavailable, the durable log alone serves the app's rollout
//! events (with a warning). A follower also polls the durable log, so the
//! rollout events a bus lost (Redis down, or restarted empty) still reach
//! it, each once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_domain::AppName;
use slipway_events::{Error as BusError, Event, EventBus, EventId, EventStream, Topic};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use crate::error::Result;
pub use crate::log_cursor::Cursor;
use crate::store::{AppEvent, Store};

/// At most this many durable events make up a backlog (the newest ones).
const MAX_DURABLE: u32 = 10_000;
/// How often a follower reads the durable log for rollout events the bus
/// did not bring (Redis down or restarted), and, without a bus, tries it
/// again.
const DURABLE_POLL: Duration = Duration::from_secs(2);

/// What a caller of `StreamAppLogs` asked for, validated.
#[derive(Clone, Debug)]
pub struct LogQuery {
    /// The app.
    pub app: AppName,
    /// How far back the backlog starts; zero sends none.
    pub since: Duration,
    /// Keep streaming live events after the backlog.
    pub follow: bool,
    /// Only this service's output and runtime events.
    pub service: Option<String>,
    /// Only the last `tail` events of the backlog; 0 for all.
    pub tail: u32,
    /// Only events whose `<source> <message>` contains this.
    pub filter: String,
}

impl LogQuery {
    /// Whether `source`/`message` pass the service and text filters.
    pub fn matches(&self, source: &str, message: &str) -> bool {
        if let Some(service) = &self.service
            && !from_service(source, service)
        {
            return false;
        }
        self.filter.is_empty()
            || source.contains(&self.filter)
            || message.contains(&self.filter)
            || format!("{source} {message}").contains(&self.filter)
    }
}

/// Whether an event's source concerns `service`: its processes' output
/// (`service/web/…`) or a runtime event about it (`system/local/web`,
/// `system/k8s/deployment/web`, `system/k8s/pod/web-…`).
fn from_service(source: &str, service: &str) -> bool {
    let mut parts = source.split('/');
    match parts.next() {
        Some("service") => parts.next() == Some(service),
        Some("system") => {
            let _runtime = parts.next();
            let object: Vec<&str> = parts.collect();
            match object.as_slice() {
                [name, ..] if *name == service => true,
                [_kind, name, ..] => {
                    *name == service
                        || name
                            .strip_prefix(service)
                            .is_some_and(|rest| rest.starts_with('-'))
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// One line of an app's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// The bus id (`<millis>-<seq>`), or `<rollout>:<seq>` for an event read
    /// from the durable log only.
    pub id: String,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// e.g. `system/local/web` or `service/web/web-4f2a9c1d`.
    pub source: String,
    /// The text.
    pub message: String,
}

impl From<Event> for LogLine {
    fn from(e: Event) -> Self {
        Self {
            id: e.id.to_string(),
            time: e.time,
            source: e.source,
            message: e.message,
        }
    }
}

/// Identifies a rollout event across the durable log and the bus (the log
/// keeps microseconds).
type Key = (String, i64, String, String);

fn key(rollout: &str, time: DateTime<Utc>, source: &str, message: &str) -> Key {
    (
        rollout.to_owned(),
        time.timestamp_micros(),
        source.to_owned(),
        message.to_owned(),
    )
}

/// A multiset of rollout events already sent from the durable log.
#[derive(Default)]
struct Seen(HashMap<Key, u32>);

impl Seen {
    fn insert(&mut self, key: Key) {
        *self.0.entry(key).or_default() += 1;
    }

    /// Whether `event` was sent already (consuming one occurrence).
    fn take(&mut self, event: &Event) -> bool {
        let Some(rollout) = &event.rollout else {
            return false;
        };
        let key = key(rollout, event.time, &event.source, &event.message);
        match self.0.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.0.remove(&key);
                true
            }
            None => false,
        }
    }
}

/// One message of an app log stream: a line (or none, when the message
/// only says how far the stream has read) and the stream's cursor after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogItem {
    /// The line, if this message carries one.
    pub line: Option<LogLine>,
    /// Where the stream stands after this message.
    pub cursor: Cursor,
}

/// How far a stream has read both sources, for its cursor.
struct Position {
    bus: Option<EventId>,
    live: DateTime<Utc>,
    /// The cursor last sent, so a poll that moved nothing sends nothing.
    sent: Option<Cursor>,
}

impl Position {
    fn cursor(&self, durable: DateTime<Utc>) -> Cursor {
        Cursor {
            bus: self.bus,
            durable,
            live: self.live,
        }
    }

    /// Notes a bus event the stream consumed (whether or not it sends it).
    fn consumed(&mut self, event: &Event, sent_live: bool) {
        self.bus = Some(self.bus.map_or(event.id, |b| b.max(event.id)));
        if sent_live && event.rollout.is_some() {
            self.live = self.live.max(event.time);
        }
    }
}

/// What a resumed stream knows of the stream it continues.
#[derive(Clone, Copy)]
struct Resumed {
    cursor: Cursor,
}

impl Resumed {
    /// Whether a bus event after the cursor was already sent before the
    /// break: a rollout event at or before the durable position came from
    /// the durable log; without a bus position, anything older than the
    /// durable floor was either sent or before the stream's window.
    fn sent_before(&self, event: &Event) -> bool {
        // The durable log and cursors keep microseconds; the bus more.
        let micros = event.time.timestamp_micros();
        (event.rollout.is_some() && micros <= self.cursor.durable.timestamp_micros())
            || (self.cursor.bus.is_none()
                && micros <= self.cursor.durable_floor().timestamp_micros())
    }
}

/// Sends `line` with the cursor after it; false when the receiver is gone.
async fn send(
    tx: &mpsc::Sender<Result<LogItem>>,
    line: Option<LogLine>,
    cursor: Cursor,
    position: &mut Position,
) -> bool {
    position.sent = Some(cursor);
    tx.send(Ok(LogItem { line, cursor })).await.is_ok()
}

/// Streams `query`'s backlog, then (with follow) live events until the
/// receiver is dropped or the bus ends. Without the bus (Redis down) the
/// log is what the durable log holds: the backlog of rollout events, then,
/// following, new rollout events as they are recorded, until the bus
/// answers again and live events flow from it.
///
/// With `after` (the cursor of the last line a reader got before its
/// stream broke) the stream resumes there instead: its backlog is
/// everything after the cursor (`since` and `tail` do not apply), so the
/// reader sees each line once across the break. Every message carries the
/// stream's cursor; one without a line ends the backlog and follows each
/// durable poll that moved the stream on.
pub async fn stream(
    store: Store,
    bus: Arc<dyn EventBus>,
    query: LogQuery,
    after: Option<Cursor>,
) -> Result<mpsc::Receiver<Result<LogItem>>> {
    let started = Utc::now();
    let resumed = after.map(|cursor| Resumed { cursor });
    let cutoff = match after {
        Some(cursor) => cursor.durable_floor(),
        None => started - chrono::Duration::from_std(query.since).unwrap_or_default(),
    };
    // A fresh stream with no backlog reads nothing from before it started.
    let no_backlog = after.is_none() && query.since.is_zero();
    let bus_after = after.and_then(|c| c.bus);
    let subscription = match bus
        .subscribe_with_backlog(Topic::App(query.app.to_string()), bus_after)
        .await
    {
        Ok(subscription) => Some(subscription),
        Err(e) => {
            tracing::warn!(app = %query.app, "app log from the database only (rollout events, no process output): {e}");
            None
        }
    };
    let durable = if no_backlog {
        Vec::new()
    } else {
        store
            .app_events_since(query.app.as_str(), cutoff, MAX_DURABLE)
            .await?
    };
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut durable_log = DurableCursor::new(if no_backlog { started } else { cutoff });
        // What a resumed stream reads of the durable log at its floor was
        // handled before the break (every read is inclusive).
        durable_log.after = after.map(|c| c.durable_floor());
        let mut position = Position {
            bus: bus_after,
            live: after.map_or(DateTime::<Utc>::UNIX_EPOCH, |c| c.live),
            sent: None,
        };
        let mut durable_lines: Vec<LogLine> = Vec::with_capacity(durable.len());
        for e in durable {
            if let Some(line) = durable_log.take(e, &mut seen) {
                durable_lines.push(line);
            }
        }
        // The bus's retained history, exactly as long as it says, in its
        // own order (the order its ids resume in).
        let mut bus_entries: Vec<BusEntry> = Vec::new();
        let mut live = None;
        let mut ended = false;
        if let Some(subscription) = subscription {
            let mut events = subscription.events;
            for _ in 0..subscription.backlog {
                match events.next().await {
                    None => {
                        ended = true;
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(app = %query.app, "app log backlog incomplete: {e}");
                    }
                    Some(Ok(event)) => {
                        let wanted = match resumed {
                            Some(resumed) => !resumed.sent_before(&event) && !seen.take(&event),
                            None => event.time >= cutoff && !no_backlog && !seen.take(&event),
                        };
                        if wanted {
                            durable_log.came_live(&event);
                        }
                        bus_entries.push(BusEntry {
                            event,
                            send: wanted,
                        });
                    }
                }
            }
            live = Some(events);
        }
        // Durable lines (by time) merged into the bus's order; ties keep
        // the durable line first.
        let backlog = merge(durable_lines, bus_entries, &query);
        let sendable = backlog.iter().filter(|e| e.send).count();
        let mut skip = match query.tail {
            0 => 0,
            _ if after.is_some() => 0,
            tail => sendable.saturating_sub(tail as usize),
        };
        let mut durable_at = durable_log.from;
        for entry in backlog {
            match &entry.from_bus {
                Some(event) => position.consumed(event, entry.send),
                None => durable_at = durable_at.max(entry.line.time),
            }
            if !entry.send {
                continue;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            let cursor = position.cursor(durable_at);
            if !send(&tx, Some(entry.line), cursor, &mut position).await {
                return;
            }
        }
        // Where the backlog ended, also when it sent nothing.
        let cursor = position.cursor(durable_log.newest);
        if !send(&tx, None, cursor, &mut position).await {
            return;
        }
        if !query.follow || ended {
            return;
        }
        // Following: live events from the bus, and every `DURABLE_POLL` the
        // durable log, for the rollout events the bus lost (Redis restarted
        // or down: the recorder drops what it cannot publish), each event
        // sent once either way; without a bus, also another try at it.
        let mut poll = tokio::time::interval(DURABLE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            let item = tokio::select! {
                () = tx.closed() => return,
                _ = poll.tick() => None,
                item = next_live(&mut live) => Some(item),
            };
            let Some(item) = item else {
                match store
                    .app_events_since(query.app.as_str(), durable_log.newest, MAX_DURABLE)
                    .await
                {
                    Ok(events) => {
                        for e in events {
                            if let Some(line) = durable_log.take(e, &mut seen)
                                && query.matches(&line.source, &line.message)
                            {
                                let cursor = position.cursor(durable_log.newest);
                                if !send(&tx, Some(line), cursor, &mut position).await {
                                    return;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(app = %query.app, "failed to read the durable app log: {e}");
                    }
                }
                if live.is_none()
                    && let Ok(subscription) = bus
                        .subscribe_with_backlog(Topic::App(query.app.to_string()), position.bus)
                        .await
                {
                    tracing::info!(app = %query.app, "app log: event bus is back");
                    let mut events = subscription.events;
                    // After the bus position the stream had, all of it;
                    // without one, what it retains from before this stream
                    // (or the stream it resumes) started was not wanted.
                    let floor = after.map_or(started, |c| c.durable_floor());
                    for _ in 0..subscription.backlog {
                        match events.next().await {
                            None => return,
                            Some(Ok(event)) => {
                                let wanted = (position.bus.is_some() || event.time >= floor)
                                    && !resumed.is_some_and(|r| r.sent_before(&event))
                                    && !seen.take(&event);
                                if wanted {
                                    durable_log.came_live(&event);
                                }
                                position.consumed(&event, wanted);
                                if wanted && query.matches(&event.source, &event.message) {
                                    let cursor = position.cursor(durable_log.newest);
                                    if !send(&tx, Some(event.into()), cursor, &mut position).await {
                                        return;
                                    }
                                }
                            }
                            Some(Err(_)) => {}
                        }
                    }
                    live = Some(events);
                }
                let cursor = position.cursor(durable_log.newest);
                if position.sent != Some(cursor) && !send(&tx, None, cursor, &mut position).await {
                    return;
                }
                continue;
            };
            match item {
                None => return,
                Some(Ok(event)) => {
                    let wanted =
                        !resumed.is_some_and(|r| r.sent_before(&event)) && !seen.take(&event);
                    if wanted {
                        durable_log.came_live(&event);
                    }
                    position.consumed(&event, wanted);
                    if wanted && query.matches(&event.source, &event.message) {
                        let cursor = position.cursor(durable_log.newest);
                        if !send(&tx, Some(event.into()), cursor, &mut position).await {
                            return;
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(app = %query.app, "app log follower lagged: {e}");
                }
            }
        }
    });
    Ok(rx)
}

/// A bus event of the backlog, and whether it is to be sent.
struct BusEntry {
    event: Event,
    send: bool,
}

/// A backlog line: from the bus (its event, for the cursor) or from the
/// durable log.
struct Entry {
    line: LogLine,
    from_bus: Option<Event>,
    send: bool,
}

/// The durable lines, in time order, merged into the bus entries, in bus
/// order (ties: the durable line first), each marked whether it is sent
/// (wanted and passing the query's filters).
fn merge(durable: Vec<LogLine>, bus: Vec<BusEntry>, query: &LogQuery) -> Vec<Entry> {
    let mut out = Vec::with_capacity(durable.len() + bus.len());
    let mut durable = durable.into_iter().peekable();
    for entry in bus {
        while let Some(line) = durable.next_if(|l| l.time <= entry.event.time) {
            let send = query.matches(&line.source, &line.message);
            out.push(Entry {
                line,
                from_bus: None,
                send,
            });
        }
        let line = LogLine::from(entry.event.clone());
        let send = entry.send && query.matches(&line.source, &line.message);
        out.push(Entry {
            line,
            from_bus: Some(entry.event),
            send,
        });
    }
    for line in durable {
        let send = query.matches(&line.source, &line.message);
        out.push(Entry {
            line,
            from_bus: None,
            send,
        });
    }
    out
}

/// The next live event, or never without a bus.
async fn next_live(live: &mut Option<EventStream>) -> Option<Result<Event, BusError>> {
    match live {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// Which durable events were sent (or came through the bus), so re-reading
/// the durable log sends each once.
struct DurableCursor {
    /// Where reading started.
    from: DateTime<Utc>,
    /// Events at or before this time are not taken (a resumed stream's
    /// floor: handled before its break).
    after: Option<DateTime<Utc>>,
    /// The newest event time read: the next read starts there.
    newest: DateTime<Utc>,
    /// Durable events handled, by rollout and position.
    sent: HashSet<(String, u64)>,
    /// Rollout events the bus brought that the durable log has not shown
    /// yet (it will: every rollout event is recorded there).
    live: HashSet<Key>,
}

impl DurableCursor {
    fn new(from: DateTime<Utc>) -> Self {
        Self {
            from,
            after: None,
            newest: from,
            sent: HashSet::new(),
            live: HashSet::new(),
        }
    }

    /// Notes a rollout event the bus delivered.
    fn came_live(&mut self, event: &Event) {
        if let Some(rollout) = &event.rollout {
            self.live
                .insert(key(rollout, event.time, &event.source, &event.message));
        }
    }

    /// The event as a line, unless it was sent already or came through the
    /// bus; a rollout event sent here is skipped when the bus brings it too.
    fn take(&mut self, e: AppEvent, seen: &mut Seen) -> Option<LogLine> {
        if self.after.is_some_and(|after| e.event.time <= after) {
            return None;
        }
        if !self.sent.insert((e.rollout.clone(), e.event.seq)) {
            return None;
        }
        self.newest = self.newest.max(e.event.time);
        let key = key(&e.rollout, e.event.time, &e.event.source, &e.event.message);
        if self.live.remove(&key) {
            return None;
        }
        seen.insert(key);
        Some(LogLine {
            id: format!("{}:{}", e.rollout, e.event.seq),
            time: e.event.time,
            source: e.event.source,
            message: e.event.message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_filter_takes_output_and_runtime_events_of_the_service() {
        assert!(from_service("service/web/web-4f2a", "web"));
        assert!(!from_service("service/worker/worker-1", "web"));
        assert!(from_service("system/local/web", "web"));
        assert!(!from_service("system/local/atom/app", "web"));
        assert!(from_service("system/k8s/deployment/web", "web"));
        assert!(from_service("system/k8s/pod/web-5d8f-x2", "web"));
        assert!(!from_service("system/k8s/pod/webber-1", "web"));
    }

    fn base_query() -> LogQuery {
        LogQuery {
            app: AppName::parse("myapp").unwrap(),
            since: Duration::ZERO,
            follow: false,
            service: None,
            tail: 0,
            filter: String::new(),
        }
    }

    #[test]
    fn text_filter_looks_at_source_and_message() {
        let query = LogQuery {
            filter: "GET /".into(),
            ..base_query()
        };
        assert!(query.matches("service/web/web-1", "GET / HTTP/1.1"));
        assert!(!query.matches("service/web/web-1", "POST /x"));
        let query = LogQuery {
            filter: "web-1 GET".into(),
            ..base_query()
        };
        assert!(query.matches("service/web/web-1", "GET /"));
    }
}
