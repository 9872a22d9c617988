//! Cancelling a running build kills its builder's processes, records
//! `cancelled` (audited as `build.cancel`), and creates no release.

use std::sync::Arc;
use std::time::Duration;

use slipway_api::build::v1::{BuildStatus, CancelBuildRequest};
use slipway_rpc::actor::Actor;

use crate::helpers::{Backend, ScriptBuilder, Tarball, TestApp, WEB, status};

/// The service with a builder running `script`, and a build of `myapp`
/// started on it.
async fn build_running(script: String) -> (TestApp, slipway_api::build::v1::Build) {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Some(Arc::new(ScriptBuilder { script })),
        |_| {},
    )
    .await;
    let url = app
        .upload("myapp", &Tarball::source(WEB, &[]))
        .await
        .unwrap();
    let build = app.create("myapp", &url, "").await;
    (app, build)
}

#[tokio::test]
async fn cancel_kills_the_builder_and_creates_no_release() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // The long-running grandchild shares the builder's process group.
    let script = format!(
        "sleep 300 & echo $! > {pid}; echo started; wait",
        pid = pid_file.display()
    );
    let (app, build) = build_running(script).await;

    let mut waited = Duration::ZERO;
    while !pid_file.exists()
        || std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .is_empty()
    {
        assert!(waited < Duration::from_secs(30), "builder never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));

    let cancelled = app
        .client
        .clone()
        .cancel_build(CancelBuildRequest {
            app: "myapp".into(),
            id: build.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .build
        .unwrap();
    assert_eq!(status(&cancelled), BuildStatus::Cancelled, "{cancelled:?}");
    assert!(cancelled.release.is_empty());
    assert!(!alive(pid), "the builder's process survived the cancel");
    let log = String::from_utf8(app.logs("myapp", &build.id, 0).await).unwrap();
    assert!(
        log.contains("started\n") && log.ends_with("Build cancelled\n"),
        "{log}"
    );
    assert!(app.releases.calls().is_empty());
    // Cancelling an ended build returns it unchanged.
    let again = app
        .client
        .clone()
        .cancel_build(CancelBuildRequest {
            app: "myapp".into(),
            id: build.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .build
        .unwrap();
    assert_eq!(again, cancelled);
    app.shutdown().await;
}

/// Running (a zombie left for a non-reaping init counts as dead).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A cancel that ends a build is audited as `build.cancel` with the
/// caller's actor and address, written in the transaction that records the
/// build cancelled (so it is in the outbox when the cancel answers), and
/// relayed to the release service; a cancel of an ended build changes
/// nothing and records nothing.
#[tokio::test]
async fn cancel_is_audited_with_its_actor_and_source() {
    let (app, build) = build_running("echo started; sleep 300".into()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while status(&app.get("myapp", &build.id).await) != BuildStatus::Running {
        assert!(std::time::Instant::now() < deadline, "build never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let by = Actor::token("ci-web", "203.0.113.7:41000");
    let cancel = || {
        by.request(CancelBuildRequest {
            app: "myapp".into(),
            id: build.id.clone(),
        })
    };
    let cancelled = app
        .client
        .clone()
        .cancel_build(cancel())
        .await
        .unwrap()
        .into_inner()
        .build
        .unwrap();
    assert_eq!(status(&cancelled), BuildStatus::Cancelled, "{cancelled:?}");
    let rows = cancel_rows(&app, &build.id).await;
    assert_eq!(
        rows,
        vec![(
            "token:ci-web".to_owned(),
            "203.0.113.7:41000".to_owned(),
            "ok".to_owned()
        )]
    );

    // Cancelling the ended build again changes nothing: no second record.
    app.client.clone().cancel_build(cancel()).await.unwrap();
    assert_eq!(cancel_rows(&app, &build.id).await.len(), 1);

    // The relay hands it to the release service with the actor and source
    // in the call's metadata and the row's id as the dedup key.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (actor, record) = loop {
        let found = app
            .releases
            .audits()
            .into_iter()
            .find(|(_, r)| r.action == "build.cancel" && r.target == build.id);
        if let Some(found) = found {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "build.cancel never relayed: {:?}",
            app.releases.audits()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(actor, by);
    assert_eq!(
        (record.app.as_str(), record.outcome.as_str()),
        ("myapp", "ok")
    );
    assert!(
        record.id.starts_with('A') && record.time.is_some(),
        "{record:?}"
    );
    app.shutdown().await;
}

/// The `build.cancel` rows of `build`'s audit outbox: actor, source, outcome.
async fn cancel_rows(app: &TestApp, build: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT actor, source, outcome FROM build_audit_outbox \
         WHERE action = 'build.cancel' AND target = $1",
    )
    .bind(build)
    .fetch_all(&app.db.db.pool)
    .await
    .unwrap()
}
