//! Throw-away databases for tests: a fresh PostgreSQL database per test
//! (created on the server named by `SLIPWAY_TEST_DATABASE_URL`, else
//! `DATABASE_URL`, else the local development server) and a fresh SQLite file
//! in a temporary directory. A missing server fails the test loudly.

use super::{Database, PoolOptions, connect};

pub mod relay;

/// The admin URL used to create test databases.
pub fn postgres_admin_url() -> String {
    std::env::var("SLIPWAY_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that lives as long as this value (SQLite) or until the test
/// run's cleanup (PostgreSQL databases are named `slipway_test_*`).
pub struct TestDb {
    /// The connected database.
    pub db: Database,
    /// The URL, so a test can reconnect (e.g. after a restart).
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// Another handle on the same database (for a second replica); the
    /// original keeps the files alive.
    pub fn share(&self) -> TestDb {
        TestDb {
            db: self.db.clone(),
            url: self.url.clone(),
            _dir: None,
        }
    }
}

/// Creates an empty PostgreSQL database and connects to it.
pub async fn postgres() -> TestDb {
    let admin_url = postgres_admin_url();
    let admin = connect(&admin_url, &PoolOptions { max_connections: 1, ..Default::default() })
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL for tests is not reachable ({e:#}); start it or set SLIPWAY_TEST_DATABASE_URL"));
    let name = format!("slipway_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin.pool)
        .await
        .expect("create test database");
    admin.pool.close().await;
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(&admin_url);
    let url = format!("{base}/{name}");
    let db = connect(&url, &PoolOptions::default())
        .await
        .expect("connect to test database");
    TestDb {
        db,
        url,
        _dir: None,
    }
}

/// Creates an empty SQLite database file in a temporary directory.
pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("test.db").display());
    let db = connect(&url, &PoolOptions::default())
        .await
        .expect("open sqlite");
    TestDb {
        db,
        url,
        _dir: Some(dir),
    }
}

/// The database a backend-parametrised test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A fresh PostgreSQL database.
    Postgres,
    /// A fresh SQLite file.
    Sqlite,
}

impl Backend {
    /// A fresh, empty database of this kind.
    pub async fn db(self) -> TestDb {
        match self {
            Self::Postgres => postgres().await,
            Self::Sqlite => sqlite().await,
        }
    }
}

/// Runs each `async fn name(Backend)` once per backend, as two named tests,
/// `name::postgres` and `name::sqlite`: every store suite (build, release,
/// rollout) is written once and checked on both databases.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    super::$name($crate::testing::Backend::Postgres).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$name($crate::testing::Backend::Sqlite).await
                }
            }
        )*
    };
}
