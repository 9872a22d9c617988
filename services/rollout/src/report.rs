//! Reporting outcomes to the release service: `CompletePromotion`, retried
//! with backoff until acknowledged. The call is idempotent for the same
//! outcome and fenced by the lease epoch, so retries (and re-reports after
//! a restart) are safe.

use std::time::Duration;

use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_api::release::v1::{CompletePromotionRequest, PromotionOutcome};
use slipway_rpc::{Channel, MessageLimits as _};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::model::{Phase, Rollout};

/// The outcome of a terminal rollout, as the release service names it.
pub fn outcome(phase: Phase) -> Option<PromotionOutcome> {
    slipway_api::promotion::rollout_outcome(crate::grpc::phase(phase)).map(PromotionOutcome::from)
}

/// Whether the rollout ended because its promotion was cancelled: a cancel
/// was asked for and it is what stopped the rollout (the driver's reason for
/// a cancel starts with "cancelled": while updating, or during the release
/// command). A rollout already reverting after a failure when the cancel
/// came ended for that failure.
fn ended_by_cancel(rollout: &Rollout) -> bool {
    rollout.cancel_requested && rollout.reason.starts_with("cancelled")
}

/// Sends outcomes to the release service (or nowhere, when none is configured).
#[derive(Clone, Debug)]
pub struct Reporter {
    client: Option<ReleaseServiceClient<Channel>>,
}

impl Reporter {
    /// A reporter over a channel to the release service; `None` drops
    /// outcomes (a rollout service run on its own).
    pub fn new(channel: Option<Channel>) -> Self {
        Self {
            client: channel.map(|c| ReleaseServiceClient::new(c).with_message_limits()),
        }
    }

    /// Reports the outcome of a terminal rollout until the release service
    /// acknowledges it (or refuses it for good). Returns `false` only if
    /// `stop` fired first.
    pub async fn report(&self, rollout: &Rollout, stop: &CancellationToken) -> bool {
        let Some(outcome) = outcome(rollout.phase) else {
            return true;
        };
        let Some(client) = &self.client else {
            tracing::debug!(rollout = %rollout.id, "no release endpoint configured; outcome not reported");
            return true;
        };
        let request = CompletePromotionRequest {
            promotion: rollout.id.to_string(),
            outcome: outcome as i32,
            reason: rollout.reason.clone(),
            lease_epoch: rollout.epoch,
            cancelled: Some(ended_by_cancel(rollout)),
        };
        let mut delay = Duration::from_millis(100);
        loop {
            match client.clone().complete_promotion(request.clone()).await {
                Ok(_) => {
                    tracing::info!(rollout = %rollout.id, outcome = outcome.as_str_name(), "outcome reported");
                    return true;
                }
                Err(status)
                    if matches!(
                        status.code(),
                        Code::NotFound
                            | Code::FailedPrecondition
                            | Code::InvalidArgument
                            | Code::AlreadyExists
                    ) =>
                {
                    tracing::warn!(rollout = %rollout.id, "the release service refused the outcome: {}", status.message());
                    return true;
                }
                Err(status) => {
                    tracing::warn!(rollout = %rollout.id, "failed to report the outcome, retrying: {}", status.message());
                }
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}
