//! Builders: what turns an unpacked, validated source into one artifact per
//! service. One trait, two implementations chosen by configuration:
//! [`snapshot::SnapshotBuilder`] (a content-addressed, read-only directory for
//! the local runtime) and [`oci::OciBuilder`] (images built with buildah and
//! pushed to a registry, for Kubernetes).
//!
//! Builders write their progress and their tools' output to the build log
//! and stop promptly when the build is cancelled: processes they start are
//! killed with their whole process group.

pub mod oci;
pub mod snapshot;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use slipway_domain::{AppName, BuildId, Manifest};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::log::BuildLog;

/// Artifact reference per service: `file:///…` for snapshots, an image
/// reference for OCI builds and `image:` services.
pub type Artifacts = BTreeMap<String, String>;

/// How long a finished process's output pipes may stay open (held by
/// orphaned grandchildren) before the builder stops reading them.
const PIPE_DRAIN: Duration = Duration::from_secs(5);

/// Everything a builder gets for one build.
#[derive(Debug)]
pub struct BuildJob<'a> {
    /// The app being built.
    pub app: &'a AppName,
    /// The build's id.
    pub build: &'a BuildId,
    /// The unpacked source. The builder may consume it (move it away).
    pub source: &'a Path,
    /// A scratch directory of this build, removed afterwards.
    pub work: &'a Path,
    /// The validated manifest.
    pub manifest: &'a Manifest,
    /// The build's log.
    pub log: &'a Arc<BuildLog>,
    /// Fires when the build must stop.
    pub cancel: &'a CancellationToken,
}

/// Why a builder did not produce artifacts.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The build cannot succeed; the message is for the user.
    #[error("{0}")]
    Failed(String),
    /// The build was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The local filesystem failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// Wraps an I/O error with what was being done.
    pub fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let action = action.into();
        move |source| Self::Io { action, source }
    }
}

/// Turns a source into artifacts.
#[async_trait::async_trait]
pub trait Builder: Send + Sync + std::fmt::Debug + 'static {
    /// Short name for logs (`snapshot`, `oci`).
    fn name(&self) -> &'static str;

    /// Builds every service of `job.manifest`.
    async fn build(&self, job: BuildJob<'_>) -> Result<Artifacts, BuildError>;

    /// The oci builder, which exports its builds' images (`builds export`).
    fn oci(&self) -> Option<&oci::OciBuilder> {
        None
    }
}

/// The directory a service builds from (`build: path`), checked to be a real
/// directory inside `root`.
pub fn service_dir(root: &Path, service: &str, path: &str) -> Result<PathBuf, BuildError> {
    let refuse =
        |why: &str| BuildError::Failed(format!("service {service}: build path {path:?} {why}"));
    let mut rel = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            _ => return Err(refuse("must stay inside the source")),
        }
    }
    let dir = root.join(&rel);
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() => Ok(dir),
        Ok(_) => Err(refuse("is not a directory")),
        Err(_) => Err(refuse("does not exist in the source")),
    }
}

/// Runs `command`, copying its stdout and stderr line by line into `log`.
/// Cancelling kills the command's whole process group. A non-zero exit is a
/// [`BuildError::Failed`] naming `what`.
pub async fn run_logged(
    mut command: Command,
    what: &str,
    log: &Arc<BuildLog>,
    cancel: &CancellationToken,
) -> Result<(), BuildError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| BuildError::Failed(format!("{what}: could not start: {e}")))?;
    let pumps = [
        child
            .stdout
            .take()
            .map(|out| tokio::spawn(pump(out, log.clone()))),
        child
            .stderr
            .take()
            .map(|err| tokio::spawn(pump(err, log.clone()))),
    ];
    let status = tokio::select! {
        status = child.wait() => status.map_err(BuildError::io(format!("wait for {what}")))?,
        () = cancel.cancelled() => {
            if let Some(pid) = child.id() {
                kill_group(pid).await;
            }
            if let Err(e) = child.kill().await {
                tracing::warn!("failed to kill {what}: {e}");
            }
            for pump in pumps.into_iter().flatten() {
                pump.abort();
            }
            return Err(BuildError::Cancelled);
        }
    };
    for pump in pumps.into_iter().flatten() {
        if tokio::time::timeout(PIPE_DRAIN, pump).await.is_err() {
            tracing::warn!("{what}: output still open after exit; not waiting for it");
        }
    }
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Failed(format!("{what} failed ({status})")))
    }
}

/// Copies lines of `reader` into the log as they come.
async fn pump(reader: impl AsyncRead + Unpin, log: Arc<BuildLog>) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) => break,
            Ok(_) => {
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                log.write(&line);
            }
            Err(e) => {
                tracing::warn!("failed to read builder output: {e}");
                break;
            }
        }
    }
}

/// Sends SIGKILL to the process group `pgid` (the builder's tools fork, and
/// their children must die with them).
async fn kill_group(pgid: u32) {
    let result = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if let Err(e) = result {
        tracing::warn!("failed to kill process group {pgid}: {e}");
    }
}
