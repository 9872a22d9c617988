//! The hand-over to the rollout service. The release service decides what
//! should run; this module tells the rollout service, with the specs it
//! needs (manifest and decrypted env of the target and the fallback).

use slipway_api::rollout::v1 as pb;
use slipway_api::rollout::v1::rollout_service_client::RolloutServiceClient;
use slipway_domain::PromotionId;
use slipway_rpc::Channel;

use crate::model::{Promotion, Release};

/// Where promotions go once recorded.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // one per service; boxing buys nothing
pub enum Rollouts {
    /// A rollout service over gRPC (one or several replicas).
    Grpc(RolloutServiceClient<Channel>),
    /// No rollout service configured: promotions stay pending until a
    /// rollout driver completes them through `CompletePromotion`.
    Detached,
}

impl Rollouts {
    /// Starts the rollout of `promotion`. Returns whether a rollout service
    /// took it. Starting is idempotent on the rollout side (keyed by the
    /// promotion id), so a retry after a lost answer is safe.
    pub async fn start(
        &self,
        promotion: &Promotion,
        target: &Release,
        fallback: Option<&Release>,
    ) -> Result<bool, tonic::Status> {
        let Self::Grpc(client) = self else {
            return Ok(false);
        };
        let request = pb::StartRolloutRequest {
            promotion: promotion.id.to_string(),
            target: Some(spec(target)),
            fallback: fallback.map(spec),
            deadline_seconds: promotion.deadline_secs,
        };
        client.clone().start_rollout(request).await?;
        Ok(true)
    }

    /// Asks the rollout service to stop the rollout of `promotion` and
    /// revert. A rollout it never heard of is not an error.
    pub async fn cancel(&self, promotion: &PromotionId) -> Result<(), tonic::Status> {
        let Self::Grpc(client) = self else {
            return Ok(());
        };
        match client
            .clone()
            .cancel_rollout(pb::CancelRolloutRequest {
                id: promotion.to_string(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(status),
        }
    }
}

/// What a runtime needs to run a release, and nothing else.
pub fn spec(release: &Release) -> pb::ReleaseSpec {
    pb::ReleaseSpec {
        app: release.app.to_string(),
        release: release.id.to_string(),
        build: release
            .build
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        manifest: release.manifest.clone(),
        env: release.env.as_map().clone().into_iter().collect(),
        artifacts: release.artifacts.clone().into_iter().collect(),
    }
}
