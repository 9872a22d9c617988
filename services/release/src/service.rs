//! The release service's operations: the ledger (through `Store`) plus the
//! promotion life cycle, which spans the database and the rollout service.
//! `grpc.rs` only translates to and from these calls.

use std::sync::Arc;
use std::time::Duration;

use slipway_domain::promotion::DEADLINE_RANGE;
use slipway_domain::{AppName, PromotionId, PromotionState, ReleaseId};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::model::{App, Promotion, Release, ReleaseRequest};
use crate::rollout::Rollouts;
use crate::store::{PromoteOptions, PromotionStart, Store};

/// What a promotion request led to.
#[derive(Debug)]
pub enum Promoted {
    /// A promotion was recorded and handed over.
    Started(Promotion),
    /// The release was already active.
    AlreadyActive(Release),
}

/// The release service.
#[derive(Debug)]
pub struct ReleaseService {
    store: Store,
    rollouts: Rollouts,
    default_deadline_secs: u32,
}

impl ReleaseService {
    /// A service over a migrated store.
    pub fn new(store: Store, rollouts: Rollouts, default_deadline_secs: u32) -> Self {
        Self {
            store,
            rollouts,
            default_deadline_secs,
        }
    }

    /// The ledger.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates an app; `deadline_secs` of `None` takes the rack default.
    pub async fn create_app(
        &self,
        name: &AppName,
        deadline_secs: Option<u32>,
        actor: &str,
    ) -> Result<App> {
        let deadline = check_deadline(deadline_secs)?.unwrap_or(self.default_deadline_secs);
        self.store.create_app(name, deadline, actor).await
    }

    /// Promotes `release`: records the promotion (after every check that
    /// needs no runtime) and hands it to the rollout service.
    pub async fn promote(
        &self,
        app: &AppName,
        release: &ReleaseId,
        force: bool,
        deadline_secs: Option<u32>,
        actor: &str,
    ) -> Result<Promoted> {
        let options = PromoteOptions {
            force,
            deadline_secs: check_deadline(deadline_secs)?,
        };
        match self
            .store
            .start_promotion(app, release, &options, actor)
            .await?
        {
            PromotionStart::AlreadyActive(release) => Ok(Promoted::AlreadyActive(release)),
            PromotionStart::Started {
                promotion,
                target,
                fallback,
            } => {
                tracing::info!(app = %app, release = %release, promotion = %promotion.id, "promotion recorded");
                slipway_telemetry::metrics::promotion("started");
                self.dispatch(promotion, &target, fallback.as_ref(), actor)
                    .await
                    .map(Promoted::Started)
            }
        }
    }

    /// Copies `release` into a new release described `rollback to R…` and
    /// promotes the copy.
    pub async fn rollback(
        &self,
        app: &AppName,
        release: &ReleaseId,
        deadline_secs: Option<u32>,
        actor: &str,
    ) -> Result<(Release, Promoted)> {
        check_deadline(deadline_secs)?;
        let request = ReleaseRequest {
            copy_of: Some(release.clone()),
            ..ReleaseRequest::keep()
        };
        let copy = self.store.create_release(app, &request, actor).await?;
        let promoted = self
            .promote(app, &copy.id, false, deadline_secs, actor)
            .await?;
        Ok((copy, promoted))
    }

    /// Cancels the app's promotion in flight. A pending one ends at once; one
    /// rolling out is reverted by the rollout service, which then reports it
    /// rolled back.
    pub async fn cancel(&self, app: &AppName, actor: &str) -> Result<Promotion> {
        let current = self
            .store
            .get_app(app)
            .await?
            .open_promotion
            .ok_or_else(|| {
                Error::FailedPrecondition(format!("app {app} has no promotion in progress"))
            })?;
        match current.state {
            PromotionState::Pending => {
                let reason = format!("cancelled by {actor}");
                let done = self
                    .store
                    .finish_promotion(
                        &current.id,
                        PromotionState::Cancelled,
                        &reason,
                        current.lease_epoch,
                        actor,
                    )
                    .await;
                // It may have been handed over already; stop that rollout too.
                self.rollouts
                    .cancel(&current.id)
                    .await
                    .map_err(|s| Error::Rollout(s.message().to_owned()))?;
                match done {
                    Ok(p) => {
                        slipway_telemetry::metrics::promotion(p.state.as_str());
                        Ok(p)
                    }
                    // The rollout got there first; cancelling it reverts it.
                    Err(Error::FailedPrecondition(_)) => {
                        self.store.get_promotion(&current.id).await
                    }
                    Err(e) => Err(e),
                }
            }
            _ => {
                // Recorded first, so the end the rollout reports is
                // announced as a cancel even when it says nothing of it.
                self.store.request_cancel(&current, actor).await?;
                self.rollouts
                    .cancel(&current.id)
                    .await
                    .map_err(|s| Error::Rollout(s.message().to_owned()))?;
                self.store.get_promotion(&current.id).await
            }
        }
    }

    /// Records the outcome a rollout reported.
    pub async fn complete(
        &self,
        promotion: &PromotionId,
        outcome: slipway_domain::promotion::PromotionOutcome,
        reason: &str,
        lease_epoch: u64,
        cancelled: Option<bool>,
    ) -> Result<Promotion> {
        // A retried report (same outcome) answers the recorded state again;
        // count each promotion's end once.
        let before = self
            .store
            .get_promotion(promotion)
            .await
            .ok()
            .map(|p| p.state);
        let done = self
            .store
            .end_promotion(
                promotion,
                outcome.into_state(),
                reason,
                lease_epoch,
                "rollout",
                cancelled,
            )
            .await?;
        tracing::info!(%promotion, app = %done.app, state = done.state.as_str(), "promotion finished");
        if before != Some(done.state) {
            slipway_telemetry::metrics::promotion(done.state.as_str());
        }
        Ok(done)
    }

    async fn dispatch(
        &self,
        mut promotion: Promotion,
        target: &Release,
        fallback: Option<&Release>,
        actor: &str,
    ) -> Result<Promotion> {
        match self.rollouts.start(&promotion, target, fallback).await {
            Ok(false) => Ok(promotion),
            Ok(true) => {
                if self.store.mark_rolling_out(&promotion.id).await? {
                    promotion.state = PromotionState::RollingOut;
                    Ok(promotion)
                } else {
                    let now = self.store.get_promotion(&promotion.id).await?;
                    if now.state == PromotionState::Cancelled {
                        let _ = self.rollouts.cancel(&promotion.id).await;
                    }
                    Ok(now)
                }
            }
            Err(status) => {
                let reason = format!("could not start the rollout: {}", status.message());
                self.store
                    .finish_promotion(&promotion.id, PromotionState::Failed, &reason, 0, actor)
                    .await?;
                slipway_telemetry::metrics::promotion(PromotionState::Failed.as_str());
                Err(Error::Rollout(status.message().to_owned()))
            }
        }
    }

    /// Re-sends promotions whose hand-over may have been lost (a crash
    /// between recording and starting), until `stop` is cancelled.
    pub async fn redispatch_loop(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        if matches!(self.rollouts, Rollouts::Detached) {
            return;
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.redispatch_stale(every * 2).await {
                tracing::warn!("failed to re-send pending promotions: {e}");
            }
        }
    }

    async fn redispatch_stale(&self, age: Duration) -> Result<()> {
        for promotion in self.store.stale_pending_promotions(age).await? {
            let (target, fallback) = self.store.promotion_specs(&promotion).await?;
            tracing::info!(promotion = %promotion.id, app = %promotion.app, "re-sending a pending promotion");
            let actor = promotion.actor.clone();
            if let Err(e) = self
                .dispatch(promotion, &target, fallback.as_ref(), &actor)
                .await
            {
                tracing::warn!("failed to re-send a pending promotion: {e}");
            }
        }
        Ok(())
    }
}

fn check_deadline(deadline_secs: Option<u32>) -> Result<Option<u32>> {
    match deadline_secs {
        Some(d) if !DEADLINE_RANGE.contains(&d) => Err(Error::InvalidArgument(format!(
            "deadline_seconds must be between {} and {} seconds, got {d}",
            DEADLINE_RANGE.start(),
            DEADLINE_RANGE.end()
        ))),
        other => Ok(other),
    }
}
