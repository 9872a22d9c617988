//! The objects the Kubernetes runtime writes, against the fake API server:
//! the exact objects and server-side apply patches sent, the manifest's
//! resources on the pods, the real API's write semantics the fake keeps,
//! and clear errors for RBAC refusals, transient failures and invalid
//! objects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use slipway_kube_fake::FakeKube;
use slipway_rollout::runtime::kubernetes::KubernetesRuntime;
use slipway_rollout::runtime::{Progress, Runtime, RuntimeError};

use super::{MANIFEST, runtime, spec, spec_with};

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
