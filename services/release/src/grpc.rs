//! gRPC translation for `slipway.release.v1.ReleaseService`: requests are
//! validated into domain types (a bad field is INVALID_ARGUMENT naming it),
//! calls go to [`ReleaseService`], results go back as proto messages.

use std::sync::Arc;

use slipway_api::release::v1 as pb;
use slipway_api::release::v1::release_service_server::ReleaseService as ReleaseRpc;
use slipway_api::timestamp;
use slipway_domain::promotion::PromotionOutcome;
use slipway_domain::{AppName, BuildId, Env, PromotionId, ReleaseId};
use tonic::{Request, Response, Status};

use crate::model::{App, AuditEvent, EnvInput, ExpectedNewest, Promotion, Release, ReleaseRequest};
use crate::service::{Promoted, ReleaseService};
use crate::store::idempotency::{self, Fingerprint, Recorded};

/// Largest page a list call returns.
const MAX_LIMIT: u32 = 1000;

/// The gRPC face of the release service.
#[derive(Clone, Debug)]
pub struct Grpc {
    service: Arc<ReleaseService>,
}

impl Grpc {
    /// Wraps the service.
    pub fn new(service: Arc<ReleaseService>) -> Self {
        Self { service }
    }
}

#[tonic::async_trait]
impl ReleaseRpc for Grpc {
    async fn create_app(
        &self,
        request: Request<pb::CreateAppRequest>,
    ) -> Result<Response<pb::CreateAppResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let req = request.into_inner();
        let name = app_name(&req.name)?;
        let deadline = (req.deadline_seconds != 0).then_some(req.deadline_seconds);
        let app = self.service.create_app(&name, deadline, &actor).await?;
        Ok(Response::new(pb::CreateAppResponse {
            app: Some(app_pb(app)),
        }))
    }

    async fn get_app(
        &self,
        request: Request<pb::GetAppRequest>,
    ) -> Result<Response<pb::GetAppResponse>, Status> {
        let name = app_name(&request.get_ref().name)?;
        let app = self.service.store().get_app(&name).await?;
        Ok(Response::new(pb::GetAppResponse {
            app: Some(app_pb(app)),
        }))
    }

    async fn list_apps(
        &self,
        _request: Request<pb::ListAppsRequest>,
    ) -> Result<Response<pb::ListAppsResponse>, Status> {
        let apps = self.service.store().list_apps().await?;
        Ok(Response::new(pb::ListAppsResponse {
            apps: fit(apps.into_iter().map(app_pb).collect(), "apps"),
        }))
    }

    async fn delete_app(
        &self,
        request: Request<pb::DeleteAppRequest>,
    ) -> Result<Response<pb::DeleteAppResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let name = app_name(&request.get_ref().name)?;
        self.service.store().delete_app(&name, &actor).await?;
        Ok(Response::new(pb::DeleteAppResponse {}))
    }

    async fn create_release(
        &self,
        request: Request<pb::CreateReleaseRequest>,
    ) -> Result<Response<pb::CreateReleaseResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let key = slipway_rpc::idempotency::key_of(&request)?;
        let req = request.into_inner();
        #[allow(deprecated)] // the text form, still read for older callers
        let legacy_env = format!("{:?}", req.env);
        let claim = self.service.store().claim(
            key,
            "CreateRelease",
            Fingerprint::default()
                .field(&req.app)
                .field(format!("{:?}", req.build))
                .field(format!("{:?}", req.manifest))
                .field(legacy_env)
                .field(format!("{:?}", req.description))
                .field(format!("{:?}", req.parent_release))
                .map(&req.artifacts)
                .field(format!("{}", req.env_vars.is_some()))
                .map(req.env_vars.iter().flat_map(|e| &e.vars)),
        );
        let app = app_name(&req.app)?;
        let env = env_input(&req)?;
        let request = ReleaseRequest {
            build: req
                .build
                .as_deref()
                .filter(|b| !b.is_empty())
                .map(build_id)
                .transpose()?,
            manifest: req.manifest.filter(|m| !m.trim().is_empty()),
            artifacts: (!req.artifacts.is_empty()).then(|| req.artifacts.into_iter().collect()),
            env,
            description: req.description,
            parent: parent_release(req.parent_release.as_deref())?,
            copy_of: None,
            expected_newest: None,
        };
        let release = self.release_once(claim, &app, &request, &actor).await?;
        Ok(Response::new(pb::CreateReleaseResponse {
            release: Some(release_pb(release)),
        }))
    }

    async fn change_env(
        &self,
        request: Request<pb::ChangeEnvRequest>,
    ) -> Result<Response<pb::ChangeEnvResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let key = slipway_rpc::idempotency::key_of(&request)?;
        let req = request.into_inner();
        let mut unset = req.unset.clone();
        unset.sort();
        let mut fingerprint = Fingerprint::default()
            .field(&req.app)
            .map(&req.set)
            .field(unset.join("\0"))
            .field(format!("{:?}", req.parent_release));
        if let Some(expected) = &req.expected_newest_release {
            fingerprint = fingerprint.field(format!("expected {expected}"));
        }
        let claim = self.service.store().claim(key, "ChangeEnv", fingerprint);
        let app = app_name(&req.app)?;
        if req.set.is_empty() && req.unset.is_empty() {
            return Err(Status::invalid_argument(
                "nothing to change: give keys to set or unset",
            ));
        }
        let request = ReleaseRequest {
            env: EnvInput::Change {
                set: req.set.into_iter().collect(),
                unset: req.unset,
            },
            parent: parent_release(req.parent_release.as_deref())?,
            expected_newest: req
                .expected_newest_release
                .as_deref()
                .map(|id| match id {
                    "" => Ok(ExpectedNewest::NoRelease),
                    id => release_id("expected_newest_release", id).map(ExpectedNewest::Release),
                })
                .transpose()?,
            ..ReleaseRequest::keep()
        };
        let release = self.release_once(claim, &app, &request, &actor).await?;
        Ok(Response::new(pb::ChangeEnvResponse {
            release: Some(release_pb(release)),
        }))
    }

    async fn get_release(
        &self,
        request: Request<pb::GetReleaseRequest>,
    ) -> Result<Response<pb::GetReleaseResponse>, Status> {
        let req = request.into_inner();
        let app = app_name(&req.app)?;
        let id = (!req.id.is_empty())
            .then(|| release_id("id", &req.id))
            .transpose()?;
        let release = self.service.store().get_release(&app, id.as_ref()).await?;
        Ok(Response::new(pb::GetReleaseResponse {
            release: Some(release_pb(release)),
        }))
    }

    async fn list_releases(
        &self,
        request: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        let req = request.into_inner();
        let app = app_name(&req.app)?;
        let limit = limit(req.limit, 10)?;
        let before = if req.page_token.is_empty() {
            None
        } else {
            Some(
                req.page_token
                    .parse::<i64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "page_token {:?} is not one this service issued",
                            req.page_token
                        ))
                    })?,
            )
        };
        // A page holds `limit` releases, or fewer when they would not fit in
        // one message; the token then resumes after the last one sent.
        let (releases, cut) = self
            .service
            .store()
            .list_releases(&app, limit, before, slipway_rpc::PAGE_BYTES)
            .await?;
        let next_page_token = match releases.last() {
            Some(last) if (cut || releases.len() == limit as usize) && last.seq > 1 => {
                last.seq.to_string()
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListReleasesResponse {
            releases: releases.into_iter().map(release_pb).collect(),
            next_page_token,
        }))
    }

    async fn promote_release(
        &self,
        request: Request<pb::PromoteReleaseRequest>,
    ) -> Result<Response<pb::PromoteReleaseResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let key = slipway_rpc::idempotency::key_of(&request)?;
        let req = request.into_inner();
        let app = app_name(&req.app)?;
        let release = release_id("release", &req.release)?;
        let deadline = (req.deadline_seconds != 0).then_some(req.deadline_seconds);
        let claim = self.service.store().claim(
            key,
            "PromoteRelease",
            Fingerprint::default()
                .field(app.as_str())
                .field(release.as_str())
                .field(format!("{} {}", req.force, req.deadline_seconds)),
        );
        let force = req.force;
        let (store, service, app, release, actor) =
            (self.service.store(), &self.service, &app, &release, &actor);
        let promoted = store
            .once(claim, move |done: Recorded| async move {
                match done.get(idempotency::PROMOTION) {
                    Some(id) => Ok(Promoted::Started(
                        store.get_promotion(&recorded_promotion(id)?).await?,
                    )),
                    None => service.promote(app, release, force, deadline, actor).await,
                }
            })
            .await?;
        Ok(Response::new(promoted_pb(promoted)))
    }

    async fn rollback_release(
        &self,
        request: Request<pb::RollbackReleaseRequest>,
    ) -> Result<Response<pb::RollbackReleaseResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let key = slipway_rpc::idempotency::key_of(&request)?;
        let req = request.into_inner();
        let app = app_name(&req.app)?;
        let release = release_id("release", &req.release)?;
        let deadline = (req.deadline_seconds != 0).then_some(req.deadline_seconds);
        let claim = self.service.store().claim(
            key,
            "RollbackRelease",
            Fingerprint::default()
                .field(app.as_str())
                .field(release.as_str())
                .field(req.deadline_seconds.to_string()),
        );
        let (store, service, app, release, actor) =
            (self.service.store(), &self.service, &app, &release, &actor);
        let (copy, promoted) = store
            .once(claim, move |done: Recorded| async move {
                // The copy and its promotion are two steps; a retry after a
                // crash between them promotes the copy already made.
                match (
                    done.get(idempotency::RELEASE),
                    done.get(idempotency::PROMOTION),
                ) {
                    (None, _) => service.rollback(app, release, deadline, actor).await,
                    (Some(copy), promotion) => {
                        let copy = store
                            .get_release(app, Some(&recorded_release(copy)?))
                            .await?;
                        let promoted = match promotion {
                            Some(id) => Promoted::Started(
                                store.get_promotion(&recorded_promotion(id)?).await?,
                            ),
                            None => {
                                service
                                    .promote(app, &copy.id, false, deadline, actor)
                                    .await?
                            }
                        };
                        Ok((copy, promoted))
                    }
                }
            })
            .await?;
        let promotion = match promoted {
            Promoted::Started(p) => Some(promotion_pb(p)),
            Promoted::AlreadyActive(_) => None,
        };
        Ok(Response::new(pb::RollbackReleaseResponse {
            release: Some(release_pb(copy)),
            promotion,
        }))
    }

    async fn cancel_promotion(
        &self,
        request: Request<pb::CancelPromotionRequest>,
    ) -> Result<Response<pb::CancelPromotionResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let key = slipway_rpc::idempotency::key_of(&request)?;
        let app = app_name(&request.get_ref().app)?;
        let (store, service, app, actor) = (self.service.store(), &self.service, &app, &actor);
        let claim = store.claim(
            key,
            "CancelPromotion",
            Fingerprint::default().field(app.as_str()),
        );
        let promotion = store
            .once(claim, move |done: Recorded| async move {
                match done.get(idempotency::PROMOTION) {
                    Some(id) => store.get_promotion(&recorded_promotion(id)?).await,
                    None => {
                        let promotion = service.cancel(app, actor).await?;
                        store
                            .record_done(idempotency::PROMOTION, promotion.id.as_str())
                            .await;
                        Ok(promotion)
                    }
                }
            })
            .await?;
        Ok(Response::new(pb::CancelPromotionResponse {
            promotion: Some(promotion_pb(promotion)),
        }))
    }

    async fn get_promotion(
        &self,
        request: Request<pb::GetPromotionRequest>,
    ) -> Result<Response<pb::GetPromotionResponse>, Status> {
        let id = promotion_id(&request.get_ref().id)?;
        let promotion = self.service.store().get_promotion(&id).await?;
        Ok(Response::new(pb::GetPromotionResponse {
            promotion: Some(promotion_pb(promotion)),
        }))
    }

    async fn list_promotions(
        &self,
        request: Request<pb::ListPromotionsRequest>,
    ) -> Result<Response<pb::ListPromotionsResponse>, Status> {
        let req = request.into_inner();
        let app = app_name(&req.app)?;
        let promotions = self
            .service
            .store()
            .list_promotions(&app, limit(req.limit, 20)?)
            .await?;
        Ok(Response::new(pb::ListPromotionsResponse {
            promotions: fit(
                promotions.into_iter().map(promotion_pb).collect(),
                "promotions",
            ),
        }))
    }

    async fn complete_promotion(
        &self,
        request: Request<pb::CompletePromotionRequest>,
    ) -> Result<Response<pb::CompletePromotionResponse>, Status> {
        let req = request.into_inner();
        let outcome: PromotionOutcome = slipway_api::promotion::promotion_outcome(req.outcome)
            .map_err(|_| {
                Status::invalid_argument(
                    "outcome must be SUCCEEDED, ROLLED_BACK, FAILED or CANCELLED",
                )
            })?;
        let promotion = promotion_id(&req.promotion)?;
        let promotion = self
            .service
            .complete(
                &promotion,
                outcome,
                &req.reason,
                req.lease_epoch,
                req.cancelled,
            )
            .await?;
        Ok(Response::new(pb::CompletePromotionResponse {
            promotion: Some(promotion_pb(promotion)),
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let req = request.into_inner();
        let app = (!req.app.is_empty())
            .then(|| app_name(&req.app))
            .transpose()?;
        let events = self
            .service
            .store()
            .list_audit(app.as_ref(), limit(req.limit, 100)?)
            .await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: fit(events.into_iter().map(audit_pb).collect(), "audit events"),
        }))
    }
}

/// Cuts the answer of a list call without a page token to what fits in one
/// message (newest first where the list is ordered by time). Real lists are
/// far smaller; this keeps a pathological one answering instead of failing.
fn fit<M: prost::Message>(mut items: Vec<M>, what: &str) -> Vec<M> {
    let fits = slipway_rpc::limits::page_len(&items);
    if fits < items.len() {
        tracing::warn!(
            kept = fits,
            total = items.len(),
            "{what} cut short to fit one gRPC message"
        );
        items.truncate(fits);
    }
    items
}

fn app_name(value: &str) -> Result<AppName, Status> {
    AppName::parse(value).map_err(|e| Status::invalid_argument(format!("app: {e}")))
}

fn release_id(field: &str, value: &str) -> Result<ReleaseId, Status> {
    ReleaseId::parse(value).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// The optional `parent_release` field; empty means none.
fn parent_release(value: Option<&str>) -> Result<Option<ReleaseId>, Status> {
    value
        .filter(|p| !p.is_empty())
        .map(|p| release_id("parent_release", p))
        .transpose()
}

fn build_id(value: &str) -> Result<BuildId, Status> {
    BuildId::parse(value).map_err(|e| Status::invalid_argument(format!("build: {e}")))
}

fn limit(requested: u32, default: u32) -> Result<u32, Status> {
    match requested {
        0 => Ok(default),
        n if n > MAX_LIMIT => Err(Status::invalid_argument(format!(
            "limit must be at most {MAX_LIMIT}, got {n}"
        ))),
        n => Ok(n),
    }
}

impl Grpc {
    /// Creates a release once per idempotency key: a key that made one
    /// answers that release again.
    async fn release_once(
        &self,
        claim: Option<idempotency::Claim>,
        app: &AppName,
        request: &ReleaseRequest,
        actor: &str,
    ) -> Result<Release, Status> {
        let store = self.service.store();
        Ok(store
            .once(claim, move |done: Recorded| async move {
                match done.get(idempotency::RELEASE) {
                    Some(id) => store.get_release(app, Some(&recorded_release(id)?)).await,
                    None => store.create_release(app, request, actor).await,
                }
            })
            .await?)
    }
}

/// A release id read back from an idempotency record.
fn recorded_release(id: &str) -> crate::error::Result<ReleaseId> {
    ReleaseId::parse(id).map_err(|e| crate::error::Error::InvalidArgument(e.to_string()))
}

/// A promotion id read back from an idempotency record.
fn recorded_promotion(id: &str) -> crate::error::Result<PromotionId> {
    PromotionId::parse(id).map_err(|e| crate::error::Error::InvalidArgument(e.to_string()))
}

fn promoted_pb(promoted: Promoted) -> pb::PromoteReleaseResponse {
    match promoted {
        Promoted::Started(promotion) => pb::PromoteReleaseResponse {
            promotion: Some(promotion_pb(promotion)),
            noop: false,
            message: String::new(),
        },
        Promoted::AlreadyActive(release) => pb::PromoteReleaseResponse {
            promotion: None,
            noop: true,
            message: format!("release {} is already active", release.id),
        },
    }
}

fn app_pb(app: App) -> pb::App {
    pb::App {
        status: app.status().to_owned(),
        name: app.name.to_string(),
        release: app
            .active_release
            .map(|r| r.to_string())
            .unwrap_or_default(),
        created: Some(timestamp(app.created)),
        deadline_seconds: app.deadline_secs,
        open_promotion: app.open_promotion.map(promotion_pb),
    }
}

/// The env a `CreateRelease` asks for: `env_vars` when given; else the deprecated
/// Convox text `env`, still read (strictly, a malformed line refused) for callers
/// built before `env_vars`; else the forked env is kept.
fn env_input(req: &pb::CreateReleaseRequest) -> Result<EnvInput, Status> {
    let invalid = |e: slipway_domain::env::EnvError| Status::invalid_argument(format!("env: {e}"));
    #[allow(deprecated)]
    let text = req.env.as_deref();
    match (&req.env_vars, text) {
        (Some(vars), _) => Ok(EnvInput::Replace(
            Env::from_map(vars.vars.clone().into_iter().collect()).map_err(invalid)?,
        )),
        (None, Some(text)) => Ok(EnvInput::Replace(Env::parse_wire(text).map_err(invalid)?)),
        (None, None) => Ok(EnvInput::Keep),
    }
}

/// Converts a release into its proto form (the env as a map of exact values).
pub fn release_pb(release: Release) -> pb::Release {
    pb::Release {
        id: release.id.to_string(),
        app: release.app.to_string(),
        build: release.build.map(|b| b.to_string()).unwrap_or_default(),
        env_vars: release.env.into_map().into_iter().collect(),
        manifest: release.manifest,
        description: release.description,
        created: Some(timestamp(release.created)),
        parent: release.parent.map(|p| p.to_string()).unwrap_or_default(),
        rollback_of: release
            .rollback_of
            .map(|p| p.to_string())
            .unwrap_or_default(),
        actor: release.actor,
        artifacts: release.artifacts.into_iter().collect(),
        // `env`, the deprecated Convox text, stays empty.
        ..Default::default()
    }
}

/// Parses a promotion id at the edge; a malformed one is an invalid argument.
fn promotion_id(text: &str) -> Result<PromotionId, Status> {
    if text.is_empty() {
        return Err(Status::invalid_argument("promotion id is required"));
    }
    PromotionId::parse(text).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn promotion_pb(promotion: Promotion) -> pb::Promotion {
    pb::Promotion {
        id: promotion.id.into_string(),
        app: promotion.app.to_string(),
        release: promotion.release.to_string(),
        fallback_release: promotion
            .fallback_release
            .map(|r| r.to_string())
            .unwrap_or_default(),
        state: pb::PromotionState::from(promotion.state) as i32,
        reason: promotion.reason,
        deadline_seconds: promotion.deadline_secs,
        created: Some(timestamp(promotion.created)),
        finished: promotion.finished.map(timestamp),
        actor: promotion.actor,
    }
}

fn audit_pb(event: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        id: event.id,
        time: Some(timestamp(event.at)),
        actor: event.actor,
        action: event.action,
        app: event.app,
        subject: event.subject,
        detail: event.detail,
    }
}
