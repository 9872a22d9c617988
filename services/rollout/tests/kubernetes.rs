//! The Kubernetes runtime against the fake API server: the exact objects
//! and patches sent, progress read from status, fail-fast from pods and
//! deadline, events printed once, watches that survive drops and 410s,
//! clear RBAC and validation errors, and the runtime conformance suite
//! with the fake's controller playing the cluster.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use slipway_events::NewEvent;
use slipway_rollout::model::SpecRecord;
use slipway_rollout::runtime::conformance::{Behaviour, Fixture};
use slipway_rollout::runtime::kubernetes::{KubernetesConfig, KubernetesRuntime};
use slipway_rollout::runtime::{EventSink, Progress, Runtime, RuntimeError, Spec};

use slipway_kube_fake::{FakeKube, PodFate};

/// The rollout driver on this runtime, end to end.
mod driver;

const RACK: &str = "test";

#[derive(Default)]
struct Collect(Mutex<Vec<NewEvent>>);

impl EventSink for Collect {
    fn emit(&self, event: NewEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Collect {
    fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| format!("{} {}", e.source, e.message))
            .collect()
    }
}

fn runtime(fake: &FakeKube) -> (KubernetesRuntime, Arc<Collect>) {
    let events = Arc::new(Collect::default());
    let runtime = KubernetesRuntime::new(
        fake.client(),
        events.clone(),
        KubernetesConfig {
            rack: RACK.to_owned(),
            restart_limit: 3,
        },
    );
    (runtime, events)
}

const MANIFEST: &str = "services:\n  web:\n    build: .\n    port: 3000\n    health:\n      path: /health\n      grace: 5\n      interval: 3\n      timeout: 2\n    scale:\n      count: 2\n    deployment:\n      minimum: 50\n      maximum: 150\n    termination:\n      grace: 20\n";

fn spec_with(app: &str, release: &str, manifest: &str, image: &str) -> Spec {
    Spec::from_record(SpecRecord {
        app: app.to_owned(),
        release: release.to_owned(),
        build: "BABCDEFGHI".to_owned(),
        manifest: manifest.to_owned(),
        env: [("FOO".to_owned(), "bar".to_owned())].into_iter().collect(),
        artifacts: [("web".to_owned(), image.to_owned())].into_iter().collect(),
    })
    .unwrap()
}

fn spec(app: &str, release: &str) -> Arc<Spec> {
    Arc::new(spec_with(
        app,
        release,
        MANIFEST,
        "registry.test/shop/web:1",
    ))
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_exact_objects_are_applied_server_side() {
    let fake = FakeKube::start().await;
    let (rt, _) = runtime(&fake);
    rt.apply(
        "PROMO1",
        spec("shop", "RAAAAAAAAAA"),
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let patches: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    let paths: Vec<&str> = patches.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/test-shop",
            "/apis/networking.k8s.io/v1/namespaces/test-shop/networkpolicies/slipway-app-egress",
            "/api/v1/namespaces/test-shop/secrets/web-env-raaaaaaaaaa",
            "/api/v1/namespaces/test-shop/services/web",
            "/apis/apps/v1/namespaces/test-shop/deployments/web",
        ]
    );
    for p in &patches {
        // Golden bodies, and each one fits its schema (what apply with
        // strict field validation would refuse, the fake refuses too).
        let kind = p.body["kind"].as_str().unwrap();
        if let Err(e) = slipway_kube_fake::schema::validate(kind, &p.body) {
            panic!("{kind} body does not fit the schema: {e}");
        }
        assert_eq!(p.content_type, "application/apply-patch+yaml");
        assert!(
            p.query.contains("fieldManager=slipway") && p.query.contains("force=true"),
            "{}",
            p.query
        );
    }
    assert_eq!(
        patches[0].body,
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "test-shop", "labels": {
                   "rack": "test", "app": "shop",
                   "pod-security.kubernetes.io/enforce": "baseline",
                   "pod-security.kubernetes.io/warn": "restricted",
                   "pod-security.kubernetes.io/audit": "restricted"}}})
    );
    // The app's pods reach nothing in Slipway's namespaces, nor private
    // addresses (where ipBlock may match pods) or the metadata service.
    assert_eq!(
        patches[1].body,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "slipway-app-egress", "namespace": "test-shop",
                     "labels": {"rack": "test", "app": "shop"}},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"namespaceSelector": {"matchExpressions": [
                    {"key": "app.kubernetes.io/part-of", "operator": "NotIn", "values": ["slipway"]}]}}]},
                {"to": [
                    {"ipBlock": {"cidr": "0.0.0.0/0", "except": [
                        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                        "169.254.169.254/32"]}},
                    {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7"]}}]},
            ],
        }})
    );
    assert_eq!(
        patches[2].body,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "web-env-raaaaaaaaaa", "namespace": "test-shop",
                            "labels": {"rack": "test", "app": "shop", "service": "web", "release": "RAAAAAAAAAA"}},
               "data": {"FOO": "YmFy"}})
    );
    assert_eq!(
        patches[4].body,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "test-shop", "labels": {"rack": "test", "app": "shop", "service": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "shop", "service": "web"}},
                "progressDeadlineSeconds": 120,
                "revisionHistoryLimit": 5,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "50%", "maxUnavailable": "50%"}},
                "template": {
                    "metadata": {"labels": {"app": "shop", "service": "web", "release": "RAAAAAAAAAA"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 20,
                        // No API token.
                        "automountServiceAccountToken": false,
                        // Pod Security `restricted`: non-root by uid and
                        // gid, default seccomp profile, and (below) no
                        // privilege escalation and no capabilities.
                        "securityContext": {
                            "runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        // No `<SERVICE>_PORT=tcp://…` variables.
                        "enableServiceLinks": false,
                        "containers": [{
                            "name": "web",
                            "image": "registry.test/shop/web:1",
                            "envFrom": [{"secretRef": {"name": "web-env-raaaaaaaaaa"}}],
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "env": [{"name": "PORT", "value": "3000"}],
                            "ports": [{"name": "main", "containerPort": 3000, "protocol": "TCP"}],
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": 3000},
                                "initialDelaySeconds": 5, "periodSeconds": 3, "timeoutSeconds": 2, "failureThreshold": 3,
                            },
                        }],
                    },
                },
            },
        })
    );

    // Re-applying the same spec changes nothing: same generation and version.
    let before = fake.object("deployments", "test-shop", "web").unwrap();
    assert_eq!(before["metadata"]["generation"], json!(1));
    rt.apply(
        "PROMO1",
        spec("shop", "RAAAAAAAAAA"),
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    assert_eq!(
        fake.object("deployments", "test-shop", "web").unwrap(),
        before
    );

    // A new release: a new Secret (the old one stays for its ReplicaSet,
    // one nothing refers to goes), the generation moves, the selector
    // does not.
    fake.put(
        "replicasets",
        "test-shop",
        "web-1",
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
               "metadata": {"name": "web-1", "namespace": "test-shop", "labels": {"app": "shop", "service": "web", "release": "RAAAAAAAAAA"}},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "shop", "service": "web"}},
                        "template": {"metadata": {"labels": {"app": "shop", "service": "web", "release": "RAAAAAAAAAA"}}}}}),
    );
    fake.put(
        "secrets",
        "test-shop",
        "web-env-rzzzzzzzzzz",
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "web-env-rzzzzzzzzzz", "namespace": "test-shop", "labels": {"app": "shop", "service": "web", "release": "RZZZZZZZZZZ"}}}),
    );
    rt.apply(
        "PROMO2",
        spec("shop", "RBBBBBBBBBB"),
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let after = fake.object("deployments", "test-shop", "web").unwrap();
    assert_eq!(after["metadata"]["generation"], json!(2));
    assert_eq!(after["spec"]["selector"], before["spec"]["selector"]);
    assert_eq!(
        after["spec"]["template"]["metadata"]["labels"]["release"],
        json!("RBBBBBBBBBB")
    );
    assert!(
        fake.object("secrets", "test-shop", "web-env-raaaaaaaaaa")
            .is_some()
    );
    assert!(
        fake.object("secrets", "test-shop", "web-env-rbbbbbbbbbb")
            .is_some()
    );
    assert!(
        fake.object("secrets", "test-shop", "web-env-rzzzzzzzzzz")
            .is_none(),
        "a Secret no ReplicaSet or pod refers to is pruned"
    );
    let prune = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE" && r.path.ends_with("/secrets"))
        .expect("a deletecollection of secrets");
    assert!(
        prune.query.contains("notin"),
        "by selector, never reading Secrets: {}",
        prune.query
    );
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.contains("/secrets")),
        "the runtime never reads a Secret back"
    );

    // The release drops the port: its Service goes.
    let portless = MANIFEST.replace("    port: 3000\n", "");
    rt.apply(
        "PROMO3",
        Arc::new(spec_with(
            "shop",
            "RCCCCCCCCCC",
            &portless,
            "registry.test/shop/web:1",
        )),
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    assert!(fake.object("services", "test-shop", "web").is_none());
}

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

#[tokio::test]
async fn rbac_refusals_say_which_verb_on_which_resource() {
    let fake = FakeKube::start().await;
    fake.deny("patch", "deployments");
    let (rt, _) = runtime(&fake);
    let err = rt
        .apply(
            "PROMO1",
            spec("shop", "RAAAAAAAAAA"),
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(
            "forbids the rollout service to patch deployments web in namespace test-shop"
        ) && text.contains("403"),
        "{text}"
    );
}

#[tokio::test]
async fn transient_errors_are_retried_and_invalid_objects_name_the_field() {
    let fake = FakeKube::start().await;
    let (rt, _) = runtime(&fake);
    fake.fail_next(503, 2);
    fake.fail_next(429, 1);
    rt.apply(
        "PROMO1",
        spec("shop", "RAAAAAAAAAA"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert!(fake.object("deployments", "test-shop", "web").is_some());

    // Someone else's Deployment of the same name with another selector:
    // the API refuses the change, and the error shows the field.
    let mut other = fake.object("deployments", "test-shop", "web").unwrap();
    other["spec"]["selector"]["matchLabels"]["service"] = json!("frontend");
    other["spec"]["template"]["metadata"]["labels"]["service"] = json!("frontend");
    fake.put("deployments", "test-shop", "web", other);
    let err = rt
        .apply(
            "PROMO2",
            spec("shop", "RBBBBBBBBBB"),
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Backend(_)));
    assert!(
        err.to_string().contains("422") && err.to_string().contains("spec.selector: "),
        "{err}"
    );
}

/// Specs whose image tells the fake's controller how the pods behave.
struct ImageFixture;

impl Fixture for ImageFixture {
    fn spec(&self, app: &str, release: &str, behaviour: Behaviour, count: u32) -> Spec {
        // The fake's pod behaviours (slipway_kube_fake's docs).
        let tag = match behaviour {
            Behaviour::Healthy => "ready",
            Behaviour::ExitAtStart => "crash",
            Behaviour::NeverHealthy => "unready",
        };
        let manifest = format!(
            "services:\n  web:\n    build: .\n    port: 3000\n    health:\n      path: /\n      grace: 1\n      interval: 1\n      timeout: 1\n    scale:\n      count: {count}\n"
        );
        spec_with(
            app,
            release,
            &manifest,
            &format!("registry.test/{app}/web:{tag}"),
        )
    }
}

#[tokio::test]
async fn the_kubernetes_runtime_passes_the_conformance_suite() {
    let fake = FakeKube::start().await;
    fake.run_controller();
    let (rt, events) = runtime(&fake);
    slipway_rollout::runtime::conformance::run(&rt, &ImageFixture, "conformance").await;
    assert!(fake.object("namespaces", "", "test-conformance").is_none());
    let lines = events.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("system/k8s/deployment/web Scaled up replica set web-")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn the_fake_keeps_the_real_apis_write_semantics() {
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
    use kube::api::{Api, PostParams};

    let fake = FakeKube::start().await;
    let (rt, _) = runtime(&fake);
    rt.apply(
        "PROMO1",
        spec("shop", "RAAAAAAAAAA"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let api: Api<Deployment> = Api::namespaced(fake.client(), "test-shop");
    let pp = PostParams::default();
    let original = api.get("web").await.unwrap();

    // A PUT changes the spec (generation moves) but not the status.
    let mut changed = original.clone();
    changed.spec.as_mut().unwrap().replicas = Some(5);
    changed.status = Some(DeploymentStatus {
        replicas: Some(9),
        ..Default::default()
    });
    let after = api.replace("web", &pp, &changed).await.unwrap();
    assert_eq!(after.metadata.generation, Some(2));
    assert!(after.status.as_ref().and_then(|s| s.replicas).is_none());

    // A PUT with a stale resourceVersion is a conflict.
    let kube::Error::Api(status) = api.replace("web", &pp, &changed).await.unwrap_err() else {
        panic!("expected an API error");
    };
    assert_eq!(status.code, 409);

    // The status subresource writes the status only.
    let mut with_status = after.clone();
    with_status.spec.as_mut().unwrap().replicas = Some(7);
    with_status.status = Some(DeploymentStatus {
        replicas: Some(5),
        ..Default::default()
    });
    let after = api.replace_status("web", &pp, &with_status).await.unwrap();
    assert_eq!(after.metadata.generation, Some(2));
    assert_eq!(after.spec.unwrap().replicas, Some(5));
    assert_eq!(after.status.unwrap().replicas, Some(5));

    // A misspelt or mistyped field is refused, naming it, as a real
    // server's strict field validation does.
    let mut body = serde_json::to_value(api.get("web").await.unwrap()).unwrap();
    body["metadata"] = json!({"name": "web", "namespace": "test-shop"});
    body.as_object_mut().unwrap().remove("status");
    body["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = json!(3);
    let patch = kube::api::Patch::Apply(&body);
    let params = kube::api::PatchParams::apply("slipway").force();
    let kube::Error::Api(status) = api.patch("web", &params, &patch).await.unwrap_err() else {
        panic!("expected an API error");
    };
    assert_eq!(status.code, 400);
    assert!(
        status
            .message
            .contains("spec.template.spec.containers[0].readinessProbe.periodSecond"),
        "{}",
        status.message
    );
    body["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] =
        json!({"httpGet": {"path": "/", "port": 3000}});
    body["spec"]["replicas"] = json!("two");
    let patch = kube::api::Patch::Apply(&body);
    let kube::Error::Api(status) = api.patch("web", &params, &patch).await.unwrap_err() else {
        panic!("expected an API error");
    };
    assert_eq!(status.code, 400, "{}", status.message);
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

/// Waits (polling the runtime as the driver does) until `release` of
/// `app` reaches an outcome.
async fn outcome(rt: &KubernetesRuntime, app: &str, release: &str) -> Progress {
    let start = Instant::now();
    loop {
        let p = rt
            .progress(app, release, Duration::from_millis(200))
            .await
            .unwrap();
        if !matches!(p, Progress::Progressing { .. }) {
            return p;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "stuck: {p:?}");
    }
}

/// The manifest's `scale.cpu`/`scale.memory` reach the pods as requests
/// (memory also as the limit), through the fake's schema-checked apply and
/// its ReplicaSet; a value set by hand wins over the manifest's, field by
/// field, and rolls the pods.
#[tokio::test]
async fn manifest_resources_reach_the_pods_and_hand_set_ones_win() {
    let fake = FakeKube::start().await;
    fake.run_controller();
    let (rt, _) = runtime(&fake);
    let manifest = MANIFEST.replace(
        "      count: 2\n",
        "      count: 2\n      cpu: 250\n      memory: 256\n",
    );
    let mut spec = spec_with("shop", "RAAAAAAAAAA", &manifest, "registry.test/shop/web:1");
    rt.apply("PROMO1", Arc::new(spec.clone()), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        outcome(&rt, "shop", "RAAAAAAAAAA").await,
        Progress::Complete
    );
    let resources = |fake: &FakeKube| -> Vec<serde_json::Value> {
        fake.objects("pods", "test-shop")
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| p["spec"]["containers"][0]["resources"].clone())
            .collect()
    };
    let manifest_resources = json!({"requests": {"cpu": "250m", "memory": "256Mi"},
                                    "limits": {"memory": "256Mi"}});
    assert_eq!(
        resources(&fake),
        [manifest_resources.clone(), manifest_resources]
    );

    spec.overrides.scale.insert(
        "web".into(),
        slipway_rollout::overrides::ServiceScale {
            count: None,
            cpu: 0,
            memory: 512,
        },
    );
    rt.apply("SCALE1", Arc::new(spec), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        outcome(&rt, "shop", "RAAAAAAAAAA").await,
        Progress::Complete
    );
    let hand_set = json!({"requests": {"cpu": "250m", "memory": "512Mi"},
                          "limits": {"memory": "512Mi"}});
    assert_eq!(resources(&fake), [hand_set.clone(), hand_set]);
}
