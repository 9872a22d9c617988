//! Where every event of the service goes: events of a rollout are appended
//! to its durable log first (so `WatchRollout` can replay them, and they stay
//! readable after the fact), then published to the bus; other events (app
//! log lines) go to the bus only. One writer task keeps them in order.
//!
//! Appends are fenced: while this replica drives a rollout it tells the
//! recorder the lease epoch it holds ([`Recorder::hold`]), and that
//! rollout's events are written only while the epoch is still the
//! rollout's. A replica that was paused past its lease and wakes up (its
//! runtime watchers still reporting) records nothing, and publishes nothing:
//! the new owner's events are the rollout's history.
//!
//! The bus is best effort. It gets its own task behind a bounded queue, so
//! a slow or dead bus (Redis down) never holds up the durable log, and while
//! it fails the publisher stops trying for a while (backing off), dropping
//! events instead: rollout events are still in the durable log, only live
//! process output is lost. It says so once with a warning, repeats at most
//! once a minute while it lasts, and logs the recovery.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway_events::{EventBus, NewEvent, Notice, Outage, REMIND};
use tokio::sync::{mpsc, oneshot};

use crate::runtime::EventSink;
use crate::store::Store;

/// Events waiting for the bus before new ones are dropped.
const BUS_QUEUE: usize = 10_000;
/// After a failure, the bus is tried again after this long, doubling up to
/// the second figure while it keeps failing.
const RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(5));

enum Message {
    Event(NewEvent),
    Flush(oneshot::Sender<()>),
    /// This replica drives the rollout under the lease at this epoch.
    Hold(String, u64),
    /// This replica finished driving the rollout (not fenced off).
    Finish(String),
}

/// A cheap handle on the writer task.
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Message>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Message")
    }
}

impl Recorder {
    /// Starts the writer task and the bus publisher behind it.
    pub fn start(store: Store, bus: Arc<dyn EventBus>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (bus_tx, bus_rx) = mpsc::channel(BUS_QUEUE);
        tokio::spawn(publish(bus, bus_rx));
        tokio::spawn(async move {
            let mut overflow = Reminder::default();
            // Rollouts driven here and the epoch of their lease.
            let mut held: HashMap<String, u64> = HashMap::new();
            while let Some(message) = rx.recv().await {
                match message {
                    Message::Hold(rollout, epoch) => {
                        held.insert(rollout, epoch);
                    }
                    Message::Finish(rollout) => {
                        held.remove(&rollout);
                    }
                    Message::Event(event) => {
                        if let Some(rollout) = &event.rollout {
                            let epoch = held.get(rollout).copied();
                            match store
                                .append_event_fenced(
                                    rollout,
                                    epoch,
                                    event.time,
                                    &event.source,
                                    &event.message,
                                )
                                .await
                            {
                                Ok(Some(_)) => {}
                                Ok(None) => {
                                    tracing::debug!(rollout = %rollout, epoch, "event of a lost lease dropped");
                                    continue;
                                }
                                Err(e) => {
                                    tracing::error!(rollout = %rollout, "failed to record a rollout event: {e}")
                                }
                            }
                        }
                        if let Err(mpsc::error::TrySendError::Full(_)) =
                            bus_tx.try_send(Message::Event(event))
                            && overflow.due(Instant::now())
                        {
                            tracing::warn!(
                                "event bus too slow: events dropped (rollout events stay in the database)"
                            );
                        }
                    }
                    Message::Flush(done) => {
                        // The publisher answers once it is past every event
                        // queued before (or drops `done` if it is gone).
                        let _ = bus_tx.send(Message::Flush(done)).await;
                    }
                }
            }
        });
        Self { tx }
    }

    /// Fences the events of `rollout` emitted from now on by the lease at
    /// `epoch`, which this replica holds.
    pub fn hold(&self, rollout: &str, epoch: u64) {
        let _ = self.tx.send(Message::Hold(rollout.to_owned(), epoch));
    }

    /// Ends [`Recorder::hold`] for a rollout this replica finished driving
    /// (not for one it lost: those stay fenced).
    pub fn finish(&self, rollout: &str) {
        let _ = self.tx.send(Message::Finish(rollout.to_owned()));
    }

    /// Returns once every event emitted before the call is recorded (and
    /// handed to the bus, or dropped while the bus is down).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

impl EventSink for Recorder {
    fn emit(&self, event: NewEvent) {
        // Fails only once the writer is gone (shutdown).
        let _ = self.tx.send(Message::Event(event));
    }
}

/// Publishes queued events in order, skipping the bus while it is down.
async fn publish(bus: Arc<dyn EventBus>, mut rx: mpsc::Receiver<Message>) {
    let mut health = BusHealth::default();
    while let Some(message) = rx.recv().await {
        match message {
            Message::Event(event) => {
                if !health.should_try(Instant::now()) {
                    health.skip();
                    continue;
                }
                match bus.publish(event).await {
                    Ok(_) => {
                        if let Some(outage) = health.succeeded() {
                            tracing::info!(
                                down_for = ?outage.down_for,
                                events_not_published = outage.dropped,
                                "event bus is back; live events flow again"
                            );
                        }
                    }
                    Err(e) => match health.failed(Instant::now()) {
                        Warn::First => tracing::warn!(
                            "event bus unavailable, events are not published until it is back \
                             (rollouts go on; their events stay readable from the database): {e}"
                        ),
                        Warn::Reminder { dropped } => tracing::warn!(
                            events_not_published = dropped,
                            "event bus still unavailable: {e}"
                        ),
                        Warn::Quiet => {}
                    },
                }
            }
            Message::Flush(done) => {
                let _ = done.send(());
            }
            Message::Hold(..) | Message::Finish(_) => {}
        }
    }
}

/// At most one notice per [`REMIND`].
#[derive(Debug, Default)]
struct Reminder {
    last: Option<Instant>,
}

impl Reminder {
    fn due(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|last| now < last + REMIND) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// What to say about a failed publish.
#[derive(Debug, PartialEq, Eq)]
enum Warn {
    /// The bus just went down.
    First,
    /// Still down, and the last word was a while ago.
    Reminder {
        /// Events not published so far in this outage.
        dropped: u64,
    },
    /// Still down; said recently.
    Quiet,
}

/// An outage that ended.
#[derive(Debug, PartialEq, Eq)]
struct Ended {
    down_for: Duration,
    dropped: u64,
}

/// The publisher's view of the bus: the outage (what was said of it), and
/// while it lasts a backoff before the next try and a count of what it
/// dropped.
#[derive(Debug, Default)]
struct BusHealth {
    outage: Outage,
    down: Option<Down>,
}

#[derive(Debug)]
struct Down {
    retry_at: Instant,
    backoff: Duration,
    dropped: u64,
}

impl BusHealth {
    /// Whether to try publishing now (always while the bus is up).
    fn should_try(&self, now: Instant) -> bool {
        self.down.as_ref().is_none_or(|down| now >= down.retry_at)
    }

    /// An event dropped without trying.
    fn skip(&mut self) {
        if let Some(down) = &mut self.down {
            down.dropped += 1;
        }
    }

    /// A publish failed (the event is dropped).
    fn failed(&mut self, now: Instant) -> Warn {
        let notice = self.outage.failed(now);
        let down = self.down.get_or_insert(Down {
            retry_at: now,
            backoff: RETRY.0 / 2,
            dropped: 0,
        });
        down.dropped += 1;
        down.backoff = (down.backoff * 2).min(RETRY.1);
        down.retry_at = now + down.backoff;
        match notice {
            Notice::Began => Warn::First,
            Notice::Continues { .. } => Warn::Reminder {
                dropped: down.dropped,
            },
            Notice::Quiet => Warn::Quiet,
        }
    }

    /// A publish succeeded: the outage that ended, if there was one.
    fn succeeded(&mut self) -> Option<Ended> {
        let down_for = self.outage.succeeded()?;
        let dropped = self.down.take().map_or(0, |down| down.dropped);
        Some(Ended { down_for, dropped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_once_then_reminded_then_its_end() {
        let t0 = Instant::now();
        let mut health = BusHealth::default();
        assert!(health.should_try(t0));
        assert_eq!(health.failed(t0), Warn::First);
        // Backing off: events in between are dropped without a try.
        assert!(!health.should_try(t0 + Duration::from_millis(100)));
        health.skip();
        health.skip();
        let t1 = t0 + RETRY.0;
        assert!(health.should_try(t1));
        assert_eq!(health.failed(t1), Warn::Quiet, "no warning per event");
        assert!(!health.should_try(t1 + RETRY.0), "the backoff doubles");
        assert!(health.should_try(t1 + RETRY.0 * 2));
        let t2 = t0 + REMIND;
        assert_eq!(health.failed(t2), Warn::Reminder { dropped: 5 });
        assert_eq!(health.failed(t2 + RETRY.1), Warn::Quiet);
        let outage = health.succeeded().expect("an outage ended");
        assert_eq!(outage.dropped, 6);
        assert!(health.should_try(t2 + RETRY.1));
        assert_eq!(health.succeeded(), None, "nothing to report while up");
        assert_eq!(health.failed(t2 + RETRY.1), Warn::First, "a new outage");
    }
}
