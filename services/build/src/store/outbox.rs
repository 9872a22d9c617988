//! The build service's webhook outbox (`build_outbox`): `build:create`
//! events written in the transaction that records a build's start or its
//! failure, claimed under a lease by the relay (`crate::webhooks`) and
//! marked published once the release service has recorded them.

use slipway_storage::now_micros;
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

/// Writes a `build:create` event in `tx`.
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
    Ok(())
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

impl Store {
    /// What the relay waits on besides its poll interval.
    pub fn outbox_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.outbox.clone()
    }

    /// Claims up to `limit` due events; none of them is due again before
    /// `lease_until` unless recorded.
    pub async fn claim_outbox(
        &self,
        token: &str,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>> {
        let now = now_micros();
        let rows = sqlx::query(
            "UPDATE build_outbox SET claim = $1, next_attempt_at = $2 \
             WHERE published_at IS NULL AND next_attempt_at <= $3 AND id IN ( \
                 SELECT id FROM build_outbox WHERE published_at IS NULL AND next_attempt_at <= $3 \
                 ORDER BY next_attempt_at LIMIT $4) \
             RETURNING id, action, status, app, actor, subject, message, created_at",
        )
        .bind(token)
        .bind(lease_until)
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(OutboxEvent {
                    id: row.try_get("id")?,
                    action: row.try_get("action")?,
                    status: row.try_get("status")?,
                    app: row.try_get("app")?,
                    actor: row.try_get("actor")?,
                    subject: row.try_get("subject")?,
                    message: row.try_get("message")?,
                    at_micros: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Marks a claimed event published.
    pub async fn outbox_published(&self, id: &str, token: &str) -> Result<()> {
        sqlx::query(
            "UPDATE build_outbox SET published_at = $1, claim = '', attempts = attempts + 1 \
             WHERE id = $2 AND claim = $3",
        )
        .bind(now_micros())
        .bind(id)
        .bind(token)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Records a failed relay of a claimed event; it is due again at `retry_at`.
    pub async fn outbox_failed(
        &self,
        id: &str,
        token: &str,
        error: &str,
        retry_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE build_outbox SET next_attempt_at = $1, claim = '', attempts = attempts + 1, last_error = $2 \
             WHERE id = $3 AND claim = $4",
        )
        .bind(retry_at)
        .bind(error)
        .bind(id)
        .bind(token)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// When the earliest unpublished event falls due, if any.
    pub async fn outbox_next_due(&self) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MIN(next_attempt_at) AS t FROM build_outbox WHERE published_at IS NULL",
        )
        .fetch_one(&self.db.pool)
        .await?;
        Ok(row.try_get::<Option<i64>, _>("t")?)
    }
}
