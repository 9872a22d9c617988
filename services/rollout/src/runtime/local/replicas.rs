//! The processes of an app's services, as the reconcile loop runs them:
//! starting one from the desired spec, reacting to its exit and health
//! changes (restart backoff, failing a rollout whose processes cannot
//! become healthy), and stopping it. The process-level work is
//! [`supervise`](super::supervise)'s; this adds the app's bookkeeping.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use slipway_events::NewEvent;
use tokio::time::Instant;

use super::LocalRuntime;
use super::cgroup;
use super::error::LocalError;
use super::process::{self, Proc, Status};
use super::records::ProcessRecord;
use super::state::App;
use super::supervise::{self, HealthReport, Spawn};
use crate::runtime::Spec;

impl LocalRuntime {
    /// Records that `service` of `release` cannot run; fails the target if
    /// it is that release and still rolling out.
    pub(super) fn fail(&self, app: &App, release: &str, service: &str, reason: String) {
        let mut st = app.lock();
        st.services
            .entry(service.to_owned())
            .or_default()
            .back_off(Instant::now());
        if st.rolling_out(release) {
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

    /// Starts the planned processes of `app` (a width of them at once) and
    /// supervises them, in two writes however wide: every process is
    /// recorded (one transaction) before any is spawned, so a crash cannot
    /// leave an unknown process behind (re-adoption finds a recorded one
    /// without a pid by its marker, and forgets one that never ran); then
    /// they are spawned, the first making the release's working copy that
    /// the others find; then their pids are recorded (one transaction). A
    /// start that fails fails its target.
    pub(super) async fn start_processes(&self, app: &Arc<App>, starts: Vec<(String, Arc<Spec>)>) {
        let began = std::time::Instant::now();
        let width = starts.len();
        let mut planned = Vec::with_capacity(starts.len());
        for (service, spec) in starts {
            match self.plan_start(app, &service, spec.clone()) {
                Ok(p) => planned.push(p),
                Err(e) => self.fail(
                    app,
                    &spec.release,
                    &service,
                    format!("service {service}: {e}"),
                ),
            }
        }
        if planned.is_empty() {
            return;
        }
        let records: Vec<ProcessRecord> = planned.iter().map(|p| p.record.clone()).collect();
        if let Err(e) = self.records().insert_processes(&records).await {
            let e = LocalError::from(e);
            for p in &planned {
                let reason = format!("service {}: {e}", p.record.service);
                self.fail(app, &p.spec.release, &p.record.service, reason);
            }
            return;
        }
        let recorded = began.elapsed();
        let mut pids = Vec::with_capacity(planned.len());
        let mut unspawned = Vec::new();
        for p in planned {
            let (id, service, release) = (
                p.record.id.clone(),
                p.record.service.clone(),
                p.spec.release.clone(),
            );
            match self.spawn_planned(app, p).await {
                Ok(pid) => pids.push((id, pid)),
                Err(e) => {
                    unspawned.push(id);
                    self.fail(app, &release, &service, format!("service {service}: {e}"));
                }
            }
        }
        let spawned = began.elapsed();
        if let Err(e) = self.records().delete_processes(&unspawned).await {
            tracing::warn!(app = %app.name, "failed to forget processes that did not start (re-adoption will): {e}");
        }
        // Until this lands a crash leaves them without a pid; re-adoption
        // then finds them by their marker.
        if let Err(e) = self.records().set_pids(&pids).await {
            tracing::error!(app = %app.name, "failed to record the pids of started processes: {e}");
        }
        tracing::debug!(
            app = %app.name,
            width,
            ?recorded,
            ?spawned,
            done = ?began.elapsed(),
            "started a width of processes"
        );
    }

    /// What one start of `service` will be: its record (id, port), command,
    /// artifact directory and log.
    fn plan_start(
        &self,
        app: &App,
        service: &str,
        spec: Arc<Spec>,
    ) -> Result<PlannedStart, LocalError> {
        let manifest_service = spec
            .manifest
            .service(service)
            .ok_or(LocalError::NotInManifest)?;
        let command = manifest_service
            .command
            .clone()
            .ok_or(LocalError::NoCommand)?;
        let dir = spec
            .artifacts
            .get(service)
            .and_then(|a| process::artifact_dir(a))
            .ok_or_else(|| match spec.artifacts.get(service) {
                Some(a) => LocalError::ArtifactNotADirectory(a.clone()),
                None => LocalError::NoArtifact,
            })?;
        let id = format!("{service}-{:08x}", rand::random::<u32>());
        let port = process::free_port().map_err(LocalError::NoFreePort)?;
        let log = self.log_path(&app.name, &id);
        let record = ProcessRecord {
            id,
            app: app.name.clone(),
            service: service.to_owned(),
            release: spec.release.clone(),
            pid: None,
            port,
            started: Utc::now(),
        };
        Ok(PlannedStart {
            record,
            spec,
            command,
            dir,
            log,
        })
    }

    /// Spawns a recorded start and supervises it; its pid.
    async fn spawn_planned(&self, app: &Arc<App>, p: PlannedStart) -> Result<u32, LocalError> {
        let PlannedStart {
            record,
            spec,
            command,
            dir,
            log,
        } = p;
        let (id, service) = (&record.id, record.service.as_str());
        let launch = self
            .inner
            .isolation
            .prepare(&app.name, &spec.release, &dir)
            .await?;
        let (millicores, memory_mib) = spec.resources(service);
        // cpu is held where cgroup v2 allows (`scale` says when not).
        let cpu_cgroups = cgroup::detected().ok().filter(|_| millicores > 0);
        let spawned = supervise::spawn(&Spawn {
            id,
            app: &app.name,
            service,
            release: &spec.release,
            command: &command,
            env: &spec.manifest.env_for(service, &spec.env),
            port: record.port,
            log: &log,
            launch: &launch,
            memory_mib,
            cpu_cgroup: cpu_cgroups.is_some(),
        });
        let mut child = match spawned {
            Ok(child) => child,
            Err(source) => {
                self.inner.isolation.release(&app.name, &spec.release).await;
                return Err(LocalError::Spawn { command, source });
            }
        };
        let pid = child.id().unwrap_or_default();
        if let Some(cgroups) = cpu_cgroups
            && let Err(source) = cgroups.limit(&app.name, id, pid, millicores)
        {
            // Its shell would give up on its own; do not wait for that.
            let _ = child.kill().await;
            cgroups.forget(&app.name, id);
            self.inner.isolation.release(&app.name, &spec.release).await;
            return Err(LocalError::CpuLimit(source));
        }
        let proc = Arc::new(Proc::new(
            id.clone(),
            service.to_owned(),
            spec.release.clone(),
            pid,
            record.port,
            record.started,
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
        Ok(pid)
    }

    /// Spawns the exit watcher, health watch and output forwarding of a
    /// process of `app` (started now, or re-adopted with no `child`).
    pub(super) fn watch_process(
        &self,
        app: &Arc<App>,
        proc: Arc<Proc>,
        child: Option<tokio::process::Child>,
    ) {
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
                let how = supervise::wait_exit(&proc, child).await;
                runtime.on_exit(&app, &proc, how).await;
            }
        });
        tokio::spawn({
            let (runtime, app, proc) = (self.clone(), app.clone(), proc.clone());
            async move {
                supervise::watch_health(&proc, health, has_port, |report| {
                    runtime.set_health(&app, &proc, report);
                })
                .await;
            }
        });
        tokio::spawn({
            let (events, app_name) = (self.inner.events.clone(), app.name.clone());
            async move {
                let source = output_source(&proc);
                supervise::forward_output(&proc, |line| {
                    events.emit(NewEvent::now(&app_name, source.clone(), line));
                })
                .await;
            }
        });
    }

    async fn on_exit(&self, app: &Arc<App>, proc: &Arc<Proc>, how: String) {
        let (lines, last) = {
            let mut tail = proc.tail.lock().await;
            (tail.pump(true).await, tail.last_output())
        };
        for line in lines {
            self.inner
                .events
                .emit(NewEvent::now(&app.name, output_source(proc), line));
        }
        let _ = self.records().delete_process(&proc.id).await;
        let _ = tokio::fs::remove_file(self.log_path(&app.name, &proc.id)).await;
        if let Ok(cgroups) = cgroup::detected() {
            cgroups.forget(&app.name, &proc.id);
        }
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
                .filter(|t| t.rolling_out(&proc.release))
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
                        svc.back_off(Instant::now());
                    }
                }
            }
        }
        app.poke();
    }

    fn set_health(&self, app: &Arc<App>, proc: &Arc<Proc>, report: HealthReport) {
        let mut st = app.lock();
        let changed = {
            let mut s = proc.lock();
            match (&report, s.status) {
                (_, Status::Stopping) => false,
                (HealthReport::Passing, Status::Healthy)
                | (HealthReport::Failing(_), Status::Unhealthy) => false,
                (HealthReport::Passing, _) => {
                    s.status = Status::Healthy;
                    s.ever_healthy = true;
                    true
                }
                (HealthReport::Failing(_), _) => {
                    s.status = Status::Unhealthy;
                    true
                }
            }
        };
        if !changed {
            return;
        }
        if let Some(svc) = st.services.get_mut(&proc.service) {
            if matches!(report, HealthReport::Passing) {
                svc.restarts = 0;
            }
            svc.refresh();
        }
        match report {
            HealthReport::Passing => self.emit(
                app,
                &st,
                &proc.service,
                format!("Process {} is healthy", proc.id),
            ),
            HealthReport::Failing(check) => {
                self.emit(
                    app,
                    &st,
                    &proc.service,
                    format!("Process {} is unhealthy: {check}", proc.id),
                );
                if st.rolling_out(&proc.release) {
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

    /// Takes a process out of rotation (the planner marked it stopping),
    /// lets its connections finish, then SIGTERM, and SIGKILL after the
    /// termination grace.
    pub(super) async fn stop_process(self, app: Arc<App>, proc: Arc<Proc>, grace: Duration) {
        {
            let st = app.lock();
            self.emit(
                &app,
                &st,
                &proc.service,
                format!("Stopping process {}", proc.id),
            );
        }
        supervise::terminate(&proc, grace, || {
            let st = app.lock();
            self.emit(
                &app,
                &st,
                &proc.service,
                format!("Killing process {} after {}s", proc.id, grace.as_secs()),
            );
        })
        .await;
    }
}

/// A start of a width, decided before it is recorded.
struct PlannedStart {
    /// What is recorded before it is spawned (no pid yet).
    record: ProcessRecord,
    spec: Arc<Spec>,
    command: String,
    /// The artifact directory its working copy is made from.
    dir: PathBuf,
    log: PathBuf,
}

/// The event source of a process's output: `service/<service>/<process>`.
fn output_source(proc: &Proc) -> String {
    format!("service/{}/{}", proc.service, proc.id)
}
