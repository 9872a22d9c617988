//! Where apps run. A [`Runtime`] takes a release [`Spec`] and moves an app to
//! it (rolling replacement, health checks), reports how far it got, and
//! describes what runs. The rollout driver owns the *policy* (deadline,
//! cancel, rollback, reporting); a runtime owns the *mechanism*, and fails
//! fast on what it can see (crash loops, never-healthy processes).
//!
//! Two backends implement it: [`local`] (real processes behind a stable
//! per-service port; the embedded default) and [`kubernetes`] (a namespace
//! per app, Deployments, readiness probes; tested against a fake API server
//! in `tests/k8s_fake`). Both run the suite in [`conformance`].
//!
//! Contract every backend honours:
//! - `apply` returns as soon as the new desired state is recorded; progress
//!   happens in the background and is read with `progress`.
//! - `apply` is idempotent: applying the spec the app is already moving to
//!   (a restarted or new rollout-service replica taking over) continues
//!   from where the runtime is and starts nothing twice.
//! - Applying another release of the app (a rollback) replaces the target;
//!   the processes of the previous target count as old ones.
//! - `progress` reports `Failed` as soon as failure is certain: a new process
//!   that exits `restart_limit` times, or one never healthy after grace plus
//!   three health intervals. The reason names the service, the check, and
//!   the last output lines where the runtime has them.
//! - Events (`system/<name>/<object> <message>`) go to the [`EventSink`] as
//!   they happen, tagged with the rollout that caused them.

pub mod conformance;
pub mod kubernetes;
pub mod local;
pub mod oneoff;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_events::NewEvent;

pub use self::oneoff::{
    NoEnds, OneOffEnds, OneOffInfo, OneOffStatus, RunRequest, Session, SessionKind, SessionOutput,
};
pub use crate::model::Spec;

/// Failures of a runtime call (not of the rollout: those are [`Progress::Failed`]).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime holds no state for this app or release.
    #[error("{0}")]
    NotFound(String),
    /// The runtime's own records could not be read or written.
    #[error("runtime store: {0}")]
    Store(String),
    /// The runtime's backend (an API server, the OS) refused or failed.
    #[error("runtime backend: {0}")]
    Backend(String),
    /// The request cannot be carried out as asked (a service the release
    /// does not have, an artifact that is not there); the text says why.
    #[error("{0}")]
    Refused(String),
}

/// How far an app is towards a release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Still moving; how many processes of each service are healthy.
    Progressing {
        /// Per service, in name order.
        services: Vec<ServiceProgress>,
    },
    /// Every service runs the release, healthy, at its scale, and nothing
    /// of other releases is left.
    Complete,
    /// The release cannot become healthy; why, naming service and check.
    Failed {
        /// e.g. `service web: process exited with status 1 during start (last output: …)`.
        reason: String,
    },
}

/// One service's part of a [`Progress::Progressing`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceProgress {
    /// Service name.
    pub service: String,
    /// Healthy processes of the target release.
    pub healthy: u32,
    /// The scale count.
    pub desired: u32,
}

impl Progress {
    /// `service web has 0/2 healthy, service worker has 1/2 healthy` (the
    /// services still short), for deadline reasons.
    pub fn shortfall(&self) -> String {
        match self {
            Self::Progressing { services } => {
                let short: Vec<String> = services
                    .iter()
                    .filter(|s| s.healthy < s.desired)
                    .map(|s| {
                        format!(
                            "service {} has {}/{} healthy",
                            s.service, s.healthy, s.desired
                        )
                    })
                    .collect();
                if short.is_empty() {
                    "old processes are still stopping".to_owned()
                } else {
                    short.join(", ")
                }
            }
            Self::Complete => "complete".to_owned(),
            Self::Failed { reason } => reason.clone(),
        }
    }
}

/// A process (or pod) of an app, as the runtime sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// e.g. `web-4f2a9c1d`.
    pub id: String,
    /// The service.
    pub service: String,
    /// The release it runs.
    pub release: String,
    /// `starting`, `running`, `unhealthy` or `stopping`.
    pub status: String,
    /// When it started.
    pub started: DateTime<Utc>,
    /// OS pid where there is one.
    pub pid: Option<u32>,
    /// The port the process listens on, if any.
    pub port: Option<u16>,
    /// A one-off's command; empty for a service process.
    pub command: String,
}

/// A service of an app and where clients reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Service name.
    pub name: String,
    /// `host:port`, stable across releases; empty for a service without a port.
    pub address: String,
    /// Healthy processes.
    pub count: u32,
}

/// Where a runtime sends its events.
pub trait EventSink: Send + Sync + 'static {
    /// Records an event (rollout events durably, all of them on the bus).
    /// Must not block.
    fn emit(&self, event: NewEvent);
}

/// A runtime that apps run on. See the module docs for the contract.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// `local` or `k8s`: the runtime's part of event sources (`system/local/web`).
    fn name(&self) -> &'static str;

    /// Makes `spec` the app's desired state and starts moving to it; returns
    /// at once. `rollout` tags the events this causes; `deadline` is the
    /// rollout deadline (Kubernetes' `progressDeadlineSeconds`).
    async fn apply(
        &self,
        rollout: &str,
        spec: Arc<Spec>,
        deadline: Duration,
    ) -> Result<(), RuntimeError>;

    /// How far `app` is towards `release`. Waits up to `wait` for a change
    /// before answering (a backend may answer earlier), so a caller can
    /// loop on it without sleeping.
    async fn progress(
        &self,
        app: &str,
        release: &str,
        wait: Duration,
    ) -> Result<Progress, RuntimeError>;

    /// Stops everything the app runs and forgets its desired state (a first
    /// deploy that failed, or a deleted app). Returns once it is stopped.
    async fn remove(&self, rollout: &str, app: &str) -> Result<(), RuntimeError>;

    /// The app's processes now, of every release.
    async fn processes(&self, app: &str) -> Result<Vec<ProcessInfo>, RuntimeError>;

    /// The app's services and their stable addresses.
    async fn services(&self, app: &str) -> Result<Vec<ServiceInfo>, RuntimeError>;

    /// Starts a one-off process of `spec` (see [`oneoff`]); returns once it
    /// is started (or, where it must be pulled first, pending).
    async fn run(&self, spec: Arc<Spec>, request: RunRequest) -> Result<OneOffInfo, RuntimeError> {
        let _ = (spec, request);
        Err(RuntimeError::Refused(format!(
            "the {} runtime does not run one-off processes",
            self.name()
        )))
    }

    /// A process of `app` by id: a one-off (also for a while after it
    /// ended) or a service process.
    async fn process(&self, app: &str, id: &str) -> Result<OneOffInfo, RuntimeError> {
        let _ = app;
        Err(RuntimeError::NotFound(format!("process not found: {id}")))
    }

    /// Stops a process: a one-off ends (its status says how), a service
    /// process is replaced by its service.
    async fn stop(&self, app: &str, id: &str) -> Result<(), RuntimeError> {
        let _ = app;
        Err(RuntimeError::NotFound(format!("process not found: {id}")))
    }

    /// Opens a session with a running process (see [`oneoff::Session`]).
    async fn session(
        &self,
        app: &str,
        id: &str,
        kind: SessionKind,
    ) -> Result<Session, RuntimeError> {
        let _ = (app, kind);
        Err(RuntimeError::NotFound(format!("process not found: {id}")))
    }

    /// The service is stopping: lets go of what the runtime holds in this
    /// process (control loops, listeners) and leaves the apps' workloads
    /// running, for the next start, here or on another replica, to adopt.
    /// A runtime that holds nothing in-process needs nothing here.
    async fn shutdown(&self) {}
}

/// A shared runtime handle.
pub type DynRuntime = Arc<dyn Runtime>;
