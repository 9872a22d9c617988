//! The objects the Kubernetes runtime writes, as server-side apply bodies:
//! a Namespace per app with a NetworkPolicy keeping its pods out of
//! Slipway's own namespaces, an Opaque Secret per release and service (the
//! env), a Service per service with a port (the stable address), and a
//! Deployment per service. Built as JSON so the exact shape sent is plain
//! to read here and to assert in tests; status is read back typed.
//!
//! App pods get no service-account token (they have no business with the
//! API server) and, by default, the Pod Security `restricted` profile: they
//! run as a non-root user ([`DEFAULT_POD_USER`], uid and gid, whatever the
//! image's `USER` says), without privilege escalation, with every
//! capability dropped and the runtime's default seccomp profile (see
//! [`pod_security_context`]). An image that must start as root (to bind a
//! port under 1024 on a container runtime without unprivileged low ports,
//! or to drop to its own user itself) needs a pod user of 0
//! ([`deployment_as`]; the runtime's `with_pod_user`): then pods run as the
//! image says, keeping only no privilege escalation and the default
//! seccomp profile (the rollout service has no flag for it yet). The root
//! filesystem stays writable: apps write caches, temporary files and pid
//! files next to their code, and a read-only root would break them in ways
//! only a crash shows.
//!
//! cpu and memory come from [`Spec::resources`]: set by hand with `scale`,
//! field by field, else the manifest's `scale.cpu`/`scale.memory`.
//!
//! Every body carries only the fields Slipway owns: with server-side apply
//! a field left out is a field given up, and defaults stay the server's.

use base64::Engine as _;
use serde_json::{Value, json};
use slipway_domain::manifest::Service;

use super::super::Spec;

/// Labels of objects the runtime writes: rack and app on every object,
/// service on per-service ones, release on per-release ones.
pub(crate) const LABEL_RACK: &str = "rack";
/// See [`LABEL_RACK`].
pub(crate) const LABEL_APP: &str = "app";
/// See [`LABEL_RACK`].
pub(crate) const LABEL_SERVICE: &str = "service";
/// See [`LABEL_RACK`].
pub(crate) const LABEL_RELEASE: &str = "release";

/// The uid and gid app pods run as by default: the first user
/// `useradd`/`adduser` make in Debian, Ubuntu and Alpine images, so an
/// image that made one user for its app runs as it.
pub const DEFAULT_POD_USER: u32 = 1000;

/// Readiness-probe failures in a row that make a pod unready.
pub(crate) const FAILURE_THRESHOLD: u32 = 3;

/// Why a spec cannot be turned into objects.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ObjectError {
    /// `deployment.minimum: 100` with `maximum: 100` allows no step.
    #[error(
        "service {service}: deployment minimum {minimum}% and maximum {maximum}% leave no room to replace a process (maxSurge and maxUnavailable would both be 0)"
    )]
    NoRollingRoom {
        /// The service.
        service: String,
        /// `deployment.minimum`.
        minimum: u32,
        /// `deployment.maximum`.
        maximum: u32,
    },
    /// Neither an artifact nor `image` names what to run.
    #[error("service {0}: no image (the release has no artifact for it and the manifest no image)")]
    NoImage(String),
}

/// `<rack>-<app>`: the app's namespace.
pub(crate) fn namespace_name(rack: &str, app: &str) -> String {
    format!("{rack}-{app}")
}

/// `<service>-env-<release>`: a release's env Secret for one service.
/// Release ids are upper case; object names must not be.
pub(crate) fn secret_name(service: &str, release: &str) -> String {
    format!("{service}-env-{}", release.to_ascii_lowercase())
}

/// The Namespace of `app`. Pod Security admission enforces `baseline` (no
/// privileged pods, host namespaces or host paths, which Slipway never
/// asks for) and warns and audits against `restricted`, which app images
/// that start as root would fail.
pub(crate) fn namespace(rack: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace_name(rack, app),
            "labels": {
                LABEL_RACK: rack,
                LABEL_APP: app,
                "pod-security.kubernetes.io/enforce": "baseline",
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/audit": "restricted",
            },
        },
    })
}

/// Old ReplicaSets a Deployment keeps (each keeps its release's Secret).
pub(crate) const REVISION_HISTORY: u32 = 5;

/// Name of the egress policy in every app namespace.
pub(crate) const EGRESS_POLICY: &str = "slipway-app-egress";
/// The label Slipway's own namespaces carry (`deploy/kubernetes`), which
/// app pods may not reach.
pub(crate) const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "slipway");

/// The NetworkPolicy of `app`'s namespace. A policy only allows, so it
/// allows what apps may reach and nothing of Slipway: pods in every
/// namespace not labelled as Slipway's (the app's own, DNS in
/// `kube-system`, other apps, which their own policies may refuse), and
/// addresses outside the cluster except the private ranges (where pod and
/// service networks live, and some implementations match pod addresses
/// by `ipBlock`, which would let Slipway's pods back in) and the cloud
/// metadata address. Policies add up: a cluster whose apps need a private
/// address outside the cluster allows it with a policy of its own.
pub(crate) fn network_policy(rack: &str, app: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": EGRESS_POLICY,
            "namespace": namespace_name(rack, app),
            "labels": { LABEL_RACK: rack, LABEL_APP: app },
        },
        "spec": {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                { "to": [{ "namespaceSelector": { "matchExpressions": [
                    { "key": PART_OF.0, "operator": "NotIn", "values": [PART_OF.1] },
                ] } }] },
                { "to": [
                    { "ipBlock": { "cidr": "0.0.0.0/0", "except": [
                        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                        "169.254.169.254/32",
                    ] } },
                    { "ipBlock": { "cidr": "::/0", "except": ["fc00::/7"] } },
                ] },
            ],
        },
    })
}

/// The env Secret of `service` in `spec`'s release: `data` values base64,
/// the manifest's defaults under the release env.
pub(crate) fn secret(rack: &str, spec: &Spec, service: &str) -> Value {
    let env = spec.manifest.env_for(service, &spec.env);
    let engine = base64::engine::general_purpose::STANDARD;
    let data: serde_json::Map<String, Value> = env
        .iter()
        .map(|(k, v)| (k.to_owned(), Value::String(engine.encode(v))))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(service, &spec.release),
            "namespace": namespace_name(rack, &spec.app),
            "labels": {
                LABEL_RACK: rack,
                LABEL_APP: spec.app,
                LABEL_SERVICE: service,
                LABEL_RELEASE: spec.release,
            },
        },
        "type": "Opaque",
        "data": data,
    })
}

/// The Service giving `service` its stable in-cluster address; `None`
/// for a service without a port.
pub(crate) fn service(rack: &str, app: &str, svc: &Service) -> Option<Value> {
    let port = svc.port.as_ref()?.number;
    Some(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": svc.name,
            "namespace": namespace_name(rack, app),
            "labels": { LABEL_RACK: rack, LABEL_APP: app, LABEL_SERVICE: svc.name },
        },
        "spec": {
            "selector": { LABEL_APP: app, LABEL_SERVICE: svc.name },
            "ports": [{ "name": "main", "port": port, "targetPort": port, "protocol": "TCP" }],
        },
    }))
}

/// `maxSurge` and `maxUnavailable` from `deployment.maximum`/`minimum`, as
/// percentages (Kubernetes rounds surge up and unavailable down).
pub(crate) fn rolling_update(svc: &Service) -> Result<(String, String), ObjectError> {
    let surge = svc.deployment.maximum.saturating_sub(100);
    let unavailable = 100u32.saturating_sub(svc.deployment.minimum);
    if surge == 0 && unavailable == 0 {
        return Err(ObjectError::NoRollingRoom {
            service: svc.name.clone(),
            minimum: svc.deployment.minimum,
            maximum: svc.deployment.maximum,
        });
    }
    Ok((format!("{surge}%"), format!("{unavailable}%")))
}

/// The pod-template annotation a restart sets (as a Convox rack does).
pub(crate) const RESTART_ANNOTATION: &str = "convox.com/restart";

/// The Deployment of `svc` running `spec`'s release, its pods as
/// [`DEFAULT_POD_USER`] (see [`deployment_as`]). The runtime moves to
/// `deployment_as` with its configured user; until then this is its call.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn deployment(
    rack: &str,
    spec: &Spec,
    svc: &Service,
    deadline_secs: u64,
    pull_secret: Option<&str>,
) -> Result<Value, ObjectError> {
    deployment_as(
        rack,
        spec,
        svc,
        deadline_secs,
        pull_secret,
        DEFAULT_POD_USER,
    )
}

/// The Deployment of `svc` running `spec`'s release, its pods as
/// `pod_user` (0: as the image says). The selector (app and service)
/// never changes: Kubernetes refuses a changed selector, and the release
/// label lives only on the pod template.
pub(crate) fn deployment_as(
    rack: &str,
    spec: &Spec,
    svc: &Service,
    deadline_secs: u64,
    pull_secret: Option<&str>,
    pod_user: u32,
) -> Result<Value, ObjectError> {
    let (surge, unavailable) = rolling_update(svc)?;
    let image = spec
        .artifacts
        .get(&svc.name)
        .filter(|a| !a.is_empty())
        .or(svc.image.as_ref())
        .ok_or_else(|| ObjectError::NoImage(svc.name.clone()))?;
    let mut container = json!({
        "name": svc.name,
        "image": image,
        "envFrom": [{ "secretRef": { "name": secret_name(&svc.name, &spec.release) } }],
        "securityContext": container_security_context(pod_user),
    });
    if let Some(command) = &svc.command {
        container["command"] = json!(["/bin/sh", "-c", command]);
    }
    // Set by hand, else the manifest's: cpu (millicores) as the request
    // only (a cpu limit throttles even an idle node's spare cycles), memory
    // (MiB) as request and limit, as a Convox rack sets them.
    let (cpu, memory) = spec.resources(&svc.name);
    if cpu > 0 || memory > 0 {
        let mut requests = serde_json::Map::new();
        let mut limits = serde_json::Map::new();
        if cpu > 0 {
            requests.insert("cpu".into(), json!(format!("{cpu}m")));
        }
        if memory > 0 {
            requests.insert("memory".into(), json!(format!("{memory}Mi")));
            limits.insert("memory".into(), json!(format!("{memory}Mi")));
        }
        let mut resources = json!({ "requests": requests });
        if !limits.is_empty() {
            resources["limits"] = Value::Object(limits);
        }
        container["resources"] = resources;
    }
    if let Some(port) = &svc.port {
        container["env"] = json!([{ "name": "PORT", "value": port.number.to_string() }]);
        container["ports"] =
            json!([{ "name": "main", "containerPort": port.number, "protocol": "TCP" }]);
        if !svc.health.disabled {
            // `port: https:N` serves TLS: probing it in plain HTTP fails.
            let mut http_get = json!({ "path": svc.health.path, "port": port.number });
            if port.scheme.as_deref() == Some("https") {
                http_get["scheme"] = json!("HTTPS");
            }
            container["readinessProbe"] = json!({
                "httpGet": http_get,
                "initialDelaySeconds": svc.health.grace_secs,
                "periodSeconds": svc.health.interval_secs,
                "timeoutSeconds": svc.health.timeout_secs.max(1),
                "failureThreshold": FAILURE_THRESHOLD,
            });
        }
    }
    let mut template_metadata = json!({
        "labels": {
            LABEL_APP: spec.app,
            LABEL_SERVICE: svc.name,
            LABEL_RELEASE: spec.release,
        },
    });
    // A restart changes the pod template, so the Deployment replaces its
    // pods, rolling (Convox's annotation, Unix nanoseconds).
    if let Some(at) = spec.overrides.restarted.get(&svc.name) {
        template_metadata["annotations"] = json!({
            RESTART_ANNOTATION: at.timestamp_nanos_opt().unwrap_or_default().to_string(),
        });
    }
    let mut pod_spec = json!({
        "terminationGracePeriodSeconds": svc.termination_grace_secs,
        "automountServiceAccountToken": false,
        "securityContext": pod_security_context(pod_user),
        // Kubernetes would inject `<SERVICE>_PORT=tcp://…` for every
        // Service of the namespace, clobbering app variables such as
        // REDIS_PORT.
        "enableServiceLinks": false,
        "containers": [container],
    });
    // A private registry (the oci builder's `--registry`).
    if let Some(secret) = pull_secret {
        pod_spec["imagePullSecrets"] = json!([{ "name": secret }]);
    }
    Ok(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": svc.name,
            "namespace": namespace_name(rack, &spec.app),
            "labels": { LABEL_RACK: rack, LABEL_APP: spec.app, LABEL_SERVICE: svc.name },
        },
        "spec": {
            "replicas": spec.count(&svc.name),
            "selector": { "matchLabels": { LABEL_APP: spec.app, LABEL_SERVICE: svc.name } },
            "progressDeadlineSeconds": deadline_secs,
            "revisionHistoryLimit": REVISION_HISTORY,
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": { "maxSurge": surge, "maxUnavailable": unavailable },
            },
            "template": {
                "metadata": template_metadata,
                "spec": pod_spec,
            },
        },
    }))
}

/// The pod-level securityContext of app pods running as `user` (0: as the
/// image says): with a user, non-root by uid and gid and the default
/// seccomp profile, which with [`container_security_context`] passes Pod
/// Security `restricted`; without, the seccomp profile only.
pub(crate) fn pod_security_context(user: u32) -> Value {
    let mut context = json!({ "seccompProfile": { "type": "RuntimeDefault" } });
    if user != 0 {
        context["runAsNonRoot"] = json!(true);
        context["runAsUser"] = json!(user);
        context["runAsGroup"] = json!(user);
    }
    context
}

/// The container-level securityContext of app containers (see
/// [`pod_security_context`]): never privilege escalation; with a non-root
/// user, no capabilities either (a root image keeps the runtime's default
/// set, which it may need to drop to its own user).
pub(crate) fn container_security_context(user: u32) -> Value {
    let mut context = json!({ "allowPrivilegeEscalation": false });
    if user != 0 {
        context["capabilities"] = json!({ "drop": ["ALL"] });
    }
    context
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_domain::Manifest;

    fn svc(yaml: &str) -> Service {
        Manifest::parse(yaml).unwrap().services["web"].clone()
    }

    #[test]
    fn rolling_update_comes_from_minimum_and_maximum() {
        let web = svc("services:\n  web:\n    build: .\n    port: 80\n");
        assert_eq!(rolling_update(&web).unwrap(), ("100%".into(), "50%".into()));
        let web = svc(
            "services:\n  web:\n    build: .\n    port: 80\n    deployment:\n      minimum: 100\n      maximum: 150\n",
        );
        assert_eq!(rolling_update(&web).unwrap(), ("50%".into(), "0%".into()));
        // The manifest parser refuses this too; the runtime does not rely on it.
        let mut web = web;
        web.deployment.maximum = 100;
        assert!(
            rolling_update(&web)
                .unwrap_err()
                .to_string()
                .contains("maxSurge and maxUnavailable would both be 0")
        );
    }

    #[test]
    fn an_https_port_is_probed_over_https() {
        let record = crate::model::SpecRecord {
            app: "shop".into(),
            release: "RAAAAAAAAAA".into(),
            build: "BAAAAAAAAAA".into(),
            manifest: "services:\n  web:\n    image: nginx\n    port: https:443\n".into(),
            env: Default::default(),
            artifacts: Default::default(),
        };
        let spec = Spec::from_record(record).unwrap();
        let web = &spec.manifest.services["web"];
        let d = deployment("prod", &spec, web, 60, Some("registry-auth")).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            pod["containers"][0]["readinessProbe"]["httpGet"],
            json!({"path": "/", "port": 443, "scheme": "HTTPS"})
        );
        assert_eq!(pod["imagePullSecrets"], json!([{"name": "registry-auth"}]));
        assert_eq!(pod["enableServiceLinks"], json!(false));
        let plain = deployment("prod", &spec, web, 60, None).unwrap();
        assert!(plain["spec"]["template"]["spec"]["imagePullSecrets"].is_null());
    }

    fn spec_of(manifest: &str) -> Spec {
        Spec::from_record(crate::model::SpecRecord {
            app: "shop".into(),
            release: "RAAAAAAAAAA".into(),
            build: "BAAAAAAAAAA".into(),
            manifest: manifest.into(),
            env: Default::default(),
            artifacts: Default::default(),
        })
        .unwrap()
    }

    /// The manifest's cpu and memory become requests (memory also the
    /// limit); a value set by hand wins, field by field.
    #[test]
    fn resources_come_from_the_manifest_unless_set_by_hand() {
        let mut spec = spec_of(
            "services:\n  web:\n    image: nginx\n    scale:\n      cpu: 250\n      memory: 512\n  worker:\n    image: nginx\n",
        );
        let body = |spec: &Spec, service: &str| {
            let svc = &spec.manifest.services[service];
            deployment("prod", spec, svc, 60, None).unwrap()["spec"]["template"]
                ["spec"]["containers"][0]["resources"]
                .clone()
        };
        assert_eq!(
            body(&spec, "web"),
            json!({"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "512Mi"}})
        );
        assert!(
            body(&spec, "worker").is_null(),
            "BestEffort without figures"
        );
        spec.overrides.scale.insert(
            "web".into(),
            crate::overrides::ServiceScale {
                count: None,
                cpu: 0,
                memory: 1024,
            },
        );
        spec.overrides.scale.insert(
            "worker".into(),
            crate::overrides::ServiceScale {
                count: Some(2),
                cpu: 100,
                memory: 0,
            },
        );
        assert_eq!(
            body(&spec, "web"),
            json!({"requests": {"cpu": "250m", "memory": "1024Mi"}, "limits": {"memory": "1024Mi"}})
        );
        assert_eq!(body(&spec, "worker"), json!({"requests": {"cpu": "100m"}}));
    }

    /// Restricted by default; `--kube-pod-user 0` runs images as they say.
    #[test]
    fn pods_run_restricted_unless_the_pod_user_is_zero() {
        let spec = spec_of("services:\n  web:\n    image: nginx\n    port: 80\n");
        let web = &spec.manifest.services["web"];
        let d = deployment("prod", &spec, web, 60, None).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"],
            json!({"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000,
                   "seccompProfile": {"type": "RuntimeDefault"}})
        );
        assert_eq!(
            pod["containers"][0]["securityContext"],
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}})
        );
        assert_eq!(pod["automountServiceAccountToken"], json!(false));
        let d = deployment_as("prod", &spec, web, 60, None, 0).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"],
            json!({"seccompProfile": {"type": "RuntimeDefault"}})
        );
        assert_eq!(
            pod["containers"][0]["securityContext"],
            json!({"allowPrivilegeEscalation": false})
        );
        // Both shapes are valid core/v1.
        for user in [0, DEFAULT_POD_USER] {
            let d = deployment_as("prod", &spec, web, 60, None, user).unwrap();
            let _: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(d).unwrap();
        }
    }

    #[test]
    fn names_are_lower_case() {
        assert_eq!(secret_name("web", "RABCDEFGHIJ"), "web-env-rabcdefghij");
        assert_eq!(namespace_name("prod", "myapp"), "prod-myapp");
    }
}
