//! The rollout service's domain types: a rollout's phase machine, the
//! rollout record, and the spec a runtime runs (a release's manifest, env
//! and artifacts, parsed and validated once at the RPC edge).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_domain::{AppName, Env, Manifest, PromotionId, ReleaseId};

/// Where a rollout is. `Running`, `Reverted` and `Failure` are terminal.
///
/// ```text
/// Pending -> Updating -> Running
///            Updating -(deadline | failure | cancel)-> Reverting -> Reverted | Failure
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Recorded, nothing touched yet.
    Pending,
    /// The runtime is moving the app to the target release.
    Updating,
    /// The target release runs healthy everywhere (succeeded).
    Running,
    /// The target failed; returning to the fallback (or stopping the target
    /// on a first deploy).
    Reverting,
    /// The fallback runs again (rolled back).
    Reverted,
    /// Neither the target nor the fallback runs healthy (failed).
    Failure,
    /// Cancelled before anything of the target started (during its release
    /// command); what ran before runs on, untouched.
    Cancelled,
}

impl Phase {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Updating => "updating",
            Self::Running => "running",
            Self::Reverting => "reverting",
            Self::Reverted => "reverted",
            Self::Failure => "failure",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "updating" => Self::Updating,
            "running" => Self::Running,
            "reverting" => Self::Reverting,
            "reverted" => Self::Reverted,
            "failure" => Self::Failure,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Whether the rollout is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Running | Self::Reverted | Self::Failure | Self::Cancelled
        )
    }
}

/// The Convox-style name used in `Status: Old => New` events.
impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "Pending",
            Self::Updating => "Updating",
            Self::Running => "Running",
            Self::Reverting => "Reverting",
            Self::Reverted => "Reverted",
            Self::Failure => "Failure",
            Self::Cancelled => "Cancelled",
        })
    }
}

/// A rollout as stored.
#[derive(Clone, Debug)]
pub struct Rollout {
    /// The promotion id.
    pub id: PromotionId,
    /// The app.
    pub app: AppName,
    /// The release being rolled out.
    pub release: ReleaseId,
    /// The release to return to; `None` on an app's first deploy.
    pub fallback_release: Option<ReleaseId>,
    /// The current phase.
    pub phase: Phase,
    /// Why it failed or was reverted; empty otherwise.
    pub reason: String,
    /// Deadline given at start, in seconds.
    pub deadline_secs: u32,
    /// Deadline of the current phase.
    pub deadline_at: DateTime<Utc>,
    /// Fencing epoch of the current lease.
    pub epoch: u64,
    /// Whether someone asked to cancel it.
    pub cancel_requested: bool,
    /// Whether the release service acknowledged the outcome.
    pub reported: bool,
    /// When it was started.
    pub created: DateTime<Utc>,
    /// When it reached a terminal phase.
    pub finished: Option<DateTime<Utc>>,
}

/// A rollout with the specs it carries (what a driver needs).
#[derive(Clone, Debug)]
pub struct RolloutPlan {
    /// The rollout record.
    pub rollout: Rollout,
    /// What to run.
    pub target: Arc<Spec>,
    /// What to return to, if anything.
    pub fallback: Option<Arc<Spec>>,
}

/// Everything a runtime needs to run one release of an app.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The app (a valid app name: checked by [`Spec::from_record`]).
    pub app: String,
    /// The release id (a valid one, upper case: checked by [`Spec::from_record`]).
    pub release: String,
    /// The build id (may be empty).
    pub build: String,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The release env (decrypted; never logged: `Env`'s Debug hides values).
    pub env: Env,
    /// Artifact per service: a `file://` URL or path of a directory (local
    /// runtime) or an image reference (Kubernetes).
    pub artifacts: BTreeMap<String, String>,
    /// Scale set by hand and restarts (see `overrides.rs`); kept in the
    /// stored JSON beside the record, not on the wire.
    pub overrides: crate::overrides::Overrides,
}

/// Why a spec was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A required field is empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// The app name is not one.
    #[error("app: {0}")]
    App(#[from] slipway_domain::AppNameError),
    /// The release id is not one.
    #[error("release: {0}")]
    Release(#[from] slipway_domain::IdError),
    /// The manifest does not parse.
    #[error("manifest: {0}")]
    Manifest(#[from] slipway_domain::ManifestError),
    /// The env has an invalid key.
    #[error("env: {0}")]
    Env(#[from] slipway_domain::EnvError),
    /// A service requires a variable the release does not set.
    #[error("{0}")]
    MissingEnv(String),
    /// Stored JSON is unreadable.
    #[error("stored spec: {0}")]
    Json(#[from] serde_json::Error),
}

/// The stored (and wire) form of a spec: the manifest as text.
#[derive(Clone, Serialize, Deserialize)]
pub struct SpecRecord {
    /// The app.
    pub app: String,
    /// The release id.
    pub release: String,
    /// The build id.
    #[serde(default)]
    pub build: String,
    /// convox.yml text.
    pub manifest: String,
    /// The release env.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Artifact per service.
    #[serde(default)]
    pub artifacts: BTreeMap<String, String>,
}

// Env values never reach logs: Debug shows the keys only.
impl fmt::Debug for SpecRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpecRecord")
            .field("app", &self.app)
            .field("release", &self.release)
            .field("build", &self.build)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("artifacts", &self.artifacts)
            .finish_non_exhaustive()
    }
}

/// The database's form of a spec: the record, and beside it what was
/// set by hand (absent when nothing was, so older rows read unchanged).
#[derive(Serialize, Deserialize)]
struct StoredSpec {
    #[serde(flatten)]
    record: SpecRecord,
    #[serde(default, skip_serializing_if = "crate::overrides::Overrides::is_empty")]
    overrides: crate::overrides::Overrides,
}

impl Spec {
    /// Validates a record: names present, manifest parses, required env set.
    pub fn from_record(record: SpecRecord) -> Result<Self, SpecError> {
        if record.app.is_empty() {
            return Err(SpecError::Missing("app"));
        }
        if record.release.is_empty() {
            return Err(SpecError::Missing("release"));
        }
        let app = AppName::parse(&record.app)?;
        let release = ReleaseId::parse(&record.release)?;
        let manifest = Manifest::parse(&record.manifest)?;
        let env = Env::from_map(record.env)?;
        if let Some(missing) = manifest.missing_env(&env).first() {
            return Err(SpecError::MissingEnv(missing.to_string()));
        }
        Ok(Self {
            app: app.into_string(),
            release: release.into_string(),
            build: record.build,
            manifest,
            env,
            artifacts: record.artifacts,
            overrides: Default::default(),
        })
    }

    /// The stored form.
    pub fn to_record(&self) -> SpecRecord {
        SpecRecord {
            app: self.app.clone(),
            release: self.release.clone(),
            build: self.build.clone(),
            manifest: self.manifest.source().to_owned(),
            env: self.env.as_map().clone(),
            artifacts: self.artifacts.clone(),
        }
    }

    /// JSON for the database: the record and the overrides.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&StoredSpec {
            record: self.to_record(),
            overrides: self.overrides.clone(),
        })
        .expect("a spec record always serialises")
    }

    /// Reads the database's JSON.
    pub fn from_json(json: &str) -> Result<Self, SpecError> {
        let stored: StoredSpec = serde_json::from_str(json)?;
        let mut spec = Self::from_record(stored.record)?;
        spec.overrides = stored.overrides;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_and_know_when_they_end() {
        for phase in [
            Phase::Pending,
            Phase::Updating,
            Phase::Running,
            Phase::Reverting,
            Phase::Reverted,
            Phase::Failure,
        ] {
            assert_eq!(Phase::parse(phase.as_str()), Some(phase));
        }
        assert!(Phase::Reverted.is_terminal() && !Phase::Reverting.is_terminal());
        assert_eq!(Phase::Updating.to_string(), "Updating");
    }

    #[test]
    fn specs_round_trip_through_json_and_check_env() {
        let record = SpecRecord {
            app: "myapp".into(),
            release: "RABCDEFGHIJ".into(),
            build: String::new(),
            manifest: "services:\n  web:\n    command: ./run\n    environment:\n      - TOKEN\n"
                .into(),
            env: BTreeMap::from([("TOKEN".into(), "t".into())]),
            artifacts: BTreeMap::new(),
        };
        let spec = Spec::from_record(record.clone()).unwrap();
        let again = Spec::from_json(&spec.to_json()).unwrap();
        assert_eq!(again.env.get("TOKEN"), Some("t"));
        let mut missing = record;
        missing.env.clear();
        let err = Spec::from_record(missing).unwrap_err().to_string();
        assert!(err.contains("TOKEN") && err.contains("web"), "{err}");
    }
}
