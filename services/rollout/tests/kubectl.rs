//! `kubectl` as an independent reader of the fake cluster: for a rollout
//! that succeeds, one that misses its progress deadline and is rolled back,
//! and one whose pods crash-loop, what the real `kubectl` (`rollout status`,
//! `get -o json`) reads from the fake agrees with the outcome and reason
//! the Kubernetes runtime reports. This checks the wire shapes and the
//! runtime's reading against kubectl's, not the fake's controller against
//! the real one. A missing `kubectl` fails these tests. kubectl runs
//! blocking, so the tests run on two threads (the fake serves on the other).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use slipway_kube_fake::FakeKube;
use slipway_rollout::model::SpecRecord;
use slipway_rollout::runtime::conformance::settle;
use slipway_rollout::runtime::kubernetes::{KubernetesConfig, KubernetesRuntime};
use slipway_rollout::runtime::{EventSink, Progress, Runtime, Spec};

struct Discard;

impl EventSink for Discard {
    fn emit(&self, _: slipway_events::NewEvent) {}
}

/// The fake with its controllers running, a runtime on it, and `kubectl`.
struct Setup {
    fake: FakeKube,
    runtime: KubernetesRuntime,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Self {
        let fake = FakeKube::start().await;
        fake.run_controller();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        fake.write_kubeconfig(&kubeconfig).unwrap();
        let runtime = KubernetesRuntime::new(
            fake.client(),
            Arc::new(Discard),
            KubernetesConfig {
                rack: "kc".to_owned(),
                restart_limit: 3,
            },
        );
        Self {
            fake,
            runtime,
            kubeconfig,
            _dir: dir,
        }
    }

    /// Runs kubectl in the app's namespace: (exit success, stdout + stderr).
    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["--namespace", "kc-shop", "--request-timeout", "10s"])
            .args(args)
            .output()
            .expect("kubectl must be installed (it is on the development machines)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let (ok, text) = self.kubectl(&all);
        assert!(ok, "kubectl {args:?}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}: {text}"))
    }

    fn rollout_status(&self) -> (bool, String) {
        self.kubectl(&["rollout", "status", "deployment/web", "--watch=false"])
    }
}

/// `release` of app `shop` running `image`; grace and interval of its
/// health check as given, 2 processes.
fn spec(release: &str, image: &str, grace: u32) -> Arc<Spec> {
    let manifest = format!(
        "services:\n  web:\n    build: .\n    port: 3000\n    health:\n      path: /\n      grace: {grace}\n      interval: 1\n      timeout: 1\n    scale:\n      count: 2\n"
    );
    Arc::new(
        Spec::from_record(SpecRecord {
            app: "shop".to_owned(),
            release: release.to_owned(),
            build: "BABCDEFGHI".to_owned(),
            manifest,
            env: Default::default(),
            artifacts: [("web".to_owned(), image.to_owned())].into_iter().collect(),
        })
        .unwrap(),
    )
}

const LIMIT: Duration = Duration::from_secs(60);

/// The release of the Deployment's template and of every pod, as kubectl
/// reads them.
fn releases(setup: &Setup) -> (String, Vec<String>) {
    let d = setup.json(&["get", "deployment", "web"]);
    let target = d["spec"]["template"]["metadata"]["labels"]["release"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pods = setup.json(&["get", "pods", "-l", "app=shop"]);
    let mut of_pods: Vec<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["metadata"]["labels"]["release"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    of_pods.dedup();
    (target, of_pods)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_agrees_on_a_successful_rollout() {
    let setup = Setup::start().await;
    let rt = &setup.runtime;
    rt.apply(
        "PROMO1",
        spec("RGOODAAAAAA", "r.test/shop/web:slow-1", 1),
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!(
        settle(rt, "shop", "RGOODAAAAAA", LIMIT).await,
        Progress::Complete
    );
    let (ok, text) = setup.rollout_status();
    assert!(ok && text.contains("successfully rolled out"), "{text}");
    let d = setup.json(&["get", "deployment", "web"]);
    let progressing = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .cloned()
        .unwrap();
    assert_eq!(progressing["reason"], "NewReplicaSetAvailable", "{d}");
    assert_eq!(d["status"]["availableReplicas"], 2);
    assert_eq!(
        releases(&setup),
        ("RGOODAAAAAA".to_owned(), vec!["RGOODAAAAAA".to_owned()])
    );
    let pods = setup.json(&["get", "pods", "-l", "app=shop"]);
    assert!(
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")),
        "{pods}"
    );
}

/// The new release never gets ready within its 2 s deadline; both the
/// runtime and kubectl say the deadline passed. Rolling back (what the
/// driver does next) completes although the Deployment keeps its
/// `ProgressDeadlineExceeded` until the rollback makes progress, and
/// kubectl then reads the rollback rolled out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_agrees_on_a_missed_deadline_and_the_rollback() {
    let setup = Setup::start().await;
    let rt = &setup.runtime;
    let good = spec("RGOODAAAAAA", "r.test/shop/web:ready", 1);
    rt.apply("PROMO1", good.clone(), LIMIT).await.unwrap();
    assert_eq!(
        settle(rt, "shop", "RGOODAAAAAA", LIMIT).await,
        Progress::Complete
    );

    // Never ready, and no probe failure before the deadline (grace 300 s).
    let slow = spec("RSLOWAAAAAA", "r.test/shop/web:slow-600", 300);
    rt.apply("PROMO2", slow, Duration::from_secs(2))
        .await
        .unwrap();
    let reason = match settle(rt, "shop", "RSLOWAAAAAA", LIMIT).await {
        Progress::Failed { reason } => reason,
        other => panic!("the deadline must fail the rollout, got {other:?}"),
    };
    assert!(
        reason.contains("service web: deadline exceeded")
            && reason.contains("has timed out progressing"),
        "{reason}"
    );
    let (ok, text) = setup.rollout_status();
    assert!(
        !ok && text.contains("exceeded its progress deadline"),
        "kubectl: {text}"
    );

    // The automatic rollback: the fallback applied again.
    rt.apply("PROMO2", good, LIMIT).await.unwrap();
    assert_eq!(
        settle(rt, "shop", "RGOODAAAAAA", LIMIT).await,
        Progress::Complete
    );
    let (ok, text) = setup.rollout_status();
    assert!(
        ok && text.contains("successfully rolled out"),
        "kubectl: {text}"
    );
    assert_eq!(
        releases(&setup),
        ("RGOODAAAAAA".to_owned(), vec!["RGOODAAAAAA".to_owned()])
    );
    // The rollback re-used the first ReplicaSet; the failed one is empty.
    let sets = setup.json(&["get", "replicasets", "-l", "app=shop"]);
    let sizes: Vec<(String, i64)> = sets["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rs| {
            (
                rs["spec"]["template"]["metadata"]["labels"]["release"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                rs["spec"]["replicas"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sizes.len(), 2, "{sizes:?}");
    assert!(
        sizes.contains(&("RGOODAAAAAA".to_owned(), 2))
            && sizes.contains(&("RSLOWAAAAAA".to_owned(), 0)),
        "{sizes:?}"
    );
    drop(setup.fake);
}

/// A crash-looping release fails fast; the pod the runtime names is, for
/// kubectl, in CrashLoopBackOff with restarts and BackOff events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_agrees_on_a_crash_loop() {
    let setup = Setup::start().await;
    let rt = &setup.runtime;
    let good = spec("RGOODAAAAAA", "r.test/shop/web:ready", 1);
    rt.apply("PROMO1", good.clone(), LIMIT).await.unwrap();
    assert_eq!(
        settle(rt, "shop", "RGOODAAAAAA", LIMIT).await,
        Progress::Complete
    );

    rt.apply(
        "PROMO2",
        spec("RCRASHAAAAA", "r.test/shop/web:crash", 1),
        LIMIT,
    )
    .await
    .unwrap();
    let reason = match settle(rt, "shop", "RCRASHAAAAA", LIMIT).await {
        Progress::Failed { reason } => reason,
        other => panic!("a crash loop must fail the rollout, got {other:?}"),
    };
    assert!(reason.contains("CrashLoopBackOff"), "{reason}");
    let pod = reason
        .split("of pod ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("the reason names the pod: {reason}"));
    let p = setup.json(&["get", "pod", pod]);
    let status = &p["status"]["containerStatuses"][0];
    assert_eq!(
        status["state"]["waiting"]["reason"], "CrashLoopBackOff",
        "{p}"
    );
    assert!(status["restartCount"].as_i64().unwrap() >= 1, "{p}");
    assert_eq!(status["lastState"]["terminated"]["exitCode"], 1, "{p}");
    let events = setup.json(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod},reason=BackOff"),
    ]);
    assert!(!events["items"].as_array().unwrap().is_empty(), "{events}");
    let (ok, text) = setup.rollout_status();
    assert!(!ok || !text.contains("successfully"), "kubectl: {text}");

    rt.apply("PROMO2", good, LIMIT).await.unwrap();
    assert_eq!(
        settle(rt, "shop", "RGOODAAAAAA", LIMIT).await,
        Progress::Complete
    );
    let (ok, text) = setup.rollout_status();
    assert!(
        ok && text.contains("successfully rolled out"),
        "kubectl: {text}"
    );
    assert_eq!(
        releases(&setup),
        ("RGOODAAAAAA".to_owned(), vec!["RGOODAAAAAA".to_owned()])
    );
}
