//! Webhooks compatible with Convox's: the events the release service
//! announces, receivers and signing keys, and delivery from the durable
//! outbox (`store/webhooks.rs`) to the receivers.
//!
//! The path of an event: the store writes it (`webhook_events`) and one
//! delivery per matching receiver (`webhook_deliveries`) in the transaction
//! that records what it announces, then wakes this replica's dispatcher
//! ([`deliver`]); every replica's dispatcher also polls for due deliveries,
//! claims them under a lease, posts them ([`payload`], [`sign`]) and records
//! the result under its claim, retrying as [`retry`] decides. Nothing on a
//! request's path waits for a receiver.

pub mod config;
pub mod deliver;
pub mod grpc;
pub mod payload;
pub mod retry;
pub mod sign;
pub mod url;

use chrono::{DateTime, Utc};

pub use config::WebhookArgs;

/// The actions a receiver may subscribe to, as Convox names them.
pub const ACTIONS: [&str; 7] = [
    APP_CREATE,
    BUILD_CREATE,
    RELEASE_CREATE,
    RELEASE_PROMOTE,
    PROMOTE_COMPLETED,
    PROMOTE_ERRORED,
    PROMOTE_CANCELLED,
];
/// An app was created.
pub const APP_CREATE: &str = "app:create";
/// A build started, or failed (`status: error`).
pub const BUILD_CREATE: &str = "build:create";
/// A release was appended to the ledger.
pub const RELEASE_CREATE: &str = "release:create";
/// A promotion started.
pub const RELEASE_PROMOTE: &str = "release:promote";
/// A promotion made its release active.
pub const PROMOTE_COMPLETED: &str = "app:promote:completed";
/// A promotion rolled back or failed; `data.message` says why.
pub const PROMOTE_ERRORED: &str = "app:promote:errored";
/// A promotion was cancelled before it rolled out.
pub const PROMOTE_CANCELLED: &str = "app:promote:cancelled";

/// At most this many signing keys are active at once (a rotation).
pub const MAX_KEYS: usize = 4;

/// One event, as the outbox holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `E` and 32 hex digits.
    pub id: String,
    /// One of [`ACTIONS`].
    pub action: String,
    /// `success` or `error`.
    pub status: String,
    /// The app it is about.
    pub app: String,
    /// Who caused it.
    pub actor: String,
    /// The build, release or promotion it is about (`data.id`).
    pub subject: String,
    /// `data.message`: a reason or a description.
    pub message: String,
    /// When it happened, microseconds since the epoch.
    pub at_micros: i64,
}

impl Event {
    /// A new event with a fresh id, happening at `at_micros`.
    pub fn new(
        action: &str,
        status: &str,
        app: &str,
        actor: &str,
        subject: &str,
        message: &str,
        at_micros: i64,
    ) -> Self {
        Self {
            id: new_id('E'),
            action: action.to_owned(),
            status: status.to_owned(),
            app: app.to_owned(),
            actor: actor.to_owned(),
            subject: subject.to_owned(),
            message: message.to_owned(),
            at_micros,
        }
    }
}

/// A receiver.
#[derive(Clone, Debug)]
pub struct Webhook {
    /// `W` and 32 hex digits.
    pub id: String,
    /// The URL with its secrets replaced (see [`url::WebhookUrl::display`]).
    pub url_display: String,
    /// The app it listens to; `None` for all.
    pub app: Option<String>,
    /// The actions it receives; empty for all.
    pub events: Vec<String>,
    /// Who added it.
    pub actor: String,
    /// When.
    pub created: DateTime<Utc>,
}

/// A signing key's public face.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    /// `K` and 32 hex digits.
    pub id: String,
    /// First 16 hex digits of the key's SHA-256.
    pub fingerprint: String,
    /// Who added it.
    pub actor: String,
    /// When.
    pub created: DateTime<Utc>,
}

/// A delivery as `webhooks deliveries` shows it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// `<event id>-<webhook id>`: stable across retries.
    pub id: String,
    /// The receiver.
    pub webhook: String,
    /// The event's action.
    pub action: String,
    /// The event's app.
    pub app: String,
    /// pending | delivered | failed | cancelled
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// HTTP status of the last attempt (0: none).
    pub last_status: u32,
    /// Why the last attempt failed.
    pub last_error: String,
    /// When the event happened.
    pub created: DateTime<Utc>,
    /// When a pending delivery is tried next.
    pub next_attempt: Option<DateTime<Utc>>,
    /// When it was delivered.
    pub delivered: Option<DateTime<Utc>>,
    /// The most recent attempts, newest first (at most 10).
    pub recent_attempts: Vec<DeliveryAttempt>,
}

/// One attempt of a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// 1 for the first.
    pub number: u32,
    /// When it was made (its result recorded).
    pub at: DateTime<Utc>,
    /// HTTP status (0: none).
    pub status: u32,
    /// Why it failed; empty when delivered.
    pub error: String,
    /// How long it took.
    pub duration_ms: u32,
}

/// A fresh id: `prefix` and 32 hex digits (128 random bits).
pub fn new_id(prefix: char) -> String {
    let bits: u128 = rand::random();
    format!("{prefix}{bits:032x}")
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The event that ends a promotion in `state` with `reason`: its action,
/// status and message (`None` for a state that does not end one).
pub fn promotion_end(
    state: slipway_domain::PromotionState,
    reason: &str,
) -> Option<(&'static str, &'static str, String)> {
    use slipway_domain::PromotionState as S;
    match state {
        S::Succeeded => Some((PROMOTE_COMPLETED, "success", reason.to_owned())),
        S::RolledBack | S::Failed => Some((
            PROMOTE_ERRORED,
            "error",
            if reason.is_empty() {
                state.as_str().replace('_', " ")
            } else {
                reason.to_owned()
            },
        )),
        S::Cancelled => Some((PROMOTE_CANCELLED, "success", reason.to_owned())),
        S::Pending | S::RollingOut => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_domain::PromotionState as S;

    #[test]
    fn each_end_of_a_promotion_has_one_event() {
        assert_eq!(
            promotion_end(S::Succeeded, "").unwrap().0,
            PROMOTE_COMPLETED
        );
        let (action, status, message) =
            promotion_end(S::RolledBack, "health check failed").unwrap();
        assert_eq!(
            (action, status, message.as_str()),
            (PROMOTE_ERRORED, "error", "health check failed")
        );
        assert_eq!(promotion_end(S::Failed, "").unwrap().2, "failed");
        assert_eq!(promotion_end(S::RolledBack, "").unwrap().2, "rolled back");
        assert_eq!(
            promotion_end(S::Cancelled, "by x").unwrap().0,
            PROMOTE_CANCELLED
        );
        assert!(promotion_end(S::Pending, "").is_none());
        assert!(promotion_end(S::RollingOut, "").is_none());
        assert_eq!(new_id('W').len(), 33);
        assert_eq!(hex(&[0, 255, 16]), "00ff10");
    }
}
