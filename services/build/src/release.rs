//! The build service's one call into the release service: a finished build
//! asks for a release (Convox semantics: forked from the app's newest
//! release, with this build, its manifest and its artifacts) and records the
//! release id.

use slipway_api::release::v1::CreateReleaseRequest;
use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_rpc::{Channel, MessageLimits as _};

use crate::builder::Artifacts;
use crate::model::Build;

/// A client of the release service.
#[derive(Clone, Debug)]
pub struct Releases {
    client: ReleaseServiceClient<Channel>,
}

impl Releases {
    /// A client over `channel`.
    pub fn new(channel: Channel) -> Self {
        Self {
            client: ReleaseServiceClient::new(channel).with_message_limits(),
        }
    }

    /// Creates the release of a finished build and returns its id. The
    /// error is a message for the build's log and reason.
    pub async fn create(
        &self,
        build: &Build,
        manifest: &str,
        artifacts: &Artifacts,
        actor: &str,
    ) -> Result<String, String> {
        let mut request = tonic::Request::new(CreateReleaseRequest {
            app: build.app.to_string(),
            build: Some(build.id.to_string()),
            manifest: Some(manifest.to_owned()),
            description: (!build.description.is_empty()).then(|| build.description.clone()),
            parent_release: None,
            artifacts: artifacts.clone().into_iter().collect(),
            // No env: the release keeps the env it forks.
            ..Default::default()
        });
        if let Ok(value) = actor.parse() {
            request
                .metadata_mut()
                .insert(slipway_rpc::ACTOR_HEADER, value);
        }
        let response = self
            .client
            .clone()
            .create_release(request)
            .await
            .map_err(|status| format!("create release: {}", status.message()))?;
        response
            .into_inner()
            .release
            .map(|r| r.id)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| "create release: the release service returned no release".to_owned())
    }
}
