//! Where every event of the service goes: events of a rollout are appended
//! to its durable log first (so `WatchRollout` can replay them, and they stay
//! readable after the fact), then published to the bus; other events (app
//! log lines) go to the bus only. One writer task keeps them in order.

use std::sync::Arc;

use slipway_events::{EventBus, NewEvent};
use tokio::sync::{mpsc, oneshot};

use crate::runtime::EventSink;
use crate::store::Store;

enum Message {
    Event(NewEvent),
    Flush(oneshot::Sender<()>),
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
    /// Starts the writer task.
    pub fn start(store: Store, bus: Arc<dyn EventBus>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                match message {
                    Message::Event(event) => {
                        if let Some(rollout) = &event.rollout
                            && let Err(e) = store
                                .append_event(rollout, event.time, &event.source, &event.message)
                                .await
                        {
                            tracing::error!(rollout = %rollout, "failed to record a rollout event: {e}");
                        }
                        if let Err(e) = bus.publish(event).await {
                            tracing::warn!("failed to publish an event: {e}");
                        }
                    }
                    Message::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Self { tx }
    }

    /// Returns once every event emitted before the call is recorded.
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
