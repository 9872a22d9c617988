//! How one-off processes ended, kept in the rollout database (table
//! `oneoff_ends`) so that every replica can answer `ps info` for a one-off
//! its runtime no longer knows: on Kubernetes an ended one-off's pod is
//! deleted at once and only the replica that saw the end remembered it
//! (in memory); on the local runtime a restart forgot every ended one.
//!
//! The runtime reports each end it observes through
//! [`OneOffEnds`](crate::runtime::OneOffEnds), implemented here by
//! [`Ledger`]; the runtime holds no database handle of its own. The first
//! report of a one-off wins (two replicas may both see one end). What is
//! kept is what `ps info` shows (app, id, service, release, command,
//! status, exit code, start and end), never the env. Ends are read for
//! [`RETENTION`] and pruned past it as new ends are written.

use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_storage::now_micros;
use sqlx::Row as _;

use crate::error::{Error, Result};
use crate::runtime::{OneOffEnds, OneOffInfo, OneOffStatus};
use crate::store::{Store, micros, retry, time};

/// How long an ended one-off can be looked up.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How often a report that could not be written is tried again.
const ATTEMPTS: u32 = 5;

/// Keeps the ends of one-offs in the rollout database.
#[derive(Clone)]
pub struct Ledger {
    store: Store,
}

fn cutoff() -> i64 {
    now_micros() - i64::try_from(RETENTION.as_micros()).unwrap_or(i64::MAX / 2)
}

impl Ledger {
    /// A ledger in `store`'s database.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Records how `info` ended at `at`; `false` if an end of that one-off
    /// was recorded already (it is left as it was). Prunes ends past
    /// [`RETENTION`].
    pub async fn record(&self, info: &OneOffInfo, at: DateTime<Utc>) -> Result<bool> {
        if !info.status.is_over() {
            return Err(Error::InvalidArgument(format!(
                "process {} has not ended (it is {})",
                info.id,
                info.status.as_str()
            )));
        }
        let (db, _) = self.store.parts();
        let done = retry(|| async {
            sqlx::query(
                "INSERT INTO oneoff_ends (app, id, service, release_id, command, status, \
                 exit_code, started_at, ended_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (app, id) DO NOTHING",
            )
            .bind(&info.app)
            .bind(&info.id)
            .bind(&info.service)
            .bind(&info.release)
            .bind(&info.command)
            .bind(info.status.as_str())
            .bind(info.exit_code.map(i64::from))
            .bind(micros(info.started))
            .bind(micros(at))
            .execute(&mut *db.acquire().await?)
            .await
        })
        .await?;
        retry(|| async {
            sqlx::query("DELETE FROM oneoff_ends WHERE ended_at < $1")
                .bind(cutoff())
                .execute(&mut *db.acquire().await?)
                .await
        })
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// How one-off `id` of `app` ended, with when, if that is recorded
    /// and within [`RETENTION`].
    pub async fn get(&self, app: &str, id: &str) -> Result<Option<(OneOffInfo, DateTime<Utc>)>> {
        let (db, _) = self.store.parts();
        let row = retry(|| async {
            sqlx::query(
                "SELECT service, release_id, command, status, exit_code, started_at, ended_at \
                 FROM oneoff_ends WHERE app = $1 AND id = $2 AND ended_at >= $3",
            )
            .bind(app)
            .bind(id)
            .bind(cutoff())
            .fetch_optional(&mut *db.acquire().await?)
            .await
        })
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let status: String = row.try_get("status")?;
        let status = match status.as_str() {
            "complete" => OneOffStatus::Complete,
            "failed" => OneOffStatus::Failed,
            other => {
                return Err(Error::Corrupt(format!(
                    "one-off {id} of {app} ended with status {other:?}"
                )));
            }
        };
        let exit_code: Option<i64> = row.try_get("exit_code")?;
        let info = OneOffInfo {
            id: id.to_owned(),
            app: app.to_owned(),
            service: row.try_get("service")?,
            release: row.try_get("release_id")?,
            command: row.try_get("command")?,
            status,
            started: time(row.try_get("started_at")?),
            deadline: None,
            exit_code: exit_code.and_then(|c| i32::try_from(c).ok()),
        };
        Ok(Some((info, time(row.try_get("ended_at")?))))
    }
}

#[async_trait::async_trait]
impl OneOffEnds for Ledger {
    async fn ended(&self, info: &OneOffInfo, at: DateTime<Utc>) {
        let mut pause = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            match self.record(info, at).await {
                Ok(_) => return,
                Err(e @ Error::InvalidArgument(_)) => {
                    tracing::error!(app = %info.app, process = %info.id, error = %e, "a one-off end not recorded");
                    return;
                }
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(app = %info.app, process = %info.id, error = %e, attempt, "could not record how a one-off ended; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    tracing::error!(app = %info.app, process = %info.id, error = %e, "could not record how a one-off ended: only this replica's memory has it");
                }
            }
        }
    }
}
