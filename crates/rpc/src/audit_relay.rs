//! The forwarder every audit outbox relay uses (feature `audit-relay`):
//! a row of a `slipway_storage::outbox::audit` table becomes a
//! `RecordAudit` call on the release service, with the actor and source of
//! the call that made the change, the time of the change and the row's id
//! as the dedup key (the release service appends each id once).
//!
//! It lives here, behind a feature, because it joins the two halves that
//! are kept apart on purpose: `slipway_storage` knows no API types and this
//! crate no database. Only the services that own an audit outbox (build,
//! rollout) turn the feature on; the gateway and the CLI link neither the
//! outbox nor sqlx through it.

use slipway_api::release::v1::RecordAuditRequest;
use slipway_api::release::v1::audit_service_client::AuditServiceClient;
use slipway_storage::outbox::Forward;
use slipway_storage::outbox::audit::AuditEntry;

use crate::Channel;
use crate::actor::Actor;

/// Forwards audit outbox rows to the release service's `RecordAudit`.
#[derive(Clone, Debug)]
pub struct RecordAudit(AuditServiceClient<Channel>);

impl RecordAudit {
    /// A forwarder calling the release service on `channel`.
    pub fn new(channel: Channel) -> Self {
        Self(AuditServiceClient::new(channel))
    }
}

/// The `RecordAudit` request of row `id` (`entry`).
fn request(id: &str, entry: &AuditEntry) -> tonic::Request<RecordAuditRequest> {
    let at = chrono::DateTime::from_timestamp_micros(entry.at_micros).unwrap_or_default();
    Actor::new(&entry.actor, &entry.source).request(RecordAuditRequest {
        action: entry.action.clone(),
        app: entry.app.clone(),
        target: entry.target.clone(),
        outcome: entry.outcome.clone(),
        detail: entry.detail.clone(),
        id: id.to_owned(),
        time: Some(slipway_api::timestamp(at)),
    })
}

impl Forward for RecordAudit {
    type Item = AuditEntry;

    fn decode(&self, row: &sqlx::any::AnyRow) -> Result<AuditEntry, sqlx::Error> {
        AuditEntry::from_row(row)
    }

    async fn forward(&self, id: &str, entry: &AuditEntry) -> Result<(), String> {
        self.0
            .clone()
            .record_audit(request(id, entry))
            .await
            .map(drop)
            .map_err(|s| format!("{}: {}", s.code(), s.message()))
    }
}
