//! Build logs: followed live by several readers at once, replayed in full
//! after the build, and what was streamed live is a prefix of the replay.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use slipway_api::build::v1::{BuildStatus, WatchBuildLogsRequest};

use crate::helpers::{Backend, ScriptBuilder, Tarball, TestApp, WEB, status};

#[tokio::test]
async fn two_live_readers_and_the_replay_see_the_same_bytes() {
    let gate = tempfile::tempdir().unwrap();
    let go = gate.path().join("go");
    // A real process: waits until both readers are attached, then prints.
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.02; done; i=0; while [ $i -lt 200 ]; do echo \"line $i\"; echo \"err $i\" >&2; i=$((i+1)); done",
        go = go.display()
    );
    let builder = Arc::new(ScriptBuilder { script });
    let app = TestApp::spawn_with(Backend::Sqlite, Some(builder), |_| {}).await;
    let url = app
        .upload("myapp", &Tarball::source(WEB, &[]))
        .await
        .unwrap();
    let build = app.create("myapp", &url, "").await;

    let follow = |offset| {
        let mut client = app.client.clone();
        let id = build.id.clone();
        tokio::spawn(async move {
            let mut stream = client
                .watch_build_logs(WatchBuildLogsRequest {
                    app: "myapp".into(),
                    id,
                    from_offset: offset,
                })
                .await
                .unwrap()
                .into_inner();
            let mut out = Vec::new();
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk.unwrap().chunk);
            }
            out
        })
    };
    let first = follow(0);
    let second = follow(0);
    // A third reader that hangs up early: what it got is a prefix.
    let mut partial_stream = app
        .client
        .clone()
        .watch_build_logs(WatchBuildLogsRequest {
            app: "myapp".into(),
            id: build.id.clone(),
            from_offset: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let partial = partial_stream.next().await.unwrap().unwrap().chunk;
    drop(partial_stream);
    // The build is still waiting on the gate: the readers are live.
    let now = status(&app.get("myapp", &build.id).await);
    assert!(
        matches!(now, BuildStatus::Created | BuildStatus::Running),
        "{now:?}"
    );
    std::fs::write(&go, "").unwrap();

    let first = tokio::time::timeout(Duration::from_secs(60), first)
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(60), second)
        .await
        .unwrap()
        .unwrap();
    let done = app.get("myapp", &build.id).await;
    assert_eq!(
        status(&done),
        BuildStatus::Complete,
        "{}",
        String::from_utf8_lossy(&first)
    );

    let replay = app.logs("myapp", &build.id, 0).await;
    assert_eq!(first, replay);
    assert_eq!(second, replay);
    assert!(replay.starts_with(&partial));
    let text = String::from_utf8(replay.clone()).unwrap();
    for expected in [
        "Fetching source... OK",
        "Unpacking source... OK",
        "Manifest convox.yml: services web",
        "line 199\n",
        "err 199\n",
        "Build complete\n",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert!(text.ends_with("Build complete\n"), "{text}");
    // Replays honour the offset.
    assert_eq!(app.logs("myapp", &build.id, 10).await, replay[10..]);
    assert!(app.logs("myapp", &build.id, 1 << 40).await.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn logs_of_unknown_builds_are_not_found() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let err = app
        .client
        .clone()
        .watch_build_logs(WatchBuildLogsRequest {
            app: "myapp".into(),
            id: "BAAAAAAAAAA".into(),
            from_offset: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    app.shutdown().await;
}
