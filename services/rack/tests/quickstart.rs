//! The quick start is a demo: `slipway-rack --quickstart` deploys the
//! example app, and on Ctrl-C (SIGINT) stops the app's processes it started
//! before it exits, saying so. Runs the real binary (and the `slipway` CLI
//! built beside it: `cargo build --workspace --bins` first).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

/// Process ids whose working directory lies below `dir`.
fn processes_under(dir: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
            (cwd.starts_with(dir) && slipway_rack::alive(pid)).then_some(pid)
        })
        .collect()
}

/// Polls `probe` every 20 ms until it holds, failing after `limit`.
async fn until(limit: Duration, what: &str, mut probe: impl FnMut() -> bool) {
    let start = Instant::now();
    while !probe() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_quick_starts_app() {
    let dir = tempfile::tempdir().unwrap();
    // App users (when the test runs as root) pass through to their copies.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cli = PathBuf::from(env!("CARGO_BIN_EXE_slipway-rack")).with_file_name("slipway");
    assert!(
        cli.exists(),
        "{} is missing: cargo build --workspace --bins",
        cli.display()
    );
    let mut rack = tokio::process::Command::new(env!("CARGO_BIN_EXE_slipway-rack"))
        .args(["--quickstart", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("rack"))
        .arg("--quickstart-app")
        .arg(root.join("examples/myapp"))
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(rack.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    let live = tokio::time::timeout(Duration::from_secs(240), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("Serving;") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(live, "the quick start did not come up:\n{seen}");
    assert!(seen.contains("App myapp is live at http://"), "{seen}");
    let apps = processes_under(dir.path());
    assert!(!apps.is_empty(), "the example app runs");

    let pid = nix::unistd::Pid::from_raw(rack.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), rack.wait())
        .await
        .expect("the rack exits after Ctrl-C")
        .unwrap();
    let mut rest = String::new();
    while let Some(line) = stdout.next_line().await.unwrap() {
        rest.push_str(&line);
        rest.push('\n');
    }
    let mut stderr = String::new();
    rack.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(status.success(), "{status}\n{rest}\n{stderr}");
    let stopping = rest
        .lines()
        .find(|l| l.starts_with("Stopping "))
        .unwrap_or_else(|| panic!("says what it stops: {rest}"));
    assert!(stopping.contains(" of myapp (web-"), "{stopping}");

    assert!(rest.contains("Stopped."), "{rest}");
    assert!(!stderr.contains("Leaving"), "{stderr}");
    until(
        Duration::from_secs(5),
        "the app's processes to be gone",
        || apps.iter().all(|&p| !slipway_rack::alive(p)),
    )
    .await;
    assert_eq!(processes_under(dir.path()), Vec::<u32>::new());
}
