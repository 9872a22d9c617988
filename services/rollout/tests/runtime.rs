//! The local runtime against the runtime conformance suite.

use std::sync::Arc;

use slipway_events::NewEvent;
use slipway_rollout::crypto::SpecCipher;
use slipway_rollout::runtime::EventSink;
use slipway_rollout::runtime::local::{LocalConfig, LocalRuntime};
use slipway_rollout::store::Store;

use crate::helpers::{AppGuard, TestAppFixture, app_name};

struct Discard;

impl EventSink for Discard {
    fn emit(&self, _: NewEvent) {}
}

#[tokio::test]
async fn the_local_runtime_passes_the_conformance_suite() {
    let db = slipway_storage::testing::sqlite().await;
    let store = Store::new(db.db.clone(), SpecCipher::generate());
    store.migrate().await.unwrap();
    let dir = crate::helpers::private_and_apps_dirs();
    let runtime = LocalRuntime::start(
        store,
        Arc::new(Discard),
        LocalConfig {
            data_dir: dir.path().join("data"),
            ports: None,
            restart_limit: 3,
            apps_dir: dir.path().join("apps"),
            app_uids: slipway_rollout::runtime::local::UidRange::DEFAULT,
        },
    )
    .await
    .unwrap();
    let app = app_name("conformance");
    let _guard = AppGuard(app.clone());
    slipway_rollout::runtime::conformance::run(&runtime, &TestAppFixture, &app).await;
    let app = app_name("oneoffs");
    let _guard = AppGuard(app.clone());
    slipway_rollout::runtime::conformance::oneoffs::run(&runtime, &TestAppFixture, &app).await;
}

/// A local runtime over `store` and `dir`, as the rollout service starts one
/// (one-off ends kept in `store`).
async fn local(store: Store, dir: &std::path::Path) -> LocalRuntime {
    LocalRuntime::start_with_ends(
        store.clone(),
        Arc::new(Discard),
        Arc::new(slipway_rollout::oneoff_ends::Ledger::new(store)),
        LocalConfig {
            data_dir: dir.join("data"),
            ports: None,
            restart_limit: 3,
            apps_dir: dir.join("apps"),
            app_uids: slipway_rollout::runtime::local::UidRange::DEFAULT,
        },
    )
    .await
    .unwrap()
}

/// Detached one-offs outlive a restart of the rollout service: the next run
/// lists them with their command, stops them on request, and reads their
/// exit status when they end; an attached one (its session is gone) is
/// stopped at once, and its end recorded (failed, status unknown).
#[tokio::test]
async fn detached_one_offs_are_taken_back_after_a_restart() {
    use slipway_rollout::runtime::conformance::oneoffs::wait_status;
    use slipway_rollout::runtime::conformance::{Behaviour, Fixture as _};
    use slipway_rollout::runtime::{OneOffStatus, RunRequest, Runtime as _, SessionKind};

    let db = slipway_storage::testing::sqlite().await;
    let store = Store::new(db.db.clone(), SpecCipher::generate());
    store.migrate().await.unwrap();
    let dir = crate::helpers::private_and_apps_dirs();
    let app = app_name("takeback");
    let _guard = AppGuard(app.clone());
    let spec = Arc::new(TestAppFixture.spec(&app, "RTAKEBACKAA", Behaviour::Healthy, 1));
    let gate = dir.path().join("gate");
    let request = |command: String, attach: bool| RunRequest {
        service: "web".into(),
        command: Some(command),
        timeout: std::time::Duration::from_secs(120),
        attach,
    };

    let first = local(store.clone(), dir.path()).await;
    let waits = format!(
        "echo waiting; while [ ! -e '{}' ]; do sleep 0.05; done; exit 7",
        gate.display()
    );
    let waiting = first
        .run(spec.clone(), request(waits.clone(), false))
        .await
        .unwrap();
    let sleeper = first
        .run(spec.clone(), request("sleep 600".into(), false))
        .await
        .unwrap();
    let attached = first
        .run(spec.clone(), request("sleep 600".into(), true))
        .await
        .unwrap();
    let attached_pid = first
        .processes(&app)
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.id == attached.id)
        .and_then(|p| p.pid)
        .expect("the attached one-off's pid");
    first.shutdown().await;
    drop(first);

    let second = local(store.clone(), dir.path()).await;
    let listed = second.processes(&app).await.unwrap();
    for id in [&waiting.id, &sleeper.id] {
        let process = listed.iter().find(|p| &p.id == id);
        assert!(process.is_some(), "{id} is not listed again: {listed:?}");
    }
    assert!(
        listed
            .iter()
            .any(|p| p.id == waiting.id && p.command == waits),
        "the command is listed again: {listed:?}"
    );
    assert!(
        !listed.iter().any(|p| p.id == attached.id),
        "an attached one-off is not taken back: {listed:?}"
    );
    // Killed at the start of the second run (SIGKILL lands a moment later):
    // gone, or a zombie nobody has reaped yet.
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{attached_pid}/stat"))
            .map_or(true, |stat| stat.contains(") Z"))
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !stopped() {
        assert!(
            std::time::Instant::now() < until,
            "the attached one-off's process was not stopped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (ended, _) = slipway_rollout::oneoff_ends::Ledger::new(store.clone())
        .get(&app, &attached.id)
        .await
        .unwrap()
        .expect("the end of the attached one-off is recorded");
    assert_eq!(
        (ended.status, ended.exit_code, ended.command.as_str()),
        (OneOffStatus::Failed, None, "sleep 600")
    );
    let info = second.process(&app, &waiting.id).await.unwrap();
    assert_eq!(info.status, OneOffStatus::Running);
    assert_eq!(info.deadline, waiting.deadline);
    let Err(exec) = second
        .session(&app, &waiting.id, SessionKind::Exec("true".into()))
        .await
    else {
        panic!("an exec into a taken-back one-off was accepted");
    };
    assert!(
        exec.to_string()
            .contains("before the rollout service restarted"),
        "{exec}"
    );

    // Its end, and its exit status, are seen.
    std::fs::write(&gate, "").unwrap();
    wait_status(&second, &app, &waiting.id, OneOffStatus::Failed).await;
    assert_eq!(
        second.process(&app, &waiting.id).await.unwrap().exit_code,
        Some(7)
    );
    // Stopped on request.
    second.stop(&app, &sleeper.id).await.unwrap();
    wait_status(&second, &app, &sleeper.id, OneOffStatus::Failed).await;
    assert!(
        !second
            .processes(&app)
            .await
            .unwrap()
            .iter()
            .any(|p| p.id == sleeper.id || p.id == waiting.id),
        "ended one-offs leave the list"
    );
    second.shutdown().await;
}
