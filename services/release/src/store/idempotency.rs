//! Idempotency keys of the release service's mutating calls (`ChangeEnv`,
//! `CreateRelease`, `PromoteRelease`, `RollbackRelease`, `CancelPromotion`).
//!
//! A keyed call runs inside [`Store::once`]: the key's recorded steps are
//! read first; a step already done is answered from its record (the
//! release or promotion it made, read back from the ledger), a step not done
//! yet runs, and the transaction that makes the change also writes the
//! step's row ([`record`]; the step learns the key from a task-local scope,
//! so the ledger's and promotions' transactions take no extra parameter).
//! So a call retried after its answer was lost returns the first result, a
//! call retried after a crash half-way (a rollback whose copy was made but
//! not promoted) finishes what is missing, and two copies of one call racing
//! each other make one change: the loser's insert of the key fails, the
//! whole transaction with it, and it answers from the winner's record.
//!
//! Rows keep ids, never values; the request's fingerprint is an HMAC keyed
//! from the env key, so a key reused with another body (409) is told apart
//! without storing what the body held. Rows older than
//! [`slipway_rpc::idempotency::TTL`] are ignored, overwritten and swept.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};

use slipway_storage::now_micros;
use sqlx::{Any, Row as _, Transaction};

use super::Store;
use crate::error::{Error, Result};

/// The step that made a release (the result is its id).
pub const RELEASE: &str = "release";
/// The step that started or cancelled a promotion (the result is its id).
pub const PROMOTION: &str = "promotion";

/// How often a replica sweeps expired keys (micros).
const SWEEP_EVERY_MICROS: i64 = 3600 * 1_000_000;

static LAST_SWEEP: AtomicI64 = AtomicI64::new(0);

tokio::task_local! {
    static CLAIM: Claim;
}

/// A keyed call: its key, method and request fingerprint.
#[derive(Clone, Debug)]
pub struct Claim {
    key: String,
    method: &'static str,
    fingerprint: String,
}

/// What a key's earlier calls completed: step → result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recorded(BTreeMap<String, String>);

impl Recorded {
    /// The result of `step`, if it was done.
    pub fn get(&self, step: &str) -> Option<&str> {
        self.0.get(step).map(String::as_str)
    }
}

/// The parts of a request that make it the same request, fed to the
/// fingerprint in order (maps sorted by their caller).
#[derive(Default)]
pub struct Fingerprint(Vec<u8>);

impl Fingerprint {
    /// Adds a field (length-prefixed, so fields cannot run together).
    pub fn field(mut self, value: impl AsRef<[u8]>) -> Self {
        let value = value.as_ref();
        self.0
            .extend_from_slice(&(value.len() as u64).to_be_bytes());
        self.0.extend_from_slice(value);
        self
    }

    /// Adds a map's entries in key order.
    pub fn map<'a>(mut self, map: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        let sorted: BTreeMap<_, _> = map.into_iter().collect();
        self = self.field(sorted.len().to_string());
        for (k, v) in sorted {
            self = self.field(k).field(v);
        }
        self
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
        for b in &request.0 {
            let _ = write!(label, "{b:02x}");
        }
        let fingerprint = self
            .cipher
            .derive_key(&label)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(Claim {
            key,
            method,
            fingerprint,
        })
    }

    /// Runs `run` once per key: it gets what earlier calls with the key
    /// recorded and does the rest. Without a claim it just runs.
    pub async fn once<T, F, Fut>(&self, claim: Option<Claim>, run: F) -> Result<T>
    where
        F: Fn(Recorded) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let Some(claim) = claim else {
            return run(Recorded::default()).await;
        };
        self.sweep_now_and_then();
        let before = self.recorded(&claim).await?;
        match CLAIM.scope(claim.clone(), run(before.clone())).await {
            Ok(answer) => Ok(answer),
            Err(e) => {
                // A copy of this call running at the same time may have
                // recorded first (and our insert of the key failed): answer
                // from its record.
                match self.recorded(&claim).await {
                    Ok(after) if after != before => {
                        tracing::info!(
                            method = claim.method,
                            "a concurrent retry of this call recorded first; answering its result"
                        );
                        CLAIM.scope(claim, run(after)).await
                    }
                    _ => Err(e),
                }
            }
        }
    }

    /// What calls with the claim's key and method recorded; refused when
    /// they were made with a different request.
    async fn recorded(&self, claim: &Claim) -> Result<Recorded> {
        let cutoff = now_micros() - ttl_micros();
        let rows = sqlx::query(
            "SELECT step, fingerprint, result, created_at FROM idempotency_keys \
             WHERE key = $1 AND method = $2",
        )
        .bind(&claim.key)
        .bind(claim.method)
        .fetch_all(&self.db.pool)
        .await?;
        let mut recorded = Recorded::default();
        let mut expired = false;
        for row in rows {
            let created: i64 = row.try_get("created_at")?;
            if created < cutoff {
                expired = true;
                continue;
            }
            let fingerprint: String = row.try_get("fingerprint")?;
            if fingerprint != claim.fingerprint {
                return Err(Error::AlreadyExists(format!(
                    "idempotency key {} was already used for a different {} request; \
                     send a new key for a new request",
                    claim.key, claim.method
                )));
            }
            recorded
                .0
                .insert(row.try_get("step")?, row.try_get("result")?);
        }
        if expired {
            // A key reused after its day: its old rows would refuse the
            // new ones.
            sqlx::query(
                "DELETE FROM idempotency_keys WHERE key = $1 AND method = $2 AND created_at < $3",
            )
            .bind(&claim.key)
            .bind(claim.method)
            .bind(cutoff)
            .execute(&self.db.pool)
            .await?;
        }
        Ok(recorded)
    }

    /// Records `step` of the call in scope outside a transaction, for a step
    /// whose change was made elsewhere (a cancel the rollout service
    /// carried out). Doing it again changes nothing, so a lost record costs
    /// only a different answer to a retry.
    pub async fn record_done(&self, step: &str, result: &str) {
        let Ok(claim) = CLAIM.try_with(Clone::clone) else {
            return;
        };
        if let Err(e) = insert(&claim, step, result).execute(&self.db.pool).await {
            tracing::debug!(method = claim.method, "idempotency key not recorded: {e}");
        }
    }

    /// Deletes expired keys, at most hourly per process, off the caller's path.
    fn sweep_now_and_then(&self) {
        let now = now_micros();
        let last = LAST_SWEEP.load(Ordering::Relaxed);
        if now - last < SWEEP_EVERY_MICROS
            || LAST_SWEEP
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let pool = self.db.pool.clone();
        tokio::spawn(async move {
            let swept = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                .bind(now - ttl_micros())
                .execute(&pool)
                .await;
            match swept {
                Ok(done) => tracing::debug!(
                    rows = done.rows_affected(),
                    "swept expired idempotency keys"
                ),
                Err(e) => tracing::warn!("failed to sweep expired idempotency keys: {e}"),
            }
        });
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
    insert(&claim, step, result).execute(&mut **tx).await?;
    Ok(())
}

fn insert<'q>(
    claim: &'q Claim,
    step: &'q str,
    result: &'q str,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(
        "INSERT INTO idempotency_keys (key, method, step, fingerprint, result, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(claim.key.as_str())
    .bind(claim.method)
    .bind(step)
    .bind(claim.fingerprint.as_str())
    .bind(result)
    .bind(now_micros())
}

fn ttl_micros() -> i64 {
    slipway_rpc::idempotency::TTL.as_micros() as i64
}
