//! The apply path of the Kubernetes runtime: building a release's objects,
//! then writing them with server-side apply (the app's namespace and egress
//! policy, per service the env Secret, the Service and the Deployment),
//! deleting what the release no longer has (Services of dropped ports,
//! Deployments and Services of dropped services) and pruning env Secrets no
//! release needs any more. It also (re)registers the app's [`AppEntry`]: its
//! spec, event watcher and fail-fast baseline.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::api::{self, Op};
use super::events::Watcher;
use super::objects::{self, LABEL_APP, LABEL_RELEASE, namespace_name};
use super::progress::Baseline;
use super::{AppEntry, FIELD_MANAGER, KubernetesRuntime, backend};
use crate::runtime::{RuntimeError, Spec};

impl KubernetesRuntime {
    /// Applies release `spec` of its app for rollout `rollout`, with
    /// `deadline` as the Deployments' progress deadline: the body of
    /// [`Runtime::apply`](crate::runtime::Runtime::apply).
    pub(super) async fn apply_release(
        &self,
        rollout: &str,
        spec: Arc<Spec>,
        deadline: Duration,
    ) -> Result<(), RuntimeError> {
        let rack = self.rack().to_owned();
        let app = spec.app.clone();
        let ns = namespace_name(&rack, &app);
        // Build every object first: a spec that cannot run touches nothing.
        let mut deployments = Vec::new();
        for svc in spec.manifest.services.values() {
            let body = objects::deployment_as(
                &rack,
                &spec,
                svc,
                deadline.as_secs().max(1),
                self.inner.pull_secret.as_deref(),
                self.inner.pod_user,
            )
            .map_err(backend)?;
            deployments.push((svc, body));
        }
        // The policy before any pod of the app exists.
        self.apply_namespace(&rack, &app, &ns).await?;
        {
            let mut apps = self.inner.apps.lock().await;
            let current = apps
                .get(&app)
                .filter(|e| !e.watcher.cancel.is_cancelled())
                .cloned();
            let watcher = match &current {
                Some(entry) => {
                    *entry
                        .watcher
                        .rollout
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(rollout.to_owned());
                    entry.watcher.clone()
                }
                None => {
                    Watcher::start(
                        self.inner.client.clone(),
                        self.inner.events.clone(),
                        &app,
                        &ns,
                        rollout,
                    )
                    .await?
                }
            };
            // Re-applying the release this replica is already moving to
            // keeps its counters; anything else starts from the counters of
            // now, so that only what this rollout causes counts.
            let baseline = match current.filter(|e| e.spec.release == spec.release) {
                Some(entry) => entry.baseline,
                None => {
                    let pods: Vec<Pod> = self
                        .list(
                            &self.namespaced(&ns),
                            "pods",
                            &ns,
                            &format!("{LABEL_APP}={app},{LABEL_RELEASE}={}", spec.release),
                        )
                        .await?;
                    let unhealthy = watcher
                        .unhealthy
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    Arc::new(std::sync::Mutex::new(Baseline::take(&pods, &unhealthy)))
                }
            };
            apps.insert(
                app.clone(),
                AppEntry {
                    spec: spec.clone(),
                    watcher,
                    baseline,
                    versions: Arc::default(),
                },
            );
        }
        let secrets: Api<Secret> = self.namespaced(&ns);
        let services: Api<Service> = self.namespaced(&ns);
        let deploys: Api<Deployment> = self.namespaced(&ns);
        let background = DeleteParams::background();
        for (svc, body) in &deployments {
            let secret = objects::secret(&rack, &spec, &svc.name);
            let name = objects::secret_name(&svc.name, &spec.release);
            self.apply_object(&secrets, "secrets", Some(&ns), &name, &secret)
                .await?;
            match objects::service(&rack, &app, svc) {
                Some(service) => {
                    self.apply_object(&services, "services", Some(&ns), &svc.name, &service)
                        .await?;
                }
                // The release dropped the port: the address goes with it.
                None => {
                    let op = Op {
                        verb: "delete",
                        resource: "services",
                        namespace: Some(&ns),
                        name: Some(&svc.name),
                    };
                    match api::call(op, || services.delete(&svc.name, &background)).await {
                        Ok(_) | Err(RuntimeError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            self.apply_object(&deploys, "deployments", Some(&ns), &svc.name, body)
                .await?;
        }
        // Services the release no longer has.
        let existing: Vec<Deployment> = self
            .list(&deploys, "deployments", &ns, &format!("{LABEL_APP}={app}"))
            .await?;
        for d in existing {
            let Some(name) = d.metadata.name else {
                continue;
            };
            if spec.manifest.services.contains_key(&name) {
                continue;
            }
            let op = Op {
                verb: "delete",
                resource: "deployments",
                namespace: Some(&ns),
                name: Some(&name),
            };
            match api::call(op, || deploys.delete(&name, &background)).await {
                Ok(_) | Err(RuntimeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            let op = Op {
                verb: "delete",
                resource: "services",
                namespace: Some(&ns),
                name: Some(&name),
            };
            match api::call(op, || services.delete(&name, &background)).await {
                Ok(_) | Err(RuntimeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.prune_secrets(&ns, &app, &spec.release).await?;
        tracing::info!(rollout, "applied release to kubernetes");
        Ok(())
    }

    /// Applies app `app`'s namespace `ns` and its egress policy, which
    /// must exist before any pod of the app does.
    pub(super) async fn apply_namespace(
        &self,
        rack: &str,
        app: &str,
        ns: &str,
    ) -> Result<(), RuntimeError> {
        let namespaces: Api<Namespace> = Api::all(self.inner.client.clone());
        self.apply_object(
            &namespaces,
            "namespaces",
            None,
            ns,
            &objects::namespace(rack, app),
        )
        .await?;
        let policies: Api<NetworkPolicy> = self.namespaced(ns);
        self.apply_object(
            &policies,
            "networkpolicies",
            Some(ns),
            objects::EGRESS_POLICY,
            &objects::network_policy(rack, app),
        )
        .await?;
        Ok(())
    }

    /// Server-side apply of `body` as `name`.
    pub(super) async fn apply_object<K>(
        &self,
        api: &Api<K>,
        resource: &'static str,
        namespace: Option<&str>,
        name: &str,
        body: &Value,
    ) -> Result<K, RuntimeError>
    where
        K: kube::Resource + Clone + DeserializeOwned + Debug,
    {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let op = Op {
            verb: "patch",
            resource,
            namespace,
            name: Some(name),
        };
        let patch = Patch::Apply(body);
        api::call(op, || api.patch(name, &params, &patch)).await
    }

    /// Deletes the env Secrets of releases nothing refers to any more: not
    /// the target, not a ReplicaSet the Deployments keep (up to
    /// [`objects::REVISION_HISTORY`]; `kubectl rollout undo` needs their
    /// Secrets), not a pod still running or terminating. By label selector
    /// (`deletecollection`), so the runtime never reads a Secret back.
    async fn prune_secrets(&self, ns: &str, app: &str, release: &str) -> Result<(), RuntimeError> {
        let selector = format!("{LABEL_APP}={app}");
        let sets: Vec<ReplicaSet> = self
            .list(&self.namespaced(ns), "replicasets", ns, &selector)
            .await?;
        let pods: Vec<Pod> = self
            .list(&self.namespaced(ns), "pods", ns, &selector)
            .await?;
        let mut keep: std::collections::BTreeSet<String> = sets
            .iter()
            .filter_map(|rs| {
                rs.spec
                    .as_ref()?
                    .template
                    .as_ref()?
                    .metadata
                    .as_ref()?
                    .labels
                    .as_ref()?
                    .get(LABEL_RELEASE)
                    .cloned()
            })
            .chain(
                pods.iter()
                    .filter_map(|p| p.metadata.labels.as_ref()?.get(LABEL_RELEASE).cloned()),
            )
            .collect();
        keep.insert(release.to_owned());
        let selector = format!(
            "{LABEL_APP}={app},{LABEL_RELEASE},{LABEL_RELEASE} notin ({})",
            keep.into_iter().collect::<Vec<_>>().join(",")
        );
        let secrets: Api<Secret> = self.namespaced(ns);
        let op = Op {
            verb: "deletecollection",
            resource: "secrets",
            namespace: Some(ns),
            name: None,
        };
        let params = ListParams::default().labels(&selector);
        let background = DeleteParams::background();
        api::call(op, || secrets.delete_collection(&background, &params)).await?;
        Ok(())
    }
}
