//! The oci builder (for Kubernetes): each service with `build:` becomes an
//! OCI image built from its Dockerfile with `buildah` and pushed to the
//! configured registry as `<registry>/<app>:<service>.<build-id>`; services
//! with only `image:` use that image as is.
//!
//! buildah runs rootless-friendly and daemonless (`--storage-driver vfs
//! --isolation chroot`) with its own storage under the data directory, so
//! builds never touch the host's container storage. The artifact recorded is
//! `<tag>@<digest>`: readable, and immutable for the runtime.

use std::path::{Component, Path, PathBuf};

use tokio::process::Command;

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
            let tag = self.tag(job.app.as_str(), name, job.build.as_str());
            job.log.line(format!("Building {name}: {tag}"));
            let mut bud = self.buildah();
            bud.args(["bud", "--isolation", "chroot", "--layers=false", "-f"])
                .arg(&dockerfile)
                .args(["-t", &tag])
                .arg(&context);
            run_logged(bud, &format!("buildah bud for {name}"), job.log, job.cancel).await?;

            job.log.line(format!("Pushing {tag}"));
            let digest_file = job.work.join(format!("{name}.digest"));
            let mut push = self.buildah();
            push.arg("push");
            if self.insecure {
                push.arg("--tls-verify=false");
            }
            push.arg("--digestfile")
                .arg(&digest_file)
                .arg(&tag)
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
            rmi.args(["rmi", &tag]);
            if let Err(e) = run_logged(rmi, "buildah rmi", job.log, job.cancel).await {
                tracing::warn!("failed to remove local image {tag}: {e}");
            }
            let artifact = format!("{tag}@{digest}");
            job.log.line(format!("Service {name}: {artifact}"));
            out.insert(name.clone(), artifact);
        }
        Ok(out)
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
