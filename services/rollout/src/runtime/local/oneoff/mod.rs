//! One-off processes on the local runtime (see [`crate::runtime::oneoff`]):
//! `sh -c <command>` in the release's working copy, as the app's user, with
//! the release env of the service, in a process group of its own that is
//! killed at the timeout and reaped when it ends. Detached, its output goes
//! to a log file and the app's log like a service process's; attached, its
//! stdin and merged output wait in pipes for the one session that attaches.
//!
//! Exec sessions run another command the same way inside a running
//! process's release (a one-off's, or a service process's while its release
//! is the app's target), and die with that process.
//!
//! After a restart of the rollout service (see [`orphans`]), attached
//! one-offs and exec sessions are stopped (their sessions went through
//! it); detached ones are listed, followed, stoppable and stopped at their
//! deadline again, from a record kept beside their log. Ended ones stay
//! listed by id for [`KEEP_ENDED`], so a client can read how they ended;
//! each end is also reported to the runtime's
//! [`OneOffEnds`](crate::runtime::OneOffEnds) sink (the service keeps it in
//! its database), which answers for it after a restart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use nix::sys::signal::Signal;
use slipway_domain::Env;
use slipway_events::NewEvent;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt as _;

use super::LocalRuntime;
use super::isolation::Launch;
use super::process::{self, Proc};
use super::supervise;
use crate::runtime::oneoff;

mod orphans;
use crate::runtime::{
    OneOffInfo, OneOffStatus, ProcessInfo, RunRequest, RuntimeError, Session, SessionKind,
    SessionOutput, Spec,
};

/// How long an ended one-off can still be looked up.
pub(super) const KEEP_ENDED: Duration = Duration::from_secs(600);
/// The most output one read hands to a session (a full pipe).
const CHUNK: usize = 1 << 20;
/// The size asked for a session's stdin and output pipes (the kernel's
/// default is 64 KiB): a bulk copy (`run web cat < dump`) then moves in
/// fewer, larger steps, each of which wakes four processes and two RPC
/// streams. Within the default `/proc/sys/fs/pipe-max-size`; if refused,
/// the default stays.
const PIPE_SIZE: i32 = 1 << 20;
/// The env var that marks a one-off or exec session: `<deadline> <apps dir>`.
const ORPHAN_MARKER: &str = "SLIPWAY_ONEOFF";
/// How long the output of an ended command may still drain (a descendant
/// that left the process group can hold the pipe open).
const DRAIN: Duration = Duration::from_secs(5);

/// The one-offs of every app, by `(app, id)`.
#[derive(Default)]
pub(super) struct OneOffs {
    map: Mutex<BTreeMap<(String, String), Arc<OneOff>>>,
}

impl OneOffs {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Arc<OneOff>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, app: &str, id: &str) -> Option<Arc<OneOff>> {
        self.lock().get(&(app.to_owned(), id.to_owned())).cloned()
    }

    /// Drops the ones that ended more than [`KEEP_ENDED`] ago.
    fn prune(&self) {
        let now = Instant::now();
        self.lock().retain(|_, o| {
            o.lock()
                .ended
                .is_none_or(|at| now.duration_since(at) < KEEP_ENDED)
        });
    }
}

/// Where and how a command of a release runs: shared by a one-off and the
/// exec sessions into it.
struct Context {
    app: String,
    service: String,
    release: String,
    /// The artifact directory (each session counts as a user of its copy).
    artifact: PathBuf,
    /// The env of the service in the release; `None` for a one-off a
    /// previous run started (the env is kept nowhere outside the release's
    /// sealed record, so nothing can be exec'd into it).
    env: Option<Env>,
    /// SIGTERM to SIGKILL.
    grace: Duration,
}

struct OneOff {
    ctx: Arc<Context>,
    proc: Arc<Proc>,
    state: Mutex<OneOffState>,
    /// Stdin and output of an attached one-off, until a session takes them.
    pipes: Mutex<Option<Pipes>>,
}

struct OneOffState {
    info: OneOffInfo,
    /// When it ended, on the monotonic clock.
    ended: Option<Instant>,
    /// Why it is being stopped (`stopped`, `timed out after 5s`).
    stopping: Option<String>,
}

impl OneOff {
    fn lock(&self) -> std::sync::MutexGuard<'_, OneOffState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Pipes {
    stdin: Option<tokio::process::ChildStdin>,
    output: std::io::PipeReader,
}

/// A command ready to spawn, with its pipes when it has a session.
struct Prepared {
    cmd: tokio::process::Command,
    output: Option<std::io::PipeReader>,
}

fn refused(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Refused(message.into())
}

/// Where a detached command's output and exit status go.
struct Detached<'a> {
    log: &'a std::path::Path,
    exit: &'a std::path::Path,
}

/// The shell a detached command runs under: the command itself with an
/// empty stdin, then its status written to fd 0, which is the exit file
/// opened for writing (no other descriptor can be handed to a child
/// without `pre_exec`). A restarted runtime, no longer its parent, reads
/// the status there.
const DETACHED_SHELL: &str = "/bin/sh -c \"$1\" </dev/null; s=$?; echo \"$s\" >&0; exit \"$s\"";

/// `sh -c <text>` in `launch`'s directory with the context's env, in a
/// process group of its own; without `detached`, stdin piped and stdout
/// and stderr merged into one pipe, else stdin empty, output appended to
/// the log and the exit status written to the exit file.
fn prepare(
    ctx: &Context,
    launch: &Launch,
    text: &str,
    marker: (&str, &str),
    orphan: &str,
    detached: Option<Detached<'_>>,
) -> std::io::Result<Prepared> {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    match detached {
        Some(_) => cmd.arg("-c").arg(DETACHED_SHELL).arg("sh").arg(text),
        None => cmd.arg("-c").arg(text),
    };
    cmd.env_clear();
    for key in supervise::INHERITED_ENV {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.envs(ctx.env.iter().flat_map(|env| env.iter()))
        .env("SLIPWAY_APP", &ctx.app)
        .env("SLIPWAY_SERVICE", &ctx.service)
        .env("SLIPWAY_RELEASE", &ctx.release)
        .env(marker.0, marker.1)
        .env(ORPHAN_MARKER, orphan)
        .process_group(0)
        .kill_on_drop(false);
    let output = match detached {
        Some(Detached { log, exit }) => {
            if let Some(parent) = log.parent() {
                slipway_storage::files::create_private_dir_all(parent)?;
            }
            let out = slipway_storage::files::private_file_options()
                .create(true)
                .append(true)
                .open(log)?;
            let status = slipway_storage::files::private_file_options()
                .create(true)
                .truncate(true)
                .write(true)
                .open(exit)?;
            cmd.stdin(status).stdout(out.try_clone()?).stderr(out);
            None
        }
        None => {
            let (reader, writer) = std::io::pipe()?;
            widen(&reader);
            cmd.stdin(std::process::Stdio::piped())
                .stdout(writer.try_clone()?)
                .stderr(writer);
            Some(reader)
        }
    };
    launch.apply(&mut cmd);
    Ok(Prepared { cmd, output })
}

/// Spawns a prepared command; the parent's copies of the pipe's write end
/// are closed with the `Command`, so the reader sees the end of output.
fn spawn(prepared: Prepared) -> std::io::Result<(tokio::process::Child, Option<Pipes>)> {
    let Prepared { mut cmd, output } = prepared;
    let mut child = cmd.spawn()?;
    drop(cmd);
    let pipes = output.map(|output| Pipes {
        stdin: child.stdin.take().inspect(widen),
        output,
    });
    Ok((child, pipes))
}

/// Asks for a [`PIPE_SIZE`] buffer on `pipe` (either end); best effort.
fn widen(pipe: &impl std::os::fd::AsFd) {
    use nix::fcntl::{FcntlArg, fcntl};
    if let Err(e) = fcntl(pipe, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)) {
        tracing::debug!(error = %e, "one-off pipe keeps its default size");
    }
}

/// Wires a command's pipes to a [`Session`]: stdin from the session, output
/// to it, then `exit`'s status. If the session is dropped first,
/// `abandon` runs (it kills the command).
fn open_session(
    pipes: Pipes,
    exit: impl std::future::Future<Output = i32> + Send + 'static,
    abandon: impl FnOnce() + Send + 'static,
) -> Session {
    let (stdin_tx, mut stdin_rx) = mpsc::channel::<bytes::Bytes>(16);
    let (out_tx, out_rx) = mpsc::channel(16);
    let Pipes { stdin, output } = pipes;
    tokio::spawn(async move {
        let Some(mut stdin) = stdin else { return };
        while let Some(bytes) = stdin_rx.recv().await {
            if stdin.write_all(&bytes).await.is_err() {
                return;
            }
        }
        // The session closed its stdin: so does the command's (dropped).
    });
    let reader_tx = out_tx.clone();
    // Read through the reactor (non-blocking): no thread hand-off per
    // chunk, and a reader left waiting on a pipe that a background child
    // holds open is dropped, not parked on a blocking thread.
    let reader = tokio::spawn(async move {
        let Ok(output) = tokio::net::unix::pipe::Receiver::from_owned_fd(output.into()) else {
            return;
        };
        // Chunks split off one buffer, no copies.
        let mut chunks = tokio_util::io::ReaderStream::with_capacity(output, CHUNK);
        while let Some(Ok(chunk)) = chunks.next().await {
            if reader_tx.send(SessionOutput::Data(chunk)).await.is_err() {
                return;
            }
        }
    });
    // Its own task, so that an abandoned session still reaps the command.
    let exit = tokio::spawn(exit);
    tokio::spawn(async move {
        let finished = async {
            let code = exit.await.unwrap_or(1);
            let _ = tokio::time::timeout(DRAIN, reader).await;
            code
        };
        tokio::select! {
            code = finished => {
                let _ = out_tx.send(SessionOutput::Exit(code)).await;
            }
            () = out_tx.closed() => abandon(),
        }
    });
    Session {
        stdin: stdin_tx,
        output: out_rx,
    }
}

impl LocalRuntime {
    /// Starts a one-off process (see the module docs).
    pub(super) async fn run_oneoff(
        &self,
        spec: Arc<Spec>,
        request: RunRequest,
    ) -> Result<OneOffInfo, RuntimeError> {
        let (app, release) = (spec.app.to_string(), spec.release.to_string());
        let (service, command) = request.check(&spec)?;
        let artifact = spec
            .artifacts
            .get(&request.service)
            .and_then(|a| process::artifact_dir(a))
            .ok_or_else(|| {
                refused(format!(
                    "release {release} has no build of service {} to run",
                    request.service
                ))
            })?;
        let ctx = Arc::new(Context {
            app: app.clone(),
            service: request.service.clone(),
            release: release.clone(),
            artifact,
            env: Some(spec.manifest.env_for(&request.service, &spec.env)),
            grace: Duration::from_secs(u64::from(service.termination_grace_secs.max(1))),
        });
        let id = loop {
            let id = oneoff::new_id(&request.service);
            if self.inner.oneoffs.get(&app, &id).is_none() {
                break id;
            }
        };
        let launch = self
            .inner
            .isolation
            .prepare(&app, &release, &ctx.artifact)
            .await
            .map_err(|e| RuntimeError::Backend(e.to_string()))?;
        let log = self.log_path(&app, &id);
        let exit = orphans::exit_path(&log);
        let started = Utc::now();
        let deadline = chrono::Duration::from_std(request.timeout)
            .ok()
            .map(|d| started + d);
        let info = OneOffInfo {
            id: id.clone(),
            app: app.clone(),
            service: request.service.clone(),
            release: release.clone(),
            command: command.clone(),
            status: OneOffStatus::Running,
            started,
            deadline,
            exit_code: None,
        };
        // A detached one-off outlives a restart of the service until its
        // deadline (its record says what it is); an attached one's session
        // cannot, and its record is how the restarted service tells its
        // end.
        let stop_by = match request.attach {
            true => 0,
            false => deadline.map_or(i64::MAX, |d| d.timestamp()),
        };
        let spawned = orphans::write_record(&log, &info, ctx.grace)
            .and_then(|()| {
                prepare(
                    &ctx,
                    &launch,
                    &command,
                    (process::MARKER, &id),
                    &self.orphan_marker(stop_by),
                    (!request.attach).then_some(Detached {
                        log: &log,
                        exit: &exit,
                    }),
                )
            })
            .and_then(spawn);
        let (child, pipes) = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                orphans::remove_files(&log).await;
                self.inner.isolation.release(&app, &release).await;
                return Err(RuntimeError::Backend(format!(
                    "could not start a process of service {}: {e}",
                    request.service
                )));
            }
        };
        let pid = child.id().unwrap_or_default();
        let proc = Arc::new(Proc::new(
            id.clone(),
            request.service.clone(),
            release.clone(),
            pid,
            0,
            started,
            log,
        ));
        let oneoff = Arc::new(OneOff {
            ctx: ctx.clone(),
            proc: proc.clone(),
            state: Mutex::new(OneOffState {
                info,
                ended: None,
                stopping: None,
            }),
            pipes: Mutex::new(pipes),
        });
        self.inner.oneoffs.prune();
        self.inner
            .oneoffs
            .lock()
            .insert((app.clone(), id.clone()), oneoff.clone());
        self.emit_oneoff(
            &ctx,
            format!("Started one-off process {id} (pid {pid}) of {release}"),
        );
        let detached = !request.attach;
        self.supervise_oneoff(oneoff.clone(), request.timeout, detached);
        let info = oneoff.lock().info.clone();
        let runtime = self.clone();
        tokio::spawn(async move {
            let mut child = child;
            let waited = tokio::select! {
                waited = child.wait() => waited,
                // Left running for the next run to take back or stop.
                () = runtime.inner.stopping.cancelled() => return,
            };
            let code = match waited {
                Ok(status) => Some(oneoff::exit_code(status)),
                Err(e) => {
                    tracing::warn!(process = %proc.id, "failed to wait for a one-off process: {e}");
                    process::wait_adopted(proc.pid).await;
                    None
                }
            };
            runtime.finish_oneoff(&oneoff, code, detached).await;
        });
        Ok(info)
    }

    fn emit_oneoff(&self, ctx: &Context, message: String) {
        self.inner.events.emit(NewEvent::now(
            &ctx.app,
            format!("system/local/{}", ctx.service),
            message,
        ));
    }

    /// Forwards a detached one-off's output to the app's log and stops it
    /// at its timeout.
    fn supervise_oneoff(&self, oneoff: Arc<OneOff>, timeout: Duration, detached: bool) {
        let proc = oneoff.proc.clone();
        if detached {
            let (events, ctx, proc) = (self.inner.events.clone(), oneoff.ctx.clone(), proc.clone());
            let stopping = self.inner.stopping.clone();
            tokio::spawn(async move {
                let source = format!("service/{}/{}", ctx.service, proc.id);
                let forward = supervise::forward_output(&proc, |line| {
                    events.emit(NewEvent::now(&ctx.app, source.clone(), line));
                });
                tokio::select! {
                    () = forward => {}
                    () = stopping.cancelled() => {}
                }
            });
        }
        let runtime = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(timeout) => {}
                () = oneoff.proc.gone.cancelled() => return,
                () = runtime.inner.stopping.cancelled() => return,
            }
            let why = format!("timed out after {}s", timeout.as_secs());
            runtime.emit_oneoff(
                &oneoff.ctx,
                format!("One-off process {} {why}, stopping it", oneoff.proc.id),
            );
            runtime.stop_oneoff(&oneoff, why).await;
        });
    }

    /// Records how a one-off ended (`code`: `None` when nobody could tell)
    /// and lets go of what it held.
    async fn finish_oneoff(&self, oneoff: &OneOff, code: Option<i32>, detached: bool) {
        let proc = &oneoff.proc;
        // Whatever it left running in its group goes with it.
        proc.signal(Signal::SIGKILL);
        let ctx = oneoff.ctx.clone();
        if detached {
            let lines = proc.tail.lock().await.pump(true).await;
            let source = format!("service/{}/{}", ctx.service, proc.id);
            for line in lines {
                self.inner
                    .events
                    .emit(NewEvent::now(&ctx.app, source.clone(), line));
            }
        }
        let ended_at = Utc::now();
        let (how, info) = {
            let mut st = oneoff.lock();
            st.info.exit_code = code;
            st.info.status = match code {
                Some(0) => OneOffStatus::Complete,
                _ => OneOffStatus::Failed,
            };
            st.ended = Some(Instant::now());
            let ended = match code {
                Some(code) => format!("ended with status {code}"),
                None => "ended; its exit status is unknown".to_owned(),
            };
            let how = match (&st.stopping, code) {
                (Some(why), _) => format!("{why}, {ended}"),
                (None, Some(code)) => format!("exited with status {code}"),
                (None, None) => ended,
            };
            (how, st.info.clone())
        };
        proc.gone.cancel();
        self.inner.isolation.release(&ctx.app, &ctx.release).await;
        self.emit_oneoff(&ctx, format!("One-off process {} {how}", proc.id));
        // Reported before its files go: a restart in between finds the
        // end again from them (see `orphans`).
        self.inner.oneoff_ends.ended(&info, ended_at).await;
        orphans::remove_files(&self.log_path(&ctx.app, &proc.id)).await;
    }

    /// SIGTERM, then SIGKILL after the service's grace; `why` is how its
    /// end is told.
    async fn stop_oneoff(&self, oneoff: &OneOff, why: String) {
        {
            let mut st = oneoff.lock();
            if st.info.status.is_over() || st.stopping.is_some() {
                return;
            }
            st.stopping = Some(why);
            st.info.status = OneOffStatus::Stopping;
        }
        supervise::terminate(&oneoff.proc, oneoff.ctx.grace, || {}).await;
    }

    /// A process of `app` by id (see [`crate::runtime::Runtime::process`]).
    pub(super) fn oneoff_info(&self, app: &str, id: &str) -> Result<OneOffInfo, RuntimeError> {
        if let Some(oneoff) = self.inner.oneoffs.get(app, id) {
            return Ok(oneoff.lock().info.clone());
        }
        let (proc, _) = self.service_process(app, id)?;
        let status = match proc.status() {
            process::Status::Starting => OneOffStatus::Pending,
            process::Status::Stopping => OneOffStatus::Stopping,
            process::Status::Healthy | process::Status::Unhealthy => OneOffStatus::Running,
        };
        Ok(OneOffInfo {
            id: proc.id.clone(),
            app: app.to_owned(),
            service: proc.service.clone(),
            release: proc.release.clone(),
            command: String::new(),
            status,
            started: proc.started,
            deadline: None,
            exit_code: None,
        })
    }

    /// The live one-offs of `app`, for the process list.
    pub(super) fn oneoff_processes(&self, app: &str) -> Vec<ProcessInfo> {
        self.inner.oneoffs.prune();
        self.inner
            .oneoffs
            .lock()
            .iter()
            .filter(|((a, _), _)| a == app)
            .filter_map(|(_, o)| {
                let st = o.lock();
                (!st.info.status.is_over()).then(|| ProcessInfo {
                    id: st.info.id.clone(),
                    service: st.info.service.clone(),
                    release: st.info.release.clone(),
                    status: st.info.status.as_str().to_owned(),
                    started: st.info.started,
                    pid: Some(o.proc.pid),
                    port: None,
                    command: st.info.command.clone(),
                })
            })
            .collect()
    }

    /// Stops a one-off, or signals a service process (its service replaces it).
    pub(super) async fn stop_process_by_id(&self, app: &str, id: &str) -> Result<(), RuntimeError> {
        if let Some(oneoff) = self.inner.oneoffs.get(app, id) {
            if !oneoff.lock().info.status.is_over() {
                let runtime = self.clone();
                tokio::spawn(async move { runtime.stop_oneoff(&oneoff, "stopped".into()).await });
            }
            return Ok(());
        }
        let (proc, _) = self.service_process(app, id)?;
        proc.signal(Signal::SIGTERM);
        Ok(())
    }

    /// A running service process of `app`, with the spec of its release
    /// when that is the app's target (what an exec into it runs with).
    fn service_process(
        &self,
        app: &str,
        id: &str,
    ) -> Result<(Arc<Proc>, Option<Arc<Spec>>), RuntimeError> {
        let not_found = || RuntimeError::NotFound(format!("process not found: {id}"));
        let app = self.existing(app).map_err(|_| not_found())?;
        let st = app.lock();
        let proc = st
            .services
            .values()
            .flat_map(|s| s.procs.iter())
            .find(|p| p.id == id)
            .cloned()
            .ok_or_else(not_found)?;
        let spec = st
            .target
            .as_ref()
            .filter(|t| t.spec.release == proc.release)
            .map(|t| t.spec.clone());
        Ok((proc, spec))
    }

    /// Opens a session with a process (see [`crate::runtime::Runtime::session`]).
    pub(super) async fn open(
        &self,
        app: &str,
        id: &str,
        kind: SessionKind,
    ) -> Result<Session, RuntimeError> {
        let oneoff = self.inner.oneoffs.get(app, id);
        // An attached one-off may end before its session opens: its output
        // waits in the pipe, and its status is kept.
        if let Some(oneoff) = &oneoff
            && kind != SessionKind::Attach
            && oneoff.lock().info.status.is_over()
        {
            return Err(refused(format!("process {id} has ended")));
        }
        let text = match kind {
            SessionKind::Attach => {
                let oneoff = oneoff
                    .ok_or_else(|| RuntimeError::NotFound(format!("process not found: {id}")))?;
                return self.attach(oneoff);
            }
            SessionKind::Exec(text) if text.trim().is_empty() => {
                return Err(refused("empty command"));
            }
            SessionKind::Exec(text) => text,
        };
        let (ctx, target) = match oneoff {
            Some(oneoff) if oneoff.ctx.env.is_none() => {
                return Err(refused(format!(
                    "process {id} was started before the rollout service restarted: it can be \
                     listed, followed and stopped, but not exec'd into (its env is kept only \
                     in its release); start a new one-off with `run` instead"
                )));
            }
            Some(oneoff) => (oneoff.ctx.clone(), oneoff.proc.clone()),
            None => {
                let (proc, spec) = self.service_process(app, id)?;
                let spec = spec.ok_or_else(|| {
                    refused(format!(
                        "process {id} runs {}, which the app is no longer moving to",
                        proc.release
                    ))
                })?;
                let artifact = spec
                    .artifacts
                    .get(&proc.service)
                    .and_then(|a| process::artifact_dir(a))
                    .ok_or_else(|| refused(format!("process {id} has no artifact to run in")))?;
                let ctx = Context {
                    app: app.to_owned(),
                    service: proc.service.clone(),
                    release: proc.release.clone(),
                    artifact,
                    env: Some(spec.manifest.env_for(&proc.service, &spec.env)),
                    grace: Duration::from_secs(1),
                };
                (Arc::new(ctx), proc)
            }
        };
        self.exec(ctx, target, &text).await
    }

    fn attach(&self, oneoff: Arc<OneOff>) -> Result<Session, RuntimeError> {
        let id = oneoff.proc.id.clone();
        let pipes = oneoff
            .pipes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| {
                refused(format!(
                    "process {id} cannot be attached to: it was started detached, or another \
                     session attached to it"
                ))
            })?;
        let exit = {
            let oneoff = oneoff.clone();
            async move {
                oneoff.proc.gone.cancelled().await;
                oneoff.lock().info.exit_code.unwrap_or(1)
            }
        };
        let runtime = self.clone();
        let abandon = move || {
            tokio::spawn(async move {
                runtime
                    .stop_oneoff(&oneoff, "stopped (its session went away)".into())
                    .await;
            });
        };
        Ok(open_session(pipes, exit, abandon))
    }

    /// Runs `text` in `ctx` for as long as `target` lives.
    async fn exec(
        &self,
        ctx: Arc<Context>,
        target: Arc<Proc>,
        text: &str,
    ) -> Result<Session, RuntimeError> {
        let launch = self
            .inner
            .isolation
            .prepare(&ctx.app, &ctx.release, &ctx.artifact)
            .await
            .map_err(|e| RuntimeError::Backend(e.to_string()))?;
        let spawned = prepare(
            &ctx,
            &launch,
            text,
            ("SLIPWAY_EXEC_OF", &target.id),
            &self.orphan_marker(0),
            None,
        )
        .and_then(spawn);
        let (mut child, pipes) = match spawned {
            Ok((child, Some(pipes))) => (child, pipes),
            Ok((_, None)) => unreachable!("a session command has pipes"),
            Err(e) => {
                self.inner.isolation.release(&ctx.app, &ctx.release).await;
                return Err(RuntimeError::Backend(format!(
                    "could not start the command: {e}"
                )));
            }
        };
        let pid = child.id().unwrap_or_default();
        let group = move |signal| {
            let pgid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::killpg(pgid, signal);
        };
        let runtime = self.clone();
        let exit = async move {
            let status = tokio::select! {
                status = child.wait() => status,
                () = target.gone.cancelled() => {
                    group(Signal::SIGKILL);
                    child.wait().await
                }
            };
            group(Signal::SIGKILL);
            runtime
                .inner
                .isolation
                .release(&ctx.app, &ctx.release)
                .await;
            status.map(oneoff::exit_code).unwrap_or(1)
        };
        Ok(open_session(pipes, exit, move || group(Signal::SIGKILL)))
    }
}
