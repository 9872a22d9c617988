//! Waiting out an unreachable database (issue 17, item 4). A store takes its
//! connections and opens its transactions here instead of on the pool, so a
//! call made while PostgreSQL restarts waits for it (within the pool's
//! acquire timeout) instead of failing at once.
//!
//! sqlx's pool already retries a connect that is refused or answered "the
//! database system is starting up"; it gives up at once on anything else,
//! such as a connection reset halfway through the startup handshake by a
//! server going down or coming up. Those failures happen before any
//! statement of the caller reached the database, so trying again is always
//! safe: that is what this module adds. A statement that fails on a
//! connection already handed out is not retried here (it may have applied);
//! the caller sees "database unavailable, retrying" and retries with its
//! idempotency key.

use std::future::Future;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Any, Transaction};
use tokio::time::Instant;

use crate::{Database, is_unavailable};

/// The first pause between attempts; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// The longest pause between attempts.
const MAX_PAUSE: Duration = Duration::from_millis(500);

impl Database {
    /// A connection from the pool, waiting for an unreachable database for
    /// up to the pool's acquire timeout; then the last error (which
    /// [`is_unavailable`] recognises).
    pub async fn acquire(&self) -> Result<PoolConnection<Any>, sqlx::Error> {
        self.patiently(|| self.pool.acquire()).await
    }

    /// A write transaction ([`crate::Dialect::begin_write`]), waiting like
    /// [`Database::acquire`]. Nothing of the caller's has been sent when it
    /// fails, so every failure before it returns is safe to try again.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        self.patiently(|| self.pool.begin_with(self.dialect.begin_write()))
            .await
    }

    /// Runs `attempt` again while it fails because the database is
    /// unreachable and the pool's acquire timeout (counted from the first
    /// attempt) has not passed.
    async fn patiently<T, F, Fut>(&self, mut attempt: F) -> Result<T, sqlx::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let deadline = Instant::now() + self.pool.options().get_acquire_timeout();
        let mut pause = FIRST_PAUSE;
        loop {
            let err = match tokio::time::timeout_at(deadline, attempt()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(err)) if is_unavailable(&err) => err,
                Ok(Err(err)) => return Err(err),
                Err(_) => return Err(sqlx::Error::PoolTimedOut),
            };
            if Instant::now() + pause >= deadline {
                return Err(err);
            }
            tracing::debug!(error = %err, "database unreachable; trying again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}
