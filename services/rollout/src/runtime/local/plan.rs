//! The planner: what the reconcile loop does next, as a function of an
//! app's state and the clock. It starts processes of the desired release
//! and stops old ones within the service's `deployment.minimum`/`maximum`
//! (percent of `scale.count` that must stay healthy / may run at once),
//! holds starts back after unexpected exits, and says when a rollout is
//! complete. No IO: the only effect is marking the processes it stops as
//! stopping, so the unit tests below need neither processes nor a database.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::process::{Proc, Status};
use super::state::{Action, AppState};
use crate::runtime::ServiceProgress;

/// How long the reconcile loop sleeps at most when nothing wakes it.
const IDLE_WAKE: Duration = Duration::from_millis(500);

/// How long starts of a service wait after its `restarts`-th unexpected exit
/// in a row: 100 ms, doubling, at most 10 s.
pub(super) fn backoff(restarts: u32) -> Duration {
    Duration::from_millis(100u64 << restarts.saturating_sub(1).min(7)).min(Duration::from_secs(10))
}

/// For `desired` processes and the deployment's `minimum`/`maximum`
/// percentages: how many must stay healthy, and how many may run at once.
/// When neither would let a rollout move (100/100), one extra may run.
pub(super) fn bounds(desired: u32, minimum: u32, maximum: u32) -> (u32, u32) {
    let min_healthy = (desired * minimum).div_ceil(100);
    let mut max_total = desired + (desired * maximum.saturating_sub(100)).div_ceil(100);
    if max_total == desired && min_healthy >= desired {
        max_total += 1;
    }
    (min_healthy, max_total)
}

/// Decides what to start and stop now; returns the actions and when to
/// look again at the latest. Settles a target that became complete.
pub(super) fn plan(st: &mut AppState, now: Instant) -> (Vec<Action>, Duration) {
    let mut actions = Vec::new();
    let mut wake = IDLE_WAKE;
    let complete = st.target.as_ref().is_some_and(|t| !t.settled) && completeness(st).0;
    if complete && let Some(target) = st.target.as_mut() {
        target.settled = true;
    }
    let AppState {
        target, services, ..
    } = st;
    let mut names: BTreeSet<String> = services.keys().cloned().collect();
    if let Some(t) = target.as_ref() {
        names.extend(t.spec.manifest.services.keys().cloned());
    }
    for name in names {
        let svc = services.entry(name.clone()).or_default();
        let service = target
            .as_ref()
            .and_then(|t| t.spec.manifest.service(&name).map(|s| (t, s)));
        let desired = service.map_or(0, |(t, _)| t.spec.count(&name));
        let release = target.as_ref().map(|t| t.spec.release.as_str());
        // Processes started before the service's restart go like old ones.
        let restarted = |p: &Arc<Proc>| {
            target
                .as_ref()
                .is_some_and(|t| t.spec.restarted_since(&name, p.started))
        };
        let failed = target.as_ref().is_some_and(|t| t.failed.is_some());
        let live: Vec<Arc<Proc>> = svc
            .procs
            .iter()
            .filter(|p| p.status() != Status::Stopping)
            .cloned()
            .collect();
        let (new, mut old): (Vec<_>, Vec<_>) = live
            .iter()
            .cloned()
            .partition(|p| Some(p.release.as_str()) == release && !restarted(p));
        let healthy = |p: &Arc<Proc>| p.status() == Status::Healthy;
        let (minimum, maximum) = service.map_or((100, 200), |(_, s)| {
            (s.deployment.minimum, s.deployment.maximum)
        });
        let (min_healthy, max_total) = bounds(desired, minimum, maximum);
        let grace =
            Duration::from_secs(service.map_or(30, |(_, s)| u64::from(s.termination_grace_secs)));

        // Start processes of the desired release.
        if let Some((t, _)) = service {
            let backed_off = svc.next_start.is_some_and(|at| at > now);
            if let Some(at) = svc.next_start.filter(|at| *at > now) {
                wake = wake.min(at - now);
            }
            if !failed && !backed_off {
                let mut total = live.len() as u32;
                let mut count = new.len() as u32;
                while count < desired && total < max_total {
                    actions.push(Action::Start {
                        service: name.clone(),
                        spec: t.spec.clone(),
                    });
                    count += 1;
                    total += 1;
                }
            }
        }
        let stop = |p: &Arc<Proc>, actions: &mut Vec<Action>| {
            p.lock().status = Status::Stopping;
            actions.push(Action::Stop {
                proc: p.clone(),
                grace,
            });
        };
        // Scale down extra processes of the desired release.
        if new.len() as u32 > desired {
            let mut extra: Vec<_> = new.clone();
            extra.sort_by_key(|p| healthy(p));
            for p in extra.iter().take(new.len() - desired as usize) {
                stop(p, &mut actions);
            }
        }
        // Stop old processes while enough stay healthy; unhealthy ones
        // always go. While the target is failing, keep the old ones.
        if !failed {
            let mut available = live.iter().filter(|p| healthy(p)).count() as u32;
            old.sort_by_key(|p| healthy(p));
            for p in &old {
                if !healthy(p) {
                    stop(p, &mut actions);
                } else if available > min_healthy
                    || (desired == 0 && target.is_some())
                    || target.is_none()
                {
                    available = available.saturating_sub(1);
                    stop(p, &mut actions);
                }
            }
        }
        if actions.iter().any(|a| matches!(a, Action::Stop { .. })) {
            svc.refresh();
        }
    }
    (actions, wake)
}

/// Whether the target runs everywhere, healthy, with nothing else left;
/// and the healthy count per target service.
pub(super) fn completeness(st: &AppState) -> (bool, Vec<ServiceProgress>) {
    let Some(target) = &st.target else {
        return (false, Vec::new());
    };
    let mut complete = true;
    let mut progress = Vec::new();
    for (name, service) in &target.spec.manifest.services {
        let procs = st
            .services
            .get(name)
            .map(|s| s.procs.as_slice())
            .unwrap_or_default();
        let healthy = procs
            .iter()
            .filter(|p| {
                p.release == target.spec.release
                    && p.status() == Status::Healthy
                    && !target.spec.restarted_since(name, p.started)
            })
            .count() as u32;
        let desired = target.spec.count(name);
        if healthy != desired || procs.len() as u32 != desired {
            complete = false;
        }
        if service.port.is_some()
            && desired > 0
            && st.services.get(name).is_none_or(|s| s.proxy.is_none())
        {
            complete = false;
        }
        progress.push(ServiceProgress {
            service: name.clone(),
            healthy,
            desired,
        });
    }
    for (name, svc) in &st.services {
        if !target.spec.manifest.services.contains_key(name) && !svc.procs.is_empty() {
            complete = false;
        }
    }
    (complete, progress)
}

#[cfg(test)]
mod tests;
