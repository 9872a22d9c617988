//! Idempotency keys of the release service's mutating calls (`ChangeEnv`,
//! `CreateRelease`, `PromoteRelease`, `RollbackRelease`, `CancelPromotion`),
//! over the shared [`slipway_storage::idempotency`] (which the build service
//! uses too).
//!
//! A keyed call runs inside [`Store::once`]: a step already done is answered
//! from its record (the release or promotion it made, read back from the
//! ledger), a step not done yet runs, and the transaction that makes the
//! change also writes the step's row ([`record`]; the step learns the claim
//! from a task-local scope, so the ledger's and promotions' transactions
//! take no extra parameter). A call retried after a crash half-way (a
//! rollback whose copy was made but not promoted) finishes what is missing.
//!
//! The request's fingerprint is an HMAC keyed from the env key, so a key
//! reused with another body (409) is told apart without storing anything
//! from which an env value could be guessed.

use std::fmt::Write as _;

pub use slipway_storage::idempotency::{Claim, Fingerprint, Recorded};
use sqlx::{Any, Transaction};

use super::Store;
use crate::error::{Error, Result};

/// The step that made a release (the result is its id).
pub const RELEASE: &str = "release";
/// The step that started or cancelled a promotion (the result is its id).
pub const PROMOTION: &str = "promotion";

tokio::task_local! {
    static CLAIM: Claim;
}

impl From<slipway_storage::idempotency::KeyError> for Error {
    fn from(err: slipway_storage::idempotency::KeyError) -> Self {
        match err {
            slipway_storage::idempotency::KeyError::Reused { .. } => {
                Error::AlreadyExists(err.to_string())
            }
            slipway_storage::idempotency::KeyError::Store(e) => Error::Store(e),
        }
    }
}

impl Store {
    /// The claim of a call with `key` (none without a key).
    pub fn claim(
        &self,
        key: Option<String>,
        method: &'static str,
        request: Fingerprint,
    ) -> Option<Claim> {
        let key = key?;
        // An HMAC under a key only the env key gives (the derivation is
        // one), over the method and the request's fields.
        let mut label = format!("idempotency:{method}:");
        for b in request.bytes() {
            let _ = write!(label, "{b:02x}");
        }
        let fingerprint = self
            .cipher
            .derive_key(&label)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(Claim::new(key, method, fingerprint))
    }

    /// Runs `run` once per key: it gets what earlier calls with the key
    /// recorded and does the rest, with the claim in scope for [`record`].
    /// Without a claim it just runs.
    pub async fn once<T, F, Fut>(&self, claim: Option<Claim>, run: F) -> Result<T>
    where
        F: Fn(Recorded) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        match claim {
            None => run(Recorded::default()).await,
            Some(claim) => {
                self.keys
                    .once(Some(&claim), |done| CLAIM.scope(claim.clone(), run(done)))
                    .await
            }
        }
    }

    /// Records `step` of the call in scope outside a transaction, for a step
    /// whose change was made elsewhere (a cancel the rollout service
    /// carried out). Doing it again changes nothing, so a lost record costs
    /// only a different answer to a retry.
    pub async fn record_done(&self, step: &str, result: &str) {
        let Ok(claim) = CLAIM.try_with(Clone::clone) else {
            return;
        };
        self.keys.record_done(&claim, step, result).await;
    }
}

/// True while a keyed call runs (the ledger's one-statement append then
/// steps aside for the transaction that records the key).
pub(super) fn in_scope() -> bool {
    CLAIM.try_with(|_| ()).is_ok()
}

/// Records `step` of the keyed call in scope (if any) in `tx`, the
/// transaction making its change. A key recorded meanwhile by a copy of the
/// call fails the insert, and so the transaction.
pub(super) async fn record(
    tx: &mut Transaction<'static, Any>,
    step: &str,
    result: &str,
) -> Result<()> {
    let Ok(claim) = CLAIM.try_with(Clone::clone) else {
        return Ok(());
    };
    slipway_storage::idempotency::record(tx, &claim, step, result).await?;
    Ok(())
}
