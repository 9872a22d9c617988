//! The relays of the build service's outboxes (see
//! `slipway_storage::outbox`): every replica claims due rows under a lease
//! and hands each to the release service, which records each id once:
//!
//! - `build:create` webhook events go to `PublishWebhookEvent`, which writes
//!   them into its own outbox and delivers them (receiver URLs and signing
//!   keys stay in the release service; this service holds none of them);
//! - `build.create` audit records go to `RecordAudit`, with the actor and
//!   source of the call that started the build (the forwarder the rollout
//!   service's audit outbox uses too: `slipway_rpc::audit_relay`).
//!
//! Until the release service answers, rows wait here, retried with backoff
//! (1 s growing to a minute), never dropped; published rows are pruned
//! after 7 days.

use slipway_api::release::v1::PublishWebhookEventRequest;
use slipway_api::release::v1::webhook_service_client::WebhookServiceClient;
use slipway_rpc::Channel;
use slipway_rpc::audit_relay::RecordAudit;
use slipway_storage::outbox::{Forward, relay_loop as relay};
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::store::outbox::OutboxEvent;

/// Relays both outboxes until `stop` is cancelled.
pub async fn relay_loop(store: Store, channel: Channel, stop: CancellationToken) {
    let webhooks = relay(
        store.webhook_outbox(),
        Webhooks(WebhookServiceClient::new(channel.clone())),
        "webhook events",
        stop.clone().cancelled_owned(),
    );
    let audit = relay(
        store.audit_outbox(),
        RecordAudit::new(channel),
        "audit records",
        stop.cancelled_owned(),
    );
    tokio::join!(webhooks, audit);
}

/// `build:create` events to `PublishWebhookEvent`.
struct Webhooks(WebhookServiceClient<Channel>);

impl Forward for Webhooks {
    type Item = OutboxEvent;

    fn decode(&self, row: &sqlx::any::AnyRow) -> Result<OutboxEvent, sqlx::Error> {
        OutboxEvent::from_row(row)
    }

    async fn forward(&self, _id: &str, event: &OutboxEvent) -> Result<(), String> {
        let at = chrono::DateTime::from_timestamp_micros(event.at_micros).unwrap_or_default();
        let request = tonic::Request::new(PublishWebhookEventRequest {
            id: event.id.clone(),
            action: event.action.clone(),
            status: event.status.clone(),
            app: event.app.clone(),
            actor: event.actor.clone(),
            subject: event.subject.clone(),
            message: event.message.clone(),
            timestamp: Some(slipway_api::timestamp(at)),
        });
        self.0
            .clone()
            .publish_webhook_event(request)
            .await
            .map(drop)
            .map_err(|s| format!("{}: {}", s.code(), s.message()))
    }
}
