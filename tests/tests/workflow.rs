//! The seed workflow through the real `slipway` binary: deploy, env changes,
//! releases, a broken release that rolls back on its own while the app keeps
//! answering, and a rollback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use slipway_e2e::{TestRack, eventually, example, http_get, ok_stdout};

fn lines_in_order(text: &str, wanted: &[&str]) {
    let mut rest = text;
    for w in wanted {
        match rest.find(w) {
            Some(i) => rest = &rest[i + w.len()..],
            None => panic!("{w:?} missing or out of order in:\n{text}"),
        }
    }
}

fn field(line: &str, n: usize) -> &str {
    line.split_whitespace().nth(n).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_workflow_end_to_end() {
    let rack = TestRack::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    let app = ["-a", "myapp"];
    let with_app =
        |args: &[&'static str]| -> Vec<&'static str> { args.iter().copied().chain(app).collect() };

    ok_stdout(
        &rack.slipway(dir, &["apps", "create", "myapp"]).await,
        "apps create",
    );

    // deploy: the seed's lines, in order, ending in OK.
    let good = example("myapp");
    let good = good.to_str().unwrap();
    let out = ok_stdout(
        &rack
            .slipway(dir, &["deploy", good, "-a", "myapp", "-d", "first deploy"])
            .await,
        "deploy",
    );
    lines_in_order(
        &out,
        &[
            "Packaging source... OK",
            "Uploading source... OK",
            "Starting build... OK",
            "Build: B",
            "Release: R",
            "Promoting R",
            "system/local/atom/app Status: Running => Pending",
            "system/local/web",
            "OK",
        ],
    );
    assert_eq!(out.lines().last(), Some("OK"), "{out}");
    let first = out
        .lines()
        .find(|l| l.starts_with("Release: "))
        .map(|l| field(l, 1).to_owned())
        .unwrap();

    // The app answers on its service address.
    let services = ok_stdout(
        &rack.slipway(dir, &with_app(&["services"])).await,
        "services",
    );
    let addr = services
        .lines()
        .nth(1)
        .map(|l| field(l, 1).to_owned())
        .expect("a web service row");
    let (status, body) = http_get(&addr, "/").await.expect("the app answers");
    assert_eq!(status, 200);
    assert!(body.contains("Hello from Slipway"), "{body}");

    let releases = ok_stdout(
        &rack.slipway(dir, &with_app(&["releases"])).await,
        "releases",
    );
    let row = releases.lines().nth(1).unwrap();
    assert_eq!(
        (field(row, 0), field(row, 1)),
        (first.as_str(), "active"),
        "{releases}"
    );
    assert!(
        releases.lines().next().unwrap().starts_with("ID"),
        "{releases}"
    );

    // env changes: Convox descriptions, no promotion.
    let out = ok_stdout(
        &rack
            .slipway(dir, &with_app(&["env", "set", "FOO=bar"]))
            .await,
        "env set",
    );
    assert!(out.starts_with("Setting FOO... OK\nRelease: R"), "{out}");
    let foo = field(out.lines().nth(1).unwrap(), 1).to_owned();
    let out = ok_stdout(
        &rack
            .slipway(dir, &with_app(&["env", "set", "FOO=baz", "BAR=1"]))
            .await,
        "env set 2",
    );
    let second = field(out.lines().nth(1).unwrap(), 1).to_owned();
    let out = ok_stdout(
        &rack.slipway(dir, &with_app(&["env", "unset", "BAR"])).await,
        "env unset",
    );
    assert!(out.starts_with("Unsetting BAR... OK\nRelease: R"), "{out}");
    let unset = field(out.lines().nth(1).unwrap(), 1).to_owned();
    for (id, description) in [
        (&foo, "env add:FOO"),
        (&second, "env add:BAR change:FOO"),
        (&unset, "env remove:BAR"),
    ] {
        let info = ok_stdout(
            &rack
                .slipway(dir, &["releases", "info", id, "-a", "myapp"])
                .await,
            "releases info",
        );
        assert!(info.contains(&format!("Id           {id}")), "{info}");
        assert!(
            info.contains(&format!("Description  {description}")),
            "{info}"
        );
        for row in ["Build        B", "Created      20", "Env          "] {
            assert!(info.contains(row), "{row:?} missing from:\n{info}");
        }
    }
    let manifest = ok_stdout(
        &rack
            .slipway(dir, &["releases", "manifest", &unset, "-a", "myapp"])
            .await,
        "manifest",
    );
    assert!(manifest.contains("command: python3 app.py"), "{manifest}");
    let env = ok_stdout(&rack.slipway(dir, &with_app(&["env"])).await, "env");
    assert_eq!(env.trim(), "FOO=baz");
    let app_json = rack
        .raw(
            "GET",
            "/apps/myapp?",
            "application/octet-stream",
            b"",
            &rack.password,
        )
        .await
        .1;
    assert!(
        app_json.contains(&first),
        "env changes do not promote: {app_json}"
    );

    // A broken release: the promotion fails on its own, says why, and the
    // app keeps answering throughout.
    let broken = example("broken");
    let out = ok_stdout(
        &rack
            .slipway(
                dir,
                &[
                    "build",
                    broken.to_str().unwrap(),
                    "-a",
                    "myapp",
                    "-d",
                    "broken",
                ],
            )
            .await,
        "build broken",
    );
    let bad = out
        .lines()
        .find(|l| l.starts_with("Release: "))
        .map(|l| field(l, 1).to_owned())
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failures, requests, addr) = (
            stop.clone(),
            failures.clone(),
            requests.clone(),
            addr.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match http_get(&addr, "/").await {
                    Some((200, _)) => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                requests.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = std::time::Instant::now();
    let out = rack
        .slipway(dir, &["releases", "promote", &bad, "-a", "myapp"])
        .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a broken promotion must fail: {stderr}"
    );
    assert!(
        stderr.contains("ERROR:") && stderr.contains("web"),
        "the reason names the service: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "failed fast, not at the deadline"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "the app kept answering ({} requests)",
        requests.load(Ordering::Relaxed)
    );
    let app_json = rack
        .raw(
            "GET",
            "/apps/myapp?",
            "application/octet-stream",
            b"",
            &rack.password,
        )
        .await
        .1;
    assert!(
        app_json.contains(&first),
        "the previous release stays active: {app_json}"
    );

    // Rollback: a copy of the first release, promoted.
    let out = ok_stdout(
        &rack
            .slipway(dir, &["releases", "rollback", &first, "-a", "myapp"])
            .await,
        "rollback",
    );
    let head = out.lines().next().unwrap();
    assert!(
        head.starts_with(&format!("Rolling back to {first}... OK, R")),
        "{out}"
    );
    let copy = head.rsplit(' ').next().unwrap().to_owned();
    assert_eq!(out.lines().last(), Some("OK"), "{out}");
    let active = eventually(Duration::from_secs(10), "the copy to be active", || async {
        let json = rack
            .raw(
                "GET",
                "/apps/myapp?",
                "application/octet-stream",
                b"",
                &rack.password,
            )
            .await
            .1;
        json.contains(&copy).then_some(json)
    })
    .await;
    assert!(active.contains("running"), "{active}");
    let info = ok_stdout(
        &rack
            .slipway(dir, &["releases", "info", &copy, "-a", "myapp"])
            .await,
        "info copy",
    );
    assert!(info.contains(&format!("rollback to {first}")), "{info}");
    let (status, _) = http_get(&addr, "/")
        .await
        .expect("the app answers after the rollback");
    assert_eq!(status, 200);
}
