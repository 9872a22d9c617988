//! The audit trail (`audit_events`, append-only: triggers refuse updates
//! and deletes): records of changes other services made, or refusals at
//! the edge, appended on their own; and the trail read back with its
//! source and outcome. Changes the release service makes append their
//! record in their own transaction (`super::audit`).

use slipway_storage::{now_micros, time};
use sqlx::Row as _;

use super::Store;
use crate::error::Result;

/// One record of the trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Monotonic id.
    pub id: i64,
    /// When, in microseconds since the epoch.
    pub at: i64,
    /// `password`, `token:NAME`, `console:NAME`, or a service.
    pub actor: String,
    /// The client's address as the gateway saw it.
    pub source: String,
    /// What was done (`build.create`, `token.revoke`, ...).
    pub action: String,
    /// Which app; empty for rack-wide actions.
    pub app: String,
    /// The id of what was changed.
    pub target: String,
    /// `ok` or `denied`.
    pub outcome: String,
    /// Keys and descriptions only.
    pub detail: String,
}

/// A record to append (the time and id are the store's).
#[derive(Clone, Debug, Default)]
pub struct NewAuditRecord {
    /// See [`AuditRecord`].
    pub actor: String,
    /// See [`AuditRecord`].
    pub source: String,
    /// See [`AuditRecord`].
    pub action: String,
    /// See [`AuditRecord`].
    pub app: String,
    /// See [`AuditRecord`].
    pub target: String,
    /// See [`AuditRecord`].
    pub outcome: String,
    /// See [`AuditRecord`].
    pub detail: String,
    /// The sending service's outbox id: the record is appended once per
    /// id (a repeat appends nothing). Empty: appended every time.
    pub dedup_key: String,
    /// When the change was made, microseconds (`None`: now).
    pub at: Option<i64>,
}

impl Store {
    /// Appends `record` on its own. Returns false when a record with its
    /// dedup key was appended before (nothing appended).
    pub async fn record_audit(&self, record: &NewAuditRecord) -> Result<bool> {
        let now = now_micros();
        let done = sqlx::query(
            "INSERT INTO audit_events (at, actor, source, action, app, subject, outcome, detail, dedup_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (dedup_key) DO NOTHING",
        )
        .bind(record.at.map_or(now, |at| at.min(now)))
        .bind(&record.actor)
        .bind(&record.source)
        .bind(&record.action)
        .bind(&record.app)
        .bind(&record.target)
        .bind(&record.outcome)
        .bind(&record.detail)
        .bind((!record.dedup_key.is_empty()).then_some(record.dedup_key.as_str()))
        .execute(&mut *self.db.acquire().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records newest first: of `app` (every app when `None`), at or after
    /// `since` (microseconds), at most `limit`.
    pub async fn audit_trail(
        &self,
        app: Option<&str>,
        since: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, source, action, app, subject, outcome, detail FROM audit_events \
             WHERE ($1 = '' OR app = $1) AND at >= $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(app.unwrap_or_default())
        .bind(since.unwrap_or(0))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.db.acquire().await?)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    source: row.try_get("source")?,
                    action: row.try_get("action")?,
                    app: row.try_get("app")?,
                    target: row.try_get("subject")?,
                    outcome: row.try_get("outcome")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }
}

/// The time of a record, for answers.
pub fn record_time(record: &AuditRecord) -> chrono::DateTime<chrono::Utc> {
    time(record.at)
}
