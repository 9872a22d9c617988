//! The release phase (`release:` in the manifest) through gRPC on real
//! processes: it runs once before anything of the release starts, its
//! output reaches the rollout's events, a failure or timeout fails the
//! promotion with nothing new started, cancel stops it, and a kill -9 of
//! the service mid-command never runs it twice.

use std::time::Duration;

use slipway_api::rollout::v1 as pb;

use crate::helpers::*;

const LIMIT: Duration = Duration::from_secs(60);

/// A directory app users can write to (they run as other uids under root).
fn shared_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// `spec` with a release command.
fn with_release(mut spec: pb::ReleaseSpec, command: &str, timeout: u32) -> pb::ReleaseSpec {
    spec.manifest.push_str(&format!(
        "release:\n  service: web\n  command: {command}\n  timeout: {timeout}\n"
    ));
    spec
}

fn runs(dir: &tempfile::TempDir) -> usize {
    std::fs::read_to_string(dir.path().join("runs"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[tokio::test]
async fn the_release_command_runs_once_before_the_release_and_gates_it() {
    let app = app_name("relphase");
    let _guard = AppGuard(app.clone());
    let mut service = TestService::spawn().await;
    let dir = shared_dir();
    let runs_file = dir.path().join("runs");

    // Success: runs once, its output in the events before any process starts.
    let r1 = with_release(
        spec(&app, "RAAAAAAAAAA", &App::healthy(1)),
        &format!(
            "'echo run >> {}; echo migrated $TESTAPP_MODE'",
            runs_file.display()
        ),
        60,
    );
    let p1 = promotion_id(&app, 1);
    start(&mut service.client, &p1, r1.clone(), None, 0).await;
    let (done, events) = finish(&mut service.client, &p1, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Running, "{done:?}");
    assert_eq!(runs(&dir), 1);
    let position = |text: &str| {
        events
            .iter()
            .position(|e| e.message.contains(text))
            .unwrap_or_else(|| panic!("{text:?} not in {events:?}"))
    };
    let output = position("migrated healthy");
    assert!(
        events[output].source.starts_with("service/web/"),
        "{events:?}"
    );
    assert!(output < position("Started process"), "{events:?}");
    // Starting the same rollout again (a re-sent hand-over) runs nothing.
    start(&mut service.client, &p1, r1.clone(), None, 0).await;
    assert_eq!(runs(&dir), 1);

    // Failure: the reason with the status and last output; nothing of r2 ran.
    let r2 = with_release(
        spec(&app, "RBBBBBBBBBB", &App::healthy(1)),
        "'echo working; echo boom >&2; exit 3'",
        60,
    );
    let p2 = promotion_id(&app, 2);
    start(&mut service.client, &p2, r2, Some(r1.clone()), 0).await;
    let (done, _) = finish(&mut service.client, &p2, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Failure, "{done:?}");
    assert_eq!(
        done.reason,
        "release command exited with status 3 (last output: working | boom)"
    );
    let procs = processes(&mut service.client, &app).await;
    assert!(
        !procs.is_empty() && procs.iter().all(|p| p.release == "RAAAAAAAAAA"),
        "{procs:?}"
    );
    let address = web_address(&mut service.client, &app).await;
    assert_eq!(get(&address).await.unwrap(), "release=RAAAAAAAAAA\n");

    // Timeout.
    let r3 = with_release(spec(&app, "RCCCCCCCCCC", &App::healthy(1)), "sleep 30", 1);
    let p3 = promotion_id(&app, 3);
    start(&mut service.client, &p3, r3, Some(r1.clone()), 0).await;
    let (done, _) = finish(&mut service.client, &p3, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Failure, "{done:?}");
    assert!(
        done.reason
            .starts_with("release command timed out after 1s"),
        "{done:?}"
    );

    // Cancel stops it at once.
    let r4 = with_release(
        spec(&app, "RDDDDDDDDDD", &App::healthy(1)),
        &format!("'echo run >> {}; sleep 30'", runs_file.display()),
        60,
    );
    let p4 = promotion_id(&app, 4);
    start(&mut service.client, &p4, r4, Some(r1), 0).await;
    eventually(LIMIT, "the release command to start", || async {
        runs(&dir) == 2
    })
    .await;
    let began = std::time::Instant::now();
    service
        .client
        .cancel_rollout(pb::CancelRolloutRequest { id: p4.clone() })
        .await
        .unwrap();
    let (done, _) = finish(&mut service.client, &p4, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Cancelled, "{done:?}");
    assert_eq!(done.reason, "cancelled during the release command");
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "{:?}",
        began.elapsed()
    );
    let procs = processes(&mut service.client, &app).await;
    assert!(
        procs.iter().all(|p| p.release == "RAAAAAAAAAA"),
        "{procs:?}"
    );
}

#[tokio::test]
async fn a_kill_9_during_the_release_command_never_runs_it_twice() {
    let app = app_name("relcrash");
    let _guard = AppGuard(app.clone());
    let dir = private_and_apps_dirs();
    let data = dir.path().join("data");
    let url = format!("sqlite:{}", data.join("rollout.db").display());
    let release = FakeRelease::default();
    let release_addr = release.spawn().await.to_string();
    let shared = shared_dir();
    let runs_file = shared.path().join("runs");

    let (mut child, addr) = crate::crash::spawn_binary(&data, &url, &release_addr).await;
    let mut client = connect(addr).await;
    let promotion = promotion_id(&app, 1);
    let r1 = with_release(
        spec(&app, "RAAAAAAAAAA", &App::healthy(1)),
        &format!("'echo run >> {}; sleep 5'", runs_file.display()),
        60,
    );
    start(&mut client, &promotion, r1, None, 0).await;
    eventually(LIMIT, "the release command to start", || async {
        runs(&shared) == 1
    })
    .await;
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();

    let (_child, addr) = crate::crash::spawn_binary(&data, &url, &release_addr).await;
    let mut client = connect(addr).await;
    let (done, _) = finish(&mut client, &promotion, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Failure, "{done:?}");
    assert!(
        done.reason.contains("how it ended is unknown") && done.reason.contains("not run twice"),
        "{done:?}"
    );
    // The restarted runtime stopped what was left of it at once.
    assert_eq!(
        count_app_processes(&app),
        0,
        "the orphaned command was stopped"
    );
    // Past the command's own end, it still ran once, and nothing started.
    tokio::time::sleep(Duration::from_secs(6)).await; // absence check: a second run would have begun by now
    assert_eq!(runs(&shared), 1);
    assert!(processes(&mut client, &app).await.is_empty());
}
