//! Re-adoption after a restart of the rollout service: the desired spec of
//! every app and every recorded process are read back; live processes (the
//! recorded pid, or one found by its marker when the service died between
//! recording and spawning) are supervised again, dead ones forgotten, and
//! each app's reconcile loop resumes from there.

use std::sync::Arc;

use super::LocalRuntime;
use super::error::LocalError;
use super::process::{self, Proc};
use super::state::{App, Target};
use crate::runtime::Spec;

impl LocalRuntime {
    /// Re-adopts what a previous run left (see the module docs).
    pub(super) async fn recover(&self) -> Result<(), LocalError> {
        for (name, json, rollout) in self.records().apps().await? {
            match Spec::from_json(&json) {
                Ok(spec) => {
                    let app = self.app(&name);
                    app.lock().target = Some(Target::new(Arc::new(spec), rollout));
                }
                Err(e) => {
                    tracing::error!(app = %name, "failed to read the stored spec of the app: {e}")
                }
            }
        }
        for record in self.records().processes().await? {
            let pid = match record.pid {
                Some(pid) if process::alive(pid) && process::is_ours(pid, &record.id) => Some(pid),
                Some(_) => None,
                None => process::find_by_marker(&record.id),
            };
            let Some(pid) = pid else {
                tracing::info!(process = %record.id, "forgetting a process that is gone");
                let _ = self.records().delete_process(&record.id).await;
                let _ = std::fs::remove_file(self.log_path(&record.app, &record.id));
                continue;
            };
            if record.pid.is_none() {
                let _ = self.records().set_pid(&record.id, pid).await;
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
            self.adopt(&app, proc, pid).await;
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

    /// Supervises a live process a previous run started.
    async fn adopt(&self, app: &Arc<App>, proc: Arc<Proc>, pid: u32) {
        {
            let mut st = app.lock();
            st.services
                .entry(proc.service.clone())
                .or_default()
                .procs
                .push(proc.clone());
            self.emit(
                app,
                &st,
                &proc.service,
                format!("Adopted process {} (pid {pid})", proc.id),
            );
        }
        // Skip the output it wrote before we went away.
        {
            let mut tail = proc.tail.lock().await;
            tail.pump(false).await;
        }
        self.watch_process(app, proc, None);
    }
}
