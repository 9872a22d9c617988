//! gRPC translation for `slipway.build.v1.BuildService`: requests are
//! validated into domain types (a bad field is INVALID_ARGUMENT naming it),
//! calls go to [`BuildService`], results go back as proto messages.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use slipway_api::build::v1 as pb;
use slipway_api::build::v1::build_service_server::BuildService as BuildRpc;
use slipway_api::timestamp;
use slipway_domain::{AppName, BuildId};
use slipway_storage::idempotency::{Claim, Fingerprint};
use tonic::{Request, Response, Status, Streaming};

use crate::model::{Build, BuildStatus};
use crate::objects::{self, ObjectRef};
use crate::service::{BuildService, NewBuild};

/// Largest page a list call returns.
const MAX_LIMIT: u32 = 1000;
/// Longest description or git sha accepted.
const MAX_TEXT: usize = 4096;
/// The manifest read when a request names none.
const DEFAULT_MANIFEST: &str = "convox.yml";

/// The full name of `UploadSource`, which has no total deadline: it fails
/// when no message came for the upload idle timeout instead.
pub const UPLOAD_SOURCE: &str = "/slipway.build.v1.BuildService/UploadSource";

/// The gRPC face of the build service.
#[derive(Clone, Debug)]
pub struct Grpc {
    service: Arc<BuildService>,
    upload_idle_timeout: Duration,
}

impl Grpc {
    /// Wraps the service; an upload with no message for
    /// `upload_idle_timeout` fails.
    pub fn new(service: Arc<BuildService>, upload_idle_timeout: Duration) -> Self {
        Self {
            service,
            upload_idle_timeout,
        }
    }
}

type LogResponses = Pin<Box<dyn Stream<Item = Result<pb::WatchBuildLogsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl BuildRpc for Grpc {
    async fn create_build(
        &self,
        request: Request<pb::CreateBuildRequest>,
    ) -> Result<Response<pb::CreateBuildResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let key = slipway_rpc::idempotency::key_of(&request)?;
        let req = request.into_inner();
        let app = app_name(&req.app)?;
        let source = ObjectRef::parse_url(&req.source_url).map_err(|e| field("source_url", e))?;
        let manifest_path = if req.manifest_path.is_empty() {
            DEFAULT_MANIFEST.to_owned()
        } else {
            req.manifest_path
        };
        // The same rule as object keys: relative, no `..`.
        slipway_domain::validate_object_key(&manifest_path)
            .map_err(|e| field("manifest_path", e))?;
        for (name, value) in [("description", &req.description), ("git_sha", &req.git_sha)] {
            if value.len() > MAX_TEXT || value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(Status::invalid_argument(format!(
                    "{name}: at most {MAX_TEXT} bytes of printable text"
                )));
            }
        }
        let claim = claim(
            key,
            "CreateBuild",
            Fingerprint::default()
                .field(app.as_str())
                .field(&req.source_url)
                .field(&manifest_path)
                .field(&req.description)
                .field(&req.git_sha)
                .field([u8::from(req.no_cache)]),
        );
        let request = NewBuild {
            app,
            source,
            manifest_path,
            description: req.description,
            git_sha: req.git_sha,
        };
        let build = self.service.create_keyed(request, actor, claim).await?;
        Ok(Response::new(pb::CreateBuildResponse {
            build: Some(build_pb(build)),
        }))
    }

    async fn get_build(
        &self,
        request: Request<pb::GetBuildRequest>,
    ) -> Result<Response<pb::GetBuildResponse>, Status> {
        let req = request.into_inner();
        let build = self
            .service
            .get(&app_name(&req.app)?, &build_id(&req.id)?)
            .await?;
        Ok(Response::new(pb::GetBuildResponse {
            build: Some(build_pb(build)),
        }))
    }

    async fn list_builds(
        &self,
        request: Request<pb::ListBuildsRequest>,
    ) -> Result<Response<pb::ListBuildsResponse>, Status> {
        let req = request.into_inner();
        let app = app_name(&req.app)?;
        let limit = match req.limit {
            0 => 10,
            n if n > MAX_LIMIT => {
                return Err(Status::invalid_argument(format!(
                    "limit: at most {MAX_LIMIT}"
                )));
            }
            n => n,
        };
        let builds = self.service.list(&app, limit).await?;
        // Newest first, cut to what one message holds: a build carries its
        // manifest, so a thousand of them may not fit (the list has no page
        // token; `limit` is an upper bound).
        let mut builds: Vec<pb::Build> = builds.into_iter().map(build_pb).collect();
        builds.truncate(slipway_rpc::limits::page_len(&builds));
        Ok(Response::new(pb::ListBuildsResponse { builds }))
    }

    type WatchBuildLogsStream = LogResponses;

    async fn watch_build_logs(
        &self,
        request: Request<pb::WatchBuildLogsRequest>,
    ) -> Result<Response<Self::WatchBuildLogsStream>, Status> {
        let req = request.into_inner();
        let stream = self
            .service
            .logs(&app_name(&req.app)?, &build_id(&req.id)?, req.from_offset)
            .await?;
        let stream = stream.map(|chunk| {
            chunk
                .map(|chunk| pb::WatchBuildLogsResponse { chunk })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_build(
        &self,
        request: Request<pb::CancelBuildRequest>,
    ) -> Result<Response<pb::CancelBuildResponse>, Status> {
        let key = slipway_rpc::idempotency::key_of(&request)?;
        let by = slipway_rpc::actor::actor_of(&request);
        let req = request.into_inner();
        let (app, id) = (app_name(&req.app)?, build_id(&req.id)?);
        let claim = claim(
            key,
            "CancelBuild",
            Fingerprint::default()
                .field(app.as_str())
                .field(id.as_str()),
        );
        let build = self.service.cancel(&app, &id, claim, by).await?;
        Ok(Response::new(pb::CancelBuildResponse {
            build: Some(build_pb(build)),
        }))
    }

    async fn upload_source(
        &self,
        request: Request<Streaming<pb::UploadSourceRequest>>,
    ) -> Result<Response<pb::UploadSourceResponse>, Status> {
        let mut messages = request.into_inner();
        let idle = self.upload_idle_timeout;
        let first = tokio::time::timeout(idle, messages.message())
            .await
            .map_err(|_| stalled(idle))??
            .ok_or_else(|| {
                Status::invalid_argument("app: the first upload message must name the app")
            })?;
        let app = app_name(&first.app)?;
        let key = if first.key.is_empty() {
            objects::fresh_key()
        } else {
            first.key
        };
        let object = ObjectRef::new(app, &key).map_err(|e| field("key", e))?;
        let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let chunks = until_last(first.chunk, first.last, messages, idle, stall.clone());
        let (object, size) = match self.service.upload(object, Box::pin(chunks)).await {
            // The stall is the answer, not the interrupted store it caused.
            Err(_) if stall.load(std::sync::atomic::Ordering::Relaxed) => {
                return Err(stalled(idle));
            }
            stored => stored?,
        };
        Ok(Response::new(pb::UploadSourceResponse {
            url: object.url(),
            size,
        }))
    }
}

/// The answer to an upload that sent nothing for `idle`.
fn stalled(idle: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "the upload stalled: no data for {}; nothing stored",
        humantime::format_duration(idle)
    ))
}

/// The chunks of an upload, ending after the message marked `last`; a
/// stream that ends before it (the client abandoned the upload), goes on
/// after it, or sends nothing for `idle` yields an error instead, so
/// nothing is stored. A stall also sets `stall`.
fn until_last(
    first: bytes::Bytes,
    first_last: bool,
    messages: Streaming<pb::UploadSourceRequest>,
    idle: Duration,
    stall: Arc<std::sync::atomic::AtomicBool>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, Status>> + Send + 'static {
    let rest = futures::stream::unfold(
        (messages, first_last, false),
        move |(mut messages, mut seen_last, failed)| {
            let stall = stall.clone();
            async move {
                if failed {
                    return None;
                }
                let Ok(next) = tokio::time::timeout(idle, messages.message()).await else {
                    stall.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Some((Err(stalled(idle)), (messages, seen_last, true)));
                };
                match next {
                    Ok(Some(_)) if seen_last => Some((
                        Err(Status::invalid_argument(
                            "last: messages after the one marked last; nothing stored",
                        )),
                        (messages, seen_last, true),
                    )),
                    Ok(Some(m)) => {
                        seen_last = m.last;
                        Some((Ok(m.chunk), (messages, seen_last, false)))
                    }
                    Ok(None) if seen_last => None,
                    Ok(None) => Some((
                        Err(Status::invalid_argument(
                            "last: the upload ended before a message marked last; nothing stored",
                        )),
                        (messages, seen_last, true),
                    )),
                    Err(status) => Some((Err(status), (messages, seen_last, true))),
                }
            }
        },
    );
    futures::stream::iter([Ok(first)]).chain(rest)
}

/// The claim of a keyed call: its request reduced to a SHA-256 (a build
/// request holds no secret; the digest just keeps rows small).
fn claim(key: Option<String>, method: &'static str, request: Fingerprint) -> Option<Claim> {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(request.bytes());
    let fingerprint = digest.iter().map(|b| format!("{b:02x}")).collect();
    key.map(|key| Claim::new(key, method, fingerprint))
}

fn field(name: &str, err: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{name}: {err}"))
}

fn app_name(text: &str) -> Result<AppName, Status> {
    AppName::parse(text).map_err(|e| field("app", e))
}

fn build_id(text: &str) -> Result<BuildId, Status> {
    BuildId::parse(text).map_err(|e| field("id", e))
}

fn status_pb(status: BuildStatus) -> pb::BuildStatus {
    match status {
        BuildStatus::Created => pb::BuildStatus::Created,
        BuildStatus::Running => pb::BuildStatus::Running,
        BuildStatus::Complete => pb::BuildStatus::Complete,
        BuildStatus::Failed => pb::BuildStatus::Failed,
        BuildStatus::Cancelled => pb::BuildStatus::Cancelled,
    }
}

/// A build as the API shows it.
pub fn build_pb(build: Build) -> pb::Build {
    pb::Build {
        id: build.id.into_string(),
        app: build.app.into_string(),
        description: build.description,
        git_sha: build.git_sha,
        manifest: build.manifest,
        release: build.release.unwrap_or_default(),
        reason: build.reason,
        status: status_pb(build.status).into(),
        started: Some(timestamp(build.started)),
        ended: build.ended.map(timestamp),
        artifacts: build.artifacts.into_iter().collect(),
    }
}
