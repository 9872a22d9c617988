//! Slipway's token routes (admin only, see access.rs): `POST /tokens`
//! (form: `name`, `role`, `apps` comma-separated, `expires` a duration such
//! as `30d`) answers the token's value once; `GET /tokens` lists names,
//! roles, scopes and times, never values; `DELETE /tokens/{name}` revokes.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use slipway_api::release::v1 as rpb;
use slipway_convox::access::{CreatedToken, Token};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::routes::{form, ok};

fn token_json(token: rpb::Token) -> Token {
    let role = match rpb::TokenRole::try_from(token.role) {
        Ok(rpb::TokenRole::Read) => "read",
        Ok(rpb::TokenRole::Deploy) => "deploy",
        Ok(rpb::TokenRole::Admin) => "admin",
        _ => "unknown",
    };
    Token {
        name: token.name,
        role: role.into(),
        apps: token.apps,
        created: token.created.as_ref().map(slipway_api::from_timestamp),
        created_by: token.created_by,
        last_used: token.last_used.as_ref().map(slipway_api::from_timestamp),
        expires: token.expires.as_ref().map(slipway_api::from_timestamp),
    }
}

/// `POST /tokens`.
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<Json<CreatedToken>> {
    let fields = form(&body);
    let field = |name: &str| {
        fields
            .get(name)
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let role = match field("role").as_str() {
        "read" => rpb::TokenRole::Read,
        "deploy" => rpb::TokenRole::Deploy,
        "admin" => rpb::TokenRole::Admin,
        other => {
            return Err(ApiError::bad_request(format!(
                "role must be read, deploy or admin, got {other:?}"
            )));
        }
    };
    let apps = field("apps")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    let expires_in_seconds = match field("expires").as_str() {
        "" | "never" => 0,
        text => humantime::parse_duration(text)
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid expires {text:?}: expected a duration like 30d or 12h"
                ))
            })?
            .as_secs()
            .max(1),
    };
    let answer = state
        .token_client
        .clone()
        .create_token(caller.actor.request(rpb::CreateTokenRequest {
            name: field("name"),
            role: role as i32,
            apps,
            expires_in_seconds,
        }))
        .await?
        .into_inner();
    state.tokens.refresh(&mut state.token_client.clone()).await;
    Ok(Json(CreatedToken {
        token: token_json(answer.token.unwrap_or_default()),
        value: answer.value.map(|v| v.value).unwrap_or_default(),
    }))
}

/// `GET /tokens`.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Token>>> {
    let tokens = state
        .token_client
        .clone()
        .list_tokens(caller.actor.request(rpb::ListTokensRequest {}))
        .await?
        .into_inner()
        .tokens;
    Ok(Json(tokens.into_iter().map(token_json).collect()))
}

/// `DELETE /tokens/{name}`.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<axum::response::Response> {
    state
        .token_client
        .clone()
        .revoke_token(caller.actor.request(rpb::RevokeTokenRequest { name }))
        .await?;
    state.tokens.refresh(&mut state.token_client.clone()).await;
    Ok(ok())
}
