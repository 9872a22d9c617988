//! The Kubernetes runtime against the fake API server: the exact objects
//! and patches sent, progress read from status, fail-fast from pods and
//! deadline, events printed once, watches that survive drops and 410s,
//! clear RBAC and validation errors, and the runtime conformance suite
//! with the fake's controller playing the cluster.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_events::NewEvent;
use slipway_rollout::model::SpecRecord;
use slipway_rollout::runtime::conformance::{Behaviour, Fixture};
use slipway_rollout::runtime::kubernetes::{KubernetesConfig, KubernetesRuntime};
use slipway_rollout::runtime::{EventSink, Spec};

use slipway_kube_fake::FakeKube;

/// The rollout driver on this runtime, end to end.
mod driver;
/// The objects applied, the API's write semantics and its errors.
mod objects;
/// Progress, fail-fast and events.
mod progress;

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
