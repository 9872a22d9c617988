//! The JSON of Slipway's webhook routes (`/webhooks…`): receivers, signing
//! keys and deliveries. Not Convox routes (a Convox rack configures
//! webhooks elsewhere); the payloads the receivers get are Convox's.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A receiver.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Webhook {
    /// `W` and 32 hex digits.
    pub id: String,
    /// The URL with its user info and query replaced by `***`.
    pub url: String,
    /// The app it listens to; empty for all.
    #[serde(default)]
    pub app: String,
    /// The actions it receives; empty for all.
    #[serde(default)]
    pub events: Vec<String>,
    /// When it was added.
    pub created: DateTime<Utc>,
    /// Who added it.
    #[serde(default)]
    pub actor: String,
}

/// A signing key's public face.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WebhookKey {
    /// `K` and 32 hex digits.
    pub id: String,
    /// First 16 hex digits of the key's SHA-256.
    pub fingerprint: String,
    /// When it was added.
    pub created: DateTime<Utc>,
    /// Who added it.
    #[serde(default)]
    pub actor: String,
}

/// A key as its creation answers it: the only time the key is shown.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NewWebhookKey {
    /// The key's public face.
    #[serde(flatten)]
    pub key: WebhookKey,
    /// The key itself.
    pub secret: String,
}

/// `POST /webhooks`'s answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CreatedWebhook {
    /// The receiver.
    pub webhook: Webhook,
    /// The signing key generated with the first receiver, shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_key: Option<NewWebhookKey>,
}

/// One event to one receiver.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WebhookDelivery {
    /// `<event>-<webhook>`, the same on every attempt.
    pub id: String,
    /// The receiver.
    pub webhook: String,
    /// The event's action.
    pub action: String,
    /// The event's app.
    pub app: String,
    /// `pending`, `delivered`, `failed` or `cancelled`.
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// HTTP status of the last attempt; 0 when it got none.
    pub last_status: u32,
    /// Why the last attempt failed.
    #[serde(default)]
    pub last_error: String,
    /// When the event happened.
    pub created: DateTime<Utc>,
    /// When a pending delivery is tried next.
    #[serde(default)]
    pub next_attempt: Option<DateTime<Utc>>,
    /// When it was delivered.
    #[serde(default)]
    pub delivered: Option<DateTime<Utc>>,
    /// The most recent attempts, newest first (at most 10; attempts are
    /// kept for 7 days).
    #[serde(default)]
    pub recent_attempts: Vec<WebhookAttempt>,
}

/// One attempt of a delivery.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WebhookAttempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// When it was made.
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    /// HTTP status; 0 when it got none.
    pub status: u32,
    /// Why it failed; empty when delivered.
    #[serde(default)]
    pub error: String,
    /// How long it took, in milliseconds.
    #[serde(default)]
    pub duration_ms: u32,
}
