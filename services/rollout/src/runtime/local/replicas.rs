//! The processes of an app's services, as the reconcile loop runs them:
//! starting one from the desired spec, reacting to its exit and health
//! changes (restart backoff, failing a rollout whose processes cannot
//! become healthy), and stopping it. The process-level work is
//! [`supervise`](super::supervise)'s; this adds the app's bookkeeping.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use slipway_events::NewEvent;
use tokio::time::Instant;

use super::LocalRuntime;
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

    /// Starts one process of `service` from `spec` and supervises it.
    pub(super) async fn start_process(
        &self,
        app: &Arc<App>,
        service: &str,
        spec: &Arc<Spec>,
    ) -> Result<(), LocalError> {
        let manifest_service = spec
            .manifest
            .service(service)
            .ok_or(LocalError::NotInManifest)?;
        let command = manifest_service
            .command
            .as_deref()
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
        self.records().insert_process(&record).await?;
        let launch = match self
            .inner
            .isolation
            .prepare(&app.name, &spec.release, &dir)
            .await
        {
            Ok(launch) => launch,
            Err(e) => {
                let _ = self.records().delete_process(&id).await;
                return Err(e.into());
            }
        };
        let spawned = supervise::spawn(&Spawn {
            id: &id,
            app: &app.name,
            service,
            release: &spec.release,
            command,
            env: &spec.manifest.env_for(service, &spec.env),
            port,
            log: &log,
            launch: &launch,
            memory_mib: spec.resources(service).1,
        });
        let child = match spawned {
            Ok(child) => child,
            Err(source) => {
                self.inner.isolation.release(&app.name, &spec.release).await;
                let _ = self.records().delete_process(&id).await;
                return Err(LocalError::Spawn {
                    command: command.to_owned(),
                    source,
                });
            }
        };
        let pid = child.id().unwrap_or_default();
        if let Err(e) = self.records().set_pid(&id, pid).await {
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

/// The event source of a process's output: `service/<service>/<process>`.
fn output_source(proc: &Proc) -> String {
    format!("service/{}/{}", proc.service, proc.id)
}
