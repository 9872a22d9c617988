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
//! own ([`isolation`]).

mod health;
mod isolation;
mod process;
mod proxy;

pub use self::isolation::{UidRange, default_apps_dir};

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signal::Signal;
use slipway_domain::manifest::Health;
use slipway_events::NewEvent;
use tokio::sync::watch;

use self::isolation::Isolation;
use self::process::{Proc, Status};
use self::proxy::{Backend, Proxy};
use super::{
    EventSink, ProcessInfo, Progress, Runtime, RuntimeError, ServiceInfo, ServiceProgress, Spec,
};
use crate::store::{ProcessRecord, Store};

/// How often a process is probed until it first passes its health check.
const FIRST_HEALTH_POLL: Duration = Duration::from_millis(100);
/// Health-check failures in a row that make a process unhealthy.
const HEALTH_FAILURES: u32 = 3;
/// Env vars of the rollout service that app processes inherit.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

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
    store: Store,
    events: Arc<dyn EventSink>,
    config: LocalConfig,
    isolation: Isolation,
    apps: Mutex<BTreeMap<String, Arc<App>>>,
    /// Serialises stable-port assignment.
    ports: tokio::sync::Mutex<()>,
}

/// One app's runtime state.
struct App {
    name: String,
    state: Mutex<AppState>,
    /// Bumped on every change, waking the reconcile loop and `progress`.
    changed: watch::Sender<u64>,
    /// Whether the reconcile loop runs.
    looping: AtomicBool,
}

#[derive(Default)]
struct AppState {
    target: Option<Target>,
    services: BTreeMap<String, Svc>,
    /// The rollout that asked for removal (tags the stop events).
    removing: Option<String>,
}

struct Target {
    spec: Arc<Spec>,
    rollout: String,
    /// Unexpected exits of target processes, per service.
    failures: BTreeMap<String, u32>,
    /// Set once the target cannot become healthy.
    failed: Option<String>,
    /// Set once the target was complete: later trouble is supervision,
    /// not a rollout failure.
    settled: bool,
}

#[derive(Default)]
struct Svc {
    procs: Vec<Arc<Proc>>,
    proxy: Option<Proxy>,
    /// Unexpected exits since the service was last healthy (restart backoff).
    restarts: u32,
    next_start: Option<Instant>,
}

impl Svc {
    fn refresh(&self) {
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
}

impl App {
    fn lock(&self) -> std::sync::MutexGuard<'_, AppState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn poke(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

enum Action {
    Start { service: String, spec: Arc<Spec> },
    Stop { proc: Arc<Proc>, grace: Duration },
}

fn backoff(restarts: u32) -> Duration {
    Duration::from_millis(100u64 << restarts.saturating_sub(1).min(7)).min(Duration::from_secs(10))
}

impl LocalRuntime {
    /// Starts the runtime and re-adopts the processes a previous run left
    /// (live ones keep running; dead ones are forgotten and replaced).
    pub async fn start(
        store: Store,
        events: Arc<dyn EventSink>,
        config: LocalConfig,
    ) -> Result<Self, RuntimeError> {
        let isolation = Isolation::start(config.apps_dir.clone(), config.app_uids, store.clone())
            .map_err(RuntimeError::Backend)?;
        let runtime = Self {
            inner: Arc::new(Inner {
                store,
                events,
                config,
                isolation,
                apps: Mutex::new(BTreeMap::new()),
                ports: tokio::sync::Mutex::new(()),
            }),
        };
        runtime.recover().await?;
        runtime.inner.isolation.sweep().await;
        Ok(runtime)
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    fn app(&self, name: &str) -> Arc<App> {
        let mut apps = self.inner.apps.lock().unwrap_or_else(|e| e.into_inner());
        apps.entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(App {
                    name: name.to_owned(),
                    state: Mutex::new(AppState::default()),
                    changed: watch::channel(0).0,
                    looping: AtomicBool::new(false),
                })
            })
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
        event.rollout = st
            .target
            .as_ref()
            .filter(|t| !t.settled)
            .map(|t| t.rollout.clone())
            .or_else(|| st.removing.clone());
        self.inner.events.emit(event);
    }

    async fn recover(&self) -> Result<(), RuntimeError> {
        let store_err = |e: crate::error::Error| RuntimeError::Store(e.to_string());
        for (name, json, rollout) in self.store().local_apps().await.map_err(store_err)? {
            match Spec::from_json(&json) {
                Ok(spec) => {
                    let app = self.app(&name);
                    app.lock().target = Some(Target {
                        spec: Arc::new(spec),
                        rollout,
                        failures: BTreeMap::new(),
                        failed: None,
                        settled: false,
                    });
                }
                Err(e) => {
                    tracing::error!(app = %name, "failed to read the stored spec of the app: {e}")
                }
            }
        }
        for record in self.store().local_processes().await.map_err(store_err)? {
            let pid = match record.pid {
                Some(pid) if process::alive(pid) && process::is_ours(pid, &record.id) => Some(pid),
                Some(_) => None,
                None => process::find_by_marker(&record.id),
            };
            let Some(pid) = pid else {
                tracing::info!(process = %record.id, "forgetting a process that is gone");
                let _ = self.store().local_delete_process(&record.id).await;
                let _ = std::fs::remove_file(self.log_path(&record.app, &record.id));
                continue;
            };
            if record.pid.is_none() {
                let _ = self.store().local_set_pid(&record.id, pid).await;
            }
            self.inner
                .isolation
                .adopt(&record.app, &record.release)
                .await;
            let app = self.app(&record.app);
            let proc = Arc::new(Proc::new(
                record.id.clone(),
                record.service.clone(),
                record.release.clone(),
                pid,
                record.port,
                record.started,
                self.log_path(&record.app, &record.id),
            ));
            {
                let mut st = app.lock();
                st.services
                    .entry(record.service.clone())
                    .or_default()
                    .procs
                    .push(proc.clone());
                self.emit(
                    &app,
                    &st,
                    &record.service,
                    format!("Adopted process {} (pid {pid})", record.id),
                );
            }
            // Skip the output it wrote before we went away.
            {
                let mut tail = proc.tail.lock().await;
                tail.pump(false).await;
            }
            self.watch_process(&app, proc, None);
        }
        let apps: Vec<Arc<App>> = self
            .inner
            .apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for app in apps {
            self.ensure_loop(&app);
        }
        Ok(())
    }

    fn log_path(&self, app: &str, id: &str) -> PathBuf {
        self.inner
            .config
            .data_dir
            .join("logs")
            .join(app)
            .join(format!("{id}.log"))
    }

    async fn reconcile_loop(self, app: Arc<App>) {
        let mut changed = app.changed.subscribe();
        loop {
            self.ensure_proxies(&app).await;
            let (actions, wake) = {
                let mut st = app.lock();
                if st.target.is_none() && st.services.values().all(|s| s.procs.is_empty()) {
                    app.looping.store(false, Ordering::Release);
                    return;
                }
                self.plan(&app, &mut st)
            };
            let acted = !actions.is_empty();
            for action in actions {
                match action {
                    Action::Start { service, spec } => {
                        if let Err(reason) = self.start_process(&app, &service, &spec).await {
                            self.fail(&app, &spec.release, &service, reason);
                        }
                    }
                    Action::Stop { proc, grace } => {
                        tokio::spawn(self.clone().stop_process(app.clone(), proc, grace));
                    }
                }
            }
            if acted {
                continue;
            }
            changed.borrow_and_update();
            let _ = tokio::time::timeout(wake, changed.changed()).await;
        }
    }

    /// Decides what to start and stop now; returns the actions and when to
    /// look again at the latest.
    fn plan(&self, app: &App, st: &mut AppState) -> (Vec<Action>, Duration) {
        let mut actions = Vec::new();
        let mut wake = Duration::from_millis(500);
        let now = Instant::now();
        let complete = st.target.as_ref().is_some_and(|t| !t.settled) && completeness(st).0;
        if complete && let Some(target) = st.target.as_mut() {
            target.settled = true;
        }
        let AppState {
            target, services, ..
        } = st;
        let mut names: BTreeSet<String> = services.keys().cloned().collect();
        if let Some(t) = target.as_ref() {
            names.extend(t.spec.manifest.services.keys().cloned());
        }
        for name in names {
            let svc = services.entry(name.clone()).or_default();
            let service = target
                .as_ref()
                .and_then(|t| t.spec.manifest.service(&name).map(|s| (t, s)));
            let desired = service.map_or(0, |(_, s)| s.scale.count);
            let release = target.as_ref().map(|t| t.spec.release.as_str());
            let failed = target.as_ref().is_some_and(|t| t.failed.is_some());
            let live: Vec<Arc<Proc>> = svc
                .procs
                .iter()
                .filter(|p| p.status() != Status::Stopping)
                .cloned()
                .collect();
            let (new, mut old): (Vec<_>, Vec<_>) = live
                .iter()
                .cloned()
                .partition(|p| Some(p.release.as_str()) == release);
            let healthy = |p: &Arc<Proc>| p.status() == Status::Healthy;
            let (minimum, maximum) = service.map_or((100, 200), |(_, s)| {
                (s.deployment.minimum, s.deployment.maximum)
            });
            let min_healthy = (desired * minimum).div_ceil(100);
            let mut max_total = desired + (desired * maximum.saturating_sub(100)).div_ceil(100);
            if max_total == desired && min_healthy >= desired {
                max_total += 1;
            }
            let grace = Duration::from_secs(
                service.map_or(30, |(_, s)| u64::from(s.termination_grace_secs)),
            );

            // Start processes of the desired release.
            if let Some((t, _)) = service {
                let backed_off = svc.next_start.is_some_and(|at| at > now);
                if let Some(at) = svc.next_start.filter(|at| *at > now) {
                    wake = wake.min(at - now);
                }
                if !failed && !backed_off {
                    let mut total = live.len() as u32;
                    let mut count = new.len() as u32;
                    while count < desired && total < max_total {
                        actions.push(Action::Start {
                            service: name.clone(),
                            spec: t.spec.clone(),
                        });
                        count += 1;
                        total += 1;
                    }
                }
            }
            let stop = |p: &Arc<Proc>, actions: &mut Vec<Action>| {
                p.lock().status = Status::Stopping;
                actions.push(Action::Stop {
                    proc: p.clone(),
                    grace,
                });
            };
            // Scale down extra processes of the desired release.
            if new.len() as u32 > desired {
                let mut extra: Vec<_> = new.clone();
                extra.sort_by_key(|p| healthy(p));
                for p in extra.iter().take(new.len() - desired as usize) {
                    stop(p, &mut actions);
                }
            }
            // Stop old processes while enough stay healthy; unhealthy ones
            // always go. While the target is failing, keep the old ones.
            if !failed {
                let mut available = live.iter().filter(|p| healthy(p)).count() as u32;
                old.sort_by_key(|p| healthy(p));
                for p in &old {
                    if !healthy(p) {
                        stop(p, &mut actions);
                    } else if available > min_healthy
                        || (desired == 0 && target.is_some())
                        || target.is_none()
                    {
                        available = available.saturating_sub(1);
                        stop(p, &mut actions);
                    }
                }
            }
            if actions.iter().any(|a| matches!(a, Action::Stop { .. })) {
                svc.refresh();
            }
        }
        let _ = app;
        (actions, wake)
    }

    async fn ensure_proxies(&self, app: &Arc<App>) {
        let wanted: Vec<(String, String)> = {
            let st = app.lock();
            let Some(target) = &st.target else { return };
            target
                .spec
                .manifest
                .services
                .values()
                .filter(|s| s.port.is_some())
                .filter(|s| {
                    st.services
                        .get(&s.name)
                        .is_none_or(|svc| svc.proxy.is_none())
                })
                .map(|s| (s.name.clone(), target.spec.release.clone()))
                .collect()
        };
        for (service, release) in wanted {
            match self.stable_port(&app.name, &service).await {
                Ok(proxy) => {
                    let mut st = app.lock();
                    let port = proxy.port();
                    let svc = st.services.entry(service.clone()).or_default();
                    svc.proxy = Some(proxy);
                    svc.refresh();
                    self.emit(app, &st, &service, format!("Listening on 127.0.0.1:{port}"));
                }
                Err(reason) => self.fail(
                    app,
                    &release,
                    &service,
                    format!("service {service}: {reason}"),
                ),
            }
        }
    }

    /// Binds the service's stable port: the one it had, or a new one.
    async fn stable_port(&self, app: &str, service: &str) -> Result<Proxy, String> {
        let _serial = self.inner.ports.lock().await;
        let store = self.store();
        if let Some(port) = store
            .local_port(app, service)
            .await
            .map_err(|e| e.to_string())?
        {
            return Proxy::bind(port)
                .await
                .map_err(|e| format!("cannot listen on its port 127.0.0.1:{port}: {e}"));
        }
        match self.inner.config.ports {
            None => {
                let proxy = Proxy::bind(0)
                    .await
                    .map_err(|e| format!("cannot listen: {e}"))?;
                if store
                    .local_assign_port(app, service, proxy.port())
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Ok(proxy)
                } else {
                    Err(format!("port {} is assigned twice", proxy.port()))
                }
            }
            Some((lo, hi)) => {
                let used: BTreeSet<u16> = store
                    .local_ports()
                    .await
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .collect();
                for port in (lo..=hi).filter(|p| !used.contains(p)) {
                    if let Ok(proxy) = Proxy::bind(port).await
                        && store
                            .local_assign_port(app, service, port)
                            .await
                            .map_err(|e| e.to_string())?
                    {
                        return Ok(proxy);
                    }
                }
                Err(format!("no free port left in {lo}-{hi}"))
            }
        }
    }

    /// Records that `service` of `release` cannot run; fails the target if
    /// it is that release and still rolling out.
    fn fail(&self, app: &App, release: &str, service: &str, reason: String) {
        let mut st = app.lock();
        let svc = st.services.entry(service.to_owned()).or_default();
        svc.restarts += 1;
        svc.next_start = Some(Instant::now() + backoff(svc.restarts));
        let failing = st
            .target
            .as_ref()
            .is_some_and(|t| t.spec.release == release && !t.settled && t.failed.is_none());
        if failing {
            self.emit(
                app,
                &st,
                service,
                format!("Rollout of {release} failed: {reason}"),
            );
            if let Some(t) = st.target.as_mut() {
                t.failed = Some(reason);
            }
        } else {
            tracing::warn!(app = %app.name, service, "{reason}");
        }
        drop(st);
        app.poke();
    }

    async fn start_process(
        &self,
        app: &Arc<App>,
        service: &str,
        spec: &Arc<Spec>,
    ) -> Result<(), String> {
        let manifest_service = spec
            .manifest
            .service(service)
            .ok_or_else(|| format!("service {service}: not in the manifest"))?;
        let command = manifest_service.command.as_deref().ok_or_else(|| {
            format!("service {service}: no command to run (the local runtime runs the manifest's command)")
        })?;
        let dir = spec
            .artifacts
            .get(service)
            .and_then(|a| process::artifact_dir(a))
            .ok_or_else(|| match spec.artifacts.get(service) {
                Some(a) => format!("service {service}: artifact {a} is not a directory"),
                None => format!("service {service}: the release has no artifact for the service"),
            })?;
        let id = format!("{service}-{:08x}", rand::random::<u32>());
        let port =
            process::free_port().map_err(|e| format!("service {service}: no free port: {e}"))?;
        let log = self.log_path(&app.name, &id);
        let started = Utc::now();
        let record = ProcessRecord {
            id: id.clone(),
            app: app.name.clone(),
            service: service.to_owned(),
            release: spec.release.clone(),
            pid: None,
            port,
            started,
        };
        // Recorded before it exists, so a crash right after spawning cannot
        // leave an unknown process behind (re-adoption finds it by marker).
        self.store()
            .local_insert_process(&record)
            .await
            .map_err(|e| format!("service {service}: {e}"))?;
        let launch = match self
            .inner
            .isolation
            .prepare(&app.name, &spec.release, &dir)
            .await
        {
            Ok(launch) => launch,
            Err(e) => {
                let _ = self.store().local_delete_process(&id).await;
                return Err(format!("service {service}: {e}"));
            }
        };
        let spawned = (|| {
            if let Some(parent) = log.parent() {
                slipway_storage::files::create_private_dir_all(parent)?;
            }
            let out = slipway_storage::files::private_file_options()
                .create(true)
                .append(true)
                .open(&log)?;
            let err = out.try_clone()?;
            let mut cmd = tokio::process::Command::new("/bin/sh");
            cmd.arg("-c").arg(command).env_clear();
            for key in INHERITED_ENV {
                if let Some(value) = std::env::var_os(key) {
                    cmd.env(key, value);
                }
            }
            cmd.envs(spec.manifest.env_for(service, &spec.env).iter())
                .env("PORT", port.to_string())
                .env("SLIPWAY_APP", &app.name)
                .env("SLIPWAY_SERVICE", service)
                .env("SLIPWAY_RELEASE", &spec.release)
                .env(process::MARKER, &id)
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .kill_on_drop(false);
            launch.apply(&mut cmd);
            cmd.spawn()
        })();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                self.inner.isolation.release(&app.name, &spec.release).await;
                let _ = self.store().local_delete_process(&id).await;
                return Err(format!(
                    "service {service}: could not start `{command}`: {e}"
                ));
            }
        };
        let pid = child.id().unwrap_or_default();
        if let Err(e) = self.store().local_set_pid(&id, pid).await {
            tracing::error!(process = %id, "failed to record the pid of a process: {e}");
        }
        let proc = Arc::new(Proc::new(
            id.clone(),
            service.to_owned(),
            spec.release.clone(),
            pid,
            port,
            started,
            log,
        ));
        {
            let mut st = app.lock();
            st.services
                .entry(service.to_owned())
                .or_default()
                .procs
                .push(proc.clone());
            self.emit(
                app,
                &st,
                service,
                format!("Started process {id} (pid {pid}) of {}", spec.release),
            );
        }
        self.watch_process(app, proc, Some(child));
        app.poke();
        Ok(())
    }

    /// Spawns the exit watcher, health loop and log pump of a process.
    fn watch_process(&self, app: &Arc<App>, proc: Arc<Proc>, child: Option<tokio::process::Child>) {
        let (health, has_port) = {
            let st = app.lock();
            let service = st
                .target
                .as_ref()
                .and_then(|t| t.spec.manifest.service(&proc.service).cloned());
            (
                service
                    .as_ref()
                    .map(|s| s.health.clone())
                    .unwrap_or_default(),
                service.is_some_and(|s| s.port.is_some()),
            )
        };
        tokio::spawn({
            let (runtime, app, proc) = (self.clone(), app.clone(), proc.clone());
            async move {
                let how = match child {
                    Some(mut child) => match child.wait().await {
                        Ok(status) => process::describe_exit(status),
                        Err(e) => format!("could not be waited for ({e})"),
                    },
                    None => {
                        process::wait_adopted(proc.pid).await;
                        "exited".to_owned()
                    }
                };
                proc.gone.cancel();
                // Whatever it left running in its group goes with it.
                proc.signal(Signal::SIGKILL);
                runtime.on_exit(&app, &proc, how).await;
            }
        });
        tokio::spawn(
            self.clone()
                .health_loop(app.clone(), proc.clone(), health, has_port),
        );
        tokio::spawn({
            let (events, app_name, proc) = (self.inner.events.clone(), app.name.clone(), proc);
            async move {
                loop {
                    let lines = proc.tail.lock().await.pump(false).await;
                    for line in lines {
                        events.emit(NewEvent::now(
                            &app_name,
                            format!("service/{}/{}", proc.service, proc.id),
                            line,
                        ));
                    }
                    tokio::select! {
                        () = proc.gone.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        });
    }

    async fn on_exit(&self, app: &Arc<App>, proc: &Arc<Proc>, how: String) {
        let (lines, last) = {
            let mut tail = proc.tail.lock().await;
            (tail.pump(true).await, tail.last_output())
        };
        for line in lines {
            self.inner.events.emit(NewEvent::now(
                &app.name,
                format!("service/{}/{}", proc.service, proc.id),
                line,
            ));
        }
        let _ = self.store().local_delete_process(&proc.id).await;
        let _ = tokio::fs::remove_file(self.log_path(&app.name, &proc.id)).await;
        self.inner.isolation.release(&app.name, &proc.release).await;
        let (stopping, ever_healthy) = {
            let s = proc.lock();
            (s.status == Status::Stopping, s.ever_healthy)
        };
        {
            let mut st = app.lock();
            if let Some(svc) = st.services.get_mut(&proc.service) {
                svc.procs.retain(|p| p.id != proc.id);
                svc.refresh();
            }
            if stopping {
                self.emit(
                    app,
                    &st,
                    &proc.service,
                    format!("Stopped process {}", proc.id),
                );
            } else {
                self.emit(
                    app,
                    &st,
                    &proc.service,
                    format!("Process {} {how} (last output: {last})", proc.id),
                );
            }
        }
        if !stopping {
            let during = if ever_healthy { "" } else { " during start" };
            let reason = format!(
                "service {}: process {how}{during} (last output: {last})",
                proc.service
            );
            let limit = self.inner.config.restart_limit.max(1);
            let mut st = app.lock();
            let counts = st
                .target
                .as_mut()
                .filter(|t| t.spec.release == proc.release && !t.settled && t.failed.is_none())
                .map(|t| {
                    let n = t.failures.entry(proc.service.clone()).or_default();
                    *n += 1;
                    *n
                });
            drop(st);
            match counts {
                Some(n) if n >= limit => self.fail(app, &proc.release, &proc.service, reason),
                _ => {
                    let mut st = app.lock();
                    if let Some(svc) = st.services.get_mut(&proc.service) {
                        svc.restarts += 1;
                        svc.next_start = Some(Instant::now() + backoff(svc.restarts));
                    }
                }
            }
        }
        app.poke();
    }

    async fn health_loop(self, app: Arc<App>, proc: Arc<Proc>, health: Health, has_port: bool) {
        let grace_end = proc.started_at + Duration::from_secs(u64::from(health.grace_secs));
        if health.disabled || !has_port {
            if !health.disabled {
                tokio::select! {
                    () = tokio::time::sleep_until(grace_end.into()) => {}
                    () = proc.gone.cancelled() => return,
                }
            }
            self.set_health(&app, &proc, Ok(()));
            return;
        }
        let interval = Duration::from_secs(u64::from(health.interval_secs.max(1)));
        let timeout = Duration::from_secs(u64::from(health.timeout_secs.max(1)));
        let mut failures = 0;
        let mut last_counted: Option<Instant> = None;
        loop {
            if proc.gone.is_cancelled() || proc.status() == Status::Stopping {
                return;
            }
            let result = health::probe(proc.port, &health.path, timeout).await;
            let now = Instant::now();
            match result {
                Ok(()) => {
                    failures = 0;
                    self.set_health(&app, &proc, Ok(()));
                }
                Err(e) => {
                    let due = last_counted.is_none_or(|t| {
                        now.duration_since(t) + Duration::from_millis(50) >= interval
                    });
                    if now >= grace_end && due {
                        failures += 1;
                        last_counted = Some(now);
                        if failures >= HEALTH_FAILURES {
                            let check = format!(
                                "health check GET {} failed {failures} times ({e})",
                                health.path
                            );
                            self.set_health(&app, &proc, Err(check));
                        }
                    }
                }
            }
            let pause = if proc.lock().ever_healthy {
                interval
            } else {
                FIRST_HEALTH_POLL
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = proc.gone.cancelled() => return,
            }
        }
    }

    fn set_health(&self, app: &Arc<App>, proc: &Arc<Proc>, result: Result<(), String>) {
        let mut st = app.lock();
        let changed = {
            let mut s = proc.lock();
            match (&result, s.status) {
                (_, Status::Stopping) => false,
                (Ok(()), Status::Healthy) | (Err(_), Status::Unhealthy) => false,
                (Ok(()), _) => {
                    s.status = Status::Healthy;
                    s.ever_healthy = true;
                    true
                }
                (Err(_), _) => {
                    s.status = Status::Unhealthy;
                    true
                }
            }
        };
        if !changed {
            return;
        }
        if let Some(svc) = st.services.get_mut(&proc.service) {
            if result.is_ok() {
                svc.restarts = 0;
            }
            svc.refresh();
        }
        match result {
            Ok(()) => self.emit(
                app,
                &st,
                &proc.service,
                format!("Process {} is healthy", proc.id),
            ),
            Err(check) => {
                self.emit(
                    app,
                    &st,
                    &proc.service,
                    format!("Process {} is unhealthy: {check}", proc.id),
                );
                let failing = st.target.as_ref().is_some_and(|t| {
                    t.spec.release == proc.release && !t.settled && t.failed.is_none()
                });
                if failing {
                    drop(st);
                    let last = proc
                        .tail
                        .try_lock()
                        .map(|t| t.last_output())
                        .unwrap_or_default();
                    let mut reason = format!("service {}: {check}", proc.service);
                    if !last.is_empty() && last != "(none)" {
                        reason.push_str(&format!("; last output: {last}"));
                    }
                    self.fail(app, &proc.release, &proc.service, reason);
                    return;
                }
            }
        }
        drop(st);
        app.poke();
    }

    /// Takes a process out of rotation, lets its connections finish, then
    /// SIGTERM, and SIGKILL after the termination grace.
    async fn stop_process(self, app: Arc<App>, proc: Arc<Proc>, grace: Duration) {
        {
            let st = app.lock();
            self.emit(
                &app,
                &st,
                &proc.service,
                format!("Stopping process {}", proc.id),
            );
        }
        let drained = async {
            while proc.connections() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let _ = tokio::time::timeout(grace, drained).await;
        proc.signal(Signal::SIGTERM);
        if tokio::time::timeout(grace, proc.gone.cancelled())
            .await
            .is_err()
        {
            {
                let st = app.lock();
                self.emit(
                    &app,
                    &st,
                    &proc.service,
                    format!("Killing process {} after {}s", proc.id, grace.as_secs()),
                );
            }
            proc.signal(Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(10), proc.gone.cancelled()).await;
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
        let (complete, services) = completeness(&st);
        if complete {
            if let Some(t) = st.target.as_mut() {
                t.settled = true;
            }
            return Ok(Progress::Complete);
        }
        Ok(Progress::Progressing { services })
    }
}

/// Whether the target runs everywhere, healthy, with nothing else left;
/// and the healthy count per target service.
fn completeness(st: &AppState) -> (bool, Vec<ServiceProgress>) {
    let Some(target) = &st.target else {
        return (false, Vec::new());
    };
    let mut complete = true;
    let mut progress = Vec::new();
    for (name, service) in &target.spec.manifest.services {
        let procs = st
            .services
            .get(name)
            .map(|s| s.procs.as_slice())
            .unwrap_or_default();
        let healthy = procs
            .iter()
            .filter(|p| p.release == target.spec.release && p.status() == Status::Healthy)
            .count() as u32;
        let desired = service.scale.count;
        if healthy != desired || procs.len() as u32 != desired {
            complete = false;
        }
        if service.port.is_some()
            && desired > 0
            && st.services.get(name).is_none_or(|s| s.proxy.is_none())
        {
            complete = false;
        }
        progress.push(ServiceProgress {
            service: name.clone(),
            healthy,
            desired,
        });
    }
    for (name, svc) in &st.services {
        if !target.spec.manifest.services.contains_key(name) && !svc.procs.is_empty() {
            complete = false;
        }
    }
    (complete, progress)
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
        self.store()
            .local_set_app(&spec.app, &spec.to_json(), rollout)
            .await
            .map_err(|e| RuntimeError::Store(e.to_string()))?;
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
                st.target = Some(Target {
                    spec: spec.clone(),
                    rollout: rollout.to_owned(),
                    failures: BTreeMap::new(),
                    failed: None,
                    settled: false,
                });
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
        self.store()
            .local_remove_app(app_name)
            .await
            .map_err(|e| RuntimeError::Store(e.to_string()))?;
        let mut st = app.lock();
        if st.target.is_none() {
            st.services.clear();
            st.removing = None;
        }
        Ok(())
    }

    async fn processes(&self, app: &str) -> Result<Vec<ProcessInfo>, RuntimeError> {
        let Ok(app) = self.existing(app) else {
            return Ok(Vec::new());
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
            })
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
}
