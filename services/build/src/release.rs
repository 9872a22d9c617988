//! The build service's one call into the release service: a finished build
//! asks for a release (Convox semantics: forked from the app's newest
//! release, with this build, its manifest and its artifacts) and records the
//! release id.

use slipway_api::release::v1::CreateReleaseRequest;
use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_rpc::{Channel, MessageLimits as _};

use crate::builder::Artifacts;
use crate::model::Build;

/// Attempts at creating a build's release while the release service is
/// unreachable (100 ms doubling between them: about 6 s in all).
const RELEASE_ATTEMPTS: u32 = 7;

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
        // One release per build, however often this is sent: a call whose
        // answer was lost (a release replica killed mid-call) is sent again
        // with the same key and answered with the release it made.
        slipway_rpc::idempotency::set_key(&mut request, &format!("build-release-{}", build.id));
        let mut backoff = std::time::Duration::from_millis(100);
        let mut tries = 1;
        let response = loop {
            let mut attempt = tonic::Request::new(request.get_ref().clone());
            *attempt.metadata_mut() = request.metadata().clone();
            match self.client.clone().create_release(attempt).await {
                Err(status)
                    if tries < RELEASE_ATTEMPTS
                        && matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::Unknown
                        ) =>
                {
                    tracing::warn!(build = %build.id, tries, "create release failed, retrying with its idempotency key: {}", status.message());
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    tries += 1;
                }
                other => {
                    break other
                        .map_err(|status| format!("create release: {}", status.message()))?;
                }
            }
        };
        response
            .into_inner()
            .release
            .map(|r| r.id)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| "create release: the release service returned no release".to_owned())
    }
}
