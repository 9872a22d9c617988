//! The hand-over to the rollout service: a test rollout server records what
//! it is sent; an unreachable one fails the promotion cleanly; a promotion
//! whose hand-over was lost is re-sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::{Backend, MANIFEST, TestApp, assert_status};
use slipway_api::release::v1 as pb;
use slipway_api::rollout::v1 as rpb;
use slipway_api::rollout::v1::rollout_service_server::{RolloutService, RolloutServiceServer};
use tonic::{Code, Request, Response, Status};

slipway_storage::both_backends!(
    promotions_are_handed_to_the_rollout_service,
    an_unreachable_rollout_service_fails_the_promotion_cleanly,
    a_lost_hand_over_is_resent,
);

#[derive(Default, Clone)]
pub(crate) struct Recorder {
    started: Arc<Mutex<Vec<rpb::StartRolloutRequest>>>,
    cancelled: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl RolloutService for Recorder {
    async fn start_rollout(
        &self,
        request: Request<rpb::StartRolloutRequest>,
    ) -> Result<Response<rpb::StartRolloutResponse>, Status> {
        let req = request.into_inner();
        let rollout = rpb::Rollout {
            id: req.promotion.clone(),
            promotion: req.promotion.clone(),
            ..Default::default()
        };
        self.started.lock().unwrap().push(req);
        Ok(Response::new(rpb::StartRolloutResponse {
            rollout: Some(rollout),
        }))
    }
    async fn get_rollout(
        &self,
        _: Request<rpb::GetRolloutRequest>,
    ) -> Result<Response<rpb::GetRolloutResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    type WatchRolloutStream = tokio_stream::Empty<Result<rpb::WatchRolloutResponse, Status>>;
    async fn watch_rollout(
        &self,
        _: Request<rpb::WatchRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn list_processes(
        &self,
        _: Request<rpb::ListProcessesRequest>,
    ) -> Result<Response<rpb::ListProcessesResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn list_services(
        &self,
        _: Request<rpb::ListServicesRequest>,
    ) -> Result<Response<rpb::ListServicesResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    type StreamAppLogsStream = tokio_stream::Empty<Result<rpb::StreamAppLogsResponse, Status>>;
    async fn stream_app_logs(
        &self,
        _: Request<rpb::StreamAppLogsRequest>,
    ) -> Result<Response<Self::StreamAppLogsStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn cancel_rollout(
        &self,
        request: Request<rpb::CancelRolloutRequest>,
    ) -> Result<Response<rpb::CancelRolloutResponse>, Status> {
        self.cancelled.lock().unwrap().push(request.into_inner().id);
        Ok(Response::new(rpb::CancelRolloutResponse { rollout: None }))
    }
}

pub(crate) async fn rollout_server(recorder: Recorder) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RolloutServiceServer::new(recorder))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

async fn promotions_are_handed_to_the_rollout_service(backend: Backend) {
    let recorder = Recorder::default();
    let endpoint = rollout_server(recorder.clone()).await;
    let t = TestApp::spawn_with(backend, |c| c.rollout_endpoints = vec![endpoint]).await;
    t.create_app("handed").await;
    let first = t.build_release("handed", MANIFEST).await;
    t.activate("handed", &first.id).await;
    let next = t
        .env_set("handed", &[("DB_PASSWORD", "pw-1")])
        .await
        .unwrap();
    let promotion = t
        .client
        .clone()
        .promote_release(pb::PromoteReleaseRequest {
            app: "handed".into(),
            release: next.id.clone(),
            force: false,
            deadline_seconds: 45,
        })
        .await
        .unwrap()
        .into_inner()
        .promotion
        .unwrap();
    assert_eq!(promotion.state, pb::PromotionState::RollingOut as i32);

    let started = recorder.started.lock().unwrap().clone();
    assert_eq!(started.len(), 2, "first deploy and this one");
    let sent = &started[1];
    assert_eq!(sent.promotion, promotion.id);
    assert_eq!(sent.deadline_seconds, 45);
    let target = sent.target.as_ref().unwrap();
    assert_eq!(
        (target.app.as_str(), target.release.as_str()),
        ("handed", next.id.as_str())
    );
    assert_eq!(
        target.env.get("DB_PASSWORD").map(String::as_str),
        Some("pw-1"),
        "decrypted env for the runtime"
    );
    assert_eq!(target.manifest, MANIFEST);
    assert_eq!(
        target.artifacts.get("web").map(String::as_str),
        Some("file:///srv/artifact")
    );
    let fallback = sent.fallback.as_ref().expect("the last known good release");
    assert_eq!(fallback.release, first.id);
    assert!(
        started[0].fallback.is_none(),
        "a first deploy has nothing to fall back to"
    );

    let cancelled = t
        .client
        .clone()
        .cancel_promotion(pb::CancelPromotionRequest {
            app: "handed".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .promotion
        .unwrap();
    assert_eq!(
        *recorder.cancelled.lock().unwrap(),
        vec![promotion.id.clone()]
    );
    assert_eq!(
        cancelled.state,
        pb::PromotionState::RollingOut as i32,
        "the rollout reverts, then reports"
    );
    t.complete(&promotion.id, pb::PromotionOutcome::RolledBack, "cancelled")
        .await
        .unwrap();
    assert_eq!(t.app("handed").await.release, first.id);
}

async fn an_unreachable_rollout_service_fails_the_promotion_cleanly(backend: Backend) {
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let t = TestApp::spawn_with(backend, |c| {
        c.rollout_endpoints = vec![format!("http://{closed}")]
    })
    .await;
    t.create_app("lonely").await;
    let release = t.build_release("lonely", MANIFEST).await;
    assert_status(
        t.promote("lonely", &release.id).await,
        Code::Unavailable,
        "rollout service unavailable",
    );
    let app = t.app("lonely").await;
    assert_eq!(app.status, "running", "not stuck in updating");
    let promotions = t
        .client
        .clone()
        .list_promotions(pb::ListPromotionsRequest {
            app: "lonely".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .promotions;
    assert_eq!(promotions[0].state, pb::PromotionState::Failed as i32);
    assert!(
        promotions[0].reason.contains("could not start the rollout"),
        "{}",
        promotions[0].reason
    );
}

async fn a_lost_hand_over_is_resent(backend: Backend) {
    // Record a promotion while no rollout service is configured: the same
    // state a crash between recording and handing over leaves behind.
    let mut t = TestApp::spawn(backend).await;
    t.create_app("resend").await;
    let release = t.build_release("resend", MANIFEST).await;
    let promotion = t
        .promote("resend", &release.id)
        .await
        .unwrap()
        .promotion
        .unwrap();
    assert_eq!(promotion.state, pb::PromotionState::Pending as i32);
    t.stop().await;

    let recorder = Recorder::default();
    t.config.rollout_endpoints = vec![rollout_server(recorder.clone()).await];
    t.config.redispatch_every = Duration::from_millis(100);
    t.start().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while recorder.started.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pending promotion was never re-sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(recorder.started.lock().unwrap()[0].promotion, promotion.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let open = t.app("resend").await.open_promotion.unwrap();
        if open.state == pb::PromotionState::RollingOut as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never marked rolling out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
