//! The release service's records (apps, releases, promotions, audit events)
//! and the one piece of ledger logic both storage backends share: how a new
//! release is forked from an existing one (Convox's `ReleaseCreate`).

use chrono::{DateTime, Utc};
use slipway_domain::env::MAX_ENV_BYTES;
use slipway_domain::manifest::MAX_MANIFEST_BYTES;
use slipway_domain::{AppName, BuildId, Env, EnvDiff, PromotionId, PromotionState, ReleaseId};
use slipway_rpc::{MAX_MESSAGE_BYTES, PAGE_BYTES};
use std::collections::BTreeMap;

use crate::error::Error;

/// Largest release the ledger appends, as [`release_bytes`] counts it: 1.5 MiB.
///
/// A release travels whole in one gRPC message (`GetRelease`, a list page) and
/// twice in one (`StartRollout` carries the target and the fallback), so two
/// must fit in [`MAX_MESSAGE_BYTES`]; a largest env and a largest manifest fit
/// in one with room for artifacts and descriptions.
pub const MAX_RELEASE_BYTES: usize = 1536 * 1024;

/// Room for a release's small fields (ids, app name, actor, times) and the
/// message framing, counted once per release.
const FIXED_BYTES: usize = 1024;
/// Room for the framing of one env or artifact map entry (tag and lengths),
/// beyond `KEY=VALUE` and its NUL.
const ENTRY_BYTES: usize = 16;

const _: () = assert!(MAX_ENV_BYTES + MAX_MANIFEST_BYTES + (256 << 10) <= MAX_RELEASE_BYTES);
const _: () = assert!(2 * MAX_RELEASE_BYTES + (64 << 10) <= MAX_MESSAGE_BYTES);
const _: () = assert!(MAX_RELEASE_BYTES <= PAGE_BYTES);

/// An upper bound of a release's size in any of its wire forms (the ledger's
/// `Release` with the env as text, the rollout's `ReleaseSpec` with the env as
/// a map): the bytes of its fields plus framing allowances.
pub fn release_bytes(
    env: &Env,
    manifest: &str,
    artifacts: &BTreeMap<String, String>,
    descriptions: &[&str],
) -> usize {
    FIXED_BYTES
        + env.bytes()
        + env.len() * ENTRY_BYTES
        + manifest.len()
        + artifacts
            .iter()
            .map(|(k, v)| k.len() + v.len() + ENTRY_BYTES)
            .sum::<usize>()
        + descriptions.iter().map(|d| d.len()).sum::<usize>()
}

/// An app and where its promotions stand.
#[derive(Clone, Debug)]
pub struct App {
    /// The user-given name.
    pub name: AppName,
    /// When it was created.
    pub created: DateTime<Utc>,
    /// Rollout deadline for its promotions, seconds.
    pub deadline_secs: u32,
    /// The release of the last successful promotion.
    pub active_release: Option<ReleaseId>,
    /// The promotion in flight, if any.
    pub open_promotion: Option<Promotion>,
}

impl App {
    /// The Convox app status: `updating` while a promotion is in flight.
    pub fn status(&self) -> &'static str {
        slipway_domain::promotion::app_status(self.open_promotion.as_ref().map(|p| p.state))
    }
}

/// One entry of the append-only ledger.
#[derive(Clone, Debug)]
pub struct Release {
    /// `R` + 10 letters.
    pub id: ReleaseId,
    /// The app it belongs to.
    pub app: AppName,
    /// Position in the app's ledger, 1 for the first release.
    pub seq: i64,
    /// The build it runs; none for env-only releases of an app never built.
    pub build: Option<BuildId>,
    /// The convox.yml of the build.
    pub manifest: String,
    /// The description the build was released with, inherited by forks so an
    /// env-less copy can describe itself as Convox does.
    pub build_description: String,
    /// Artifact reference per service, as the build produced it.
    pub artifacts: BTreeMap<String, String>,
    /// The env snapshot (sealed at rest).
    pub env: Env,
    /// What changed, Convox-style.
    pub description: String,
    /// The release this one was forked from.
    pub parent: Option<ReleaseId>,
    /// Set on a copy made by a rollback.
    pub rollback_of: Option<ReleaseId>,
    /// Who created it.
    pub actor: String,
    /// When it was created.
    pub created: DateTime<Utc>,
}

impl Release {
    /// Its size as [`release_bytes`] counts it (the actor, at most 128
    /// characters, is in the fixed room).
    pub fn bytes(&self) -> usize {
        release_bytes(
            &self.env,
            &self.manifest,
            &self.artifacts,
            &[&self.description, &self.build_description],
        )
    }
}

/// A promotion of a release and how it ended.
#[derive(Clone, Debug)]
pub struct Promotion {
    /// Unique id (also the id of the rollout that carries it out).
    pub id: PromotionId,
    /// The app.
    pub app: AppName,
    /// The release being promoted.
    pub release: ReleaseId,
    /// The last known good release an automatic rollback returns to.
    pub fallback_release: Option<ReleaseId>,
    /// Where it stands.
    pub state: PromotionState,
    /// Why it did not succeed.
    pub reason: String,
    /// The rollout deadline, seconds.
    pub deadline_secs: u32,
    /// Highest rollout lease epoch that reported on it.
    pub lease_epoch: u64,
    /// Who asked for it.
    pub actor: String,
    /// When it was asked for.
    pub created: DateTime<Utc>,
    /// When it reached a terminal state.
    pub finished: Option<DateTime<Utc>>,
}

/// One line of the audit log. Never carries env values.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    /// Monotonic id.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What (`app.create`, `env.change`, `release.promote`, …).
    pub action: String,
    /// Which app.
    pub app: String,
    /// Which object (release or promotion id).
    pub subject: String,
    /// Keys and descriptions only.
    pub detail: String,
}

/// How a new release's env is obtained from the release it forks.
#[derive(Clone, Debug)]
pub enum EnvInput {
    /// Keep the forked env.
    Keep,
    /// Replace it wholesale (the Convox `env=` field).
    Replace(Env),
    /// Apply a delta on the server (Slipway's atomic `env set/unset`).
    Change {
        /// Keys to set.
        set: BTreeMap<String, String>,
        /// Keys to remove.
        unset: Vec<String>,
    },
}

/// What a caller asks the ledger to append.
#[derive(Clone, Debug)]
pub struct ReleaseRequest {
    /// A build to run instead of the forked one.
    pub build: Option<BuildId>,
    /// The build's manifest (needed the first time a build is released).
    pub manifest: Option<String>,
    /// The build's artifacts per service (given with a new build).
    pub artifacts: Option<BTreeMap<String, String>>,
    /// The env change.
    pub env: EnvInput,
    /// An explicit description, overriding the derived one.
    pub description: Option<String>,
    /// Fork from this release instead of the newest.
    pub parent: Option<ReleaseId>,
    /// Copy this release (a rollback): its build, manifest and env.
    pub copy_of: Option<ReleaseId>,
    /// Apply only if the app's newest release is this (compare-and-set).
    pub expected_newest: Option<ExpectedNewest>,
}

/// What an editor saw as the app's newest release: the change applies only
/// if that is still so (checked in `plan`, under the app row's lock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectedNewest {
    /// The app had no release.
    NoRelease,
    /// This release was the newest.
    Release(ReleaseId),
}

impl ReleaseRequest {
    /// A request that changes nothing but what the fields set.
    pub fn keep() -> Self {
        Self {
            build: None,
            manifest: None,
            artifacts: None,
            env: EnvInput::Keep,
            description: None,
            parent: None,
            copy_of: None,
            expected_newest: None,
        }
    }
}

/// Refuses a change whose editor saw another newest release than `base`
/// (the newest, since the request names no parent), naming the newer one.
fn check_newest(
    base: Option<&Release>,
    expected: &ExpectedNewest,
    request: &ReleaseRequest,
) -> Result<(), Error> {
    if request.parent.is_some() || request.copy_of.is_some() {
        return Err(Error::InvalidArgument(
            "expected_newest_release cannot be combined with parent_release".into(),
        ));
    }
    let seen = match expected {
        ExpectedNewest::NoRelease => None,
        ExpectedNewest::Release(id) => Some(id),
    };
    if base.map(|b| &b.id) == seen {
        return Ok(());
    }
    let expected = seen.map_or("no release", ReleaseId::as_str);
    Err(Error::FailedPrecondition(match base {
        Some(newest) => format!(
            "the app's newest release is {} (by {}), not {expected}: the environment changed \
             since it was read; nothing was changed",
            newest.id, newest.actor
        ),
        None => format!("the app has no release, not {expected}; nothing was changed"),
    }))
}

/// What the fork logic needs to know about an earlier release of a build.
#[derive(Clone, Debug)]
pub struct BuildInfo {
    /// The build's manifest.
    pub manifest: String,
    /// The description the build was first released with.
    pub description: String,
    /// The build's artifacts.
    pub artifacts: BTreeMap<String, String>,
}

/// The fields of a release about to be appended.
#[derive(Clone, Debug)]
pub struct Draft {
    /// The build it runs.
    pub build: Option<BuildId>,
    /// Its manifest.
    pub manifest: String,
    /// The build's artifacts.
    pub artifacts: BTreeMap<String, String>,
    /// The build's own description.
    pub build_description: String,
    /// Its env.
    pub env: Env,
    /// Its description.
    pub description: String,
    /// The release it forks.
    pub parent: Option<ReleaseId>,
    /// The release it copies, for rollbacks.
    pub rollback_of: Option<ReleaseId>,
}

impl Draft {
    /// The release this draft becomes once appended as `id`, number `seq`.
    pub fn into_release(
        self,
        id: ReleaseId,
        app: &AppName,
        seq: i64,
        actor: &str,
        created: DateTime<Utc>,
    ) -> Release {
        Release {
            id,
            app: app.clone(),
            seq,
            build: self.build,
            manifest: self.manifest,
            artifacts: self.artifacts,
            build_description: self.build_description,
            env: self.env,
            description: self.description,
            parent: self.parent,
            rollback_of: self.rollback_of,
            actor: actor.to_owned(),
            created,
        }
    }

    /// Its size as [`release_bytes`] counts it (the actor is in the fixed room).
    pub fn bytes(&self) -> usize {
        release_bytes(
            &self.env,
            &self.manifest,
            &self.artifacts,
            &[&self.description, &self.build_description],
        )
    }

    /// Checks what every appended release must keep, whatever path made it
    /// (a Convox env text, a delta, a new build, a rollback copy): the env
    /// within its bounds and the whole release within [`MAX_RELEASE_BYTES`].
    /// Errors name the key or the part and the limit, never a value.
    pub fn check_bounds(&self) -> Result<(), Error> {
        self.env
            .check_bounds()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let len = self.bytes();
        if len > MAX_RELEASE_BYTES {
            return Err(Error::InvalidArgument(format!(
                "release is too large: its env, manifest, artifacts and descriptions take {len} bytes, \
                 the limit is {MAX_RELEASE_BYTES} bytes (1.5 MiB)"
            )));
        }
        Ok(())
    }

    /// The audit detail of appending it: description and env keys, never values.
    pub fn audit_detail(&self) -> String {
        let keys: Vec<&str> = self.env.keys().collect();
        format!("{}; env keys: {}", self.description, keys.join(","))
    }
}

/// Computes the new release the way Convox's `ReleaseCreate` does:
/// 1. fork build and env from `base` (the parent, else the newest release);
/// 2. a given build overrides the build, and brings its manifest and
///    description (`build_info`, looked up by the store when the build is not
///    the forked one);
/// 3. an env change is diffed against the forked env and, when something
///    changed, describes the release as `env add:… change:… remove:…`;
/// 4. an explicit description wins over everything.
///
/// A copy (`copy`, for rollbacks) takes build, manifest and env from the
/// copied release and is described `rollback to R…`.
///
/// Every draft is checked against the bounds ([`Draft::check_bounds`]) here,
/// the one place every new release passes through.
pub fn plan(
    base: Option<&Release>,
    copy: Option<&Release>,
    request: &ReleaseRequest,
    build_info: Option<BuildInfo>,
) -> Result<Draft, Error> {
    if let Some(expected) = &request.expected_newest {
        check_newest(base, expected, request)?;
    }
    let forked_env = base.map(|b| b.env.clone()).unwrap_or_default();
    let mut draft = Draft {
        build: base.and_then(|b| b.build.clone()),
        manifest: base.map(|b| b.manifest.clone()).unwrap_or_default(),
        artifacts: base.map(|b| b.artifacts.clone()).unwrap_or_default(),
        build_description: base
            .map(|b| b.build_description.clone())
            .unwrap_or_default(),
        env: forked_env.clone(),
        description: String::new(),
        parent: base.map(|b| b.id.clone()),
        rollback_of: None,
    };
    if let Some(copy) = copy {
        draft.build = copy.build.clone();
        draft.manifest = copy.manifest.clone();
        draft.artifacts = copy.artifacts.clone();
        draft.build_description = copy.build_description.clone();
        draft.env = copy.env.clone();
        draft.rollback_of = Some(copy.id.clone());
        draft.description = format!("rollback to {}", copy.id);
        draft.check_bounds()?;
        return Ok(draft);
    }
    if let Some(build) = &request.build {
        let same_as_forked = draft.build.as_ref() == Some(build);
        match (&request.manifest, build_info) {
            (Some(manifest), _) => {
                draft.manifest = manifest.clone();
                draft.artifacts = request.artifacts.clone().unwrap_or_default();
                if !same_as_forked {
                    draft.build_description = request.description.clone().unwrap_or_default();
                }
            }
            (None, Some(info)) => {
                draft.manifest = info.manifest;
                draft.artifacts = info.artifacts;
                draft.build_description = info.description;
            }
            (None, None) if same_as_forked => {}
            (None, None) => {
                return Err(Error::InvalidArgument(format!(
                    "build {build} has no release in this app yet: pass its manifest"
                )));
            }
        }
        draft.build = Some(build.clone());
    } else if request.manifest.is_some() || request.artifacts.is_some() {
        return Err(Error::InvalidArgument(
            "a manifest or artifacts can only be given together with a build".into(),
        ));
    }
    if !draft.manifest.trim().is_empty() {
        // Validate what will be promoted later, naming the line.
        slipway_domain::Manifest::parse(&draft.manifest)
            .map_err(|e| Error::InvalidArgument(format!("invalid manifest: {e}")))?;
    }
    if draft.build.is_some() {
        draft.description = draft.build_description.clone();
    }
    let new_env = match &request.env {
        EnvInput::Keep => None,
        EnvInput::Replace(env) => Some(env.clone()),
        EnvInput::Change { set, unset } => Some(
            forked_env
                .apply(set, unset)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?,
        ),
    };
    if let Some(env) = new_env {
        if let Some(described) = EnvDiff::between(&forked_env, &env).description() {
            draft.description = described;
        }
        draft.env = env;
    }
    if let Some(description) = &request.description {
        draft.description = description.clone();
    }
    draft.check_bounds()?;
    Ok(draft)
}

/// Why a promotion is refused before anything is recorded. The messages are
/// the Convox rack's words; [`PromotionRefusal::kind`] is what callers branch
/// on (it travels as [`slipway_api::refusal`] metadata).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PromotionRefusal {
    /// A promotion of the app is in flight (also refuses deleting the app).
    #[error("app is currently updating")]
    AppUpdating,
    /// The release is older than the active one and the request not forced.
    #[error("can not promote an older release, try rollback")]
    OlderRelease,
    /// The release has no manifest to run.
    #[error("can not promote a release with an empty manifest")]
    EmptyManifest,
    /// The release's manifest does not parse.
    #[error("release {release} has an invalid manifest: {reason}")]
    InvalidManifest {
        /// The release.
        release: ReleaseId,
        /// What the parser said, naming the line.
        reason: String,
    },
    /// Env vars the manifest requires without a default are unset.
    #[error("can not promote {release}: {}; set it with `env set` first", .missing.join(", "))]
    MissingEnv {
        /// The release.
        release: ReleaseId,
        /// One entry per var and service, as `env KEY is required by service S`.
        missing: Vec<String>,
    },
}

impl PromotionRefusal {
    /// The refusal's kind on the wire.
    pub fn kind(&self) -> slipway_api::refusal::Refusal {
        use slipway_api::refusal::Refusal;
        match self {
            PromotionRefusal::AppUpdating => Refusal::AppUpdating,
            PromotionRefusal::OlderRelease => Refusal::OlderRelease,
            PromotionRefusal::EmptyManifest => Refusal::EmptyManifest,
            PromotionRefusal::InvalidManifest { .. } => Refusal::InvalidManifest,
            PromotionRefusal::MissingEnv { .. } => Refusal::MissingEnv,
        }
    }
}

/// What the promotion checks look at, as the store read it in the
/// transaction that will record the promotion.
#[derive(Clone, Copy, Debug)]
pub struct PromotionFacts<'a> {
    /// The release asked for.
    pub target: &'a Release,
    /// The app's active release, if any.
    pub active_release: Option<&'a str>,
    /// The active release's position in the ledger.
    pub active_seq: Option<i64>,
    /// A promotion of the app is pending or rolling out.
    pub promotion_open: bool,
    /// The request allows promoting an older release.
    pub force: bool,
}

/// What a promotion that passed the checks comes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromotionVerdict {
    /// Record a pending promotion and hand it to the rollout service.
    Start,
    /// The release is active already: record nothing.
    AlreadyActive,
}

/// Decides whether `facts` allow a promotion, checking in the order the
/// Convox rack answers: a promotion in flight, the release already active,
/// an older release without force, an empty or invalid manifest, env vars
/// the manifest requires. Pure: the store reads the facts and records the
/// verdict.
pub fn check_promotion(facts: &PromotionFacts<'_>) -> Result<PromotionVerdict, PromotionRefusal> {
    let target = facts.target;
    if facts.promotion_open {
        return Err(PromotionRefusal::AppUpdating);
    }
    if facts.active_release == Some(target.id.as_str()) {
        return Ok(PromotionVerdict::AlreadyActive);
    }
    if !facts.force && facts.active_seq.is_some_and(|s| target.seq < s) {
        return Err(PromotionRefusal::OlderRelease);
    }
    if target.manifest.trim().is_empty() {
        return Err(PromotionRefusal::EmptyManifest);
    }
    let manifest = slipway_domain::Manifest::parse(&target.manifest).map_err(|e| {
        PromotionRefusal::InvalidManifest {
            release: target.id.clone(),
            reason: e.to_string(),
        }
    })?;
    let missing = manifest.missing_env(&target.env);
    if !missing.is_empty() {
        return Err(PromotionRefusal::MissingEnv {
            release: target.id.clone(),
            missing: missing.iter().map(ToString::to_string).collect(),
        });
    }
    Ok(PromotionVerdict::Start)
}

#[cfg(test)]
mod tests;
