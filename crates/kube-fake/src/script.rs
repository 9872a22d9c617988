//! The cluster's part, played by hand by a test, step by step: a
//! Deployment's status from replica counts, its pods (without ReplicaSets),
//! container states, and deduplicated Events whose `count` grows. For a
//! cluster that plays itself, see [`FakeKube::run_controller`]; the two are
//! not meant to drive the same Deployment.

use std::hash::{Hash as _, Hasher as _};

use serde_json::{Value, json};

use crate::FakeKube;
use crate::store::Key;

fn key(resource: &str, ns: &str, name: &str) -> Key {
    (resource.to_owned(), ns.to_owned(), name.to_owned())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// How a template's pods behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodFate {
    /// Running and ready.
    Ready,
    /// Running, not (yet) ready.
    NotReady,
    /// Exits at start, over and over.
    CrashLoop,
}

/// The short hash of a pod template (`pod-template-hash`).
pub fn template_hash(template: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    template.to_string().hash(&mut h);
    format!("{:016x}", h.finish())[..10].to_owned()
}

impl FakeKube {
    /// Creates or replaces an object (as a controller would; bumps the version).
    pub fn put(&self, resource: &str, ns: &str, name: &str, mut object: Value) {
        let mut state = self.shared.lock();
        let k = key(resource, ns, name);
        let kind = if state.store.objects.contains_key(&k) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        if kind == "ADDED" {
            state.store.stamp_new(resource, &mut object);
        }
        state.store.commit(kind, k, object);
    }

    /// Deletes an object if it exists, at once (a pod without its grace
    /// period: nothing plays the kubelet here).
    pub fn remove(&self, resource: &str, ns: &str, name: &str) {
        let _ = self
            .shared
            .lock()
            .store
            .delete_with(key(resource, ns, name), Some(0));
    }

    /// Changes a Deployment's status (the status subresource) with `f`.
    pub fn set_status(&self, ns: &str, name: &str, f: impl FnOnce(&Value, &mut Value)) {
        let mut state = self.shared.lock();
        let k = key("deployments", ns, name);
        let Some(mut d) = state.store.objects.get(&k).cloned() else {
            return;
        };
        let mut status = d["status"].clone();
        if status.is_null() {
            status = json!({});
        }
        f(&d, &mut status);
        if d["status"] == status {
            return;
        }
        d["status"] = status;
        state.store.commit("MODIFIED", k, d);
    }

    /// Records an event about `kind`/`object`; returns its name.
    pub fn emit_event(
        &self,
        ns: &str,
        kind: &str,
        object: &str,
        reason: &str,
        message: &str,
    ) -> String {
        let name = {
            let state = self.shared.lock();
            format!("{object}.{:x}", state.store.rv * 7919)
        };
        let kind_type = if reason == "Unhealthy" || reason == "BackOff" {
            "Warning"
        } else {
            "Normal"
        };
        self.put(
            "events",
            ns,
            &name,
            json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": {"kind": kind, "name": object, "namespace": ns},
                "reason": reason, "message": message, "type": kind_type, "count": 1,
                "firstTimestamp": now(), "lastTimestamp": now(),
                "source": {"component": "fake"},
            }),
        );
        name
    }

    /// The server's deduplication: the same event happened again.
    pub fn bump_event(&self, ns: &str, name: &str) {
        let Some(mut event) = self.object("events", ns, name) else {
            return;
        };
        event["count"] = json!(event["count"].as_i64().unwrap_or(1) + 1);
        event["lastTimestamp"] = json!(now());
        self.put("events", ns, name, event);
    }

    /// Pods of a Deployment (by its selector).
    pub fn pods_of(&self, ns: &str, deployment: &Value) -> Vec<Value> {
        let selector: Vec<String> = deployment["spec"]["selector"]["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        self.shared
            .lock()
            .store
            .list("pods", ns, &selector.join(","))
    }

    /// Makes `count` pods of the Deployment's current template with `fate`,
    /// and deletes pods of other templates down to `old_left`.
    pub fn sync_pods(
        &self,
        ns: &str,
        name: &str,
        count: usize,
        ready: usize,
        fate: PodFate,
        old_left: usize,
    ) {
        let Some(d) = self.object("deployments", ns, name) else {
            return;
        };
        let template = d["spec"]["template"].clone();
        let hash = template_hash(&template);
        let pods = self.pods_of(ns, &d);
        let (mine, old): (Vec<Value>, Vec<Value>) = pods
            .into_iter()
            .partition(|p| p["metadata"]["labels"]["pod-template-hash"] == json!(hash));
        for p in old.iter().skip(old_left) {
            self.remove(
                "pods",
                ns,
                p["metadata"]["name"].as_str().unwrap_or_default(),
            );
        }
        for p in mine.iter().skip(count) {
            self.remove(
                "pods",
                ns,
                p["metadata"]["name"].as_str().unwrap_or_default(),
            );
        }
        let container = template["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap_or("main")
            .to_owned();
        let image = template["spec"]["containers"][0]["image"].clone();
        for i in 0..count {
            let (pod_name, mut pod) = match mine.get(i) {
                Some(p) => (
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    p.clone(),
                ),
                None => {
                    let pod_name = format!("{name}-{hash}-{i:05}");
                    let mut labels = template["metadata"]["labels"].clone();
                    labels["pod-template-hash"] = json!(hash);
                    let pod = json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": pod_name, "namespace": ns, "labels": labels},
                        "spec": template["spec"].clone(),
                        "status": {"phase": "Pending"},
                    });
                    self.emit_event(
                        ns,
                        "ReplicaSet",
                        &format!("{name}-{hash}"),
                        "SuccessfulCreate",
                        &format!("Created pod: {pod_name}"),
                    );
                    (pod_name, pod)
                }
            };
            let is_ready = fate == PodFate::Ready && i < ready;
            let state = match fate {
                PodFate::CrashLoop => {
                    json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off 10s restarting failed container={container}")}})
                }
                _ => json!({"running": {"startedAt": now()}}),
            };
            let mut status = json!({
                "name": container, "image": image, "imageID": "", "ready": is_ready,
                "restartCount": if fate == PodFate::CrashLoop { 2 } else { 0 },
                "started": fate != PodFate::CrashLoop, "state": state,
            });
            if fate == PodFate::CrashLoop {
                status["lastState"] = json!({"terminated": {"exitCode": 1, "reason": "Error", "message": "boom: listen failed"}});
            }
            let start = pod["status"]["startTime"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(now);
            let new_status = json!({
                "phase": "Running", "startTime": start,
                "conditions": [{"type": "Ready", "status": if is_ready { "True" } else { "False" }}],
                "containerStatuses": [status],
            });
            if pod["status"] != new_status || mine.get(i).is_none() {
                pod["status"] = new_status;
                self.put("pods", ns, &pod_name, pod);
            }
        }
    }

    /// The controller has seen the spec; `updated` replicas run the new
    /// template, `available` of them ready, `old` of earlier ones remain.
    pub fn progress_deployment(
        &self,
        ns: &str,
        name: &str,
        updated: u32,
        available: u32,
        old: u32,
        fate: PodFate,
    ) {
        self.sync_pods(
            ns,
            name,
            updated as usize,
            available as usize,
            fate,
            old as usize,
        );
        self.set_status(ns, name, |d, s| {
            s["observedGeneration"] = d["metadata"]["generation"].clone();
            s["replicas"] = json!(updated + old);
            s["updatedReplicas"] = json!(updated);
            s["readyReplicas"] = json!(available + old);
            s["availableReplicas"] = json!(available + old);
            s["conditions"] = json!([
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                 "message": format!("ReplicaSet \"{name}-{}\" is progressing.", template_hash(&d["spec"]["template"]))},
            ]);
        });
    }

    /// The rollout is done: every replica updated and available.
    pub fn complete_deployment(&self, ns: &str, name: &str) {
        let Some(d) = self.object("deployments", ns, name) else {
            return;
        };
        let n = d["spec"]["replicas"].as_u64().unwrap_or(1) as u32;
        self.sync_pods(ns, name, n as usize, n as usize, PodFate::Ready, 0);
        self.set_status(ns, name, |d, s| {
            s["observedGeneration"] = d["metadata"]["generation"].clone();
            for f in ["replicas", "updatedReplicas", "readyReplicas", "availableReplicas"] {
                s[f] = json!(n);
            }
            s["conditions"] = json!([
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                 "message": format!("ReplicaSet \"{name}-{}\" has successfully progressed.", template_hash(&d["spec"]["template"]))},
            ]);
        });
    }

    /// `progressDeadlineSeconds` passed without progress since the last
    /// apply: the condition is stamped that long after it (the
    /// controller's clock, moved on).
    pub fn exceed_deadline(&self, ns: &str, name: &str) {
        self.set_status(ns, name, |d, s| {
            let applied: chrono::DateTime<chrono::Utc> = d["metadata"]["managedFields"][0]["time"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(chrono::Utc::now);
            let deadline = d["spec"]["progressDeadlineSeconds"].as_i64().unwrap_or(600);
            let at = (applied + chrono::Duration::seconds(deadline))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            s["observedGeneration"] = d["metadata"]["generation"].clone();
            s["conditions"] = json!([
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                 "lastUpdateTime": at, "lastTransitionTime": at},
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "lastUpdateTime": at, "lastTransitionTime": at,
                 "message": format!("ReplicaSet \"{name}-{}\" has timed out progressing.", template_hash(&d["spec"]["template"]))},
            ]);
        });
    }
}
