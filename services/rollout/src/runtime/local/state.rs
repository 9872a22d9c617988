//! The local runtime's in-memory state: per app, the desired release (the
//! target) and, per service, its processes, its stable-port proxy and its
//! restart backoff. The reconcile loop, the supervisors and `progress` all
//! read and change it under the app's lock; the planner decides from it.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::plan::backoff;
use super::process::{Proc, Status};
use super::proxy::{Backend, Proxy};
use crate::runtime::Spec;

/// One app's runtime state.
pub(super) struct App {
    pub(super) name: String,
    pub(super) state: Mutex<AppState>,
    /// Bumped on every change, waking the reconcile loop and `progress`.
    pub(super) changed: watch::Sender<u64>,
    /// Whether the reconcile loop runs.
    pub(super) looping: AtomicBool,
}

impl App {
    pub(super) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            state: Mutex::new(AppState::default()),
            changed: watch::channel(0).0,
            looping: AtomicBool::new(false),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, AppState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes whoever waits for a change of the app.
    pub(super) fn poke(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// What an app should run and what it runs.
#[derive(Default)]
pub(super) struct AppState {
    /// The desired release; `None` once the app is being removed.
    pub(super) target: Option<Target>,
    /// Per service, desired or still running.
    pub(super) services: BTreeMap<String, Svc>,
    /// The rollout that asked for removal (tags the stop events).
    pub(super) removing: Option<String>,
}

impl AppState {
    /// The rollout that events of the app belong to now: the target's while
    /// it rolls out, else the removing one's.
    pub(super) fn rollout_in_flight(&self) -> Option<String> {
        self.target
            .as_ref()
            .filter(|t| !t.settled)
            .map(|t| t.rollout.clone())
            .or_else(|| self.removing.clone())
    }

    /// Whether the target is `release` and still rolling out, so trouble of
    /// its processes fails the rollout rather than being supervision.
    pub(super) fn rolling_out(&self, release: &str) -> bool {
        self.target.as_ref().is_some_and(|t| t.rolling_out(release))
    }
}

/// The release an app should run, and how its rollout goes.
pub(super) struct Target {
    pub(super) spec: Arc<Spec>,
    /// The rollout that set it.
    pub(super) rollout: String,
    /// Unexpected exits of target processes, per service.
    pub(super) failures: BTreeMap<String, u32>,
    /// Set once the target cannot become healthy.
    pub(super) failed: Option<String>,
    /// Set once the target was complete: later trouble is supervision,
    /// not a rollout failure.
    pub(super) settled: bool,
}

impl Target {
    /// A fresh target: no failures yet, not settled.
    pub(super) fn new(spec: Arc<Spec>, rollout: String) -> Self {
        Self {
            spec,
            rollout,
            failures: BTreeMap::new(),
            failed: None,
            settled: false,
        }
    }

    /// Whether this target is `release`, neither complete nor failed yet.
    pub(super) fn rolling_out(&self, release: &str) -> bool {
        self.spec.release == release && !self.settled && self.failed.is_none()
    }
}

/// One service of an app.
#[derive(Default)]
pub(super) struct Svc {
    /// Its processes, of any release, stopping ones included.
    pub(super) procs: Vec<Arc<Proc>>,
    /// The stable-port proxy, once bound (services with a port).
    pub(super) proxy: Option<Proxy>,
    /// Unexpected exits since the service was last healthy (restart backoff).
    pub(super) restarts: u32,
    /// No process of the service starts before this.
    pub(super) next_start: Option<Instant>,
}

impl Svc {
    /// Points the proxy at the healthy processes.
    pub(super) fn refresh(&self) {
        if let Some(proxy) = &self.proxy {
            proxy.set_backends(
                self.procs
                    .iter()
                    .filter(|p| p.status() == Status::Healthy)
                    .map(|p| Backend {
                        port: p.port,
                        conns: p.conns.clone(),
                    })
                    .collect(),
            );
        }
    }

    /// Counts one more unexpected exit and holds back the next start.
    pub(super) fn back_off(&mut self, now: Instant) {
        self.restarts += 1;
        self.next_start = Some(now + backoff(self.restarts));
    }
}

/// What the planner decided to do.
pub(super) enum Action {
    /// Start a process of `service` from `spec`.
    Start { service: String, spec: Arc<Spec> },
    /// Stop `proc` (already marked stopping), within `grace`.
    Stop { proc: Arc<Proc>, grace: Duration },
}
