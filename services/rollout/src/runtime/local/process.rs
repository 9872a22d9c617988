//! One OS process of an app: how it is spawned (own process group, output
//! to a log file so it survives a restart of the rollout service), how its
//! exit is noticed (`wait` for our children, liveness polling for processes
//! re-adopted after a restart), how it is signalled, and the tail of its
//! output kept for failure reasons.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio_util::sync::CancellationToken;

/// The env var that marks a process as ours; re-adoption checks it.
pub(super) const MARKER: &str = "SLIPWAY_PROCESS_ID";
/// Output lines kept per process.
const TAIL_LINES: usize = 20;
/// How often a re-adopted process (not our child) is checked for life.
const LIVENESS_POLL: Duration = Duration::from_millis(100);

/// Where a process is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    /// Started, not yet healthy.
    Starting,
    /// Passing health checks; receives traffic.
    Healthy,
    /// Failed its health check three times in a row.
    Unhealthy,
    /// Being stopped; receives no new traffic.
    Stopping,
}

impl Status {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Healthy => "running",
            Self::Unhealthy => "unhealthy",
            Self::Stopping => "stopping",
        }
    }
}

/// Mutable facts about a process.
#[derive(Debug)]
pub(super) struct ProcState {
    pub(super) status: Status,
    /// Whether it ever passed a health check.
    pub(super) ever_healthy: bool,
}

/// A running process of an app.
#[derive(Debug)]
pub(super) struct Proc {
    pub(super) id: String,
    pub(super) service: String,
    pub(super) release: String,
    pub(super) pid: u32,
    pub(super) port: u16,
    pub(super) started: DateTime<Utc>,
    /// `started` on the monotonic clock (for grace periods).
    pub(super) started_at: Instant,
    pub(super) state: Mutex<ProcState>,
    /// Connections the proxy has open to it.
    pub(super) conns: Arc<AtomicUsize>,
    /// Fires once the process has exited.
    pub(super) gone: CancellationToken,
    pub(super) tail: tokio::sync::Mutex<Tail>,
}

impl Proc {
    pub(super) fn new(
        id: String,
        service: String,
        release: String,
        pid: u32,
        port: u16,
        started: DateTime<Utc>,
        log: PathBuf,
    ) -> Self {
        let age = (Utc::now() - started).to_std().unwrap_or_default();
        Self {
            id,
            service,
            release,
            pid,
            port,
            started,
            started_at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            state: Mutex::new(ProcState {
                status: Status::Starting,
                ever_healthy: false,
            }),
            conns: Arc::new(AtomicUsize::new(0)),
            gone: CancellationToken::new(),
            tail: tokio::sync::Mutex::new(Tail::new(log)),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn status(&self) -> Status {
        self.lock().status
    }

    /// Sends `signal` to the process's group (its shell and everything it started).
    pub(super) fn signal(&self, signal: Signal) {
        let pgid = Pid::from_raw(self.pid as i32);
        if let Err(e) = killpg(pgid, signal)
            && e != nix::errno::Errno::ESRCH
        {
            tracing::warn!(process = %self.id, pid = self.pid, "failed to send {signal}: {e}");
        }
    }

    /// Connections the proxy has open to the process.
    pub(super) fn connections(&self) -> usize {
        self.conns.load(Ordering::Acquire)
    }
}

/// How a process ended.
pub(super) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("unknown signal");
            format!("was killed by {name}")
        }
        _ => "exited".to_owned(),
    }
}

/// Waits until a process that is not our child is gone.
pub(super) async fn wait_adopted(pid: u32) {
    while alive(pid) {
        tokio::time::sleep(LIVENESS_POLL).await;
    }
}

/// Whether `pid` is a live (not zombie) process.
pub(super) fn alive(pid: u32) -> bool {
    if kill(Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    // A zombie still answers signals; /proc tells it apart.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// Whether `pid` carries our marker for process `id` in its environment.
pub(super) fn is_ours(pid: u32, id: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("{MARKER}={id}");
    environ.split(|b| *b == 0).any(|var| var == want.as_bytes())
}

/// Finds a live process carrying our marker for `id` (a process spawned
/// just before the rollout service died, whose pid was never recorded).
pub(super) fn find_by_marker(id: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| is_ours(*pid, id) && alive(*pid))
}

/// The end of a process's output: reads the log file as it grows, hands
/// out complete lines, and keeps the last few for failure reasons.
#[derive(Debug)]
pub(super) struct Tail {
    path: PathBuf,
    offset: u64,
    partial: String,
    last: VecDeque<String>,
}

impl Tail {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
            last: VecDeque::with_capacity(TAIL_LINES),
        }
    }

    /// Reads what was written since the last call; returns complete lines.
    /// `flush` also returns an unterminated last line (the process is gone).
    pub(super) async fn pump(&mut self, flush: bool) -> Vec<String> {
        let mut lines = Vec::new();
        if let Ok(mut file) = tokio::fs::File::open(&self.path).await
            && file
                .seek(std::io::SeekFrom::Start(self.offset))
                .await
                .is_ok()
        {
            let mut buf = Vec::new();
            // Bounded per call so a chatty process cannot stall us.
            if let Ok(n) = (&mut file).take(1 << 20).read_to_end(&mut buf).await {
                self.offset += n as u64;
                self.partial.push_str(&String::from_utf8_lossy(&buf));
            }
        }
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            lines.push(line.trim_end_matches(['\n', '\r']).to_owned());
        }
        if flush && !self.partial.is_empty() {
            lines.push(std::mem::take(&mut self.partial));
        }
        for line in &lines {
            if self.last.len() == TAIL_LINES {
                self.last.pop_front();
            }
            self.last.push_back(line.clone());
        }
        lines
    }

    /// The last output lines, joined for a one-line reason; `(none)` if silent.
    pub(super) fn last_output(&self) -> String {
        let lines: Vec<&str> = self
            .last
            .iter()
            .map(String::as_str)
            .filter(|l| !l.trim().is_empty())
            .collect();
        if lines.is_empty() {
            return "(none)".to_owned();
        }
        let mut text = lines.join(" | ");
        if text.len() > 2000 {
            let cut = text.len() - 2000;
            let cut = (cut..text.len())
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(cut);
            text = format!("…{}", &text[cut..]);
        }
        text
    }
}

/// Picks a free port for a new process (the OS chooses; the process binds
/// it moments later).
pub(super) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// Resolves an artifact reference (`file:///dir` or `/dir`) to a directory.
pub(super) fn artifact_dir(artifact: &str) -> Option<PathBuf> {
    let path = artifact.strip_prefix("file://").unwrap_or(artifact);
    let path = Path::new(path);
    (path.is_absolute() && path.is_dir()).then(|| path.to_owned())
}
