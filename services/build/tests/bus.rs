//! Build logs across replicas (`--redis-url`): two build service instances
//! share one PostgreSQL database, one object store and one Redis prefix. A
//! build run by A is followed live through B, byte for byte what A stores;
//! with Redis unreachable, B still serves the whole log once the build ends;
//! what Redis loses mid-build, B serves from the stored log.
//! The Redis tests need Redis on 127.0.0.1:6379 and fail loudly without it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use slipway_api::build::v1::{BuildStatus, WatchBuildLogsRequest};
use slipway_domain::Secret;
use slipway_events::testing::{SHARED_REDIS, require_shared_redis};

use crate::helpers::{Backend, ScriptBuilder, Tarball, TestApp, WEB, status};

/// A Redis key prefix no other test uses.
fn unique_prefix() -> String {
    format!(
        "test-build-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// Two replicas on one database, one object store (under `shared`) and one
/// Redis at `redis_url` with `prefix`; both run `script` as their builder.
async fn two_replicas(
    shared: &Path,
    redis_url: &str,
    prefix: &str,
    script: &str,
) -> (TestApp, TestApp) {
    let objects = Secret::new(format!("file://{}", shared.join("objects").display()));
    let database = Arc::new(Mutex::new(None::<Secret>));
    let redis_url = Secret::new(redis_url.to_owned());
    let builder = || {
        Some(Arc::new(ScriptBuilder {
            script: script.to_owned(),
        }) as Arc<dyn slipway_build::builder::Builder>)
    };
    let a = TestApp::spawn_with(Backend::Postgres, builder(), |config| {
        config.object_store = Some(objects.clone());
        config.redis_url = Some(redis_url.clone());
        config.redis_prefix = prefix.to_owned();
        *database.lock().unwrap() = config.store.database_url.clone();
    })
    .await;
    let database = database.lock().unwrap().clone().expect("A's database URL");
    let b = TestApp::spawn_with(Backend::Postgres, builder(), |config| {
        config.store.database_url = Some(database);
        config.object_store = Some(objects.clone());
        config.redis_url = Some(redis_url.clone());
        config.redis_prefix = prefix.to_owned();
    })
    .await;
    (a, b)
}

/// A log reader on `app`'s replica from `offset`: the chunks as they come.
async fn watch(
    app: &TestApp,
    id: &str,
    offset: u64,
) -> impl futures::Stream<Item = Vec<u8>> + use<> {
    let stream = app
        .client
        .clone()
        .watch_build_logs(WatchBuildLogsRequest {
            app: "myapp".into(),
            id: id.to_owned(),
            from_offset: offset,
        })
        .await
        .unwrap()
        .into_inner();
    stream.map(|chunk| chunk.unwrap().chunk.to_vec())
}

/// The rest of a log stream, within a minute.
async fn rest(stream: impl futures::Stream<Item = Vec<u8>>) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(60), stream.collect::<Vec<_>>())
        .await
        .expect("the log stream ends when the build does")
        .concat()
}

#[tokio::test]
async fn a_build_on_one_replica_streams_live_through_another_byte_for_byte() {
    require_shared_redis().await;
    let shared = tempfile::tempdir().unwrap();
    let gate = shared.path().join("go");
    // Some output, then a pause until the test opens the gate, then lots
    // of output on both streams (and bytes that are not UTF-8).
    let script = format!(
        "echo phase one; printf '\\377\\376\\n'; while [ ! -e {go} ]; do sleep 0.02; done; \
         i=0; while [ $i -lt 300 ]; do echo \"line $i\"; echo \"err $i\" >&2; i=$((i+1)); done",
        go = gate.display()
    );
    let (a, b) = two_replicas(shared.path(), SHARED_REDIS, &unique_prefix(), &script).await;
    let url = a.upload("myapp", &Tarball::source(WEB, &[])).await.unwrap();
    let build = a.create("myapp", &url, "").await;

    // B does not run the build: what it streams comes from the bus.
    let mut on_b = Box::pin(watch(&b, &build.id, 0).await);
    let late_on_b = watch(&b, &build.id, 5).await;
    let first = tokio::time::timeout(Duration::from_secs(30), on_b.next())
        .await
        .expect("B streams the running build's log live")
        .expect("a first chunk");
    assert!(!first.is_empty());
    let now = status(&b.get("myapp", &build.id).await);
    assert!(
        matches!(now, BuildStatus::Created | BuildStatus::Running),
        "the first bytes came while the build ran: {now:?}"
    );
    std::fs::write(&gate, "").unwrap();

    let live: Vec<u8> = [first, rest(on_b).await].concat();
    let late = rest(late_on_b).await;
    let ended = b.get("myapp", &build.id).await;
    assert_eq!(status(&ended), BuildStatus::Complete, "{}", ended.reason);
    let stored_via_a = a.logs("myapp", &build.id, 0).await;
    let stored_via_b = b.logs("myapp", &build.id, 0).await;
    assert_eq!(stored_via_a, stored_via_b, "one stored log");
    assert!(
        String::from_utf8_lossy(&stored_via_a).contains("err 299"),
        "the whole output is stored"
    );
    assert_eq!(
        live, stored_via_a,
        "live through B is the stored log, byte for byte"
    );
    assert_eq!(
        late,
        stored_via_a[5..],
        "a reader from an offset gets the rest exactly"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn with_the_bus_unreachable_another_replica_serves_the_whole_log_at_the_end() {
    let shared = tempfile::tempdir().unwrap();
    let gate = shared.path().join("go");
    let script = format!(
        "echo before; while [ ! -e {go} ]; do sleep 0.02; done; \
         i=0; while [ $i -lt 100 ]; do echo \"line $i\"; i=$((i+1)); done",
        go = gate.display()
    );
    // Nothing listens on port 1: every publish and subscription fails.
    let (a, b) = two_replicas(
        shared.path(),
        "redis://127.0.0.1:1",
        &unique_prefix(),
        &script,
    )
    .await;
    let url = a.upload("myapp", &Tarball::source(WEB, &[])).await.unwrap();
    let build = a.create("myapp", &url, "").await;
    let on_b = watch(&b, &build.id, 0).await;
    let from_offset_on_b = watch(&b, &build.id, 3).await;
    // The build goes on with the bus down: A, which runs it, has its first
    // line (the rest waits for the gate).
    let mut on_a = watch(&a, &build.id, 0).await;
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("before") {
            seen.extend(on_a.next().await.expect("A's log ends only with the build"));
        }
    })
    .await
    .expect("the build starts with the bus down");
    drop(on_a);
    std::fs::write(&gate, "").unwrap();
    let got = rest(on_b).await;
    let got_from_offset = rest(from_offset_on_b).await;
    let ended = a.get("myapp", &build.id).await;
    assert_eq!(status(&ended), BuildStatus::Complete, "{}", ended.reason);
    let stored = a.logs("myapp", &build.id, 0).await;
    assert!(String::from_utf8_lossy(&stored).contains("line 99"));
    assert_eq!(
        got, stored,
        "B serves the whole stored log once the build ends"
    );
    assert_eq!(got_from_offset, stored[3..]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn what_redis_loses_mid_build_is_served_from_the_stored_log() {
    require_shared_redis().await;
    let shared = tempfile::tempdir().unwrap();
    let gate = shared.path().join("go");
    let script = format!(
        "echo start; while [ ! -e {go} ]; do sleep 0.02; done; \
         i=0; while [ $i -lt 400 ]; do echo \"line $i\"; \
         if [ $((i % 20)) -eq 0 ]; then sleep 0.05; fi; i=$((i+1)); done",
        go = gate.display()
    );
    let prefix = unique_prefix();
    let (a, b) = two_replicas(shared.path(), SHARED_REDIS, &prefix, &script).await;
    let url = a.upload("myapp", &Tarball::source(WEB, &[])).await.unwrap();
    let build = a.create("myapp", &url, "").await;
    let mut on_b = Box::pin(watch(&b, &build.id, 0).await);
    let first = tokio::time::timeout(Duration::from_secs(30), on_b.next())
        .await
        .expect("B streams the running build's log live")
        .expect("a first chunk");
    // Redis loses the build's stream (as a Redis restarted empty would):
    // a reader that comes now finds its start missing.
    let key = format!("{prefix}:v1:app:{}", build.id);
    let out = tokio::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "DEL", &key])
        .output()
        .await
        .expect("run redis-cli");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "the stream existed"
    );
    let late_on_b = watch(&b, &build.id, 0).await;
    // And again and again while the build runs.
    let wipe = tokio::spawn(async move {
        loop {
            let out = tokio::process::Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", "6379", "DEL", &key])
                .output()
                .await
                .expect("run redis-cli");
            assert!(out.status.success(), "redis-cli DEL failed: {out:?}");
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    });
    std::fs::write(&gate, "").unwrap();
    let live: Vec<u8> = [first, rest(on_b).await].concat();
    let late = rest(late_on_b).await;
    wipe.abort();
    let ended = a.get("myapp", &build.id).await;
    assert_eq!(status(&ended), BuildStatus::Complete, "{}", ended.reason);
    let stored = a.logs("myapp", &build.id, 0).await;
    assert!(String::from_utf8_lossy(&stored).contains("line 399"));
    assert_eq!(live, stored, "no byte twice, none missing");
    assert_eq!(
        late, stored,
        "the part Redis lost comes from the stored log"
    );
    a.shutdown().await;
    b.shutdown().await;
}
