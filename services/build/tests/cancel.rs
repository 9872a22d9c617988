//! Cancelling a running build kills its builder's processes, records
//! `cancelled`, and creates no release.

use std::sync::Arc;
use std::time::Duration;

use slipway_api::build::v1::{BuildStatus, CancelBuildRequest};

use crate::helpers::{Backend, ScriptBuilder, Tarball, TestApp, WEB, status};

#[tokio::test]
async fn cancel_kills_the_builder_and_creates_no_release() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // The long-running grandchild shares the builder's process group.
    let script = format!(
        "sleep 300 & echo $! > {pid}; echo started; wait",
        pid = pid_file.display()
    );
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
