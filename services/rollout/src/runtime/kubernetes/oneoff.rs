//! One-off processes on the Kubernetes runtime (see
//! [`crate::runtime::oneoff`]): a bare Pod per one-off, named by its id
//! (`web-k3x9q`), labelled `app`, `service`, `release` and `type=run`, with
//! the pod template of the release's Deployment for that service (its
//! image, its env Secret, its securityContext, no service-account token),
//! `restartPolicy: Never` and `activeDeadlineSeconds` = the timeout. The
//! release's env Secret is applied first, so a release that was never
//! promoted runs with its own env. Nothing of the app's Deployments,
//! desired release or progress is touched.
//!
//! Design decisions:
//! - **Attach runs the command through exec.** An attached one-off's pod
//!   runs a holder (`exec sleep <timeout>`) and the one session execs
//!   `/bin/sh -c <command>` into it (the Kubernetes exec protocol, see
//!   `remote.rs`), as `convox run` does. Exec gives what `attach` cannot:
//!   no output lost before the client is there, stdin that can end (v5
//!   close), and the command's own exit status on the error channel. When
//!   the session ends, its status is the one-off's and the pod is deleted.
//!   A detached one-off runs the command as the container's command; its
//!   exit status is the container's `terminated.exitCode`.
//! - **Never adopted, never serving.** A ReplicaSet adopts any pod matching
//!   its selector (app and service) that has no controller: the pod names
//!   the release's env Secret as its controller owner, so the service's
//!   ReplicaSet leaves it alone (and it goes if that Secret is pruned, which
//!   happens only when no pod of the release is left). A readiness gate
//!   that nothing sets keeps it out of the service's endpoints.
//! - **Ended one-offs** are deleted as soon as their end is seen (by the
//!   session, a reaper task polling the pod, or a `process` call that
//!   finds the pod over), after the end is reported to the runtime's
//!   [`OneOffEnds`](crate::runtime::OneOffEnds) sink (the service's
//!   database), and remembered in memory for [`KEEP_ENDED`]. Another
//!   rollout replica, or this one after a restart, reads a one-off from
//!   its pod while it exists; once the pod is gone the runtime answers
//!   "not found" and the service answers from the reported end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use tokio::time::Instant;

use super::api::{self, Op};
use super::objects::{self, LABEL_APP, LABEL_RELEASE, LABEL_SERVICE, namespace_name};
use super::{KubernetesRuntime, progress, remote};
use crate::runtime::oneoff;
use crate::runtime::{
    OneOffInfo, OneOffStatus, ProcessInfo, RunRequest, RuntimeError, Session, SessionKind, Spec,
};

/// The label that marks a one-off's pod, and its value.
pub(super) const LABEL_TYPE: (&str, &str) = ("type", "run");
/// The one-off's command (for `ps`; the holder's is `sleep`).
const ANNOTATION_COMMAND: &str = "slipway.dev/command";
/// `attach` or `detach`.
const ANNOTATION_MODE: &str = "slipway.dev/mode";
/// The readiness gate nothing sets.
const NEVER_SERVING: &str = "slipway.dev/one-off";
/// How long an ended one-off can still be looked up.
const KEEP_ENDED: Duration = Duration::from_secs(600);
/// How often the reaper reads a one-off's pod.
const REAP_POLL: Duration = Duration::from_millis(250);
/// How long an attach waits for its holder to run.
const START_LIMIT: Duration = Duration::from_secs(300);

/// What this replica knows of one-offs beyond their pods.
#[derive(Default)]
pub(super) struct OneOffs {
    /// Ended ones, by (app, id), with when they were recorded.
    ended: Mutex<BTreeMap<(String, String), (OneOffInfo, Instant)>>,
    /// Attached ones whose one session was taken.
    attached: Mutex<BTreeSet<(String, String)>>,
}

impl OneOffs {
    fn ended(&self, app: &str, id: &str) -> Option<OneOffInfo> {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        ended.retain(|_, (_, at)| now.duration_since(*at) < KEEP_ENDED);
        ended
            .get(&(app.to_owned(), id.to_owned()))
            .map(|(info, _)| info.clone())
    }

    /// Records how a one-off ended (the first record wins); `true` if
    /// this was the first.
    fn end(&self, info: OneOffInfo) -> bool {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        let key = (info.app.clone(), info.id.clone());
        if ended.contains_key(&key) {
            return false;
        }
        ended.insert(key, (info, Instant::now()));
        true
    }
}

/// Whether `pod` is a one-off's.
pub(super) fn is_oneoff(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_TYPE.0))
        .is_some_and(|v| v == LABEL_TYPE.1)
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn label(pod: &Pod, key: &str) -> String {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .cloned()
        .unwrap_or_default()
}

fn refused(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Refused(message.into())
}

fn not_found(id: &str) -> RuntimeError {
    RuntimeError::NotFound(format!("process not found: {id}"))
}

/// The exit code of the pod's (first) container, once terminated.
fn terminated_code(pod: &Pod) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn container_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

/// A pod as `ps info` shows it: a one-off's from its labels, annotations
/// and status; a service process's with an empty command.
pub(super) fn info(app: &str, pod: &Pod) -> OneOffInfo {
    let started = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(pod.metadata.creation_timestamp.as_ref())
        .and_then(progress::to_chrono)
        .unwrap_or_else(Utc::now);
    let attach = annotation(pod, ANNOTATION_MODE) == Some("attach");
    let code = terminated_code(pod);
    let status = if pod.metadata.deletion_timestamp.is_some() {
        OneOffStatus::Stopping
    } else {
        match phase(pod) {
            // A holder that ended on its own never ran its command.
            "Succeeded" if !attach => OneOffStatus::Complete,
            "Succeeded" | "Failed" => OneOffStatus::Failed,
            "Running" if container_running(pod) => OneOffStatus::Running,
            "Running" => OneOffStatus::Stopping,
            _ => OneOffStatus::Pending,
        }
    };
    let deadline = pod
        .spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
        .map(|s| started + chrono::Duration::seconds(s));
    OneOffInfo {
        id: pod.metadata.name.clone().unwrap_or_default(),
        app: app.to_owned(),
        service: label(pod, LABEL_SERVICE),
        release: label(pod, LABEL_RELEASE),
        command: annotation(pod, ANNOTATION_COMMAND)
            .unwrap_or_default()
            .to_owned(),
        status,
        started,
        deadline: if status.is_over() { None } else { deadline },
        exit_code: match status {
            OneOffStatus::Complete | OneOffStatus::Failed if !attach => code,
            _ => None,
        },
    }
}

/// A one-off's pod as `ps` lists it (`None` once it is over or stopping:
/// `ps` shows what runs).
pub(super) fn listed(pod: &Pod, base: ProcessInfo) -> Option<ProcessInfo> {
    if !is_oneoff(pod) {
        return Some(base);
    }
    let status = info("", pod).status;
    if status.is_over() || status == OneOffStatus::Stopping {
        return None;
    }
    Some(ProcessInfo {
        status: status.as_str().to_owned(),
        command: annotation(pod, ANNOTATION_COMMAND)
            .unwrap_or_default()
            .to_owned(),
        ..base
    })
}

impl KubernetesRuntime {
    fn pods(&self, ns: &str) -> Api<Pod> {
        self.namespaced(ns)
    }

    async fn get_pod(&self, ns: &str, id: &str) -> Result<Option<Pod>, RuntimeError> {
        let pods = self.pods(ns);
        let op = Op {
            verb: "get",
            resource: "pods",
            namespace: Some(ns),
            name: Some(id),
        };
        api::call(op, || pods.get_opt(id)).await
    }

    async fn delete_pod(&self, ns: &str, id: &str) -> Result<(), RuntimeError> {
        let pods = self.pods(ns);
        let op = Op {
            verb: "delete",
            resource: "pods",
            namespace: Some(ns),
            name: Some(id),
        };
        let params = DeleteParams::default();
        match api::call(op, || pods.delete(id, &params)).await {
            Ok(_) | Err(RuntimeError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Records how a one-off ended, reports it (the first time this
    /// replica sees it), then deletes its pod.
    async fn finish(&self, ns: &str, info: OneOffInfo) {
        let id = info.id.clone();
        if self.inner.oneoffs.end(info.clone()) {
            self.inner.oneoff_ends.ended(&info, Utc::now()).await;
        }
        if let Err(e) = self.delete_pod(ns, &id).await {
            tracing::warn!(pod = %id, error = %e, "could not delete an ended one-off's pod");
        }
    }

    /// Ends, in the background, the one-offs among `pods` (a listing of
    /// the app's) whose pods are over but still there: their reaper was on
    /// a replica that stopped. `ps` then records and deletes them as
    /// `ps info` does.
    pub(super) fn reap_listed(&self, app: &str, ns: &str, pods: &[Pod]) {
        for pod in pods {
            if !is_oneoff(pod) || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let info = info(app, pod);
            if info.status.is_over() {
                let (runtime, ns) = (self.clone(), ns.to_owned());
                tokio::spawn(async move { runtime.finish(&ns, info).await });
            }
        }
    }

    /// See [`crate::runtime::Runtime::run`].
    pub(super) async fn run_oneoff(
        &self,
        spec: Arc<Spec>,
        request: RunRequest,
    ) -> Result<OneOffInfo, RuntimeError> {
        let (app, release) = (spec.app.clone(), spec.release.clone());
        let (svc, command) = request.check(&spec)?;
        let timeout = request.timeout.as_secs();
        // The Deployment's pod template; its rolling-update settings do not
        // matter here (and must not refuse a one-off).
        let mut template_svc = svc.clone();
        template_svc.deployment.minimum = 50;
        template_svc.deployment.maximum = 200;
        let deployment = objects::deployment_as(
            self.rack(),
            &spec,
            &template_svc,
            1,
            self.inner.pull_secret.as_deref(),
            self.inner.pod_user,
        )
        .map_err(|e| refused(e.to_string()))?;
        let rack = self.rack().to_owned();
        let ns = namespace_name(&rack, &app);
        // The namespace and its egress policy (an app never deployed here
        // has neither), then the release's env Secret.
        self.apply_namespace(&rack, &app, &ns).await?;
        let secrets: Api<Secret> = self.namespaced(&ns);
        let secret_name = objects::secret_name(&svc.name, &release);
        let secret = self
            .apply_object(
                &secrets,
                "secrets",
                Some(&ns),
                &secret_name,
                &objects::secret(&rack, &spec, &svc.name),
            )
            .await?;
        let mut template = deployment["spec"]["template"].clone();
        let container = &mut template["spec"]["containers"][0];
        if let Some(c) = container.as_object_mut() {
            c.remove("readinessProbe");
            c.remove("ports");
        }
        container["command"] = if request.attach {
            json!(["/bin/sh", "-c", format!("exec sleep {timeout}")])
        } else {
            json!(["/bin/sh", "-c", command])
        };
        let mut pod_spec = template["spec"].clone();
        pod_spec["restartPolicy"] = json!("Never");
        pod_spec["activeDeadlineSeconds"] = json!(timeout);
        pod_spec["readinessGates"] = json!([{ "conditionType": NEVER_SERVING }]);
        let mut attempt = 0;
        let pods = self.pods(&ns);
        let created = loop {
            let id = oneoff::new_id(&svc.name);
            let body = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": id,
                    "namespace": ns,
                    "labels": {
                        LABEL_APP: app,
                        LABEL_SERVICE: svc.name,
                        LABEL_RELEASE: release,
                        LABEL_TYPE.0: LABEL_TYPE.1,
                    },
                    "annotations": {
                        ANNOTATION_COMMAND: command,
                        ANNOTATION_MODE: if request.attach { "attach" } else { "detach" },
                    },
                    "ownerReferences": [{
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "name": secret_name,
                        "uid": secret.metadata.uid.clone().unwrap_or_default(),
                        "controller": true,
                    }],
                },
                "spec": pod_spec,
            });
            let pod: Pod = serde_json::from_value(body)
                .map_err(|e| RuntimeError::Backend(format!("one-off pod: {e}")))?;
            let op = Op {
                verb: "create",
                resource: "pods",
                namespace: Some(&ns),
                name: Some(&id),
            };
            let params = PostParams::default();
            match api::call(op, || pods.create(&params, &pod)).await {
                Ok(pod) => break pod,
                // An id already taken (409 is retried by `call`, then
                // reported as a backend error): another id.
                Err(RuntimeError::Backend(m)) if m.contains("409") && attempt < 3 => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let mut info = info(&app, &created);
        info.status = OneOffStatus::Pending;
        tracing::info!(app, release, process = %info.id, attach = request.attach, "started a one-off pod");
        let runtime = self.clone();
        let (reap_ns, reap_app, reap_id) = (ns.clone(), app.clone(), info.id.clone());
        tokio::spawn(async move { runtime.reap(&reap_ns, &reap_app, &reap_id).await });
        Ok(info)
    }

    /// Follows a one-off's pod until it ends, then records it and deletes
    /// the pod (unless its session did).
    async fn reap(&self, ns: &str, app: &str, id: &str) {
        loop {
            tokio::time::sleep(REAP_POLL).await;
            if self.inner.oneoffs.ended(app, id).is_some() {
                return;
            }
            match self.get_pod(ns, id).await {
                Ok(None) => return,
                Ok(Some(pod)) => {
                    let info = info(app, &pod);
                    if info.status.is_over() {
                        self.finish(ns, info).await;
                        return;
                    }
                }
                Err(e) => tracing::debug!(pod = %id, error = %e, "one-off reaper: read failed"),
            }
        }
    }

    /// See [`crate::runtime::Runtime::process`].
    pub(super) async fn process_oneoff(
        &self,
        app: &str,
        id: &str,
    ) -> Result<OneOffInfo, RuntimeError> {
        if let Some(info) = self.inner.oneoffs.ended(app, id) {
            return Ok(info);
        }
        let ns = namespace_name(self.rack(), app);
        let pod = self.get_pod(&ns, id).await?.ok_or_else(|| not_found(id))?;
        if label(&pod, LABEL_APP) != app {
            return Err(not_found(id));
        }
        let mut info = info(app, &pod);
        if is_oneoff(&pod) && info.status.is_over() {
            // Its end, seen here first (its reaper is on a replica that
            // stopped, or has not looked yet): reported, and the pod goes.
            self.finish(&ns, info.clone()).await;
        }
        if !is_oneoff(&pod) {
            // A service process: running or not, never over.
            info.status = match info.status {
                OneOffStatus::Complete | OneOffStatus::Failed => OneOffStatus::Stopping,
                other => other,
            };
            info.deadline = None;
        }
        Ok(info)
    }

    /// See [`crate::runtime::Runtime::stop`].
    pub(super) async fn stop_oneoff(&self, app: &str, id: &str) -> Result<(), RuntimeError> {
        if self.inner.oneoffs.ended(app, id).is_some() {
            return Ok(());
        }
        let ns = namespace_name(self.rack(), app);
        let pod = self.get_pod(&ns, id).await?.ok_or_else(|| not_found(id))?;
        if label(&pod, LABEL_APP) != app {
            return Err(not_found(id));
        }
        if is_oneoff(&pod) {
            let mut info = info(app, &pod);
            if !info.status.is_over() {
                info.status = OneOffStatus::Failed;
                info.deadline = None;
            }
            self.finish(&ns, info).await;
            Ok(())
        } else {
            // Its Deployment replaces it.
            self.delete_pod(&ns, id).await
        }
    }

    /// Waits until a one-off's container runs.
    async fn wait_running(&self, ns: &str, id: &str) -> Result<Pod, RuntimeError> {
        let start = Instant::now();
        loop {
            let pod = self.get_pod(ns, id).await?.ok_or_else(|| not_found(id))?;
            if pod.metadata.deletion_timestamp.is_some() {
                return Err(refused(format!("process {id} is stopping")));
            }
            match phase(&pod) {
                "Succeeded" | "Failed" => return Err(refused(format!("process {id} has ended"))),
                "Running" if container_running(&pod) => return Ok(pod),
                _ => {}
            }
            if start.elapsed() > START_LIMIT {
                let why = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c.first())
                    .and_then(|c| c.state.as_ref()?.waiting.as_ref())
                    .map(|w| {
                        format!(
                            " ({}: {})",
                            w.reason.as_deref().unwrap_or_default(),
                            w.message.as_deref().unwrap_or_default()
                        )
                    })
                    .unwrap_or_default();
                return Err(RuntimeError::Backend(format!(
                    "process {id} did not start within {}s{why}",
                    START_LIMIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// See [`crate::runtime::Runtime::session`].
    pub(super) async fn session_oneoff(
        &self,
        app: &str,
        id: &str,
        kind: SessionKind,
    ) -> Result<Session, RuntimeError> {
        if self.inner.oneoffs.ended(app, id).is_some() {
            return Err(refused(format!("process {id} has ended")));
        }
        let ns = namespace_name(self.rack(), app);
        let pod = self.get_pod(&ns, id).await?.ok_or_else(|| not_found(id))?;
        if label(&pod, LABEL_APP) != app {
            return Err(not_found(id));
        }
        let container = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let sh = |text: &str| vec!["/bin/sh".to_owned(), "-c".to_owned(), text.to_owned()];
        match kind {
            SessionKind::Exec(text) => {
                if text.trim().is_empty() {
                    return Err(refused("empty command"));
                }
                let pod = self.wait_running(&ns, id).await?;
                let _ = pod;
                let stream =
                    remote::open(&self.inner.client, &ns, id, &container, &sh(&text)).await?;
                Ok(remote::bridge(stream).0)
            }
            SessionKind::Attach => {
                if !is_oneoff(&pod) || annotation(&pod, ANNOTATION_MODE) != Some("attach") {
                    return Err(refused(format!(
                        "process {id} was not started attached: exec a command into it instead"
                    )));
                }
                let taken = (app.to_owned(), id.to_owned());
                if !self
                    .inner
                    .oneoffs
                    .attached
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(taken)
                {
                    return Err(refused(format!("process {id} already has its session")));
                }
                let command = annotation(&pod, ANNOTATION_COMMAND)
                    .unwrap_or_default()
                    .to_owned();
                let pod = match self.wait_running(&ns, id).await {
                    Ok(pod) => pod,
                    Err(e) => {
                        let mut info = info(app, &pod);
                        info.status = OneOffStatus::Failed;
                        self.finish(&ns, info).await;
                        return Err(e);
                    }
                };
                let stream = match remote::open(
                    &self.inner.client,
                    &ns,
                    id,
                    &container,
                    &sh(&command),
                )
                .await
                {
                    Ok(stream) => stream,
                    Err(e) => {
                        let mut info = info(app, &pod);
                        info.status = OneOffStatus::Failed;
                        self.finish(&ns, info).await;
                        return Err(e);
                    }
                };
                let (session, ended) = remote::bridge(stream);
                let runtime = self.clone();
                let mut info = info(app, &pod);
                let deadline = info.deadline;
                tokio::spawn(async move {
                    // The holder's deadline kills the exec with it; stop it
                    // here too, should the cluster be late.
                    let limit = deadline
                        .and_then(|d| (d - Utc::now()).to_std().ok())
                        .unwrap_or(Duration::ZERO)
                        + Duration::from_secs(5);
                    let ended = tokio::time::timeout(limit, ended).await;
                    info.deadline = None;
                    (info.status, info.exit_code) = match ended {
                        Ok(Ok(remote::Ended::Exit(0))) => (OneOffStatus::Complete, Some(0)),
                        Ok(Ok(remote::Ended::Exit(code))) => (OneOffStatus::Failed, Some(code)),
                        _ => (OneOffStatus::Failed, None),
                    };
                    runtime.finish(&ns, info).await;
                });
                Ok(session)
            }
        }
    }
}
