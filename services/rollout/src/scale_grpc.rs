//! gRPC face of scale and restart (`slipway.rollout.v1.ScaleService`):
//! requests parsed into domain types (an app name that is not one is
//! refused naming the field), answers into wire messages. The work is in
//! [`crate::scale`].

use slipway_api::rollout::v1 as pb;
use slipway_api::rollout::v1::scale_service_server::ScaleService;
use slipway_domain::AppName;
use tonic::{Request, Response, Status};

use crate::scale::{ScaleChange, ScaleView, Scales};

/// The scale service.
pub struct ScaleGrpc {
    scales: Scales,
}

impl ScaleGrpc {
    /// Serves `scales`.
    pub fn new(scales: Scales) -> Self {
        Self { scales }
    }
}

fn app(name: &str) -> Result<AppName, Status> {
    AppName::parse(name).map_err(|e| Status::invalid_argument(format!("app: {e}")))
}

fn service(name: &str) -> Result<&str, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("service is required"));
    }
    Ok(name)
}

fn view(v: ScaleView) -> pb::ServiceScale {
    pb::ServiceScale {
        service: v.service,
        count: v.count,
        cpu: v.cpu,
        memory: v.memory,
        count_set: v.count_set,
        limits_note: v.limits_note,
        updated: v.updated.map(slipway_api::timestamp),
    }
}

#[tonic::async_trait]
impl ScaleService for ScaleGrpc {
    async fn set_scale(
        &self,
        request: Request<pb::SetScaleRequest>,
    ) -> Result<Response<pb::SetScaleResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let req = request.into_inner();
        let app = app(&req.app)?;
        let change = ScaleChange {
            count: req.count,
            cpu: req.cpu,
            memory: req.memory,
        };
        let scale = self
            .scales
            .set(&app, service(&req.service)?, change, &actor)
            .await?;
        Ok(Response::new(pb::SetScaleResponse {
            scale: Some(view(scale)),
        }))
    }

    async fn list_scales(
        &self,
        request: Request<pb::ListScalesRequest>,
    ) -> Result<Response<pb::ListScalesResponse>, Status> {
        let app = app(&request.get_ref().app)?;
        let services = self.scales.list(&app).await?;
        Ok(Response::new(pb::ListScalesResponse {
            services: services.into_iter().map(view).collect(),
        }))
    }

    async fn restart_service(
        &self,
        request: Request<pb::RestartServiceRequest>,
    ) -> Result<Response<pb::RestartServiceResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let req = request.into_inner();
        let app = app(&req.app)?;
        let only = (!req.service.is_empty()).then_some(req.service.as_str());
        let services = self.scales.restart(&app, only, &actor).await?;
        Ok(Response::new(pb::RestartServiceResponse { services }))
    }
}
