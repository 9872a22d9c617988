//! The ledger: appending a release (one optimistic statement on PostgreSQL
//! with a remembered head, else under the app row's lock) and reading
//! releases back.

use slipway_domain::{AppName, BuildId, ReleaseId};
use slipway_storage::{Dialect, now_micros};
use sqlx::{Any, Row as _, Transaction};

use super::rows::{RELEASE_COLUMNS, artifacts_from_json, time};
use super::webhooks::record_event;
use super::{Store, app_id, app_not_found, audit, release_not_found, retry};
use crate::error::{Error, Result};
use crate::model::{BuildInfo, Draft, Release, ReleaseRequest, plan};
use crate::webhooks::{Event, RELEASE_CREATE};

/// An app's newest release as this replica last wrote or read it.
#[derive(Clone, Debug)]
pub(super) struct Head {
    app_id: i64,
    release: Release,
}

/// Apps whose head is remembered, at most (a bound, not a tuning knob).
pub(super) const MAX_HEADS: usize = 10_000;

impl Store {
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
            // A keyed call records its key in the append's transaction.
            || super::idempotency::in_scope()
            || request.parent.is_some()
            || request.copy_of.is_some()
            // The newest must be read under the lock to be compared.
            || request.expected_newest.is_some()
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
        let inserted: i64 = bind_release(
            sqlx::query(
            "WITH bump AS ( \
                 UPDATE apps SET release_count = $3 \
                 WHERE id = $2 AND release_count = $3 - 1 AND deleted_at IS NULL RETURNING id \
             ), ins AS ( \
                 INSERT INTO releases (id, app_id, seq, build, manifest, artifacts, build_description, \
                     env_sealed, description, parent, rollback_of, actor, created_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 FROM bump RETURNING id \
             ), aud AS ( \
                 INSERT INTO audit_events (at, actor, source, action, app, subject, detail) \
                 SELECT $13, $12, $17, 'release.create', $14, id, $15 FROM ins \
             ), ev AS ( \
                 INSERT INTO webhook_events (id, action, status, app, actor, subject, message, created_at) \
                 SELECT $16, 'release:create', 'success', $14, $12, id, $9, $13 FROM ins RETURNING id \
             ), fan AS ( \
                 INSERT INTO webhook_deliveries \
                     (id, event_id, webhook_id, state, next_attempt_at, created_at, updated_at) \
                 SELECT ev.id || '-' || w.id, ev.id, w.id, 'pending', $13, $13, $13 FROM ev CROSS JOIN webhooks w \
                 WHERE w.deleted_at IS NULL AND (w.app = '' OR w.app = $14) \
                     AND (w.events = '' OR w.events LIKE '%,release:create,%') \
             ) SELECT COUNT(*) AS n FROM ins",
            ),
            &id,
            head.app_id,
            seq,
            &draft,
            sealed,
            actor,
            now,
        )
        .bind(app.as_str())
        .bind(&detail)
        .bind(crate::webhooks::new_id('E'))
        // The audit record's source (see `slipway_rpc::actor::current`).
        .bind(slipway_rpc::actor::current().source)
        .fetch_one(&mut *self.db.acquire().await?)
        .await?
        .try_get("n")?;
        if inserted != 1 {
            self.heads.lock().expect("heads lock").remove(app.as_str());
            return Ok(None);
        }
        let release = draft.into_release(id, app, seq, actor, time(now));
        self.remember(head.app_id, &release);
        self.wake_outbox();
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
            let mut tx = self.db.begin_write().await?;
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
            bind_release(
                sqlx::query(
                    "INSERT INTO releases (id, app_id, seq, build, manifest, artifacts, build_description, \
                     env_sealed, description, parent, rollback_of, actor, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                ),
                &id,
                app_id,
                seq,
                &draft,
                sealed,
                actor,
                now,
            )
            .execute(&mut *tx)
            .await?;
            audit(&mut tx, actor, "release.create", app.as_str(), id.as_str(), &draft.audit_detail()).await?;
            let event = Event::new(RELEASE_CREATE, "success", app.as_str(), actor, id.as_str(), &draft.description, now);
            record_event(&mut tx, &event).await?;
            super::idempotency::record(&mut tx, super::idempotency::RELEASE, id.as_str()).await?;
            tx.commit().await?;
            self.wake_outbox();
            let release = draft.into_release(id, app, seq, actor, time(now));
            Ok((app_id, release))
        })
        .await
    }

    /// Reads a release of `app`, or its newest release when `id` is `None`.
    pub async fn get_release(&self, app: &AppName, id: Option<&ReleaseId>) -> Result<Release> {
        let mut conn = self.db.acquire().await?;
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
        let mut conn = self.db.acquire().await?;
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

    pub(super) async fn release_by_id(
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
}

/// Binds `$1`–`$13` of a release insert, in the order both inserts name
/// their columns: id, app, sequence, build, manifest, artifacts, build
/// description, sealed env, description, parent, rollback of, actor, time.
#[allow(clippy::too_many_arguments)]
fn bind_release<'q>(
    query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    id: &'q ReleaseId,
    app_id: i64,
    seq: i64,
    draft: &'q Draft,
    sealed: Vec<u8>,
    actor: &'q str,
    now: i64,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(id.as_str())
        .bind(app_id)
        .bind(seq)
        .bind(
            draft
                .build
                .as_ref()
                .map(BuildId::as_str)
                .unwrap_or_default(),
        )
        .bind(&draft.manifest)
        .bind(serde_json::to_string(&draft.artifacts).expect("a string map always serialises"))
        .bind(&draft.build_description)
        .bind(sealed)
        .bind(&draft.description)
        .bind(draft.parent.as_ref().map(|p| p.as_str().to_owned()))
        .bind(draft.rollback_of.as_ref().map(|p| p.as_str().to_owned()))
        .bind(actor)
        .bind(now)
}
