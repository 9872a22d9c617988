//! The event watcher: one task per app namespace lists and then watches
//! core/v1 Events and emits each one once as `system/k8s/<kind>/<name>
//! <message>` (the shape the logs' service filter reads), tagged with the
//! rollout it serves. A watcher lives as long as that rollout on this
//! replica: it stops when the rollout's outcome is read, or when nobody
//! has asked for progress for [`IDLE`] (the driver lost its lease and
//! another replica, with a watcher of its own, took over), so no event is
//! printed twice or tagged with a rollout that has ended. The server
//! deduplicates repeated events by bumping `count`; a bump is not a new
//! event, so it is not printed again (it does count towards a pod's
//! readiness-probe failures, which the runtime fails fast on).
//!
//! The watch survives a connection that ends or drops (re-watch from the
//! last resourceVersion seen) and a resourceVersion that has become too
//! old (`410 Gone`, as an HTTP status or an ERROR event: list again,
//! print what was missed, resume from the list's resourceVersion).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use slipway_events::NewEvent;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::api::{self, Op};
use super::progress::{Unhealthy, to_chrono};
use crate::runtime::{EventSink, RuntimeError};

/// Server-side timeout of one watch request; the watcher re-watches after.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// A watcher nobody asked for progress for this long stops.
pub(crate) const IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// What the watcher of one app's namespace shares with the runtime.
pub(crate) struct Watcher {
    app: String,
    namespace: String,
    /// Tags emitted events: the rollout that last applied to the app.
    pub(crate) rollout: Mutex<Option<String>>,
    /// Readiness-probe failures per pod name.
    pub(crate) unhealthy: Mutex<BTreeMap<String, Unhealthy>>,
    /// Event uid -> the `count` last seen.
    seen: Mutex<HashMap<String, i32>>,
    /// Bumped on every event, waking `progress`.
    pub(crate) changed: watch::Sender<u64>,
    /// Stops the task.
    pub(crate) cancel: CancellationToken,
    /// When the runtime last asked for progress through this watcher.
    asked: Mutex<std::time::Instant>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watcher {
    /// Lists the namespace's events as the baseline (they happened before
    /// this watcher, so they are not printed) and starts watching from there.
    pub(crate) async fn start(
        client: kube::Client,
        events: Arc<dyn EventSink>,
        app: &str,
        namespace: &str,
        rollout: &str,
    ) -> Result<Arc<Self>, RuntimeError> {
        let watcher = Arc::new(Self {
            app: app.to_owned(),
            namespace: namespace.to_owned(),
            rollout: Mutex::new(Some(rollout.to_owned())),
            unhealthy: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            cancel: CancellationToken::new(),
            asked: Mutex::new(std::time::Instant::now()),
        });
        let api: Api<Event> = Api::namespaced(client, namespace);
        let rv = watcher.list(&api, &*events, false).await?;
        tokio::spawn(watcher.clone().run(api, events, rv));
        Ok(watcher)
    }

    /// The rollout it serves is still being watched over.
    pub(crate) fn touch(&self) {
        *lock(&self.asked) = std::time::Instant::now();
    }

    /// Stops watching and emitting: the rollout it served has ended here.
    pub(crate) fn stop(&self) {
        *lock(&self.rollout) = None;
        self.cancel.cancel();
    }

    fn op(&self, verb: &'static str) -> Op<'_> {
        Op {
            verb,
            resource: "events",
            namespace: Some(&self.namespace),
            name: None,
        }
    }

    /// Lists every event, handling (and with `print`, emitting) the unseen
    /// ones; returns the list's resourceVersion.
    async fn list(
        &self,
        api: &Api<Event>,
        events: &dyn EventSink,
        print: bool,
    ) -> Result<String, RuntimeError> {
        let params = ListParams::default();
        let list = api::call(self.op("list"), || api.list(&params)).await?;
        for event in &list.items {
            self.handle(event, events, print);
        }
        Ok(list.metadata.resource_version.unwrap_or_default())
    }

    /// Records one event; emits it if it is new and `print` is set.
    fn handle(&self, event: &Event, events: &dyn EventSink, print: bool) {
        let key = event
            .metadata
            .uid
            .clone()
            .or_else(|| event.metadata.name.clone())
            .unwrap_or_default();
        let count = event
            .series
            .as_ref()
            .and_then(|s| s.count)
            .or(event.count)
            .unwrap_or(1)
            .max(1);
        let previous = lock(&self.seen).insert(key, count);
        let object = event.involved_object.name.clone().unwrap_or_default();
        let grown = count - previous.unwrap_or(0);
        // Liveness and startup probes report `Unhealthy` too.
        if event.reason.as_deref() == Some("Unhealthy")
            && event.involved_object.kind.as_deref() == Some("Pod")
            && event
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with("Readiness probe"))
            && grown > 0
        {
            let mut unhealthy = lock(&self.unhealthy);
            let entry = unhealthy.entry(object.clone()).or_default();
            entry.failures += u32::try_from(grown).unwrap_or(0);
            entry.message = event.message.clone().unwrap_or_default();
        }
        if previous.is_none() && print && !self.cancel.is_cancelled() {
            // Events written through events.k8s.io (the scheduler's) have
            // only `eventTime` in core/v1.
            let time = event
                .last_timestamp
                .as_ref()
                .or(event.first_timestamp.as_ref())
                .and_then(to_chrono)
                .or_else(|| {
                    let t = event.event_time.as_ref()?;
                    chrono::DateTime::from_timestamp(
                        t.0.as_second(),
                        u32::try_from(t.0.subsec_nanosecond()).ok()?,
                    )
                })
                .unwrap_or_else(Utc::now);
            let kind = event
                .involved_object
                .kind
                .as_deref()
                .unwrap_or("object")
                .to_ascii_lowercase();
            let message = event.message.clone().unwrap_or_default();
            events.emit(NewEvent {
                time,
                app: self.app.clone(),
                rollout: lock(&self.rollout).clone(),
                source: format!("system/k8s/{kind}/{object}"),
                message: message.lines().next().unwrap_or_default().to_owned(),
            });
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Watches until cancelled, re-watching and re-listing as needed.
    async fn run(self: Arc<Self>, api: Api<Event>, events: Arc<dyn EventSink>, mut rv: String) {
        let cancel = self.cancel.clone();
        let idle = async {
            loop {
                let asked = *lock(&self.asked);
                if asked.elapsed() >= IDLE {
                    tracing::debug!(namespace = %self.namespace, "no rollout asks for events any more: stopping the watcher");
                    self.stop();
                    return;
                }
                tokio::time::sleep(IDLE.saturating_sub(asked.elapsed())).await;
            }
        };
        tokio::select! {
            () = cancel.cancelled() => {}
            () = idle => {}
            () = async {
                let mut failures = 0;
                loop {
                    match self.watch_once(&api, &*events, &mut rv).await {
                        Ok(()) => {
                            failures = 0;
                            // A server that ends every watch at once must not spin us.
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                        Err(Gone) => {
                            tracing::debug!(namespace = %self.namespace, "event watch expired, listing again");
                            match self.list(&api, &*events, true).await {
                                Ok(fresh) => { rv = fresh; failures = 0; }
                                Err(e) => {
                                    failures += 1;
                                    tracing::warn!(namespace = %self.namespace, "failed to list events: {e}");
                                }
                            }
                        }
                    }
                    if failures > 0 {
                        tokio::time::sleep(api::backoff(failures)).await;
                    }
                }
            } => {}
        }
    }

    /// One watch request, until it ends. `Err(Gone)` when `rv` is too old.
    async fn watch_once(
        &self,
        api: &Api<Event>,
        events: &dyn EventSink,
        rv: &mut String,
    ) -> Result<(), Gone> {
        let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
        let stream = match api.watch(&params, rv).await {
            Ok(stream) => stream,
            Err(e) if api::code(&e) == Some(410) => return Err(Gone),
            Err(e) => {
                tracing::warn!(namespace = %self.namespace, "failed to {}: {}", self.op("watch"), e);
                tokio::time::sleep(api::backoff(3)).await;
                return Ok(());
            }
        };
        let mut stream = std::pin::pin!(stream.into_stream());
        while let Some(item) = stream.next().await {
            match item {
                Ok(WatchEvent::Added(e) | WatchEvent::Modified(e)) => {
                    if let Some(v) = &e.metadata.resource_version {
                        rv.clone_from(v);
                    }
                    self.handle(&e, events, true);
                }
                Ok(WatchEvent::Deleted(e)) => {
                    if let Some(v) = &e.metadata.resource_version {
                        rv.clone_from(v);
                    }
                    if let Some(uid) = &e.metadata.uid {
                        lock(&self.seen).remove(uid);
                    }
                }
                Ok(WatchEvent::Bookmark(b)) => rv.clone_from(&b.metadata.resource_version),
                Ok(WatchEvent::Error(status)) if status.code == 410 => return Err(Gone),
                Ok(WatchEvent::Error(status)) => {
                    tracing::warn!(namespace = %self.namespace, "event watch error: {}", status.message);
                    return Ok(());
                }
                Err(e) => {
                    // A dropped connection: re-watch from the last version.
                    tracing::debug!(namespace = %self.namespace, "event watch ended: {e}");
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// The watch's resourceVersion is too old: list again.
struct Gone;
