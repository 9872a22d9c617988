//! The rollout service's operations, behind the gRPC translation layer:
//! start (idempotent per promotion), read, cancel, watch, and what the
//! runtime runs.

use std::sync::Arc;
use std::time::Duration;

use slipway_domain::promotion::DEADLINE_RANGE;
use slipway_domain::{AppName, PromotionId};
use slipway_events::{EventBus, Topic};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use crate::driver::Drivers;
use crate::error::{Error, Result};
use crate::logs::{Cursor, LogItem, LogQuery};
use crate::model::{Phase, Rollout, Spec, SpecRecord};
use crate::runtime::{DynRuntime, ProcessInfo, ServiceInfo};
use crate::store::{NewRollout, Store, StoredEvent};

/// Events read from the database per query while replaying.
const PAGE: u32 = 500;
/// How often a watcher looks at the database even without a bus wake-up
/// (events written by another replica on an in-process bus, or any event
/// while the bus is down).
const WATCH_POLL: Duration = Duration::from_secs(1);

/// A request to start a rollout, validated.
#[derive(Debug)]
pub struct StartRequest {
    /// The promotion id.
    pub promotion: PromotionId,
    /// The release to roll out.
    pub target: SpecRecord,
    /// The release to return to, if any.
    pub fallback: Option<SpecRecord>,
    /// Deadline in seconds; 0 takes the configured default.
    pub deadline_secs: u32,
}

/// What a watcher receives.
#[derive(Debug)]
pub enum WatchItem {
    /// An event of the rollout.
    Event(StoredEvent),
    /// The rollout ended; the last item.
    Finished(Rollout),
    /// This replica is shutting down: the watch ends here, after event
    /// `after`, for the caller to watch again on another replica (or this
    /// one restarted) from there; the last item.
    Draining {
        /// The last event id sent.
        after: u64,
    },
}

/// The service.
pub struct Rollouts {
    store: Store,
    runtime: DynRuntime,
    bus: Arc<dyn EventBus>,
    drivers: Arc<Drivers>,
    default_deadline: u32,
}

impl Rollouts {
    /// The service over its parts.
    pub fn new(
        store: Store,
        runtime: DynRuntime,
        bus: Arc<dyn EventBus>,
        drivers: Arc<Drivers>,
        default_deadline: u32,
    ) -> Self {
        Self {
            store,
            runtime,
            bus,
            drivers,
            default_deadline,
        }
    }

    /// Starts the rollout of a promotion, or returns the one already started.
    pub async fn start(&self, request: StartRequest) -> Result<Rollout> {
        let target = Spec::from_record(request.target)
            .map_err(|e| Error::InvalidArgument(format!("target: {e}")))?;
        let fallback = request
            .fallback
            .map(Spec::from_record)
            .transpose()
            .map_err(|e| Error::InvalidArgument(format!("fallback: {e}")))?;
        if let Some(fallback) = &fallback
            && fallback.app != target.app
        {
            return Err(Error::InvalidArgument(format!(
                "fallback: app {} differs from the target's app {}",
                fallback.app, target.app
            )));
        }
        let deadline_secs = match request.deadline_secs {
            0 => self.default_deadline,
            secs if DEADLINE_RANGE.contains(&secs) => secs,
            secs => {
                return Err(Error::InvalidArgument(format!(
                    "deadline_seconds must be between {} and {}, got {secs}",
                    DEADLINE_RANGE.start(),
                    DEADLINE_RANGE.end()
                )));
            }
        };
        let new = NewRollout {
            id: request.promotion,
            target,
            fallback,
            deadline_secs,
        };
        let (plan, created) = self
            .store
            .create(&new, self.drivers.replica(), self.drivers.lease_ttl())
            .await?;
        if created {
            tracing::info!(rollout = %new.id, app = %new.target.app, release = %new.target.release, "rollout started");
            self.drivers.hold(new.id.as_str(), plan.rollout.epoch);
            self.drivers.status_event(
                new.target.app.as_str(),
                new.id.as_str(),
                "Running",
                Phase::Pending,
            );
            self.drivers.spawn(new.id.to_string(), plan.rollout.epoch);
        }
        Ok(plan.rollout)
    }

    /// Reads a rollout.
    pub async fn get(&self, id: &PromotionId) -> Result<Rollout> {
        self.store
            .get(id.as_str())
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// Asks a rollout to stop and roll back; a finished one is returned as is.
    pub async fn cancel(&self, id: &PromotionId) -> Result<Rollout> {
        let rollout = self
            .store
            .request_cancel(id.as_str())
            .await?
            .ok_or_else(|| not_found(id))?;
        if !rollout.phase.is_terminal() {
            tracing::info!(rollout = %id, "cancel requested");
            self.drivers.wake(id.as_str());
        }
        Ok(rollout)
    }

    /// Streams a rollout's events after `after` (replayed from the log, then
    /// live), ending with the finished rollout once it is terminal. The bus
    /// only wakes the watcher up: without it (Redis down) the watcher polls
    /// the durable log, which holds every event anyway. When this replica
    /// starts draining (SIGTERM) a live watch ends with
    /// [`WatchItem::Draining`] at once, instead of holding the shutdown
    /// until its grace runs out, so the caller resumes elsewhere.
    pub async fn watch(
        &self,
        id: &PromotionId,
        after: u64,
    ) -> Result<mpsc::Receiver<Result<WatchItem>>> {
        self.get(id).await?;
        let mut wakeups = match self
            .bus
            .subscribe(Topic::Rollout(id.to_string()), None)
            .await
        {
            Ok(wakeups) => wakeups,
            Err(e) => {
                tracing::warn!(rollout = %id, "watching from the database alone (every {WATCH_POLL:?}): {e}");
                Box::pin(tokio_stream::pending())
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let store = self.store.clone();
        let id = id.to_string();
        let draining = self.drivers.shutdown_token();
        tokio::spawn(async move {
            let mut last = after;
            loop {
                let events = match store.events_after(&id, last, PAGE).await {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let full = events.len() as u32 == PAGE;
                for event in events {
                    last = event.seq;
                    if tx.send(Ok(WatchItem::Event(event))).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                match store.get(&id).await {
                    Ok(Some(rollout)) if rollout.phase.is_terminal() => {
                        // Every event was flushed before the terminal phase
                        // was written: one more read gets the rest.
                        match store.events_after(&id, last, u32::MAX >> 1).await {
                            Ok(events) => {
                                for event in events {
                                    if tx.send(Ok(WatchItem::Event(event))).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                        let _ = tx.send(Ok(WatchItem::Finished(rollout))).await;
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                tokio::select! {
                    () = tx.closed() => return,
                    () = draining.cancelled() => {
                        let _ = tx.send(Ok(WatchItem::Draining { after: last })).await;
                        return;
                    }
                    () = tokio::time::sleep(WATCH_POLL) => {}
                    item = wakeups.next() => {
                        if item.is_none() {
                            tokio::time::sleep(WATCH_POLL).await;
                        }
                        // Coalesce a burst of wake-ups into one read.
                        while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, wakeups.next()).await {}
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Streams an app's log: its events since `query.since`, then, with
    /// `query.follow`, live ones (see [`crate::logs`]).
    pub async fn app_logs(
        &self,
        query: LogQuery,
        after: Option<Cursor>,
    ) -> Result<mpsc::Receiver<Result<LogItem>>> {
        crate::logs::stream(self.store.clone(), self.bus.clone(), query, after).await
    }

    /// Fires when this replica starts draining (after SIGTERM): its open
    /// streams end at once so that their callers resume elsewhere.
    pub fn draining(&self) -> tokio_util::sync::CancellationToken {
        self.drivers.shutdown_token()
    }

    /// The app's processes.
    pub async fn processes(&self, app: &AppName) -> Result<Vec<ProcessInfo>> {
        Ok(self.runtime.processes(app.as_str()).await?)
    }

    /// The app's services.
    pub async fn services(&self, app: &AppName) -> Result<Vec<ServiceInfo>> {
        Ok(self.runtime.services(app.as_str()).await?)
    }
}

fn not_found(id: &PromotionId) -> Error {
    Error::NotFound(format!("rollout {id} not found"))
}
