//! The rollout service's storage: rollouts with their owner leases and the
//! durable per-rollout event log. One implementation over sqlx's `Any`
//! driver for SQLite and PostgreSQL; the store tests run every operation
//! against both. The local runtime keeps its own records
//! ([`crate::runtime::local::LocalRecords`]) in the same database; their
//! migrations are here, applied by the same migrator.
//!
//! Fencing: a replica drives a rollout only while it holds the lease, and
//! every write a driver makes is conditional on the lease epoch it took, so
//! a replica that lost its lease (paused, partitioned) changes nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_domain::{AppName, PromotionId, ReleaseId};
use slipway_storage::{Database, ErrorClass, classify, now_micros};
use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::crypto::SpecCipher;
use crate::error::{Error, Result};
use crate::model::{Phase, Rollout, RolloutPlan, Spec};

/// Migrations for PostgreSQL.
pub static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
/// Migrations for SQLite.
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const ROLLOUT_COLUMNS: &str = "id, app, release_id, fallback_release, phase, reason, deadline_secs, \
     deadline_at, epoch, cancel_requested, reported, created_at, finished_at";

/// A rollout to record.
#[derive(Clone, Debug)]
pub struct NewRollout {
    /// The promotion id.
    pub id: PromotionId,
    /// What to run.
    pub target: Spec,
    /// What to return to.
    pub fallback: Option<Spec>,
    /// Deadline in seconds.
    pub deadline_secs: u32,
}

/// An event of a rollout's durable log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the rollout's log, from 1.
    pub seq: u64,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// e.g. `system/local/web`.
    pub source: String,
    /// The text.
    pub message: String,
}

/// An event of some rollout of an app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppEvent {
    /// The rollout whose log holds it.
    pub rollout: String,
    /// The event.
    pub event: StoredEvent,
}

/// The rollout database.
#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
    /// Seals specs (they carry the decrypted env) before they are stored.
    cipher: SpecCipher,
}

pub(crate) use slipway_storage::{micros, retry, time};

fn lease_until(ttl: Duration) -> i64 {
    now_micros() + i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX / 2)
}

impl Store {
    /// A store over a connected database (run [`Store::migrate`] first);
    /// specs are sealed at rest with `cipher`.
    pub fn new(db: Database, cipher: SpecCipher) -> Self {
        Self { db, cipher }
    }

    /// The database and the spec cipher, for the records that other parts
    /// of the service keep in the same database (the local runtime's).
    pub(crate) fn parts(&self) -> (&Database, &SpecCipher) {
        (&self.db, &self.cipher)
    }

    fn open_spec(&self, app: &str, stored: &str) -> Result<String> {
        self.cipher
            .open(app, stored)
            .map_err(|e| Error::Corrupt(e.to_string()))
    }

    /// Runs the migrations of the database's dialect.
    pub async fn migrate(&self) -> Result<(), slipway_storage::Error> {
        self.db.migrate(&POSTGRES_MIGRATOR, &SQLITE_MIGRATOR).await
    }

    /// Records a rollout owned by `owner` (epoch 1), or returns the one that
    /// exists for the same id (`false`: nothing was recorded). Refuses a
    /// second rollout of an app while one is in flight.
    pub async fn create(
        &self,
        new: &NewRollout,
        owner: &str,
        ttl: Duration,
    ) -> Result<(RolloutPlan, bool)> {
        if let Some(existing) = self.plan(new.id.as_str()).await? {
            return Ok((existing, false));
        }
        let now = now_micros();
        let deadline = now + i64::from(new.deadline_secs) * 1_000_000;
        let target_sealed = self.cipher.seal(&new.target.app, &new.target.to_json());
        let fallback_sealed = new
            .fallback
            .as_ref()
            .map(|f| self.cipher.seal(&new.target.app, &f.to_json()));
        let inserted = retry(|| async {
            sqlx::query(
                "INSERT INTO rollouts (id, app, release_id, fallback_release, target_spec, fallback_spec, phase, \
                 deadline_secs, deadline_at, owner, lease_expires, epoch, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1, $12)",
            )
            .bind(new.id.as_str())
            .bind(&new.target.app)
            .bind(&new.target.release)
            .bind(new.fallback.as_ref().map(|f| f.release.clone()))
            .bind(&target_sealed)
            .bind(fallback_sealed.as_deref())
            .bind(Phase::Pending.as_str())
            .bind(i64::from(new.deadline_secs))
            .bind(deadline)
            .bind(owner)
            .bind(lease_until(ttl))
            .bind(now)
            .execute(&mut *self.db.acquire().await?).await
        })
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if matches!(classify(&e), ErrorClass::UniqueViolation(_)) => {
                // Either the same promotion raced us in, or another rollout
                // of the app is open.
                if let Some(existing) = self.plan(new.id.as_str()).await? {
                    return Ok((existing, false));
                }
                let open = self.open_for_app(&new.target.app).await?;
                return Err(Error::FailedPrecondition(format!(
                    "app {} is updating: rollout {} is in progress",
                    new.target.app,
                    open.as_deref().unwrap_or("?")
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let plan = self
            .plan(new.id.as_str())
            .await?
            .ok_or_else(|| Error::Corrupt(format!("rollout {} vanished after insert", new.id)))?;
        Ok((plan, true))
    }

    async fn open_for_app(&self, app: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT id FROM rollouts WHERE app = $1 AND finished_at IS NULL")
            .bind(app)
            .fetch_optional(&mut *self.db.acquire().await?)
            .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    /// Reads a rollout.
    pub async fn get(&self, id: &str) -> Result<Option<Rollout>> {
        let row = sqlx::query(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *self.db.acquire().await?)
        .await?;
        row.as_ref().map(rollout_from_row).transpose()
    }

    /// Reads a rollout with its specs.
    pub async fn plan(&self, id: &str) -> Result<Option<RolloutPlan>> {
        let row = sqlx::query(&format!(
            "SELECT {ROLLOUT_COLUMNS}, target_spec, fallback_spec FROM rollouts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *self.db.acquire().await?)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let rollout = rollout_from_row(&row)?;
        let spec = |stored: String| {
            let json = self.open_spec(rollout.app.as_str(), &stored)?;
            Spec::from_json(&json).map_err(|e| Error::Corrupt(format!("rollout {id}: {e}")))
        };
        let target = spec(row.try_get("target_spec")?)?;
        let fallback = row
            .try_get::<Option<String>, _>("fallback_spec")?
            .map(spec)
            .transpose()?;
        Ok(Some(RolloutPlan {
            rollout,
            target: target.into(),
            fallback: fallback.map(Into::into),
        }))
    }

    /// Takes over the lease of a rollout whose lease expired and whose
    /// outcome is not yet acknowledged. Returns the new epoch, or `None` if
    /// someone else holds it.
    pub async fn acquire(&self, id: &str, owner: &str, ttl: Duration) -> Result<Option<u64>> {
        let row = retry(|| async {
            sqlx::query(
                "UPDATE rollouts SET owner = $1, lease_expires = $2, epoch = epoch + 1 \
                 WHERE id = $3 AND lease_expires < $4 AND reported = 0 RETURNING epoch",
            )
            .bind(owner)
            .bind(lease_until(ttl))
            .bind(id)
            .bind(now_micros())
            .fetch_optional(&mut *self.db.acquire().await?)
            .await
        })
        .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>("epoch"))
            .transpose()?
            .map(|e| e as u64))
    }

    /// Extends the lease held at `epoch`. Returns whether a cancel was
    /// requested, or `None` if the lease was lost.
    pub async fn renew(
        &self,
        id: &str,
        owner: &str,
        epoch: u64,
        ttl: Duration,
    ) -> Result<Option<bool>> {
        let row = retry(|| async {
            sqlx::query(
                "UPDATE rollouts SET lease_expires = $1 WHERE id = $2 AND owner = $3 AND epoch = $4 \
                 RETURNING cancel_requested",
            )
            .bind(lease_until(ttl))
            .bind(id)
            .bind(owner)
            .bind(epoch as i64)
            .fetch_optional(&mut *self.db.acquire().await?).await
        })
        .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>("cancel_requested"))
            .transpose()?
            .map(|c| c != 0))
    }

    /// Gives the lease up (graceful shutdown) so another replica takes over
    /// at once.
    pub async fn release_lease(&self, id: &str, epoch: u64) -> Result<()> {
        sqlx::query("UPDATE rollouts SET lease_expires = 0 WHERE id = $1 AND epoch = $2")
            .bind(id)
            .bind(epoch as i64)
            .execute(&mut *self.db.acquire().await?)
            .await?;
        Ok(())
    }

    /// Moves the rollout to `phase` if the lease is still at `epoch`;
    /// `deadline` starts a fresh deadline for the phase. Returns whether the
    /// write happened (false: the lease was lost).
    pub async fn set_phase(
        &self,
        id: &str,
        epoch: u64,
        phase: Phase,
        reason: &str,
        deadline: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let now = now_micros();
        let done = retry(|| async {
            sqlx::query(
                "UPDATE rollouts SET phase = $1, reason = $2, deadline_at = COALESCE($3, deadline_at), \
                 finished_at = $4 WHERE id = $5 AND epoch = $6",
            )
            .bind(phase.as_str())
            .bind(reason)
            .bind(deadline.map(micros))
            .bind(phase.is_terminal().then_some(now))
            .bind(id)
            .bind(epoch as i64)
            .execute(&mut *self.db.acquire().await?).await
        })
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a cancel request (any replica may take it; the owner reads
    /// it when it renews). Returns the rollout, or `None` if unknown.
    pub async fn request_cancel(&self, id: &str) -> Result<Option<Rollout>> {
        retry(|| async {
            sqlx::query(
                "UPDATE rollouts SET cancel_requested = 1 WHERE id = $1 AND finished_at IS NULL",
            )
            .bind(id)
            .execute(&mut *self.db.acquire().await?)
            .await
        })
        .await?;
        self.get(id).await
    }

    /// Records that the release service acknowledged the outcome.
    pub async fn mark_reported(&self, id: &str, epoch: u64) -> Result<bool> {
        let done = retry(|| async {
            sqlx::query(
                "UPDATE rollouts SET reported = 1, lease_expires = 0 WHERE id = $1 AND epoch = $2",
            )
            .bind(id)
            .bind(epoch as i64)
            .execute(&mut *self.db.acquire().await?)
            .await
        })
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Rollouts that need a driver (in flight, or outcome unreported) and
    /// whose lease has expired.
    pub async fn orphaned(&self) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT id FROM rollouts WHERE reported = 0 AND lease_expires < $1 ORDER BY created_at",
        )
        .bind(now_micros())
        .fetch_all(&mut *self.db.acquire().await?)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    /// Appends an event to a rollout's log and returns its sequence number.
    pub async fn append_event(
        &self,
        rollout: &str,
        time: DateTime<Utc>,
        source: &str,
        message: &str,
    ) -> Result<u64> {
        let seq = self
            .append_event_fenced(rollout, None, time, source, message)
            .await?;
        Ok(seq.expect("an unfenced append always writes"))
    }

    /// Appends an event to a rollout's log if `epoch` (when given) is still
    /// the rollout's lease epoch: `None` when a newer owner fenced this one
    /// off, so a paused old owner that wakes up records nothing. The check
    /// and the write are one statement.
    pub async fn append_event_fenced(
        &self,
        rollout: &str,
        epoch: Option<u64>,
        time: DateTime<Utc>,
        source: &str,
        message: &str,
    ) -> Result<Option<u64>> {
        for _ in 0..20 {
            let row = sqlx::query(
                "INSERT INTO rollout_events (rollout_id, seq, time, source, message) \
                 SELECT $1, next.seq, $2, $3, $4 FROM \
                 (SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM rollout_events WHERE rollout_id = $5) next \
                 WHERE $6 < 0 OR EXISTS (SELECT 1 FROM rollouts WHERE id = $7 AND epoch = $8) \
                 RETURNING seq",
            )
            .bind(rollout)
            .bind(micros(time))
            .bind(source)
            .bind(message)
            .bind(rollout)
            .bind(epoch.map_or(-1, |e| e as i64))
            .bind(rollout)
            .bind(epoch.unwrap_or_default() as i64)
            .fetch_optional(&mut *self.db.acquire().await?)
            .await;
            match row {
                Ok(Some(row)) => return Ok(Some(row.try_get::<i64, _>("seq")? as u64)),
                Ok(None) => return Ok(None),
                // A concurrent append took the number (or the database was
                // busy): take the next one.
                Err(e)
                    if matches!(
                        classify(&e),
                        ErrorClass::UniqueViolation(_) | ErrorClass::Retryable
                    ) =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::FailedPrecondition(format!(
            "rollout {rollout}: event log is contended"
        )))
    }

    /// The newest `limit` events of every rollout of `app` at or after
    /// `since`, oldest first (the durable part of the app's log).
    pub async fn app_events_since(
        &self,
        app: &str,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<AppEvent>> {
        let rows = sqlx::query(
            "SELECT e.rollout_id, e.seq, e.time, e.source, e.message FROM rollout_events e \
             JOIN rollouts r ON r.id = e.rollout_id \
             WHERE r.app = $1 AND e.time >= $2 \
             ORDER BY e.time DESC, e.rollout_id DESC, e.seq DESC LIMIT $3",
        )
        .bind(app)
        .bind(micros(since))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.db.acquire().await?)
        .await?;
        let mut events = rows
            .iter()
            .map(|r| {
                Ok(AppEvent {
                    rollout: r.try_get("rollout_id")?,
                    event: StoredEvent {
                        seq: r.try_get::<i64, _>("seq")? as u64,
                        time: time(r.try_get("time")?),
                        source: r.try_get("source")?,
                        message: r.try_get("message")?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        events.reverse();
        Ok(events)
    }

    /// A rollout's events after `after`, oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        rollout: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT seq, time, source, message FROM rollout_events WHERE rollout_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(rollout)
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.db.acquire().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredEvent {
                    seq: r.try_get::<i64, _>("seq")? as u64,
                    time: time(r.try_get("time")?),
                    source: r.try_get("source")?,
                    message: r.try_get("message")?,
                })
            })
            .collect()
    }
}

fn rollout_from_row(row: &AnyRow) -> Result<Rollout> {
    let phase: String = row.try_get("phase")?;
    let id: String = row.try_get("id")?;
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        Error::Corrupt(format!("rollout {id}: stored {what} is invalid: {e}"))
    };
    let app: String = row.try_get("app")?;
    let release: String = row.try_get("release_id")?;
    let fallback: Option<String> = row.try_get("fallback_release")?;
    Ok(Rollout {
        phase: Phase::parse(&phase)
            .ok_or_else(|| Error::Corrupt(format!("rollout {id}: phase {phase:?}")))?,
        app: AppName::parse(&app).map_err(|e| corrupt("app", &e))?,
        release: ReleaseId::parse(&release).map_err(|e| corrupt("release", &e))?,
        fallback_release: fallback
            .filter(|f| !f.is_empty())
            .map(|f| ReleaseId::parse(&f))
            .transpose()
            .map_err(|e| corrupt("fallback release", &e))?,
        reason: row.try_get("reason")?,
        deadline_secs: u32::try_from(row.try_get::<i64, _>("deadline_secs")?).unwrap_or(u32::MAX),
        deadline_at: time(row.try_get("deadline_at")?),
        epoch: row.try_get::<i64, _>("epoch")? as u64,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        reported: row.try_get::<i64, _>("reported")? != 0,
        created: time(row.try_get("created_at")?),
        finished: row.try_get::<Option<i64>, _>("finished_at")?.map(time),
        id: PromotionId::parse(&id).map_err(|e| corrupt("id", &e))?,
    })
}
