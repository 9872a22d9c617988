//! One-off processes, the runtime's second process kind: a command of one
//! service of a release (its artifact or image, its env, the service's
//! definition in its manifest), run apart from the app's rollouts. It never
//! touches the app's desired release, its status or a promotion; it runs at
//! most `timeout`, and its output and exit status go to whoever attaches
//! (or, detached, to the app's log).
//!
//! A [`Session`] is one command's stdin, output and exit status: the one-off
//! itself (attach), or another command run inside a running process's
//! release, env and working copy (exec; bounded by that process's life).

use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_domain::manifest::Service;
use tokio::sync::mpsc;

use super::{RuntimeError, Spec};

/// Timeout of a one-off process when the caller gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest timeout a one-off process may have.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRequest {
    /// The service of the release whose definition it runs with.
    pub service: String,
    /// Shell command text; `None` runs the service's own command.
    pub command: Option<String>,
    /// Stopped after this long.
    pub timeout: Duration,
    /// Keep its stdin and output for one session that attaches; else stdin
    /// is empty and the output goes to the app's log.
    pub attach: bool,
}

impl RunRequest {
    /// Checks the request against the release it runs, as every backend
    /// must before starting anything: the service is in the release, the
    /// command (the request's, else the service's own) is not empty, the
    /// timeout is in range. Returns the service and the command to run.
    pub fn check<'a>(&self, spec: &'a Spec) -> Result<(&'a Service, String), RuntimeError> {
        let refused = |message: String| RuntimeError::Refused(message);
        let service = spec.manifest.service(&self.service).ok_or_else(|| {
            let known: Vec<&str> = spec.manifest.services.keys().map(String::as_str).collect();
            refused(format!(
                "no such service: {} (release {} has {})",
                self.service,
                spec.release,
                known.join(", ")
            ))
        })?;
        let command = self
            .command
            .clone()
            .filter(|c| !c.trim().is_empty())
            .or_else(|| service.command.clone())
            .ok_or_else(|| {
                refused(format!(
                    "empty command: service {} has no command of its own",
                    self.service
                ))
            })?;
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(refused(format!(
                "timeout {}s out of range: 1 to {}s",
                self.timeout.as_secs(),
                MAX_TIMEOUT.as_secs()
            )));
        }
        Ok((service, command))
    }
}

/// Where a one-off process is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OneOffStatus {
    /// Not started yet (an image being pulled).
    Pending,
    /// Running.
    Running,
    /// Being stopped (asked to, or past its timeout).
    Stopping,
    /// Exited with status 0.
    Complete,
    /// Exited otherwise, or killed.
    Failed,
}

impl OneOffStatus {
    /// The Convox status word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Complete => "complete",
            Self::Failed => "failed",
        }
    }

    /// Whether it has ended.
    pub fn is_over(self) -> bool {
        matches!(self, Self::Complete | Self::Failed)
    }
}

/// A process as `ps info` shows it: a one-off, or a service process (empty
/// command, no deadline).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneOffInfo {
    /// e.g. `web-k3x9q`.
    pub id: String,
    /// The app.
    pub app: String,
    /// The service.
    pub service: String,
    /// The release it runs.
    pub release: String,
    /// Its command.
    pub command: String,
    /// Where it is.
    pub status: OneOffStatus,
    /// When it started.
    pub started: DateTime<Utc>,
    /// When it is stopped if still running.
    pub deadline: Option<DateTime<Utc>>,
    /// Its exit status once over (128+N for signal N).
    pub exit_code: Option<i32>,
}

/// Where a runtime reports the end of a one-off, once it has seen it, so
/// that every replica (and this one after a restart) can tell how it ended
/// after the runtime has let go of it (the service keeps it in its
/// database: `crate::oneoff_ends`). A backend reports each end it observes
/// before it lets go of what shows it (a Kubernetes pod is deleted only
/// after); reporting one end twice, from two observers, is allowed (the
/// first report wins).
#[async_trait::async_trait]
pub trait OneOffEnds: Send + Sync + 'static {
    /// Records `info`, an ended one-off (its status `complete` or
    /// `failed`), which ended at `at`. Returns once it is kept, or once the
    /// sink gave up (it logs why); a runtime goes on either way.
    async fn ended(&self, info: &OneOffInfo, at: DateTime<Utc>);
}

/// Keeps no ends: a runtime built without a sink remembers ends only in
/// its own memory.
pub struct NoEnds;

#[async_trait::async_trait]
impl OneOffEnds for NoEnds {
    async fn ended(&self, _: &OneOffInfo, _: DateTime<Utc>) {}
}

/// What a session runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// The one-off's own command (started with `attach`); one session only.
    Attach,
    /// Another command (shell text) in the process's release, env and
    /// working copy.
    Exec(String),
}

/// An item of a session's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionOutput {
    /// stdout and stderr, merged, as the command wrote them.
    Data(bytes::Bytes),
    /// The last item: the exit status (128+N for signal N).
    Exit(i32),
}

/// One command's stdin and output. Dropping `stdin` closes the command's
/// stdin; dropping `output` before the exit abandons the session: the
/// command is killed (and an attached one-off stopped).
#[derive(Debug)]
pub struct Session {
    /// Bytes for the command's stdin.
    pub stdin: mpsc::Sender<bytes::Bytes>,
    /// Its output, then its exit status.
    pub output: mpsc::Receiver<SessionOutput>,
}

/// The exit status convention: the code, or 128+N for signal N.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        _ => 1,
    }
}

/// `web-k3x9q`: the service and five random letters or digits, as Convox
/// names run processes.
pub fn new_id(service: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{service}-{suffix}")
}
