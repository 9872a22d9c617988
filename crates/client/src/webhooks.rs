//! Slipway's webhook routes: receivers, signing keys, deliveries.

use hyper::Method;
use slipway_convox::webhooks::{
    CreatedWebhook, NewWebhookKey, Webhook, WebhookDelivery, WebhookKey,
};

use crate::client::{Body, Client};
use crate::error::Error;

impl Client {
    /// `POST /webhooks`: adds a receiver of `events` (all when empty) of
    /// `app` (all when `None`). The first receiver's answer carries the
    /// signing key generated with it, once.
    pub async fn webhook_create(
        &self,
        url: &str,
        events: &[String],
        app: Option<&str>,
    ) -> Result<CreatedWebhook, Error> {
        let form = vec![
            ("url", url.to_owned()),
            ("events", events.join(",")),
            ("app", app.unwrap_or_default().to_owned()),
        ];
        self.json(Method::POST, &["webhooks"], &[], Body::Form(form))
            .await
    }

    /// `GET /webhooks`: the receivers, URLs without their secrets.
    pub async fn webhooks(&self) -> Result<Vec<Webhook>, Error> {
        self.json(Method::GET, &["webhooks"], &[], Body::Empty)
            .await
    }

    /// `DELETE /webhooks/{id}`: removes a receiver (its pending deliveries
    /// are cancelled).
    pub async fn webhook_remove(&self, id: &str) -> Result<(), Error> {
        self.call(Method::DELETE, &["webhooks", id], &[], Body::Empty)
            .await
            .map(drop)
    }

    /// `POST /webhooks/keys`: generates a signing key; the answer carries
    /// it, once.
    pub async fn webhook_key_create(&self) -> Result<NewWebhookKey, Error> {
        self.json(Method::POST, &["webhooks", "keys"], &[], Body::Empty)
            .await
    }

    /// `GET /webhooks/keys`: ids and fingerprints of the active keys.
    pub async fn webhook_keys(&self) -> Result<Vec<WebhookKey>, Error> {
        self.json(Method::GET, &["webhooks", "keys"], &[], Body::Empty)
            .await
    }

    /// `DELETE /webhooks/keys/{id}`.
    pub async fn webhook_key_remove(&self, id: &str) -> Result<(), Error> {
        self.call(Method::DELETE, &["webhooks", "keys", id], &[], Body::Empty)
            .await
            .map(drop)
    }

    /// `GET /webhooks/deliveries`: recent deliveries, newest first, of one
    /// receiver or all.
    pub async fn webhook_deliveries(
        &self,
        webhook: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<WebhookDelivery>, Error> {
        let mut query = Vec::new();
        if let Some(webhook) = webhook {
            query.push(("webhook", webhook.to_owned()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        self.json(
            Method::GET,
            &["webhooks", "deliveries"],
            &query,
            Body::Empty,
        )
        .await
    }
}
