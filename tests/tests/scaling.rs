//! `slipway scale`, `slipway restart`, `slipway services restart` and the
//! routes the `convox` CLI uses for them (reference part 2 §6), on the local
//! runtime: the count changes without a new release and is kept by a later
//! promotion, and a restart under load fails no request. (That the count
//! survives a restart of the services is the spec's stored JSON, which the
//! local runtime re-adopts from: `overrides.rs` tests it.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use slipway_e2e::{TestRack, eventually, example, http_get, ok_stdout};

const FORM: &str = "application/x-www-form-urlencoded";

/// The web processes as `GET /apps/myapp/processes` lists them: (id, status, release).
async fn web_processes(rack: &TestRack) -> Vec<(String, String, String)> {
    let (status, body) = rack
        .raw("GET", "/apps/myapp/processes?", "", b"", &rack.password)
        .await;
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "web")
        .map(|p| {
            let text = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
            (text("id"), text("status"), text("release"))
        })
        .collect()
}

/// Waits until exactly `n` web processes run, all of `release` when given.
async fn running(rack: &TestRack, n: usize, release: Option<&str>) -> Vec<String> {
    eventually(
        Duration::from_secs(120),
        &format!("{n} web processes"),
        || async {
            let procs = web_processes(rack).await;
            let ok = procs.len() == n
                && procs
                    .iter()
                    .all(|(_, s, r)| s == "running" && release.is_none_or(|want| r == want));
            ok.then(|| procs.into_iter().map(|(id, _, _)| id).collect())
        },
    )
    .await
}

/// Whether a process whose working directory is below `dir` runs with a
/// data-size limit (soft and hard) of `bytes`.
fn data_limited_processes(dir: &std::path::Path, bytes: u64) -> bool {
    let want = bytes.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)))
        .any(|e| {
            std::fs::read_to_string(e.path().join("limits")).is_ok_and(|limits| {
                limits.lines().any(|l| {
                    let fields: Vec<&str> = l.split_whitespace().collect();
                    l.starts_with("Max data size")
                        && fields.get(3) == Some(&want.as_str())
                        && fields.get(4) == Some(&want.as_str())
                })
            })
        })
}

fn scale_row(out: &str, service: &str) -> Vec<String> {
    out.lines()
        .find(|l| l.starts_with(&format!("{service} ")))
        .unwrap_or_else(|| panic!("no {service} row in:\n{out}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_and_restart_like_convox() {
    let rack = TestRack::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    let pw = rack.password.clone();
    ok_stdout(
        &rack.slipway(dir, &["apps", "create", "myapp"]).await,
        "apps create",
    );
    let source = example("myapp");
    let source = source.to_str().unwrap();
    ok_stdout(
        &rack.slipway(dir, &["deploy", source, "-a", "myapp"]).await,
        "deploy",
    );
    running(&rack, 2, None).await;

    // The listing: the manifest's count, the running processes.
    let out = ok_stdout(&rack.slipway(dir, &["scale", "-a", "myapp"]).await, "scale");
    assert_eq!(
        out.lines().next(),
        Some("SERVICE  DESIRED  RUNNING  CPU  MEMORY  GPU  MIN  MAX  STATUS"),
        "{out}"
    );
    assert_eq!(
        scale_row(&out, "web"),
        ["web", "2", "2", "0", "0", "-", "-", "-"],
        "{out}"
    );

    // Up to 3: the CLI waits until they run, printing the events.
    let out = ok_stdout(
        &rack
            .slipway(dir, &["scale", "web", "--count", "3", "-a", "myapp"])
            .await,
        "scale up",
    );
    assert!(out.starts_with("Scaling web... \n"), "{out}");
    assert!(out.ends_with("OK\n"), "{out}");
    assert!(out.contains("system/local/web Scaled up web to 3"), "{out}");
    let (_, body) = rack.raw("GET", "/apps/myapp/releases?", "", b"", &pw).await;
    let releases: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(releases.as_array().unwrap().len(), 1, "no new release");
    let first = releases[0]["id"].as_str().unwrap().to_owned();
    running(&rack, 3, Some(&first)).await;

    // Down to 1 the way the convox CLI sends it.
    let (status, body) = rack
        .raw(
            "PUT",
            "/apps/myapp/services/web?",
            FORM,
            b"count=1&memory=256",
            &pw,
        )
        .await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // New memory replaces the processes, rolling: the new one runs held by
    // the kernel to the limit, and then it is the only one.
    // The memory is a limit the kernel holds the new process to.
    eventually(
        Duration::from_secs(60),
        "a process of the app limited to 256 MiB of data",
        || async { data_limited_processes(rack.dir(), 256 << 20).then_some(()) },
    )
    .await;
    running(&rack, 1, Some(&first)).await;
    let out = ok_stdout(
        &rack.slipway(dir, &["scale", "web", "-a", "myapp"]).await,
        "scale web",
    );
    let row = scale_row(&out, "web");
    assert_eq!(row[..5], ["web", "1", "1", "0", "256"], "{out}");
    assert!(
        out.contains("not enforced"),
        "the local runtime says so: {out}"
    );

    // Bad input changes nothing and says what is wrong.
    for (body, want) in [
        (&b"count=abc"[..], "count must be a whole number"),
        (b"count=-1", "count must be a whole number"),
        (b"count=100000", "count must be at most 1000"),
        (b"gpu=1", "gpu"),
        (b"min=1&max=3", "autoscale"),
    ] {
        let (status, answer) = rack
            .raw("PUT", "/apps/myapp/services/web?", FORM, body, &pw)
            .await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains(want), "{want}: {answer}");
    }
    let (status, answer) = rack
        .raw("PUT", "/apps/myapp/services/nosuch?", FORM, b"count=2", &pw)
        .await;
    assert_eq!(
        (status, answer.as_str()),
        (404, "service \"nosuch\" not found in app myapp\n")
    );
    let output = rack.slipway(dir, &["scale", "nosuch", "-a", "myapp"]).await;
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("ERROR: service \"nosuch\" not found in app myapp"),
        "{output:?}"
    );
    let (status, _) = rack
        .raw("POST", "/apps/ghost/services/web/restart?", "", b"", &pw)
        .await;
    assert_eq!(status, 404);
    assert_eq!(web_processes(&rack).await.len(), 1, "nothing changed");

    // A promotion keeps the count set by hand (the manifest says 2).
    let out = ok_stdout(
        &rack
            .slipway(dir, &["deploy", source, "-a", "myapp", "-d", "second"])
            .await,
        "second deploy",
    );
    let second = out
        .lines()
        .find_map(|l| l.strip_prefix("Release: "))
        .unwrap()
        .trim()
        .to_owned();
    running(&rack, 1, Some(&second)).await;

    // Restart under load: every process replaced, no request fails.
    ok_stdout(
        &rack
            .slipway(dir, &["scale", "web", "--count", "2", "-a", "myapp"])
            .await,
        "scale to 2",
    );
    let before = running(&rack, 2, Some(&second)).await;
    let services = ok_stdout(
        &rack.slipway(dir, &["services", "-a", "myapp"]).await,
        "services",
    );
    let addr = services
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let (failures, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, failures, requests, addr) = (
            stop.clone(),
            failures.clone(),
            requests.clone(),
            addr.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if !matches!(http_get(&addr, "/").await, Some((200, _))) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                requests.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    eventually(
        Duration::from_secs(10),
        "the load loop answering",
        || async { (requests.load(Ordering::Relaxed) > 0).then_some(()) },
    )
    .await;
    let out = ok_stdout(
        &rack
            .slipway(dir, &["services", "restart", "web", "-a", "myapp"])
            .await,
        "services restart",
    );
    assert_eq!(out, "Restarting web... OK\n");
    let after: Vec<String> = eventually(
        Duration::from_secs(120),
        "every process replaced",
        || async {
            let now = running_now(&rack, &second).await;
            (now.len() == 2 && now.iter().all(|id| !before.contains(id))).then_some(now)
        },
    )
    .await;
    // And once more through `restart` (every service, sorted).
    let out = ok_stdout(
        &rack.slipway(dir, &["restart", "-a", "myapp"]).await,
        "restart",
    );
    assert_eq!(out, "Restarting web... OK\n");
    eventually(Duration::from_secs(120), "replaced again", || async {
        let now = running_now(&rack, &second).await;
        (now.len() == 2 && now.iter().all(|id| !after.contains(id))).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests during the restarts (of {})",
        requests.load(Ordering::Relaxed)
    );
    let (_, body) = rack.raw("GET", "/apps/myapp/releases?", "", b"", &pw).await;
    let releases: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        releases.as_array().unwrap().len(),
        2,
        "restarts make no release"
    );

    // The convox CLI's restart call.
    let (status, body) = rack
        .raw("POST", "/apps/myapp/services/web/restart?", "", b"", &pw)
        .await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

/// Ids of the web processes of `release` that run, when nothing else does.
async fn running_now(rack: &TestRack, release: &str) -> Vec<String> {
    let procs = web_processes(rack).await;
    if procs.iter().all(|(_, s, r)| s == "running" && r == release) {
        procs.into_iter().map(|(id, _, _)| id).collect()
    } else {
        Vec::new()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_count_set_by_hand_survives_a_restart_of_the_services_and_a_later_promotion() {
    let mut rack = TestRack::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    rack.app_deployed(dir, "myapp", "myapp").await;
    running(&rack, 2, None).await;
    rack.slipway_ok(dir, &["scale", "web", "--count", "3", "-a", "myapp"])
        .await;
    let mut before = running(&rack, 3, None).await;

    // The rack stops and starts again: the same three processes are
    // adopted (none started or stopped), and the desired count is still 3.
    rack.restart().await;
    let mut after = running(&rack, 3, None).await;
    before.sort();
    after.sort();
    assert_eq!(
        before, after,
        "the running processes are adopted, not replaced"
    );
    let out = rack.slipway_ok(dir, &["scale", "web", "-a", "myapp"]).await;
    assert_eq!(scale_row(&out, "web")[..3], ["web", "3", "3"], "{out}");

    // A later promotion keeps the hand-set count, not the manifest's 2.
    let out = rack
        .slipway_ok(
            dir,
            &["env", "set", "AFTER=restart", "-a", "myapp", "--promote"],
        )
        .await;
    let release = out
        .lines()
        .find_map(|l| l.strip_prefix("Release: "))
        .unwrap_or_else(|| panic!("no release in:\n{out}"))
        .trim()
        .to_owned();
    running(&rack, 3, Some(&release)).await;
}
