//! Supervision of one OS process, whatever it runs for: spawning it (own
//! process group, log file, marker, the app's working copy and user),
//! noticing its exit, probing its health, forwarding its output and
//! stopping it within a grace period. Nothing here knows about rollouts or
//! an app's state: the caller passes what to report to, so a process that is
//! not part of a rollout (a one-off) is supervised by the same code.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use slipway_domain::Env;
use slipway_domain::manifest::Health;

use super::health;
use super::isolation::Launch;
use super::process::{self, Proc, Status};

/// How often a process is probed until it first passes its health check.
const FIRST_HEALTH_POLL: Duration = Duration::from_millis(100);
/// Health-check failures in a row that make a process unhealthy.
const HEALTH_FAILURES: u32 = 3;
/// Env vars of the rollout service that app processes inherit.
pub(super) const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];
/// How often output is forwarded while a process runs.
const OUTPUT_POLL: Duration = Duration::from_millis(200);

/// What to spawn: `sh -c <command>` with the app's env, `PORT` and the
/// `SLIPWAY_*` identity, output appended to `log`.
pub(super) struct Spawn<'a> {
    /// The process id (also its marker, so re-adoption can find it).
    pub(super) id: &'a str,
    pub(super) app: &'a str,
    pub(super) service: &'a str,
    pub(super) release: &'a str,
    pub(super) command: &'a str,
    /// The env the app's manifest gives this process.
    pub(super) env: &'a Env,
    pub(super) port: u16,
    pub(super) log: &'a Path,
    /// Where and as whom it runs.
    pub(super) launch: &'a Launch,
    /// Memory set by hand (`scale --memory`), in MiB; 0 is no limit.
    pub(super) memory_mib: u32,
    /// Whether the caller puts it in a cpu cgroup once spawned: the shell
    /// waits for that before the command runs.
    pub(super) cpu_cgroup: bool,
}

/// How long a process's shell waits to be put in its cpu cgroup (in
/// hundredths of a second) before it gives up with exit status 125.
const CGROUP_WAIT_CS: u32 = 500;

/// The shell script a process runs: its command, after a data-size limit
/// (`RLIMIT_DATA`: heap and private writable mappings, which is what a
/// process's memory use grows) when memory is set. The shell's `ulimit`
/// sets it because the workspace forbids the unsafe `pre_exec`; it sets
/// both the soft and the hard limit, so the app cannot raise it again.
/// With `cpu_cgroup`, the shell first waits until it is in its cpu cgroup
/// (the caller moves it there once spawned), so nothing the command starts
/// runs outside the limit.
pub(super) fn script(command: &str, memory_mib: u32, cpu_cgroup: bool) -> String {
    let mut script = String::new();
    if cpu_cgroup {
        let dir = super::cgroup::APPS_DIR;
        script.push_str(&format!(
            "i=0; until grep -qs '/{dir}/' /proc/$$/cgroup; do \
             [ $i -ge {CGROUP_WAIT_CS} ] && exit 125; i=$((i+1)); sleep 0.01; done\n"
        ));
    }
    if memory_mib > 0 {
        let kib = u64::from(memory_mib) * 1024;
        script.push_str(&format!("ulimit -d {kib} || exit 126\n"));
    }
    script.push_str(command);
    script
}

/// Spawns the process in a process group of its own, detached from us (it
/// outlives a crash of the service; re-adoption finds it again).
pub(super) fn spawn(s: &Spawn<'_>) -> std::io::Result<tokio::process::Child> {
    if let Some(parent) = s.log.parent() {
        slipway_storage::files::create_private_dir_all(parent)?;
    }
    let out = slipway_storage::files::private_file_options()
        .create(true)
        .append(true)
        .open(s.log)?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script(s.command, s.memory_mib, s.cpu_cgroup))
        .env_clear();
    for key in INHERITED_ENV {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.envs(s.env.iter())
        .env("PORT", s.port.to_string())
        .env("SLIPWAY_APP", s.app)
        .env("SLIPWAY_SERVICE", s.service)
        .env("SLIPWAY_RELEASE", s.release)
        .env(process::MARKER, s.id)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(false);
    s.launch.apply(&mut cmd);
    cmd.spawn()
}

/// Waits for the process to exit (`child` if we spawned it, else by
/// polling its pid), marks it gone, kills what it left in its group, and
/// says how it ended.
pub(super) async fn wait_exit(proc: &Proc, child: Option<tokio::process::Child>) -> String {
    let how = match child {
        Some(mut child) => match child.wait().await {
            Ok(status) => process::describe_exit(status),
            Err(e) => format!("could not be waited for ({e})"),
        },
        None => {
            process::wait_adopted(proc.pid).await;
            "exited".to_owned()
        }
    };
    proc.gone.cancel();
    // Whatever it left running in its group goes with it.
    proc.signal(Signal::SIGKILL);
    how
}

/// A change of a process's health, as the health watch reports it.
pub(super) enum HealthReport {
    /// It passes its check (or has none, once its grace is over).
    Passing,
    /// It failed its check enough times in a row; the text says how.
    Failing(String),
}

/// Probes the process's health until it is gone or stopping, and calls
/// `report` with each result that counts. A process with health checks
/// disabled passes at once; one without a port passes after its grace.
pub(super) async fn watch_health(
    proc: &Proc,
    health: Health,
    has_port: bool,
    report: impl Fn(HealthReport),
) {
    let grace_end = proc.started_at + Duration::from_secs(u64::from(health.grace_secs));
    if health.disabled || !has_port {
        if !health.disabled {
            tokio::select! {
                () = tokio::time::sleep_until(grace_end.into()) => {}
                () = proc.gone.cancelled() => return,
            }
        }
        report(HealthReport::Passing);
        return;
    }
    let interval = Duration::from_secs(u64::from(health.interval_secs.max(1)));
    let timeout = Duration::from_secs(u64::from(health.timeout_secs.max(1)));
    let mut failures = 0;
    let mut last_counted: Option<Instant> = None;
    loop {
        if proc.gone.is_cancelled() || proc.status() == Status::Stopping {
            return;
        }
        let result = health::probe(proc.port, &health.path, timeout).await;
        let now = Instant::now();
        match result {
            Ok(()) => {
                failures = 0;
                report(HealthReport::Passing);
            }
            Err(e) => {
                let due = last_counted
                    .is_none_or(|t| now.duration_since(t) + Duration::from_millis(50) >= interval);
                if now >= grace_end && due {
                    failures += 1;
                    last_counted = Some(now);
                    if failures >= HEALTH_FAILURES {
                        report(HealthReport::Failing(format!(
                            "health check GET {} failed {failures} times ({e})",
                            health.path
                        )));
                    }
                }
            }
        }
        let pause = if proc.lock().ever_healthy {
            interval
        } else {
            FIRST_HEALTH_POLL
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = proc.gone.cancelled() => return,
        }
    }
}

/// Forwards the process's output, line by line, to `emit` until it is
/// gone (what it writes last is flushed by whoever handles its exit).
pub(super) async fn forward_output(proc: &Proc, emit: impl Fn(String)) {
    loop {
        let lines = proc.tail.lock().await.pump(false).await;
        for line in lines {
            emit(line);
        }
        tokio::select! {
            () = proc.gone.cancelled() => return,
            () = tokio::time::sleep(OUTPUT_POLL) => {}
        }
    }
}

/// Lets the process's proxied connections finish, then SIGTERM, and
/// SIGKILL after `grace`; `on_kill` is told before the SIGKILL. The caller
/// takes it out of rotation first.
pub(super) async fn terminate(proc: &Proc, grace: Duration, on_kill: impl FnOnce()) {
    let drained = async {
        while proc.connections() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(grace, drained).await;
    proc.signal(Signal::SIGTERM);
    if tokio::time::timeout(grace, proc.gone.cancelled())
        .await
        .is_err()
    {
        on_kill();
        proc.signal(Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(10), proc.gone.cancelled()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::script;

    #[test]
    fn memory_set_by_hand_becomes_a_data_limit_before_the_command() {
        assert_eq!(script("exec ./web", 0, false), "exec ./web");
        assert_eq!(
            script("exec ./web", 256, false),
            "ulimit -d 262144 || exit 126\nexec ./web"
        );
    }

    #[test]
    fn a_cpu_limited_shell_waits_for_its_cgroup_first() {
        let s = script("exec ./web", 256, true);
        let lines: Vec<&str> = s.lines().collect();
        assert!(
            lines[0].contains("grep -qs '/slipway-apps/' /proc/$$/cgroup"),
            "{s}"
        );
        assert!(lines[0].contains("exit 125"), "{s}");
        assert_eq!(lines[1..], ["ulimit -d 262144 || exit 126", "exec ./web"]);
        // Never placed (as on a machine without cgroup v2): it gives up.
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(script("echo ran", 0, true).replace("-ge 500", "-ge 3"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125));
        assert!(out.stdout.is_empty());
    }

    #[test]
    fn the_shell_holds_the_process_to_it() {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(script("grep 'Max data size' /proc/self/limits", 64, false))
            .output()
            .unwrap();
        let line = String::from_utf8(out.stdout).unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[3..5], ["67108864", "67108864"], "{line}");
    }
}
