//! The cluster's part, played by the test: the Deployment controller (status
//! from replica counts, conditions, pods of the template), the kubelet
//! (container states, readiness), and the event recorder (deduplicated
//! Events whose `count` grows). Steps can be driven by hand, or by
//! [`FakeKube::run_controller`], which plays a whole cluster and picks each
//! Deployment's fate from its image: `…:healthy`, `…:exit-at-start`
//! (CrashLoopBackOff) or `…:never-healthy` (readiness probe keeps failing).

use std::hash::{Hash as _, Hasher as _};
use std::time::Duration;

use serde_json::{Value, json};

use super::FakeKube;
use super::store::Key;

fn key(resource: &str, ns: &str, name: &str) -> Key {
    (resource.to_owned(), ns.to_owned(), name.to_owned())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// How a template's pods behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PodFate {
    /// Running and ready.
    Ready,
    /// Running, not (yet) ready.
    NotReady,
    /// Exits at start, over and over.
    CrashLoop,
}

/// The short hash of a pod template (`pod-template-hash`).
pub(crate) fn template_hash(template: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    template.to_string().hash(&mut h);
    format!("{:x}", h.finish())[..9].to_owned()
}

impl FakeKube {
    /// Creates or replaces an object (as a controller would; bumps the version).
    pub(crate) fn put(&self, resource: &str, ns: &str, name: &str, mut object: Value) {
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

    /// Deletes an object if it exists.
    pub(crate) fn remove(&self, resource: &str, ns: &str, name: &str) {
        let _ = self.shared.lock().store.delete(key(resource, ns, name));
    }

    /// Changes a Deployment's status (the status subresource) with `f`.
    pub(crate) fn set_status(&self, ns: &str, name: &str, f: impl FnOnce(&Value, &mut Value)) {
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
    pub(crate) fn emit_event(
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
    pub(crate) fn bump_event(&self, ns: &str, name: &str) {
        let Some(mut event) = self.object("events", ns, name) else {
            return;
        };
        event["count"] = json!(event["count"].as_i64().unwrap_or(1) + 1);
        event["lastTimestamp"] = json!(now());
        self.put("events", ns, name, event);
    }

    /// Pods of a Deployment (by its selector).
    pub(crate) fn pods_of(&self, ns: &str, deployment: &Value) -> Vec<Value> {
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
    pub(crate) fn sync_pods(
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
    pub(crate) fn progress_deployment(
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
    pub(crate) fn complete_deployment(&self, ns: &str, name: &str) {
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
    pub(crate) fn exceed_deadline(&self, ns: &str, name: &str) {
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

    /// Plays the whole cluster until the test ends: every 50ms, each
    /// Deployment moves toward its template with the fate its image names.
    pub(crate) fn run_controller(&self) {
        let fake = self.clone();
        tokio::spawn(async move {
            loop {
                fake.controller_tick();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    fn controller_tick(&self) {
        let deployments: Vec<Value> = self.shared.lock().store.list("deployments", "", "");
        for d in deployments {
            let ns = d["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let image = d["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let hash = template_hash(&d["spec"]["template"]);
            let n = d["spec"]["replicas"].as_u64().unwrap_or(1) as u32;
            let seen = d["status"]["observedGeneration"] == d["metadata"]["generation"];
            if !seen {
                self.emit_event(
                    &ns,
                    "Deployment",
                    &name,
                    "ScalingReplicaSet",
                    &format!("Scaled up replica set {name}-{hash} to {n}"),
                );
            }
            if image.ends_with(":exit-at-start") {
                let old = self
                    .pods_of(&ns, &d)
                    .iter()
                    .filter(|p| p["metadata"]["labels"]["pod-template-hash"] != json!(hash))
                    .count() as u32;
                self.progress_deployment(&ns, &name, n, 0, old.min(n), PodFate::CrashLoop);
            } else if image.ends_with(":never-healthy") {
                let old = self
                    .pods_of(&ns, &d)
                    .iter()
                    .filter(|p| p["metadata"]["labels"]["pod-template-hash"] != json!(hash))
                    .count() as u32;
                self.progress_deployment(&ns, &name, n, 0, old.min(n), PodFate::NotReady);
                for pod in self.pods_of(&ns, &d) {
                    if pod["metadata"]["labels"]["pod-template-hash"] != json!(hash) {
                        continue;
                    }
                    let pod_name = pod["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let existing = self.objects("events", &ns).into_iter().find(|e| {
                        e["involvedObject"]["name"] == json!(pod_name)
                            && e["reason"] == json!("Unhealthy")
                    });
                    match existing {
                        Some(e) => {
                            self.bump_event(&ns, e["metadata"]["name"].as_str().unwrap_or_default())
                        }
                        None => {
                            self.emit_event(
                                &ns,
                                "Pod",
                                &pod_name,
                                "Unhealthy",
                                "Readiness probe failed: connection refused",
                            );
                        }
                    }
                }
            } else if !seen
                || d["status"]["updatedReplicas"] != json!(n)
                || d["status"]["replicas"] != json!(n)
            {
                self.complete_deployment(&ns, &name);
            }
        }
    }
}
