//! Idempotency keys recorded with the change they made, for every service
//! that owns tables (issue 17). Each service keeps a table
//! `idempotency_keys (key, method, step, fingerprint, result, created_at)`
//! in its own database (the release and build migrations create it alike).
//!
//! A keyed call runs inside [`once`]: the key's recorded steps are read
//! first; a step already done is answered from its record (the service reads
//! back what the result names, an id), a step not done yet runs, and the
//! transaction that makes the change also writes the step's row
//! ([`record`]). So a call retried after its answer was lost returns the
//! first result, and two copies of one call racing each other make one
//! change: the loser's insert of the key fails, its whole transaction with
//! it, and it answers from the winner's record.
//!
//! Rows keep ids, never values; the request's fingerprint is computed by the
//! service (a keyed hash where the request may carry secrets), so a key
//! reused with another request (409) is told apart without storing what the
//! request held. Rows older than [`TTL`] are ignored, overwritten and swept.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sqlx::{Any, Row as _};

use crate::{Database, now_micros};

/// How long a recorded key answers with its first result.
pub const TTL: Duration = Duration::from_secs(24 * 3600);

/// How often a process sweeps expired keys (micros).
const SWEEP_EVERY_MICROS: i64 = 3600 * 1_000_000;

/// A keyed call: its key, method and request fingerprint.
#[derive(Clone, Debug)]
pub struct Claim {
    key: String,
    method: &'static str,
    fingerprint: String,
}

impl Claim {
    /// The claim of a call with `key` to `method`, whose request reduces to
    /// `fingerprint` (no secret may be recoverable from it).
    pub fn new(key: String, method: &'static str, fingerprint: String) -> Self {
        Self {
            key,
            method,
            fingerprint,
        }
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The method.
    pub fn method(&self) -> &'static str {
        self.method
    }
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

/// The parts of a request that make it the same request, in order (maps
/// sorted here), as bytes for the service to hash.
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

    /// The bytes to hash.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Why a keyed call could not go ahead.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key was used for a different request (HTTP 409, gRPC
    /// ALREADY_EXISTS).
    #[error(
        "idempotency key {key} was already used for a different {method} request; \
         send a new key for a new request"
    )]
    Reused {
        /// The key.
        key: String,
        /// The method it was used for.
        method: &'static str,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// The idempotency keys of one service's database.
#[derive(Clone, Debug)]
pub struct Keys {
    db: Database,
    /// When this store last swept expired keys (micros).
    last_sweep: Arc<AtomicI64>,
}

impl Keys {
    /// The keys kept in `db`'s `idempotency_keys` table.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            last_sweep: Arc::default(),
        }
    }

    /// Runs `run` once per key: it gets what earlier calls with the key
    /// recorded and does the rest (recording each step it completes with
    /// [`record`] in the step's transaction). Without a claim it just runs.
    pub async fn once<T, E, F, Fut>(&self, claim: Option<&Claim>, run: F) -> Result<T, E>
    where
        E: From<KeyError>,
        F: Fn(Recorded) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let Some(claim) = claim else {
            return run(Recorded::default()).await;
        };
        self.sweep_now_and_then();
        let before = self.recorded(claim).await?;
        match run(before.clone()).await {
            Ok(answer) => Ok(answer),
            Err(e) => {
                // A copy of this call running at the same time may have
                // recorded first (and our insert of the key failed): answer
                // from its record.
                match self.recorded(claim).await {
                    Ok(after) if after != before => {
                        tracing::info!(
                            method = claim.method,
                            "a concurrent retry of this call recorded first; answering its result"
                        );
                        run(after).await
                    }
                    _ => Err(e),
                }
            }
        }
    }

    /// What calls with the claim's key and method recorded; refused when
    /// they were made with a different request.
    pub async fn recorded(&self, claim: &Claim) -> Result<Recorded, KeyError> {
        let cutoff = now_micros() - ttl_micros();
        let rows = sqlx::query(
            "SELECT step, fingerprint, result, created_at FROM idempotency_keys \
             WHERE key = $1 AND method = $2",
        )
        .bind(&claim.key)
        .bind(claim.method)
        .fetch_all(&mut *self.db.acquire().await?)
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
                return Err(KeyError::Reused {
                    key: claim.key.clone(),
                    method: claim.method,
                });
            }
            recorded
                .0
                .insert(row.try_get("step")?, row.try_get("result")?);
        }
        if expired {
            // A key reused after its day: its old rows would refuse the new
            // ones.
            sqlx::query(
                "DELETE FROM idempotency_keys WHERE key = $1 AND method = $2 AND created_at < $3",
            )
            .bind(&claim.key)
            .bind(claim.method)
            .bind(cutoff)
            .execute(&mut *self.db.acquire().await?)
            .await?;
        }
        Ok(recorded)
    }

    /// Records `step` outside a transaction, for a step whose change was
    /// made elsewhere or is idempotent by nature (a cancel). A lost record
    /// costs only a different answer to a retry, so a failure is logged,
    /// not returned.
    pub async fn record_done(&self, claim: &Claim, step: &str, result: &str) {
        let done = async {
            let mut conn = self.db.acquire().await?;
            insert(claim, step, result).execute(&mut *conn).await
        };
        if let Err(e) = done.await {
            tracing::debug!(method = claim.method, "idempotency key not recorded: {e}");
        }
    }

    /// Deletes expired keys, at most hourly per store, off the caller's path.
    fn sweep_now_and_then(&self) {
        let now = now_micros();
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now - last < SWEEP_EVERY_MICROS
            || self
                .last_sweep
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

/// Records `step` of the claimed call, with its `result`, in `tx`: the
/// transaction making the step's change. A key recorded meanwhile by a copy
/// of the call fails the insert, and so the transaction.
pub async fn record(
    tx: &mut sqlx::Transaction<'static, Any>,
    claim: &Claim,
    step: &str,
    result: &str,
) -> Result<(), sqlx::Error> {
    insert(claim, step, result).execute(&mut **tx).await?;
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
    TTL.as_micros() as i64
}
