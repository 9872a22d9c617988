//! gRPC face of build export and import (`slipway.build.v1.BuildArchiveService`):
//! requests parsed into domain types, the work in `service/archive.rs`.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use slipway_api::build::v1 as pb;
use slipway_api::build::v1::build_archive_service_server::BuildArchiveService;
use slipway_domain::{AppName, BuildId};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::grpc::build_pb;
use crate::objects::ObjectRef;
use crate::service::BuildService;

/// Export and import over the build service.
#[derive(Clone, Debug)]
pub struct ArchiveGrpc {
    service: Arc<BuildService>,
}

impl ArchiveGrpc {
    /// Serves `service`'s exports and imports.
    pub fn new(service: Arc<BuildService>) -> Self {
        Self { service }
    }
}

fn field(name: &str, err: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{name}: {err}"))
}

type Chunks = Pin<Box<dyn Stream<Item = Result<pb::ExportBuildResponse, Status>> + Send>>;

#[tonic::async_trait]
impl BuildArchiveService for ArchiveGrpc {
    type ExportBuildStream = Chunks;

    async fn export_build(
        &self,
        request: Request<pb::ExportBuildRequest>,
    ) -> Result<Response<Chunks>, Status> {
        let req = request.into_inner();
        let app = AppName::parse(&req.app).map_err(|e| field("app", e))?;
        let id = BuildId::parse(&req.id).map_err(|e| field("id", e))?;
        let chunks = self.service.export(&app, &id).await?;
        let stream = ReceiverStream::new(chunks).map(|chunk| {
            chunk
                .map(|chunk| pb::ExportBuildResponse { chunk })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn import_build(
        &self,
        request: Request<pb::ImportBuildRequest>,
    ) -> Result<Response<pb::ImportBuildResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let key = slipway_rpc::idempotency::key_of(&request)?;
        let req = request.into_inner();
        let app = AppName::parse(&req.app).map_err(|e| field("app", e))?;
        let source = ObjectRef::parse_url(&req.source_url).map_err(|e| field("source_url", e))?;
        let build = self.service.import(&app, source, actor, key).await?;
        Ok(Response::new(pb::ImportBuildResponse {
            build: Some(build_pb(build)),
        }))
    }
}
