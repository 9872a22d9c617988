//! The cluster behind the fake API, playing itself: the Deployment
//! controller, the ReplicaSet controller and a kubelet, each a function of
//! the objects and the clock, run every [`Options::tick`] under the store's
//! lock. The rules are those of `pkg/controller/deployment` (`sync.go`,
//! `rolling.go`, `progress.go`, `util/deployment_util.go`) where Slipway
//! depends on them:
//!
//! - one ReplicaSet per pod template (`<deployment>-<hash>`), re-used when a
//!   Deployment goes back to an earlier template (a rollback scales the old
//!   ReplicaSet up again), with the revision annotation moved on;
//! - a rolling update never runs more than `replicas + maxSurge` pods (surge
//!   rounded up) nor fewer than `replicas - maxUnavailable` available ones
//!   (rounded down), scaling unhealthy old pods down first;
//! - `Progressing` is set `NewReplicaSetCreated` by a new ReplicaSet only
//!   (`FoundNewReplicaSet` when there was none), refreshed
//!   (`ReplicaSetUpdated`) only on measurable progress, `NewReplicaSetAvailable`
//!   once complete, and `ProgressDeadlineExceeded` when `lastUpdateTime` plus
//!   the deadline has passed; an unchanged status and reason keep both
//!   timestamps, so a timeout outlives a rollback onto an existing
//!   ReplicaSet until the rollback makes progress;
//! - `ReplicaFailure` copied from the ReplicaSet, `paused` honoured;
//! - old ReplicaSets beyond `revisionHistoryLimit` collected once empty;
//! - deleted pods stop over their grace period (at most `pod_stop`) and
//!   are not counted in `replicas` meanwhile; pods behave as their image's
//!   tag says (see the crate docs).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

mod kubelet;

use crate::script::template_hash;
use crate::store::{Key, Store};
use crate::{FakeKube, Shared};

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()?.parse().ok()
}

fn key(resource: &str, ns: &str, name: &str) -> Key {
    (resource.to_owned(), ns.to_owned(), name.to_owned())
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn owned_by(object: &Value, uid: &Value) -> bool {
    object["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == *uid))
}

fn terminating(object: &Value) -> bool {
    object["metadata"]["deletionTimestamp"].is_string()
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// The behaviour an image asks for: the tag of its last path segment.
pub(crate) fn tag(image: &str) -> &str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains('@') {
        return "";
    }
    last.rsplit_once(':').map_or("", |(_, t)| t)
}

/// `maxSurge` (rounded up) and `maxUnavailable` (rounded down) of a
/// Deployment of `replicas`, as the controller resolves them.
pub(crate) fn surge_and_unavailable(d: &Value, replicas: i64) -> (i64, i64) {
    let ru = &d["spec"]["strategy"]["rollingUpdate"];
    let resolve = |v: &Value, default: &str, up: bool| -> i64 {
        let v = if v.is_null() {
            json!(default)
        } else {
            v.clone()
        };
        match v {
            Value::Number(n) => n.as_i64().unwrap_or(0),
            Value::String(s) => {
                let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
                let scaled = pct * replicas;
                if up {
                    (scaled + 99) / 100
                } else {
                    scaled / 100
                }
            }
            _ => 0,
        }
    };
    let surge = resolve(&ru["maxSurge"], "25%", true);
    let mut unavailable = resolve(&ru["maxUnavailable"], "25%", false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(replicas))
}

/// `SetDeploymentCondition`: an unchanged status and reason change
/// nothing, timestamps included; an unchanged status keeps the transition
/// time.
fn set_condition(
    conditions: &mut Vec<Value>,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) {
    let current = conditions.iter().find(|c| c["type"] == kind).cloned();
    if let Some(c) = &current
        && c["status"] == status
        && c["reason"] == reason
    {
        return;
    }
    let transition = match &current {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(ts(now)),
    };
    conditions.retain(|c| c["type"] != kind);
    conditions.push(json!({
        "type": kind, "status": status, "reason": reason, "message": message,
        "lastUpdateTime": ts(now), "lastTransitionTime": transition,
    }));
}

/// Records an event about `kind`/`name`, deduplicated as the server does:
/// the same reason and message again bumps `count` and `lastTimestamp`.
pub(crate) fn record(
    store: &mut Store,
    ns: &str,
    (kind, name): (&str, &str),
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) {
    let warning = matches!(
        reason,
        "Unhealthy" | "BackOff" | "Failed" | "FailedCreate" | "FailedScheduling"
    );
    // The server keys its deduplication by subject; so does the fake (a
    // scan of every event per event grew with the cluster's history).
    let subject = (
        ns.to_owned(),
        kind.to_owned(),
        name.to_owned(),
        reason.to_owned(),
        message.to_owned(),
    );
    let existing = store.event_subjects.get(&subject).and_then(|k| {
        let e = store.objects.get(k)?;
        (e["involvedObject"]["kind"] == kind
            && e["involvedObject"]["name"] == name
            && e["reason"] == reason
            && e["message"] == message)
            .then(|| (k.clone(), e.clone()))
    });
    if let Some((k, mut event)) = existing {
        event["count"] = json!(int(&event["count"]) + 1);
        event["lastTimestamp"] = json!(ts(now));
        store.commit("MODIFIED", k, event);
        return;
    }
    let event_name = format!("{name}.{:x}", 0x1_8000_0000_u64 + store.rv * 7919);
    let component = match kind {
        "Pod" if reason == "Scheduled" || reason == "FailedScheduling" => "default-scheduler",
        "Pod" => "kubelet",
        "ReplicaSet" => "replicaset-controller",
        _ => "deployment-controller",
    };
    let mut event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": event_name, "namespace": ns},
        "involvedObject": {"apiVersion": if kind == "Pod" { "v1" } else { "apps/v1" },
                           "kind": kind, "name": name, "namespace": ns},
        "reason": reason, "message": message,
        "type": if warning { "Warning" } else { "Normal" },
        "count": 1, "firstTimestamp": ts(now), "lastTimestamp": ts(now),
        "source": {"component": component},
        "reportingComponent": component, "reportingInstance": "",
    });
    store.stamp_new("events", &mut event);
    let k = key("events", ns, &event_name);
    store.event_subjects.insert(subject, k.clone());
    store.commit("ADDED", k, event);
}

impl FakeKube {
    /// Plays the cluster from now on: every [`Options::tick`], each
    /// Deployment, ReplicaSet and pod moves one step (see the module docs).
    pub fn run_controller(&self) {
        let weak = Arc::downgrade(&self.shared);
        let tick = self.shared.options.tick;
        tokio::spawn(async move {
            while let Some(shared) = weak.upgrade() {
                reconcile(&shared);
                drop(shared);
                tokio::time::sleep(tick).await;
            }
        });
    }
}

/// One step of every controller.
fn reconcile(shared: &Shared) {
    let paused = shared.paused.load(std::sync::atomic::Ordering::SeqCst);
    let options = shared.options;
    let mut state = shared.lock();
    let store = &mut state.store;
    let now = Utc::now();
    let keys = |store: &Store, resource: &str| -> Vec<Key> {
        store
            .in_namespace(resource, "")
            .map(|(k, _)| k.clone())
            .collect()
    };
    if !paused {
        for k in keys(store, "deployments") {
            sync_deployment(store, &k, now);
        }
        for k in keys(store, "replicasets") {
            sync_replicaset(store, &k, now);
        }
    }
    for k in keys(store, "pods") {
        kubelet::kubelet(store, &k, now, options);
    }
}

/// Sets a ReplicaSet's `spec.replicas`, with the Deployment's event.
fn scale(store: &mut Store, rs: &Value, deployment: &str, to: i64, now: DateTime<Utc>) {
    let from = int(&rs["spec"]["replicas"]);
    if from == to {
        return;
    }
    let ns = text(&rs["metadata"]["namespace"]);
    let name = text(&rs["metadata"]["name"]);
    let mut rs = store.objects[&key("replicasets", &ns, &name)].clone();
    rs["spec"]["replicas"] = json!(to);
    store.commit("MODIFIED", key("replicasets", &ns, &name), rs);
    let verb = if to > from { "up" } else { "down" };
    record(
        store,
        &ns,
        ("Deployment", deployment),
        "ScalingReplicaSet",
        &format!("Scaled {verb} replica set {name} to {to} from {from}"),
        now,
    );
}

fn replica_sets(store: &Store, ns: &str, uid: &Value) -> Vec<Value> {
    let mut sets: Vec<Value> = store
        .in_namespace("replicasets", ns)
        .filter(|(_, rs)| owned_by(rs, uid) && !terminating(rs))
        .map(|(_, rs)| rs.clone())
        .collect();
    // Oldest first, as the controller scales old ones down.
    sets.sort_by_key(|rs| {
        (
            text(&rs["metadata"]["creationTimestamp"]),
            text(&rs["metadata"]["name"]),
        )
    });
    sets
}

fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn sync_deployment(store: &mut Store, k: &Key, now: DateTime<Utc>) {
    let Some(d) = store.objects.get(k).cloned() else {
        return;
    };
    if terminating(&d) {
        return;
    }
    let (ns, name) = (k.1.clone(), k.2.clone());
    let uid = d["metadata"]["uid"].clone();
    let n = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let generation = d["metadata"]["generation"].clone();
    let template = d["spec"]["template"].clone();
    let hash = template_hash(&template);
    let old_status = d["status"].clone();
    let mut conditions: Vec<Value> = old_status["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let (surge, unavailable) = surge_and_unavailable(&d, n);
    let paused = d["spec"]["paused"] == json!(true);

    let mut sets = replica_sets(store, &ns, &uid);
    let top = sets.iter().map(revision).max().unwrap_or(0);
    let new_name = format!("{name}-{hash}");
    if !paused {
        match sets
            .iter()
            .find(|rs| text(&rs["metadata"]["name"]) == new_name)
        {
            None => {
                let mut labels = template["metadata"]["labels"].clone();
                labels["pod-template-hash"] = json!(hash);
                let mut selector = d["spec"]["selector"].clone();
                selector["matchLabels"]["pod-template-hash"] = json!(hash);
                let mut rs_template = template.clone();
                rs_template["metadata"]["labels"] = labels.clone();
                let mut rs = json!({
                    "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {
                        "name": new_name, "namespace": ns, "labels": labels,
                        "annotations": {
                            "deployment.kubernetes.io/revision": (top + 1).to_string(),
                            "deployment.kubernetes.io/desired-replicas": n.to_string(),
                            "deployment.kubernetes.io/max-replicas": (n + surge).to_string(),
                        },
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                             "uid": uid, "controller": true, "blockOwnerDeletion": true}],
                    },
                    "spec": {"replicas": 0, "selector": selector, "template": rs_template},
                    "status": {"replicas": 0},
                });
                store.stamp_new("replicasets", &mut rs);
                store.commit("ADDED", key("replicasets", &ns, &new_name), rs);
                set_condition(
                    &mut conditions,
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    &format!("Created new replica set \"{new_name}\""),
                    now,
                );
            }
            Some(rs) => {
                if revision(rs) < top {
                    let mut rs = rs.clone();
                    rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
                        json!((top + 1).to_string());
                    store.commit("MODIFIED", key("replicasets", &ns, &new_name), rs);
                }
                if !conditions.iter().any(|c| c["type"] == "Progressing") {
                    set_condition(
                        &mut conditions,
                        "Progressing",
                        "True",
                        "FoundNewReplicaSet",
                        &format!("Found new replica set \"{new_name}\""),
                        now,
                    );
                }
            }
        }
        sets = replica_sets(store, &ns, &uid);
        rolling_update(store, &name, &new_name, &sets, n, surge, unavailable, now);
        sets = replica_sets(store, &ns, &uid);
    }

    // Status, from the ReplicaSets' (which count active pods only).
    let sum = |f: &str| -> i64 { sets.iter().map(|rs| int(&rs["status"][f])).sum() };
    let new_rs = sets
        .iter()
        .find(|rs| text(&rs["metadata"]["name"]) == new_name);
    let replicas = sum("replicas");
    let updated = new_rs.map_or(0, |rs| int(&rs["status"]["replicas"]));
    let ready = sum("readyReplicas");
    let available = sum("availableReplicas");
    let spec_total: i64 = sets.iter().map(|rs| int(&rs["spec"]["replicas"])).sum();
    let min_available = n - unavailable;
    if available >= min_available {
        set_condition(
            &mut conditions,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            now,
        );
    } else {
        set_condition(
            &mut conditions,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            now,
        );
    }
    let failure = sets.iter().find_map(|rs| {
        rs["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "ReplicaFailure" && c["status"] == "True")
            .cloned()
    });
    match failure {
        Some(f) => set_condition(
            &mut conditions,
            "ReplicaFailure",
            "True",
            f["reason"].as_str().unwrap_or("FailedCreate"),
            f["message"].as_str().unwrap_or_default(),
            now,
        ),
        None => conditions.retain(|c| c["type"] != "ReplicaFailure"),
    }
    let mut status = json!({
        "observedGeneration": generation,
        "replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready,
        "availableReplicas": available, "unavailableReplicas": (spec_total - available).max(0),
    });
    if paused {
        set_condition(
            &mut conditions,
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused",
            now,
        );
    } else {
        sync_rollout_status(&d, &old_status, &status, &mut conditions, &new_name, now);
    }
    status["conditions"] = json!(conditions);
    if status != old_status {
        let mut d = d;
        d["status"] = status;
        store.commit("MODIFIED", k.clone(), d);
    }
    collect_garbage(store, &d_history(store, k), &sets, &new_name);
}

fn d_history(store: &Store, k: &Key) -> i64 {
    store.objects.get(k).map_or(10, |d| {
        d["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10)
    })
}

/// `reconcileNewReplicaSet` and `reconcileOldReplicaSets` of `rolling.go`.
#[allow(clippy::too_many_arguments)]
fn rolling_update(
    store: &mut Store,
    deployment: &str,
    new_name: &str,
    sets: &[Value],
    n: i64,
    surge: i64,
    unavailable: i64,
    now: DateTime<Utc>,
) {
    let Some(new_rs) = sets
        .iter()
        .find(|rs| text(&rs["metadata"]["name"]) == new_name)
        .cloned()
    else {
        return;
    };
    let total: i64 = sets.iter().map(|rs| int(&rs["spec"]["replicas"])).sum();
    let current = int(&new_rs["spec"]["replicas"]);
    if current > n {
        scale(store, &new_rs, deployment, n, now);
    } else if current < n {
        let allowed = n + surge - total;
        if allowed > 0 {
            scale(store, &new_rs, deployment, n.min(current + allowed), now);
        }
    }
    // Old ReplicaSets, re-read after the scale-up.
    let ns = text(&new_rs["metadata"]["namespace"]);
    let fresh = |store: &Store, rs: &Value| -> Value {
        store.objects[&key("replicasets", &ns, &text(&rs["metadata"]["name"]))].clone()
    };
    let olds: Vec<Value> = sets
        .iter()
        .filter(|rs| text(&rs["metadata"]["name"]) != new_name)
        .map(|rs| fresh(store, rs))
        .filter(|rs| int(&rs["spec"]["replicas"]) > 0)
        .collect();
    if olds.is_empty() {
        return;
    }
    let new_rs = fresh(store, &new_rs);
    let all: i64 = sets
        .iter()
        .map(|rs| int(&fresh(store, rs)["spec"]["replicas"]))
        .sum();
    let min_available = n - unavailable;
    let new_unavailable =
        int(&new_rs["spec"]["replicas"]) - int(&new_rs["status"]["availableReplicas"]);
    let max_scaled_down = all - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return;
    }
    // Unhealthy old pods first: they serve nobody.
    let mut cleaned = 0;
    for rs in &olds {
        let spec = int(&rs["spec"]["replicas"]);
        let unhealthy = spec - int(&rs["status"]["availableReplicas"]);
        let down = (max_scaled_down - cleaned).min(unhealthy).max(0);
        if down > 0 {
            scale(store, rs, deployment, spec - down, now);
            cleaned += down;
        }
    }
    // Then available ones, down to the minimum available.
    let available: i64 = sets
        .iter()
        .map(|rs| int(&fresh(store, rs)["status"]["availableReplicas"]))
        .sum();
    let mut budget = available - min_available;
    for rs in &olds {
        if budget <= 0 {
            break;
        }
        let rs = fresh(store, rs);
        let spec = int(&rs["spec"]["replicas"]);
        let down = spec.min(budget);
        if down > 0 {
            scale(store, &rs, deployment, spec - down, now);
            budget -= down;
        }
    }
}

/// `syncRolloutStatus` of `progress.go`.
fn sync_rollout_status(
    d: &Value,
    old: &Value,
    new: &Value,
    conditions: &mut Vec<Value>,
    new_name: &str,
    now: DateTime<Utc>,
) {
    let n = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let current = conditions
        .iter()
        .find(|c| c["type"] == "Progressing")
        .cloned();
    let complete_already = new["replicas"] == new["updatedReplicas"]
        && current
            .as_ref()
            .is_some_and(|c| c["reason"] == "NewReplicaSetAvailable");
    if complete_already {
        return;
    }
    let complete = int(&new["updatedReplicas"]) == n
        && int(&new["replicas"]) == n
        && int(&new["availableReplicas"]) == n;
    let old_old = int(&old["replicas"]) - int(&old["updatedReplicas"]);
    let new_old = int(&new["replicas"]) - int(&new["updatedReplicas"]);
    let progressing = int(&new["updatedReplicas"]) > int(&old["updatedReplicas"])
        || new_old < old_old
        || int(&new["readyReplicas"]) > int(&old["readyReplicas"])
        || int(&new["availableReplicas"]) > int(&old["availableReplicas"]);
    let deadline = d["spec"]["progressDeadlineSeconds"].as_i64().unwrap_or(600);
    let timed_out = current.as_ref().is_some_and(|c| {
        if c["reason"] == "NewReplicaSetAvailable" {
            return false;
        }
        if c["reason"] == "ProgressDeadlineExceeded" {
            return true;
        }
        time(&c["lastUpdateTime"]).is_some_and(|t| t + chrono::Duration::seconds(deadline) < now)
    });
    if complete {
        set_condition(
            conditions,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            now,
        );
    } else if progressing {
        // Progress refreshes the time even with the same reason.
        let transition = match &current {
            Some(c) if c["status"] == "True" => c["lastTransitionTime"].clone(),
            _ => json!(ts(now)),
        };
        conditions.retain(|c| c["type"] != "Progressing");
        conditions.push(json!({
            "type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
            "message": format!("ReplicaSet \"{new_name}\" is progressing."),
            "lastUpdateTime": ts(now), "lastTransitionTime": transition,
        }));
    } else if timed_out {
        set_condition(
            conditions,
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            &format!("ReplicaSet \"{new_name}\" has timed out progressing."),
            now,
        );
    }
}

/// Old, empty ReplicaSets beyond the history limit go.
fn collect_garbage(store: &mut Store, limit: &i64, sets: &[Value], new_name: &str) {
    let mut empty: Vec<&Value> = sets
        .iter()
        .filter(|rs| {
            text(&rs["metadata"]["name"]) != new_name
                && int(&rs["spec"]["replicas"]) == 0
                && int(&rs["status"]["replicas"]) == 0
        })
        .collect();
    let excess = i64::try_from(empty.len()).unwrap_or(0) - *limit;
    if excess <= 0 {
        return;
    }
    empty.sort_by_key(|rs| revision(rs));
    for rs in empty.into_iter().take(usize::try_from(excess).unwrap_or(0)) {
        let uid = rs["metadata"]["uid"].clone();
        let ns = text(&rs["metadata"]["namespace"]);
        let pods_left = store
            .in_namespace("pods", &ns)
            .any(|(_, p)| owned_by(p, &uid));
        if !pods_left {
            let _ = store.delete(key("replicasets", &ns, &text(&rs["metadata"]["name"])));
        }
    }
}

/// A pod name's random part (the real alphabet, from a counter).
fn suffix(store: &Store) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = store.rv.wrapping_mul(2_654_435_761) % 14_348_907; // 27^5
    let mut out = String::new();
    for _ in 0..5 {
        out.push(char::from(ALPHABET[(n % 27) as usize]));
        n /= 27;
    }
    out
}

/// The ReplicaSet controller: as many active pods as `spec.replicas`.
fn sync_replicaset(store: &mut Store, k: &Key, now: DateTime<Utc>) {
    let Some(rs) = store.objects.get(k).cloned() else {
        return;
    };
    if terminating(&rs) {
        return;
    }
    let (ns, name) = (k.1.clone(), k.2.clone());
    let uid = rs["metadata"]["uid"].clone();
    let want = int(&rs["spec"]["replicas"]);
    let template = rs["spec"]["template"].clone();
    let image = text(&template["spec"]["containers"][0]["image"]);
    // Only this ReplicaSet's pods are cloned, not the namespace's.
    let pods: Vec<Value> = store
        .in_namespace("pods", &ns)
        .filter(|(_, p)| owned_by(p, &uid))
        .map(|(_, p)| p.clone())
        .collect();
    let mut active: Vec<Value> = pods.into_iter().filter(|p| !terminating(p)).collect();
    let have = i64::try_from(active.len()).unwrap_or(0);
    let mut failure = None;
    if want > have {
        if tag(&image) == "forbidden" {
            let message = format!(
                "pods \"{name}-{}\" is forbidden: exceeded quota: compute-resources, requested: cpu=1, used: cpu=4, limited: cpu=4",
                suffix(store)
            );
            record(
                store,
                &ns,
                ("ReplicaSet", &name),
                "FailedCreate",
                &format!("Error creating: {message}"),
                now,
            );
            failure = Some(message);
        } else {
            for _ in have..want {
                let pod_name = format!("{name}-{}", suffix(store));
                let mut pod = json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {
                        "name": pod_name, "namespace": ns,
                        "labels": template["metadata"]["labels"].clone(),
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name,
                                             "uid": uid, "controller": true, "blockOwnerDeletion": true}],
                    },
                    "spec": template["spec"].clone(),
                    "status": {"phase": "Pending", "qosClass": "BestEffort"},
                });
                if !template["metadata"]["annotations"].is_null() {
                    pod["metadata"]["annotations"] = template["metadata"]["annotations"].clone();
                }
                store.stamp_new("pods", &mut pod);
                active.push(pod.clone());
                store.commit("ADDED", key("pods", &ns, &pod_name), pod);
                record(
                    store,
                    &ns,
                    ("ReplicaSet", &name),
                    "SuccessfulCreate",
                    &format!("Created pod: {pod_name}"),
                    now,
                );
            }
        }
    } else if want < have {
        // Not-ready pods first, then the newest.
        active.sort_by_key(|p| {
            (
                pod_ready(p),
                std::cmp::Reverse(text(&p["metadata"]["creationTimestamp"])),
            )
        });
        let doomed: Vec<Value> = active
            .drain(..usize::try_from(have - want).unwrap_or(0))
            .collect();
        for pod in doomed {
            let pod_name = text(&pod["metadata"]["name"]);
            let _ = store.delete(key("pods", &ns, &pod_name));
            record(
                store,
                &ns,
                ("ReplicaSet", &name),
                "SuccessfulDelete",
                &format!("Deleted pod: {pod_name}"),
                now,
            );
            let container = text(&pod["spec"]["containers"][0]["name"]);
            record(
                store,
                &ns,
                ("Pod", &pod_name),
                "Killing",
                &format!("Stopping container {container}"),
                now,
            );
        }
    }
    // Status counts active pods only (terminating ones are not replicas).
    let ready = i64::try_from(active.iter().filter(|p| pod_ready(p)).count()).unwrap_or(0);
    let mut status = json!({
        "replicas": active.len(), "fullyLabeledReplicas": active.len(),
        "readyReplicas": ready, "availableReplicas": ready,
        "observedGeneration": rs["metadata"]["generation"].as_i64().unwrap_or(1),
    });
    if let Some(message) = failure {
        let since = rs["status"]["conditions"][0]["lastTransitionTime"].clone();
        let since = if since.is_string() {
            since
        } else {
            json!(ts(now))
        };
        status["conditions"] = json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                       "message": message, "lastTransitionTime": since}]);
        // Keep the first message (the pod name in it changes each time).
        if rs["status"]["conditions"][0]["message"].is_string() {
            status["conditions"][0]["message"] = rs["status"]["conditions"][0]["message"].clone();
        }
    }
    if status != rs["status"] {
        let mut rs = rs;
        rs["status"] = status;
        store.commit("MODIFIED", k.clone(), rs);
    }
}

#[cfg(test)]
mod tests;
