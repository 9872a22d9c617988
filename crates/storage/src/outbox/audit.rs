//! Audit outboxes: the rows a service writes, in the transaction of each
//! change it makes for a caller, for the release service's audit trail.
//! Every audit outbox table has the payload columns of [`COLUMNS`] (see
//! the build and rollout services' `*_audit_outbox` migrations).

use sqlx::any::AnyRow;
use sqlx::{Any, Row as _, Transaction};

use crate::now_micros;

/// The payload columns of an audit outbox table.
pub const COLUMNS: &str = "actor, source, action, app, target, outcome, detail";

/// One audit record waiting to be relayed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditEntry {
    /// `password`, `token:NAME`, `console:NAME`, or a service.
    pub actor: String,
    /// The client's address, empty when not known.
    pub source: String,
    /// What was done (`build.create`, `service.scale`, ...).
    pub action: String,
    /// Which app.
    pub app: String,
    /// The id of what was changed (a build, a service, a process).
    pub target: String,
    /// `ok`, or `failed` for an action that ended without its change.
    pub outcome: String,
    /// Keys and descriptions only; never env values or secrets.
    pub detail: String,
    /// When the change was made, microseconds since the epoch.
    pub at_micros: i64,
}

impl AuditEntry {
    /// Reads a claimed row (see [`super::Outbox::claim`]).
    pub fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            actor: row.try_get("actor")?,
            source: row.try_get("source")?,
            action: row.try_get("action")?,
            app: row.try_get("app")?,
            target: row.try_get("target")?,
            outcome: row.try_get("outcome")?,
            detail: row.try_get("detail")?,
            at_micros: row.try_get("created_at")?,
        })
    }
}

/// Writes `entry` as row `id` of audit outbox `table` in `tx`, due at
/// once (at `entry.at_micros`, or now when that is 0). `table` is a fixed
/// name from the code.
pub async fn write(
    tx: &mut Transaction<'static, Any>,
    table: &'static str,
    id: &str,
    entry: &AuditEntry,
) -> Result<(), sqlx::Error> {
    write_due(tx, table, id, entry, None).await
}

/// [`write`], not due before `hold_until` (microseconds) when given: a
/// record written before the action it records, released (or withdrawn)
/// once the action's result is known; if the service dies first, it is
/// relayed as it was written when the hold runs out.
pub async fn write_due(
    tx: &mut Transaction<'static, Any>,
    table: &'static str,
    id: &str,
    entry: &AuditEntry,
    hold_until: Option<i64>,
) -> Result<(), sqlx::Error> {
    let at = if entry.at_micros == 0 {
        now_micros()
    } else {
        entry.at_micros
    };
    sqlx::query(&format!(
        "INSERT INTO {table} (id, {COLUMNS}, created_at, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(id)
    .bind(&entry.actor)
    .bind(&entry.source)
    .bind(&entry.action)
    .bind(&entry.app)
    .bind(&entry.target)
    .bind(&entry.outcome)
    .bind(&entry.detail)
    .bind(at)
    .bind(hold_until.unwrap_or(at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Releases held row `id` of `table` with the action's result: due at
/// once, with `outcome` and `detail`. False when the hold had already run
/// out and the row was relayed as written.
pub async fn settle(
    db: &crate::Database,
    table: &'static str,
    id: &str,
    outcome: &str,
    detail: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&format!(
        "UPDATE {table} SET outcome = $1, detail = $2, next_attempt_at = $3 \
         WHERE id = $4 AND published_at IS NULL AND claim = ''"
    ))
    .bind(outcome)
    .bind(detail)
    .bind(now_micros())
    .bind(id)
    .execute(&mut *db.acquire().await?)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Withdraws held row `id` of `table` (the action was refused and changed
/// nothing). False when it had already been relayed.
pub async fn withdraw(
    db: &crate::Database,
    table: &'static str,
    id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&format!(
        "DELETE FROM {table} WHERE id = $1 AND published_at IS NULL AND claim = ''"
    ))
    .bind(id)
    .execute(&mut *db.acquire().await?)
    .await?;
    Ok(done.rows_affected() == 1)
}
