//! Build export and import (reference part 2 §5.4, §5.5):
//! `GET /apps/{app}/builds/{id}.tgz` answers the archive's raw bytes
//! (streamed, no `Content-Encoding`, so Go's client does not unzip it);
//! `POST /apps/{app}/builds/import` takes an archive (chunked or not) under
//! the upload cap, stores it like a source upload and has the build service
//! build it into a new build and release, answering the Build with its
//! `release`. The build service checks the archive as it checks every
//! source (safe unpacking, caps, a manifest that parses).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse as _, Response};
use futures::StreamExt as _;
use slipway_api::build::v1 as bpb;
use slipway_convox::types;

use crate::AppState;
use crate::auth::Caller;
use crate::convert;
use crate::error::ApiResult;
use crate::routes::request;

/// `GET /apps/{app}/builds/{id}.tgz` (reached through the build route:
/// `id` here is without `.tgz`).
pub(crate) async fn export(state: &AppState, app: String, id: &str) -> ApiResult<Response> {
    let chunks = state
        .archives
        .clone()
        .export_build(bpb::ExportBuildRequest {
            app,
            id: id.to_uppercase(),
        })
        .await?
        .into_inner();
    let body = Body::from_stream(chunks.map(|m| m.map(|m| m.chunk)));
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

/// A fresh object key for an uploaded archive: the time and a per-call
/// hash with the process's random keys, so two imports never share one.
fn import_key() -> String {
    use std::hash::BuildHasher as _;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let salt = std::collections::hash_map::RandomState::new().hash_one(n);
    format!("imports/{nanos:x}-{salt:016x}.tgz")
}

/// `POST /apps/{app}/builds/import`: the raw archive as the body.
pub(crate) async fn import(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    body: Body,
) -> ApiResult<Json<types::Build>> {
    // Nothing is stored under a name nobody created.
    crate::routes::read_app(&state, &app).await?;
    let key = import_key();
    let source_url = crate::objects::upload(state.build.clone(), app.clone(), key, body).await?;
    let build = state
        .archives
        .clone()
        .import_build(request(
            &caller,
            bpb::ImportBuildRequest { app, source_url },
        ))
        .await?
        .into_inner()
        .build
        .unwrap_or_default();
    Ok(Json(convert::build(build)))
}
