//! Reading a rollout's progress from what the API server reports, the way
//! `kubectl rollout status` does (the six steps of the reference), plus
//! fail-fast from pods (a container that cannot start, or that keeps
//! restarting) and from readiness-probe `Unhealthy` events. Pure functions
//! over typed objects, so each rule is tested on its own.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use slipway_domain::manifest::Service;

use super::objects::{FAILURE_THRESHOLD, LABEL_RELEASE};

/// Container waiting reasons that will not fix themselves.
pub(crate) const FATAL_WAITING: &[&str] = &[
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "InvalidImageName",
];

/// Where one service's Deployment is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DeploymentState {
    /// Still moving: `healthy` of `desired` updated replicas are available.
    Waiting {
        /// Available replicas of the new template.
        healthy: u32,
        /// `spec.replicas`.
        desired: u32,
    },
    /// Every replica runs the new template and is available; no old ones.
    Complete,
    /// The progress deadline passed (Kubernetes does nothing about it).
    DeadlineExceeded(String),
}

fn count(v: Option<i32>) -> u32 {
    u32::try_from(v.unwrap_or(0)).unwrap_or(0)
}

/// The state of a Deployment from its status, in the order `kubectl
/// rollout status` checks it.
pub(crate) fn deployment_state(d: &Deployment) -> DeploymentState {
    let desired = count(d.spec.as_ref().and_then(|s| s.replicas).or(Some(1)));
    let Some(status) = &d.status else {
        return DeploymentState::Waiting {
            healthy: 0,
            desired,
        };
    };
    // 1. The controller has not seen the current spec yet.
    let generation = d.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return DeploymentState::Waiting {
            healthy: 0,
            desired,
        };
    }
    // 2. The progress deadline passed.
    if let Some(cond) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return DeploymentState::DeadlineExceeded(cond.message.clone().unwrap_or_default());
    }
    let updated = count(status.updated_replicas);
    let replicas = count(status.replicas);
    let available = count(status.available_replicas);
    let healthy = available.min(updated);
    // 3. New replicas still being created; 4. old ones still terminating;
    // 5. new ones not yet available.
    if updated < desired || replicas > updated || available < updated {
        return DeploymentState::Waiting { healthy, desired };
    }
    // 6. Complete.
    DeploymentState::Complete
}

/// The release a Deployment's pod template runs.
pub(crate) fn template_release(d: &Deployment) -> Option<&str> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .labels
        .as_ref()?
        .get(LABEL_RELEASE)
        .map(String::as_str)
}

/// Converts an API time.
pub(crate) fn to_chrono(t: &Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(
        t.0.as_second(),
        u32::try_from(t.0.subsec_nanosecond()).ok()?,
    )
}

/// `exit code 1 (Error): <message>` from a container's last termination.
fn last_exit(status: &k8s_openapi::api::core::v1::ContainerStatus) -> String {
    let terminated = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| status.state.as_ref().and_then(|s| s.terminated.as_ref()));
    match terminated {
        Some(t) => {
            let mut text = format!("last exit code {}", t.exit_code);
            if let Some(reason) = t.reason.as_deref().filter(|r| !r.is_empty()) {
                text.push_str(&format!(" ({reason})"));
            }
            if let Some(message) = t
                .message
                .as_deref()
                .map(str::trim)
                .filter(|m| !m.is_empty())
            {
                text.push_str(&format!(", last output: {message}"));
            }
            text
        }
        None => "no exit recorded".to_owned(),
    }
}

/// Why the target's pods of `service` cannot become healthy, if that is
/// already certain: a container stuck in a fatal waiting state, or one
/// restarted more than `restart_limit` times.
pub(crate) fn pod_failure(service: &str, pods: &[&Pod], restart_limit: u32) -> Option<String> {
    for pod in pods {
        let name = pod.metadata.name.as_deref().unwrap_or("?");
        let statuses = pod.status.as_ref().map(|s| {
            let mut all = s.init_container_statuses.clone().unwrap_or_default();
            all.extend(s.container_statuses.clone().unwrap_or_default());
            all
        });
        for status in statuses.iter().flatten() {
            let waiting = status.state.as_ref().and_then(|s| s.waiting.as_ref());
            if let Some(reason) = waiting
                .and_then(|w| w.reason.as_deref())
                .filter(|r| FATAL_WAITING.contains(r))
            {
                let detail = if reason == "CrashLoopBackOff" {
                    format!(
                        "keeps exiting ({} restarts, {})",
                        status.restart_count,
                        last_exit(status)
                    )
                } else {
                    waiting
                        .and_then(|w| w.message.clone())
                        .unwrap_or_else(|| "cannot start".to_owned())
                };
                return Some(format!(
                    "service {service}: container {} of pod {name} is in {reason}: {detail}",
                    status.name
                ));
            }
            if count(Some(status.restart_count)) > restart_limit {
                return Some(format!(
                    "service {service}: container {} of pod {name} restarted {} times (limit {restart_limit}), {}: process exited",
                    status.name,
                    status.restart_count,
                    last_exit(status)
                ));
            }
        }
    }
    None
}

/// Readiness-probe failures seen for a pod (from `Unhealthy` events).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Unhealthy {
    /// Failures in total (the events' `count`s added up).
    pub(crate) failures: u32,
    /// The last probe message.
    pub(crate) message: String,
}

/// Why a target pod of `service` never passed its health check, if its
/// probe has kept failing past grace plus [`FAILURE_THRESHOLD`] intervals.
pub(crate) fn health_failure(
    svc: &Service,
    pods: &[&Pod],
    unhealthy: &BTreeMap<String, Unhealthy>,
    now: DateTime<Utc>,
) -> Option<String> {
    if svc.health.disabled || svc.port.is_none() {
        return None;
    }
    let allowed = i64::from(svc.health.grace_secs)
        + i64::from(FAILURE_THRESHOLD) * i64::from(svc.health.interval_secs);
    for pod in pods {
        let Some(name) = pod.metadata.name.as_deref() else {
            continue;
        };
        if is_ready(pod) {
            continue;
        }
        let Some(seen) = unhealthy.get(name) else {
            continue;
        };
        let started = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .and_then(to_chrono);
        let old_enough = started.is_some_and(|s| (now - s).num_seconds() >= allowed);
        if seen.failures >= FAILURE_THRESHOLD && old_enough {
            return Some(format!(
                "service {}: pod {name} failed its health check (GET {} on port {}) {} times after grace {}s and {} intervals of {}s: {}",
                svc.name,
                svc.health.path,
                svc.port.as_ref().map_or(0, |p| p.number),
                seen.failures,
                svc.health.grace_secs,
                FAILURE_THRESHOLD,
                svc.health.interval_secs,
                seen.message
            ));
        }
    }
    None
}

/// Whether a pod's `Ready` condition is true.
pub(crate) fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pods among `pods` that run `release`.
pub(crate) fn of_release<'a>(pods: &'a [Pod], release: &str) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_RELEASE))
                .is_some_and(|r| r == release)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": generation},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn progress_follows_the_six_steps() {
        let d = deployment(
            2,
            json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert_eq!(
            deployment_state(&d),
            DeploymentState::Waiting {
                healthy: 0,
                desired: 2
            }
        );
        let d = deployment(
            2,
            json!({"observedGeneration": 2, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "timed out"}]}),
        );
        assert_eq!(
            deployment_state(&d),
            DeploymentState::DeadlineExceeded("timed out".into())
        );
        let d = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 2}),
        );
        assert_eq!(
            deployment_state(&d),
            DeploymentState::Waiting {
                healthy: 1,
                desired: 2
            }
        );
        let d = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 3}),
        );
        assert_eq!(
            deployment_state(&d),
            DeploymentState::Waiting {
                healthy: 2,
                desired: 2
            }
        );
        let d = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
        );
        assert_eq!(
            deployment_state(&d),
            DeploymentState::Waiting {
                healthy: 1,
                desired: 2
            }
        );
        let d = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert_eq!(deployment_state(&d), DeploymentState::Complete);
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
        let reason = pod_failure("web", &[&pod], 3).unwrap();
        assert!(
            reason.contains("service web")
                && reason.contains("CrashLoopBackOff")
                && reason.contains("exit code 1"),
            "{reason}"
        );
        assert!(pod_failure("web", &[&pod], 1).is_some());
    }
}
