//! The event bus: runtime events (`system/local/web Started process …`) and
//! app log lines, published once by whoever observes them and tailed by any
//! reader (the rollout service's watchers, the gateway's log streams).
//!
//! One trait, [`EventBus`], with an in-process implementation
//! ([`InProcessBus`]: a broadcast channel plus a bounded history ring) and a
//! Redis Streams one for the scale setup ([`RedisBus`]). Ids are
//! [`EventId`]s shaped like Redis stream ids (`<millis>-<seq>`), strictly
//! increasing per stream, so a reader that lost its connection resumes after
//! the last id it saw without duplicates. Both implementations run the suite
//! in [`testing`].

mod memory;
mod outage;
mod redis;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::fmt;
use std::pin::Pin;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio_stream::Stream;

pub use memory::{DEFAULT_HISTORY, InProcessBus};
pub use outage::{Notice, Outage, REMIND};
pub use redis::{RedisBus, RedisConfig};

/// Where an event sits in its stream. Ordered by time of publication
/// (milliseconds since the epoch), then by a sequence within the millisecond:
/// the shape of a Redis stream id, so both buses share it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// Milliseconds since the Unix epoch, never going backwards on one bus.
    pub ms: u64,
    /// Sequence among events of the same millisecond.
    pub seq: u64,
}

impl EventId {
    /// The id that follows `self` at time `now_ms` (never smaller than `self`
    /// even if the clock went back).
    pub fn next(self, now_ms: u64) -> Self {
        if now_ms > self.ms {
            Self { ms: now_ms, seq: 0 }
        } else {
            Self {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EventId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || Error::InvalidId(s.chars().take(64).collect());
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Ok(Self {
            ms: ms.parse().map_err(|_| invalid())?,
            seq: seq.parse().map_err(|_| invalid())?,
        })
    }
}

/// An event as published: who saw what, when, for which app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The app it concerns.
    pub app: String,
    /// The rollout it belongs to, if any (rollout ids are promotion ids).
    pub rollout: Option<String>,
    /// Who reports it, e.g. `system/local/web` or `service/web/web-4f2a`.
    pub source: String,
    /// The text, one line.
    pub message: String,
}

impl NewEvent {
    /// An event of `app` from `source`, happening now.
    pub fn now(
        app: impl Into<String>,
        source: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            time: Utc::now(),
            app: app.into(),
            rollout: None,
            source: source.into(),
            message: message.into(),
        }
    }

    /// Tags the event with the rollout it belongs to.
    pub fn in_rollout(mut self, rollout: impl Into<String>) -> Self {
        self.rollout = Some(rollout.into());
        self
    }
}

/// A published event, with the id the bus gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Position in the stream; resume after it.
    pub id: EventId,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The app it concerns.
    pub app: String,
    /// The rollout it belongs to, if any.
    pub rollout: Option<String>,
    /// Who reports it, e.g. `system/local/web`.
    pub source: String,
    /// The text, one line.
    pub message: String,
}

impl Event {
    /// Gives a published event its id.
    pub fn from_new(id: EventId, new: NewEvent) -> Self {
        Self {
            id,
            time: new.time,
            app: new.app,
            rollout: new.rollout,
            source: new.source,
            message: new.message,
        }
    }
}

/// The seed's line format: `<RFC 3339 time> <source> <message>`.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.time.to_rfc3339_opts(SecondsFormat::Secs, true),
            self.source,
            self.message
        )
    }
}

/// Which events a subscriber wants.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Every event of an app (runtime events and log lines).
    App(String),
    /// The events of one rollout.
    Rollout(String),
}

impl Topic {
    /// Whether `event` belongs to this topic.
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            Self::App(app) => event.app == *app,
            Self::Rollout(id) => event.rollout.as_deref() == Some(id.as_str()),
        }
    }
}

/// Failures of the bus.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The subscriber fell behind (or resumed from an id older than the
    /// retained history) and events were dropped; the stream goes on after
    /// this item. `missed` is how many, when known.
    #[error("subscriber lagged: {} events missed", missed.map_or_else(|| "some".to_owned(), |n| n.to_string()))]
    Lagged {
        /// Number of events dropped, when the bus knows it.
        missed: Option<u64>,
    },
    /// An event id could not be parsed.
    #[error("invalid event id {0:?}: expected <millis>-<seq>")]
    InvalidId(String),
    /// The bus backend could not be reached (or did not answer in time).
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
    /// The bus's settings are unusable (e.g. a malformed Redis URL).
    #[error("invalid event bus settings: {0}")]
    InvalidConfig(String),
}

/// A stream of events; ends only when the bus does.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Error>> + Send>>;

/// A subscription: the retained history (the backlog), then live events.
pub struct Subscription {
    /// How many of the first items of `events` are the backlog: the events
    /// retained when the subscription was made, plus a leading lag report if
    /// the reader resumed before the retained history. Every later item is
    /// live. This is the explicit end-of-history marker readers need to tell
    /// "caught up" from "nothing arrived yet", without timing heuristics.
    pub backlog: usize,
    /// The backlog, then live events.
    pub events: EventStream,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("backlog", &self.backlog)
            .finish_non_exhaustive()
    }
}

/// Publishes events and lets readers tail them, resuming by id.
#[async_trait::async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Appends an event and returns its id, which is greater than every id
    /// this bus handed out (or delivered to a reader) before.
    async fn publish(&self, event: NewEvent) -> Result<EventId, Error>;

    /// Streams the events of `topic` with ids greater than `after` (all
    /// retained events when `None`) in id order, then live events as they
    /// are published, each exactly once; says how many items are backlog.
    async fn subscribe_with_backlog(
        &self,
        topic: Topic,
        after: Option<EventId>,
    ) -> Result<Subscription, Error>;

    /// [`subscribe_with_backlog`](Self::subscribe_with_backlog) for readers
    /// that do not care where the backlog ends.
    async fn subscribe(&self, topic: Topic, after: Option<EventId>) -> Result<EventStream, Error> {
        Ok(self.subscribe_with_backlog(topic, after).await?.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_order() {
        let id: EventId = "1700000000000-3".parse().unwrap();
        assert_eq!(
            id,
            EventId {
                ms: 1_700_000_000_000,
                seq: 3
            }
        );
        assert_eq!(id.to_string(), "1700000000000-3");
        assert_eq!("42".parse::<EventId>().unwrap(), EventId { ms: 42, seq: 0 });
        assert!("x-1".parse::<EventId>().is_err());
        assert!(EventId { ms: 1, seq: 9 } < EventId { ms: 2, seq: 0 });
        let next = id.next(id.ms - 10);
        assert!(next > id, "a clock going back must not reorder ids");
    }

    #[test]
    fn events_print_in_the_seed_format() {
        let event = Event {
            id: EventId::default(),
            time: DateTime::from_timestamp(1_546_300_849, 0).unwrap(),
            app: "myapp".into(),
            rollout: None,
            source: "system/local/atom/app".into(),
            message: "Status: Running => Pending".into(),
        };
        assert_eq!(
            event.to_string(),
            "2019-01-01T00:00:49Z system/local/atom/app Status: Running => Pending"
        );
    }
}
