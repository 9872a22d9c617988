//! Promotions: recording one after `model::check_promotion` allowed it on
//! the facts read under the app row's lock, its hand-over, its outcome, and
//! reading them back.

use std::time::Duration;

use slipway_domain::{AppName, PromotionId, PromotionState, ReleaseId};
use slipway_storage::{ErrorClass, classify, now_micros};
use sqlx::{Any, Row as _, Transaction};

use super::rows::{PROMOTION_COLUMNS, promotion_from_row, time};
use super::webhooks::record_event;
use super::{OPEN_STATES, Store, app_id, app_not_found, audit, retry};
use crate::error::{Error, Result};
use crate::model::{
    Promotion, PromotionFacts, PromotionRefusal, PromotionVerdict, Release, check_promotion,
};
use crate::webhooks::{Event, RELEASE_PROMOTE, promotion_end};

/// Options of a promotion request.
#[derive(Clone, Debug)]
pub struct PromoteOptions {
    /// Allow promoting a release older than the active one.
    pub force: bool,
    /// Rollout deadline; `None` takes the app's.
    pub deadline_secs: Option<u32>,
}

/// What asking for a promotion led to.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one value per promotion request; boxing buys nothing
pub enum PromotionStart {
    /// A promotion was recorded (pending) and must be handed to the rollout
    /// service with these specs.
    Started {
        /// The new promotion.
        promotion: Promotion,
        /// The release to roll out.
        target: Release,
        /// The last known good release, to return to on failure.
        fallback: Option<Release>,
    },
    /// The release is already active; nothing was recorded.
    AlreadyActive(Release),
}

impl Store {
    /// Records a pending promotion of `release` when the release belongs to
    /// the app and [`check_promotion`] allows it on the facts read here,
    /// under the app row's lock (the checks that need no runtime).
    pub async fn start_promotion(
        &self,
        app: &AppName,
        release: &ReleaseId,
        options: &PromoteOptions,
        actor: &str,
    ) -> Result<PromotionStart> {
        retry(|| async {
            let mut tx = self.db.begin_write().await?;
            let row = sqlx::query(&format!(
                "SELECT id, deadline_secs, active_release, active_seq FROM apps \
                 WHERE name = $1 AND deleted_at IS NULL{}",
                self.db.dialect.for_update()
            ))
            .bind(app.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| app_not_found(app))?;
            let app_id: i64 = row.try_get("id")?;
            let app_deadline: i64 = row.try_get("deadline_secs")?;
            let active: Option<String> = row.try_get("active_release")?;
            let active_seq: Option<i64> = row.try_get("active_seq")?;
            let target = self.release_by_id(&mut tx, app, app_id, release).await?;
            let open: i64 = sqlx::query(&format!(
                "SELECT COUNT(*) AS n FROM promotions WHERE app_id = $1 AND state IN {OPEN_STATES}"
            ))
            .bind(app_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
            let facts = PromotionFacts {
                target: &target,
                active_release: active.as_deref(),
                active_seq,
                promotion_open: open > 0,
                force: options.force,
            };
            if check_promotion(&facts)? == PromotionVerdict::AlreadyActive {
                return Ok(PromotionStart::AlreadyActive(target));
            }
            let fallback = match &active {
                Some(id) => {
                    let id = ReleaseId::parse(id).map_err(|e| Error::InvalidArgument(e.to_string()))?;
                    Some(self.release_by_id(&mut tx, app, app_id, &id).await?)
                }
                None => None,
            };
            let deadline_secs = options.deadline_secs.unwrap_or(app_deadline as u32);
            let now = now_micros();
            let promotion = Promotion {
                id: PromotionId::generate(),
                app: app.clone(),
                release: target.id.clone(),
                fallback_release: fallback.as_ref().map(|f| f.id.clone()),
                state: PromotionState::Pending,
                reason: String::new(),
                deadline_secs,
                lease_epoch: 0,
                actor: actor.to_owned(),
                created: time(now),
                finished: None,
            };
            let inserted = sqlx::query(
                "INSERT INTO promotions (id, app_id, release_id, fallback_release, state, deadline_secs, \
                 actor, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
            )
            .bind(promotion.id.as_str())
            .bind(app_id)
            .bind(promotion.release.as_str())
            .bind(promotion.fallback_release.as_ref().map(|f| f.as_str().to_owned()))
            .bind(PromotionState::Pending.as_str())
            .bind(i64::from(deadline_secs))
            .bind(actor)
            .bind(now)
            .execute(&mut *tx)
            .await;
            if let Err(e) = &inserted
                && matches!(classify(e), ErrorClass::UniqueViolation(_))
            {
                return Err(PromotionRefusal::AppUpdating.into());
            }
            inserted?;
            let detail = format!("release {}, deadline {deadline_secs}s", target.id);
            audit(&mut tx, actor, "release.promote", app.as_str(), promotion.id.as_str(), &detail).await?;
            let message = format!("promotion {}", promotion.id);
            let event = Event::new(RELEASE_PROMOTE, "success", app.as_str(), actor, target.id.as_str(), &message, now);
            record_event(&mut tx, &event).await?;
            super::idempotency::record(&mut tx, super::idempotency::PROMOTION, promotion.id.as_str()).await?;
            tx.commit().await?;
            self.wake_outbox();
            Ok(PromotionStart::Started { promotion, target, fallback })
        })
        .await
    }

    /// Moves a pending promotion to rolling out. Returns false when it had
    /// already left `pending` (cancelled, or completed by a fast rollout).
    pub async fn mark_rolling_out(&self, promotion: &PromotionId) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE promotions SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4",
        )
        .bind(PromotionState::RollingOut.as_str())
        .bind(now_micros())
        .bind(promotion.as_str())
        .bind(PromotionState::Pending.as_str())
        .execute(&mut *self.db.acquire().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves a promotion to a terminal state. Idempotent for a repeated
    /// report of the same outcome; a report from an older rollout lease than
    /// one already seen is refused (fencing). A success makes the release
    /// active.
    pub async fn finish_promotion(
        &self,
        promotion: &PromotionId,
        outcome: PromotionState,
        reason: &str,
        lease_epoch: u64,
        actor: &str,
    ) -> Result<Promotion> {
        self.end_promotion(promotion, outcome, reason, lease_epoch, actor, None)
            .await
    }

    /// Records that `actor` asked to cancel a rolling-out promotion (the
    /// rollout service is told next, reverts and reports ROLLED_BACK; that
    /// end is announced as `app:promote:cancelled` by `actor`), with its
    /// audit record. The first request is kept; false when the promotion
    /// was no longer rolling out or a cancel was requested before.
    pub async fn request_cancel(&self, promotion: &Promotion, actor: &str) -> Result<bool> {
        retry(|| async {
            let mut tx = self.db.begin_write().await?;
            let done = sqlx::query(
                "UPDATE promotions SET cancelled_by = $1, updated_at = $2 \
                 WHERE id = $3 AND state = $4 AND cancelled_by IS NULL",
            )
            .bind(actor)
            .bind(now_micros())
            .bind(promotion.id.as_str())
            .bind(PromotionState::RollingOut.as_str())
            .execute(&mut *tx)
            .await?;
            let fresh = done.rows_affected() == 1;
            if fresh {
                let detail = format!("release {}, while rolling out", promotion.release);
                audit(
                    &mut tx,
                    actor,
                    "promotion.cancel",
                    promotion.app.as_str(),
                    promotion.id.as_str(),
                    &detail,
                )
                .await?;
            }
            tx.commit().await?;
            Ok(fresh)
        })
        .await
    }

    /// [`Store::finish_promotion`], told by the rollout whether its end
    /// was a cancel (`cancelled`; `None`: a rollout that does not say, and
    /// a cancel requested while rolling out that ends rolled back counts).
    /// A cancelled end that is not a success is announced as
    /// `app:promote:cancelled` by whoever cancelled, whatever the state it
    /// leaves (a reverted rollout stays `rolled_back`).
    pub async fn end_promotion(
        &self,
        promotion: &PromotionId,
        outcome: PromotionState,
        reason: &str,
        lease_epoch: u64,
        actor: &str,
        cancelled: Option<bool>,
    ) -> Result<Promotion> {
        retry(|| async {
            let mut tx = self.db.begin_write().await?;
            let mut current = self.promotion_in(&mut tx, promotion, true).await?;
            if current.lease_epoch > lease_epoch {
                return Err(Error::FailedPrecondition(format!(
                    "stale report for promotion {promotion}: lease epoch {lease_epoch} < {}",
                    current.lease_epoch
                )));
            }
            if current.state == outcome {
                return Ok(current);
            }
            // A rollout may finish before its start was acknowledged.
            let from = if current.state == PromotionState::Pending
                && outcome != PromotionState::Cancelled
            {
                PromotionState::RollingOut
            } else {
                current.state
            };
            from.transition(outcome)
                .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
            let now = now_micros();
            sqlx::query(
                "UPDATE promotions SET state = $1, reason = $2, lease_epoch = $3, updated_at = $4, \
                 finished_at = $4 WHERE id = $5",
            )
            .bind(outcome.as_str())
            .bind(reason)
            .bind(lease_epoch as i64)
            .bind(now)
            .bind(promotion.as_str())
            .execute(&mut *tx)
            .await?;
            if outcome == PromotionState::Succeeded {
                sqlx::query(
                    "UPDATE apps SET active_release = $1, \
                     active_seq = (SELECT seq FROM releases WHERE id = $1) \
                     WHERE id = (SELECT app_id FROM promotions WHERE id = $2)",
                )
                .bind(current.release.as_str())
                .bind(promotion.as_str())
                .execute(&mut *tx)
                .await?;
            }
            let detail = if reason.is_empty() {
                outcome.as_str().to_owned()
            } else {
                format!("{}: {reason}", outcome.as_str())
            };
            audit(
                &mut tx,
                actor,
                "promotion.finish",
                current.app.as_str(),
                promotion.as_str(),
                &detail,
            )
            .await?;
            // Exactly one end event per promotion: a repeated report of the
            // same outcome returned above, another outcome is refused by
            // `transition`.
            let cancelled_by: Option<String> =
                sqlx::query("SELECT cancelled_by FROM promotions WHERE id = $1")
                    .bind(promotion.as_str())
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("cancelled_by")?;
            let was_cancel = outcome != PromotionState::Succeeded
                && outcome != PromotionState::Cancelled
                && cancelled
                    .unwrap_or(cancelled_by.is_some() && outcome == PromotionState::RolledBack);
            let end = if was_cancel {
                promotion_end(PromotionState::Cancelled, reason)
            } else {
                promotion_end(outcome, reason)
            };
            if let Some((action, status, message)) = end {
                // Who promoted, except for a cancel: who cancelled (a
                // rollout's report of a cancel names who asked for it).
                let by = if outcome == PromotionState::Cancelled {
                    cancelled_by.as_deref().unwrap_or(actor)
                } else if was_cancel {
                    cancelled_by.as_deref().unwrap_or(current.actor.as_str())
                } else {
                    current.actor.as_str()
                };
                let event = Event::new(
                    action,
                    status,
                    current.app.as_str(),
                    by,
                    current.release.as_str(),
                    &message,
                    now,
                );
                record_event(&mut tx, &event).await?;
            }
            tx.commit().await?;
            self.wake_outbox();
            current.state = outcome;
            current.reason = reason.to_owned();
            current.lease_epoch = lease_epoch;
            current.finished = Some(time(now));
            Ok(current)
        })
        .await
    }

    /// Reads a promotion.
    pub async fn get_promotion(&self, id: &PromotionId) -> Result<Promotion> {
        let mut conn = self.db.acquire().await?;
        let row = sqlx::query(&format!(
            "SELECT {PROMOTION_COLUMNS} FROM promotions p JOIN apps a ON a.id = p.app_id WHERE p.id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("promotion not found: {id}")))?;
        promotion_from_row(&row)
    }

    /// Lists an app's promotions, newest first.
    pub async fn list_promotions(&self, app: &AppName, limit: u32) -> Result<Vec<Promotion>> {
        let mut conn = self.db.acquire().await?;
        let app_id = app_id(&mut conn, app).await?;
        let rows = sqlx::query(&format!(
            "SELECT {PROMOTION_COLUMNS} FROM promotions p JOIN apps a ON a.id = p.app_id \
             WHERE p.app_id = $1 ORDER BY p.created_at DESC, p.id DESC LIMIT $2"
        ))
        .bind(app_id)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(promotion_from_row).collect()
    }

    /// Promotions still pending after `age`: their hand-over to the rollout
    /// service may have been lost (a crash between recording and starting).
    pub async fn stale_pending_promotions(&self, age: Duration) -> Result<Vec<Promotion>> {
        let cutoff = now_micros() - age.as_micros() as i64;
        let rows = sqlx::query(&format!(
            "SELECT {PROMOTION_COLUMNS} FROM promotions p JOIN apps a ON a.id = p.app_id \
             WHERE p.state = $1 AND p.updated_at < $2 ORDER BY p.created_at"
        ))
        .bind(PromotionState::Pending.as_str())
        .bind(cutoff)
        .fetch_all(&mut *self.db.acquire().await?)
        .await?;
        rows.iter().map(promotion_from_row).collect()
    }

    /// Reads the specs a pending promotion needs to be (re)started.
    pub async fn promotion_specs(
        &self,
        promotion: &Promotion,
    ) -> Result<(Release, Option<Release>)> {
        let target = self
            .get_release(&promotion.app, Some(&promotion.release))
            .await?;
        let fallback = match &promotion.fallback_release {
            Some(id) => Some(self.get_release(&promotion.app, Some(id)).await?),
            None => None,
        };
        Ok((target, fallback))
    }

    pub(super) async fn open_promotion(&self, app_id: i64) -> Result<Option<Promotion>> {
        let row = sqlx::query(&format!(
            "SELECT {PROMOTION_COLUMNS} FROM promotions p JOIN apps a ON a.id = p.app_id \
             WHERE p.app_id = $1 AND p.state IN {OPEN_STATES}"
        ))
        .bind(app_id)
        .fetch_optional(&mut *self.db.acquire().await?)
        .await?;
        row.as_ref().map(promotion_from_row).transpose()
    }

    async fn promotion_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        id: &PromotionId,
        lock: bool,
    ) -> Result<Promotion> {
        let suffix = if lock {
            self.db.dialect.for_update()
        } else {
            ""
        };
        let lock_clause = if suffix.is_empty() {
            String::new()
        } else {
            format!("{suffix} OF p")
        };
        let row = sqlx::query(&format!(
            "SELECT {PROMOTION_COLUMNS} FROM promotions p JOIN apps a ON a.id = p.app_id WHERE p.id = $1{lock_clause}"
        ))
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("promotion not found: {id}")))?;
        promotion_from_row(&row)
    }
}
