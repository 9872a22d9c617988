//! Where an app log stream stands ([`Cursor`]): what a stream resumed on
//! another replica (or on this one after a restart) starts after, so its
//! reader sees each line once across the break. Every line of
//! `StreamAppLogs` carries the cursor of the stream just after it, and a
//! message with a cursor and no line says how far a quiet (or filtered)
//! stream has read.
//!
//! An app's log has two sources (see `logs.rs`): the bus, whose events are
//! totally ordered by id, and the durable log of rollout events, read by
//! time. A cursor holds a position in each:
//! - `bus`: the last bus event the stream consumed (sent, filtered out, or
//!   skipped as a copy of a durable event); a resumed stream reads the bus
//!   after it;
//! - `durable`: the durable events up to this time were handled (sent, or
//!   seen arriving from the bus). A rollout event the bus brings after
//!   `bus` at or before this time was therefore sent from the durable log,
//!   and is not sent again;
//! - `live`: the newest rollout event the bus brought and the stream sent.
//!   A resumed stream reads the durable log only after the later of
//!   `durable` and `live`, so rollout events already sent live are not
//!   sent again from it.
//!
//! The one loss this allows: a rollout event the bus dropped (Redis down
//! while it was published) whose time falls between `durable` and `live`
//! when the stream breaks; the durable poll would have sent it within two
//! seconds, the resumed stream does not.

use chrono::{DateTime, Utc};
use slipway_events::EventId;

/// A position in an app's log; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The last bus event consumed, if the stream read the bus at all.
    pub bus: Option<EventId>,
    /// Durable events up to this time were handled.
    pub durable: DateTime<Utc>,
    /// The newest rollout event sent from the bus.
    pub live: DateTime<Utc>,
}

/// The version tag a cursor starts with.
const VERSION: &str = "c1";

impl Cursor {
    /// A resumed stream reads the durable log after this time.
    pub fn durable_floor(&self) -> DateTime<Utc> {
        self.durable.max(self.live)
    }

    /// The cursor as the opaque text clients pass back.
    pub fn encode(&self) -> String {
        let bus = self.bus.map_or_else(|| "-".to_owned(), |id| id.to_string());
        format!(
            "{VERSION}.{bus}.{}.{}",
            self.durable.timestamp_micros(),
            self.live.timestamp_micros()
        )
    }

    /// Reads a cursor [`Cursor::encode`] made; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('.').collect();
        let [version, bus, durable, live] = parts.as_slice() else {
            return Err(format!(
                "{text:?} is not a log cursor (pass back the cursor of a line of this log)"
            ));
        };
        if *version != VERSION {
            return Err(format!("{text:?}: unknown log cursor version {version:?}"));
        }
        let bus = match *bus {
            "-" => None,
            id => Some(
                id.parse::<EventId>()
                    .map_err(|_| format!("{text:?}: bad event id {id:?} in the log cursor"))?,
            ),
        };
        let time = |what: &str, micros: &str| {
            micros
                .parse::<i64>()
                .ok()
                .and_then(DateTime::<Utc>::from_timestamp_micros)
                .ok_or_else(|| format!("{text:?}: bad {what} time {micros:?} in the log cursor"))
        };
        Ok(Self {
            bus,
            durable: time("durable", durable)?,
            live: time("live", live)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let t = DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        for bus in [
            None,
            Some(EventId {
                ms: 1_700_000_000_000,
                seq: 7,
            }),
        ] {
            let cursor = Cursor {
                bus,
                durable: t,
                live: t + chrono::Duration::microseconds(3),
            };
            assert_eq!(Cursor::parse(&cursor.encode()), Ok(cursor));
        }
    }

    #[test]
    fn bad_cursors_say_why() {
        for (text, why) in [
            ("", "not a log cursor"),
            ("c1.-.1", "not a log cursor"),
            ("c9.-.1.2", "unknown log cursor version"),
            ("c1.x-1.1.2", "bad event id"),
            ("c1.-.soon.2", "bad durable time"),
            ("c1.-.1.later", "bad live time"),
        ] {
            let err = Cursor::parse(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}
