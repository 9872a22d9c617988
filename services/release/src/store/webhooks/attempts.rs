//! Every attempt of a webhook delivery (`webhook_attempts`), for the
//! deliveries view, and the retention of the webhook outbox: finished
//! deliveries, their attempts and their events are pruned after
//! [`RETENTION`](slipway_storage::outbox::RETENTION) (7 days); pending
//! deliveries are never pruned (they end, delivered or given up, within the
//! retry window of a day first).

use std::collections::HashMap;

use slipway_storage::{now_micros, time};
use sqlx::{Any, Row as _, Transaction};

use crate::error::Result;
use crate::store::Store;
use crate::webhooks::DeliveryAttempt;

/// Attempts of each delivery the view shows, newest first.
const RECENT_ATTEMPTS: i64 = 10;

/// Appends attempt `number` of `delivery` in `tx`.
pub(super) async fn record(
    tx: &mut Transaction<'static, Any>,
    delivery: &str,
    number: i64,
    status: u16,
    error: &str,
    duration_ms: u32,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, number, at, status, error, duration_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (delivery_id, number) DO NOTHING",
    )
    .bind(delivery)
    .bind(number)
    .bind(now_micros())
    .bind(i64::from(status))
    .bind(error)
    .bind(i64::from(duration_ms))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What [`Store::prune_webhooks`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Attempts.
    pub attempts: u64,
    /// Finished deliveries.
    pub deliveries: u64,
    /// Events left without deliveries.
    pub events: u64,
}

impl Store {
    /// The recent attempts of each of `deliveries`, newest first.
    pub(super) async fn recent_attempts(
        &self,
        deliveries: &[String],
    ) -> Result<HashMap<String, Vec<DeliveryAttempt>>> {
        let mut found: HashMap<String, Vec<DeliveryAttempt>> = HashMap::new();
        for chunk in deliveries.chunks(200) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT delivery_id, number, at, status, error, duration_ms FROM webhook_attempts \
                 WHERE delivery_id IN ({}) ORDER BY delivery_id, number DESC",
                marks.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&mut *self.db.acquire().await?).await? {
                let delivery: String = row.try_get("delivery_id")?;
                let list = found.entry(delivery).or_default();
                if list.len() as i64 >= RECENT_ATTEMPTS {
                    continue;
                }
                list.push(DeliveryAttempt {
                    number: row.try_get::<i64, _>("number")? as u32,
                    at: time(row.try_get("at")?),
                    status: row.try_get::<i64, _>("status")? as u32,
                    error: row.try_get("error")?,
                    duration_ms: row.try_get::<i64, _>("duration_ms")? as u32,
                });
            }
        }
        Ok(found)
    }

    /// Deletes attempts made before `cutoff` (microseconds), deliveries
    /// that finished (delivered, given up or cancelled) before it, and
    /// events written before it that no delivery refers to any more.
    /// Pending deliveries and their events stay, however old.
    pub async fn prune_webhooks(&self, cutoff: i64) -> Result<Pruned> {
        let attempts = sqlx::query("DELETE FROM webhook_attempts WHERE at < $1")
            .bind(cutoff)
            .execute(&mut *self.db.acquire().await?)
            .await?
            .rows_affected();
        let deliveries = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE state <> 'pending' AND updated_at < $1",
        )
        .bind(cutoff)
        .execute(&mut *self.db.acquire().await?)
        .await?
        .rows_affected();
        let events = sqlx::query(
            "DELETE FROM webhook_events WHERE created_at < $1 AND NOT EXISTS \
             (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = webhook_events.id)",
        )
        .bind(cutoff)
        .execute(&mut *self.db.acquire().await?)
        .await?
        .rows_affected();
        Ok(Pruned {
            attempts,
            deliveries,
            events,
        })
    }
}
