//! The ledger's storage: one implementation over sqlx's `Any` driver that
//! runs on SQLite (embedded rack) and PostgreSQL (scale). Where the dialects
//! differ (write locks, DDL) `Dialect` says so; the conformance suite in
//! `tests/` runs every operation against both databases.
//!
//! Concurrency rules:
//! - every write takes the app row first (`UPDATE … RETURNING` or
//!   `SELECT … FOR UPDATE` on PostgreSQL; `BEGIN IMMEDIATE` on SQLite), so
//!   forks of the newest release are serialised per app and no update is lost;
//! - `promotions_one_open_per_app` (a partial unique index) is the last word
//!   on "one promotion per app at a time";
//! - releases are never updated or deleted (triggers refuse it).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_domain::{AppName, BuildId, PromotionState, ReleaseId};
use slipway_storage::{Database, Dialect, ErrorClass, classify, now_micros};
use sqlx::any::AnyRow;
use sqlx::{Any, Row as _, Transaction};

use crate::crypto::EnvCipher;
use crate::error::{Error, Result};
use crate::model::{
    App, AuditEvent, BuildInfo, Promotion, PromotionFacts, PromotionRefusal, PromotionVerdict,
    Release, ReleaseRequest, check_promotion, plan,
};

/// Migrations for PostgreSQL.
pub static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
/// Migrations for SQLite.
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const RELEASE_COLUMNS: &str = "r.id, r.seq, r.build, r.manifest, r.artifacts, r.build_description, r.env_sealed, \
     r.description, r.parent, r.rollback_of, r.actor, r.created_at";
const PROMOTION_COLUMNS: &str = "p.id, a.name, p.release_id, p.fallback_release, p.state, p.reason, \
     p.deadline_secs, p.lease_epoch, p.actor, p.created_at, p.finished_at";
const OPEN_STATES: &str = "('pending', 'rolling_out')";

/// Options of a promotion request.
#[derive(Clone, Debug)]
pub struct PromoteOptions {
    /// Allow promoting a release older than the active one.
    pub force: bool,
    /// Rollout deadline; `None` takes the app's.
    pub deadline_secs: Option<u32>,
}

/// What asking for a promotion led to.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one value per promotion request; boxing buys nothing
pub enum PromotionStart {
    /// A promotion was recorded (pending) and must be handed to the rollout
    /// service with these specs.
    Started {
        /// The new promotion.
        promotion: Promotion,
        /// The release to roll out.
        target: Release,
        /// The last known good release, to return to on failure.
        fallback: Option<Release>,
    },
    /// The release is already active; nothing was recorded.
    AlreadyActive(Release),
}

/// The ledger on a SQL database.
#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
    cipher: EnvCipher,
    /// The newest release of recently written apps: a hint that lets a
    /// PostgreSQL append skip reading it (see [`Store::append_optimistic`]).
    heads: Arc<Mutex<HashMap<String, Head>>>,
}

/// An app's newest release as this replica last wrote or read it.
#[derive(Clone, Debug)]
struct Head {
    app_id: i64,
    release: Release,
}

/// Apps whose head is remembered, at most (a bound, not a tuning knob).
const MAX_HEADS: usize = 10_000;

impl Store {
    /// A store over a migrated database.
    pub fn new(db: Database, cipher: EnvCipher) -> Self {
        Self {
            db,
            cipher,
            heads: Arc::default(),
        }
    }

    /// Runs the migrations of the database's dialect.
    pub async fn migrate(&self) -> Result<(), slipway_storage::Error> {
        self.db.migrate(&POSTGRES_MIGRATOR, &SQLITE_MIGRATOR).await
    }

    async fn begin(&self) -> Result<Transaction<'static, Any>> {
        Ok(self
            .db
            .pool
            .begin_with(self.db.dialect.begin_write())
            .await?)
    }

    /// Creates an app.
    pub async fn create_app(&self, name: &AppName, deadline_secs: u32, actor: &str) -> Result<App> {
        retry(|| async {
            let mut tx = self.begin().await?;
            let now = now_micros();
            let inserted = sqlx::query(
                "INSERT INTO apps (name, created_at, deadline_secs) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(name.as_str())
            .bind(now)
            .bind(i64::from(deadline_secs))
            .fetch_one(&mut *tx)
            .await;
            if let Err(e) = &inserted
                && matches!(classify(e), ErrorClass::UniqueViolation(_))
            {
                return Err(Error::AlreadyExists(format!("app already exists: {name}")));
            }
            inserted?;
            audit(&mut tx, actor, "app.create", name.as_str(), "", &format!("deadline {deadline_secs}s")).await?;
            tx.commit().await?;
            Ok(App {
                name: name.clone(),
                created: time(now),
                deadline_secs,
                active_release: None,
                open_promotion: None,
            })
        })
        .await
    }

    /// Reads an app and its open promotion.
    pub async fn get_app(&self, name: &AppName) -> Result<App> {
        let row = sqlx::query(
            "SELECT id, name, created_at, deadline_secs, active_release FROM apps \
             WHERE name = $1 AND deleted_at IS NULL",
        )
        .bind(name.as_str())
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or_else(|| app_not_found(name))?;
        let open = self.open_promotion(row.try_get("id")?).await?;
        app_from_row(&row, open)
    }

    /// Lists live apps by name.
    pub async fn list_apps(&self) -> Result<Vec<App>> {
        let rows = sqlx::query(
            "SELECT id, name, created_at, deadline_secs, active_release FROM apps \
             WHERE deleted_at IS NULL ORDER BY name",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let open = sqlx::query(&format!(
            "SELECT {PROMOTION_COLUMNS}, p.app_id FROM promotions p JOIN apps a ON a.id = p.app_id \
             WHERE a.deleted_at IS NULL AND p.state IN {OPEN_STATES}"
        ))
        .fetch_all(&self.db.pool)
        .await?;
        let mut open_by_app = std::collections::HashMap::new();
        for row in &open {
            open_by_app.insert(row.try_get::<i64, _>("app_id")?, promotion_from_row(row)?);
        }
        rows.iter()
            .map(|row| app_from_row(row, open_by_app.remove(&row.try_get::<i64, _>("id")?)))
            .collect()
    }

    /// Deletes an app (its ledger stays in the database, detached from the
    /// name, which can be reused). Refused while a promotion is in flight.
    pub async fn delete_app(&self, name: &AppName, actor: &str) -> Result<()> {
        retry(|| async {
            let mut tx = self.begin().await?;
            let app_id = lock_app(&mut tx, self.db.dialect.for_update(), name).await?;
            let open: i64 = sqlx::query(&format!(
                "SELECT COUNT(*) AS n FROM promotions WHERE app_id = $1 AND state IN {OPEN_STATES}"
            ))
            .bind(app_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
            if open > 0 {
                return Err(PromotionRefusal::AppUpdating.into());
            }
            sqlx::query("UPDATE apps SET deleted_at = $1 WHERE id = $2")
                .bind(now_micros())
                .bind(app_id)
                .execute(&mut *tx)
                .await?;
            audit(&mut tx, actor, "app.delete", name.as_str(), "", "").await?;
            tx.commit().await?;
            self.heads.lock().expect("heads lock").remove(name.as_str());
            Ok(())
        })
        .await
    }

    /// Appends a release forked from the newest one (or the request's
    /// parent), atomically with respect to every other write on the app.
    pub async fn create_release(
        &self,
        app: &AppName,
        request: &ReleaseRequest,
        actor: &str,
    ) -> Result<Release> {
        if let Some(head) = self.fast_path_head(app, request)
            && let Some(release) = self.append_optimistic(app, &head, request, actor).await?
        {
            return Ok(release);
        }
        let (app_id, release) = self.append_locked(app, request, actor).await?;
        self.remember(app_id, &release);
        Ok(release)
    }

    /// The remembered head of `app`, when `request` can take the optimistic
    /// path: PostgreSQL, forking the newest release, no lookups needed.
    fn fast_path_head(&self, app: &AppName, request: &ReleaseRequest) -> Option<Head> {
        if self.db.dialect != Dialect::Postgres
            || request.parent.is_some()
            || request.copy_of.is_some()
        {
            return None;
        }
        let head = self
            .heads
            .lock()
            .expect("heads lock")
            .get(app.as_str())
            .cloned()?;
        let needs_build_lookup = request.build.is_some()
            && request.manifest.is_none()
            && request.artifacts.is_none()
            && request.build != head.release.build;
        (!needs_build_lookup).then_some(head)
    }

    /// Appends on top of a remembered head in ONE statement, with no
    /// transaction and no read: the app's `release_count` must still be the
    /// head's sequence number, which makes a stale head a no-op (0 rows)
    /// instead of a lost update. Returns `None` on such a conflict; the
    /// caller then takes the locking path. Many apps written at once thus
    /// cost one round trip each; one hot app falls back to row locks.
    async fn append_optimistic(
        &self,
        app: &AppName,
        head: &Head,
        request: &ReleaseRequest,
        actor: &str,
    ) -> Result<Option<Release>> {
        let draft = plan(Some(&head.release), None, request, None)?;
        let id = ReleaseId::generate();
        let seq = head.release.seq + 1;
        let now = now_micros();
        let sealed = self.cipher.seal(id.as_str(), &draft.env);
        let detail = draft.audit_detail();
        let inserted: i64 = sqlx::query(
            "WITH bump AS ( \
                 UPDATE apps SET release_count = $3 \
                 WHERE id = $2 AND release_count = $3 - 1 AND deleted_at IS NULL RETURNING id \
             ), ins AS ( \
                 INSERT INTO releases (id, app_id, seq, build, manifest, artifacts, build_description, \
                     env_sealed, description, parent, rollback_of, actor, created_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 FROM bump RETURNING id \
             ), aud AS ( \
                 INSERT INTO audit_events (at, actor, action, app, subject, detail) \
                 SELECT $13, $12, 'release.create', $14, id, $15 FROM ins \
             ) SELECT COUNT(*) AS n FROM ins",
        )
        .bind(id.as_str())
        .bind(head.app_id)
        .bind(seq)
        .bind(draft.build.as_ref().map(BuildId::as_str).unwrap_or_default())
        .bind(&draft.manifest)
        .bind(serde_json::to_string(&draft.artifacts).expect("a string map always serialises"))
        .bind(&draft.build_description)
        .bind(sealed)
        .bind(&draft.description)
        .bind(draft.parent.as_ref().map(|p| p.as_str().to_owned()))
        .bind(draft.rollback_of.as_ref().map(|p| p.as_str().to_owned()))
        .bind(actor)
        .bind(now)
        .bind(app.as_str())
        .bind(&detail)
        .fetch_one(&self.db.pool)
        .await?
        .try_get("n")?;
        if inserted != 1 {
            self.heads.lock().expect("heads lock").remove(app.as_str());
            return Ok(None);
        }
        let release = draft.into_release(id, app, seq, actor, time(now));
        self.remember(head.app_id, &release);
        Ok(Some(release))
    }

    fn remember(&self, app_id: i64, release: &Release) {
        let mut heads = self.heads.lock().expect("heads lock");
        if heads.len() >= MAX_HEADS {
            heads.clear();
        }
        heads.insert(
            release.app.to_string(),
            Head {
                app_id,
                release: release.clone(),
            },
        );
    }

    async fn append_locked(
        &self,
        app: &AppName,
        request: &ReleaseRequest,
        actor: &str,
    ) -> Result<(i64, Release)> {
        retry(|| async {
            let mut tx = self.begin().await?;
            // Taking the app row serialises forks: the newest release read
            // below cannot change before this transaction commits.
            let locked = sqlx::query(
                "UPDATE apps SET release_count = release_count + 1 \
                 WHERE name = $1 AND deleted_at IS NULL RETURNING id, release_count",
            )
            .bind(app.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| app_not_found(app))?;
            let app_id: i64 = locked.try_get("id")?;
            let seq: i64 = locked.try_get("release_count")?;
            let base = match &request.parent {
                Some(parent) => Some(self.release_by_id(&mut tx, app, app_id, parent).await?),
                None => self.newest_release(&mut tx, app, app_id).await?,
            };
            let copy = match &request.copy_of {
                Some(id) => Some(self.release_by_id(&mut tx, app, app_id, id).await?),
                None => None,
            };
            let build_info = match (&request.build, &request.manifest) {
                (Some(build), None) if request.artifacts.is_none() && base.as_ref().and_then(|b| b.build.as_ref()) != Some(build) => {
                    self.build_info(&mut tx, app_id, build).await?
                }
                _ => None,
            };
            let draft = plan(base.as_ref(), copy.as_ref(), request, build_info)?;
            let id = ReleaseId::generate();
            let now = now_micros();
            let sealed = self.cipher.seal(id.as_str(), &draft.env);
            sqlx::query(
                "INSERT INTO releases (id, app_id, seq, build, manifest, artifacts, build_description, \
                 env_sealed, description, parent, rollback_of, actor, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(id.as_str())
            .bind(app_id)
            .bind(seq)
            .bind(draft.build.as_ref().map(BuildId::as_str).unwrap_or_default())
            .bind(&draft.manifest)
            .bind(serde_json::to_string(&draft.artifacts).expect("a string map always serialises"))
            .bind(&draft.build_description)
            .bind(sealed)
            .bind(&draft.description)
            .bind(draft.parent.as_ref().map(|p| p.as_str().to_owned()))
            .bind(draft.rollback_of.as_ref().map(|p| p.as_str().to_owned()))
            .bind(actor)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            audit(&mut tx, actor, "release.create", app.as_str(), id.as_str(), &draft.audit_detail()).await?;
            tx.commit().await?;
            let release = draft.into_release(id, app, seq, actor, time(now));
            Ok((app_id, release))
        })
        .await
    }

    /// Reads a release of `app`, or its newest release when `id` is `None`.
    pub async fn get_release(&self, app: &AppName, id: Option<&ReleaseId>) -> Result<Release> {
        let mut conn = self.db.pool.acquire().await?;
        let app_id = app_id(&mut conn, app).await?;
        let row = match id {
            Some(id) => sqlx::query(&format!(
                "SELECT {RELEASE_COLUMNS} FROM releases r WHERE r.app_id = $1 AND r.id = $2"
            ))
            .bind(app_id)
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| release_not_found(app, id))?,
            None => sqlx::query(&format!(
                "SELECT {RELEASE_COLUMNS} FROM releases r WHERE r.app_id = $1 ORDER BY r.seq DESC LIMIT 1"
            ))
            .bind(app_id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no releases for app: {app}")))?,
        };
        self.release_from_row(app, &row)
    }

    /// Lists releases newest first, `limit` at most, older than `before_seq`,
    /// stopping before the page would exceed `budget` bytes (as
    /// [`Release::bytes`] counts them; the first release is always taken).
    /// Rows are read one at a time, so a page of large releases never holds
    /// more than the budget in memory. The flag says the budget cut the page
    /// short.
    pub async fn list_releases(
        &self,
        app: &AppName,
        limit: u32,
        before_seq: Option<i64>,
        budget: usize,
    ) -> Result<(Vec<Release>, bool)> {
        use futures::TryStreamExt as _;
        let mut conn = self.db.pool.acquire().await?;
        let app_id = app_id(&mut conn, app).await?;
        let sql = format!(
            "SELECT {RELEASE_COLUMNS} FROM releases r WHERE r.app_id = $1 AND r.seq < $2 \
             ORDER BY r.seq DESC LIMIT $3"
        );
        let mut rows = sqlx::query(&sql)
            .bind(app_id)
            .bind(before_seq.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch(&mut *conn);
        let mut page = Vec::new();
        let mut used = 0;
        while let Some(row) = rows.try_next().await? {
            let release = self.release_from_row(app, &row)?;
            used += release.bytes();
            if used > budget && !page.is_empty() {
                return Ok((page, true));
            }
            page.push(release);
        }
        Ok((page, false))
    }

    /// Records a pending promotion of `release` when the release belongs to
    /// the app and [`check_promotion`] allows it on the facts read here,
    /// under the app row's lock (the checks that need no runtime).
    pub async fn start_promotion(
        &self,
        app: &AppName,
        release: &ReleaseId,
        options: &PromoteOptions,
        actor: &str,
    ) -> Result<PromotionStart> {
        retry(|| async {
            let mut tx = self.begin().await?;
            let row = sqlx::query(&format!(
                "SELECT id, deadline_secs, active_release, active_seq FROM apps \
                 WHERE name = $1 AND deleted_at IS NULL{}",
                self.db.dialect.for_update()
            ))
            .bind(app.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| app_not_found(app))?;
            let app_id: i64 = row.try_get("id")?;
            let app_deadline: i64 = row.try_get("deadline_secs")?;
            let active: Option<String> = row.try_get("active_release")?;
            let active_seq: Option<i64> = row.try_get("active_seq")?;
            let target = self.release_by_id(&mut tx, app, app_id, release).await?;
            let open: i64 = sqlx::query(&format!(
                "SELECT COUNT(*) AS n FROM promotions WHERE app_id = $1 AND state IN {OPEN_STATES}"
            ))
            .bind(app_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
            let facts = PromotionFacts {
                target: &target,
                active_release: active.as_deref(),
                active_seq,
                promotion_open: open > 0,
                force: options.force,
            };
            if check_promotion(&facts)? == PromotionVerdict::AlreadyActive {
                return Ok(PromotionStart::AlreadyActive(target));
            }
            let fallback = match &active {
                Some(id) => {
                    let id = ReleaseId::parse(id).map_err(|e| Error::InvalidArgument(e.to_string()))?;
                    Some(self.release_by_id(&mut tx, app, app_id, &id).await?)
                }
                None => None,
            };
            let deadline_secs = options.deadline_secs.unwrap_or(app_deadline as u32);
            let now = now_micros();
            let promotion = Promotion {
                id: format!("P{}", uuid::Uuid::new_v4().simple()),
                app: app.clone(),
                release: target.id.clone(),
                fallback_release: fallback.as_ref().map(|f| f.id.clone()),
                state: PromotionState::Pending,
                reason: String::new(),
                deadline_secs,
                lease_epoch: 0,
                actor: actor.to_owned(),
                created: time(now),
                finished: None,
            };
            let inserted = sqlx::query(
                "INSERT INTO promotions (id, app_id, release_id, fallback_release, state, deadline_secs, \
                 actor, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
            )
            .bind(&promotion.id)
            .bind(app_id)
            .bind(promotion.release.as_str())
            .bind(promotion.fallback_release.as_ref().map(|f| f.as_str().to_owned()))
            .bind(PromotionState::Pending.as_str())
            .bind(i64::from(deadline_secs))
            .bind(actor)
            .bind(now)
            .execute(&mut *tx)
            .await;
            if let Err(e) = &inserted
                && matches!(classify(e), ErrorClass::UniqueViolation(_))
            {
                return Err(PromotionRefusal::AppUpdating.into());
            }
            inserted?;
            let detail = format!("release {}, deadline {deadline_secs}s", target.id);
            audit(&mut tx, actor, "release.promote", app.as_str(), &promotion.id, &detail).await?;
            tx.commit().await?;
            Ok(PromotionStart::Started { promotion, target, fallback })
        })
        .await
    }

    /// Moves a pending promotion to rolling out. Returns false when it had
    /// already left `pending` (cancelled, or completed by a fast rollout).
    pub async fn mark_rolling_out(&self, promotion: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE promotions SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4",
        )
        .bind(PromotionState::RollingOut.as_str())
        .bind(now_micros())
        .bind(promotion)
        .bind(PromotionState::Pending.as_str())
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves a promotion to a terminal state. Idempotent for a repeated
    /// report of the same outcome; a report from an older rollout lease than
    /// one already seen is refused (fencing). A success makes the release
    /// active.
    pub async fn finish_promotion(
        &self,
        promotion: &str,
        outcome: PromotionState,
        reason: &str,
        lease_epoch: u64,
        actor: &str,
    ) -> Result<Promotion> {
        retry(|| async {
            let mut tx = self.begin().await?;
            let mut current = self.promotion_in(&mut tx, promotion, true).await?;
            if current.lease_epoch > lease_epoch {
                return Err(Error::FailedPrecondition(format!(
                    "stale report for promotion {promotion}: lease epoch {lease_epoch} < {}",
                    current.lease_epoch
                )));
            }
            if current.state == outcome {
                return Ok(current);
            }
            // A rollout may finish before its start was acknowledged.
            let from = if current.state == PromotionState::Pending
                && outcome != PromotionState::Cancelled
            {
                PromotionState::RollingOut
            } else {
                current.state
            };
            from.transition(outcome)
                .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
            let now = now_micros();
            sqlx::query(
                "UPDATE promotions SET state = $1, reason = $2, lease_epoch = $3, updated_at = $4, \
                 finished_at = $4 WHERE id = $5",
            )
            .bind(outcome.as_str())
            .bind(reason)
            .bind(lease_epoch as i64)
            .bind(now)
            .bind(promotion)
            .execute(&mut *tx)
            .await?;
            if outcome == PromotionState::Succeeded {
                sqlx::query(
                    "UPDATE apps SET active_release = $1, \
                     active_seq = (SELECT seq FROM releases WHERE id = $1) \
                     WHERE id = (SELECT app_id FROM promotions WHERE id = $2)",
                )
                .bind(current.release.as_str())
                .bind(promotion)
                .execute(&mut *tx)
                .await?;
            }
            let detail = if reason.is_empty() {
                outcome.as_str().to_owned()
            } else {
                format!("{}: {reason}", outcome.as_str())
            };
            audit(
                &mut tx,
                actor,
                "promotion.finish",
                current.app.as_str(),
                promotion,
                &detail,
            )
            .await?;
            tx.commit().await?;
            current.state = outcome;
            current.reason = reason.to_owned();
            current.lease_epoch = lease_epoch;
            current.finished = Some(time(now));
            Ok(current)
        })
        .await
    }

    /// Reads a promotion.
    pub async fn get_promotion(&self, id: &str) -> Result<Promotion> {
        let mut conn = self.db.pool.acquire().await?;
        let row = sqlx::query(&format!(
            "SELECT {PROMOTION_COLUMNS} FROM promotions p JOIN apps a ON a.id = p.app_id WHERE p.id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("promotion not found: {id}")))?;
        promotion_from_row(&row)
    }

    /// Lists an app's promotions, newest first.
    pub async fn list_promotions(&self, app: &AppName, limit: u32) -> Result<Vec<Promotion>> {
        let mut conn = self.db.pool.acquire().await?;
        let app_id = app_id(&mut conn, app).await?;
        let rows = sqlx::query(&format!(
            "SELECT {PROMOTION_COLUMNS} FROM promotions p JOIN apps a ON a.id = p.app_id \
             WHERE p.app_id = $1 ORDER BY p.created_at DESC, p.id DESC LIMIT $2"
        ))
        .bind(app_id)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(promotion_from_row).collect()
    }

    /// Promotions still pending after `age`: their hand-over to the rollout
    /// service may have been lost (a crash between recording and starting).
    pub async fn stale_pending_promotions(&self, age: Duration) -> Result<Vec<Promotion>> {
        let cutoff = now_micros() - age.as_micros() as i64;
        let rows = sqlx::query(&format!(
            "SELECT {PROMOTION_COLUMNS} FROM promotions p JOIN apps a ON a.id = p.app_id \
             WHERE p.state = $1 AND p.updated_at < $2 ORDER BY p.created_at"
        ))
        .bind(PromotionState::Pending.as_str())
        .bind(cutoff)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(promotion_from_row).collect()
    }

    /// Reads the specs a pending promotion needs to be (re)started.
    pub async fn promotion_specs(
        &self,
        promotion: &Promotion,
    ) -> Result<(Release, Option<Release>)> {
        let target = self
            .get_release(&promotion.app, Some(&promotion.release))
            .await?;
        let fallback = match &promotion.fallback_release {
            Some(id) => Some(self.get_release(&promotion.app, Some(id)).await?),
            None => None,
        };
        Ok((target, fallback))
    }

    /// Lists audit events, newest first, for one app or all.
    pub async fn list_audit(&self, app: Option<&AppName>, limit: u32) -> Result<Vec<AuditEvent>> {
        let rows = match app {
            Some(app) => sqlx::query(
                "SELECT id, at, actor, action, app, subject, detail FROM audit_events \
                 WHERE app = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(app.as_str())
            .bind(i64::from(limit))
            .fetch_all(&self.db.pool)
            .await?,
            None => sqlx::query(
                "SELECT id, at, actor, action, app, subject, detail FROM audit_events ORDER BY id DESC LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(&self.db.pool)
            .await?,
        };
        rows.iter()
            .map(|row| {
                Ok(AuditEvent {
                    id: row.try_get("id")?,
                    at: time(row.try_get("at")?),
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    app: row.try_get("app")?,
                    subject: row.try_get("subject")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }

    async fn open_promotion(&self, app_id: i64) -> Result<Option<Promotion>> {
        let row = sqlx::query(&format!(
            "SELECT {PROMOTION_COLUMNS} FROM promotions p JOIN apps a ON a.id = p.app_id \
             WHERE p.app_id = $1 AND p.state IN {OPEN_STATES}"
        ))
        .bind(app_id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(promotion_from_row).transpose()
    }

    async fn promotion_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        id: &str,
        lock: bool,
    ) -> Result<Promotion> {
        let suffix = if lock {
            self.db.dialect.for_update()
        } else {
            ""
        };
        let lock_clause = if suffix.is_empty() {
            String::new()
        } else {
            format!("{suffix} OF p")
        };
        let row = sqlx::query(&format!(
            "SELECT {PROMOTION_COLUMNS} FROM promotions p JOIN apps a ON a.id = p.app_id WHERE p.id = $1{lock_clause}"
        ))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("promotion not found: {id}")))?;
        promotion_from_row(&row)
    }

    async fn newest_release(
        &self,
        tx: &mut Transaction<'static, Any>,
        app: &AppName,
        app_id: i64,
    ) -> Result<Option<Release>> {
        let row = sqlx::query(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases r WHERE r.app_id = $1 ORDER BY r.seq DESC LIMIT 1"
        ))
        .bind(app_id)
        .fetch_optional(&mut **tx)
        .await?;
        row.map(|row| self.release_from_row(app, &row)).transpose()
    }

    async fn release_by_id(
        &self,
        tx: &mut Transaction<'static, Any>,
        app: &AppName,
        app_id: i64,
        id: &ReleaseId,
    ) -> Result<Release> {
        let row = sqlx::query(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases r WHERE r.app_id = $1 AND r.id = $2"
        ))
        .bind(app_id)
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| release_not_found(app, id))?;
        self.release_from_row(app, &row)
    }

    async fn build_info(
        &self,
        tx: &mut Transaction<'static, Any>,
        app_id: i64,
        build: &BuildId,
    ) -> Result<Option<BuildInfo>> {
        let row = sqlx::query(
            "SELECT manifest, artifacts, build_description FROM releases WHERE app_id = $1 AND build = $2 \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(app_id)
        .bind(build.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        row.map(|row| {
            Ok(BuildInfo {
                manifest: row.try_get("manifest")?,
                artifacts: artifacts_from_json(&row.try_get::<String, _>("artifacts")?)?,
                description: row.try_get("build_description")?,
            })
        })
        .transpose()
    }

    fn release_from_row(&self, app: &AppName, row: &AnyRow) -> Result<Release> {
        let id: String = row.try_get("id")?;
        let sealed: Vec<u8> = row.try_get("env_sealed")?;
        let env = self.cipher.open(&id, &sealed)?;
        let build: String = row.try_get("build")?;
        Ok(Release {
            id: stored_id(ReleaseId::parse(&id))?,
            app: app.clone(),
            seq: row.try_get("seq")?,
            build: if build.is_empty() {
                None
            } else {
                Some(stored_id(BuildId::parse(&build))?)
            },
            manifest: row.try_get("manifest")?,
            artifacts: artifacts_from_json(&row.try_get::<String, _>("artifacts")?)?,
            build_description: row.try_get("build_description")?,
            env,
            description: row.try_get("description")?,
            parent: optional_release_id(row.try_get("parent")?)?,
            rollback_of: optional_release_id(row.try_get("rollback_of")?)?,
            actor: row.try_get("actor")?,
            created: time(row.try_get("created_at")?),
        })
    }
}

/// Retries a whole transaction when the database reports a transient
/// conflict (deadlock, serialisation failure, SQLite busy).
async fn retry<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(Error::Store(e)) if tries < 8 && classify(&e) == ErrorClass::Retryable => {
                tries += 1;
                tracing::debug!(
                    tries,
                    "retrying a transaction after a transient conflict: {e}"
                );
                tokio::time::sleep(Duration::from_millis(5 << tries.min(6))).await;
            }
            other => return other,
        }
    }
}

async fn lock_app(
    tx: &mut Transaction<'static, Any>,
    for_update: &str,
    name: &AppName,
) -> Result<i64> {
    let row = sqlx::query(&format!(
        "SELECT id FROM apps WHERE name = $1 AND deleted_at IS NULL{for_update}"
    ))
    .bind(name.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| app_not_found(name))?;
    Ok(row.try_get("id")?)
}

async fn app_id(conn: &mut sqlx::AnyConnection, name: &AppName) -> Result<i64> {
    let row = sqlx::query("SELECT id FROM apps WHERE name = $1 AND deleted_at IS NULL")
        .bind(name.as_str())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| app_not_found(name))?;
    Ok(row.try_get("id")?)
}

async fn audit(
    tx: &mut Transaction<'static, Any>,
    actor: &str,
    action: &str,
    app: &str,
    subject: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO audit_events (at, actor, action, app, subject, detail) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(now_micros())
        .bind(actor)
        .bind(action)
        .bind(app)
        .bind(subject)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn app_from_row(row: &AnyRow, open_promotion: Option<Promotion>) -> Result<App> {
    let name: String = row.try_get("name")?;
    let active: Option<String> = row.try_get("active_release")?;
    Ok(App {
        name: stored_id(AppName::parse(&name))?,
        created: time(row.try_get("created_at")?),
        deadline_secs: row.try_get::<i64, _>("deadline_secs")? as u32,
        active_release: optional_release_id(active)?,
        open_promotion,
    })
}

fn promotion_from_row(row: &AnyRow) -> Result<Promotion> {
    let state: String = row.try_get("state")?;
    let app: String = row.try_get("name")?;
    let release: String = row.try_get("release_id")?;
    let finished: Option<i64> = row.try_get("finished_at")?;
    Ok(Promotion {
        id: row.try_get("id")?,
        app: stored_id(AppName::parse(&app))?,
        release: stored_id(ReleaseId::parse(&release))?,
        fallback_release: optional_release_id(row.try_get("fallback_release")?)?,
        state: PromotionState::parse(&state).ok_or_else(|| {
            Error::Store(sqlx::Error::Decode(
                format!("unknown promotion state {state:?}").into(),
            ))
        })?,
        reason: row.try_get("reason")?,
        deadline_secs: row.try_get::<i64, _>("deadline_secs")? as u32,
        lease_epoch: row.try_get::<i64, _>("lease_epoch")? as u64,
        actor: row.try_get("actor")?,
        created: time(row.try_get("created_at")?),
        finished: finished.map(time),
    })
}

fn artifacts_from_json(text: &str) -> Result<std::collections::BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|e| {
        Error::Store(sqlx::Error::Decode(
            format!("stored artifacts are invalid: {e}").into(),
        ))
    })
}

fn optional_release_id(value: Option<String>) -> Result<Option<ReleaseId>> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| stored_id(ReleaseId::parse(&v)))
        .transpose()
}

/// A value the database holds failed validation: the row is corrupt.
fn stored_id<T, E: std::fmt::Display>(parsed: std::result::Result<T, E>) -> Result<T> {
    parsed.map_err(|e| {
        Error::Store(sqlx::Error::Decode(
            format!("stored value is invalid: {e}").into(),
        ))
    })
}

fn time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

fn app_not_found(name: &AppName) -> Error {
    Error::NotFound(format!("app not found: {name}"))
}

fn release_not_found(app: &AppName, id: &ReleaseId) -> Error {
    Error::NotFound(format!("release not found: {id} (app {app})"))
}
