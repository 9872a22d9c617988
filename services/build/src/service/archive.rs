//! Build export and import (`convox builds export` / `builds import`).
//!
//! An export is a gzip'd tar whose first entry is `slipway-build.json` (the
//! build's id, app, description, manifest path, commit and manifest; never
//! env) followed by the source tree the build ran on: for the snapshot
//! builder, its artifact, which is kept for as long as any release uses it.
//! So an export is itself a valid source: an import uploads it like a
//! source and builds it with the normal pipeline (the same safe unpacking
//! and caps as every upload, the manifest parsed, the builder run, a
//! release created from the app's newest release and not promoted). The
//! snapshot builder content-addresses the tree, so an import reproduces the
//! exported artifact, plus the small `slipway-build.json` record.
//!
//! Builds of the oci builder keep no tree (their artifacts are registry
//! images). Their export holds the record, the manifest at its path, and
//! each image the build pushed as an OCI archive at
//! [`export_image_path`] (pulled from the registry by digest; `image:`
//! services are named by the manifest and carried by no archive). Such an
//! export is a source too: importing it on a rack with the oci builder
//! goes through the same pipeline (caps, safe unpacking, manifest), and the
//! builder pushes each carried image to that rack's registry under the new
//! build's tag instead of building it.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use slipway_domain::{AppName, BuildId};
use tokio::sync::mpsc;

use slipway_storage::idempotency::Claim;

use super::{BuildService, NewBuild};
use crate::builder::oci::export_image_path;
use crate::error::{Error, Result};
use crate::model::{Build, BuildStatus};
use crate::objects::ObjectRef;

/// The record's name, the first entry of an export.
const RECORD: &str = "slipway-build.json";
/// The largest record an import reads.
const MAX_RECORD: u64 = 1 << 20;
/// Chunks an export is sent in.
const CHUNK: usize = 256 * 1024;
/// How long an import waits for its build at most.
const IMPORT_WAIT: Duration = Duration::from_secs(600);

impl BuildService {
    /// Streams build `id` of `app` as an export archive. The archive is
    /// written to an unlinked temporary file first, so nothing is left
    /// behind whatever happens to the stream.
    pub async fn export(
        &self,
        app: &AppName,
        id: &BuildId,
    ) -> Result<mpsc::Receiver<Result<Bytes>>> {
        let build = self.get(app, id).await?;
        if build.status != BuildStatus::Complete {
            return Err(Error::FailedPrecondition(format!(
                "build {id} is {}: only complete builds can be exported",
                build.status
            )));
        }
        let record = record(&build);
        let work_root = self.pipeline.work_root.clone();
        let file = match snapshot_root(&build)? {
            Some(root) => {
                tokio::task::spawn_blocking(move || write_archive(&work_root, &record, &root))
                    .await
                    .map_err(|e| Error::Internal(format!("export task failed: {e}")))??
            }
            None => self.export_images(&build, record).await?,
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut file = file;
            loop {
                let mut buf = vec![0u8; CHUNK];
                match file.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!("failed to read an export archive: {e}");
                        let _ = tx.blocking_send(Err(Error::Internal("export failed".into())));
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// The archive of a build of the oci builder: its record, its manifest
    /// and the OCI archive of each image it pushed, gathered in a private
    /// directory under the work root that is removed afterwards.
    async fn export_images(&self, build: &Build, record: Vec<u8>) -> Result<std::fs::File> {
        let Some(oci) = self.pipeline.builder.oci() else {
            return Err(Error::FailedPrecondition(format!(
                "build {}: its services run registry images, which this build service \
                 (the {} builder) cannot read; export it from a rack with the oci builder",
                build.id,
                self.pipeline.builder.name()
            )));
        };
        let work_root = self.pipeline.work_root.clone();
        let dir = work_root.join(format!("export-{:016x}", rand::random::<u64>()));
        slipway_storage::files::create_private_dir_all(&dir)
            .map_err(|e| Error::Internal(format!("export: work directory: {e}")))?;
        let gathered = async {
            let manifest = inside(&dir, &build.manifest_path).ok_or_else(|| {
                Error::Internal(format!(
                    "build {}: manifest path {:?} leaves the tree",
                    build.id, build.manifest_path
                ))
            })?;
            write_file(&manifest, build.manifest.as_bytes())?;
            for (service, artifact) in &build.artifacts {
                // `image:` services: the manifest names their image.
                if !oci.built_here(build.app.as_str(), service, build.id.as_str(), artifact) {
                    continue;
                }
                let out = dir.join(export_image_path(service));
                if let Some(parent) = out.parent() {
                    slipway_storage::files::create_private_dir_all(parent)
                        .map_err(|e| Error::Internal(format!("export: image directory: {e}")))?;
                }
                oci.export_image(artifact, &out).await.map_err(|e| {
                    Error::FailedPrecondition(format!(
                        "build {}: could not export the image of service {service} \
                         ({artifact}): {e}",
                        build.id
                    ))
                })?;
            }
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || write_archive(&work_root, &record, &dir))
                .await
                .map_err(|e| Error::Internal(format!("export task failed: {e}")))?
        }
        .await;
        let cleanup = dir.clone();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(cleanup)).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!("failed to remove export directory {}: {e}", dir.display());
        }
        gathered
    }

    /// Builds the uploaded export `source` into a new build of `app` and
    /// waits for it to end; a build that failed (a refused archive, a
    /// manifest that does not parse) is an error naming why.
    pub async fn import(
        self: &Arc<Self>,
        app: &AppName,
        source: ObjectRef,
        actor: String,
        key: Option<String>,
    ) -> Result<Build> {
        if source.app != *app {
            return Err(Error::InvalidArgument(format!(
                "source_url: object belongs to app {}, not {app}",
                source.app
            )));
        }
        let spare = self
            .pipeline
            .work_root
            .join(format!("import-{:016x}.tgz", rand::random::<u64>()));
        slipway_storage::files::create_private_dir_all(&self.pipeline.work_root)
            .map_err(|e| Error::Internal(format!("create the work directory: {e}")))?;
        let (file, _) = self
            .pipeline
            .objects
            .fetch(&source, &spare, self.pipeline.limits.max_compressed_bytes)
            .await?;
        let read = tokio::task::spawn_blocking(move || digest_and_record(file)).await;
        let _ = tokio::fs::remove_file(&spare).await;
        let (digest, record) =
            read.map_err(|e| Error::Internal(format!("import task failed: {e}")))??;
        let text = |key: &str| {
            record
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let manifest_path = match text("manifest-path") {
            p if p.is_empty() => "convox.yml".to_owned(),
            p => p,
        };
        slipway_domain::validate_object_key(&manifest_path)
            .map_err(|e| Error::InvalidArgument(format!("{RECORD}: manifest-path: {e}")))?;
        let description = text("description");
        let git_sha = text("git-sha");
        for (name, value) in [("description", &description), ("git-sha", &git_sha)] {
            if value.len() > 4096 || value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(Error::InvalidArgument(format!(
                    "{RECORD}: {name}: at most 4096 bytes of printable text"
                )));
            }
        }
        // A keyed import is one build per key: a retried upload of the same
        // archive (the gateway stored it again under a new object) answers
        // the first build; another archive under a used key is refused.
        // The archive's bytes, not where they were stored, identify it.
        let claim =
            key.map(|key| Claim::new(key, "ImportBuild", format!("{}\n{digest}", app.as_str())));
        let build = self
            .create_keyed(
                NewBuild {
                    app: app.clone(),
                    source,
                    manifest_path,
                    description,
                    git_sha,
                },
                actor,
                claim,
            )
            .await?;
        let deadline = tokio::time::Instant::now() + IMPORT_WAIT;
        loop {
            let now = self.get(app, &build.id).await?;
            match now.status {
                BuildStatus::Complete => return Ok(now),
                BuildStatus::Failed | BuildStatus::Cancelled => {
                    return Err(Error::FailedPrecondition(format!(
                        "import failed: {}",
                        now.reason
                    )));
                }
                BuildStatus::Created | BuildStatus::Running => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::FailedPrecondition(format!(
                    "import: build {} is still running; see `builds logs {}`",
                    build.id, build.id
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The export's record: what an import needs, as Convox's Build JSON
/// names it, plus where the manifest is.
fn record(build: &Build) -> Vec<u8> {
    let json = serde_json::json!({
        "id": build.id.as_str(),
        "app": build.app.as_str(),
        "description": build.description,
        "git-sha": build.git_sha,
        "manifest": build.manifest,
        "manifest-path": build.manifest_path,
        "release": build.release.clone().unwrap_or_default(),
        "status": build.status.as_str(),
        "started": build.started.to_rfc3339(),
    });
    serde_json::to_vec_pretty(&json).expect("a JSON value serialises")
}

/// `base/rel` if `rel` is relative, with no `..` and at least one name.
fn inside(base: &Path, rel: &str) -> Option<PathBuf> {
    let mut out = base.to_path_buf();
    let mut named = false;
    for component in Path::new(rel).components() {
        match component {
            Component::Normal(part) => {
                out.push(part);
                named = true;
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    named.then_some(out)
}

/// Writes a new private file (and its parent directories).
fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    let io = |e: std::io::Error| Error::Internal(format!("export: write {}: {e}", path.display()));
    if let Some(parent) = path.parent() {
        slipway_storage::files::create_private_dir_all(parent).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(contents).map_err(io)
}

/// The snapshot a build's artifacts live in: the `sha256-…` directory every
/// `file://` artifact is inside; `None` when every artifact is a registry
/// image (a build of the oci builder).
fn snapshot_root(build: &Build) -> Result<Option<PathBuf>> {
    let mut root: Option<PathBuf> = None;
    for artifact in build.artifacts.values() {
        // Anything else is a registry image: built by the oci builder, or
        // a prebuilt `image:` service, which the manifest names anyway.
        let Some(path) = artifact.strip_prefix("file://") else {
            continue;
        };
        let path = Path::new(path);
        let mut top = PathBuf::new();
        let mut found = false;
        for component in path.components() {
            top.push(component);
            if let Component::Normal(name) = component
                && name.to_string_lossy().starts_with("sha256-")
            {
                found = true;
                break;
            }
        }
        if !found {
            return Err(Error::Internal(format!(
                "build {}: artifact outside a snapshot",
                build.id
            )));
        }
        match &root {
            Some(r) if *r != top => {
                return Err(Error::Internal(format!(
                    "build {}: artifacts in two snapshots",
                    build.id
                )));
            }
            _ => root = Some(top),
        }
    }
    match root {
        Some(root) => Ok(Some(root)),
        None if build.artifacts.is_empty() => Err(Error::FailedPrecondition(
            "no services found to export".into(),
        )),
        None => Ok(None),
    }
}

/// Writes the archive to a temporary file under `work_root`, unlinked at
/// once, and returns it rewound.
fn write_archive(work_root: &Path, record: &[u8], root: &Path) -> Result<std::fs::File> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| Error::Internal(format!("export: {what}: {e}"))
    };
    slipway_storage::files::create_private_dir_all(work_root).map_err(io("work directory"))?;
    // Created private and new, then unlinked: only this handle reaches it.
    let path = work_root.join(format!("export-{:016x}.tgz", rand::random::<u64>()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io("temporary file"))?;
    std::fs::remove_file(&path).map_err(io("unlink the temporary file"))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    // In-tree symlinks stay links; the importer's unpacking checks them.
    tar.follow_symlinks(false);
    let mut header = tar::Header::new_gnu();
    header.set_size(record.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(0);
    tar.append_data(&mut header, RECORD, record)
        .map_err(io("write the record"))?;
    tar.append_dir_all(".", root)
        .map_err(io("write the tree"))?;
    let gz = tar.into_inner().map_err(io("finish the tar"))?;
    let mut file = gz.finish().map_err(io("finish the gzip stream"))?;
    file.flush().map_err(io("flush"))?;
    std::io::Seek::rewind(&mut file).map_err(io("rewind"))?;
    Ok(file)
}

/// Reads the record, which must be the archive's first entry, a regular
/// file of at most [`MAX_RECORD`] bytes holding a JSON object.
/// The archive's SHA-256 (hex) and its record.
fn digest_and_record(
    mut file: std::fs::File,
) -> Result<(String, serde_json::Map<String, serde_json::Value>)> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .map_err(|e| Error::Internal(format!("read the uploaded archive: {e}")))?;
    std::io::Seek::rewind(&mut file).map_err(|e| Error::Internal(format!("rewind: {e}")))?;
    let digest = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((digest, read_record(file)?))
}

fn read_record(file: std::fs::File) -> Result<serde_json::Map<String, serde_json::Value>> {
    let not_export = |why: &str| {
        Error::InvalidArgument(format!(
            "not a build export ({why}): an export starts with {RECORD}; make one with `builds export`"
        ))
    };
    let mut magic = [0u8; 2];
    let mut file = file;
    if file.read_exact(&mut magic).is_err() || magic != [0x1f, 0x8b] {
        return Err(not_export("not a gzip'd tar archive"));
    }
    std::io::Seek::rewind(&mut file).map_err(|e| Error::Internal(format!("rewind: {e}")))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut entries = archive
        .entries()
        .map_err(|_| not_export("unreadable archive"))?;
    let mut entry = match entries.next() {
        Some(Ok(entry)) => entry,
        _ => return Err(not_export("empty or unreadable archive")),
    };
    let name = entry
        .path()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.trim_start_matches("./") != RECORD
        || entry.header().entry_type() != tar::EntryType::Regular
    {
        return Err(not_export("its first entry is not the record"));
    }
    if entry.header().size().unwrap_or(u64::MAX) > MAX_RECORD {
        return Err(not_export("the record is too large"));
    }
    let mut text = Vec::new();
    (&mut entry)
        .take(MAX_RECORD + 1)
        .read_to_end(&mut text)
        .map_err(|_| not_export("unreadable record"))?;
    match serde_json::from_slice(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(not_export("the record is not a JSON object")),
    }
}
