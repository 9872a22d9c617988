//! Row mapping: the columns the store reads and how a row becomes a model
//! value. A stored value that fails validation is a decode error (the row
//! is corrupt), never a caller's mistake.

use slipway_domain::{AppName, BuildId, PromotionId, PromotionState, ReleaseId};
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::Store;
use crate::error::{Error, Result};
use crate::model::{App, Promotion, Release};

/// The columns [`Store::release_from_row`] reads, from `releases r`.
pub(super) const RELEASE_COLUMNS: &str = "r.id, r.seq, r.build, r.manifest, r.artifacts, r.build_description, r.env_sealed, \
     r.description, r.parent, r.rollback_of, r.actor, r.created_at";
/// The columns [`promotion_from_row`] reads, from `promotions p JOIN apps a`.
pub(super) const PROMOTION_COLUMNS: &str = "p.id, a.name, p.release_id, p.fallback_release, p.state, p.reason, \
     p.deadline_secs, p.lease_epoch, p.actor, p.created_at, p.finished_at";

impl Store {
    pub(super) fn release_from_row(&self, app: &AppName, row: &AnyRow) -> Result<Release> {
        let id: String = row.try_get("id")?;
        let sealed: Vec<u8> = row.try_get("env_sealed")?;
        let env = self.cipher.open(&id, &sealed)?;
        let build: String = row.try_get("build")?;
        Ok(Release {
            id: stored_id(ReleaseId::parse(&id))?,
            app: app.clone(),
            seq: row.try_get("seq")?,
            build: if build.is_empty() {
                None
            } else {
                Some(stored_id(BuildId::parse(&build))?)
            },
            manifest: row.try_get("manifest")?,
            artifacts: artifacts_from_json(&row.try_get::<String, _>("artifacts")?)?,
            build_description: row.try_get("build_description")?,
            env,
            description: row.try_get("description")?,
            parent: optional_release_id(row.try_get("parent")?)?,
            rollback_of: optional_release_id(row.try_get("rollback_of")?)?,
            actor: row.try_get("actor")?,
            created: time(row.try_get("created_at")?),
        })
    }
}

pub(super) fn app_from_row(row: &AnyRow, open_promotion: Option<Promotion>) -> Result<App> {
    let name: String = row.try_get("name")?;
    let active: Option<String> = row.try_get("active_release")?;
    Ok(App {
        name: stored_id(AppName::parse(&name))?,
        created: time(row.try_get("created_at")?),
        deadline_secs: row.try_get::<i64, _>("deadline_secs")? as u32,
        active_release: optional_release_id(active)?,
        open_promotion,
    })
}

pub(super) fn promotion_from_row(row: &AnyRow) -> Result<Promotion> {
    let state: String = row.try_get("state")?;
    let app: String = row.try_get("name")?;
    let release: String = row.try_get("release_id")?;
    let finished: Option<i64> = row.try_get("finished_at")?;
    let id: String = row.try_get("id")?;
    Ok(Promotion {
        id: stored_id(PromotionId::parse(&id))?,
        app: stored_id(AppName::parse(&app))?,
        release: stored_id(ReleaseId::parse(&release))?,
        fallback_release: optional_release_id(row.try_get("fallback_release")?)?,
        state: PromotionState::parse(&state).ok_or_else(|| {
            Error::Store(sqlx::Error::Decode(
                format!("unknown promotion state {state:?}").into(),
            ))
        })?,
        reason: row.try_get("reason")?,
        deadline_secs: row.try_get::<i64, _>("deadline_secs")? as u32,
        lease_epoch: row.try_get::<i64, _>("lease_epoch")? as u64,
        actor: row.try_get("actor")?,
        created: time(row.try_get("created_at")?),
        finished: finished.map(time),
    })
}

pub(super) fn artifacts_from_json(
    text: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|e| {
        Error::Store(sqlx::Error::Decode(
            format!("stored artifacts are invalid: {e}").into(),
        ))
    })
}

pub(super) fn optional_release_id(value: Option<String>) -> Result<Option<ReleaseId>> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| stored_id(ReleaseId::parse(&v)))
        .transpose()
}

/// A value the database holds failed validation: the row is corrupt.
pub(super) fn stored_id<T, E: std::fmt::Display>(parsed: std::result::Result<T, E>) -> Result<T> {
    parsed.map_err(|e| {
        Error::Store(sqlx::Error::Decode(
            format!("stored value is invalid: {e}").into(),
        ))
    })
}

pub(super) use slipway_storage::time;
