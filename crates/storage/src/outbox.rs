//! A transactional outbox and its relay, shared by every service that must
//! tell another service about a change it made (the build service's
//! `build:create` webhook events, the build and rollout services' audit
//! records).
//!
//! A service writes a row into its own outbox table in the transaction
//! that records the change, so the row exists exactly when the change does
//! (a crash right after the commit loses nothing). A relay on every replica
//! claims due rows under a lease ([`Outbox::claim`]: `next_attempt_at` moves
//! past the lease and `claim` names the claimant, so two replicas never
//! relay one row at once and a killed relay's claims fall due again),
//! forwards each with its id as the receiver's dedup key, and marks it
//! published only once the receiver answered. A failed forward is retried
//! with backoff (1 s, growing with the row's age, to a minute, with
//! jitter), never dropped. Published rows are pruned after [`RETENTION`].
//!
//! Every outbox table has these columns (its own payload columns besides):
//! `id TEXT PRIMARY KEY, created_at, next_attempt_at, claim TEXT,
//! attempts, last_error TEXT, published_at` (times in microseconds since
//! the epoch; `published_at` NULL until published).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row as _;
use sqlx::any::AnyRow;
use tokio::sync::Notify;

use crate::{Database, now_micros};

pub mod audit;

/// How long published rows are kept before [`relay_loop`] prunes them.
/// Unpublished rows are never pruned.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Rows relayed per round at most.
pub const BATCH: usize = 64;
/// A claim outlives the forward call's deadline by this much.
const LEASE: Duration = Duration::from_secs(60);
/// Longest wait between two forwards of one row.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often the relay looks for rows it was not woken for.
const POLL: Duration = Duration::from_secs(1);
/// How often the relay prunes published rows.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// 64 bits that differ on every call: std's per-process random SipHash
/// keys over a process-wide counter. Only for claim tokens and jitter,
/// which need to be distinct and spread, not secret.
fn spread() -> u64 {
    use std::hash::BuildHasher as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::collections::hash_map::RandomState::new()
        .hash_one((COUNTER.fetch_add(1, Ordering::Relaxed), now_micros()))
}

/// A claim token: `C`, the time and 64 spread bits, unique per claim.
fn claim_token() -> String {
    format!("C{:016x}{:016x}", now_micros(), spread())
}

/// One outbox table.
#[derive(Clone, Debug)]
pub struct Outbox {
    db: Database,
    table: &'static str,
    columns: &'static str,
    wake: Arc<Notify>,
}

impl Outbox {
    /// The outbox in `table` of `db`, whose rows carry `columns` (a
    /// comma-separated list, returned by [`Outbox::claim`] besides `id` and
    /// `created_at`). Both are fixed names from the code, never input.
    pub fn new(db: Database, table: &'static str, columns: &'static str) -> Self {
        Self {
            db,
            table,
            columns,
            wake: Arc::default(),
        }
    }

    /// [`Outbox::new`], woken by `wake` (a signal the service's store
    /// already notifies after committing a row).
    pub fn with_wake(
        db: Database,
        table: &'static str,
        columns: &'static str,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            db,
            table,
            columns,
            wake,
        }
    }

    /// The table's name.
    pub fn table(&self) -> &'static str {
        self.table
    }

    /// Wakes this replica's relay (call after committing a row).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Claims up to `limit` due rows under `token`; none of them is due
    /// again before `lease_until` unless its result is recorded.
    pub async fn claim(
        &self,
        token: &str,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        let (table, columns) = (self.table, self.columns);
        sqlx::query(&format!(
            "UPDATE {table} SET claim = $1, next_attempt_at = $2 \
             WHERE published_at IS NULL AND next_attempt_at <= $3 AND id IN ( \
                 SELECT id FROM {table} WHERE published_at IS NULL AND next_attempt_at <= $3 \
                 ORDER BY next_attempt_at LIMIT $4) \
             RETURNING id, created_at, {columns}"
        ))
        .bind(token)
        .bind(lease_until)
        .bind(now_micros())
        .bind(limit as i64)
        .fetch_all(&mut *self.db.acquire().await?)
        .await
    }

    /// Marks a claimed row published; false when the claim no longer held
    /// (it ran out and another relay took the row).
    pub async fn published(&self, id: &str, token: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(&format!(
            "UPDATE {} SET published_at = $1, claim = '', attempts = attempts + 1, last_error = '' \
             WHERE id = $2 AND claim = $3 AND published_at IS NULL",
            self.table
        ))
        .bind(now_micros())
        .bind(id)
        .bind(token)
        .execute(&mut *self.db.acquire().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a failed forward of a claimed row; it is due again at
    /// `retry_at`.
    pub async fn failed(
        &self,
        id: &str,
        token: &str,
        error: &str,
        retry_at: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "UPDATE {} SET next_attempt_at = $1, claim = '', attempts = attempts + 1, last_error = $2 \
             WHERE id = $3 AND claim = $4 AND published_at IS NULL",
            self.table
        ))
        .bind(retry_at)
        .bind(error)
        .bind(id)
        .bind(token)
        .execute(&mut *self.db.acquire().await?)
        .await?;
        Ok(())
    }

    /// When the earliest unpublished row falls due, if any.
    pub async fn next_due(&self) -> Result<Option<i64>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT MIN(next_attempt_at) AS t FROM {} WHERE published_at IS NULL",
            self.table
        ))
        .fetch_one(&mut *self.db.acquire().await?)
        .await?;
        row.try_get::<Option<i64>, _>("t")
    }

    /// How many rows wait to be published.
    pub async fn unpublished(&self) -> Result<i64, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM {} WHERE published_at IS NULL",
            self.table
        ))
        .fetch_one(&mut *self.db.acquire().await?)
        .await?;
        row.try_get::<i64, _>("n")
    }

    /// Deletes rows published before `cutoff` (microseconds). Returns how
    /// many.
    pub async fn prune(&self, cutoff: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(&format!(
            "DELETE FROM {} WHERE published_at IS NOT NULL AND published_at < $1",
            self.table
        ))
        .bind(cutoff)
        .execute(&mut *self.db.acquire().await?)
        .await?;
        Ok(done.rows_affected())
    }
}

/// What a relay does with each row it claimed.
pub trait Forward: Send + Sync {
    /// A row's payload.
    type Item: Send + Sync;

    /// Reads a claimed row (`id`, `created_at` and the outbox's columns).
    fn decode(&self, row: &AnyRow) -> Result<Self::Item, sqlx::Error>;

    /// Hands `item` (row `id`) to its receiver, which must record it once
    /// per id. An error is retried later; its text is kept in the row.
    fn forward(
        &self,
        id: &str,
        item: &Self::Item,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// Relays `outbox` through `forward` until `stop` completes, and prunes
/// its published rows older than [`RETENTION`] every ten minutes. `what`
/// names the outbox in log lines.
pub async fn relay_loop<F: Forward>(
    outbox: Outbox,
    forward: F,
    what: &'static str,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut failing = false;
    let mut pruned_at: Option<tokio::time::Instant> = None;
    loop {
        if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            pruned_at = Some(tokio::time::Instant::now());
            let cutoff = now_micros() - RETENTION.as_micros() as i64;
            match outbox.prune(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    outbox = outbox.table,
                    "pruned {n} {what} published over 7 days ago"
                ),
                Err(e) => tracing::warn!(outbox = outbox.table, "failed to prune {what}: {e}"),
            }
        }
        match relay_once(&outbox, &forward).await {
            Ok(n) if n == BATCH => continue,
            Ok(_) => {
                if failing {
                    tracing::info!(outbox = outbox.table, "{what} are relayed again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        outbox = outbox.table,
                        "failed to relay {what} (kept, retried): {e}"
                    );
                    failing = true;
                }
            }
        }
        let mut wait = POLL;
        if let Ok(Some(due)) = outbox.next_due().await {
            wait = wait.min(Duration::from_micros((due - now_micros()).max(0) as u64));
        }
        tokio::select! {
            () = &mut stop => return,
            () = outbox.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One round: claims due rows and forwards each. Returns how many were
/// claimed; the first failure is the error (every result is recorded).
pub async fn relay_once<F: Forward>(outbox: &Outbox, forward: &F) -> Result<usize, String> {
    let token = claim_token();
    let lease_until = now_micros() + LEASE.as_micros() as i64;
    let claimed = outbox
        .claim(&token, lease_until, BATCH)
        .await
        .map_err(|e| e.to_string())?;
    let n = claimed.len();
    let mut first_error = None;
    for row in claimed {
        let (id, created): (String, i64) = match (row.try_get("id"), row.try_get("created_at")) {
            (Ok(id), Ok(created)) => (id, created),
            (Err(e), _) | (_, Err(e)) => {
                // Its claim runs out and it is tried again; nothing is lost.
                first_error.get_or_insert(format!("unreadable outbox row: {e}"));
                continue;
            }
        };
        let result = match forward.decode(&row) {
            Ok(item) => forward.forward(&id, &item).await,
            Err(e) => Err(format!("unreadable outbox row: {e}")),
        };
        match result {
            Ok(()) => {
                if let Err(e) = outbox.published(&id, &token).await {
                    // The claim runs out and the row is forwarded again:
                    // the receiver ignores the repeat of its id.
                    tracing::warn!(outbox = outbox.table, row = %id, "failed to mark a row relayed: {e}");
                }
            }
            Err(error) => {
                let retry_at = now_micros() + backoff(created).as_micros() as i64;
                if let Err(e) = outbox.failed(&id, &token, &error, retry_at).await {
                    tracing::warn!(outbox = outbox.table, row = %id, "failed to record a relay failure: {e}");
                }
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

/// The wait before the next forward of a row written at `created`
/// (microseconds): its age, 1 s to a minute, times 0.5 to 1.
fn backoff(created: i64) -> Duration {
    let age = Duration::from_micros((now_micros() - created).max(0) as u64);
    age.clamp(Duration::from_secs(1), MAX_BACKOFF)
        .mul_f64(0.5 + (spread() % 1_000) as f64 / 2_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_age_within_bounds() {
        let now = now_micros();
        let fresh = backoff(now);
        assert!(fresh >= Duration::from_millis(500) && fresh <= Duration::from_secs(1));
        let old = backoff(now - 3_600_000_000);
        assert!(old >= Duration::from_secs(30) && old <= MAX_BACKOFF);
        assert_ne!(claim_token(), claim_token());
    }
}
