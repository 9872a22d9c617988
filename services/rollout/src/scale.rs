//! Scale set by hand and restarts (`convox scale`, `convox restart`): the
//! records (`service_scales`, and `service_scale_audit` for who changed
//! what), and the changes themselves, which roll out on the app's running
//! release without a new release.
//!
//! A change is applied like a promotion of the running release with new
//! [`Overrides`]: the runtime's rolling update starts and stops processes
//! under the same health rules. Each change is recorded as a rollout row
//! that is settled from the start (phase `running`, reported, finished):
//! the runtime's events of the change are tagged with its id, so they have
//! a durable log like a promotion's, and no driver ever takes it over (the
//! release service knows nothing of it). A change is refused while a
//! promotion of the app is in flight (that promotion would replace it).
//!
//! Every rollout the drivers apply goes through [`overlay`] first, so a
//! promotion or rollback runs the counts set by hand (the rule is in
//! `overrides.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use slipway_domain::AppName;
use slipway_events::NewEvent;
use slipway_storage::now_micros;
use sqlx::Row as _;

use crate::error::{Error, Result};
use crate::model::{Phase, Spec};
use crate::overrides::ServiceScale;
use crate::recorder::Recorder;
use crate::runtime::{DynRuntime, EventSink as _};
use crate::store::{Store, time};

/// The largest count `scale` takes (the local runtime starts that many
/// processes of one service).
pub const MAX_COUNT: u32 = 1000;
/// The largest cpu (millicores) and memory (MiB) `scale` takes.
pub const MAX_CPU: u32 = 1_000_000;
/// See [`MAX_CPU`].
pub const MAX_MEMORY: u32 = 16 * 1024 * 1024;

/// A change of one service's scale; `None` keeps the current value.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScaleChange {
    /// Processes.
    pub count: Option<u32>,
    /// Millicores (0 clears).
    pub cpu: Option<u32>,
    /// MiB (0 clears).
    pub memory: Option<u32>,
}

/// One service's desired scale as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleView {
    /// The service.
    pub service: String,
    /// Desired processes.
    pub count: u32,
    /// Millicores, 0 when unset.
    pub cpu: u32,
    /// MiB, 0 when unset.
    pub memory: u32,
    /// Whether the count was set by hand.
    pub count_set: bool,
    /// Empty when the runtime enforces cpu and memory; else why not.
    pub limits_note: String,
    /// When it was last set by hand.
    pub updated: Option<DateTime<Utc>>,
}

/// Failures of a scale change or restart.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// A promotion of the app is in flight (refusal kind `app-updating`).
    #[error("{0}")]
    Updating(String),
    /// Anything else, as the service's errors.
    #[error(transparent)]
    Other(#[from] Error),
}

impl From<sqlx::Error> for ScaleError {
    fn from(e: sqlx::Error) -> Self {
        Self::Other(e.into())
    }
}

impl From<crate::runtime::RuntimeError> for ScaleError {
    fn from(e: crate::runtime::RuntimeError) -> Self {
        Self::Other(e.into())
    }
}

impl From<ScaleError> for tonic::Status {
    fn from(err: ScaleError) -> Self {
        match err {
            ScaleError::Updating(message) => {
                slipway_api::refusal::Refusal::AppUpdating.status(message)
            }
            ScaleError::Other(e) => e.into(),
        }
    }
}

fn updating(app: &AppName) -> ScaleError {
    ScaleError::Updating(format!(
        "app {app} is updating: wait for the promotion to finish (or cancel it)"
    ))
}

/// Scale records and changes.
#[derive(Clone)]
pub struct Scales {
    store: Store,
    runtime: DynRuntime,
    recorder: Recorder,
}

impl Scales {
    /// Changes on `runtime`, recorded in `store`'s database, events through `recorder`.
    pub fn new(store: Store, runtime: DynRuntime, recorder: Recorder) -> Self {
        Self {
            store,
            runtime,
            recorder,
        }
    }

    /// The services of the app's running release (or of the release it is
    /// moving to) with their desired scale; empty when it runs nothing.
    pub async fn list(&self, app: &AppName) -> Result<Vec<ScaleView>> {
        let Some(spec) = self.current(app).await?.map(|(spec, _)| spec) else {
            return Ok(Vec::new());
        };
        let records = records(&self.store, app.as_str()).await?;
        let note = self.limits_note();
        Ok(spec
            .manifest
            .services
            .keys()
            .map(|name| {
                let record = records.get(name);
                let scale = record.map(|(s, _)| *s).unwrap_or_default();
                let manifest = spec.manifest.service(name).map_or(0, |s| s.scale.count);
                let limited = scale.cpu > 0 || scale.memory > 0;
                ScaleView {
                    service: name.clone(),
                    count: scale.count.unwrap_or(manifest),
                    cpu: scale.cpu,
                    memory: scale.memory,
                    count_set: scale.count.is_some(),
                    limits_note: if limited { note.clone() } else { String::new() },
                    updated: record.map(|(_, at)| *at),
                }
            })
            .collect())
    }

    /// Records `change` of `service` and rolls it out on the running release.
    pub async fn set(
        &self,
        app: &AppName,
        service: &str,
        change: ScaleChange,
        actor: &str,
    ) -> Result<ScaleView, ScaleError> {
        check(change)?;
        let spec = self.running(app).await?;
        if spec.manifest.service(service).is_none() {
            return Err(no_such_service(app, service).into());
        }
        let before = spec.count(service);
        let mut scale = records(&self.store, app.as_str())
            .await?
            .remove(service)
            .map(|(s, _)| s)
            .unwrap_or_default();
        if let Some(count) = change.count {
            scale.count = Some(count);
        }
        let resources = (scale.cpu, scale.memory);
        scale.cpu = change.cpu.unwrap_or(scale.cpu);
        scale.memory = change.memory.unwrap_or(scale.memory);
        upsert(&self.store, app, service, scale).await?;
        let mut next = (*spec).clone();
        next.overrides.restarted.clear();
        if resources != (scale.cpu, scale.memory) {
            // New limits apply to new processes: the service's processes
            // are replaced, rolling, as a restart replaces them.
            next.overrides
                .restarted
                .insert(service.to_owned(), Utc::now());
        }
        next.overrides.scale = records(&self.store, app.as_str())
            .await?
            .into_iter()
            .map(|(name, (s, _))| (name, s))
            .collect();
        let after = next.count(service);
        let detail = describe(change);
        let id = self
            .roll_out(app, next, "scale", service, &detail, actor)
            .await?;
        let verb = if after > before {
            Some("Scaled up")
        } else if after < before {
            Some("Scaled down")
        } else {
            None
        };
        if let Some(verb) = verb {
            self.event(app, &id, service, format!("{verb} {service} to {after}"));
        }
        let view = self
            .list(app)
            .await?
            .into_iter()
            .find(|v| v.service == service)
            .ok_or_else(|| no_such_service(app, service))?;
        Ok(view)
    }

    /// Restarts `service` (every service when `None`): its processes are
    /// replaced, rolling. Returns the services restarted.
    pub async fn restart(
        &self,
        app: &AppName,
        service: Option<&str>,
        actor: &str,
    ) -> Result<Vec<String>, ScaleError> {
        let spec = self.running(app).await?;
        let services: Vec<String> = match service {
            Some(name) if spec.manifest.service(name).is_some() => vec![name.to_owned()],
            Some(name) => return Err(no_such_service(app, name).into()),
            None => spec.manifest.services.keys().cloned().collect(),
        };
        let mut next = (*spec).clone();
        let now = Utc::now();
        for name in &services {
            next.overrides.restarted.insert(name.clone(), now);
        }
        let target = service.unwrap_or("*");
        let id = self
            .roll_out(app, next, "restart", target, "", actor)
            .await?;
        for name in &services {
            self.event(app, &id, name, format!("Restarting {name}"));
        }
        Ok(services)
    }

    /// The spec the app runs (or moves to) and whether a rollout of it is
    /// still in flight.
    async fn current(&self, app: &AppName) -> Result<Option<(Arc<Spec>, bool)>> {
        let (db, _) = self.store.parts();
        let row = sqlx::query(
            "SELECT id, phase, finished_at FROM rollouts WHERE app = $1 \
             ORDER BY created_at DESC, finished_at IS NULL DESC LIMIT 1",
        )
        .bind(app.as_str())
        .fetch_optional(&mut *db.acquire().await?)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let id: String = row.try_get("id")?;
        let open = row.try_get::<Option<i64>, _>("finished_at")?.is_none();
        let Some(plan) = self.store.plan(&id).await? else {
            return Ok(None);
        };
        let spec = match plan.rollout.phase {
            Phase::Reverted | Phase::Failure | Phase::Cancelled if !open => plan.fallback,
            _ => Some(plan.target),
        };
        Ok(spec.map(|s| (s, open)))
    }

    /// The spec the app runs, refusing while a promotion is in flight or
    /// when it runs nothing.
    async fn running(&self, app: &AppName) -> Result<Arc<Spec>, ScaleError> {
        match self.current(app).await? {
            Some((_, true)) => Err(updating(app)),
            Some((spec, false)) => Ok(spec),
            None => Err(Error::FailedPrecondition(format!(
                "app {app} runs no release: promote one first"
            ))
            .into()),
        }
    }

    /// Records a settled rollout row for `spec`, audits the change and
    /// applies it; returns the row's id (the events' tag).
    async fn roll_out(
        &self,
        app: &AppName,
        spec: Spec,
        action: &str,
        service: &str,
        detail: &str,
        actor: &str,
    ) -> Result<String, ScaleError> {
        // A promotion id's shape (`P` and 32 hex digits), from the same
        // random source as the service's replica ids.
        let id = format!("P{}", uuid::Uuid::new_v4().simple());
        let (db, cipher) = self.store.parts();
        let now = now_micros();
        let sealed = cipher.seal(app.as_str(), &spec.to_json());
        // The rollout row, the scale record and the audit record commit
        // together (crate::audit).
        let mut tx = db.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO rollouts (id, app, release_id, fallback_release, target_spec, fallback_spec, phase, \
             deadline_secs, deadline_at, owner, lease_expires, epoch, reported, created_at, finished_at) \
             SELECT $1, $2, $3, NULL, $4, NULL, $5, 0, $6, NULL, 0, 0, 1, $7, $8 \
             WHERE NOT EXISTS (SELECT 1 FROM rollouts WHERE app = $9 AND finished_at IS NULL)",
        )
        .bind(&id)
        .bind(app.as_str())
        .bind(spec.release.as_str())
        .bind(&sealed)
        .bind(Phase::Running.as_str())
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(app.as_str())
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(updating(app));
        }
        sqlx::query(
            "INSERT INTO service_scale_audit (app, service, action, detail, actor, rollout_id, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(app.as_str())
        .bind(service)
        .bind(action)
        .bind(detail)
        .bind(actor)
        .bind(&id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let what = format!("service.{action}");
        crate::audit::record(&mut tx, &what, app.as_str(), service, detail, actor).await?;
        tx.commit().await?;
        crate::audit::wake();
        tracing::info!(app = %app, service, action, rollout = %id, actor, "scale change");
        self.runtime
            .apply(&id, Arc::new(spec), std::time::Duration::from_secs(600))
            .await?;
        Ok(id)
    }

    fn event(&self, app: &AppName, rollout: &str, service: &str, message: String) {
        let mut event = NewEvent::now(
            app.as_str(),
            format!("system/{}/{service}", self.runtime.name()),
            message,
        );
        event.rollout = Some(rollout.to_owned());
        self.recorder.emit(event);
    }

    fn limits_note(&self) -> String {
        match self.runtime.name() {
            "k8s" => String::new(),
            "local" => match crate::runtime::local::cpu_enforced() {
                Ok(()) => "memory: a data limit per process; cpu: cgroup v2 cpu.max per process"
                    .to_owned(),
                Err(why) => {
                    format!("memory: a data limit per process; cpu: not enforced ({why})")
                }
            },
            name => format!("cpu and memory are recorded, not enforced, on the {name} runtime"),
        }
    }
}

/// `spec` with the scale set by hand for its app: what every rollout
/// applies (see the module docs). Restarts are not carried over: a
/// promotion replaces every process anyway.
pub async fn overlay(store: &Store, spec: Arc<Spec>) -> Result<Arc<Spec>> {
    let scale: BTreeMap<String, ServiceScale> = records(store, spec.app.as_str())
        .await?
        .into_iter()
        .map(|(name, (s, _))| (name, s))
        .collect();
    if scale == spec.overrides.scale && spec.overrides.restarted.is_empty() {
        return Ok(spec);
    }
    let mut next = (*spec).clone();
    next.overrides.scale = scale;
    next.overrides.restarted.clear();
    Ok(Arc::new(next))
}

async fn records(
    store: &Store,
    app: &str,
) -> Result<BTreeMap<String, (ServiceScale, DateTime<Utc>)>> {
    let (db, _) = store.parts();
    let rows = sqlx::query(
        "SELECT service, count, cpu, memory, updated_at FROM service_scales WHERE app = $1",
    )
    .bind(app)
    .fetch_all(&mut *db.acquire().await?)
    .await?;
    rows.iter()
        .map(|r| {
            let number = |column: &str| -> Result<u32> {
                let v: i64 = r.try_get(column)?;
                u32::try_from(v).map_err(|_| Error::Corrupt(format!("service_scales.{column} {v}")))
            };
            let count = r
                .try_get::<Option<i64>, _>("count")?
                .map(|c| u32::try_from(c).map_err(|_| Error::Corrupt(format!("count {c}"))))
                .transpose()?;
            Ok((
                r.try_get("service")?,
                (
                    ServiceScale {
                        count,
                        cpu: number("cpu")?,
                        memory: number("memory")?,
                    },
                    time(r.try_get("updated_at")?),
                ),
            ))
        })
        .collect()
}

async fn upsert(store: &Store, app: &AppName, service: &str, scale: ServiceScale) -> Result<()> {
    let (db, _) = store.parts();
    sqlx::query(
        "INSERT INTO service_scales (app, service, count, cpu, memory, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (app, service) DO UPDATE SET \
         count = excluded.count, cpu = excluded.cpu, memory = excluded.memory, \
         updated_at = excluded.updated_at",
    )
    .bind(app.as_str())
    .bind(service)
    .bind(scale.count.map(i64::from))
    .bind(i64::from(scale.cpu))
    .bind(i64::from(scale.memory))
    .bind(now_micros())
    .execute(&mut *db.acquire().await?)
    .await?;
    Ok(())
}

fn check(change: ScaleChange) -> Result<()> {
    let over = |value: Option<u32>, max: u32, what: &str| match value {
        Some(v) if v > max => Err(Error::InvalidArgument(format!(
            "{what} must be at most {max}, got {v}"
        ))),
        _ => Ok(()),
    };
    over(change.count, MAX_COUNT, "count")?;
    over(change.cpu, MAX_CPU, "cpu")?;
    over(change.memory, MAX_MEMORY, "memory")?;
    if change.count.is_none() && change.cpu.is_none() && change.memory.is_none() {
        return Err(Error::InvalidArgument(
            "nothing to change: give count, cpu or memory".into(),
        ));
    }
    Ok(())
}

fn describe(change: ScaleChange) -> String {
    [
        change.count.map(|v| format!("count={v}")),
        change.cpu.map(|v| format!("cpu={v}")),
        change.memory.map(|v| format!("memory={v}")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ")
}

fn no_such_service(app: &AppName, service: &str) -> Error {
    Error::NotFound(format!("service \"{service}\" not found in app {app}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_bounded_and_not_empty() {
        assert!(check(ScaleChange::default()).is_err());
        let count = |n| ScaleChange {
            count: Some(n),
            ..Default::default()
        };
        assert!(check(count(0)).is_ok());
        assert!(check(count(MAX_COUNT)).is_ok());
        let err = check(count(MAX_COUNT + 1)).unwrap_err().to_string();
        assert_eq!(err, "count must be at most 1000, got 1001");
        assert_eq!(
            describe(ScaleChange {
                count: Some(3),
                cpu: None,
                memory: Some(512)
            }),
            "count=3 memory=512"
        );
    }
}
