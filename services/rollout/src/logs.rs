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
use slipway_events::{Error as BusError, Event, EventBus, EventStream, Topic};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use crate::error::Result;
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

/// Streams `query`'s backlog, then (with follow) live events until the
/// receiver is dropped or the bus ends. Without the bus (Redis down) the
/// log is what the durable log holds: the backlog of rollout events, then,
/// following, new rollout events as they are recorded, until the bus
/// answers again and live events flow from it.
pub async fn stream(
    store: Store,
    bus: Arc<dyn EventBus>,
    query: LogQuery,
) -> Result<mpsc::Receiver<Result<LogLine>>> {
    let started = Utc::now();
    let cutoff = started - chrono::Duration::from_std(query.since).unwrap_or_default();
    let subscription = match bus
        .subscribe_with_backlog(Topic::App(query.app.to_string()), None)
        .await
    {
        Ok(subscription) => Some(subscription),
        Err(e) => {
            tracing::warn!(app = %query.app, "app log from the database only (rollout events, no process output): {e}");
            None
        }
    };
    let durable = if query.since.is_zero() {
        Vec::new()
    } else {
        store
            .app_events_since(query.app.as_str(), cutoff, MAX_DURABLE)
            .await?
    };
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut durable_log = DurableCursor::new(if query.since.is_zero() {
            started
        } else {
            cutoff
        });
        let mut backlog: Vec<LogLine> = Vec::with_capacity(durable.len());
        for e in durable {
            if let Some(line) = durable_log.take(e, &mut seen) {
                backlog.push(line);
            }
        }
        // The bus's retained history, exactly as long as it says.
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
                        if event.time >= cutoff && !query.since.is_zero() && !seen.take(&event) {
                            durable_log.came_live(&event);
                            backlog.push(event.into());
                        }
                    }
                }
            }
            live = Some(events);
        }
        // Durable and bus events interleave by time (stable: ties keep the
        // durable log's order first).
        backlog.sort_by_key(|l| l.time);
        backlog.retain(|l| query.matches(&l.source, &l.message));
        let skip = match query.tail {
            0 => 0,
            tail => backlog.len().saturating_sub(tail as usize),
        };
        for line in backlog.into_iter().skip(skip) {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
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
                                && tx.send(Ok(line)).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(app = %query.app, "failed to read the durable app log: {e}");
                    }
                }
                if live.is_none()
                    && let Ok(subscription) = bus
                        .subscribe_with_backlog(Topic::App(query.app.to_string()), None)
                        .await
                {
                    tracing::info!(app = %query.app, "app log: event bus is back");
                    let mut events = subscription.events;
                    // What it retains from before this stream started was
                    // not wanted live.
                    for _ in 0..subscription.backlog {
                        match events.next().await {
                            None => return,
                            Some(Ok(event)) if event.time >= started => {
                                if seen.take(&event) {
                                    continue;
                                }
                                durable_log.came_live(&event);
                                if query.matches(&event.source, &event.message)
                                    && tx.send(Ok(event.into())).await.is_err()
                                {
                                    return;
                                }
                            }
                            Some(_) => {}
                        }
                    }
                    live = Some(events);
                }
                continue;
            };
            match item {
                None => return,
                Some(Ok(event)) => {
                    if seen.take(&event) {
                        continue;
                    }
                    durable_log.came_live(&event);
                    if query.matches(&event.source, &event.message)
                        && tx.send(Ok(event.into())).await.is_err()
                    {
                        return;
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
