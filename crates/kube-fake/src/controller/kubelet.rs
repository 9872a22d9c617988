//! The kubelet of the fake cluster: each pod's status from its image's
//! tag and the clock (see the crate docs), readiness probe failures as
//! `Unhealthy` events, and deleted pods that stop over their grace period.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{int, record, tag, text, time, ts};
use crate::Options;
use crate::store::{Key, Store};

/// A condition of a pod, keeping its transition time while unchanged.
fn pod_condition(old: &Value, kind: &str, status: bool, now: DateTime<Utc>) -> Value {
    let status = if status { "True" } else { "False" };
    let previous = old["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind).cloned());
    let since = match previous {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(ts(now)),
    };
    json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since})
}

/// Brings the `Unhealthy` event of a pod up to `failures` probe failures.
fn probe_failures(store: &mut Store, ns: &str, pod: &str, failures: i64, now: DateTime<Utc>) {
    const MESSAGE: &str = "Readiness probe failed: HTTP probe failed with statuscode: 503";
    let seen = store
        .in_namespace("events", ns)
        .find(|(k, e)| {
            k.0 == "events"
                && k.1 == ns
                && e["involvedObject"]["name"] == pod
                && e["reason"] == "Unhealthy"
        })
        .map_or(0, |(_, e)| int(&e["count"]));
    // One event (or count) per probe period, however late the tick.
    if failures > seen {
        record(store, ns, ("Pod", pod), "Unhealthy", MESSAGE, now);
    }
}

/// The kubelet: pod status from the image's tag and the clock; a deleted
/// pod goes once its process has stopped.
pub(super) fn kubelet(store: &mut Store, k: &Key, now: DateTime<Utc>, options: Options) {
    // Pods that run to completion run real processes (exec.rs).
    if crate::exec::kubelet(store, k, now, options) {
        return;
    }
    let Some(pod) = store.objects.get(k).cloned() else {
        return;
    };
    let (ns, name) = (k.1.clone(), k.2.clone());
    if let Some(deleted) = time(&pod["metadata"]["deletionTimestamp"]) {
        let grace = pod["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30);
        // `deletionTimestamp` is when the pod will be killed: the request
        // came a grace period earlier.
        let requested = deleted - chrono::Duration::seconds(grace);
        let stop = chrono::Duration::from_std(options.pod_stop)
            .unwrap_or_default()
            .min(chrono::Duration::seconds(grace));
        if now - requested >= stop {
            store.commit("DELETED", k.clone(), pod);
        }
        return;
    }
    let container = &pod["spec"]["containers"][0];
    let cname = text(&container["name"]);
    let image = text(&container["image"]);
    let behaviour = tag(&image).to_owned();
    let created = time(&pod["metadata"]["creationTimestamp"]).unwrap_or(now);
    let since = (now - created).num_milliseconds().max(0);
    let first = pod["status"]["startTime"].is_null() && pod["status"]["conditions"].is_null();
    let probe = &container["readinessProbe"];
    let period = probe["periodSeconds"].as_i64().unwrap_or(10).max(1) * 1000;
    let initial = probe["initialDelaySeconds"].as_i64().unwrap_or(0) * 1000;
    let started = json!(ts(created));

    if behaviour == "unschedulable" {
        let message = "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.";
        if first {
            record(store, &ns, ("Pod", &name), "FailedScheduling", message, now);
        }
        let mut cond = pod_condition(&pod, "PodScheduled", false, now);
        cond["reason"] = json!("Unschedulable");
        cond["message"] = json!(message);
        let status = json!({"phase": "Pending", "qosClass": "BestEffort", "conditions": [cond]});
        if status != pod["status"] {
            let mut pod = pod;
            pod["status"] = status;
            store.commit("MODIFIED", k.clone(), pod);
        }
        return;
    }
    if first {
        record(
            store,
            &ns,
            ("Pod", &name),
            "Scheduled",
            &format!("Successfully assigned {ns}/{name} to fake-node"),
            now,
        );
        record(
            store,
            &ns,
            ("Pod", &name),
            "Pulling",
            &format!("Pulling image \"{image}\""),
            now,
        );
        if behaviour == "pull-error" {
            record(
                store,
                &ns,
                ("Pod", &name),
                "Failed",
                &format!(
                    "Failed to pull image \"{image}\": rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": {image}: not found"
                ),
                now,
            );
        } else {
            record(
                store,
                &ns,
                ("Pod", &name),
                "Pulled",
                &format!("Successfully pulled image \"{image}\" in 1ms"),
                now,
            );
            record(
                store,
                &ns,
                ("Pod", &name),
                "Created",
                &format!("Created container: {cname}"),
                now,
            );
            record(
                store,
                &ns,
                ("Pod", &name),
                "Started",
                &format!("Started container {cname}"),
                now,
            );
        }
    }
    let running = json!({"running": {"startedAt": started}});
    let has_probe = probe.is_object();
    let failing_probe = |store: &mut Store, until: Option<i64>| {
        if has_probe && since >= initial {
            let end = until.map_or(since, |u| u.min(since));
            let failures = (end - initial) / period + 1;
            probe_failures(store, &ns, &name, failures, now);
        }
    };
    let (phase, state, ready, restarts, last) = match behaviour.as_str() {
        "crash" => {
            let restarts = since / 1000 + 1;
            let previous = int(&pod["status"]["containerStatuses"][0]["restartCount"]);
            if restarts > previous {
                record(
                    store,
                    &ns,
                    ("Pod", &name),
                    "BackOff",
                    &format!("Back-off restarting failed container {cname} in pod {name}_{ns}"),
                    now,
                );
            }
            (
                "Running",
                json!({"waiting": {"reason": "CrashLoopBackOff",
                                   "message": format!("back-off 10s restarting failed container={cname} pod={name}_{ns}")}}),
                false,
                restarts,
                json!({"terminated": {"exitCode": 1, "reason": "Error",
                                      "message": "crash: exiting at start, as the image tag asks",
                                      "startedAt": started, "finishedAt": started}}),
            )
        }
        "pull-error" => {
            let state = if since < 2000 {
                json!({"waiting": {"reason": "ErrImagePull",
                    "message": format!("rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": {image}: not found")}})
            } else {
                json!({"waiting": {"reason": "ImagePullBackOff",
                    "message": format!("Back-off pulling image \"{image}\": ErrImagePull: {image}: not found")}})
            };
            ("Pending", state, false, 0, Value::Null)
        }
        "unready" => {
            failing_probe(store, None);
            ("Running", running, false, 0, Value::Null)
        }
        t if t.starts_with("slow-") => {
            let n = &t["slow-".len()..];
            let after = match n.strip_suffix("ms") {
                Some(ms) => ms.parse::<i64>().unwrap_or(0),
                None => n.parse::<i64>().unwrap_or(0) * 1000,
            };
            let ready = since >= after;
            if has_probe {
                failing_probe(store, Some(after - 1));
            }
            ("Running", running, ready, 0, Value::Null)
        }
        _ => ("Running", running, true, 0, Value::Null),
    };
    let mut container_status = json!({
        "name": cname, "image": image, "imageID": "", "ready": ready,
        "restartCount": restarts, "started": phase == "Running" && state.get("running").is_some(),
        "state": state,
    });
    if !last.is_null() {
        container_status["lastState"] = last;
    }
    let status = json!({
        "phase": phase, "qosClass": "BestEffort", "hostIP": "10.0.0.1", "podIP": "10.244.0.2",
        "startTime": started,
        "conditions": [
            pod_condition(&pod, "PodScheduled", true, now),
            pod_condition(&pod, "Initialized", true, now),
            pod_condition(&pod, "ContainersReady", ready, now),
            pod_condition(&pod, "Ready", ready, now),
        ],
        "containerStatuses": [container_status],
    });
    if status != pod["status"] {
        let mut pod = pod;
        pod["status"] = status;
        store.commit("MODIFIED", k.clone(), pod);
    }
}
