//! The local runtime (the embedded default): each service of a release runs
//! as `scale.count` real processes (`sh -c <command>` in the release's
//! artifact directory, with `PORT` and the release env), behind a stable
//! per-service port that forwards only to healthy processes.
//!
//! Each app has one reconcile loop, a small controller in the Kubernetes
//! style: it compares the processes that run with the desired spec and
//! starts or stops processes within `deployment.minimum`/`maximum`, until
//! every process runs the desired release, healthy. Per process, a watcher
//! notices the exit at once (`wait` on our child), a health loop probes it,
//! and a log pump forwards its output to the event bus.
//!
//! Processes live in their own process group and write to log files, so
//! they outlive a crash of the rollout service. Everything needed to find
//! them again (desired spec, stable ports, pid and marker of every process)
//! is in the database; [`LocalRuntime::start`] re-adopts live processes
//! instead of starting them twice.
//!
//! Processes run in a working copy of their artifact outside the data
//! directory and, when the service runs as root, as a user of their app's
//! own (`isolation`).
//!
//! The modules, by seam: `state` (what an app should run and runs),
//! `plan` (the pure planner: rolling-update bounds, completeness,
//! backoff), `supervise` (one process, whatever it runs for: spawn,
//! exit, health, output, stop) and `replicas` (a service's processes as
//! the reconcile loop runs them), `adopt` (re-adoption after a restart),
//! `ports` and `proxy` (stable service ports), `records` (the
//! `local_*` tables) and `error`.

mod adopt;
mod cgroup;
mod error;
mod health;
mod isolation;
mod oneoff;
mod plan;
mod ports;
mod process;
mod proxy;
mod records;
mod replicas;
mod state;
mod supervise;

pub use self::cgroup::cpu_enforced;
pub use self::error::{IsolationError, LocalError};
pub use self::isolation::{UidRange, default_apps_dir};
pub use self::records::{LocalRecords, ProcessRecord};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_events::NewEvent;
use tokio::time::Instant;

use self::isolation::Isolation;
use self::process::Status;
use self::state::{Action, App, AppState, Target};
use super::{
    EventSink, NoEnds, OneOffEnds, OneOffInfo, ProcessInfo, Progress, RunRequest, Runtime,
    RuntimeError, ServiceInfo, Session, SessionKind, Spec,
};
use crate::store::Store;

/// Settings of the local runtime.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Where process logs go (`<data_dir>/logs/<app>/<process>.log`).
    pub data_dir: PathBuf,
    /// Range stable service ports are taken from; `None` lets the OS pick
    /// (tests). Either way a service keeps its port across releases.
    pub ports: Option<(u16, u16)>,
    /// Exits of a new release's processes that fail the rollout.
    pub restart_limit: u32,
    /// Where releases' working copies go, outside `data_dir`
    /// (`<apps_dir>/<app>/<release>/`; [`default_apps_dir`] by default).
    pub apps_dir: PathBuf,
    /// Uids (and gids) app processes run as, one per app, when the service
    /// runs as root.
    pub app_uids: UidRange,
}

/// The local runtime. Cheap to clone.
#[derive(Clone)]
pub struct LocalRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    records: LocalRecords,
    events: Arc<dyn EventSink>,
    config: LocalConfig,
    isolation: Isolation,
    apps: Mutex<BTreeMap<String, Arc<App>>>,
    /// One-off processes (`oneoff`).
    oneoffs: oneoff::OneOffs,
    /// Where the ends of one-offs are reported.
    oneoff_ends: Arc<dyn OneOffEnds>,
    /// Serialises stable-port assignment.
    ports: tokio::sync::Mutex<()>,
    /// Cancelled by [`Runtime::shutdown`]: the reconcile loops end.
    stopping: tokio_util::sync::CancellationToken,
}

impl LocalRuntime {
    /// Starts the runtime and re-adopts the processes a previous run left
    /// (live ones keep running; dead ones are forgotten and replaced). Its
    /// records live in `store`'s database.
    pub async fn start(
        store: Store,
        events: Arc<dyn EventSink>,
        config: LocalConfig,
    ) -> Result<Self, RuntimeError> {
        Self::start_with_ends(store, events, Arc::new(NoEnds), config).await
    }

    /// [`LocalRuntime::start`], reporting how one-offs ended to `ends`
    /// (those that ended while the service was down included, found at
    /// start).
    pub async fn start_with_ends(
        store: Store,
        events: Arc<dyn EventSink>,
        ends: Arc<dyn OneOffEnds>,
        config: LocalConfig,
    ) -> Result<Self, RuntimeError> {
        let records = LocalRecords::new(&store);
        let isolation = Isolation::start(config.apps_dir.clone(), config.app_uids, records.clone())
            .map_err(|e| RuntimeError::Backend(e.to_string()))?;
        let runtime = Self {
            inner: Arc::new(Inner {
                records,
                events,
                config,
                isolation,
                apps: Mutex::new(BTreeMap::new()),
                oneoffs: oneoff::OneOffs::default(),
                oneoff_ends: ends,
                ports: tokio::sync::Mutex::new(()),
                stopping: tokio_util::sync::CancellationToken::new(),
            }),
        };
        runtime.recover().await?;
        runtime.reap_orphans().await;
        runtime.inner.isolation.sweep().await;
        Ok(runtime)
    }

    fn records(&self) -> &LocalRecords {
        &self.inner.records
    }

    fn app(&self, name: &str) -> Arc<App> {
        let mut apps = self.inner.apps.lock().unwrap_or_else(|e| e.into_inner());
        apps.entry(name.to_owned())
            .or_insert_with(|| Arc::new(App::new(name)))
            .clone()
    }

    fn existing(&self, name: &str) -> Result<Arc<App>, RuntimeError> {
        let apps = self.inner.apps.lock().unwrap_or_else(|e| e.into_inner());
        apps.get(name)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(format!("app {name} runs nothing here")))
    }

    fn ensure_loop(&self, app: &Arc<App>) {
        if !app.looping.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().reconcile_loop(app.clone()));
        }
    }

    /// Emits a `system/local/<object>` event, tagged with the rollout in flight.
    fn emit(&self, app: &App, st: &AppState, object: &str, message: String) {
        let mut event = NewEvent::now(&app.name, format!("system/local/{object}"), message);
        event.rollout = st.rollout_in_flight();
        self.inner.events.emit(event);
    }

    fn log_path(&self, app: &str, id: &str) -> PathBuf {
        self.inner
            .config
            .data_dir
            .join("logs")
            .join(app)
            .join(format!("{id}.log"))
    }

    /// The app's controller: binds stable ports, asks the planner what to
    /// do, does it, and sleeps until something changes or the planner's
    /// wake-up time. Ends once the app has no target and no process.
    async fn reconcile_loop(self, app: Arc<App>) {
        let mut changed = app.changed.subscribe();
        loop {
            if self.inner.stopping.is_cancelled() {
                app.looping.store(false, Ordering::Release);
                return;
            }
            self.ensure_proxies(&app).await;
            let (actions, wake) = {
                let mut st = app.lock();
                if st.target.is_none() && st.services.values().all(|s| s.procs.is_empty()) {
                    app.looping.store(false, Ordering::Release);
                    return;
                }
                plan::plan(&mut st, Instant::now())
            };
            let acted = !actions.is_empty();
            let mut starts = Vec::new();
            for action in actions {
                match action {
                    Action::Start { service, spec } => starts.push((service, spec)),
                    Action::Stop { proc, grace } => {
                        tokio::spawn(self.clone().stop_process(app.clone(), proc, grace));
                    }
                }
            }
            self.start_processes(&app, starts).await;
            if acted {
                continue;
            }
            changed.borrow_and_update();
            tokio::select! {
                _ = tokio::time::timeout(wake, changed.changed()) => {}
                () = self.inner.stopping.cancelled() => {}
            }
        }
    }

    /// Ends every app's reconcile loop and closes the stable ports, leaving
    /// the processes running (see [`Runtime::shutdown`]).
    async fn stop_controlling(&self) {
        self.inner.stopping.cancel();
        let apps: Vec<Arc<App>> = self
            .inner
            .apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for app in apps {
            let mut st = app.lock();
            for service in st.services.values_mut() {
                // Dropping the proxy ends its accept loop, which frees the port.
                service.proxy = None;
            }
        }
    }

    fn progress_now(&self, app: &App, release: &str) -> Result<Progress, RuntimeError> {
        let mut st = app.lock();
        let Some(target) = &st.target else {
            return Err(RuntimeError::NotFound(format!(
                "app {} has no desired release",
                app.name
            )));
        };
        if target.spec.release != release {
            return Err(RuntimeError::NotFound(format!(
                "app {} is moving to {}, not {release}",
                app.name, target.spec.release
            )));
        }
        if let Some(reason) = &target.failed {
            return Ok(Progress::Failed {
                reason: reason.clone(),
            });
        }
        if target.settled {
            return Ok(Progress::Complete);
        }
        let (complete, services) = plan::completeness(&st);
        if complete {
            if let Some(t) = st.target.as_mut() {
                t.settled = true;
            }
            return Ok(Progress::Complete);
        }
        Ok(Progress::Progressing { services })
    }
}

#[async_trait::async_trait]
impl Runtime for LocalRuntime {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn apply(
        &self,
        rollout: &str,
        spec: Arc<Spec>,
        _deadline: Duration,
    ) -> Result<(), RuntimeError> {
        let app = self.app(&spec.app);
        self.records()
            .set_app(&spec.app, &spec.to_json(), rollout)
            .await
            .map_err(LocalError::from)?;
        {
            let mut st = app.lock();
            st.removing = None;
            let same = st
                .target
                .as_ref()
                .is_some_and(|t| t.spec.release == spec.release && t.rollout == rollout);
            if !same {
                let resumed = st
                    .target
                    .as_ref()
                    .is_some_and(|t| t.spec.release == spec.release);
                st.target = Some(Target::new(spec.clone(), rollout.to_owned()));
                for svc in st.services.values_mut() {
                    svc.next_start = None;
                    svc.restarts = 0;
                }
                let verb = if resumed { "Resuming" } else { "Deploying" };
                self.emit(
                    &app,
                    &st,
                    "atom/app",
                    format!("{verb} release {}", spec.release),
                );
            }
        }
        app.poke();
        self.ensure_loop(&app);
        Ok(())
    }

    async fn progress(
        &self,
        app: &str,
        release: &str,
        wait: Duration,
    ) -> Result<Progress, RuntimeError> {
        let app = self.existing(app)?;
        let mut changed = app.changed.subscribe();
        changed.borrow_and_update();
        let progress = self.progress_now(&app, release)?;
        if !matches!(progress, Progress::Progressing { .. }) {
            return Ok(progress);
        }
        let _ = tokio::time::timeout(wait, changed.changed()).await;
        self.progress_now(&app, release)
    }

    async fn remove(&self, rollout: &str, app_name: &str) -> Result<(), RuntimeError> {
        let Ok(app) = self.existing(app_name) else {
            return Ok(());
        };
        {
            let mut st = app.lock();
            st.target = None;
            st.removing = Some(rollout.to_owned());
        }
        app.poke();
        self.ensure_loop(&app);
        let mut changed = app.changed.subscribe();
        loop {
            changed.borrow_and_update();
            if app.lock().services.values().all(|s| s.procs.is_empty()) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), changed.changed()).await;
        }
        self.records()
            .remove_app(app_name)
            .await
            .map_err(LocalError::from)?;
        let mut st = app.lock();
        if st.target.is_none() {
            st.services.clear();
            st.removing = None;
        }
        Ok(())
    }

    async fn processes(&self, app: &str) -> Result<Vec<ProcessInfo>, RuntimeError> {
        let oneoffs = self.oneoff_processes(app);
        let Ok(app) = self.existing(app) else {
            return Ok(oneoffs);
        };
        let st = app.lock();
        Ok(st
            .services
            .values()
            .flat_map(|s| s.procs.iter())
            .map(|p| ProcessInfo {
                id: p.id.clone(),
                service: p.service.clone(),
                release: p.release.clone(),
                status: p.status().as_str().to_owned(),
                started: p.started,
                pid: Some(p.pid),
                port: Some(p.port),
                command: String::new(),
            })
            .chain(oneoffs)
            .collect())
    }

    async fn services(&self, app: &str) -> Result<Vec<ServiceInfo>, RuntimeError> {
        let Ok(app) = self.existing(app) else {
            return Ok(Vec::new());
        };
        let st = app.lock();
        Ok(st
            .services
            .iter()
            .filter(|(_, s)| s.proxy.is_some() || !s.procs.is_empty())
            .map(|(name, s)| ServiceInfo {
                name: name.clone(),
                address: s
                    .proxy
                    .as_ref()
                    .map(|p| format!("127.0.0.1:{}", p.port()))
                    .unwrap_or_default(),
                count: s
                    .procs
                    .iter()
                    .filter(|p| p.status() == Status::Healthy)
                    .count() as u32,
            })
            .collect())
    }

    async fn run(&self, spec: Arc<Spec>, request: RunRequest) -> Result<OneOffInfo, RuntimeError> {
        self.run_oneoff(spec, request).await
    }

    async fn process(&self, app: &str, id: &str) -> Result<OneOffInfo, RuntimeError> {
        self.oneoff_info(app, id)
    }

    async fn stop(&self, app: &str, id: &str) -> Result<(), RuntimeError> {
        self.stop_process_by_id(app, id).await
    }

    async fn session(
        &self,
        app: &str,
        id: &str,
        kind: SessionKind,
    ) -> Result<Session, RuntimeError> {
        self.open(app, id, kind).await
    }

    async fn shutdown(&self) {
        self.stop_controlling().await;
    }
}
