//! Crash safety with the real binary: kill -9 mid-rollout, restart, and the
//! rollout completes without starting any process twice.

use std::process::Stdio;
use std::time::Duration;

use slipway_api::release::v1::PromotionOutcome;
use slipway_api::rollout::v1 as pb;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::*;

/// Starts `slipway-rollout` and waits for its serving address in its log.
pub(crate) async fn spawn_binary(
    data_dir: &std::path::Path,
    database_url: &str,
    release: &str,
) -> (Child, std::net::SocketAddr) {
    spawn_binary_with(data_dir, database_url, release, &[]).await
}

/// [`spawn_binary`] with more arguments (another runtime, say).
pub(crate) async fn spawn_binary_with(
    data_dir: &std::path::Path,
    database_url: &str,
    release: &str,
    extra: &[&std::ffi::OsStr],
) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_slipway-rollout"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--port-range",
            "0",
            "--lease-ttl",
            "1s",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--apps-dir")
        .arg(data_dir.with_file_name("apps"))
        .args([
            "--database-url",
            database_url,
            "--release-endpoint",
            release,
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("addr=").nth(1)
                && line.contains("serving")
            {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("slipway-rollout exited before serving");
    })
    .await
    .expect("slipway-rollout did not start");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

#[tokio::test]
async fn kill_9_mid_rollout_then_restart_completes_without_double_starts() {
    let app = app_name("crash");
    let _guard = AppGuard(app.clone());
    let dir = private_and_apps_dirs();
    let data = dir.path().join("data");
    let url = format!("sqlite:{}", data.join("rollout.db").display());
    let release = FakeRelease::default();
    let release_addr = release.spawn().await.to_string();

    let (mut child, addr) = spawn_binary(&data, &url, &release_addr).await;
    let mut client = connect(addr).await;
    let r1 = spec(&app, "RAAAAAAAAAA", &App::healthy(2));
    start(&mut client, &promotion_id(&app, 1), r1.clone(), None, 0).await;
    let (done, _) = finish(&mut client, &promotion_id(&app, 1), Duration::from_secs(60)).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Running);
    let address = web_address(&mut client, &app).await;

    // The new release listens after 3 s: kill the service while it starts.
    let promotion = promotion_id(&app, 2);
    let mut slow = App::slow(3_000, 30);
    slow.count = 2;
    start(
        &mut client,
        &promotion,
        spec(&app, "RBBBBBBBBBB", &slow),
        Some(r1),
        600,
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "processes of the new release",
        || {
            let (mut client, app) = (client.clone(), app.clone());
            async move {
                processes(&mut client, &app)
                    .await
                    .iter()
                    .filter(|p| p.release == "RBBBBBBBBBB")
                    .count()
                    >= 1
            }
        },
    )
    .await;
    let before: Vec<pb::Process> = processes(&mut client, &app).await;
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let live_before = count_app_processes(&app);

    let (_child, addr) = spawn_binary(&data, &url, &release_addr).await;
    let mut client = connect(addr).await;
    let (done, _) = finish(&mut client, &promotion, Duration::from_secs(60)).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Running, "{done:?}");

    let after = processes(&mut client, &app).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.iter().all(|p| p.release == "RBBBBBBBBBB"),
        "{after:?}"
    );
    // The processes of the new release that ran before the crash were
    // adopted, not started again.
    for p in before.iter().filter(|p| p.release == "RBBBBBBBBBB") {
        assert!(
            after.iter().any(|a| a.id == p.id && a.pid == p.pid),
            "process {} ({}) was replaced: {after:?}",
            p.id,
            p.pid
        );
    }
    assert!(
        live_before <= 4,
        "{live_before} processes before the restart"
    );
    assert_eq!(count_app_processes(&app), 2, "exactly the scale runs");
    assert_eq!(
        web_address(&mut client, &app).await,
        address,
        "the stable port survived the restart"
    );
    assert_eq!(get(&address).await.unwrap(), "release=RBBBBBBBBBB\n");

    let outcome = release.wait_for(&promotion).await;
    assert_eq!(outcome.outcome, PromotionOutcome::Succeeded);
    assert_eq!(
        outcome.lease_epoch, 2,
        "the report carries the epoch of the replica that took over"
    );
}
