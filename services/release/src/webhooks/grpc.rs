//! gRPC translation for `slipway.release.v1.WebhookService`: ids, URLs and
//! event names are checked here (INVALID_ARGUMENT naming the field), the
//! store does the rest. Secrets travel only in `WebhookSecret`, whose Debug
//! is redacted.

use slipway_api::release::v1 as pb;
use slipway_api::release::v1::webhook_service_server::WebhookService as WebhookRpc;
use slipway_api::timestamp;
use slipway_domain::AppName;
use tonic::{Request, Response, Status};

use super::url::WebhookUrl;
use super::{ACTIONS, Delivery, Event, KeyInfo, Webhook};
use crate::store::Store;

/// Most deliveries one list returns.
const MAX_DELIVERIES: u32 = 1000;

/// The gRPC face of the webhooks.
#[derive(Clone, Debug)]
pub struct Grpc {
    store: Store,
    allow_private: bool,
}

impl Grpc {
    /// Serves `store`'s webhooks; `allow_private` as `--webhook-allow-private`.
    pub fn new(store: Store, allow_private: bool) -> Self {
        Self {
            store,
            allow_private,
        }
    }
}

#[tonic::async_trait]
impl WebhookRpc for Grpc {
    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::CreateWebhookResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let req = request.into_inner();
        let text = req.url.map(|u| u.value).unwrap_or_default();
        let url =
            WebhookUrl::parse(&text).map_err(|e| Status::invalid_argument(format!("url: {e}")))?;
        url.check_literal(self.allow_private)
            .map_err(|e| Status::invalid_argument(format!("url: {e}")))?;
        let app = (!req.app.is_empty())
            .then(|| {
                AppName::parse(&req.app).map_err(|e| Status::invalid_argument(format!("app: {e}")))
            })
            .transpose()?;
        let (webhook, generated) = self
            .store
            .create_webhook(&url, app.as_ref(), &req.events, &actor)
            .await?;
        tracing::info!(webhook = %webhook.id, url = %webhook.url_display, "webhook added");
        let (generated_key, generated_secret) = match generated {
            Some((key, secret)) => (Some(key_pb(key)), Some(pb::WebhookSecret { value: secret })),
            None => (None, None),
        };
        Ok(Response::new(pb::CreateWebhookResponse {
            webhook: Some(webhook_pb(webhook)),
            generated_key,
            generated_secret,
        }))
    }

    async fn list_webhooks(
        &self,
        _request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let webhooks = self.store.list_webhooks().await?;
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: webhooks.into_iter().map(webhook_pb).collect(),
        }))
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let id = checked_id("id", 'W', &request.get_ref().id)?;
        self.store.delete_webhook(&id, &actor).await?;
        Ok(Response::new(pb::DeleteWebhookResponse {}))
    }

    async fn create_webhook_key(
        &self,
        request: Request<pb::CreateWebhookKeyRequest>,
    ) -> Result<Response<pb::CreateWebhookKeyResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let (key, secret) = self.store.create_webhook_key(&actor).await?;
        tracing::info!(key = %key.id, fingerprint = %key.fingerprint, "webhook signing key added");
        Ok(Response::new(pb::CreateWebhookKeyResponse {
            key: Some(key_pb(key)),
            secret: Some(pb::WebhookSecret { value: secret }),
        }))
    }

    async fn list_webhook_keys(
        &self,
        _request: Request<pb::ListWebhookKeysRequest>,
    ) -> Result<Response<pb::ListWebhookKeysResponse>, Status> {
        let keys = self.store.list_webhook_keys().await?;
        Ok(Response::new(pb::ListWebhookKeysResponse {
            keys: keys.into_iter().map(key_pb).collect(),
        }))
    }

    async fn delete_webhook_key(
        &self,
        request: Request<pb::DeleteWebhookKeyRequest>,
    ) -> Result<Response<pb::DeleteWebhookKeyResponse>, Status> {
        let actor = slipway_rpc::actor(&request);
        let id = checked_id("id", 'K', &request.get_ref().id)?;
        self.store.delete_webhook_key(&id, &actor).await?;
        Ok(Response::new(pb::DeleteWebhookKeyResponse {}))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let req = request.into_inner();
        let webhook = (!req.webhook.is_empty())
            .then(|| checked_id("webhook", 'W', &req.webhook))
            .transpose()?;
        let limit = match req.limit {
            0 => 50,
            n if n > MAX_DELIVERIES => {
                return Err(Status::invalid_argument(format!(
                    "limit must be at most {MAX_DELIVERIES}, got {n}"
                )));
            }
            n => n,
        };
        let deliveries = self
            .store
            .list_deliveries(webhook.as_deref(), limit)
            .await?;
        Ok(Response::new(pb::ListWebhookDeliveriesResponse {
            deliveries: deliveries.into_iter().map(delivery_pb).collect(),
        }))
    }

    async fn publish_webhook_event(
        &self,
        request: Request<pb::PublishWebhookEventRequest>,
    ) -> Result<Response<pb::PublishWebhookEventResponse>, Status> {
        let req = request.into_inner();
        let id = checked_id("id", 'E', &req.id)?;
        if !ACTIONS.contains(&req.action.as_str()) {
            return Err(Status::invalid_argument(format!(
                "action: unknown action {:?}",
                req.action
            )));
        }
        if !matches!(req.status.as_str(), "success" | "error") {
            return Err(Status::invalid_argument("status: must be success or error"));
        }
        AppName::parse(&req.app).map_err(|e| Status::invalid_argument(format!("app: {e}")))?;
        let at = req
            .timestamp
            .as_ref()
            .map(slipway_api::from_timestamp)
            .ok_or_else(|| Status::invalid_argument("timestamp: missing"))?;
        let event = Event {
            id,
            action: req.action,
            status: req.status,
            app: req.app,
            actor: req.actor.chars().take(128).collect(),
            subject: req.subject.chars().take(128).collect(),
            message: req.message.chars().take(4096).collect(),
            at_micros: at.timestamp_micros(),
        };
        self.store.publish_event(&event).await?;
        Ok(Response::new(pb::PublishWebhookEventResponse {}))
    }
}

/// `prefix` and 32 lower-case hex digits.
fn checked_id(field: &str, prefix: char, value: &str) -> Result<String, Status> {
    let ok = value.len() == 33
        && value.starts_with(prefix)
        && value[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(Status::invalid_argument(format!(
            "{field}: expected {prefix} and 32 hex digits, got {value:?}"
        )))
    }
}

fn webhook_pb(w: Webhook) -> pb::Webhook {
    pb::Webhook {
        id: w.id,
        url: w.url_display,
        app: w.app.unwrap_or_default(),
        events: w.events,
        created: Some(timestamp(w.created)),
        actor: w.actor,
    }
}

fn key_pb(k: KeyInfo) -> pb::WebhookKey {
    pb::WebhookKey {
        id: k.id,
        fingerprint: k.fingerprint,
        created: Some(timestamp(k.created)),
        actor: k.actor,
    }
}

fn delivery_pb(d: Delivery) -> pb::WebhookDelivery {
    pb::WebhookDelivery {
        id: d.id,
        webhook: d.webhook,
        action: d.action,
        app: d.app,
        state: d.state,
        attempts: d.attempts,
        last_status: d.last_status,
        last_error: d.last_error,
        created: Some(timestamp(d.created)),
        next_attempt: d.next_attempt.map(timestamp),
        delivered: d.delivered.map(timestamp),
        recent_attempts: d
            .recent_attempts
            .into_iter()
            .map(|a| pb::WebhookAttempt {
                number: a.number,
                at: Some(timestamp(a.at)),
                status: a.status,
                error: a.error,
                duration_ms: a.duration_ms,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        checked_id("id", 'W', &format!("W{}", "a".repeat(32))).unwrap();
        for bad in [
            "",
            "W",
            "Wxyz",
            &format!("K{}", "a".repeat(32)),
            &format!("W{}", "A".repeat(32)),
        ] {
            let err = checked_id("id", 'W', bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }
}
