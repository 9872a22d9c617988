//! The oci builder (for Kubernetes): each service with `build:` becomes an
//! OCI image built from its Dockerfile with `buildah` and pushed to the
//! configured registry as `<registry>/<app>:<service>.<build-id>`; services
//! with only `image:` use that image as is.
//!
//! buildah runs rootless-friendly and daemonless (`--storage-driver vfs
//! --isolation chroot`) with its own storage under the data directory, so
//! builds never touch the host's container storage. The artifact recorded is
//! `<tag>@<digest>`: readable, and immutable for the runtime.
//!
//! Exports carry each built image as an OCI archive
//! ([`OciBuilder::export_image`], at [`export_image_path`] in the export's
//! tree). Importing an export is a build of that tree: a service whose
//! image the tree carries is not built again but pushed from the archive
//! under this build's tag, to this rack's registry.

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::{Artifacts, BuildError, BuildJob, Builder, run_logged, service_dir};

/// Builds images with buildah and pushes them.
#[derive(Clone, Debug)]
pub struct OciBuilder {
    buildah: PathBuf,
    registry: String,
    insecure: bool,
    storage: PathBuf,
}

impl OciBuilder {
    /// A builder pushing to `registry` (`host:port[/path]`), keeping buildah
    /// state under `storage`. Loopback registries are always used without TLS
    /// verification; others only when `insecure`.
    pub fn new(buildah: PathBuf, registry: &str, insecure: bool, storage: PathBuf) -> Self {
        let registry = registry.trim_end_matches('/').to_owned();
        let insecure = insecure || is_loopback(&registry);
        Self {
            buildah,
            registry,
            insecure,
            storage,
        }
    }

    fn buildah(&self) -> Command {
        let mut command = Command::new(&self.buildah);
        command
            .arg("--root")
            .arg(self.storage.join("root"))
            .arg("--runroot")
            .arg(self.storage.join("run"))
            .args(["--storage-driver", "vfs"])
            .env("BUILDAH_ISOLATION", "chroot");
        command
    }

    /// The tag of `service`'s image for a build.
    pub fn tag(&self, app: &str, service: &str, build: &str) -> String {
        format!("{}/{app}:{service}.{build}", self.registry)
    }

    /// Whether `artifact` is the image this builder pushed for `service` of
    /// build `build` of `app` (`<tag>@sha256:…`), not an `image:` service's.
    pub fn built_here(&self, app: &str, service: &str, build: &str, artifact: &str) -> bool {
        artifact
            .strip_prefix(&self.tag(app, service, build))
            .and_then(|rest| rest.strip_prefix("@sha256:"))
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    }

    /// Writes the image `artifact` (`<tag>@<digest>`, as a build recorded
    /// it) as an OCI archive at `out`: pulled from the registry by digest,
    /// pushed to the file, and removed from buildah's storage again.
    pub async fn export_image(&self, artifact: &str, out: &Path) -> Result<(), BuildError> {
        let by_digest = by_digest(artifact).ok_or_else(|| {
            BuildError::Failed(format!(
                "{artifact:?} is not an image reference with a digest"
            ))
        })?;
        let never = CancellationToken::new();
        let mut pull = self.buildah();
        pull.args(["pull", "--quiet"]);
        if self.insecure {
            pull.arg("--tls-verify=false");
        }
        pull.arg(format!("docker://{by_digest}"));
        let id = image_id(&capture(pull, &format!("buildah pull {by_digest}"), &never).await?)?;
        let mut push = self.buildah();
        push.arg("push")
            .arg(&id)
            .arg(format!("oci-archive:{}", out.display()));
        let pushed = capture(push, "buildah push to an OCI archive", &never).await;
        self.remove_image(&id).await;
        pushed.map(drop)
    }

    /// Pushes the image in the OCI archive `archive` (from an export) as
    /// `tag`, in place of building it.
    async fn import_image(
        &self,
        name: &str,
        archive: &Path,
        tag: &str,
        job: &BuildJob<'_>,
    ) -> Result<(), BuildError> {
        job.log.line(format!(
            "Service {name}: importing its image from the export"
        ));
        let mut pull = self.buildah();
        pull.args(["pull", "--quiet"])
            .arg(format!("oci-archive:{}", archive.display()));
        let out = capture(
            pull,
            &format!("buildah pull of the image of {name}"),
            job.cancel,
        )
        .await;
        let id = image_id(&out?)?;
        let mut retag = self.buildah();
        retag.arg("tag").arg(&id).arg(tag);
        let tagged = capture(retag, &format!("buildah tag for {name}"), job.cancel).await;
        if tagged.is_err() {
            self.remove_image(&id).await;
        }
        tagged.map(drop)
    }

    /// Removes a local image (a cache: the registry has it); best effort.
    async fn remove_image(&self, image: &str) {
        let mut rmi = self.buildah();
        rmi.args(["rmi", "--force", image]);
        if let Err(e) = capture(rmi, "buildah rmi", &CancellationToken::new()).await {
            tracing::warn!("failed to remove local image {image}: {e}");
        }
    }
}

/// Where an export's tree carries the OCI archive of `service`'s image.
pub fn export_image_path(service: &str) -> String {
    format!(".slipway-images/{service}.oci.tar")
}

/// `<repository>@<digest>` from `<repository>:<tag>@<digest>` (registries
/// are asked by digest alone: a reference with both is refused).
fn by_digest(artifact: &str) -> Option<String> {
    let (named, digest) = artifact.split_once('@')?;
    if !digest.starts_with("sha256:") {
        return None;
    }
    let slash = named.rfind('/').map_or(0, |i| i + 1);
    let repository = match named[slash..].rfind(':') {
        Some(colon) => &named[..slash + colon],
        None => named,
    };
    Some(format!("{repository}@{digest}"))
}

/// The image id `buildah pull --quiet` printed (its last line).
fn image_id(stdout: &str) -> Result<String, BuildError> {
    let id = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim();
    if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_owned())
    } else {
        Err(BuildError::Failed(format!(
            "buildah pull printed no image id (got {:?})",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// Runs `command` to its end and returns its standard output; a failure
/// says what ran and the last line it wrote to standard error.
async fn capture(
    mut command: Command,
    what: &str,
    cancel: &CancellationToken,
) -> Result<String, BuildError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let run = command.output();
    let output = tokio::select! {
        out = run => out.map_err(|e| BuildError::Failed(format!("{what}: could not start: {e}")))?,
        () = cancel.cancelled() => return Err(BuildError::Cancelled),
    };
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    Err(BuildError::Failed(format!(
        "{what} failed ({}): {}",
        output.status,
        last.chars().take(400).collect::<String>()
    )))
}

/// Whether a registry address names this machine.
fn is_loopback(registry: &str) -> bool {
    let host = registry.split('/').next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[async_trait::async_trait]
impl Builder for OciBuilder {
    fn name(&self) -> &'static str {
        "oci"
    }

    fn oci(&self) -> Option<&OciBuilder> {
        Some(self)
    }

    async fn build(&self, job: BuildJob<'_>) -> Result<Artifacts, BuildError> {
        let mut out = Artifacts::new();
        for (name, service) in &job.manifest.services {
            let Some(build) = &service.build else {
                let image = service.image.clone().ok_or_else(|| {
                    BuildError::Failed(format!(
                        "service {name}: the oci builder needs build or image"
                    ))
                })?;
                job.log.line(format!("Service {name}: using image {image}"));
                out.insert(name.clone(), image);
                continue;
            };
            let tag = self.tag(job.app.as_str(), name, job.build.as_str());
            // An export's tree carries the image: push it instead of building.
            let exported = job.source.join(export_image_path(name));
            let imported = std::fs::symlink_metadata(&exported).is_ok_and(|m| m.is_file());
            if imported {
                self.import_image(name, &exported, &tag, &job).await?;
            } else {
                self.build_image(name, build, &tag, &job).await?;
            }
            let artifact = self.push(name, &tag, &job).await?;
            job.log.line(format!("Service {name}: {artifact}"));
            out.insert(name.clone(), artifact);
        }
        Ok(out)
    }
}

impl OciBuilder {
    /// Builds `service`'s image from its Dockerfile as `tag`.
    async fn build_image(
        &self,
        name: &str,
        build: &slipway_domain::manifest::BuildSpec,
        tag: &str,
        job: &BuildJob<'_>,
    ) -> Result<(), BuildError> {
        let context = service_dir(job.source, name, &build.path)?;
        let dockerfile_name = build.manifest.as_deref().unwrap_or("Dockerfile");
        let dockerfile = inside(&context, dockerfile_name).ok_or_else(|| {
            BuildError::Failed(format!(
                "service {name}: build file {dockerfile_name:?} must stay inside the build path"
            ))
        })?;
        // Links inside the source were checked to stay inside it when unpacking.
        if !std::fs::metadata(&dockerfile).is_ok_and(|m| m.is_file()) {
            return Err(BuildError::Failed(format!(
                "service {name}: {dockerfile_name} not found in build path {:?}",
                build.path
            )));
        }
        job.log.line(format!("Building {name}: {tag}"));
        let mut bud = self.buildah();
        bud.args(["bud", "--isolation", "chroot", "--layers=false", "-f"])
            .arg(&dockerfile)
            .args(["-t", tag])
            .arg(&context);
        run_logged(bud, &format!("buildah bud for {name}"), job.log, job.cancel).await
    }

    /// Pushes the local image `tag` to the registry, removes it locally,
    /// and returns the artifact: `<tag>@<digest>`.
    async fn push(&self, name: &str, tag: &str, job: &BuildJob<'_>) -> Result<String, BuildError> {
        job.log.line(format!("Pushing {tag}"));
        let digest_file = job.work.join(format!("{name}.digest"));
        let mut push = self.buildah();
        push.arg("push");
        if self.insecure {
            push.arg("--tls-verify=false");
        }
        push.arg("--digestfile")
            .arg(&digest_file)
            .arg(tag)
            .arg(format!("docker://{tag}"));
        run_logged(
            push,
            &format!("buildah push for {name}"),
            job.log,
            job.cancel,
        )
        .await?;
        let digest = std::fs::read_to_string(&digest_file)
            .map_err(BuildError::io(format!("read digest of {name}")))?
            .trim()
            .to_owned();
        if !digest.starts_with("sha256:") {
            return Err(BuildError::Failed(format!(
                "buildah push for {name}: unexpected digest {digest:?}"
            )));
        }
        // The image lives in the registry now; local storage is a cache
        // we do not need (vfs layers are full copies).
        let mut rmi = self.buildah();
        rmi.args(["rmi", tag]);
        if let Err(e) = run_logged(rmi, "buildah rmi", job.log, job.cancel).await {
            tracing::warn!("failed to remove local image {tag}: {e}");
        }
        Ok(format!("{tag}@{digest}"))
    }
}

/// `base/rel` if `rel` is relative and has no `..`.
fn inside(base: &Path, rel: &str) -> Option<PathBuf> {
    let mut out = base.to_path_buf();
    for component in Path::new(rel).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_skip_tls_verification() {
        for r in [
            "127.0.0.1:5000",
            "localhost:5000/x",
            "[::1]:5000",
            "127.0.0.1",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "registry.example.com",
            "10.0.0.1:5000",
            "example.com:443/lo",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn tags_name_app_service_and_build() {
        let b = OciBuilder::new("buildah".into(), "127.0.0.1:5000/", false, "/tmp".into());
        assert_eq!(
            b.tag("myapp", "web", "BABCDEFGHIJ"),
            "127.0.0.1:5000/myapp:web.BABCDEFGHIJ"
        );
        assert!(b.insecure);
    }

    #[test]
    fn build_files_stay_inside() {
        assert!(inside(Path::new("/s"), "../Dockerfile").is_none());
        assert!(inside(Path::new("/s"), "/etc/passwd").is_none());
        assert_eq!(
            inside(Path::new("/s"), "./d/Dockerfile").unwrap(),
            PathBuf::from("/s/d/Dockerfile")
        );
    }
}
