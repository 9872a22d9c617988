//! The relay of the build service's webhook outbox: every replica claims
//! due `build:create` events (under a lease, so two replicas never relay
//! one at once and a killed replica's claims expire) and hands each to the
//! release service's `PublishWebhookEvent`, idempotent by event id, which
//! writes it into its own outbox and delivers it. Receiver URLs and signing
//! keys stay in the release service; this service holds no secret of them.
//! Until the release service answers, events wait here, retried with
//! backoff (1 s doubling to a minute), never dropped.

use std::time::Duration;

use slipway_api::release::v1::PublishWebhookEventRequest;
use slipway_api::release::v1::webhook_service_client::WebhookServiceClient;
use slipway_rpc::Channel;
use slipway_storage::now_micros;
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::store::outbox::OutboxEvent;

/// Events relayed per round at most.
const BATCH: usize = 64;
/// A claim outlives the relay call's deadline by this much.
const LEASE: Duration = Duration::from_secs(60);
/// Longest wait between two relays of one event.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often the relay looks for events it was not woken for.
const POLL: Duration = Duration::from_secs(1);

/// Relays the outbox until `stop` is cancelled.
pub async fn relay_loop(store: Store, channel: Channel, stop: CancellationToken) {
    let client = WebhookServiceClient::new(channel);
    let wake = store.outbox_signal();
    let mut failing = false;
    loop {
        if stop.is_cancelled() {
            return;
        }
        match relay_once(&store, &client).await {
            Ok(n) if n == BATCH => continue,
            Ok(_) => {
                if failing {
                    tracing::info!("webhook events reach the release service again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("failed to relay webhook events: {e}");
                    failing = true;
                }
            }
        }
        let mut wait = POLL;
        if let Ok(Some(due)) = store.outbox_next_due().await {
            wait = wait.min(Duration::from_micros((due - now_micros()).max(0) as u64));
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One round: claims due events and relays each. Returns how many were
/// claimed; the first failure is the error (the others are still recorded).
async fn relay_once(
    store: &Store,
    client: &WebhookServiceClient<Channel>,
) -> Result<usize, String> {
    let bits: u128 = rand::random();
    let token = format!("C{bits:032x}");
    let lease_until = now_micros() + LEASE.as_micros() as i64;
    let claimed = store
        .claim_outbox(&token, lease_until, BATCH)
        .await
        .map_err(|e| e.to_string())?;
    let n = claimed.len();
    let mut first_error = None;
    for event in claimed {
        let id = event.id.clone();
        match client.clone().publish_webhook_event(request(&event)).await {
            Ok(_) => {
                if let Err(e) = store.outbox_published(&id, &token).await {
                    // The claim runs out and it is relayed again: the
                    // release service ignores the repeat.
                    tracing::warn!(event = %id, "failed to mark a webhook event relayed: {e}");
                }
            }
            Err(status) => {
                let age = Duration::from_micros((now_micros() - event.at_micros).max(0) as u64);
                // Roughly doubling with the event's age, 1 s to a minute.
                let delay = age
                    .clamp(Duration::from_secs(1), MAX_BACKOFF)
                    .mul_f64(0.5 + rand::random::<f64>() / 2.0);
                let message = format!("{}: {}", status.code(), status.message());
                let retry_at = now_micros() + delay.as_micros() as i64;
                if let Err(e) = store.outbox_failed(&id, &token, &message, retry_at).await {
                    tracing::warn!(event = %id, "failed to record a webhook relay failure: {e}");
                }
                first_error.get_or_insert(message);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

fn request(event: &OutboxEvent) -> tonic::Request<PublishWebhookEventRequest> {
    let at = chrono::DateTime::from_timestamp_micros(event.at_micros).unwrap_or_default();
    tonic::Request::new(PublishWebhookEventRequest {
        id: event.id.clone(),
        action: event.action.clone(),
        status: event.status.clone(),
        app: event.app.clone(),
        actor: event.actor.clone(),
        subject: event.subject.clone(),
        message: event.message.clone(),
        timestamp: Some(slipway_api::timestamp(at)),
    })
}
