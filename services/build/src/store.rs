//! The build service's own table, `builds`: one implementation over sqlx's
//! `Any` driver for SQLite (embedded rack) and PostgreSQL (scale), with one
//! migration directory per dialect. The conformance tests in `tests/` run
//! every operation against both databases.
//!
//! Status changes are guarded updates (`WHERE status IN (…)`), so a build
//! ends exactly once: a cancel racing the builder's completion, or a replica
//! declaring a silent build dead, loses cleanly instead of overwriting.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use slipway_domain::{AppName, BuildId};
use slipway_storage::idempotency::{Claim, Keys};
use slipway_storage::{Database, micros, now_micros, time};
use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::error::{Error, Result};
use crate::model::{Build, BuildStatus, Outcome};

pub mod outbox;

/// Migrations for PostgreSQL.
pub static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
/// Migrations for SQLite.
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const COLUMNS: &str = "id, app, status, reason, description, git_sha, source_url, manifest_path, manifest, \
     release_id, artifacts, started_at, ended_at";
const OPEN: &str = "('created', 'running')";

/// The step a keyed CreateBuild records (the result is the build's id).
pub const BUILD_STEP: &str = "build";
/// The step a keyed CancelBuild records (the result is the build's id).
pub const CANCEL_STEP: &str = "cancel";

/// Builds on a SQL database.
#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
    /// Notified after a commit that wrote a webhook event (the relay wakes
    /// at once instead of at its next poll).
    outbox: std::sync::Arc<tokio::sync::Notify>,
    /// Idempotency keys of CreateBuild and CancelBuild.
    keys: Keys,
}

impl Store {
    /// A store over `db` (call [`Store::migrate`] first).
    pub fn new(db: Database) -> Self {
        Self {
            keys: Keys::new(db.clone()),
            db,
            outbox: Default::default(),
        }
    }

    /// Runs the migrations of the database's dialect.
    pub async fn migrate(&self) -> Result<(), slipway_storage::Error> {
        self.db.migrate(&POSTGRES_MIGRATOR, &SQLITE_MIGRATOR).await
    }

    /// The idempotency keys of the build service's writes.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Records a new build in `created`, run by `runner`.
    pub async fn insert(&self, build: &Build, runner: &str) -> Result<()> {
        self.insert_by(build, runner, "unknown", None).await
    }

    /// Records a new build in `created`, run by `runner`, started by
    /// `actor`, with its `build:create` webhook event and, for a keyed call,
    /// its idempotency key (step [`BUILD_STEP`], the build's id) in the
    /// same transaction.
    pub async fn insert_by(
        &self,
        build: &Build,
        runner: &str,
        actor: &str,
        claim: Option<&Claim>,
    ) -> Result<()> {
        let now = now_micros();
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO builds (id, app, status, reason, description, git_sha, source_url, manifest_path, \
             manifest, release_id, artifacts, runner, heartbeat_at, started_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(build.id.as_str())
        .bind(build.app.as_str())
        .bind(build.status.as_str())
        .bind(&build.reason)
        .bind(&build.description)
        .bind(&build.git_sha)
        .bind(&build.source_url)
        .bind(&build.manifest_path)
        .bind(&build.manifest)
        .bind(build.release.as_deref().unwrap_or_default())
        .bind(artifacts_json(&build.artifacts))
        .bind(runner)
        .bind(now)
        .bind(micros(build.started))
        .execute(&mut *tx)
        .await?;
        let message = if build.description.is_empty() {
            format!("build {} started", build.id)
        } else {
            build.description.clone()
        };
        outbox::announce(
            &mut tx,
            "success",
            build.app.as_str(),
            actor,
            build.id.as_str(),
            &message,
        )
        .await?;
        if let Some(claim) = claim {
            slipway_storage::idempotency::record(&mut tx, claim, BUILD_STEP, build.id.as_str())
                .await?;
        }
        tx.commit().await?;
        self.outbox.notify_one();
        Ok(())
    }

    /// Reads a build of `app`.
    pub async fn get(&self, app: &AppName, id: &BuildId) -> Result<Build> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM builds WHERE id = $1 AND app = $2"
        ))
        .bind(id.as_str())
        .bind(app.as_str())
        .fetch_optional(&mut *self.db.acquire().await?)
        .await?
        .map(|row| build_from_row(&row))
        .transpose()?
        .ok_or_else(|| Error::NotFound(format!("build not found: {id}")))
    }

    /// The status of a build, if it exists.
    pub async fn status(&self, id: &BuildId) -> Result<Option<BuildStatus>> {
        let row = sqlx::query("SELECT status FROM builds WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut *self.db.acquire().await?)
            .await?;
        Ok(match row {
            Some(row) => BuildStatus::parse(&row.try_get::<String, _>("status")?),
            None => None,
        })
    }

    /// Lists the builds of `app`, newest first.
    pub async fn list(&self, app: &AppName, limit: u32) -> Result<Vec<Build>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM builds WHERE app = $1 ORDER BY seq DESC LIMIT $2"
        ))
        .bind(app.as_str())
        .bind(i64::from(limit))
        .fetch_all(&mut *self.db.acquire().await?)
        .await?
        .iter()
        .map(build_from_row)
        .collect()
    }

    /// Moves a created build to running; false if it is no longer created
    /// (cancelled while it waited).
    pub async fn start(&self, id: &BuildId) -> Result<bool> {
        let done = sqlx::query("UPDATE builds SET status = 'running', heartbeat_at = $2 WHERE id = $1 AND status = 'created'")
            .bind(id.as_str())
            .bind(now_micros())
            .execute(&mut *self.db.acquire().await?)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records how an open build ended; false if it had already ended (the
    /// first ending wins).
    pub async fn finish(&self, id: &BuildId, outcome: &Outcome) -> Result<bool> {
        self.finish_by(id, outcome, None).await
    }

    /// [`Store::finish`]; a cancelled build that `cancelled_by` cancelled
    /// gets its `build.cancel` audit record in the same transaction, so it
    /// is recorded exactly when the build ended cancelled (a cancel of a
    /// build that had already ended changes nothing and records nothing).
    pub async fn finish_by(
        &self,
        id: &BuildId,
        outcome: &Outcome,
        cancelled_by: Option<&slipway_rpc::actor::Actor>,
    ) -> Result<bool> {
        debug_assert!(outcome.status.is_terminal());
        let mut tx = self.db.begin_write().await?;
        let done = sqlx::query(&format!(
            "UPDATE builds SET status = $2, reason = $3, manifest = $4, release_id = $5, artifacts = $6, \
             ended_at = $7 WHERE id = $1 AND status IN {OPEN} RETURNING app"
        ))
        .bind(id.as_str())
        .bind(outcome.status.as_str())
        .bind(&outcome.reason)
        .bind(&outcome.manifest)
        .bind(outcome.release.as_deref().unwrap_or_default())
        .bind(artifacts_json(&outcome.artifacts))
        .bind(now_micros())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = done else {
            return Ok(false);
        };
        let app: String = row.try_get("app")?;
        let failed = outcome.status == BuildStatus::Failed;
        if failed {
            // Convox announces a build's failure as `build:create` with
            // status `error`; a cancel is no failure.
            let actor = outbox::starter(&mut tx, id.as_str()).await?;
            outbox::announce(&mut tx, "error", &app, &actor, id.as_str(), &outcome.reason).await?;
        }
        if let (BuildStatus::Cancelled, Some(by)) = (outcome.status, cancelled_by) {
            let detail = format!("build {id} cancelled");
            outbox::record(
                &mut tx,
                "build.cancel",
                &app,
                by,
                id.as_str(),
                &detail,
                now_micros(),
            )
            .await?;
        }
        tx.commit().await?;
        if failed {
            self.outbox.notify_one();
        }
        Ok(true)
    }

    /// Refreshes the heartbeat of every open build `runner` runs.
    pub async fn heartbeat(&self, runner: &str) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE builds SET heartbeat_at = $1 WHERE runner = $2 AND status IN {OPEN}"
        ))
        .bind(now_micros())
        .bind(runner)
        .execute(&mut *self.db.acquire().await?)
        .await?;
        Ok(())
    }

    /// Fails open builds whose runner has been silent since before
    /// `silent_since` (a crashed or stopped replica). Returns their ids.
    pub async fn fail_abandoned(
        &self,
        silent_since: DateTime<Utc>,
        reason: &str,
    ) -> Result<Vec<String>> {
        let mut tx = self.db.begin_write().await?;
        let rows = sqlx::query(&format!(
            "UPDATE builds SET status = 'failed', reason = $1, ended_at = $2 \
             WHERE status IN {OPEN} AND heartbeat_at < $3 RETURNING id, app"
        ))
        .bind(reason)
        .bind(now_micros())
        .bind(micros(silent_since))
        .fetch_all(&mut *tx)
        .await?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("id")?;
            let app: String = row.try_get("app")?;
            let actor = outbox::starter(&mut tx, &id).await?;
            outbox::announce(&mut tx, "error", &app, &actor, &id, reason).await?;
            ids.push(id);
        }
        tx.commit().await?;
        if !ids.is_empty() {
            self.outbox.notify_one();
        }
        Ok(ids)
    }
}

fn artifacts_json(artifacts: &BTreeMap<String, String>) -> String {
    serde_json::to_string(artifacts).expect("a string map always serialises")
}

fn build_from_row(row: &AnyRow) -> Result<Build> {
    let corrupt = |what: &str| Error::Internal(format!("corrupt build row: {what}"));
    let id: String = row.try_get("id")?;
    let app: String = row.try_get("app")?;
    let status: String = row.try_get("status")?;
    let release: String = row.try_get("release_id")?;
    let artifacts: String = row.try_get("artifacts")?;
    Ok(Build {
        id: BuildId::parse(&id).map_err(|_| corrupt("id"))?,
        app: AppName::parse(&app).map_err(|_| corrupt("app"))?,
        status: BuildStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        reason: row.try_get("reason")?,
        description: row.try_get("description")?,
        git_sha: row.try_get("git_sha")?,
        source_url: row.try_get("source_url")?,
        manifest_path: row.try_get("manifest_path")?,
        manifest: row.try_get("manifest")?,
        release: (!release.is_empty()).then_some(release),
        artifacts: serde_json::from_str(&artifacts).map_err(|_| corrupt("artifacts"))?,
        started: time(row.try_get("started_at")?),
        ended: row.try_get::<Option<i64>, _>("ended_at")?.map(time),
    })
}
