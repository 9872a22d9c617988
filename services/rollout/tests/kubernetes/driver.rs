//! The rollout driver on the Kubernetes runtime, end to end against the
//! fake cluster (its controller and kubelet running): the service
//! in-process with `--runtime kubernetes`, a fake release service, and a
//! promotion of a crash-looping release that the driver rolls back to the
//! previous release on its own, long before the deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use slipway_api::release::v1::PromotionOutcome;
use slipway_api::rollout::v1 as pb;
use slipway_kube_fake::FakeKube;
use slipway_rollout::config::RuntimeKind;

use crate::helpers::{connect, finish, processes, promotion_id, serve, start};

/// Ample for a rollout the fake completes in well under a second.
const LIMIT: Duration = Duration::from_secs(60);

/// Release `release` of app `shop`: two processes of `image`, probed every
/// second after a second of grace.
fn release(release: &str, image: &str) -> pb::ReleaseSpec {
    pb::ReleaseSpec {
        app: "shop".to_owned(),
        release: release.to_owned(),
        build: "BABCDEFGHIJ".to_owned(),
        manifest: "services:\n  web:\n    build: .\n    port: 3000\n    health:\n      path: /\n      grace: 1\n      interval: 1\n      timeout: 1\n    scale:\n      count: 2\n".to_owned(),
        env: [("FOO".to_owned(), "bar".to_owned())].into_iter().collect(),
        artifacts: [("web".to_owned(), image.to_owned())].into_iter().collect(),
    }
}

/// The rollout service on the Kubernetes runtime, pointed at `fake`
/// through the kubeconfig it wrote at `kubeconfig`.
async fn kube_service(
    kubeconfig: &Path,
) -> (
    slipway_api::rollout::v1::rollout_service_client::RolloutServiceClient<slipway_rpc::Channel>,
    crate::helpers::FakeRelease,
    tokio::sync::oneshot::Sender<()>,
    tempfile::TempDir,
) {
    let kubeconfig = kubeconfig.to_owned();
    let (addr, release, stop, dir) = serve(move |config| {
        config.runtime = RuntimeKind::Kubernetes;
        config.kubeconfig = Some(kubeconfig);
        config.rack = "test".to_owned();
    })
    .await;
    (connect(addr).await, release, stop, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_rolls_a_crash_looping_release_back_on_kubernetes() {
    let fake = FakeKube::start().await;
    fake.run_controller();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    let (mut client, release_service, _stop, _data) = kube_service(&kubeconfig).await;

    // The first release rolls out.
    let good = release("RAAAAAAAAAA", "registry.test/shop/web:1");
    let first = promotion_id("shop", 1);
    start(&mut client, &first, good.clone(), None, 0).await;
    let (done, _) = finish(&mut client, &first, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Running, "{done:?}");

    // The next one crash-loops (the fake's `crash` tag): the driver fails
    // it fast and applies the previous release again, on its own.
    let second = promotion_id("shop", 2);
    let began = Instant::now();
    start(
        &mut client,
        &second,
        release("RBBBBBBBBBB", "registry.test/shop/web:crash"),
        Some(good),
        600,
    )
    .await;
    let (done, events) = finish(&mut client, &second, LIMIT).await;
    let took = began.elapsed();
    assert_eq!(done.phase(), pb::RolloutPhase::Reverted, "{done:?}");
    assert!(
        took < Duration::from_secs(30),
        "fail-fast, not the 600 s deadline: {took:?}"
    );
    // The reason names the service, the pod's state and why.
    assert!(
        done.reason
            .starts_with("service web: container web of pod web-")
            && done
                .reason
                .contains("is in CrashLoopBackOff: keeps exiting")
            && done.reason.contains("exit code 1"),
        "{}",
        done.reason
    );
    let lines: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    assert!(
        lines.contains(&"Status: Updating => Reverting")
            && lines.contains(&"Status: Reverting => Reverted"),
        "{lines:#?}"
    );
    let outcome = release_service.wait_for(&second).await;
    assert_eq!(outcome.outcome, PromotionOutcome::RolledBack);
    assert_eq!(outcome.reason, done.reason);

    // The previous release serves again: its template is the Deployment's,
    // its two pods run, and nothing of the crashing release is left.
    let deployment = fake.object("deployments", "test-shop", "web").unwrap();
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["release"],
        "RAAAAAAAAAA"
    );
    let procs = processes(&mut client, "shop").await;
    assert!(
        procs.len() == 2
            && procs
                .iter()
                .all(|p| p.release == "RAAAAAAAAAA" && p.status == "running"),
        "{procs:?}"
    );
    let pods = fake.objects("pods", "test-shop");
    assert!(
        pods.iter()
            .all(|p| p["metadata"]["labels"]["release"] == "RAAAAAAAAAA"),
        "{pods:#?}"
    );
}
