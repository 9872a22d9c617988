//! `slipway logs`: after a deploy of the example app and a request to it, the
//! app's log carries both the rollout's runtime events (`system/local/...`)
//! and the app's own output (`service/web/<process>`), and `--no-follow`
//! ends after the backlog.

use std::time::Duration;

use slipway_e2e::{TestRack, eventually, http_get};

fn source(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_show_runtime_events_and_the_apps_output() {
    let rack = TestRack::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    rack.app_deployed(dir, "myapp", "myapp").await;
    let services = rack.slipway_ok(dir, &["services", "-a", "myapp"]).await;
    let addr = services
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("a web service row")
        .to_owned();
    let (status, _) = http_get(&addr, "/").await.expect("the app answers");
    assert_eq!(status, 200);

    // The request's log line reaches the log within the runtime's pump
    // interval; `--no-follow` must end on its own every time.
    let logs = eventually(Duration::from_secs(30), "GET / in slipway logs", || async {
        let out = rack
            .slipway_ok(dir, &["logs", "-a", "myapp", "--no-follow"])
            .await;
        out.lines()
            .any(|l| source(l).starts_with("service/web/") && l.ends_with(" GET /"))
            .then_some(out)
    })
    .await;
    assert!(
        logs.lines()
            .any(|l| source(l).starts_with("system/local/") && l.contains("Status: ")),
        "no rollout event in:\n{logs}"
    );
    for line in logs.lines() {
        let time = line.split_whitespace().next().unwrap_or_default();
        assert!(
            time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "not `<RFC 3339 time> <source> <message>`: {line:?}"
        );
    }

    // A service's log has only its own lines and runtime events.
    let web = rack
        .slipway_ok(dir, &["logs", "-a", "myapp", "--no-follow", "-s", "web"])
        .await;
    assert!(
        web.lines().any(|l| source(l).starts_with("service/web/")),
        "{web}"
    );
    assert!(
        web.lines().all(|l| source(l) != "system/local/atom/app"),
        "{web}"
    );
}
