//! The Convox rack routes (see `shared/reference/convox-rack-api.md`) and
//! Slipway's own additions (atomic env changes, rollback, promotion status).
//! Handlers translate to gRPC and back; they own no state.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use slipway_api::build::v1 as bpb;
use slipway_api::release::v1 as rpb;
use slipway_api::rollout::v1 as opb;
use slipway_convox::types;
use tonic::Request;

use crate::AppState;
use crate::auth::Caller;
use crate::convert;
use crate::error::{ApiError, ApiResult};

/// Form fields, presence-preserving (`env=` with an empty value counts).
pub(crate) type Fields = HashMap<String, String>;

/// Parses a URL-encoded form body whatever its declared content type (the
/// `convox` CLI labels bodiless requests `application/octet-stream`).
pub(crate) fn form(body: &Bytes) -> Fields {
    form_urlencoded::parse(body).into_owned().collect()
}

/// The optional `timeout` form field (seconds; absent or empty is 0, the
/// default deadline).
fn timeout_field(fields: &Fields) -> ApiResult<u32> {
    match fields.get("timeout").filter(|t| !t.is_empty()) {
        Some(t) => t.parse().map_err(|_| {
            ApiError::bad_request(format!("timeout must be a number of seconds, got {t:?}"))
        }),
        None => Ok(0),
    }
}

/// `ok\n`, the answer of calls whose body the CLI ignores.
pub(crate) fn ok() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// Wraps a message in a gRPC request carrying the actor and its source
/// (`slipway-actor`, `slipway-source`).
pub(crate) fn request<T>(caller: &Caller, message: T) -> Request<T> {
    caller.actor.request(message)
}

pub(crate) async fn system(State(state): State<AppState>) -> Json<types::System> {
    Json(types::System {
        count: 1,
        name: state.rack_name.clone(),
        provider: state.provider.clone(),
        status: "running".into(),
        version: crate::VERSION.into(),
        ..Default::default()
    })
}

/// `GET /apps`: the apps the caller's credential covers (every app for the
/// rack password; a scoped token sees only its apps).
pub(crate) async fn list_apps(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<types::App>>> {
    let apps = state
        .reads
        .release
        .read(rpb::ListAppsRequest {}, |mut c, m| async move {
            c.list_apps(m).await
        })
        .await?
        .apps;
    Ok(Json(
        apps.into_iter()
            .filter(|a| caller.grant.covers(&a.name))
            .map(convert::app)
            .collect(),
    ))
}

pub(crate) async fn create_app(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<Json<types::App>> {
    let fields = form(&body);
    let name = fields.get("name").cloned().unwrap_or_default();
    let deadline_seconds = timeout_field(&fields)?;
    let app = state
        .release
        .clone()
        .create_app(request(
            &caller,
            rpb::CreateAppRequest {
                name,
                deadline_seconds,
            },
        ))
        .await?
        .into_inner()
        .app
        .unwrap_or_default();
    Ok(Json(convert::app(app)))
}

pub(crate) async fn get_app(
    State(state): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Json<types::App>> {
    Ok(Json(app_with_status(&state, &app).await?))
}

/// An app, its status refined by the rollout: `rollback` while reverting.
pub(crate) async fn app_with_status(state: &AppState, app: &str) -> ApiResult<types::App> {
    let found = read_app(state, app).await?;
    let reverting = match &found.open_promotion {
        Some(p) if p.state == rpb::PromotionState::RollingOut as i32 => state
            .reads
            .rollout
            .read(
                opb::GetRolloutRequest { id: p.id.clone() },
                |mut c, m| async move { c.get_rollout(m).await },
            )
            .await
            .ok()
            .and_then(|r| r.rollout)
            .is_some_and(|r| r.phase == opb::RolloutPhase::Reverting as i32),
        _ => false,
    };
    let mut out = convert::app(found);
    if reverting {
        out.status = "rollback".into();
    }
    Ok(out)
}

pub(crate) async fn delete_app(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    state
        .release
        .clone()
        .delete_app(request(&caller, rpb::DeleteAppRequest { name: app }))
        .await?;
    Ok(ok())
}

pub(crate) async fn cancel_app(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    state
        .release
        .clone()
        .cancel_promotion(request(&caller, rpb::CancelPromotionRequest { app }))
        .await?;
    Ok(ok())
}

#[derive(serde::Deserialize)]
pub(crate) struct Limit {
    limit: Option<u32>,
}

pub(crate) async fn list_releases(
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(q): Query<Limit>,
) -> ApiResult<Json<Vec<types::Release>>> {
    let message = rpb::ListReleasesRequest {
        app,
        limit: q.limit.unwrap_or(0),
        page_token: String::new(),
    };
    let releases = state
        .reads
        .release
        .read(message, |mut c, m| async move { c.list_releases(m).await })
        .await?
        .releases;
    Ok(Json(releases.into_iter().map(convert::release).collect()))
}

pub(crate) async fn get_release(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<types::Release>> {
    let message = rpb::GetReleaseRequest {
        app,
        id: id.to_uppercase(),
    };
    let release = state
        .reads
        .release
        .read(message, |mut c, m| async move { c.get_release(m).await })
        .await?
        .release
        .unwrap_or_default();
    Ok(Json(convert::release(release)))
}

pub(crate) async fn create_release(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Json<types::Release>> {
    let fields = form(&body);
    // The Convox env text is read here, at the edge; a malformed line is refused
    // (naming its number, never its value) before anything is created.
    let env_vars = fields
        .get("env")
        .map(|text| {
            slipway_domain::Env::parse_wire(text)
                .map(|env| rpb::EnvVars {
                    vars: env.into_map().into_iter().collect(),
                })
                .map_err(|e| ApiError::bad_request(format!("invalid env: {e}")))
        })
        .transpose()?;
    let message = rpb::CreateReleaseRequest {
        app,
        build: fields.get("build").filter(|b| !b.is_empty()).cloned(),
        env_vars,
        description: fields.get("description").cloned(),
        parent_release: fields
            .get("parent-release")
            .filter(|p| !p.is_empty())
            .cloned(),
        ..Default::default()
    };
    let release = state
        .release
        .clone()
        .create_release(request(&caller, message))
        .await?
        .into_inner()
        .release
        .unwrap_or_default();
    Ok(Json(convert::release(release)))
}

pub(crate) async fn promote(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<types::Promotion>> {
    let fields = form(&body);
    let force = fields.get("force").is_some_and(|f| f == "true");
    let deadline_seconds = timeout_field(&fields)?;
    let answer = state
        .release
        .clone()
        .promote_release(request(
            &caller,
            rpb::PromoteReleaseRequest {
                app,
                release: id.to_uppercase(),
                force,
                deadline_seconds,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(promoted(answer)))
}

fn promoted(answer: rpb::PromoteReleaseResponse) -> types::Promotion {
    match answer.promotion {
        Some(p) => convert::promotion(p),
        None => types::Promotion {
            noop: answer.noop,
            message: answer.message,
            state: "succeeded".into(),
            ..Default::default()
        },
    }
}

/// Slipway: `POST /apps/{app}/releases/{id}/rollback` copies the release
/// (described `rollback to R…`) and promotes the copy, in one call.
pub(crate) async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let answer = state
        .release
        .clone()
        .rollback_release(request(
            &caller,
            rpb::RollbackReleaseRequest {
                app,
                release: id.to_uppercase(),
                deadline_seconds: 0,
            },
        ))
        .await?
        .into_inner();
    let release = convert::release(answer.release.unwrap_or_default());
    let promotion = answer.promotion.map(convert::promotion).unwrap_or_default();
    Ok(Json(
        serde_json::json!({ "release": release, "promotion": promotion }),
    ))
}

/// Slipway: `POST /apps/{app}/env` with `{"set":{…},"unset":[…]}` applies the
/// change atomically on the server (no read-modify-write on the client).
pub(crate) async fn change_env(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    Json(change): Json<types::EnvChange>,
) -> ApiResult<Json<types::Release>> {
    let message = rpb::ChangeEnvRequest {
        app,
        set: change.set.into_iter().collect(),
        unset: change.unset,
        parent_release: change.parent.filter(|p| !p.is_empty()),
        expected_newest_release: None,
    };
    let release = state
        .release
        .clone()
        .change_env(request(&caller, message))
        .await?
        .into_inner()
        .release
        .unwrap_or_default();
    Ok(Json(convert::release(release)))
}

/// Slipway: a promotion's state and, when it failed, why.
pub(crate) async fn get_promotion(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<types::Promotion>> {
    Ok(Json(convert::promotion(
        promotion_of_app(&state, &app, &id).await?,
    )))
}

/// Promotion `id`, if it is `app`'s: a route names its app, and another
/// app's promotion is not found there (its status or its events).
pub(crate) async fn promotion_of_app(
    state: &AppState,
    app: &str,
    id: &str,
) -> ApiResult<rpb::Promotion> {
    let promotion = read_promotion(state, id).await?;
    if promotion.app != app {
        return Err(ApiError::not_found(format!("promotion not found: {id}")));
    }
    Ok(promotion)
}

/// App `app` as the release service has it (a read, retried on the next
/// replica); an unknown app is the service's `NotFound` (`app not found: X`).
pub(crate) async fn read_app(state: &AppState, app: &str) -> Result<rpb::App, tonic::Status> {
    Ok(state
        .reads
        .release
        .read(
            rpb::GetAppRequest {
                name: app.to_owned(),
            },
            |mut c, m| async move { c.get_app(m).await },
        )
        .await?
        .app
        .unwrap_or_default())
}

/// Promotion `id` as the release service has it (a read, retried on the
/// next replica).
pub(crate) async fn read_promotion(
    state: &AppState,
    id: &str,
) -> Result<rpb::Promotion, tonic::Status> {
    Ok(state
        .reads
        .release
        .read(
            rpb::GetPromotionRequest { id: id.to_owned() },
            |mut c, m| async move { c.get_promotion(m).await },
        )
        .await?
        .promotion
        .unwrap_or_default())
}

pub(crate) async fn list_builds(
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(q): Query<Limit>,
) -> ApiResult<Json<Vec<types::Build>>> {
    let message = bpb::ListBuildsRequest {
        app,
        limit: q.limit.unwrap_or(0),
    };
    let builds = state
        .reads
        .build
        .read(message, |mut c, m| async move { c.list_builds(m).await })
        .await?
        .builds;
    Ok(Json(builds.into_iter().map(convert::build).collect()))
}

pub(crate) async fn get_build(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    // `builds/{id}.tgz` is the export (the router cannot tell them apart).
    if let Some(id) = id.strip_suffix(".tgz") {
        return crate::builds::export(&state, app, id).await;
    }
    let message = bpb::GetBuildRequest {
        app,
        id: id.to_uppercase(),
    };
    let build = state
        .reads
        .build
        .read(message, |mut c, m| async move { c.get_build(m).await })
        .await?
        .build
        .unwrap_or_default();
    Ok(Json(convert::build(build)).into_response())
}

pub(crate) async fn create_build(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Json<types::Build>> {
    let fields = form(&body);
    let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
    let source_url = field("url");
    if source_url.is_empty() {
        return Err(ApiError::bad_request(
            "url is required: upload the source first (POST /apps/{app}/objects/...)",
        ));
    }
    let message = bpb::CreateBuildRequest {
        app,
        source_url,
        manifest_path: field("manifest"),
        description: field("description"),
        git_sha: field("git-sha"),
        no_cache: field("no-cache") == "true",
    };
    let build = state
        .build
        .clone()
        .create_build(request(&caller, message))
        .await?
        .into_inner()
        .build
        .unwrap_or_default();
    Ok(Json(convert::build(build)))
}

pub(crate) async fn list_processes(
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Vec<types::Process>>> {
    let processes = state
        .reads
        .rollout
        .read(
            opb::ListProcessesRequest { app: app.clone() },
            |mut c, m| async move { c.list_processes(m).await },
        )
        .await?
        .processes;
    let wanted = |key: &str, value: &str| q.get(key).is_none_or(|w| w.is_empty() || w == value);
    Ok(Json(
        processes
            .into_iter()
            .filter(|p| wanted("service", &p.service) && wanted("release", &p.release))
            .map(|p| convert::process(&app, p))
            .collect(),
    ))
}

pub(crate) async fn budget() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "config": null, "state": null }))
}

pub(crate) async fn get_config(Path((_app, name)): Path<(String, String)>) -> ApiError {
    ApiError::not_found(format!("app config not found: {name}"))
}

pub(crate) async fn auth_check() -> Response {
    ok()
}

/// `POST /apps/{app}/objects/{key}`: stores an uploaded source tarball with
/// the build service and answers its `object://` URL. The app must exist:
/// nothing is stored under a name nobody created.
pub(crate) async fn upload_object(
    State(state): State<AppState>,
    _caller: Caller,
    Path((app, key)): Path<(String, String)>,
    body: axum::body::Body,
) -> ApiResult<Json<types::Object>> {
    // The build service's own rule, checked before the body is read; the
    // message says which key and why.
    slipway_domain::validate_object_key(&key).map_err(|e| ApiError::bad_request(e.to_string()))?;
    read_app(&state, &app).await?;
    let url = crate::objects::upload(state.build.clone(), app, key, body).await?;
    Ok(Json(types::Object { url }))
}
