//! One-off processes and the release phase on the Kubernetes runtime,
//! against the fake cluster (its kubelet runs run-to-completion pods and
//! exec sessions as real local processes): the one-off conformance suite,
//! the pod a one-off gets (an unpromoted release's env, never touching the
//! app's Deployment), and a release command that gates a promotion, is
//! stopped by a cancel, and is never run twice when the rollout service is
//! killed while it runs.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use slipway_api::rollout::v1 as pb;
use slipway_events::NewEvent;
use slipway_kube_fake::FakeKube;
use slipway_rollout::config::RuntimeKind;
use slipway_rollout::model::SpecRecord;
use slipway_rollout::runtime::conformance::oneoffs::drain;
use slipway_rollout::runtime::conformance::{Behaviour, Fixture};
use slipway_rollout::runtime::kubernetes::{KubernetesConfig, KubernetesRuntime};
use slipway_rollout::runtime::{
    EventSink, OneOffStatus, Progress, RunRequest, Runtime, SessionKind, Spec,
};

use crate::helpers::{FakeRelease, connect, eventually, finish, promotion_id, serve, start};

const LIMIT: Duration = Duration::from_secs(60);

/// Waits until `id` of `app` reports `status`.
async fn wait_status(rt: &KubernetesRuntime, app: &str, id: &str, status: OneOffStatus) {
    let start = Instant::now();
    loop {
        let info = rt.process(app, id).await.expect("process");
        if info.status == status {
            return;
        }
        assert!(
            start.elapsed() < LIMIT,
            "{id} is {:?}, not {status:?}",
            info.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Quiet;

impl EventSink for Quiet {
    fn emit(&self, _: NewEvent) {}
}

fn runtime(fake: &FakeKube) -> KubernetesRuntime {
    KubernetesRuntime::new(
        fake.client(),
        Arc::new(Quiet),
        KubernetesConfig {
            rack: "test".to_owned(),
            restart_limit: 3,
        },
    )
}

const MANIFEST: &str = "services:\n  web:\n    build: .\n    port: 3000\n    health:\n      path: /\n      grace: 1\n      interval: 1\n      timeout: 1\n    scale:\n      count: 1\n";

fn spec(app: &str, release: &str, foo_value: &str, manifest: &str) -> Spec {
    Spec::from_record(SpecRecord {
        app: app.to_owned(),
        release: release.to_owned(),
        build: "BABCDEFGHI".to_owned(),
        manifest: manifest.to_owned(),
        env: [("FOO".to_owned(), foo_value.to_owned())]
            .into_iter()
            .collect(),
        artifacts: [("web".to_owned(), format!("registry.test/{app}/web:1"))]
            .into_iter()
            .collect(),
    })
    .unwrap()
}

/// Releases whose pods the fake makes ready at once (one-offs run for real).
struct ImageFixture;

impl Fixture for ImageFixture {
    fn spec(&self, app: &str, release: &str, _: Behaviour, count: u32) -> Spec {
        spec(
            app,
            release,
            "unused",
            &MANIFEST.replace("count: 1", &format!("count: {count}")),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_runtime_passes_the_oneoff_conformance_suite() {
    let fake = FakeKube::start().await;
    fake.run_controller();
    let rt = runtime(&fake);
    slipway_rollout::runtime::conformance::oneoffs::run(&rt, &ImageFixture, "oneoffs").await;
    // Every one-off pod goes (once stopped: the fake stops a pod over up
    // to half a second); no Deployment was ever created.
    let start = Instant::now();
    while !fake.objects("pods", "test-oneoffs").is_empty() {
        assert!(start.elapsed() < LIMIT, "one-off pods left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fake.objects("deployments", "test-oneoffs").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_oneoff_runs_an_unpromoted_release_in_a_pod_of_its_own() {
    let fake = FakeKube::start().await;
    fake.run_controller();
    let rt = runtime(&fake);
    let live = Arc::new(spec("shop", "RAAAAAAAAAA", "live value", MANIFEST));
    rt.apply("PROMO1", live, LIMIT).await.unwrap();
    let start = Instant::now();
    while rt
        .progress("shop", "RAAAAAAAAAA", Duration::from_millis(200))
        .await
        .unwrap()
        != Progress::Complete
    {
        assert!(start.elapsed() < LIMIT, "the first release never completed");
    }
    let deployment_before = fake.object("deployments", "test-shop", "web").unwrap();

    // Attached: the staged release's env, through exec.
    let staged = Arc::new(spec("shop", "RBBBBBBBBBB", "staged value", MANIFEST));
    let request = |command: &str, attach: bool| RunRequest {
        service: "web".into(),
        command: Some(command.into()),
        timeout: Duration::from_secs(120),
        attach,
    };
    let p = rt
        .run(staged.clone(), request("echo \"$FOO\"; exit 3", true))
        .await
        .unwrap();
    let session = rt
        .session("shop", &p.id, SessionKind::Attach)
        .await
        .unwrap();
    let (output, code) = drain(session, b"").await;
    assert_eq!(
        (String::from_utf8_lossy(&output).as_ref(), code),
        ("staged value\n", 3)
    );
    wait_status(&rt, "shop", &p.id, OneOffStatus::Failed).await;

    // Detached: its pod, as the API server has it.
    let holder = rt
        .run(staged.clone(), request("sleep 30", false))
        .await
        .unwrap();
    let pod = fake.object("pods", "test-shop", &holder.id).unwrap();
    assert_eq!(
        pod["metadata"]["labels"],
        json!({"app": "shop", "service": "web", "release": "RBBBBBBBBBB", "type": "run"})
    );
    assert_eq!(
        pod["metadata"]["annotations"]["slipway.dev/command"],
        "sleep 30"
    );
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["kind"], &owner["name"], &owner["controller"]),
        (
            &json!("Secret"),
            &json!("web-env-rbbbbbbbbbb"),
            &json!(true)
        ),
        "a ReplicaSet must not adopt it"
    );
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(spec["activeDeadlineSeconds"], 120);
    assert_eq!(
        spec["readinessGates"][0]["conditionType"],
        "slipway.dev/one-off"
    );
    let template = &deployment_before["spec"]["template"]["spec"];
    assert_eq!(spec["securityContext"], template["securityContext"]);
    assert_eq!(
        spec["automountServiceAccountToken"],
        template["automountServiceAccountToken"]
    );
    let container = &spec["containers"][0];
    let template_container = &template["containers"][0];
    assert_eq!(container["image"], template_container["image"]);
    assert_eq!(
        container["securityContext"],
        template_container["securityContext"]
    );
    assert_eq!(container["command"], json!(["/bin/sh", "-c", "sleep 30"]));
    assert_eq!(
        container["envFrom"],
        json!([{"secretRef": {"name": "web-env-rbbbbbbbbbb"}}])
    );
    assert!(container["readinessProbe"].is_null());
    wait_status(&rt, "shop", &holder.id, OneOffStatus::Running).await;
    // Exec into it: the same env.
    let exec = rt
        .session(
            "shop",
            &holder.id,
            SessionKind::Exec("echo \"$FOO\" >&2".into()),
        )
        .await
        .unwrap();
    assert_eq!(drain(exec, b"").await, (b"staged value\n".to_vec(), 0));
    let listed = rt.processes("shop").await.unwrap();
    assert!(
        listed
            .iter()
            .any(|p| p.id == holder.id && p.command == "sleep 30" && p.status == "running"),
        "{listed:?}"
    );
    // The app's rollout state is untouched: same Deployment, still complete.
    assert_eq!(
        rt.progress("shop", "RAAAAAAAAAA", Duration::ZERO)
            .await
            .unwrap(),
        Progress::Complete
    );
    let deployment_after = fake.object("deployments", "test-shop", "web").unwrap();
    assert_eq!(deployment_after["spec"], deployment_before["spec"]);
    assert_eq!(
        deployment_after["metadata"]["generation"],
        deployment_before["metadata"]["generation"]
    );

    rt.stop("shop", &holder.id).await.unwrap();
    wait_status(&rt, "shop", &holder.id, OneOffStatus::Failed).await;
    let start = Instant::now();
    while fake.object("pods", "test-shop", &holder.id).is_some() {
        assert!(start.elapsed() < LIMIT, "the stopped one-off's pod stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rollout service on the Kubernetes runtime, pointed at the fake
/// through the kubeconfig it wrote at `kubeconfig`.
async fn kube_service(
    kubeconfig: &Path,
) -> (
    slipway_api::rollout::v1::rollout_service_client::RolloutServiceClient<slipway_rpc::Channel>,
    tokio::sync::oneshot::Sender<()>,
    tempfile::TempDir,
) {
    let kubeconfig = kubeconfig.to_owned();
    let (addr, _release, stop, dir) = serve(move |config| {
        config.runtime = RuntimeKind::Kubernetes;
        config.kubeconfig = Some(kubeconfig);
        config.rack = "test".to_owned();
    })
    .await;
    (connect(addr).await, stop, dir)
}

fn release(release: &str, command: &str) -> pb::ReleaseSpec {
    pb::ReleaseSpec {
        app: "shop".to_owned(),
        release: release.to_owned(),
        build: "BABCDEFGHIJ".to_owned(),
        manifest: format!(
            "{MANIFEST}release:\n  service: web\n  command: {command}\n  timeout: 60\n"
        ),
        env: [("FOO".to_owned(), format!("env of {release}"))]
            .into_iter()
            .collect(),
        artifacts: [("web".to_owned(), "registry.test/shop/web:1".to_owned())]
            .into_iter()
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_command_gates_a_promotion_on_kubernetes() {
    let (fake, _dir, kubeconfig) = cluster().await;
    let (mut client, _stop, _data) = kube_service(&kubeconfig).await;

    // A failing command fails the promotion before any Deployment exists.
    // Both lines on stderr: exec carries stdout and stderr on channels of
    // their own, so lines of the two have no order between them.
    let failing = release(
        "RAAAAAAAAAA",
        "'echo migrating $FOO >&2; echo boom >&2; exit 3'",
    );
    let p1 = promotion_id("shop", 1);
    start(&mut client, &p1, failing, None, 0).await;
    let (done, _) = finish(&mut client, &p1, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Failure, "{done:?}");
    assert_eq!(
        done.reason,
        "release command exited with status 3 (last output: migrating env of RAAAAAAAAAA | boom)"
    );
    assert!(fake.object("deployments", "test-shop", "web").is_none());

    // A succeeding one runs once, its output in the events before the
    // rollout applies anything; the release then rolls out.
    let passing = release("RBBBBBBBBBB", "'echo migrated $FOO'");
    let p2 = promotion_id("shop", 2);
    start(&mut client, &p2, passing, None, 0).await;
    let (done, events) = finish(&mut client, &p2, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Running, "{done:?}");
    let output: Vec<&pb::Event> = events
        .iter()
        .filter(|e| e.message == "migrated env of RBBBBBBBBBB")
        .collect();
    assert_eq!(output.len(), 1, "{events:?}");
    assert!(
        output[0].source.starts_with("service/web/web-"),
        "{events:?}"
    );
    let deployment = fake.object("deployments", "test-shop", "web").unwrap();
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["release"],
        "RBBBBBBBBBB"
    );
    // The release command's pod is gone.
    let start = Instant::now();
    while fake
        .objects("pods", "test-shop")
        .iter()
        .any(|p| p["metadata"]["labels"]["type"] == "run")
    {
        assert!(start.elapsed() < LIMIT, "the release command's pod stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fake cluster with its controller running, and a kubeconfig for it in
/// a fresh directory.
pub(crate) async fn cluster() -> (FakeKube, tempfile::TempDir, std::path::PathBuf) {
    let fake = FakeKube::start().await;
    fake.run_controller();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    (fake, dir, kubeconfig)
}

/// The pods of the app's one-offs.
fn run_pods(fake: &FakeKube) -> Vec<serde_json::Value> {
    fake.objects("pods", "test-shop")
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["type"] == "run")
        .collect()
}

/// How many times a release command that appends to `file` ran.
fn runs(file: &Path) -> usize {
    std::fs::read_to_string(file).map_or(0, |s| s.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_the_release_command_stops_it_and_ends_cancelled_on_kubernetes() {
    let (fake, dir, kubeconfig) = cluster().await;
    let (mut client, _stop, _data) = kube_service(&kubeconfig).await;
    let ran = dir.path().join("runs");

    let slow = release(
        "RAAAAAAAAAA",
        &format!("'echo run >> {}; exec sleep 30'", ran.display()),
    );
    let p1 = promotion_id("shop", 1);
    start(&mut client, &p1, slow, None, 0).await;
    eventually(LIMIT, "the release command to run", || async {
        runs(&ran) == 1
    })
    .await;
    let began = Instant::now();
    client
        .cancel_rollout(pb::CancelRolloutRequest { id: p1.clone() })
        .await
        .unwrap();
    let (done, _) = finish(&mut client, &p1, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Cancelled, "{done:?}");
    assert_eq!(done.reason, "cancelled during the release command");
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "{:?}",
        began.elapsed()
    );
    // Nothing of the release started, and its command's pod goes.
    assert!(fake.object("deployments", "test-shop", "web").is_none());
    eventually(LIMIT, "the release command's pod to go", || async {
        run_pods(&fake).is_empty()
    })
    .await;
    assert_eq!(runs(&ran), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_the_release_command_never_runs_it_twice_on_kubernetes() {
    let (fake, dir, kubeconfig) = cluster().await;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let url = format!("sqlite:{}", data.join("rollout.db").display());
    let release_service = FakeRelease::default();
    let release_addr = release_service.spawn().await.to_string();
    let args: Vec<&std::ffi::OsStr> = vec![
        "--runtime".as_ref(),
        "kubernetes".as_ref(),
        "--rack".as_ref(),
        "test".as_ref(),
        "--kubeconfig".as_ref(),
        kubeconfig.as_os_str(),
    ];
    let ran = dir.path().join("runs");

    let (mut child, addr) =
        crate::crash::spawn_binary_with(&data, &url, &release_addr, &args).await;
    let mut client = connect(addr).await;
    let p1 = promotion_id("shop", 1);
    let slow = release(
        "RAAAAAAAAAA",
        &format!("'echo run >> {}; exec sleep 5'", ran.display()),
    );
    start(&mut client, &p1, slow, None, 0).await;
    eventually(LIMIT, "the release command to run", || async {
        runs(&ran) == 1
    })
    .await;
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();

    let (_child, addr) = crate::crash::spawn_binary_with(&data, &url, &release_addr, &args).await;
    let mut client = connect(addr).await;
    let (done, events) = finish(&mut client, &p1, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Failure, "{done:?}");
    assert!(
        done.reason.contains("how it ended is unknown") && done.reason.contains("not run twice"),
        "{done:?}"
    );
    // The restarted service deleted the command's pod (its holder would
    // otherwise stay until the timeout), and nothing of the release started.
    assert!(
        events.iter().any(|e| e
            .message
            .starts_with("Stopped what was left of the release command")),
        "{events:?}"
    );
    eventually(LIMIT, "the release command's pod to go", || async {
        run_pods(&fake).is_empty()
    })
    .await;
    assert!(fake.object("deployments", "test-shop", "web").is_none());
    // Past the command's own end it still ran once.
    tokio::time::sleep(Duration::from_secs(6)).await; // absence check: a second run would have begun by now
    assert_eq!(runs(&ran), 1);
}
