//! The build service's outboxes (see `slipway_storage::outbox`): the
//! webhook outbox (`build_outbox`: `build:create` events written in the
//! transaction that records a build's start or its failure) and the audit
//! outbox (`build_audit_outbox`: a `build.create` record per build started,
//! written in the same transaction, and a `build.cancel` record per build a
//! caller cancelled, written in the transaction that records it cancelled). The relays (`crate::relay`) forward
//! them to the release service and mark them published once it recorded
//! them.

use slipway_storage::now_micros;
use slipway_storage::outbox::{Outbox, audit};
use sqlx::{Any, Row as _, Transaction};

use super::Store;
use crate::error::Result;

/// The Convox action of every event this service announces.
pub const BUILD_CREATE: &str = "build:create";

/// One event of the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEvent {
    /// `E` and 32 hex digits: the release service's idempotency key.
    pub id: String,
    /// `build:create`.
    pub action: String,
    /// `success` (started) or `error` (failed).
    pub status: String,
    /// The build's app.
    pub app: String,
    /// Who started the build.
    pub actor: String,
    /// The build id.
    pub subject: String,
    /// Why it failed.
    pub message: String,
    /// When, microseconds since the epoch.
    pub at_micros: i64,
}

/// A fresh event id.
fn event_id() -> String {
    let bits: u128 = rand::random();
    format!("E{bits:032x}")
}

/// Writes a `build:create` event in `tx`. A build's start (`success`) is
/// also the change the audit trail records as `build.create`: its audit
/// outbox row is written here too, in the same transaction, with the
/// calling request's source (see `slipway_rpc::actor::current`).
pub(super) async fn announce(
    tx: &mut Transaction<'static, Any>,
    status: &str,
    app: &str,
    actor: &str,
    build: &str,
    message: &str,
) -> Result<()> {
    let now = now_micros();
    sqlx::query(
        "INSERT INTO build_outbox (id, action, status, app, actor, subject, message, created_at, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
    )
    .bind(event_id())
    .bind(BUILD_CREATE)
    .bind(status)
    .bind(app)
    .bind(actor)
    .bind(build)
    .bind(message)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if status == "success" {
        let source = slipway_rpc::actor::current().source;
        let by = slipway_rpc::actor::Actor::new(actor, &source);
        record(tx, "build.create", app, &by, build, message, now).await?;
    }
    Ok(())
}

/// Writes the audit record of `action` on `build` of `app` by `by` (its
/// name and the client's address) in `tx`, the transaction of the change.
pub(super) async fn record(
    tx: &mut Transaction<'static, Any>,
    action: &str,
    app: &str,
    by: &slipway_rpc::actor::Actor,
    build: &str,
    detail: &str,
    at_micros: i64,
) -> Result<()> {
    let entry = audit::AuditEntry {
        actor: by.name.clone(),
        source: by.source.clone(),
        action: action.to_owned(),
        app: app.to_owned(),
        target: build.to_owned(),
        outcome: "ok".to_owned(),
        detail: detail.chars().take(1024).collect(),
        at_micros,
    };
    audit::write(tx, AUDIT_TABLE, &audit_id(), &entry).await?;
    Ok(())
}

/// A fresh audit outbox id: `A` and 32 hex digits, the release service's
/// dedup key.
fn audit_id() -> String {
    let bits: u128 = rand::random();
    format!("A{bits:032x}")
}

/// Who started `build`, as its start event recorded.
pub(super) async fn starter(tx: &mut Transaction<'static, Any>, build: &str) -> Result<String> {
    let row = sqlx::query(
        "SELECT actor FROM build_outbox WHERE subject = $1 AND action = $2 AND status = 'success' \
         ORDER BY created_at LIMIT 1",
    )
    .bind(build)
    .bind(BUILD_CREATE)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match row {
        Some(row) => row.try_get("actor")?,
        None => "unknown".to_owned(),
    })
}

/// The build service's audit outbox table.
pub const AUDIT_TABLE: &str = "build_audit_outbox";

/// The webhook outbox's payload columns.
const WEBHOOK_COLUMNS: &str = "action, status, app, actor, subject, message";

impl OutboxEvent {
    /// Reads a claimed row of the webhook outbox.
    pub fn from_row(row: &sqlx::any::AnyRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            action: row.try_get("action")?,
            status: row.try_get("status")?,
            app: row.try_get("app")?,
            actor: row.try_get("actor")?,
            subject: row.try_get("subject")?,
            message: row.try_get("message")?,
            at_micros: row.try_get("created_at")?,
        })
    }
}

impl Store {
    /// The webhook outbox (`build_outbox`), woken after each commit that
    /// wrote an event.
    pub fn webhook_outbox(&self) -> Outbox {
        Outbox::with_wake(
            self.db.clone(),
            "build_outbox",
            WEBHOOK_COLUMNS,
            self.outbox.clone(),
        )
    }

    /// The audit outbox (`build_audit_outbox`): one `build.create` row per
    /// build started, written with the build, and one `build.cancel` row
    /// per build a caller cancelled, written with its end.
    pub fn audit_outbox(&self) -> Outbox {
        Outbox::new(self.db.clone(), AUDIT_TABLE, audit::COLUMNS)
    }
}
