//! What the Kubernetes runtime reads back, against the fake API server:
//! progress from Deployment status, fail-fast from pods and the progress
//! deadline, and the namespace's events printed once, through dropped
//! watches and 410s, ending with their rollout.

use std::time::Duration;

use slipway_kube_fake::{FakeKube, PodFate};
use slipway_rollout::runtime::{Progress, Runtime};

use super::{Collect, eventually, runtime, spec};

#[tokio::test]
async fn success_is_read_from_deployment_status() {
    let fake = FakeKube::start().await;
    let (rt, _) = runtime(&fake);
    rt.apply(
        "PROMO1",
        spec("shop", "RAAAAAAAAAA"),
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let wait = Duration::from_millis(10);
    // Not observed yet.
    let p = rt.progress("shop", "RAAAAAAAAAA", wait).await.unwrap();
    assert!(
        matches!(&p, Progress::Progressing { services } if services[0].healthy == 0),
        "{p:?}"
    );
    fake.progress_deployment("test-shop", "web", 1, 0, 0, PodFate::NotReady);
    let p = rt.progress("shop", "RAAAAAAAAAA", wait).await.unwrap();
    assert_eq!(p.shortfall(), "service web has 0/2 healthy");
    fake.progress_deployment("test-shop", "web", 2, 1, 0, PodFate::Ready);
    let p = rt.progress("shop", "RAAAAAAAAAA", wait).await.unwrap();
    assert_eq!(p.shortfall(), "service web has 1/2 healthy");
    fake.complete_deployment("test-shop", "web");
    assert_eq!(
        rt.progress("shop", "RAAAAAAAAAA", wait).await.unwrap(),
        Progress::Complete
    );
    let procs = rt.processes("shop").await.unwrap();
    assert_eq!(procs.len(), 2);
    assert!(
        procs
            .iter()
            .all(|p| p.status == "running" && p.release == "RAAAAAAAAAA" && p.port == Some(3000))
    );
    let services = rt.services("shop").await.unwrap();
    assert_eq!(services[0].address, "web.test-shop.svc.cluster.local:3000");
    assert_eq!(services[0].count, 2);
}

#[tokio::test]
async fn a_crash_looping_pod_fails_fast_naming_service_and_check() {
    let fake = FakeKube::start().await;
    let (rt, _) = runtime(&fake);
    rt.apply(
        "PROMO1",
        spec("shop", "RAAAAAAAAAA"),
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    fake.progress_deployment("test-shop", "web", 2, 0, 0, PodFate::CrashLoop);
    match rt
        .progress("shop", "RAAAAAAAAAA", Duration::from_millis(10))
        .await
        .unwrap()
    {
        Progress::Failed { reason } => assert!(
            reason.contains("service web")
                && reason.contains("CrashLoopBackOff")
                && reason.contains("exit code 1"),
            "{reason}"
        ),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn progress_deadline_exceeded_fails_with_deadline_exceeded() {
    let fake = FakeKube::start().await;
    let (rt, _) = runtime(&fake);
    rt.apply(
        "PROMO1",
        spec("shop", "RAAAAAAAAAA"),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    fake.progress_deployment("test-shop", "web", 1, 0, 0, PodFate::NotReady);
    fake.exceed_deadline("test-shop", "web");
    match rt
        .progress("shop", "RAAAAAAAAAA", Duration::from_millis(10))
        .await
        .unwrap()
    {
        Progress::Failed { reason } => {
            assert!(
                reason.contains("service web: deadline exceeded"),
                "{reason}"
            )
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn events_are_printed_once_despite_dedup_bumps() {
    let fake = FakeKube::start().await;
    let (rt, events) = runtime(&fake);
    // An event from before the rollout is history, not news.
    rt.apply(
        "PROMO1",
        spec("shop", "RAAAAAAAAAA"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let name = fake.emit_event(
        "test-shop",
        "Deployment",
        "web",
        "ScalingReplicaSet",
        "Scaled up replica set web-745f845dc to 1",
    );
    fake.bump_event("test-shop", &name);
    fake.bump_event("test-shop", &name);
    fake.emit_event(
        "test-shop",
        "Pod",
        "web-745f845dc-rzl2q",
        "Started",
        "Started container web",
    );
    eventually("two events", || events.lines().len() >= 2).await;
    // An absence check, not a settle: the dedup bumps must not arrive as
    // extra lines in the next 200 ms.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        events.lines(),
        [
            "system/k8s/deployment/web Scaled up replica set web-745f845dc to 1",
            "system/k8s/pod/web-745f845dc-rzl2q Started container web",
        ]
    );
    let all = events.0.lock().unwrap().clone();
    assert!(
        all.iter()
            .all(|e| e.app == "shop" && e.rollout.as_deref() == Some("PROMO1"))
    );
}

#[tokio::test]
async fn the_event_watch_survives_a_dropped_connection_and_410_gone() {
    let fake = FakeKube::start().await;
    let (rt, events) = runtime(&fake);
    rt.apply(
        "PROMO1",
        spec("shop", "RAAAAAAAAAA"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    eventually("the watch", || fake.open_watches() == 1).await;
    let first = fake.emit_event("test-shop", "Deployment", "web", "ScalingReplicaSet", "one");
    eventually("event one", || events.lines().len() == 1).await;

    // The connection drops; an event happens while no watch runs; the
    // re-watch from the last version replays it.
    fake.hold_watches(true);
    fake.drop_watches();
    eventually("the watch to end", || fake.open_watches() == 0).await;
    fake.emit_event("test-shop", "Deployment", "web", "ScalingReplicaSet", "two");
    fake.hold_watches(false);
    eventually("event two", || events.lines().len() == 2).await;

    // Again, but history is compacted meanwhile: the re-watch gets 410,
    // the watcher lists again and prints only what it missed.
    fake.hold_watches(true);
    fake.drop_watches();
    eventually("the watch to end", || fake.open_watches() == 0).await;
    fake.bump_event("test-shop", &first);
    fake.emit_event(
        "test-shop",
        "Deployment",
        "web",
        "ScalingReplicaSet",
        "three",
    );
    fake.compact();
    fake.hold_watches(false);
    eventually("event three", || events.lines().len() == 3).await;
    eventually("a new watch", || fake.open_watches() == 1).await;
    fake.emit_event(
        "test-shop",
        "Deployment",
        "web",
        "ScalingReplicaSet",
        "four",
    );
    eventually("event four", || events.lines().len() == 4).await;
    // An absence check, not a settle: the relist after the 410 prints
    // nothing twice in the next 200 ms.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let messages: Vec<String> = events.lines();
    assert_eq!(
        messages,
        [
            "system/k8s/deployment/web one",
            "system/k8s/deployment/web two",
            "system/k8s/deployment/web three",
            "system/k8s/deployment/web four"
        ]
    );
    let lists = fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/events") && !r.query.contains("watch=true"))
        .count();
    assert_eq!(lists, 2, "one list at start, one after the 410");
}

/// Two replicas: A drives the first rollout to its end, B the next. Each
/// event goes out once, tagged with the rollout that is running, and
/// nothing more is recorded into A's finished rollout.
#[tokio::test]
async fn event_watchers_end_with_their_rollout() {
    let fake = FakeKube::start().await;
    let (a, events_a) = runtime(&fake);
    let (b, events_b) = runtime(&fake);
    a.apply(
        "PROMO1",
        spec("shop", "RAAAAAAAAAA"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    eventually("A's watch", || fake.open_watches() == 1).await;
    fake.emit_event("test-shop", "Deployment", "web", "ScalingReplicaSet", "one");
    eventually("event one", || events_a.lines().len() == 1).await;
    fake.complete_deployment("test-shop", "web");
    assert_eq!(
        a.progress("shop", "RAAAAAAAAAA", Duration::from_millis(10))
            .await
            .unwrap(),
        Progress::Complete
    );
    eventually("A's watch to end", || fake.open_watches() == 0).await;
    let a_lines = events_a.lines();
    assert!(a_lines.len() >= 2, "{a_lines:?}");

    b.apply(
        "PROMO2",
        spec("shop", "RBBBBBBBBBB"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    eventually("B's watch", || fake.open_watches() == 1).await;
    fake.emit_event("test-shop", "Deployment", "web", "ScalingReplicaSet", "two");
    eventually("event two", || events_b.lines().len() == 1).await;
    // An absence check: A's finished rollout gets nothing more in 200 ms.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(events_a.lines(), a_lines);
    assert_eq!(events_b.lines(), ["system/k8s/deployment/web two"]);
    let tags = |c: &Collect| -> Vec<Option<String>> {
        c.0.lock()
            .unwrap()
            .iter()
            .map(|e| e.rollout.clone())
            .collect()
    };
    assert!(
        tags(&events_a)
            .iter()
            .all(|t| t.as_deref() == Some("PROMO1"))
    );
    assert_eq!(tags(&events_b), [Some("PROMO2".to_owned())]);
}
