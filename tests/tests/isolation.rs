//! What an app can reach on the embedded rack: the modes of everything in
//! the data directory, and, on a rack running as root, an app that tries
//! from inside to read the rack's keys and databases and another app's
//! environment and files, and to change its own artifact.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use slipway_e2e::{TestRack, eventually, example, ok_stdout};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Every file and directory below `root` (links are not followed), with
/// its mode.
fn walk(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.file_type().is_symlink() {
                continue;
            }
            if meta.is_dir() {
                todo.push(entry.path());
            }
            out.push((entry.path(), meta.permissions().mode() & 0o7777));
        }
    }
    out
}

/// The release working copies of `app` under the rack's apps directory.
fn working_copies(apps: &Path, app: &str) -> Vec<PathBuf> {
    let mut copies = Vec::new();
    for release in std::fs::read_dir(apps.join(app))
        .into_iter()
        .flatten()
        .flatten()
    {
        for copy in std::fs::read_dir(release.path()).unwrap().flatten() {
            if !copy.file_name().to_string_lossy().starts_with('.') {
                copies.push(copy.path());
            }
        }
    }
    copies
}

/// Pids of the processes of `app` of the rack whose apps directory is
/// `apps` (other tests' racks run apps of the same names).
fn pids_of(apps: &Path, app: &str) -> Vec<u32> {
    let dir = apps.join(app);
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
        })
        .collect()
}

fn uid_of(pid: u32) -> u32 {
    std::fs::metadata(format!("/proc/{pid}")).unwrap().uid()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_in_the_data_dir_is_owner_only() {
    let rack = TestRack::start().await;
    let data = rack.dir().join("rack");
    // The file a rack without --password keeps its password in.
    slipway_rack::load_or_create_password(&data.join("password")).unwrap();
    let cwd = tempfile::tempdir().unwrap();
    ok_stdout(
        &rack.slipway(cwd.path(), &["apps", "create", "myapp"]).await,
        "apps create",
    );
    let app = example("myapp");
    ok_stdout(
        &rack
            .slipway(
                cwd.path(),
                &["deploy", app.to_str().unwrap(), "-a", "myapp"],
            )
            .await,
        "deploy",
    );

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&data), 0o700, "the data dir");
    for key in [
        "password",
        "service-token-key",
        "release/env.key",
        "rollout/spec.key",
    ] {
        assert_eq!(mode(&data.join(key)), 0o600, "{key}");
    }
    let entries = walk(&data);
    // What a deploy leaves: databases, the source, the build log, the
    // artifact, process logs.
    for wanted in [
        "release/release.db",
        "build/build.db",
        "rollout/rollout.db",
        "build/objects",
        "build/artifacts",
        "rollout/logs/myapp",
    ] {
        assert!(
            entries
                .iter()
                .any(|(p, _)| p.starts_with(data.join(wanted))),
            "{wanted} missing from {entries:#?}"
        );
    }
    let open: Vec<String> = entries
        .iter()
        .filter(|(_, mode)| mode & 0o077 != 0)
        .map(|(p, mode)| format!("{mode:04o} {}", p.display()))
        .collect();
    assert!(
        open.is_empty(),
        "group- or world-accessible in the data dir:\n{}",
        open.join("\n")
    );
}

/// What the probe app tries; `$RACK`, `$APPS`, `$VICTIM_PID`, `$VICTIM_FILE`,
/// `$RACK_PID` are filled in. Each line of `results.txt` is `<what> <how>`:
/// `READ`/`WROTE` when it worked, `denied` on EACCES, else the error.
const PROBE: &str = r##"#!/bin/sh
out=results.txt
: > "$out.tmp"
try() {
  what=$1; shift
  if err=$("$@" 2>&1 >/dev/null); then
    echo "$what OK" >> "$out.tmp"
  else
    case "$err" in
      *"Permission denied"*) echo "$what denied" >> "$out.tmp" ;;
      *) echo "$what error: $err" | tr '\n' ' ' >> "$out.tmp"; echo >> "$out.tmp" ;;
    esac
  fi
}
try service-token-key cat "$RACK/service-token-key"
try password cat "$RACK/password"
try env.key cat "$RACK/release/env.key"
try spec.key cat "$RACK/rollout/spec.key"
try release.db cat "$RACK/release/release.db"
try build.db cat "$RACK/build/build.db"
try rollout.db cat "$RACK/rollout/rollout.db"
try data-dir ls "$RACK"
try rack-environ cat "/proc/$RACK_PID/environ"
try victim-environ cat "/proc/$VICTIM_PID/environ"
try victim-files cat "$VICTIM_FILE"
try victim-dir ls "$APPS/victim"
try apps-dir ls "$APPS"
try artifact sh -c "echo pwned >> '$RACK/build/artifacts/'$(basename "$PWD")/probe.sh"
# Its own copy is its own: a later build must not see this.
try own-copy sh -c 'echo "# pwned" >> probe.sh'
try own-environ cat /proc/self/environ
echo "uid $(id -u)" >> "$out.tmp"
echo "groups $(id -G)" >> "$out.tmp"
mv "$out.tmp" "$out"
exec sleep 100000
"##;

const PROBE_MANIFEST: &str = "services:
  probe:
    build: .
    command: sh probe.sh
    health:
      grace: 1
      interval: 1
    termination:
      grace: 1
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_on_a_root_rack_reaches_nothing_of_the_rack_or_other_apps() {
    if !is_root() {
        eprintln!(
            "SKIPPED: the rack does not run as root here, so apps share its user \
             (run the tests as root, as CI does)"
        );
        return;
    }
    let rack = TestRack::start().await;
    let data = rack.dir().join("rack");
    let apps = rack.dir().join("rack-apps");
    slipway_rack::load_or_create_password(&data.join("password")).unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let run = |args: &'static [&'static str]| rack.slipway(cwd.path(), args);

    // A victim app, with its manifest's env standing for its secrets.
    ok_stdout(
        &run(&["apps", "create", "victim"]).await,
        "apps create victim",
    );
    let myapp = example("myapp");
    ok_stdout(
        &rack
            .slipway(
                cwd.path(),
                &["deploy", myapp.to_str().unwrap(), "-a", "victim"],
            )
            .await,
        "deploy victim",
    );
    let victim_pid = *pids_of(&apps, "victim").first().expect("a victim process");
    let environ = std::fs::read(format!("/proc/{victim_pid}/environ")).unwrap();
    assert!(
        String::from_utf8_lossy(&environ).contains("GREETING=Hello from Slipway"),
        "the env is there to be stolen"
    );
    let victim_copy = working_copies(&apps, "victim")
        .pop()
        .expect("the victim's working copy");
    let victim_file = victim_copy.join("app.py");
    assert!(victim_file.is_file());

    // The probe, with the paths it is after written into its source.
    let source = tempfile::tempdir().unwrap();
    let script = PROBE
        .replace("$RACK_PID", &std::process::id().to_string())
        .replace("$RACK", data.to_str().unwrap())
        .replace("$APPS", apps.to_str().unwrap())
        .replace("$VICTIM_PID", &victim_pid.to_string())
        .replace("$VICTIM_FILE", victim_file.to_str().unwrap());
    std::fs::write(source.path().join("probe.sh"), &script).unwrap();
    std::fs::write(source.path().join("convox.yml"), PROBE_MANIFEST).unwrap();
    let source_dir = source.path().to_str().unwrap().to_owned();
    ok_stdout(
        &run(&["apps", "create", "probe"]).await,
        "apps create probe",
    );
    ok_stdout(
        &rack
            .slipway(cwd.path(), &["deploy", &source_dir, "-a", "probe"])
            .await,
        "deploy probe",
    );
    let results = eventually(Duration::from_secs(30), "the probe's results", || {
        let copies = working_copies(&apps, "probe");
        async move {
            copies
                .iter()
                .find_map(|c| std::fs::read_to_string(c.join("results.txt")).ok())
        }
    })
    .await;
    eprintln!("the probe's results:\n{results}");
    let results: BTreeMap<&str, &str> = results.lines().filter_map(|l| l.split_once(' ')).collect();
    for target in [
        "service-token-key",
        "password",
        "env.key",
        "spec.key",
        "release.db",
        "build.db",
        "rollout.db",
        "data-dir",
        "rack-environ",
        "victim-environ",
        "victim-files",
        "victim-dir",
        "apps-dir",
        "artifact",
    ] {
        assert_eq!(
            results.get(target),
            Some(&"denied"),
            "{target}: {results:#?}"
        );
    }
    // The probe did run, as a user of its own with no other groups.
    assert_eq!(results.get("own-copy"), Some(&"OK"), "{results:#?}");
    assert_eq!(results.get("own-environ"), Some(&"OK"), "{results:#?}");
    let probe_pid = *pids_of(&apps, "probe").first().expect("a probe process");
    let (probe_uid, victim_uid) = (uid_of(probe_pid), uid_of(victim_pid));
    assert_eq!(results.get("uid"), Some(&probe_uid.to_string().as_str()));
    assert_eq!(results.get("groups"), Some(&probe_uid.to_string().as_str()));
    assert!(
        probe_uid >= 1_900_000_000 && victim_uid >= 1_900_000_000 && probe_uid != victim_uid,
        "probe {probe_uid}, victim {victim_uid}"
    );
    // The layout that makes it so.
    let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
    assert_eq!((meta(&apps).uid(), meta(&apps).mode() & 0o777), (0, 0o711));
    let probe_app = apps.join("probe");
    assert_eq!(
        (
            meta(&probe_app).uid(),
            meta(&probe_app).gid(),
            meta(&probe_app).mode() & 0o777
        ),
        (0, probe_uid, 0o710)
    );
    let copy = working_copies(&apps, "probe").pop().unwrap();
    assert_eq!(
        (meta(&copy).uid(), meta(&copy).mode() & 0o777),
        (probe_uid, 0o700)
    );

    // A later build of the same source runs what was uploaded: the probe
    // changed its own copy only, and the artifact is verified before reuse.
    let out = ok_stdout(
        &rack
            .slipway(cwd.path(), &["deploy", &source_dir, "-a", "probe"])
            .await,
        "deploy probe again",
    );
    assert!(out.contains("Reusing snapshot"), "{out}");
    let artifacts: Vec<PathBuf> = std::fs::read_dir(data.join("build/artifacts"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| std::fs::read_to_string(p.join("probe.sh")).is_ok())
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert_eq!(
        std::fs::read_to_string(artifacts[0].join("probe.sh")).unwrap(),
        script,
        "the artifact is unchanged"
    );
    // The old release's copy goes with its process; the new release runs
    // in a fresh copy of the artifact (the new probe appended once).
    let fresh = eventually(Duration::from_secs(30), "the new release's copy", || {
        let copies = working_copies(&apps, "probe");
        async move {
            (copies.len() == 1 && copies[0].join("results.txt").exists()).then(|| copies[0].clone())
        }
    })
    .await;
    assert_ne!(fresh, copy, "a new release, a new copy");
    let text = std::fs::read_to_string(fresh.join("probe.sh")).unwrap();
    assert_eq!(text, format!("{script}# pwned\n"));
}
