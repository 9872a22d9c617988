//! Slipway: `GET /apps/{app}/promotions[?limit=N]`, the app's promotions,
//! newest first, with their state and, when they failed, why. The CLI reads
//! it to warn before forking a release whose promotion rolled back.

use axum::Json;
use axum::extract::{Path, Query, State};
use slipway_api::release::v1 as rpb;
use slipway_convox::types;

use crate::AppState;
use crate::convert;
use crate::error::ApiResult;

#[derive(serde::Deserialize)]
pub(crate) struct Limit {
    limit: Option<u32>,
}

pub(crate) async fn list_promotions(
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(q): Query<Limit>,
) -> ApiResult<Json<Vec<types::Promotion>>> {
    let message = rpb::ListPromotionsRequest {
        app,
        limit: q.limit.unwrap_or(0),
    };
    let promotions = state
        .reads
        .release
        .read(
            message,
            |mut c, m| async move { c.list_promotions(m).await },
        )
        .await?
        .promotions;
    Ok(Json(
        promotions.into_iter().map(convert::promotion).collect(),
    ))
}
