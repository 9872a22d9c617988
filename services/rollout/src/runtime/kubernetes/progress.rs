//! Reading a rollout's progress from what the API server reports, the way
//! `kubectl rollout status` does (the six steps of the reference), plus
//! fail-fast from pods (a container that cannot start, or that keeps
//! restarting) and from readiness-probe `Unhealthy` events. Pure functions
//! over typed objects, so each rule is tested on its own.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use slipway_domain::manifest::Service;

use super::objects::{FAILURE_THRESHOLD, LABEL_RELEASE, LABEL_SERVICE};

/// Container waiting reasons that will not fix themselves. `ErrImagePull`
/// is only fatal when the registry says the image is not there or not
/// allowed (see [`fatal_waiting`]): a first pull can fail on a 429 or a 5xx.
pub(crate) const FATAL_WAITING: &[&str] = &[
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "InvalidImageName",
];

/// How long pods may stay uncreated (`ReplicaFailure`: quota, Pod Security,
/// an admission webhook) or unschedulable before the rollout fails: long
/// enough for a quota freed by the surge's own old pods, or a node that is
/// just joining, short of waiting out the whole deadline.
pub(crate) const STUCK_GRACE_SECS: i64 = 30;

/// Whether a container waiting with `reason` and `message` will not get
/// better by itself.
pub(crate) fn fatal_waiting(reason: &str, message: Option<&str>) -> bool {
    if reason == "ErrImagePull" {
        let m = message.unwrap_or_default().to_ascii_lowercase();
        return [
            "not found",
            "unauthorized",
            "denied",
            "forbidden",
            "manifest unknown",
        ]
        .iter()
        .any(|s| m.contains(s));
    }
    FATAL_WAITING.contains(&reason)
}

/// Where one service's Deployment is, by `kubectl rollout status`'s rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DeploymentState {
    /// Still moving.
    Waiting,
    /// Every replica runs the new template and is available, and the
    /// controller counts no old ones (terminating pods are not counted:
    /// the caller checks the pods too).
    Complete,
    /// The progress deadline passed during this rollout (Kubernetes does
    /// nothing about it).
    DeadlineExceeded(String),
}

fn count(v: Option<i32>) -> u32 {
    u32::try_from(v.unwrap_or(0)).unwrap_or(0)
}

/// When Slipway's last apply changed the Deployment: the `time` of its
/// `managedFields` entry, on the API server's clock (a no-op re-apply, such
/// as a takeover's, leaves it alone).
pub(crate) fn applied_at(d: &Deployment) -> Option<DateTime<Utc>> {
    d.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(super::FIELD_MANAGER))
        .filter(|m| m.operation.as_deref() == Some("Apply"))
        .filter_map(|m| m.time.as_ref().and_then(to_chrono))
        .max()
}

/// Whether a `ProgressDeadlineExceeded` condition belongs to the rollout
/// that last applied. The controller keeps the condition, timestamps and
/// all, when a Deployment is re-targeted at a template whose ReplicaSet
/// still exists (a rollback) until it sees progress, and a condition
/// written at once from a stale `lastUpdateTime` is no more this
/// rollout's. A timeout of this rollout comes at least
/// `progressDeadlineSeconds` after the apply, since progress is measured
/// from no earlier than the apply. Without the apply's time (a server that
/// does not report managed fields) or the condition's, the condition counts.
fn deadline_is_current(d: &Deployment, updated: Option<&Time>) -> bool {
    let (Some(applied), Some(updated)) = (applied_at(d), updated.and_then(to_chrono)) else {
        return true;
    };
    let deadline = d
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(600);
    updated >= applied + chrono::Duration::seconds(i64::from(deadline))
}

/// The state of a Deployment from its status, in the order `kubectl
/// rollout status` checks it, ignoring a deadline left over from an
/// earlier rollout.
pub(crate) fn deployment_state(d: &Deployment) -> DeploymentState {
    let desired = count(d.spec.as_ref().and_then(|s| s.replicas).or(Some(1)));
    let Some(status) = &d.status else {
        return DeploymentState::Waiting;
    };
    // 1. The controller has not seen the current spec yet.
    let generation = d.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return DeploymentState::Waiting;
    }
    // 2. The progress deadline passed, in this rollout.
    if let Some(cond) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) && deadline_is_current(d, cond.last_update_time.as_ref())
    {
        return DeploymentState::DeadlineExceeded(cond.message.clone().unwrap_or_default());
    }
    let updated = count(status.updated_replicas);
    let replicas = count(status.replicas);
    let available = count(status.available_replicas);
    // 3. New replicas still being created; 4. old ones still terminating;
    // 5. new ones not yet available.
    if updated < desired || replicas > updated || available < updated {
        return DeploymentState::Waiting;
    }
    // 6. Complete.
    DeploymentState::Complete
}

/// Why a Deployment cannot make progress at all, if it is certain: paused
/// (`kubectl rollout pause`; apply does not own `spec.paused`), or its
/// pods are not being created (`ReplicaFailure`, copied from the
/// ReplicaSet: quota, Pod Security, a webhook) or not scheduled, for
/// longer than [`STUCK_GRACE_SECS`].
pub(crate) fn blocked(
    service: &str,
    d: &Deployment,
    own: &[&Pod],
    now: DateTime<Utc>,
) -> Option<String> {
    let ns = d.metadata.namespace.as_deref().unwrap_or("?");
    if d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
        return Some(format!(
            "service {service}: its Deployment is paused, so nothing rolls (kubectl -n {ns} rollout resume deployment/{service})"
        ));
    }
    let stuck = |since: Option<&Time>| {
        since
            .and_then(to_chrono)
            .is_none_or(|t| (now - t).num_seconds() >= STUCK_GRACE_SECS)
    };
    let conditions = d.status.as_ref().and_then(|s| s.conditions.as_ref());
    if let Some(c) = conditions.into_iter().flatten().find(|c| {
        c.type_ == "ReplicaFailure" && c.status == "True" && stuck(c.last_transition_time.as_ref())
    }) {
        return Some(format!(
            "service {service}: pods cannot be created ({}: {})",
            c.reason.as_deref().unwrap_or("ReplicaFailure"),
            c.message.as_deref().unwrap_or("no message").trim()
        ));
    }
    for pod in own {
        let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        if let Some(c) = conditions.into_iter().flatten().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && stuck(c.last_transition_time.as_ref())
        }) {
            return Some(format!(
                "service {service}: pod {} cannot be scheduled: {}",
                pod.metadata.name.as_deref().unwrap_or("?"),
                c.message.as_deref().unwrap_or("no message").trim()
            ));
        }
    }
    None
}

/// What a rollout's fail-fast signals are measured against: counters
/// taken when it applied, so that only what this rollout caused counts
/// (a rollback onto surviving pods must not fail on their lifetime
/// restarts or on probe failures from before), and the pods seen Ready
/// since (a pod that was healthy and blips is not "never healthy").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Baseline {
    /// `restartCount` per (pod uid, container) at the apply.
    pub(crate) restarts: BTreeMap<(String, String), i32>,
    /// Readiness-probe failures per pod at the apply.
    pub(crate) unhealthy: BTreeMap<String, u32>,
    /// Target pods seen Ready during this rollout.
    pub(crate) seen_ready: BTreeSet<String>,
}

impl Baseline {
    /// The counters of `pods` and `unhealthy` now.
    pub(crate) fn take(pods: &[Pod], unhealthy: &BTreeMap<String, Unhealthy>) -> Self {
        let mut restarts = BTreeMap::new();
        for pod in pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            for status in container_statuses(pod) {
                restarts.insert((uid.clone(), status.name.clone()), status.restart_count);
            }
        }
        Self {
            restarts,
            unhealthy: unhealthy
                .iter()
                .map(|(pod, u)| (pod.clone(), u.failures))
                .collect(),
            seen_ready: BTreeSet::new(),
        }
    }

    /// Notes which of `pods` are Ready now.
    pub(crate) fn observe(&mut self, pods: &[&Pod]) {
        for pod in pods.iter().filter(|p| is_ready(p)) {
            if let Some(name) = &pod.metadata.name {
                self.seen_ready.insert(name.clone());
            }
        }
    }

    fn restarts_since(&self, pod: &Pod, status: &ContainerStatus) -> i32 {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let before = self
            .restarts
            .get(&(uid, status.name.clone()))
            .copied()
            .unwrap_or(0);
        (status.restart_count - before).max(0)
    }
}

/// Init containers' statuses, then the containers'.
fn container_statuses(pod: &Pod) -> Vec<ContainerStatus> {
    pod.status
        .as_ref()
        .map(|s| {
            let mut all = s.init_container_statuses.clone().unwrap_or_default();
            all.extend(s.container_statuses.clone().unwrap_or_default());
            all
        })
        .unwrap_or_default()
}

/// Ready pods among `own` (the target release's), not terminating: the
/// healthy count reasons show.
pub(crate) fn healthy(own: &[&Pod]) -> u32 {
    let n = own
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
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
fn last_exit(status: &ContainerStatus) -> String {
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
/// restarted more than `restart_limit` times since the rollout applied.
pub(crate) fn pod_failure(
    service: &str,
    pods: &[&Pod],
    restart_limit: u32,
    baseline: &Baseline,
) -> Option<String> {
    for pod in pods {
        let name = pod.metadata.name.as_deref().unwrap_or("?");
        for status in &container_statuses(pod) {
            let waiting = status.state.as_ref().and_then(|s| s.waiting.as_ref());
            if let Some(reason) = waiting
                .and_then(|w| w.reason.as_deref())
                .filter(|r| fatal_waiting(r, waiting.and_then(|w| w.message.as_deref())))
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
            let restarts = baseline.restarts_since(pod, status);
            if count(Some(restarts)) > restart_limit {
                return Some(format!(
                    "service {service}: container {} of pod {name} restarted {restarts} times during this rollout (limit {restart_limit}), {}: process exited",
                    status.name,
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
    baseline: &Baseline,
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
        // "Never healthy": a pod that was Ready during this rollout and
        // blips under load is the service's business, not a failed rollout.
        if is_ready(pod) || baseline.seen_ready.contains(name) {
            continue;
        }
        let Some(seen) = unhealthy.get(name) else {
            continue;
        };
        let failures = seen
            .failures
            .saturating_sub(baseline.unhealthy.get(name).copied().unwrap_or(0));
        let started = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .and_then(to_chrono);
        let old_enough = started.is_some_and(|s| (now - s).num_seconds() >= allowed);
        if failures >= FAILURE_THRESHOLD && old_enough {
            return Some(format!(
                "service {}: pod {name} failed its health check (GET {} on port {}) {} times after grace {}s and {} intervals of {}s: {}",
                svc.name,
                svc.health.path,
                svc.port.as_ref().map_or(0, |p| p.number),
                failures,
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

/// A label of a pod.
fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// The pods among `pods` that run `release`.
pub(crate) fn of_release<'a>(pods: &[&'a Pod], release: &str) -> Vec<&'a Pod> {
    pods.iter()
        .copied()
        .filter(|p| label(p, LABEL_RELEASE) == Some(release))
        .collect()
}

/// The pods among `pods` of `service`.
pub(crate) fn of_service<'a>(pods: &'a [Pod], service: &str) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| label(p, LABEL_SERVICE) == Some(service))
        .collect()
}

/// How one service stands in a rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ServiceRead {
    /// Done: the release runs at scale, healthy, and no pod of another
    /// release is left, terminating ones included.
    Done,
    /// Still moving: `healthy` Ready pods of the release, of `desired`.
    Waiting {
        /// Ready, not terminating, pods of the target release.
        healthy: u32,
        /// The scale count.
        desired: u32,
    },
    /// Cannot become healthy; why.
    Failed(String),
}

/// What one service's reading needs besides its Deployment and pods.
pub(crate) struct ReadContext<'a> {
    /// The target release.
    pub(crate) release: &'a str,
    /// Container restarts during the rollout that fail it.
    pub(crate) restart_limit: u32,
    /// Readiness-probe failures per pod, from events.
    pub(crate) unhealthy: &'a BTreeMap<String, Unhealthy>,
    /// Counters at the apply (updated with the pods seen Ready).
    pub(crate) baseline: &'a Baseline,
    /// Now.
    pub(crate) now: DateTime<Utc>,
}

/// Reads one service: its Deployment by `kubectl rollout status`'s rules,
/// then the pods (`pods`: every pod of the service, of every release).
/// `Complete` from the Deployment is not enough: `status.replicas` does
/// not count terminating pods, so old ones may still be shutting down.
pub(crate) fn read_service(
    svc: &Service,
    desired: u32,
    d: &Deployment,
    pods: &[&Pod],
    cx: &ReadContext<'_>,
) -> ServiceRead {
    let own = of_release(pods, cx.release);
    let others = pods.len() - own.len();
    let state = deployment_state(d);
    if state == DeploymentState::Complete && others == 0 {
        return ServiceRead::Done;
    }
    let failure = pod_failure(&svc.name, &own, cx.restart_limit, cx.baseline)
        .or_else(|| health_failure(svc, &own, cx.unhealthy, cx.baseline, cx.now))
        .or_else(|| blocked(&svc.name, d, &own, cx.now));
    if let Some(reason) = failure {
        return ServiceRead::Failed(reason);
    }
    let healthy = healthy(&own).min(desired);
    if let DeploymentState::DeadlineExceeded(message) = state {
        return ServiceRead::Failed(format!(
            "service {}: deadline exceeded with {healthy}/{desired} healthy ({message})",
            svc.name
        ));
    }
    ServiceRead::Waiting { healthy, desired }
}

#[cfg(test)]
mod tests;
