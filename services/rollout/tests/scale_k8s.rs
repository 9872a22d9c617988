//! Scale set by hand and restarts on the Kubernetes runtime, against the
//! fake API server: the Deployment's replicas, resource requests and
//! limits, and the restart annotation come from the spec's overrides, and
//! progress counts the scaled number.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone as _, Utc};
use serde_json::json;
use slipway_events::NewEvent;
use slipway_rollout::model::SpecRecord;
use slipway_rollout::overrides::ServiceScale;
use slipway_rollout::runtime::kubernetes::{KubernetesConfig, KubernetesRuntime};
use slipway_rollout::runtime::{EventSink, Progress, Runtime, Spec};

use slipway_kube_fake::FakeKube;

struct Quiet;

impl EventSink for Quiet {
    fn emit(&self, _: NewEvent) {}
}

const MANIFEST: &str =
    "services:\n  web:\n    build: .\n    port: 3000\n    scale:\n      count: 2\n";

fn spec() -> Spec {
    Spec::from_record(SpecRecord {
        app: "shop".to_owned(),
        release: "RAAAAAAAAAA".to_owned(),
        build: "BABCDEFGHI".to_owned(),
        manifest: MANIFEST.to_owned(),
        env: Default::default(),
        artifacts: [("web".to_owned(), "registry.test/shop/web:1".to_owned())]
            .into_iter()
            .collect(),
    })
    .unwrap()
}

#[tokio::test]
async fn scale_and_restart_set_replicas_resources_and_the_restart_annotation() {
    let fake = FakeKube::start().await;
    let rt = KubernetesRuntime::new(
        fake.client(),
        Arc::new(Quiet),
        KubernetesConfig {
            rack: "test".to_owned(),
            restart_limit: 3,
        },
    );
    let deadline = Duration::from_secs(120);
    let wait = Duration::from_millis(10);
    rt.apply("PROMO1", Arc::new(spec()), deadline)
        .await
        .unwrap();
    let web = || fake.object("deployments", "test-shop", "web").unwrap();
    assert_eq!(web()["spec"]["replicas"], json!(2), "the manifest's count");
    let container = |d: &serde_json::Value| d["spec"]["template"]["spec"]["containers"][0].clone();
    assert!(container(&web()).get("resources").is_none());

    // Scaled by hand: 5 processes, 250 millicores, 512 MiB.
    let mut scaled = spec();
    scaled.overrides.scale.insert(
        "web".into(),
        ServiceScale {
            count: Some(5),
            cpu: 250,
            memory: 512,
        },
    );
    rt.apply("PSCALE", Arc::new(scaled.clone()), deadline)
        .await
        .unwrap();
    assert_eq!(web()["spec"]["replicas"], json!(5));
    assert_eq!(
        container(&web())["resources"],
        json!({"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "512Mi"}})
    );
    assert!(
        web()["spec"]["template"]["metadata"]
            .get("annotations")
            .is_none()
    );
    let p = rt.progress("shop", "RAAAAAAAAAA", wait).await.unwrap();
    assert!(
        matches!(&p, Progress::Progressing { services } if services[0].desired == 5),
        "{p:?}"
    );
    fake.complete_deployment("test-shop", "web");
    assert_eq!(
        rt.progress("shop", "RAAAAAAAAAA", wait).await.unwrap(),
        Progress::Complete
    );

    // A restart: the pod template changes (so Kubernetes replaces the pods,
    // rolling), the scale stays.
    let mut restarted = scaled;
    let at = Utc.timestamp_opt(1_700_000_000, 5).unwrap();
    restarted.overrides.restarted.insert("web".into(), at);
    rt.apply("PRESTART", Arc::new(restarted), deadline)
        .await
        .unwrap();
    let d = web();
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["convox.com/restart"],
        json!("1700000000000000005")
    );
    assert_eq!(d["spec"]["replicas"], json!(5));
    assert_eq!(
        d["metadata"]["generation"],
        json!(3),
        "each change is a new generation"
    );
}
