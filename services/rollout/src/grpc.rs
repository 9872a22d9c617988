//! gRPC translation for `slipway.rollout.v1.RolloutService`: requests into
//! validated domain requests, results into wire messages. No logic here.

use std::pin::Pin;
use std::sync::Arc;

use slipway_api::rollout::v1 as pb;
use slipway_api::rollout::v1::rollout_service_server::RolloutService;
use slipway_api::timestamp;
use slipway_domain::{AppName, PromotionId, ReleaseId};
use tokio_stream::Stream;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::logs::{Cursor, LogQuery};
use crate::model::{Phase, Rollout, SpecRecord};
use crate::service::{Rollouts, StartRequest, WatchItem};

/// The gRPC face of [`Rollouts`].
pub struct Grpc {
    service: Arc<Rollouts>,
}

impl Grpc {
    /// Wraps the service.
    pub fn new(service: Arc<Rollouts>) -> Self {
        Self { service }
    }
}

/// A wire spec as the stored record (validated by `Spec::from_record`).
pub(crate) fn spec_record(spec: pb::ReleaseSpec) -> SpecRecord {
    SpecRecord {
        app: spec.app,
        release: spec.release,
        build: spec.build,
        manifest: spec.manifest,
        env: spec.env.into_iter().collect(),
        artifacts: spec.artifacts.into_iter().collect(),
    }
}

/// The wire form of a phase.
pub(crate) fn phase(p: Phase) -> pb::RolloutPhase {
    match p {
        Phase::Pending => pb::RolloutPhase::Pending,
        Phase::Updating => pb::RolloutPhase::Updating,
        Phase::Running => pb::RolloutPhase::Running,
        Phase::Reverting => pb::RolloutPhase::Reverting,
        Phase::Reverted => pb::RolloutPhase::Reverted,
        Phase::Failure => pb::RolloutPhase::Failure,
        Phase::Cancelled => pb::RolloutPhase::Cancelled,
    }
}

/// The wire form of a rollout.
pub fn rollout(r: Rollout) -> pb::Rollout {
    pb::Rollout {
        promotion: r.id.to_string(),
        id: r.id.into_string(),
        app: r.app.into_string(),
        release: r.release.into_string(),
        fallback_release: r
            .fallback_release
            .map(ReleaseId::into_string)
            .unwrap_or_default(),
        phase: phase(r.phase) as i32,
        reason: r.reason,
        deadline: Some(timestamp(r.deadline_at)),
        created: Some(timestamp(r.created)),
        deadline_seconds: r.deadline_secs,
        finished: r.finished.map(timestamp),
    }
}

fn required(value: &str, field: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is required")).into());
    }
    Ok(())
}

/// Parses a promotion (rollout) id at the edge.
fn promotion_id(value: &str, field: &str) -> Result<PromotionId, Status> {
    required(value, field)?;
    PromotionId::parse(value).map_err(|e| Error::InvalidArgument(format!("{field}: {e}")).into())
}

/// Parses an app name at the edge.
fn app_name(value: &str) -> Result<AppName, Status> {
    required(value, "app")?;
    AppName::parse(value).map_err(|e| Error::InvalidArgument(format!("app: {e}")).into())
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchRolloutResponse, Status>> + Send>>;
type AppLogStream = Pin<Box<dyn Stream<Item = Result<pb::StreamAppLogsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RolloutService for Grpc {
    async fn start_rollout(
        &self,
        request: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::StartRolloutResponse>, Status> {
        let req = request.into_inner();
        let target = req
            .target
            .ok_or_else(|| Error::InvalidArgument("target is required".into()))?;
        let started = self
            .service
            .start(StartRequest {
                promotion: promotion_id(&req.promotion, "promotion")?,
                target: spec_record(target),
                fallback: req
                    .fallback
                    .filter(|f| !f.release.is_empty())
                    .map(spec_record),
                deadline_secs: req.deadline_seconds,
            })
            .await?;
        Ok(Response::new(pb::StartRolloutResponse {
            rollout: Some(rollout(started)),
        }))
    }

    async fn get_rollout(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::GetRolloutResponse>, Status> {
        let id = promotion_id(&request.into_inner().id, "id")?;
        let found = self.service.get(&id).await?;
        Ok(Response::new(pb::GetRolloutResponse {
            rollout: Some(rollout(found)),
        }))
    }

    type WatchRolloutStream = WatchStream;

    async fn watch_rollout(
        &self,
        request: Request<pb::WatchRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        let req = request.into_inner();
        let id = promotion_id(&req.id, "id")?;
        let after = match req.after_event_id.as_str() {
            "" => 0,
            text => text.parse::<u64>().map_err(|_| {
                Error::InvalidArgument(format!(
                    "after_event_id {text:?} is not an event id of this rollout"
                ))
            })?,
        };
        let app = self.service.get(&id).await?.app.into_string();
        let rx = self.service.watch(&id, after).await?;
        let stream = ReceiverStream::new(rx).map(move |item| match item {
            Ok(WatchItem::Event(e)) => Ok(pb::WatchRolloutResponse {
                event: Some(pb::Event {
                    id: e.seq.to_string(),
                    time: Some(timestamp(e.time)),
                    app: app.clone(),
                    source: e.source,
                    message: e.message,
                }),
                finished: None,
            }),
            Ok(WatchItem::Finished(r)) => Ok(pb::WatchRolloutResponse {
                event: None,
                finished: Some(rollout(r)),
            }),
            // UNAVAILABLE: the caller's cue to watch again elsewhere.
            Ok(WatchItem::Draining { after }) => Err(Status::unavailable(format!(
                "this rollout replica is shutting down: watch again after event {after}"
            ))),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_rollout(
        &self,
        request: Request<pb::CancelRolloutRequest>,
    ) -> Result<Response<pb::CancelRolloutResponse>, Status> {
        let id = promotion_id(&request.into_inner().id, "id")?;
        let cancelled = self.service.cancel(&id).await?;
        Ok(Response::new(pb::CancelRolloutResponse {
            rollout: Some(rollout(cancelled)),
        }))
    }

    async fn list_processes(
        &self,
        request: Request<pb::ListProcessesRequest>,
    ) -> Result<Response<pb::ListProcessesResponse>, Status> {
        let app = app_name(&request.into_inner().app)?;
        let processes = self
            .service
            .processes(&app)
            .await?
            .into_iter()
            .map(|p| pb::Process {
                id: p.id,
                service: p.service,
                release: p.release,
                status: p.status,
                started: Some(timestamp(p.started)),
                pid: p.pid.unwrap_or_default(),
                port: p.port.map(u32::from).unwrap_or_default(),
                command: p.command,
            })
            .collect();
        Ok(Response::new(pb::ListProcessesResponse { processes }))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let app = app_name(&request.into_inner().app)?;
        let services = self
            .service
            .services(&app)
            .await?
            .into_iter()
            .map(|s| pb::Service {
                name: s.name,
                address: s.address,
                count: s.count,
            })
            .collect();
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    type StreamAppLogsStream = AppLogStream;

    async fn stream_app_logs(
        &self,
        request: Request<pb::StreamAppLogsRequest>,
    ) -> Result<Response<Self::StreamAppLogsStream>, Status> {
        let req = request.into_inner();
        let app_id = app_name(&req.app)?;
        let app = req.app;
        let query = LogQuery {
            app: app_id,
            since: std::time::Duration::from_secs(u64::from(req.since_seconds)),
            follow: req.follow,
            service: req.service.filter(|s| !s.is_empty()),
            tail: req.tail,
            filter: req.filter,
        };
        let after = match req.after_cursor.as_str() {
            "" => None,
            text => Some(
                Cursor::parse(text)
                    .map_err(|why| Status::invalid_argument(format!("after_cursor: {why}")))?,
            ),
        };
        let rx = self.service.app_logs(query, after).await?;
        let lines = ReceiverStream::new(rx).map(move |item| match item {
            Ok(item) => Ok(pb::StreamAppLogsResponse {
                event: item.line.map(|line| pb::Event {
                    id: line.id,
                    time: Some(timestamp(line.time)),
                    app: app.clone(),
                    source: line.source,
                    message: line.message,
                }),
                cursor: item.cursor.encode(),
            }),
            Err(e) => Err(Status::from(e)),
        });
        // A replica that starts draining ends its log streams at once with
        // UNAVAILABLE (instead of holding its shutdown for the grace), the
        // caller's cue to resume after its last cursor elsewhere.
        let draining = self.service.draining();
        let stream = futures::stream::unfold(Some((lines, draining)), |state| async move {
            let (mut lines, draining) = state?;
            tokio::select! {
                biased;
                () = draining.cancelled() => Some((
                    Err(Status::unavailable(
                        "this rollout replica is shutting down: resume the log after its last cursor",
                    )),
                    None,
                )),
                item = lines.next() => item.map(|item| (item, Some((lines, draining)))),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
