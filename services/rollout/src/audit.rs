//! The rollout service's audit outbox (`rollout_audit_outbox`, see
//! `slipway_storage::outbox`): a row per change this service makes for a
//! caller — `service.scale` and `service.restart`, written in the
//! transaction that records the change's rollout row; `process.run` and
//! `process.stop`, which have no transaction of their own (the runtime
//! starts or stops the process), written *before* the action as a held row
//! and settled with its result (or withdrawn when it was refused). A held
//! row whose service died before settling it is relayed after its hold
//! (a minute) with outcome `unknown`.
//!
//! The relay forwards rows to the release service's `RecordAudit` with the
//! row's id as the dedup key (`slipway_rpc::audit_relay`, shared with the
//! build service), and marks them published only after it
//! answered: nothing is dropped under load or lost in a crash.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use slipway_rpc::Channel;
use slipway_rpc::audit_relay::RecordAudit;
use slipway_storage::now_micros;
use slipway_storage::outbox::Outbox;
use slipway_storage::outbox::audit::{self, AuditEntry};
use sqlx::{Any, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// The audit outbox table.
pub const TABLE: &str = "rollout_audit_outbox";

/// How long a held row (an action in progress) waits for its result.
const HOLD: Duration = Duration::from_secs(60);

/// Woken after each commit that wrote a row.
static WAKE: LazyLock<Arc<Notify>> = LazyLock::new(Arc::default);

/// The audit outbox of `store`.
pub fn outbox(store: &Store) -> Outbox {
    Outbox::with_wake(store.parts().0.clone(), TABLE, audit::COLUMNS, WAKE.clone())
}

/// Wakes the relay (call after committing a row).
pub fn wake() {
    WAKE.notify_one();
}

fn new_id() -> String {
    let bits: u128 = rand::random();
    format!("A{bits:032x}")
}

/// The record of `action` on `target` of `app` by `actor`, from the
/// calling request's source.
fn entry(action: &str, app: &str, target: &str, detail: &str, actor: &str) -> AuditEntry {
    AuditEntry {
        actor: actor.to_owned(),
        source: slipway_rpc::actor::current().source,
        action: action.to_owned(),
        app: app.to_owned(),
        target: target.to_owned(),
        outcome: "ok".to_owned(),
        detail: detail.chars().take(1024).collect(),
        at_micros: now_micros(),
    }
}

/// Writes the record of a change in `tx` (the change's transaction).
pub async fn record(
    tx: &mut Transaction<'static, Any>,
    action: &str,
    app: &str,
    target: &str,
    detail: &str,
    actor: &str,
) -> Result<(), sqlx::Error> {
    let entry = entry(action, app, target, detail, actor);
    audit::write(tx, TABLE, &new_id(), &entry).await
}

/// A held record of an action about to be made (see the module doc).
#[derive(Debug)]
pub struct Held {
    id: String,
    store: Store,
}

/// Writes a held record of `action` before it is made: relayed with
/// outcome `unknown` if nobody settles it within a minute.
pub async fn hold(
    store: &Store,
    action: &str,
    app: &str,
    target: &str,
    actor: &str,
) -> Result<Held, sqlx::Error> {
    let db = store.parts().0;
    let mut entry = entry(
        action,
        app,
        target,
        "the rollout service stopped before the result was known",
        actor,
    );
    entry.outcome = "unknown".to_owned();
    let id = new_id();
    let mut tx = db.begin_write().await?;
    audit::write_due(
        &mut tx,
        TABLE,
        &id,
        &entry,
        Some(now_micros() + HOLD.as_micros() as i64),
    )
    .await?;
    tx.commit().await?;
    Ok(Held {
        id,
        store: store.clone(),
    })
}

impl Held {
    /// The action was made: relay the record now with `detail`.
    pub async fn done(self, detail: &str) {
        let db = self.store.parts().0;
        match audit::settle(db, TABLE, &self.id, "ok", detail).await {
            Ok(_) => wake(),
            // Relayed after the hold as `unknown`: late, not lost.
            Err(e) => tracing::warn!(record = %self.id, "failed to settle an audit record: {e}"),
        }
    }

    /// The action was refused and changed nothing: drop the record.
    pub async fn refused(self) {
        let db = self.store.parts().0;
        if let Err(e) = audit::withdraw(db, TABLE, &self.id).await {
            tracing::warn!(record = %self.id, "failed to withdraw an audit record: {e}");
        }
    }
}

/// Relays the outbox to the release service until `stop` is cancelled.
pub async fn relay_loop(store: Store, channel: Channel, stop: CancellationToken) {
    slipway_storage::outbox::relay_loop(
        outbox(&store),
        RecordAudit::new(channel),
        "audit records",
        stop.cancelled_owned(),
    )
    .await;
}
