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
//!
//! The store is split by what it records: `apps` (apps and the audit log),
//! `ledger` (the release append, with its head cache), `promotions`
//! (recording what `model::check_promotion` decided, and outcomes) and
//! `rows` (row mapping). Each holds its own `impl Store` block.

mod apps;
mod audit;
pub mod idempotency;
mod ledger;
mod promotions;
mod rows;
mod tokens;
mod webhooks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use slipway_domain::{AppName, ReleaseId};
use slipway_storage::{Database, now_micros, retry};
use sqlx::{Any, Row as _, Transaction};

use crate::crypto::EnvCipher;
use crate::error::{Error, Result};

pub use audit::{AuditRecord, NewAuditRecord, record_time};
pub use promotions::{PromoteOptions, PromotionStart};
pub use tokens::{NewToken, TokenRecord};
pub use webhooks::{AttemptRecord, Claimed};

/// Migrations for PostgreSQL.
pub static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
/// Migrations for SQLite.
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The states of a promotion in flight, as SQL.
const OPEN_STATES: &str = "('pending', 'rolling_out')";

/// The ledger on a SQL database.
#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
    cipher: EnvCipher,
    /// The newest release of recently written apps: a hint that lets a
    /// PostgreSQL append skip reading it (see [`Store::append_optimistic`]).
    heads: Arc<Mutex<HashMap<String, ledger::Head>>>,
    /// Notified after a commit that wrote webhook deliveries (this
    /// replica's dispatcher wakes at once instead of at its next poll).
    outbox: Arc<tokio::sync::Notify>,
    /// The idempotency keys of keyed calls (`idempotency.rs`).
    keys: slipway_storage::idempotency::Keys,
}

impl Store {
    /// A store over a migrated database.
    pub fn new(db: Database, cipher: EnvCipher) -> Self {
        Self {
            keys: slipway_storage::idempotency::Keys::new(db.clone()),
            db,
            cipher,
            heads: Arc::default(),
            outbox: Arc::default(),
        }
    }

    /// Runs the migrations of the database's dialect.
    pub async fn migrate(&self) -> Result<(), slipway_storage::Error> {
        self.db.migrate(&POSTGRES_MIGRATOR, &SQLITE_MIGRATOR).await
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
    // The source is the calling request's (see `slipway_rpc::actor::current`).
    let source = slipway_rpc::actor::current().source;
    sqlx::query("INSERT INTO audit_events (at, actor, source, action, app, subject, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(now_micros())
        .bind(actor)
        .bind(source)
        .bind(action)
        .bind(app)
        .bind(subject)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn app_not_found(name: &AppName) -> Error {
    Error::NotFound(format!("app not found: {name}"))
}

fn release_not_found(app: &AppName, id: &ReleaseId) -> Error {
    Error::NotFound(format!("release not found: {id} (app {app})"))
}
