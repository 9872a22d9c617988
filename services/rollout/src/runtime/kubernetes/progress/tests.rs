use super::*;
use serde_json::{Value, json};
use slipway_domain::Manifest;

const APPLIED: &str = "2026-12-03T10:00:00Z";

fn at(t: &str) -> DateTime<Utc> {
    t.parse().unwrap()
}

fn deployment(generation: i64, status: Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "prod-shop", "generation": generation,
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "time": "2026-12-03T11:00:00Z"},
                {"manager": "slipway", "operation": "Apply", "time": APPLIED},
            ]},
        "spec": {"replicas": 2, "progressDeadlineSeconds": 120, "selector": {}, "template": {}},
        "status": status,
    }))
    .unwrap()
}

fn timed_out(updated: &str) -> Value {
    json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2,
           "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                           "message": "ReplicaSet \"web-1\" has timed out progressing.",
                           "lastUpdateTime": updated, "lastTransitionTime": updated}]})
}

fn pod(name: &str, release: &str, ready: bool, extra: Value) -> Pod {
    let mut pod = json!({
        "metadata": {"name": name, "uid": format!("uid-{name}"),
                     "labels": {"app": "shop", "service": "web", "release": release}},
        "status": {"startTime": "2026-12-03T09:00:00Z",
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                   "containerStatuses": [{"name": "web", "image": "i", "imageID": "", "ready": ready,
                                          "restartCount": 0, "state": {"running": {}}}]},
    });
    merge(&mut pod, &extra);
    serde_json::from_value(pod).unwrap()
}

/// Objects merge by key; anything else is replaced.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn web() -> Service {
    Manifest::parse(
        "services:\n  web:\n    build: .\n    port: 3000\n    health:\n      grace: 5\n      interval: 3\n",
    )
    .unwrap()
    .services["web"]
        .clone()
}

fn read(
    d: &Deployment,
    pods: &[Pod],
    baseline: &Baseline,
    unhealthy: &BTreeMap<String, Unhealthy>,
) -> ServiceRead {
    let refs: Vec<&Pod> = pods.iter().collect();
    read_service(
        &web(),
        2,
        d,
        &refs,
        &ReadContext {
            release: "R2",
            restart_limit: 3,
            unhealthy,
            baseline,
            now: at("2026-12-03T10:05:00Z"),
        },
    )
}

#[test]
fn progress_follows_the_six_steps() {
    let d = deployment(
        2,
        json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
    );
    assert_eq!(deployment_state(&d), DeploymentState::Waiting);
    let d = deployment(2, timed_out("2026-12-03T10:02:00Z"));
    assert_eq!(
        deployment_state(&d),
        DeploymentState::DeadlineExceeded("ReplicaSet \"web-1\" has timed out progressing.".into())
    );
    for status in [
        json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 2}),
        json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 3}),
        json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
    ] {
        assert_eq!(
            deployment_state(&deployment(2, status)),
            DeploymentState::Waiting
        );
    }
    let d = deployment(
        2,
        json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
    );
    assert_eq!(deployment_state(&d), DeploymentState::Complete);
}

/// The controller keeps a `ProgressDeadlineExceeded` (timestamps and
/// all) when re-targeted at a ReplicaSet that still exists, and times
/// out at once from a stale `lastUpdateTime`: neither is the rollback's.
#[test]
fn a_deadline_left_over_from_an_earlier_rollout_does_not_fail_this_one() {
    // Written before this apply: the rolled-back-from rollout's.
    let d = deployment(2, timed_out("2026-12-03T09:58:00Z"));
    assert_eq!(deployment_state(&d), DeploymentState::Waiting);
    // Written right after the apply, from an old lastUpdateTime.
    let d = deployment(2, timed_out("2026-12-03T10:00:01Z"));
    assert_eq!(deployment_state(&d), DeploymentState::Waiting);
    // A Ready fallback with the stale condition completes.
    let mut d = deployment(2, timed_out("2026-12-03T09:58:00Z"));
    let status = d.status.as_mut().unwrap();
    (
        status.replicas,
        status.updated_replicas,
        status.available_replicas,
    ) = (Some(2), Some(2), Some(2));
    assert_eq!(deployment_state(&d), DeploymentState::Complete);
    // The deadline after this apply: a real timeout of this rollout.
    let d = deployment(2, timed_out("2026-12-03T10:02:00Z"));
    assert!(matches!(
        deployment_state(&d),
        DeploymentState::DeadlineExceeded(_)
    ));
}

#[test]
fn complete_waits_for_terminating_pods_of_other_releases() {
    let d = deployment(
        2,
        json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
    );
    let mut pods = vec![
        pod("web-b-1", "R2", true, json!({})),
        pod("web-b-2", "R2", true, json!({})),
    ];
    // Terminating: status.replicas no longer counts it.
    pods.push(pod(
        "web-a-1",
        "R1",
        true,
        json!({"metadata": {"deletionTimestamp": "2026-12-03T10:04:00Z"}}),
    ));
    let none = BTreeMap::new();
    assert_eq!(
        read(&d, &pods, &Baseline::default(), &none),
        ServiceRead::Waiting {
            healthy: 2,
            desired: 2
        }
    );
    pods.pop();
    assert_eq!(
        read(&d, &pods, &Baseline::default(), &none),
        ServiceRead::Done
    );
}

#[test]
fn healthy_counts_ready_pods_of_the_release_only() {
    // One old pod available, no new one ready: "1/2 healthy" would lie.
    let d = deployment(
        2,
        json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 1}),
    );
    let pods = [
        pod("web-a-1", "R1", true, json!({})),
        pod("web-b-1", "R2", false, json!({})),
        pod("web-b-2", "R2", false, json!({})),
    ];
    assert_eq!(
        read(&d, &pods, &Baseline::default(), &BTreeMap::new()),
        ServiceRead::Waiting {
            healthy: 0,
            desired: 2
        }
    );
    // And the deadline reason says so.
    let d = deployment(2, timed_out("2026-12-03T10:02:00Z"));
    match read(&d, &pods, &Baseline::default(), &BTreeMap::new()) {
        ServiceRead::Failed(reason) => assert!(reason.contains("0/2 healthy"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fatal_container_states_fail_fast() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "labels": {"release": "R1"}},
        "status": {"containerStatuses": [{
            "name": "web", "image": "i", "imageID": "", "ready": false, "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
        }]},
    }))
    .unwrap();
    let none = Baseline::default();
    let reason = pod_failure("web", &[&pod], 3, &none).unwrap();
    assert!(
        reason.contains("service web")
            && reason.contains("CrashLoopBackOff")
            && reason.contains("exit code 1"),
        "{reason}"
    );
    assert!(pod_failure("web", &[&pod], 1, &none).is_some());
}

#[test]
fn a_first_pull_error_is_fatal_only_when_the_registry_says_so() {
    assert!(!fatal_waiting(
        "ErrImagePull",
        Some("429 Too Many Requests")
    ));
    assert!(fatal_waiting(
        "ErrImagePull",
        Some("rpc error: reading manifest 1 in r/web: manifest unknown: not found")
    ));
    assert!(fatal_waiting(
        "ErrImagePull",
        Some("pull access denied, unauthorized")
    ));
    assert!(fatal_waiting("ImagePullBackOff", None));
}

/// A rollback onto surviving pods: their lifetime restarts and the
/// probe failures from before the apply are not this rollout's.
#[test]
fn fail_fast_counts_only_what_this_rollout_caused() {
    let d = deployment(
        2,
        json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
    );
    let survivor = pod(
        "web-b-1",
        "R2",
        true,
        json!({"status": {"containerStatuses": [{"name": "web", "image": "i", "imageID": "", "ready": true,
                                                "restartCount": 7, "state": {"running": {}}}]}}),
    );
    let starting = pod("web-b-2", "R2", false, json!({}));
    let mut unhealthy = BTreeMap::new();
    unhealthy.insert(
        "web-b-2".to_owned(),
        Unhealthy {
            failures: 5,
            message: "Readiness probe failed: 503".into(),
        },
    );
    let pods = [survivor, starting];
    // Lifetime totals: both signals would fail the rollback at once.
    let before_fix = Baseline::default();
    assert!(matches!(
        read(&d, &pods, &before_fix, &unhealthy),
        ServiceRead::Failed(_)
    ));
    let mut baseline = Baseline::take(&pods, &unhealthy);
    assert_eq!(
        read(&d, &pods, &baseline, &unhealthy),
        ServiceRead::Waiting {
            healthy: 1,
            desired: 2
        }
    );
    // Four restarts after the apply pass the limit of 3.
    let mut crashed = pods.clone();
    crashed[0] = pod(
        "web-b-1",
        "R2",
        true,
        json!({"status": {"containerStatuses": [{"name": "web", "image": "i", "imageID": "", "ready": true,
                                                "restartCount": 11, "state": {"running": {}}}]}}),
    );
    match read(&d, &crashed, &baseline, &unhealthy) {
        ServiceRead::Failed(reason) => {
            assert!(
                reason.contains("restarted 4 times during this rollout"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Three more probe failures of a pod never Ready fail it ...
    unhealthy.get_mut("web-b-2").unwrap().failures = 8;
    assert!(
        matches!(read(&d, &pods, &baseline, &unhealthy), ServiceRead::Failed(r) if r.contains("health check") && r.contains("3 times"))
    );
    // ... but not once it has been Ready during the rollout.
    let ready = [pods[0].clone(), pod("web-b-2", "R2", true, json!({}))];
    baseline.observe(&ready.iter().collect::<Vec<_>>());
    assert!(matches!(
        read(&d, &pods, &baseline, &unhealthy),
        ServiceRead::Waiting { .. }
    ));
}

#[test]
fn pods_never_created_or_scheduled_and_a_paused_deployment_fail_naming_the_cause() {
    let waiting = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 0, "availableReplicas": 2});
    let none = Baseline::default();
    let no_events = BTreeMap::new();
    // Quota: the ReplicaSet cannot create pods; after the grace only.
    let mut status = waiting.clone();
    status["conditions"] = json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
        "message": "pods \"web-b-x\" is forbidden: exceeded quota: compute, requested: cpu=500m",
        "lastTransitionTime": "2026-12-03T10:04:50Z"}]);
    assert!(matches!(
        read(&deployment(2, status.clone()), &[], &none, &no_events),
        ServiceRead::Waiting { .. }
    ));
    status["conditions"][0]["lastTransitionTime"] = json!("2026-12-03T10:01:00Z");
    match read(&deployment(2, status), &[], &none, &no_events) {
        ServiceRead::Failed(r) => assert!(
            r.contains("pods cannot be created (FailedCreate: pods \"web-b-x\" is forbidden: exceeded quota"),
            "{r}"
        ),
        other => panic!("{other:?}"),
    }
    // Unschedulable.
    let pending = pod(
        "web-b-1",
        "R2",
        false,
        json!({"status": {"containerStatuses": [], "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient memory.",
            "lastTransitionTime": "2026-12-03T10:00:05Z"}]}}),
    );
    match read(
        &deployment(2, waiting.clone()),
        &[pending],
        &none,
        &no_events,
    ) {
        ServiceRead::Failed(r) => assert!(
            r.contains(
                "pod web-b-1 cannot be scheduled: 0/3 nodes are available: 3 Insufficient memory."
            ),
            "{r}"
        ),
        other => panic!("{other:?}"),
    }
    // Paused: at once.
    let mut d = deployment(2, waiting);
    d.spec.as_mut().unwrap().paused = Some(true);
    match read(&d, &[], &none, &no_events) {
        ServiceRead::Failed(r) => assert!(
            r.contains("paused")
                && r.contains("kubectl -n prod-shop rollout resume deployment/web"),
            "{r}"
        ),
        other => panic!("{other:?}"),
    }
}
