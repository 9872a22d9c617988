//! The Kubernetes runtime (the scale setup): a namespace per app
//! (`<rack>-<app>`), and per service an env Secret per release, a Service
//! for the stable address and a Deployment whose rolling update Kubernetes
//! carries out. Slipway writes with server-side apply (field manager
//! `slipway`, forced; see `apply.rs`) and reads progress back the way
//! `kubectl rollout status` does, failing fast from pod states and
//! readiness-probe events (see `progress.rs`). Events of the namespace
//! stream to the event sink as `system/k8s/<object> <message>` (see
//! `events.rs`).
//!
//! Nothing here needs local state to be right: the desired state is in the
//! API server, and a restarted rollout service re-applies (a no-op when
//! nothing changed: server-side apply leaves `generation` alone) and reads
//! progress from the objects again.

mod api;
mod apply;
mod events;
mod objects;
mod oneoff;
mod progress;
mod remote;

pub use self::objects::DEFAULT_POD_USER;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams};
use serde::de::DeserializeOwned;

use self::api::Op;
use self::events::Watcher;
use self::objects::{LABEL_APP, LABEL_RELEASE, LABEL_SERVICE, namespace_name};
use self::progress::{Baseline, ServiceRead};
use super::{
    EventSink, NoEnds, OneOffEnds, OneOffInfo, ProcessInfo, Progress, RunRequest, Runtime,
    RuntimeError, ServiceInfo, ServiceProgress, Session, SessionKind, Spec,
};

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "slipway";
/// Upper bound between two reads of progress while waiting for events.
const POLL: Duration = Duration::from_secs(1);
/// How long `remove` waits for the namespace to go.
const REMOVE_LIMIT: Duration = Duration::from_secs(300);

/// Settings of the Kubernetes runtime.
#[derive(Clone, Debug)]
pub struct KubernetesConfig {
    /// The rack name: prefix of app namespaces, value of the `rack` label.
    pub rack: String,
    /// Container restarts of a new release that fail the rollout.
    pub restart_limit: u32,
}

/// How to reach the API server.
#[derive(Clone, Debug, Default)]
pub struct ClientSettings {
    /// A kubeconfig file; otherwise `KUBECONFIG`, `~/.kube/config`, or the
    /// in-cluster service account, in that order.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; otherwise its current context.
    pub context: Option<String>,
    /// Use the pod's service account and only that.
    pub in_cluster: bool,
}

impl ClientSettings {
    /// Builds a client from the settings.
    pub async fn client(&self) -> Result<kube::Client, RuntimeError> {
        let backend =
            |e: &dyn std::fmt::Display| RuntimeError::Backend(format!("kubernetes config: {e}"));
        let options = kube::config::KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = if self.in_cluster {
            kube::Config::incluster().map_err(|e| backend(&e))?
        } else if let Some(path) = &self.kubeconfig {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| backend(&e))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| backend(&e))?
        } else if self.context.is_some() {
            kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| backend(&e))?
        } else {
            kube::Config::infer().await.map_err(|e| backend(&e))?
        };
        kube::Client::try_from(config).map_err(|e| backend(&e))
    }
}

/// The Kubernetes runtime. Cheap to clone.
#[derive(Clone)]
pub struct KubernetesRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    events: Arc<dyn EventSink>,
    config: KubernetesConfig,
    /// A Secret (type `kubernetes.io/dockerconfigjson`, in every app
    /// namespace) named in every pod's `imagePullSecrets`, for a private
    /// registry; `None` for one that needs no login.
    pull_secret: Option<String>,
    /// The uid and gid app pods run as; 0: as their image says (see
    /// `objects.rs`).
    pod_user: u32,
    apps: tokio::sync::Mutex<BTreeMap<String, AppEntry>>,
    /// One-offs this replica saw end (see `oneoff.rs`).
    oneoffs: oneoff::OneOffs,
    /// Where the ends of one-offs are reported before their pods go.
    oneoff_ends: Arc<dyn OneOffEnds>,
}

/// What the runtime knows of an app beyond the API server: the spec it
/// last applied (services, health settings) and its event watcher.
#[derive(Clone)]
struct AppEntry {
    spec: Arc<Spec>,
    watcher: Arc<Watcher>,
    /// What fail-fast is measured against (see [`Baseline`]).
    baseline: Arc<std::sync::Mutex<Baseline>>,
    /// The resourceVersions of the last progress read's Deployment and pod
    /// lists, which the wait for a change watches from.
    versions: Arc<std::sync::Mutex<(String, String)>>,
}

fn backend(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Backend(e.to_string())
}

impl KubernetesRuntime {
    /// A runtime talking to the API server through `client`.
    pub fn new(client: kube::Client, events: Arc<dyn EventSink>, config: KubernetesConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                events,
                config,
                pull_secret: None,
                pod_user: objects::DEFAULT_POD_USER,
                apps: tokio::sync::Mutex::new(BTreeMap::new()),
                oneoffs: oneoff::OneOffs::default(),
                oneoff_ends: Arc::new(NoEnds),
            }),
        }
    }

    /// Reports how one-offs ended to `ends` (before their pods are
    /// deleted), so that any replica can still tell once they are gone.
    #[must_use]
    pub fn with_oneoff_ends(mut self, ends: Arc<dyn OneOffEnds>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("a runtime being built has one owner")
            .oneoff_ends = ends;
        self
    }

    /// Names `secret` as every pod's image pull secret (a private registry).
    #[must_use]
    pub fn with_image_pull_secret(mut self, secret: Option<String>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("a runtime being built has one owner")
            .pull_secret = secret;
        self
    }

    /// Runs app pods as `user` (uid and gid, non-root, no capabilities);
    /// 0 runs them as their image says, root included.
    #[must_use]
    pub fn with_pod_user(mut self, user: u32) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("a runtime being built has one owner")
            .pod_user = user;
        self
    }

    fn rack(&self) -> &str {
        &self.inner.config.rack
    }

    fn namespaced<K>(&self, ns: &str) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.inner.client.clone(), ns)
    }

    async fn list<K>(
        &self,
        api: &Api<K>,
        resource: &'static str,
        ns: &str,
        selector: &str,
    ) -> Result<Vec<K>, RuntimeError>
    where
        K: kube::Resource + Clone + DeserializeOwned + Debug,
    {
        let params = ListParams::default().labels(selector);
        let op = Op {
            verb: "list",
            resource,
            namespace: Some(ns),
            name: None,
        };
        Ok(api::call(op, || api.list(&params)).await?.items)
    }

    /// Lists like [`Self::list`], with the list's resourceVersion.
    async fn list_versioned<K>(
        &self,
        ns: &str,
        resource: &'static str,
        selector: &str,
    ) -> Result<(Vec<K>, String), RuntimeError>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = self.namespaced(ns);
        let params = ListParams::default().labels(selector);
        let op = Op {
            verb: "list",
            resource,
            namespace: Some(ns),
            name: None,
        };
        let list = api::call(op, || api.list(&params)).await?;
        Ok((
            list.items,
            list.metadata.resource_version.unwrap_or_default(),
        ))
    }

    /// Waits up to `limit` for a change of `resource` objects matching
    /// `selector` after version `rv` (a pod turning Ready, an old pod gone:
    /// changes no Event reports). Any failure just ends the wait.
    async fn changed_since<K>(&self, ns: &str, selector: &str, rv: &str, limit: Duration)
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = self.namespaced(ns);
        let secs = u32::try_from(limit.as_secs()).unwrap_or(1).max(1);
        let params = kube::api::WatchParams::default()
            .labels(selector)
            .timeout(secs)
            .disable_bookmarks();
        let wait = async {
            use futures::StreamExt as _;
            if let Ok(stream) = api.watch(&params, rv).await {
                let mut stream = std::pin::pin!(stream);
                let _ = stream.next().await;
            } else {
                tokio::time::sleep(limit).await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    async fn entry(&self, app: &str) -> Option<AppEntry> {
        self.inner.apps.lock().await.get(app).cloned()
    }

    /// Reads progress once.
    async fn progress_now(
        &self,
        entry: &AppEntry,
        release: &str,
    ) -> Result<Progress, RuntimeError> {
        let spec = &entry.spec;
        if spec.release != release {
            return Err(RuntimeError::NotFound(format!(
                "app {} is moving to {}, not {release}",
                spec.app, spec.release
            )));
        }
        let ns = namespace_name(self.rack(), &spec.app);
        let selector = format!("{LABEL_APP}={}", spec.app);
        let (deployments, deployments_rv) = self
            .list_versioned::<Deployment>(&ns, "deployments", &selector)
            .await?;
        // Every release's pods: old ones still terminating keep a rollout
        // from being complete.
        let (mut pods, pods_rv) = self.list_versioned::<Pod>(&ns, "pods", &selector).await?;
        // One-off pods (`type=run`) are no part of any rollout.
        pods.retain(|p| !oneoff::is_oneoff(p));
        *entry.versions.lock().unwrap_or_else(|e| e.into_inner()) = (deployments_rv, pods_rv);
        let unhealthy = entry
            .watcher
            .unhealthy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut baseline = entry.baseline.lock().unwrap_or_else(|e| e.into_inner());
        let mut complete = true;
        let mut services = Vec::new();
        for svc in spec.manifest.services.values() {
            let desired = spec.count(&svc.name);
            let Some(d) = deployments
                .iter()
                .find(|d| d.metadata.name.as_deref() == Some(svc.name.as_str()))
            else {
                complete = false;
                services.push(ServiceProgress {
                    service: svc.name.clone(),
                    healthy: 0,
                    desired,
                });
                continue;
            };
            if progress::template_release(d) != Some(release) {
                return Err(RuntimeError::NotFound(format!(
                    "service {} of app {} runs toward release {}, not {release}",
                    svc.name,
                    spec.app,
                    progress::template_release(d).unwrap_or("?")
                )));
            }
            let service_pods = progress::of_service(&pods, &svc.name);
            baseline.observe(&progress::of_release(&service_pods, release));
            let cx = progress::ReadContext {
                release,
                restart_limit: self.inner.config.restart_limit,
                unhealthy: &unhealthy,
                baseline: &baseline,
                now: Utc::now(),
            };
            match progress::read_service(svc, desired, d, &service_pods, &cx) {
                ServiceRead::Done => services.push(ServiceProgress {
                    service: svc.name.clone(),
                    healthy: desired,
                    desired,
                }),
                ServiceRead::Failed(reason) => return Ok(Progress::Failed { reason }),
                ServiceRead::Waiting { healthy, desired } => {
                    complete = false;
                    services.push(ServiceProgress {
                        service: svc.name.clone(),
                        healthy,
                        desired,
                    });
                }
            }
        }
        // Deployments of services the release dropped must be gone too.
        if deployments.iter().any(|d| {
            d.metadata
                .name
                .as_deref()
                .is_none_or(|n| !spec.manifest.services.contains_key(n))
        }) {
            complete = false;
        }
        Ok(if complete {
            Progress::Complete
        } else {
            Progress::Progressing { services }
        })
    }
}

#[async_trait::async_trait]
impl Runtime for KubernetesRuntime {
    fn name(&self) -> &'static str {
        "k8s"
    }

    #[tracing::instrument(skip_all, fields(app = %spec.app, release = %spec.release))]
    async fn apply(
        &self,
        rollout: &str,
        spec: Arc<Spec>,
        deadline: Duration,
    ) -> Result<(), RuntimeError> {
        self.apply_release(rollout, spec, deadline).await
    }

    async fn progress(
        &self,
        app: &str,
        release: &str,
        wait: Duration,
    ) -> Result<Progress, RuntimeError> {
        let entry = self
            .entry(app)
            .await
            .ok_or_else(|| RuntimeError::NotFound(format!("app {app} has no desired release")))?;
        entry.watcher.touch();
        let mut changed = entry.watcher.changed.subscribe();
        changed.borrow_and_update();
        let mut progress = self.progress_now(&entry, release).await?;
        if matches!(progress, Progress::Progressing { .. }) {
            // Until the next Event, or a change of the app's pods or
            // Deployments since the versions just read, or POLL.
            let limit = wait.min(POLL);
            let ns = namespace_name(self.rack(), app);
            let selector = format!("{LABEL_APP}={app}");
            let (deployments_rv, pods_rv) = entry
                .versions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            tokio::select! {
                _ = tokio::time::timeout(limit, changed.changed()) => {}
                () = self.changed_since::<Pod>(&ns, &selector, &pods_rv, limit) => {}
                () = self.changed_since::<Deployment>(&ns, &selector, &deployments_rv, limit) => {}
            }
            progress = self.progress_now(&entry, release).await?;
        }
        if !matches!(progress, Progress::Progressing { .. }) {
            // The rollout this watcher serves has its outcome: its events
            // end here (the next apply starts a watcher of its own).
            entry.watcher.stop();
        }
        Ok(progress)
    }

    async fn remove(&self, rollout: &str, app: &str) -> Result<(), RuntimeError> {
        let ns = namespace_name(self.rack(), app);
        if let Some(entry) = self.inner.apps.lock().await.remove(app) {
            entry.watcher.cancel.cancel();
        }
        let namespaces: Api<Namespace> = Api::all(self.inner.client.clone());
        let background = DeleteParams::background();
        let op = Op {
            verb: "delete",
            resource: "namespaces",
            namespace: None,
            name: Some(&ns),
        };
        match api::call(op, || namespaces.delete(&ns, &background)).await {
            Ok(_) => {}
            Err(RuntimeError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        let start = Instant::now();
        let op = Op {
            verb: "get",
            resource: "namespaces",
            namespace: None,
            name: Some(&ns),
        };
        while api::call(op, || namespaces.get_opt(&ns)).await?.is_some() {
            if start.elapsed() > REMOVE_LIMIT {
                return Err(RuntimeError::Backend(format!(
                    "namespace {ns} still terminating after {}s",
                    REMOVE_LIMIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!(rollout, app, "removed app from kubernetes");
        Ok(())
    }

    async fn processes(&self, app: &str) -> Result<Vec<ProcessInfo>, RuntimeError> {
        let ns = namespace_name(self.rack(), app);
        let pods: Vec<Pod> = self
            .list(
                &self.namespaced(&ns),
                "pods",
                &ns,
                &format!("{LABEL_APP}={app}"),
            )
            .await?;
        self.reap_listed(app, &ns, &pods);
        let mut out: Vec<ProcessInfo> = pods
            .iter()
            .filter_map(|p| oneoff::listed(p, process_info(p)))
            .collect();
        out.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        Ok(out)
    }

    async fn services(&self, app: &str) -> Result<Vec<ServiceInfo>, RuntimeError> {
        let ns = namespace_name(self.rack(), app);
        let selector = format!("{LABEL_APP}={app}");
        let deployments: Vec<Deployment> = self
            .list(&self.namespaced(&ns), "deployments", &ns, &selector)
            .await?;
        let services: Vec<Service> = self
            .list(&self.namespaced(&ns), "services", &ns, &selector)
            .await?;
        let mut out: Vec<ServiceInfo> = deployments
            .iter()
            .filter_map(|d| {
                let name = d.metadata.name.clone()?;
                let port = services
                    .iter()
                    .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
                    .and_then(|s| s.spec.as_ref()?.ports.as_ref()?.first().map(|p| p.port));
                let count = d
                    .status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0);
                Some(ServiceInfo {
                    address: port
                        .map(|p| format!("{name}.{ns}.svc.cluster.local:{p}"))
                        .unwrap_or_default(),
                    name,
                    count: u32::try_from(count).unwrap_or(0),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn run(&self, spec: Arc<Spec>, request: RunRequest) -> Result<OneOffInfo, RuntimeError> {
        self.run_oneoff(spec, request).await
    }

    async fn process(&self, app: &str, id: &str) -> Result<OneOffInfo, RuntimeError> {
        self.process_oneoff(app, id).await
    }

    async fn stop(&self, app: &str, id: &str) -> Result<(), RuntimeError> {
        self.stop_oneoff(app, id).await
    }

    async fn session(
        &self,
        app: &str,
        id: &str,
        kind: SessionKind,
    ) -> Result<Session, RuntimeError> {
        self.session_oneoff(app, id, kind).await
    }
}

/// A pod as a process.
fn process_info(pod: &Pod) -> ProcessInfo {
    let label = |key: &str| {
        pod.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let status = pod.status.as_ref();
    let fatal = status
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
                waiting.and_then(|w| w.reason.as_deref()).is_some_and(|r| {
                    progress::fatal_waiting(r, waiting.and_then(|w| w.message.as_deref()))
                })
            })
        });
    let state = if pod.metadata.deletion_timestamp.is_some() {
        "stopping"
    } else if progress::is_ready(pod) {
        "running"
    } else if fatal {
        "unhealthy"
    } else {
        "starting"
    };
    let started = status
        .and_then(|s| s.start_time.as_ref())
        .or(pod.metadata.creation_timestamp.as_ref())
        .and_then(progress::to_chrono)
        .unwrap_or_else(Utc::now);
    let port = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.ports.as_ref()?.first())
        .and_then(|p| u16::try_from(p.container_port).ok());
    ProcessInfo {
        id: pod.metadata.name.clone().unwrap_or_default(),
        service: label(LABEL_SERVICE),
        release: label(LABEL_RELEASE),
        status: state.to_owned(),
        started,
        pid: None,
        port,
        command: String::new(),
    }
}
