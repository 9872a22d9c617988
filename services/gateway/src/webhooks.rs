//! Slipway's webhook routes, over the release service's `WebhookService`:
//! `GET /webhooks`, `POST /webhooks` (form `url`, `events` comma-separated,
//! `app`), `DELETE /webhooks/{id}`, `GET|POST /webhooks/keys`, `DELETE
//! /webhooks/keys/{id}`, `GET /webhooks/deliveries` (`webhook`, `limit`).
//! A new key (and the key generated with the first receiver) is in the
//! answer of its creation only; receiver URLs come back with their secrets
//! replaced.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use slipway_api::release::v1 as pb;
use slipway_convox::webhooks as wire;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::routes::{form, ok, request};

/// `GET /webhooks`.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<wire::Webhook>>> {
    let hooks = state
        .webhooks
        .clone()
        .list_webhooks(request(&caller, pb::ListWebhooksRequest {}))
        .await?
        .into_inner()
        .webhooks;
    Ok(Json(hooks.into_iter().map(webhook).collect()))
}

/// `POST /webhooks`.
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<Json<wire::CreatedWebhook>> {
    let fields = form(&body);
    let url = fields
        .get("url")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::bad_request("url is required"))?;
    let events = fields
        .get("events")
        .map(|e| {
            e.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let message = pb::CreateWebhookRequest {
        url: Some(pb::WebhookSecret { value: url.clone() }),
        app: fields.get("app").cloned().unwrap_or_default(),
        events,
    };
    let created = state
        .webhooks
        .clone()
        .create_webhook(request(&caller, message))
        .await?
        .into_inner();
    let generated_key = match (created.generated_key, created.generated_secret) {
        (Some(key), Some(secret)) => Some(wire::NewWebhookKey {
            key: webhook_key(key),
            secret: secret.value,
        }),
        _ => None,
    };
    Ok(Json(wire::CreatedWebhook {
        webhook: webhook(created.webhook.unwrap_or_default()),
        generated_key,
    }))
}

/// `DELETE /webhooks/{id}`.
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    state
        .webhooks
        .clone()
        .delete_webhook(request(&caller, pb::DeleteWebhookRequest { id }))
        .await?;
    Ok(ok())
}

/// `GET /webhooks/keys`.
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<wire::WebhookKey>>> {
    let keys = state
        .webhooks
        .clone()
        .list_webhook_keys(request(&caller, pb::ListWebhookKeysRequest {}))
        .await?
        .into_inner()
        .keys;
    Ok(Json(keys.into_iter().map(webhook_key).collect()))
}

/// `POST /webhooks/keys`.
pub(crate) async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<wire::NewWebhookKey>> {
    let created = state
        .webhooks
        .clone()
        .create_webhook_key(request(&caller, pb::CreateWebhookKeyRequest {}))
        .await?
        .into_inner();
    Ok(Json(wire::NewWebhookKey {
        key: webhook_key(created.key.unwrap_or_default()),
        secret: created.secret.map(|s| s.value).unwrap_or_default(),
    }))
}

/// `DELETE /webhooks/keys/{id}`.
pub(crate) async fn delete_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    state
        .webhooks
        .clone()
        .delete_webhook_key(request(&caller, pb::DeleteWebhookKeyRequest { id }))
        .await?;
    Ok(ok())
}

/// The query of `GET /webhooks/deliveries`.
#[derive(serde::Deserialize)]
pub(crate) struct DeliveriesQuery {
    webhook: Option<String>,
    limit: Option<u32>,
}

/// `GET /webhooks/deliveries`.
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<DeliveriesQuery>,
) -> ApiResult<Json<Vec<wire::WebhookDelivery>>> {
    let message = pb::ListWebhookDeliveriesRequest {
        webhook: q.webhook.unwrap_or_default(),
        limit: q.limit.unwrap_or(0),
    };
    let found = state
        .webhooks
        .clone()
        .list_webhook_deliveries(request(&caller, message))
        .await?
        .into_inner()
        .deliveries;
    Ok(Json(found.into_iter().map(delivery).collect()))
}

fn time(t: Option<prost_types::Timestamp>) -> chrono::DateTime<chrono::Utc> {
    t.as_ref()
        .map(slipway_api::from_timestamp)
        .unwrap_or_default()
}

fn webhook(w: pb::Webhook) -> wire::Webhook {
    wire::Webhook {
        id: w.id,
        url: w.url,
        app: w.app,
        events: w.events,
        created: time(w.created),
        actor: w.actor,
    }
}

fn webhook_key(k: pb::WebhookKey) -> wire::WebhookKey {
    wire::WebhookKey {
        id: k.id,
        fingerprint: k.fingerprint,
        created: time(k.created),
        actor: k.actor,
    }
}

fn delivery(d: pb::WebhookDelivery) -> wire::WebhookDelivery {
    wire::WebhookDelivery {
        id: d.id,
        webhook: d.webhook,
        action: d.action,
        app: d.app,
        state: d.state,
        attempts: d.attempts,
        last_status: d.last_status,
        last_error: d.last_error,
        created: time(d.created),
        next_attempt: d.next_attempt.map(|t| time(Some(t))),
        delivered: d.delivered.map(|t| time(Some(t))),
        recent_attempts: d
            .recent_attempts
            .into_iter()
            .map(|a| wire::WebhookAttempt {
                number: a.number,
                at: a.at.map(|t| time(Some(t))),
                status: a.status,
                error: a.error,
                duration_ms: a.duration_ms,
            })
            .collect(),
    }
}
