//! Apps: create, read, list and delete (refused while a promotion is in
//! flight), and the audit log every write appends to.

use slipway_domain::AppName;
use slipway_storage::{ErrorClass, classify, now_micros};
use sqlx::Row as _;

use super::rows::{PROMOTION_COLUMNS, app_from_row, promotion_from_row, time};
use super::webhooks::record_event;
use super::{OPEN_STATES, Store, app_not_found, audit, lock_app, retry};
use crate::error::{Error, Result};
use crate::model::{App, AuditEvent, PromotionRefusal};
use crate::webhooks::{APP_CREATE, Event};

impl Store {
    /// Creates an app.
    pub async fn create_app(&self, name: &AppName, deadline_secs: u32, actor: &str) -> Result<App> {
        retry(|| async {
            let mut tx = self.db.begin_write().await?;
            let now = now_micros();
            let inserted = sqlx::query(
                "INSERT INTO apps (name, created_at, deadline_secs) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(name.as_str())
            .bind(now)
            .bind(i64::from(deadline_secs))
            .fetch_one(&mut *tx)
            .await;
            if let Err(e) = &inserted
                && matches!(classify(e), ErrorClass::UniqueViolation(_))
            {
                return Err(Error::AlreadyExists(format!("app already exists: {name}")));
            }
            inserted?;
            audit(&mut tx, actor, "app.create", name.as_str(), "", &format!("deadline {deadline_secs}s")).await?;
            let event = Event::new(APP_CREATE, "success", name.as_str(), actor, name.as_str(), "", now);
            record_event(&mut tx, &event).await?;
            tx.commit().await?;
            self.wake_outbox();
            Ok(App {
                name: name.clone(),
                created: time(now),
                deadline_secs,
                active_release: None,
                open_promotion: None,
            })
        })
        .await
    }

    /// Reads an app and its open promotion.
    pub async fn get_app(&self, name: &AppName) -> Result<App> {
        let row = sqlx::query(
            "SELECT id, name, created_at, deadline_secs, active_release FROM apps \
             WHERE name = $1 AND deleted_at IS NULL",
        )
        .bind(name.as_str())
        .fetch_optional(&mut *self.db.acquire().await?)
        .await?
        .ok_or_else(|| app_not_found(name))?;
        let open = self.open_promotion(row.try_get("id")?).await?;
        app_from_row(&row, open)
    }

    /// Lists live apps by name.
    pub async fn list_apps(&self) -> Result<Vec<App>> {
        let mut conn = self.db.acquire().await?;
        let rows = sqlx::query(
            "SELECT id, name, created_at, deadline_secs, active_release FROM apps \
             WHERE deleted_at IS NULL ORDER BY name",
        )
        .fetch_all(&mut *conn)
        .await?;
        let open = sqlx::query(&format!(
            "SELECT {PROMOTION_COLUMNS}, p.app_id FROM promotions p JOIN apps a ON a.id = p.app_id \
             WHERE a.deleted_at IS NULL AND p.state IN {OPEN_STATES}"
        ))
        .fetch_all(&mut *conn)
        .await?;
        let mut open_by_app = std::collections::HashMap::new();
        for row in &open {
            open_by_app.insert(row.try_get::<i64, _>("app_id")?, promotion_from_row(row)?);
        }
        rows.iter()
            .map(|row| app_from_row(row, open_by_app.remove(&row.try_get::<i64, _>("id")?)))
            .collect()
    }

    /// Deletes an app (its ledger stays in the database, detached from the
    /// name, which can be reused). Refused while a promotion is in flight.
    pub async fn delete_app(&self, name: &AppName, actor: &str) -> Result<()> {
        retry(|| async {
            let mut tx = self.db.begin_write().await?;
            let app_id = lock_app(&mut tx, self.db.dialect.for_update(), name).await?;
            let open: i64 = sqlx::query(&format!(
                "SELECT COUNT(*) AS n FROM promotions WHERE app_id = $1 AND state IN {OPEN_STATES}"
            ))
            .bind(app_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
            if open > 0 {
                return Err(PromotionRefusal::AppUpdating.into());
            }
            sqlx::query("UPDATE apps SET deleted_at = $1 WHERE id = $2")
                .bind(now_micros())
                .bind(app_id)
                .execute(&mut *tx)
                .await?;
            audit(&mut tx, actor, "app.delete", name.as_str(), "", "").await?;
            tx.commit().await?;
            self.heads.lock().expect("heads lock").remove(name.as_str());
            Ok(())
        })
        .await
    }

    /// Lists audit events, newest first, for one app or all.
    pub async fn list_audit(&self, app: Option<&AppName>, limit: u32) -> Result<Vec<AuditEvent>> {
        let rows = match app {
            Some(app) => sqlx::query(
                "SELECT id, at, actor, action, app, subject, detail FROM audit_events \
                 WHERE app = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(app.as_str())
            .bind(i64::from(limit))
            .fetch_all(&mut *self.db.acquire().await?)
            .await?,
            None => sqlx::query(
                "SELECT id, at, actor, action, app, subject, detail FROM audit_events ORDER BY id DESC LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(&mut *self.db.acquire().await?)
            .await?,
        };
        rows.iter()
            .map(|row| {
                Ok(AuditEvent {
                    id: row.try_get("id")?,
                    at: time(row.try_get("at")?),
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    app: row.try_get("app")?,
                    subject: row.try_get("subject")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }
}
