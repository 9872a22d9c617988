//! The in-process bus of the embedded rack: a broadcast channel for live
//! readers and a bounded ring of recent events for readers that resume.
//!
//! Publishing and subscribing take the same lock, so an event is either in
//! the history a new subscriber replays or in its live channel, never both
//! and never neither.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::{Error, Event, EventBus, EventId, NewEvent, Subscription, Topic};

/// Default number of events kept for readers that resume.
pub const DEFAULT_HISTORY: usize = 10_000;
/// Live events buffered per subscriber before it counts as lagging.
const LIVE_BUFFER: usize = 4_096;

/// An event bus inside one process.
#[derive(Clone, Debug)]
pub struct InProcessBus {
    inner: Arc<Mutex<Inner>>,
    live: broadcast::Sender<Arc<Event>>,
}

#[derive(Debug)]
struct Inner {
    last: EventId,
    history: VecDeque<Arc<Event>>,
    capacity: usize,
    /// The highest id ever dropped from the history.
    trimmed: Option<EventId>,
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY)
    }
}

impl InProcessBus {
    /// A bus keeping the last `history` events for resuming readers.
    pub fn new(history: usize) -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                last: EventId::default(),
                history: VecDeque::with_capacity(history.min(1024)),
                capacity: history.max(1),
                trimmed: None,
            })),
            live,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the ring consistent (every
        // mutation is a single push/pop), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default()
}

#[async_trait::async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, event: NewEvent) -> Result<EventId, Error> {
        let mut inner = self.lock();
        let id = inner.last.next(now_ms());
        inner.last = id;
        let event = Arc::new(Event::from_new(id, event));
        if inner.history.len() >= inner.capacity
            && let Some(old) = inner.history.pop_front()
        {
            inner.trimmed = Some(old.id);
        }
        inner.history.push_back(event.clone());
        // No receivers is fine: nobody is tailing.
        let _ = self.live.send(event);
        Ok(id)
    }

    async fn subscribe_with_backlog(
        &self,
        topic: Topic,
        after: Option<EventId>,
    ) -> Result<Subscription, Error> {
        let (backlog, receiver, gap) = {
            let inner = self.lock();
            let gap = match (after, inner.trimmed) {
                (Some(after), Some(trimmed)) => after < trimmed,
                _ => false,
            };
            let backlog: Vec<Result<Event, Error>> = inner
                .history
                .iter()
                .filter(|e| after.is_none_or(|a| e.id > a) && topic.matches(e))
                .map(|e| Ok(Event::clone(e)))
                .collect();
            (backlog, self.live.subscribe(), gap)
        };
        let mut last = backlog
            .last()
            .and_then(|e| e.as_ref().ok().map(|e| e.id))
            .or(after);
        let head = gap.then_some(Err(Error::Lagged { missed: None }));
        let counted = backlog.len() + usize::from(gap);
        let live = BroadcastStream::new(receiver).filter_map(move |item| match item {
            Ok(event) => {
                if !topic.matches(&event) || last.is_some_and(|l| event.id <= l) {
                    return None;
                }
                last = Some(event.id);
                Some(Ok(Event::clone(&event)))
            }
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                Some(Err(Error::Lagged { missed: Some(n) }))
            }
        });
        Ok(Subscription {
            backlog: counted,
            events: Box::pin(tokio_stream::iter(head.into_iter().chain(backlog)).chain(live)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        crate::testing::conformance(&InProcessBus::new(1_000)).await;
    }

    #[tokio::test]
    async fn resuming_before_trimmed_history_reports_a_gap() {
        crate::testing::trimmed_history_reports_a_gap(&InProcessBus::new(3), 3).await;
    }
}
