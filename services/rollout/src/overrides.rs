//! What a spec carries beside its release: the scale set by hand per
//! service (`convox scale`), which wins over the manifest's `scale.count`,
//! and when each service was last restarted, so a runtime replaces the
//! processes started before that (a rolling restart). Pure types: the
//! records are in `scale.rs`, the runtimes read [`Spec::count`] and
//! [`Spec::restarted_since`].
//!
//! The rule a promotion follows: a release's `scale.count` applies to a
//! service that is new or was never scaled by hand; once `scale` set a
//! count, every later rollout of the app (promotions, rollbacks, restarts)
//! runs that count until it is set again. cpu and memory set by hand are
//! kept the same way, field by field: a service's processes get the cpu
//! and memory set by hand where `scale` set one, else the manifest's
//! `scale.cpu`/`scale.memory` of the release they run ([`Spec::resources`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::Spec;

/// Per service, what the release alone does not say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    /// Scale set by hand, by service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scale: BTreeMap<String, ServiceScale>,
    /// When a restart of the service was asked for: its processes started
    /// before are replaced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restarted: BTreeMap<String, DateTime<Utc>>,
}

impl Overrides {
    /// Whether there is nothing to override.
    pub fn is_empty(&self) -> bool {
        self.scale.is_empty() && self.restarted.is_empty()
    }
}

/// One service's scale as set by hand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceScale {
    /// Processes; `None` keeps the manifest's count.
    #[serde(default)]
    pub count: Option<u32>,
    /// Millicores; 0 is unset.
    #[serde(default)]
    pub cpu: u32,
    /// MiB; 0 is unset.
    #[serde(default)]
    pub memory: u32,
}

impl Spec {
    /// The desired processes of `service`: the count set by hand, else the
    /// manifest's (0 for a service the manifest does not have).
    pub fn count(&self, service: &str) -> u32 {
        let manifest = self.manifest.service(service).map_or(0, |s| s.scale.count);
        self.overrides
            .scale
            .get(service)
            .and_then(|s| s.count)
            .unwrap_or(manifest)
    }

    /// cpu (millicores) and memory (MiB) of each process of `service`,
    /// field by field: the value set by hand, else the manifest's
    /// `scale.cpu`/`scale.memory`; 0 when neither sets one. A value set by
    /// hand to 0 (`scale --cpu 0`) clears the hand-set value, so the
    /// manifest's applies again.
    pub fn resources(&self, service: &str) -> (u32, u32) {
        let manifest = self.manifest.service(service).map(|s| s.scale);
        let hand = self.overrides.scale.get(service);
        let pick = |hand: Option<u32>, manifest: Option<u32>| {
            hand.filter(|v| *v > 0).or(manifest).unwrap_or(0)
        };
        (
            pick(hand.map(|s| s.cpu), manifest.and_then(|m| m.cpu)),
            pick(hand.map(|s| s.memory), manifest.and_then(|m| m.memory)),
        )
    }

    /// Whether a process of `service` started at `started` predates the
    /// service's last restart (and so is replaced like an old release's).
    pub fn restarted_since(&self, service: &str, started: DateTime<Utc>) -> bool {
        self.overrides
            .restarted
            .get(service)
            .is_some_and(|at| started < *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_round_trip_and_stay_out_of_plain_specs() {
        let mut o = Overrides::default();
        assert_eq!(serde_json::to_string(&o).unwrap(), "{}");
        o.scale.insert(
            "web".into(),
            ServiceScale {
                count: Some(3),
                cpu: 0,
                memory: 512,
            },
        );
        o.restarted.insert("web".into(), DateTime::UNIX_EPOCH);
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<Overrides>(&json).unwrap(), o);
    }

    /// What the local runtime stores (`local_apps`, the rollout rows) and
    /// re-adopts from after a restart keeps the scale set by hand.
    #[test]
    fn a_stored_spec_keeps_its_overrides() {
        let record = crate::model::SpecRecord {
            app: "shop".into(),
            release: "RAAAAAAAAAA".into(),
            build: String::new(),
            manifest: "services:\n  web:\n    command: sleep 1\n    scale:\n      count: 2\n"
                .into(),
            env: Default::default(),
            artifacts: Default::default(),
        };
        let mut spec = Spec::from_record(record).unwrap();
        assert_eq!(spec.count("web"), 2, "the manifest's");
        assert!(
            !spec.to_json().contains("overrides"),
            "plain specs store as before"
        );
        spec.overrides.scale.insert(
            "web".into(),
            ServiceScale {
                count: Some(5),
                cpu: 250,
                memory: 0,
            },
        );
        let at = DateTime::UNIX_EPOCH + chrono::Duration::seconds(10);
        spec.overrides.restarted.insert("web".into(), at);
        let back = Spec::from_json(&spec.to_json()).unwrap();
        assert_eq!(back.overrides, spec.overrides);
        assert_eq!(back.count("web"), 5);
        assert_eq!(back.resources("web"), (250, 0));
        assert!(back.restarted_since("web", DateTime::UNIX_EPOCH));
        assert!(!back.restarted_since("web", at));
        assert_eq!(back.count("nosuch"), 0);
    }

    /// cpu and memory: set by hand wins, field by field, over the
    /// manifest's; a hand-set 0 gives the manifest's back.
    #[test]
    fn resources_set_by_hand_win_over_the_manifest_field_by_field() {
        let record = crate::model::SpecRecord {
            app: "shop".into(),
            release: "RAAAAAAAAAA".into(),
            build: String::new(),
            manifest: "services:\n  web:\n    command: sleep 1\n    scale:\n      cpu: 250\n      memory: 512\n  worker:\n    command: sleep 1\n".into(),
            env: Default::default(),
            artifacts: Default::default(),
        };
        let mut spec = Spec::from_record(record).unwrap();
        assert_eq!(spec.resources("web"), (250, 512), "the manifest's");
        assert_eq!(spec.resources("worker"), (0, 0), "none");
        let hand = |cpu, memory| ServiceScale {
            count: None,
            cpu,
            memory,
        };
        spec.overrides.scale.insert("web".into(), hand(0, 1024));
        assert_eq!(spec.resources("web"), (250, 1024));
        spec.overrides.scale.insert("web".into(), hand(100, 0));
        assert_eq!(spec.resources("web"), (100, 512));
        spec.overrides.scale.insert("worker".into(), hand(0, 64));
        assert_eq!(spec.resources("worker"), (0, 64));
    }
}
