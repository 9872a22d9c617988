//! Database access shared by the services that own tables: one pool type for
//! both backends (SQLite for the embedded rack, PostgreSQL at scale), the
//! dialect differences the stores must respect, migrations, and the one place
//! where driver errors are classified (unique violations, busy databases).
//!
//! The pool is sqlx's `Any` driver, so a store is written once and runs on
//! both databases; each service keeps one migration directory per dialect
//! because DDL differs. The shared conformance suites are the check that both
//! really behave alike.

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, Utc};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
pub use sqlx::{AnyPool, Transaction};

mod args;
pub mod files;
pub mod idempotency;
pub mod outbox;
mod patience;

pub use args::StoreArgs;
#[cfg(feature = "testing")]
pub mod testing;

/// Which database sits behind a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL (the scale setup).
    Postgres,
    /// SQLite (the embedded default).
    Sqlite,
}

impl Dialect {
    /// Picks the dialect from a database URL.
    pub fn of_url(url: &str) -> Result<Self, Error> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else {
            Err(Error::UnsupportedUrl(redact_url(url)))
        }
    }

    /// The statement that opens a write transaction. SQLite takes the write
    /// lock up front so two writers never both read and then collide;
    /// PostgreSQL locks rows instead (see [`Dialect::for_update`]).
    pub fn begin_write(self) -> &'static str {
        match self {
            Self::Postgres => "BEGIN",
            Self::Sqlite => "BEGIN IMMEDIATE",
        }
    }

    /// The row-lock suffix for a `SELECT` inside a write transaction.
    pub fn for_update(self) -> &'static str {
        match self {
            Self::Postgres => " FOR UPDATE",
            Self::Sqlite => "",
        }
    }
}

/// A connected pool and the dialect behind it.
#[derive(Clone, Debug)]
pub struct Database {
    /// The pool; every store query goes through it.
    pub pool: AnyPool,
    /// Which database it is.
    pub dialect: Dialect,
}

/// Failures of connecting or migrating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL names no supported database.
    #[error("unsupported database URL {0}: use postgres://… or sqlite:…")]
    UnsupportedUrl(String),
    /// The database did not accept a connection.
    #[error("connect to {url}")]
    Connect {
        /// The URL without its password.
        url: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("run migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The data directory could not be created owner-only.
    #[error("create data dir {dir}")]
    DataDir {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Pool settings.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Upper bound of open connections (SQLite is capped at a few, since it
    /// has one writer anyway).
    pub max_connections: u32,
    /// How long to wait for a free connection.
    pub acquire_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 32,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// Connects to `url` (`postgres://…` or `sqlite:PATH`). SQLite files are
/// created when missing and run in WAL mode with foreign keys on.
pub async fn connect(url: &str, options: &PoolOptions) -> Result<Database, Error> {
    sqlx::any::install_default_drivers();
    let dialect = Dialect::of_url(url)?;
    let connect_err = |source| Error::Connect {
        url: redact_url(url),
        source,
    };
    let pool = match dialect {
        Dialect::Postgres => {
            let opts = AnyConnectOptions::from_str(url).map_err(connect_err)?;
            AnyPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(opts)
                .await
                .map_err(connect_err)?
        }
        Dialect::Sqlite => {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or(path);
            // Owner-only before SQLite creates it (and its -wal/-shm) 0644.
            files::prepare_sqlite_file(std::path::Path::new(path))
                .map_err(|e| connect_err(sqlx::Error::Io(e)))?;
            let opts = AnyConnectOptions::from_str(&format!("sqlite://{path}?mode=rwc"))
                .map_err(connect_err)?;
            AnyPoolOptions::new()
                .max_connections(options.max_connections.min(8))
                .acquire_timeout(options.acquire_timeout)
                // WAL lets readers run beside the one writer; writers wait
                // for each other (busy_timeout) instead of failing at once.
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        use sqlx::Executor as _;
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await
                        .map(|_| ())
                    })
                })
                .connect_with(opts)
                .await
                .map_err(connect_err)?
        }
    };
    Ok(Database { pool, dialect })
}

impl Database {
    /// Runs the migrator that matches this database's dialect.
    pub async fn migrate(&self, postgres: &Migrator, sqlite: &Migrator) -> Result<(), Error> {
        match self.dialect {
            Dialect::Postgres => postgres.run(&self.pool).await?,
            Dialect::Sqlite => sqlite.run(&self.pool).await?,
        }
        Ok(())
    }

    /// Answers once the database does (`SELECT 1`).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}

/// What a driver error means to a store.
#[derive(Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// A unique constraint or index refused the write; carries its name when
    /// the driver reports one (PostgreSQL does; SQLite names the columns).
    UniqueViolation(String),
    /// A foreign key refused the write.
    ForeignKeyViolation,
    /// The database was busy or the transaction lost a conflict; retrying
    /// the whole transaction is safe.
    Retryable,
    /// Anything else.
    Other,
}

/// Classifies a driver error, in one place for both dialects.
pub fn classify(err: &sqlx::Error) -> ErrorClass {
    let sqlx::Error::Database(db) = err else {
        return ErrorClass::Other;
    };
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    match code.as_str() {
        // PostgreSQL SQLSTATEs.
        "23505" => ErrorClass::UniqueViolation(db.constraint().unwrap_or_default().to_owned()),
        "23503" => ErrorClass::ForeignKeyViolation,
        "40001" | "40P01" => ErrorClass::Retryable,
        // SQLite extended result codes: SQLITE_CONSTRAINT_UNIQUE,
        // SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_FOREIGNKEY, and the
        // BUSY/LOCKED family.
        "2067" | "1555" => ErrorClass::UniqueViolation(sqlite_unique_target(db.message())),
        "787" => ErrorClass::ForeignKeyViolation,
        "5" | "6" | "261" | "262" | "517" => ErrorClass::Retryable,
        _ => ErrorClass::Other,
    }
}

/// What a service answers (gRPC UNAVAILABLE) to a call that failed because
/// [`is_unavailable`]: the condition passes, and the caller may retry.
pub const UNAVAILABLE_MESSAGE: &str = "database unavailable, retrying: try again shortly";

/// Whether `err` means the database could not be reached (no connection
/// within the pool's acquire timeout, a connection lost, the server shutting
/// down or refusing connections): a condition that passes, answered as
/// "database unavailable, retrying" rather than an internal error. The pool
/// needs no restart: it opens new connections once the database answers.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08 (connection exception); 57P01-57P03 (admin shutdown,
            // crash shutdown, cannot connect now).
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// SQLite reports `UNIQUE constraint failed: table.col, table.col`.
fn sqlite_unique_target(message: &str) -> String {
    message
        .split_once(": ")
        .map(|(_, cols)| cols.to_owned())
        .unwrap_or_default()
}

/// Opens a service's database: creates `data_dir` owner-only first when
/// something of the service lives there (the SQLite file, or a key file when
/// `keeps_files`), then connects with the default pool settings. Every
/// service opens its store this way; each then migrates its own tables.
pub async fn open(url: &str, data_dir: &Path, keeps_files: bool) -> Result<Database, Error> {
    if url.starts_with("sqlite:") || keeps_files {
        files::create_private_dir(data_dir).map_err(|source| Error::DataDir {
            dir: data_dir.to_owned(),
            source,
        })?;
    }
    connect(url, &PoolOptions::default()).await
}

/// An error that may carry a driver error: what [`retry`] looks at.
pub trait StoreError {
    /// The driver error inside, if any.
    fn driver_error(&self) -> Option<&sqlx::Error>;
}

impl StoreError for sqlx::Error {
    fn driver_error(&self) -> Option<&sqlx::Error> {
        Some(self)
    }
}

/// Attempts of [`retry`] before the conflict is returned.
const RETRIES: u32 = 8;

/// Runs `attempt` (a statement or a whole transaction) again while the
/// database reports a transient conflict (SQLite busy, a PostgreSQL
/// serialisation failure or deadlock), with a growing pause, up to
/// [`RETRIES`] times; any other result is returned as it is.
pub async fn retry<T, E, F, Fut>(mut attempt: F) -> Result<T, E>
where
    E: StoreError + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(e)
                if tries < RETRIES
                    && e.driver_error().map(classify) == Some(ErrorClass::Retryable) =>
            {
                tries += 1;
                tracing::debug!(tries, "retrying after a transient conflict: {e}");
                tokio::time::sleep(Duration::from_millis(5 << tries.min(6))).await;
            }
            other => return other,
        }
    }
}

/// A time as stored: microseconds since the Unix epoch (the `Any` driver
/// carries no date types).
pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// A stored time back ([`micros`]' inverse); out of range reads as the epoch.
pub fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Removes the password from a database URL so it can be shown.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}://{user}:***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Current time as microseconds since the Unix epoch: how stores keep times,
/// since the `Any` driver carries no date types.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_comes_from_the_url() {
        assert_eq!(
            Dialect::of_url("postgres://h/db").unwrap(),
            Dialect::Postgres
        );
        assert_eq!(
            Dialect::of_url("sqlite:/tmp/x.db").unwrap(),
            Dialect::Sqlite
        );
        let err = Dialect::of_url("mysql://root:pw@h/db")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mysql://root:***@h/db"), "{err}");
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/d"),
            "postgres://u:***@h:5432/d"
        );
        assert_eq!(redact_url("sqlite:/x.db"), "sqlite:/x.db");
    }
}
