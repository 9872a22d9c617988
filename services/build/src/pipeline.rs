//! One build, start to end: fetch the source object, unpack it safely,
//! read and validate the manifest, run the builder, ask the release service
//! for a release, and record the outcome. Every step writes to the build's
//! log; the log is stored whole in the object store before the build is
//! marked ended, so anyone who sees the final status can replay it.

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use slipway_domain::Manifest;
use slipway_domain::manifest::MAX_MANIFEST_BYTES;
use tokio_util::sync::CancellationToken;

use crate::builder::{Artifacts, BuildError, BuildJob, Builder, snapshot::remove_tree};
use crate::config::SourceLimits;
use crate::log::BuildLog;
use crate::model::{Build, BuildStatus, Outcome};
use crate::objects::{ObjectRef, Objects};
use crate::release::Releases;
use crate::store::Store;
use crate::unpack::{UnpackError, unpack};

/// Attempts at storing the final log before giving up on it.
const LOG_STORE_ATTEMPTS: u32 = 3;

/// Why a build was asked to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A user cancelled it.
    Cancelled,
    /// The service is shutting down.
    Shutdown,
    /// It ran longer than the build timeout.
    Timeout(Duration),
}

/// A build in progress on this replica: its live log and how to stop it.
#[derive(Debug)]
pub struct Running {
    /// The live log.
    pub log: Arc<BuildLog>,
    /// Fires to stop the build.
    pub cancel: CancellationToken,
    /// Why it was stopped (the first reason wins).
    pub stop: OnceLock<Stop>,
    /// Who cancelled it ([`Stop::Cancelled`] by a caller): the build's end
    /// is audited as `build.cancel` by them.
    pub cancelled_by: OnceLock<slipway_rpc::actor::Actor>,
    /// Fires once the outcome is recorded and the log closed.
    pub finished: CancellationToken,
}

impl Running {
    /// A fresh entry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            log: BuildLog::new(),
            cancel: CancellationToken::new(),
            stop: OnceLock::new(),
            cancelled_by: OnceLock::new(),
            finished: CancellationToken::new(),
        })
    }

    /// Asks the build to stop for `why` (ignored if already asked).
    pub fn request_stop(&self, why: Stop) {
        let _ = self.stop.set(why);
        self.cancel.cancel();
    }

    /// Asks the build to stop because `by` cancelled it.
    pub fn cancel_by(&self, by: slipway_rpc::actor::Actor) {
        if self.stop.get().is_none() {
            let _ = self.cancelled_by.set(by);
        }
        self.request_stop(Stop::Cancelled);
    }

    /// Who cancelled the build, if a caller did and that is why it stops.
    pub fn canceller(&self) -> Option<&slipway_rpc::actor::Actor> {
        match self.stop.get() {
            Some(Stop::Cancelled) => self.cancelled_by.get(),
            _ => None,
        }
    }
}

/// What every build shares.
#[derive(Debug)]
pub struct Pipeline {
    /// The build table.
    pub store: Store,
    /// Sources and logs.
    pub objects: Objects,
    /// The configured builder.
    pub builder: Arc<dyn Builder>,
    /// Where finished builds get their release.
    pub releases: Releases,
    /// Caps on sources.
    pub limits: SourceLimits,
    /// Parent of the per-build work directories.
    pub work_root: PathBuf,
}

/// A step's failure: the status to record and the reason.
struct Failure {
    status: BuildStatus,
    reason: String,
}

impl Failure {
    fn failed(reason: impl Into<String>) -> Self {
        Self {
            status: BuildStatus::Failed,
            reason: reason.into(),
        }
    }
}

impl Pipeline {
    /// Runs a started build to its end and records the outcome. Never fails:
    /// every problem becomes the build's `failed` status and reason.
    pub async fn run(&self, build: &Build, running: &Running, actor: &str) {
        let started = std::time::Instant::now();
        let log = &running.log;
        let work = self.work_root.join(build.id.as_str());
        let mut manifest_text = String::new();
        let result = self
            .steps(build, running, &work, &mut manifest_text, actor)
            .await;
        let outcome = match result {
            Ok((artifacts, release)) => {
                log.line("Build complete");
                Outcome {
                    status: BuildStatus::Complete,
                    reason: String::new(),
                    manifest: manifest_text,
                    release: Some(release),
                    artifacts,
                }
            }
            Err(failure) => {
                let failure = self.explain_stop(running, failure);
                match failure.status {
                    BuildStatus::Cancelled => log.line("Build cancelled"),
                    _ => log.line(format!("Build failed: {}", failure.reason)),
                }
                Outcome::stopped(failure.status, failure.reason, manifest_text)
            }
        };
        // The work tree goes before the build is reported ended, so a
        // finished build never leaves anything behind.
        let cleanup = work.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || remove_tree(&cleanup)).await {
            tracing::warn!(build_id = %build.id, "failed to remove work directory {}: {e}", work.display());
        }
        self.store_log(build, log).await;
        match self
            .store
            .finish_by(&build.id, &outcome, running.canceller())
            .await
        {
            Ok(true) => {
                slipway_telemetry::metrics::build_finished(
                    started.elapsed(),
                    outcome.status.as_str(),
                );
                tracing::info!(build_id = %build.id, status = %outcome.status, "build ended")
            }
            Ok(false) => {
                tracing::warn!(build_id = %build.id, "build had already been ended elsewhere")
            }
            Err(e) => {
                tracing::error!(build_id = %build.id, "failed to record the build's outcome: {e}")
            }
        }
        log.close();
    }

    /// A cancelled step becomes the status and reason of why it was stopped.
    fn explain_stop(&self, running: &Running, failure: Failure) -> Failure {
        if failure.status != BuildStatus::Cancelled {
            return failure;
        }
        match running.stop.get() {
            Some(Stop::Shutdown) => Failure::failed("the build service shut down during the build"),
            Some(Stop::Timeout(after)) => Failure::failed(format!(
                "build timed out after {}",
                humantime::format_duration(*after)
            )),
            Some(Stop::Cancelled) | None => Failure {
                status: BuildStatus::Cancelled,
                reason: "cancelled".into(),
            },
        }
    }

    async fn steps(
        &self,
        build: &Build,
        running: &Running,
        work: &Path,
        manifest_text: &mut String,
        actor: &str,
    ) -> Result<(Artifacts, String), Failure> {
        let log = &running.log;
        let cancel = &running.cancel;
        let cancelled = || Failure {
            status: BuildStatus::Cancelled,
            reason: "cancelled".into(),
        };
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            tracing::error!(build_id = %build.id, "failed to {what}: {e}");
            Failure::failed(format!("internal error: could not {what}"))
        };

        // A fresh directory that only this build writes to.
        if let Err(e) = slipway_storage::files::create_private_dir_all(&self.work_root) {
            return Err(internal("create the work directory", &e));
        }
        if let Err(e) = tokio::fs::DirBuilder::new()
            .mode(slipway_storage::files::DIR_MODE)
            .create(work)
            .await
        {
            return Err(internal("create the work directory", &e));
        }

        let object =
            ObjectRef::parse_url(&build.source_url).map_err(|e| Failure::failed(e.to_string()))?;
        // Only a store other than a local directory needs a copy here.
        let archive = work.join("source.tgz");
        log.write(b"Fetching source... ");
        let fetched = tokio::select! {
            r = self.objects.fetch(&object, &archive, self.limits.max_compressed_bytes) => r,
            () = cancel.cancelled() => return Err(cancelled()),
        };
        let archive_file = match fetched {
            Ok((file, size)) => {
                log.line(format!("OK ({})", human_bytes(size)));
                file
            }
            Err(
                e @ (crate::objects::Error::NotFound(_) | crate::objects::Error::TooLarge { .. }),
            ) => {
                log.line("FAILED");
                return Err(Failure::failed(format!("source: {e}")));
            }
            Err(e) => {
                log.line("FAILED");
                return Err(internal("fetch the source", &e));
            }
        };

        log.write(b"Unpacking source... ");
        let source = work.join("src");
        if let Err(e) = tokio::fs::create_dir(&source).await {
            return Err(internal("create the source directory", &e));
        }
        let unpacked = {
            let (source, limits, cancel) = (source.clone(), self.limits, cancel.clone());
            tokio::task::spawn_blocking(move || unpack(archive_file, &source, &limits, &cancel))
                .await
        };
        match unpacked {
            Ok(Ok(done)) => log.line(format!(
                "OK ({} entries, {})",
                done.entries,
                human_bytes(done.bytes)
            )),
            Ok(Err(UnpackError::Cancelled)) => return Err(cancelled()),
            Ok(Err(e @ UnpackError::Io { .. })) => {
                log.line("FAILED");
                return Err(internal("unpack the source", &e));
            }
            Ok(Err(e)) => {
                log.line("FAILED");
                return Err(Failure::failed(e.to_string()));
            }
            Err(e) => return Err(internal("unpack the source", &e)),
        }
        // A copied archive is no longer needed; free its space early.
        let _ = tokio::fs::remove_file(&archive).await;

        let manifest = read_manifest(&source, &build.manifest_path, manifest_text, log)?;
        if cancel.is_cancelled() {
            return Err(cancelled());
        }

        log.line(format!(
            "Building with the {} builder...",
            self.builder.name()
        ));
        let job = BuildJob {
            app: &build.app,
            build: &build.id,
            source: &source,
            work,
            manifest: &manifest,
            log,
            cancel,
        };
        let artifacts = match self.builder.build(job).await {
            Ok(artifacts) => artifacts,
            Err(BuildError::Cancelled) => return Err(cancelled()),
            Err(e @ BuildError::Io { .. }) => return Err(internal("build", &e)),
            Err(BuildError::Failed(reason)) => return Err(Failure::failed(reason)),
        };
        if cancel.is_cancelled() {
            return Err(cancelled());
        }

        log.write(b"Creating release... ");
        // Not raced with cancel: once asked, the release may exist, and the
        // build must then record it.
        match self
            .releases
            .create(build, manifest_text, &artifacts, actor)
            .await
        {
            Ok(release) => {
                log.line(format!("OK {release}"));
                Ok((artifacts, release))
            }
            Err(reason) => {
                log.line("FAILED");
                Err(Failure::failed(reason))
            }
        }
    }

    /// Stores the final log, retrying a little; a build whose log could not
    /// be stored still ends (its replay is then empty).
    async fn store_log(&self, build: &Build, log: &BuildLog) {
        let contents = log.contents();
        for attempt in 1..=LOG_STORE_ATTEMPTS {
            match self
                .objects
                .put_log(&build.app, &build.id, contents.clone())
                .await
            {
                Ok(()) => return,
                Err(e) if attempt == LOG_STORE_ATTEMPTS => {
                    tracing::error!(build_id = %build.id, "failed to store the build log: {e}");
                }
                Err(e) => {
                    tracing::warn!(build_id = %build.id, attempt, "failed to store the build log, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
            }
        }
    }
}

/// Reads and validates the manifest at `rel` inside `source`. Its text is
/// kept in `text` even when it is invalid (the build record shows it). A
/// failure's reason ends the log as `Build failed: <reason>`.
fn read_manifest(
    source: &Path,
    rel: &str,
    text: &mut String,
    log: &BuildLog,
) -> Result<Manifest, Failure> {
    let fail = Failure::failed;
    let mut path = source.to_path_buf();
    for component in Path::new(rel).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            _ => {
                return Err(fail(format!(
                    "manifest path {rel:?} must be relative to the source"
                )));
            }
        }
    }
    // Links in the source were checked to stay inside it when unpacking.
    let meta = match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => meta,
        _ => return Err(fail(format!("manifest {rel} not found in the source"))),
    };
    // The domain's bound, checked before reading so a huge file costs nothing.
    if meta.len() > MAX_MANIFEST_BYTES as u64 {
        return Err(fail(format!(
            "manifest {rel} is too large: {} bytes, the limit is {MAX_MANIFEST_BYTES} bytes (512 KiB)",
            meta.len()
        )));
    }
    let bytes = std::fs::read(&path).map_err(|e| fail(format!("manifest {rel}: {e}")))?;
    *text =
        String::from_utf8(bytes).map_err(|_| fail(format!("manifest {rel} is not UTF-8 text")))?;
    let manifest = Manifest::parse(text).map_err(|e| fail(e.to_string()))?;
    let services: Vec<&str> = manifest.services.keys().map(String::as_str).collect();
    log.line(format!("Manifest {rel}: services {}", services.join(", ")));
    for key in &manifest.ignored_keys {
        log.line(format!("Ignoring unsupported manifest key {key}"));
    }
    Ok(manifest)
}

/// `12.3 MB`-style sizes for the log.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1_500), "1.5 KB");
        assert_eq!(human_bytes(52_428_800), "52.4 MB");
    }
}
