//! cpu limits of the local runtime's processes (`scale --cpu`), where the
//! machine allows them: a writable cgroup v2 hierarchy whose `cpu`
//! controller the service can hand to cgroups of its own. Each limited
//! process gets a cgroup of its own, `<service's cgroup>/slipway-apps/
//! <app>.<process>`, whose `cpu.max` holds it to its millicores (per
//! process, as a container's limit is), removed when the process is gone.
//!
//! Set-up, once per service: the service's own cgroup must offer `cpu`
//! (`cgroup.controllers`). A cgroup with processes cannot hand controllers
//! to its children, so the service first moves itself into a leaf
//! (`slipway-service`) of its cgroup, then enables `+cpu` for the children
//! (`cgroup.subtree_control`) and for `slipway-apps`'. Anything that fails
//! (cgroup v1 only, a hybrid machine whose cpu controller is bound to v1,
//! a read-only or undelegated hierarchy, other processes in the service's
//! cgroup) leaves cpu unenforced, and `scale` says why.
//!
//! A process is placed by writing its pid to its cgroup after it is
//! spawned (the workspace forbids the unsafe `pre_exec`; std has no
//! `CLONE_INTO_CGROUP`), and its shell waits for that before it runs the
//! command ([`supervise::script`](super::supervise::script)), so nothing the
//! command starts escapes the limit.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The cgroup v2 cpu period written to `cpu.max`, in microseconds.
const PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel takes, in microseconds.
const MIN_QUOTA_US: u64 = 1_000;
/// The directory (under the service's cgroup) of the processes' cgroups.
pub(super) const APPS_DIR: &str = "slipway-apps";
/// The leaf the service moves itself into.
const SERVICE_LEAF: &str = "slipway-service";

/// Where limited processes' cgroups go, once set up.
#[derive(Debug)]
pub(super) struct CpuCgroups {
    /// `<service's cgroup>/slipway-apps`, with the cpu controller on for
    /// its children.
    base: PathBuf,
}

/// The machine's answer, detected and set up once per service.
static DETECTED: OnceLock<Result<CpuCgroups, String>> = OnceLock::new();

/// The cpu cgroups of this service, or why cpu cannot be enforced here.
pub(super) fn detected() -> Result<&'static CpuCgroups, &'static str> {
    DETECTED
        .get_or_init(CpuCgroups::detect)
        .as_ref()
        .map_err(String::as_str)
}

/// `Ok` when the local runtime enforces cpu on this machine, else why not
/// (for `scale`'s note).
pub fn cpu_enforced() -> Result<(), String> {
    detected().map(drop).map_err(str::to_owned)
}

impl CpuCgroups {
    fn detect() -> Result<Self, String> {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let mount =
            v2_mount(&read("/proc/self/mountinfo")).ok_or("no cgroup v2 on this machine")?;
        let cgroups = read("/proc/self/cgroup");
        let own = own_v2_path(&cgroups).ok_or("the service is in no cgroup v2 (cgroup v1 only)")?;
        let ours = mount.join(own.trim_start_matches('/'));
        let set_up = Self::set_up(&ours, std::process::id());
        match &set_up {
            Ok(c) => tracing::info!(cgroup = %c.base.display(), "cpu limits: cgroup v2"),
            Err(why) => tracing::info!("cpu limits are not enforced: {why}"),
        }
        set_up
    }

    /// Prepares `ours`, the service's cgroup (its process `pid`), to hold
    /// cgroups with the cpu controller.
    fn set_up(ours: &Path, pid: u32) -> Result<Self, String> {
        let controllers = std::fs::read_to_string(ours.join("cgroup.controllers"))
            .map_err(|e| format!("cgroup v2 at {} is not readable ({e})", ours.display()))?;
        if !has(&controllers, "cpu") {
            return Err(
                "the cpu controller is not in cgroup v2 here (on a hybrid machine it \
                        belongs to cgroup v1)"
                    .to_owned(),
            );
        }
        let unwritable = |what: &str, e: std::io::Error| {
            format!(
                "cgroup v2 at {} is not writable by the service ({what}: {e}); run it in a \
                 delegated cgroup (systemd Delegate=yes)",
                ours.display()
            )
        };
        let enabled = std::fs::read_to_string(ours.join("cgroup.subtree_control"))
            .map_err(|e| unwritable("cgroup.subtree_control", e))?;
        if !has(&enabled, "cpu") {
            let leaf = ours.join(SERVICE_LEAF);
            create_dir(&leaf).map_err(|e| unwritable(SERVICE_LEAF, e))?;
            std::fs::write(leaf.join("cgroup.procs"), pid.to_string())
                .map_err(|e| unwritable("moving the service into its leaf", e))?;
            std::fs::write(ours.join("cgroup.subtree_control"), "+cpu")
                .map_err(|e| unwritable("enabling cpu for its children", e))?;
        }
        let base = ours.join(APPS_DIR);
        create_dir(&base).map_err(|e| unwritable(APPS_DIR, e))?;
        std::fs::write(base.join("cgroup.subtree_control"), "+cpu")
            .map_err(|e| unwritable("enabling cpu for the processes' cgroups", e))?;
        Ok(Self { base })
    }

    /// The cgroup of process `id` of `app`.
    fn dir(&self, app: &str, id: &str) -> PathBuf {
        self.base.join(format!("{app}.{id}"))
    }

    /// Puts process `id` of `app` (OS process `pid`) in a cgroup of its own
    /// holding it to `millicores`.
    pub(super) fn limit(
        &self,
        app: &str,
        id: &str,
        pid: u32,
        millicores: u32,
    ) -> std::io::Result<()> {
        let dir = self.dir(app, id);
        create_dir(&dir)?;
        std::fs::write(dir.join("cpu.max"), cpu_max(millicores))?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
    }

    /// Removes the cgroup of a process that is gone (if it had one).
    pub(super) fn forget(&self, app: &str, id: &str) {
        let dir = self.dir(app, id);
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("failed to remove cgroup {}: {e}", dir.display()),
        }
    }
}

/// A directory, fine if it exists.
fn create_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Whether a space-separated controller list names `controller`.
fn has(list: &str, controller: &str) -> bool {
    list.split_whitespace().any(|c| c == controller)
}

/// `cpu.max` for `millicores`: the quota per [`PERIOD_US`].
pub(super) fn cpu_max(millicores: u32) -> String {
    let quota = (u64::from(millicores) * PERIOD_US / 1000).max(MIN_QUOTA_US);
    format!("{quota} {PERIOD_US}")
}

/// Where cgroup v2 is mounted, from `/proc/self/mountinfo`.
fn v2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The service's cgroup v2 path, from `/proc/self/cgroup` (`0::/path`).
fn own_v2_path(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millicores_become_a_quota_per_period() {
        assert_eq!(cpu_max(1000), "100000 100000");
        assert_eq!(cpu_max(250), "25000 100000");
        assert_eq!(cpu_max(2500), "250000 100000");
        assert_eq!(cpu_max(1), "1000 100000", "the kernel's smallest quota");
    }

    #[test]
    fn the_v2_mount_and_own_cgroup_are_read_from_proc() {
        let hybrid = "31 1 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                      42 31 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            v2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            v2_mount("42 31 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"),
            None
        );
        assert_eq!(
            own_v2_path("8:pids:/\n0::/system.slice/slipway.service\n"),
            Some("/system.slice/slipway.service")
        );
        assert_eq!(own_v2_path("9:name=systemd:/\n8:pids:/\n"), None);
    }

    /// A directory laid out like a cgroup v2 directory (the kernel's files
    /// as plain files).
    fn fake_cgroup(controllers: &str, subtree: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(dir.path().join("cgroup.subtree_control"), subtree).unwrap();
        dir
    }

    #[test]
    fn set_up_moves_the_service_to_a_leaf_and_hands_cpu_to_children() {
        let ours = fake_cgroup("cpuset cpu io memory pids", "");
        let cgroups = CpuCgroups::set_up(ours.path(), 4242).unwrap();
        let read = |p: &str| std::fs::read_to_string(ours.path().join(p)).unwrap();
        assert_eq!(read("slipway-service/cgroup.procs"), "4242");
        assert_eq!(read("cgroup.subtree_control"), "+cpu");
        assert_eq!(read("slipway-apps/cgroup.subtree_control"), "+cpu");

        cgroups.limit("web-app", "web-0badcafe", 777, 250).unwrap();
        assert_eq!(
            read("slipway-apps/web-app.web-0badcafe/cpu.max"),
            "25000 100000"
        );
        assert_eq!(
            read("slipway-apps/web-app.web-0badcafe/cgroup.procs"),
            "777"
        );
        // The kernel empties a cgroup when its process exits; then it goes.
        for file in ["cpu.max", "cgroup.procs"] {
            std::fs::remove_file(
                ours.path()
                    .join("slipway-apps/web-app.web-0badcafe")
                    .join(file),
            )
            .unwrap();
        }
        cgroups.forget("web-app", "web-0badcafe");
        assert!(
            !ours
                .path()
                .join("slipway-apps/web-app.web-0badcafe")
                .exists()
        );
    }

    #[test]
    fn a_service_whose_cgroup_hands_out_cpu_already_stays_where_it_is() {
        let ours = fake_cgroup("cpu memory", "cpu memory");
        CpuCgroups::set_up(ours.path(), 1).unwrap();
        assert!(!ours.path().join("slipway-service").exists());
    }

    #[test]
    fn no_cpu_controller_in_v2_is_said_plainly() {
        let ours = fake_cgroup("hugetlb", "");
        let why = CpuCgroups::set_up(ours.path(), 1).unwrap_err();
        assert!(why.contains("cpu controller is not in cgroup v2"), "{why}");
        let missing = CpuCgroups::set_up(Path::new("/nonexistent-cgroup"), 1).unwrap_err();
        assert!(missing.contains("not readable"), "{missing}");
    }
}
