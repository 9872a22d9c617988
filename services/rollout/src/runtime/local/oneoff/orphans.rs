//! One-offs a previous run of the runtime left behind (the rollout service
//! restarted while they ran).
//!
//! Every one-off and exec session carries a marker, `SLIPWAY_ONEOFF=<stop
//! by> <apps dir>`: the unix time it must be stopped by (0 for attached
//! ones and exec sessions, whose sessions went through the old run) and the
//! apps directory (so that two racks on one machine leave each other's
//! processes alone). At start, [`LocalRuntime::reap_orphans`] kills those
//! past their time at once. A detached one-off still within its timeout is
//! taken back: its record (`<id>.oneoff.json` beside its log: what `ps`
//! shows, never its env) makes it listed again, its log is followed from
//! where it is, `ps stop` and the timeout stop it, and when it ends its
//! exit status is read from the exit file its shell writes (see
//! `DETACHED_SHELL`). Attached one-offs have a record too, and are never
//! taken back. One whose record is left but that was not taken back (it
//! ended while the service was down, was just stopped past its timeout, or
//! was attached to a session of the previous run) has its end reported to
//! the runtime's one-off ends sink, with the status from its exit file if
//! there is one (else failed, status unknown), and its files go.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::{Context, ORPHAN_MARKER, OneOff, OneOffState};
use crate::runtime::local::LocalRuntime;
use crate::runtime::local::process::{self, Proc};
use crate::runtime::{OneOffInfo, OneOffStatus};

/// What a one-off's record holds.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    id: String,
    app: String,
    service: String,
    release: String,
    command: String,
    started: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
    /// SIGTERM to SIGKILL, in seconds.
    grace_secs: u64,
}

/// The record beside a one-off's log.
fn record_path(log: &Path) -> PathBuf {
    log.with_extension("oneoff.json")
}

/// The file a detached one-off's shell writes its exit status to.
pub(super) fn exit_path(log: &Path) -> PathBuf {
    log.with_extension("exit")
}

/// Writes the record of a one-off about to start (private, like its log).
pub(super) fn write_record(log: &Path, info: &OneOffInfo, grace: Duration) -> std::io::Result<()> {
    use std::io::Write as _;
    let record = Record {
        id: info.id.clone(),
        app: info.app.clone(),
        service: info.service.clone(),
        release: info.release.clone(),
        command: info.command.clone(),
        started: info.started,
        deadline: info.deadline,
        grace_secs: grace.as_secs(),
    };
    if let Some(parent) = log.parent() {
        slipway_storage::files::create_private_dir_all(parent)?;
    }
    let json = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
    let mut file = slipway_storage::files::private_file_options()
        .create(true)
        .truncate(true)
        .write(true)
        .open(record_path(log))?;
    file.write_all(&json)
}

/// Removes a one-off's log, record and exit file.
pub(super) async fn remove_files(log: &Path) {
    for path in [log.to_owned(), record_path(log), exit_path(log)] {
        let _ = tokio::fs::remove_file(path).await;
    }
}

/// The status a detached one-off's shell wrote, once it has ended.
fn read_exit(log: &Path) -> Option<i32> {
    std::fs::read_to_string(exit_path(log))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A marked process found in `/proc`.
struct Found {
    pid: u32,
    stop_by: i64,
    /// Its `SLIPWAY_PROCESS_ID` and `SLIPWAY_APP` (a one-off's, not an exec
    /// session's).
    id: Option<(String, String)>,
}

/// The marker and identity of `pid`, if it is one of this rack's one-offs
/// or exec sessions and the leader of its process group.
fn inspect(pid: u32, suffix: &str) -> Option<Found> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let vars: Vec<&str> = environ
        .split(|b| *b == 0)
        .filter_map(|var| std::str::from_utf8(var).ok())
        .collect();
    let value = |name: &str| {
        let prefix = format!("{name}=");
        vars.iter().find_map(|var| var.strip_prefix(&prefix))
    };
    let stop_by = value(ORPHAN_MARKER)?
        .strip_suffix(suffix)?
        .parse::<i64>()
        .ok()?;
    // Only the leader of its group: the rest go with it.
    let leader = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32)))
        .is_ok_and(|g| g.as_raw() as u32 == pid);
    if !leader || !process::alive(pid) {
        return None;
    }
    let id = value(process::MARKER)
        .zip(value("SLIPWAY_APP"))
        .map(|(id, app)| (id.to_owned(), app.to_owned()));
    Some(Found { pid, stop_by, id })
}

impl LocalRuntime {
    /// The orphan marker of a command to stop by `stop_by` (unix seconds;
    /// 0: as soon as a restarted runtime finds it).
    pub(super) fn orphan_marker(&self, stop_by: i64) -> String {
        format!("{stop_by} {}", self.inner.config.apps_dir.display())
    }

    /// Stops what a previous run left of one-offs and takes back detached
    /// ones within their timeout (see the module docs). Call once, at
    /// start, before the working copies are swept.
    pub(in crate::runtime::local) async fn reap_orphans(&self) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        let suffix = format!(" {}", self.inner.config.apps_dir.display());
        let now = Utc::now().timestamp();
        let found: Vec<Found> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| inspect(pid, &suffix))
            .collect();
        for found in found {
            let kill = || {
                let pgid = nix::unistd::Pid::from_raw(found.pid as i32);
                let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
            };
            if found.stop_by <= now {
                tracing::info!(
                    pid = found.pid,
                    "stopping a one-off process a previous run left"
                );
                kill();
                continue;
            }
            let record = found.id.as_ref().and_then(|(id, app)| {
                let log = self.log_path(app, id);
                let json = std::fs::read(record_path(&log)).ok()?;
                let record: Record = serde_json::from_slice(&json).ok()?;
                (record.id == *id && record.app == *app).then_some((record, log))
            });
            let Some((record, log)) = record else {
                tracing::warn!(
                    pid = found.pid,
                    "stopping a detached one-off process a previous run left without its record"
                );
                kill();
                continue;
            };
            self.take_back(found.pid, record, log).await;
        }
        self.report_ended_while_away().await;
    }

    /// Reports the end of every one-off whose record is left but which was
    /// not taken back: it ended while the service was down (a detached
    /// one's status is in its exit file), was just stopped past its timeout,
    /// or was attached to a session of the previous run (failed, status
    /// unknown). Its files then go.
    async fn report_ended_while_away(&self) {
        let logs = self.inner.config.data_dir.join("logs");
        let Ok(apps) = std::fs::read_dir(&logs) else {
            return;
        };
        let mut records = Vec::new();
        for app in apps.filter_map(Result::ok) {
            let Ok(files) = std::fs::read_dir(app.path()) else {
                continue;
            };
            for file in files.filter_map(Result::ok) {
                let path = file.path();
                if path.to_string_lossy().ends_with(".oneoff.json") {
                    records.push(path);
                }
            }
        }
        for path in records {
            let Some(record) = std::fs::read(&path)
                .ok()
                .and_then(|json| serde_json::from_slice::<Record>(&json).ok())
            else {
                continue;
            };
            if self.inner.oneoffs.get(&record.app, &record.id).is_some() {
                continue;
            }
            let log = self.log_path(&record.app, &record.id);
            if record_path(&log) != path {
                continue;
            }
            let code = read_exit(&log);
            let ended_at = std::fs::metadata(exit_path(&log))
                .and_then(|m| m.modified())
                .map_or_else(|_| Utc::now(), DateTime::<Utc>::from);
            let info = OneOffInfo {
                id: record.id,
                app: record.app,
                service: record.service,
                release: record.release,
                command: record.command,
                status: match code {
                    Some(0) => OneOffStatus::Complete,
                    _ => OneOffStatus::Failed,
                },
                started: record.started,
                deadline: None,
                exit_code: code,
            };
            tracing::info!(process = %info.id, status = info.status.as_str(), "a one-off process ended while the service was down, or with its session");
            self.inner.oneoff_ends.ended(&info, ended_at).await;
            remove_files(&log).await;
        }
    }

    /// Lists, follows and supervises again a detached one-off a previous
    /// run started.
    async fn take_back(&self, pid: u32, record: Record, log: PathBuf) {
        tracing::info!(pid, process = %record.id, "taking back a detached one-off process");
        self.inner
            .isolation
            .adopt(&record.app, &record.release)
            .await;
        let timeout = record.deadline.map_or(Duration::ZERO, |d| {
            (d - Utc::now()).to_std().unwrap_or_default()
        });
        let ctx = Arc::new(Context {
            app: record.app.clone(),
            service: record.service.clone(),
            release: record.release.clone(),
            artifact: PathBuf::new(),
            env: None,
            grace: Duration::from_secs(record.grace_secs.max(1)),
        });
        let proc = Arc::new(Proc::new(
            record.id.clone(),
            record.service.clone(),
            record.release.clone(),
            pid,
            0,
            record.started,
            log.clone(),
        ));
        // Its output before the restart went to the log already.
        proc.tail.lock().await.pump(false).await;
        let oneoff = Arc::new(OneOff {
            ctx: ctx.clone(),
            proc: proc.clone(),
            state: Mutex::new(OneOffState {
                info: OneOffInfo {
                    id: record.id.clone(),
                    app: record.app.clone(),
                    service: record.service,
                    release: record.release,
                    command: record.command,
                    status: OneOffStatus::Running,
                    started: record.started,
                    deadline: record.deadline,
                    exit_code: None,
                },
                ended: None,
                stopping: None,
            }),
            pipes: Mutex::new(None),
        });
        self.inner
            .oneoffs
            .lock()
            .insert((record.app, record.id.clone()), oneoff.clone());
        self.emit_oneoff(
            &ctx,
            format!("Took back one-off process {} (pid {pid})", record.id),
        );
        self.supervise_oneoff(oneoff.clone(), timeout, true);
        let runtime = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = process::wait_adopted(pid) => {}
                () = runtime.inner.stopping.cancelled() => return,
            }
            let code = read_exit(&log);
            runtime.finish_oneoff(&oneoff, code, true).await;
        });
    }
}
