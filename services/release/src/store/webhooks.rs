//! Webhooks' storage: receivers and signing keys (sealed at rest), and the
//! outbox. [`record_event`] writes an event and one delivery per matching
//! receiver inside the caller's transaction (the one recording what the
//! event announces); the dispatchers claim due deliveries under a lease
//! (`next_attempt_at` moved past the attempt's timeout, plus a claim token
//! every later write must match) and record each result under that claim.

use slipway_domain::AppName;
use slipway_storage::now_micros;
use sqlx::{Any, Row as _, Transaction};

use super::rows::time;
use super::{Store, app_id, audit, retry};
use crate::error::{Error, Result};
use crate::webhooks::url::WebhookUrl;
use crate::webhooks::{ACTIONS, Delivery, Event, KeyInfo, MAX_KEYS, Webhook, hex, new_id};

/// The fan-out of event `$1` (app `$3`, at `$2`): one pending delivery per
/// live receiver of its app and action (`$4` is `%,<action>,%`). The
/// delivery id, `<event>-<webhook>`, is the same however often it is sent.
const FAN_OUT: &str = "INSERT INTO webhook_deliveries \
     (id, event_id, webhook_id, state, next_attempt_at, created_at, updated_at) \
     SELECT CAST($1 AS TEXT) || '-' || w.id, $1, w.id, 'pending', $2, $2, $2 FROM webhooks w \
     WHERE w.deleted_at IS NULL AND (w.app = '' OR w.app = $3) AND (w.events = '' OR w.events LIKE $4)";

mod attempts;

/// A delivery claimed for one attempt.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The delivery id.
    pub delivery: String,
    /// The receiver.
    pub webhook: String,
    /// Attempts recorded before this one.
    pub attempts: u32,
    /// When the delivery was written, microseconds.
    pub created_micros: i64,
    /// What to send.
    pub event: Event,
}

/// The result of an attempt, to record.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    /// `delivered`, `pending` (retry at `next_attempt_micros`) or `failed`.
    pub state: &'static str,
    /// HTTP status, 0 when none.
    pub status: u16,
    /// Why it failed; empty when delivered.
    pub error: String,
    /// When to try again (pending only).
    pub next_attempt_micros: i64,
    /// How long the attempt took.
    pub duration_ms: u32,
}

/// Writes `event` and its deliveries in `tx`. Returns how many receivers
/// will get it.
pub(super) async fn record_event(tx: &mut Transaction<'static, Any>, event: &Event) -> Result<u64> {
    sqlx::query(
        "INSERT INTO webhook_events (id, action, status, app, actor, subject, message, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&event.id)
    .bind(&event.action)
    .bind(&event.status)
    .bind(&event.app)
    .bind(&event.actor)
    .bind(&event.subject)
    .bind(&event.message)
    .bind(event.at_micros)
    .execute(&mut **tx)
    .await?;
    fan_out(tx, event).await
}

async fn fan_out(tx: &mut Transaction<'static, Any>, event: &Event) -> Result<u64> {
    let done = sqlx::query(FAN_OUT)
        .bind(&event.id)
        .bind(event.at_micros)
        .bind(&event.app)
        .bind(format!("%,{},%", event.action))
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected())
}

impl Store {
    /// Wakes this replica's dispatcher: an event was just committed.
    pub(super) fn wake_outbox(&self) {
        self.outbox.notify_one();
    }

    /// What the dispatcher waits on besides its poll interval.
    pub fn outbox_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.outbox.clone()
    }

    /// Records an event another service wrote into its own outbox. Returns
    /// false when an event with its id was recorded before (nothing done).
    pub async fn publish_event(&self, event: &Event) -> Result<bool> {
        let fresh = retry(|| async {
            let mut tx = self.db.begin_write().await?;
            let inserted = sqlx::query(
                "INSERT INTO webhook_events (id, action, status, app, actor, subject, message, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&event.id)
            .bind(&event.action)
            .bind(&event.status)
            .bind(&event.app)
            .bind(&event.actor)
            .bind(&event.subject)
            .bind(&event.message)
            .bind(event.at_micros)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Ok::<_, Error>(false);
            }
            fan_out(&mut tx, event).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await?;
        if fresh {
            self.wake_outbox();
        }
        Ok(fresh)
    }

    /// Adds a receiver; when no signing key exists yet, generates one in
    /// the same transaction and returns it (to be shown once).
    pub async fn create_webhook(
        &self,
        url: &WebhookUrl,
        app: Option<&AppName>,
        events: &[String],
        actor: &str,
    ) -> Result<(Webhook, Option<(KeyInfo, String)>)> {
        for event in events {
            if !ACTIONS.contains(&event.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "unknown event {event:?}: use {}",
                    ACTIONS.join(", ")
                )));
            }
        }
        let mut events: Vec<String> = events.to_vec();
        events.sort();
        events.dedup();
        if let Some(app) = app {
            let mut conn = self.db.acquire().await?;
            app_id(&mut conn, app).await?;
        }
        retry(|| async {
            let mut tx = self.db.begin_write().await?;
            let id = new_id('W');
            let now = now_micros();
            let sealed = self
                .cipher
                .seal_secret(&format!("webhook-url:{id}"), url.expose().as_bytes());
            let stored_events = if events.is_empty() {
                String::new()
            } else {
                format!(",{},", events.join(","))
            };
            let app_text = app.map(|a| a.as_str().to_owned()).unwrap_or_default();
            sqlx::query(
                "INSERT INTO webhooks (id, url_sealed, url_display, app, events, actor, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&id)
            .bind(sealed)
            .bind(url.display())
            .bind(&app_text)
            .bind(&stored_events)
            .bind(actor)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let keys: i64 = sqlx::query("SELECT COUNT(*) AS n FROM webhook_keys WHERE deleted_at IS NULL")
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
            let generated = if keys == 0 {
                Some(self.insert_key(&mut tx, actor).await?)
            } else {
                None
            };
            let detail = if events.is_empty() {
                format!("{} (all events)", url.display())
            } else {
                format!("{} ({})", url.display(), events.join(","))
            };
            audit(&mut tx, actor, "webhook.create", &app_text, &id, &detail).await?;
            tx.commit().await?;
            let webhook = Webhook {
                id,
                url_display: url.display(),
                app: app.map(|a| a.as_str().to_owned()),
                events: events.clone(),
                actor: actor.to_owned(),
                created: time(now),
            };
            Ok((webhook, generated))
        })
        .await
    }

    /// Every live receiver, oldest first.
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        let rows = sqlx::query(
            "SELECT id, url_display, app, events, actor, created_at FROM webhooks \
             WHERE deleted_at IS NULL ORDER BY created_at, id",
        )
        .fetch_all(&mut *self.db.acquire().await?)
        .await?;
        rows.iter()
            .map(|row| {
                let app: String = row.try_get("app")?;
                let events: String = row.try_get("events")?;
                Ok(Webhook {
                    id: row.try_get("id")?,
                    url_display: row.try_get("url_display")?,
                    app: (!app.is_empty()).then_some(app),
                    events: events
                        .split(',')
                        .filter(|e| !e.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    actor: row.try_get("actor")?,
                    created: time(row.try_get("created_at")?),
                })
            })
            .collect()
    }

    /// Removes a receiver and cancels its pending deliveries.
    pub async fn delete_webhook(&self, id: &str, actor: &str) -> Result<()> {
        retry(|| async {
            let mut tx = self.db.begin_write().await?;
            let now = now_micros();
            let row = sqlx::query(
                "UPDATE webhooks SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL RETURNING app, url_display",
            )
            .bind(now)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::NotFound(format!("webhook not found: {id}")))?;
            sqlx::query(
                "UPDATE webhook_deliveries SET state = 'cancelled', claim = '', updated_at = $1 \
                 WHERE webhook_id = $2 AND state = 'pending'",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let app: String = row.try_get("app")?;
            let shown: String = row.try_get("url_display")?;
            audit(&mut tx, actor, "webhook.delete", &app, id, &shown).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Generates a signing key (refused when [`MAX_KEYS`] are active).
    pub async fn create_webhook_key(&self, actor: &str) -> Result<(KeyInfo, String)> {
        retry(|| async {
            let mut tx = self.db.begin_write().await?;
            let keys: i64 = sqlx::query("SELECT COUNT(*) AS n FROM webhook_keys WHERE deleted_at IS NULL")
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
            if keys >= MAX_KEYS as i64 {
                return Err(Error::FailedPrecondition(format!(
                    "{MAX_KEYS} signing keys are active already (the most a rotation uses); remove one first"
                )));
            }
            let generated = self.insert_key(&mut tx, actor).await?;
            tx.commit().await?;
            Ok(generated)
        })
        .await
    }

    async fn insert_key(
        &self,
        tx: &mut Transaction<'static, Any>,
        actor: &str,
    ) -> Result<(KeyInfo, String)> {
        use base64::Engine as _;
        use sha2::Digest as _;
        let id = new_id('K');
        let bytes: [u8; 32] = rand::random();
        let secret = format!(
            "slwhk_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let fingerprint = hex(&sha2::Sha256::digest(secret.as_bytes())[..8]);
        let now = now_micros();
        let sealed = self
            .cipher
            .seal_secret(&format!("webhook-key:{id}"), secret.as_bytes());
        sqlx::query(
            "INSERT INTO webhook_keys (id, key_sealed, fingerprint, actor, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(sealed)
        .bind(&fingerprint)
        .bind(actor)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        audit(
            tx,
            actor,
            "webhook.key.create",
            "",
            &id,
            &format!("fingerprint {fingerprint}"),
        )
        .await?;
        Ok((
            KeyInfo {
                id,
                fingerprint,
                actor: actor.to_owned(),
                created: time(now),
            },
            secret,
        ))
    }

    /// The active keys, oldest first, without the keys.
    pub async fn list_webhook_keys(&self) -> Result<Vec<KeyInfo>> {
        let rows = sqlx::query(
            "SELECT id, fingerprint, actor, created_at FROM webhook_keys WHERE deleted_at IS NULL \
             ORDER BY created_at, id",
        )
        .fetch_all(&mut *self.db.acquire().await?)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(KeyInfo {
                    id: row.try_get("id")?,
                    fingerprint: row.try_get("fingerprint")?,
                    actor: row.try_get("actor")?,
                    created: time(row.try_get("created_at")?),
                })
            })
            .collect()
    }

    /// Removes a key.
    pub async fn delete_webhook_key(&self, id: &str, actor: &str) -> Result<()> {
        retry(|| async {
            let mut tx = self.db.begin_write().await?;
            // Nothing is ever sent unsigned: the last key stays while any
            // receiver does (rotate by adding a key first).
            let keys: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM webhook_keys WHERE deleted_at IS NULL")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
            let hooks: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM webhooks WHERE deleted_at IS NULL")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
            if keys <= 1 && hooks > 0 {
                return Err(Error::FailedPrecondition(
                    "this is the last signing key and webhooks exist: add a key first \
                     (deliveries are never sent unsigned)"
                        .into(),
                ));
            }
            let done = sqlx::query(
                "UPDATE webhook_keys SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL",
            )
            .bind(now_micros())
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(Error::NotFound(format!("webhook key not found: {id}")));
            }
            audit(&mut tx, actor, "webhook.key.delete", "", id, "").await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// The active keys themselves, oldest first: for signing only.
    pub async fn signing_keys(&self) -> Result<Vec<Vec<u8>>> {
        let rows = sqlx::query(
            "SELECT id, key_sealed FROM webhook_keys WHERE deleted_at IS NULL ORDER BY created_at, id LIMIT $1",
        )
        .bind(MAX_KEYS as i64)
        .fetch_all(&mut *self.db.acquire().await?)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let sealed: Vec<u8> = row.try_get("key_sealed")?;
                Ok(self
                    .cipher
                    .open_secret(&format!("webhook-key:{id}"), &sealed)?)
            })
            .collect()
    }

    /// A receiver's URL, opened; `None` when it was removed.
    pub async fn webhook_url(&self, id: &str) -> Result<Option<WebhookUrl>> {
        let row =
            sqlx::query("SELECT url_sealed FROM webhooks WHERE id = $1 AND deleted_at IS NULL")
                .bind(id)
                .fetch_optional(&mut *self.db.acquire().await?)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let sealed: Vec<u8> = row.try_get("url_sealed")?;
        let text = self
            .cipher
            .open_secret(&format!("webhook-url:{id}"), &sealed)?;
        let text = String::from_utf8(text).map_err(|_| {
            Error::Store(sqlx::Error::Decode(
                "stored webhook URL is not UTF-8".into(),
            ))
        })?;
        WebhookUrl::parse(&text)
            .map(Some)
            .map_err(|e| Error::Store(sqlx::Error::Decode(e.into())))
    }

    /// Claims due deliveries for one attempt each: at most `per_webhook`
    /// per receiver and `limit` in all, none of the receivers in `busy`.
    /// A claimed row is not due again before `lease_until`.
    pub async fn claim_deliveries(
        &self,
        token: &str,
        lease_until: i64,
        per_webhook: usize,
        limit: usize,
        busy: &[String],
    ) -> Result<Vec<Claimed>> {
        let now = now_micros();
        let busy_clause = if busy.is_empty() {
            String::new()
        } else {
            let marks: Vec<String> = (0..busy.len()).map(|i| format!("${}", i + 6)).collect();
            format!(" AND webhook_id NOT IN ({})", marks.join(", "))
        };
        let sql = format!(
            "UPDATE webhook_deliveries SET claim = $1, next_attempt_at = $2, updated_at = $3 \
             WHERE state = 'pending' AND next_attempt_at <= $3 AND id IN ( \
                 SELECT id FROM ( \
                     SELECT id, next_attempt_at, ROW_NUMBER() OVER \
                         (PARTITION BY webhook_id ORDER BY next_attempt_at, id) AS rn \
                     FROM webhook_deliveries \
                     WHERE state = 'pending' AND next_attempt_at <= $3{busy_clause} \
                 ) ranked WHERE rn <= $4 ORDER BY next_attempt_at LIMIT $5) \
             RETURNING id, webhook_id, event_id, attempts, created_at"
        );
        let mut query = sqlx::query(&sql)
            .bind(token)
            .bind(lease_until)
            .bind(now)
            .bind(per_webhook as i64)
            .bind(limit as i64);
        for id in busy {
            query = query.bind(id);
        }
        let mut conn = self.db.acquire().await?;
        let rows = query.fetch_all(&mut *conn).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut claimed = Vec::with_capacity(rows.len());
        let mut event_ids: Vec<String> = Vec::new();
        for row in &rows {
            let event: String = row.try_get("event_id")?;
            if !event_ids.contains(&event) {
                event_ids.push(event);
            }
        }
        let marks: Vec<String> = (1..=event_ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT id, action, status, app, actor, subject, message, created_at FROM webhook_events \
             WHERE id IN ({})",
            marks.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for id in &event_ids {
            query = query.bind(id);
        }
        let mut events = std::collections::HashMap::new();
        for row in query.fetch_all(&mut *conn).await? {
            let event = Event {
                id: row.try_get("id")?,
                action: row.try_get("action")?,
                status: row.try_get("status")?,
                app: row.try_get("app")?,
                actor: row.try_get("actor")?,
                subject: row.try_get("subject")?,
                message: row.try_get("message")?,
                at_micros: row.try_get("created_at")?,
            };
            events.insert(event.id.clone(), event);
        }
        for row in &rows {
            let event_id: String = row.try_get("event_id")?;
            let Some(event) = events.get(&event_id) else {
                continue;
            };
            claimed.push(Claimed {
                delivery: row.try_get("id")?,
                webhook: row.try_get("webhook_id")?,
                attempts: row.try_get::<i64, _>("attempts")? as u32,
                created_micros: row.try_get("created_at")?,
                event: event.clone(),
            });
        }
        Ok(claimed)
    }

    /// Records an attempt's result, if the claim still holds. Returns false
    /// when it did not (the lease ran out and another worker took over, or
    /// the receiver was removed).
    pub async fn record_attempt(
        &self,
        delivery: &str,
        token: &str,
        record: &AttemptRecord,
    ) -> Result<bool> {
        let now = now_micros();
        let delivered = (record.state == "delivered").then_some(now);
        let mut tx = self.db.begin_write().await?;
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, last_status = $2, \
             last_error = $3, next_attempt_at = $4, claim = '', updated_at = $5, delivered_at = $6 \
             WHERE id = $7 AND claim = $8 AND state = 'pending' RETURNING attempts",
        )
        .bind(record.state)
        .bind(i64::from(record.status))
        .bind(&record.error)
        .bind(record.next_attempt_micros)
        .bind(now)
        .bind(delivered)
        .bind(delivery)
        .bind(token)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = done else {
            return Ok(false);
        };
        let number: i64 = row.try_get("attempts")?;
        attempts::record(
            &mut tx,
            delivery,
            number,
            record.status,
            &record.error,
            record.duration_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// When the earliest pending delivery falls due, if any.
    pub async fn next_delivery_due(&self) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MIN(next_attempt_at) AS t FROM webhook_deliveries WHERE state = 'pending'",
        )
        .fetch_one(&mut *self.db.acquire().await?)
        .await?;
        Ok(row.try_get::<Option<i64>, _>("t")?)
    }

    /// Recent deliveries, newest first.
    pub async fn list_deliveries(
        &self,
        webhook: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        let columns = "d.id, d.webhook_id, e.action, e.app, d.state, d.attempts, d.last_status, \
                       d.last_error, d.created_at, d.next_attempt_at, d.delivered_at";
        let rows = match webhook {
            Some(w) => sqlx::query(&format!(
                "SELECT {columns} FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id \
                 WHERE d.webhook_id = $1 ORDER BY d.created_at DESC, d.id DESC LIMIT $2"
            ))
            .bind(w)
            .bind(i64::from(limit))
            .fetch_all(&mut *self.db.acquire().await?)
            .await?,
            None => sqlx::query(&format!(
                "SELECT {columns} FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id \
                 ORDER BY d.created_at DESC, d.id DESC LIMIT $1"
            ))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.db.acquire().await?)
            .await?,
        };
        let ids = rows
            .iter()
            .map(|row| row.try_get::<String, _>("id"))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut recent = self.recent_attempts(&ids).await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                let delivered: Option<i64> = row.try_get("delivered_at")?;
                let id: String = row.try_get("id")?;
                Ok(Delivery {
                    recent_attempts: recent.remove(&id).unwrap_or_default(),
                    id,
                    webhook: row.try_get("webhook_id")?,
                    action: row.try_get("action")?,
                    app: row.try_get("app")?,
                    next_attempt: (state == "pending")
                        .then(|| row.try_get::<i64, _>("next_attempt_at"))
                        .transpose()?
                        .map(time),
                    state,
                    attempts: row.try_get::<i64, _>("attempts")? as u32,
                    last_status: row.try_get::<i64, _>("last_status")? as u32,
                    last_error: row.try_get("last_error")?,
                    created: time(row.try_get("created_at")?),
                    delivered: delivered.map(time),
                })
            })
            .collect()
    }
}
