//! The local runtime's records: the desired spec of each app (sealed, as
//! the rollout store seals specs), stable service ports, app users, and
//! every process started, recorded before it is spawned so a crash cannot
//! leave an unknown process behind. They live in the rollout service's
//! database (tables `local_*`, migrated with the rollout store's
//! migrations) but belong to the local runtime alone: the Kubernetes
//! runtime needs none of them.

use chrono::{DateTime, Utc};
use slipway_storage::{Database, ErrorClass, classify, now_micros};
use sqlx::Row as _;

use crate::crypto::SpecCipher;
use crate::error::{Error, Result};
use crate::store::{Store, micros, retry, time};

/// A process the local runtime started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessRecord {
    /// e.g. `web-4f2a9c1d`.
    pub id: String,
    /// The app.
    pub app: String,
    /// The service.
    pub service: String,
    /// The release it runs.
    pub release: String,
    /// OS process id; `None` if the service died between recording and spawning.
    pub pid: Option<u32>,
    /// The port it listens on.
    pub port: u16,
    /// When it was started.
    pub started: DateTime<Utc>,
}

/// The local runtime's records. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LocalRecords {
    db: Database,
    /// Seals desired specs (they carry the decrypted env).
    cipher: SpecCipher,
}

impl LocalRecords {
    /// The local records in `store`'s database, sealed with its cipher.
    pub fn new(store: &Store) -> Self {
        let (db, cipher) = store.parts();
        Self {
            db: db.clone(),
            cipher: cipher.clone(),
        }
    }

    fn open_spec(&self, app: &str, stored: &str) -> Result<String> {
        self.cipher
            .open(app, stored)
            .map_err(|e| Error::Corrupt(e.to_string()))
    }

    /// Records what an app should run (the spec JSON and the rollout that set it).
    pub async fn set_app(&self, app: &str, spec_json: &str, rollout: &str) -> Result<()> {
        let sealed = self.cipher.seal(app, spec_json);
        retry(|| async {
            sqlx::query(
                "INSERT INTO local_apps (app, spec, rollout_id, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (app) DO UPDATE SET spec = excluded.spec, rollout_id = excluded.rollout_id, \
                 updated_at = excluded.updated_at",
            )
            .bind(app)
            .bind(&sealed)
            .bind(rollout)
            .bind(now_micros())
            .execute(&mut *self.db.acquire().await?)
            .await
        })
        .await?;
        Ok(())
    }

    /// Forgets what an app should run.
    pub async fn remove_app(&self, app: &str) -> Result<()> {
        retry(|| async {
            sqlx::query("DELETE FROM local_apps WHERE app = $1")
                .bind(app)
                .execute(&mut *self.db.acquire().await?)
                .await
        })
        .await?;
        Ok(())
    }

    /// Every app's desired spec JSON and rollout.
    pub async fn apps(&self) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query("SELECT app, spec, rollout_id FROM local_apps ORDER BY app")
            .fetch_all(&mut *self.db.acquire().await?)
            .await?;
        rows.iter()
            .map(|r| {
                let app: String = r.try_get("app")?;
                let spec = self.open_spec(&app, &r.try_get::<String, _>("spec")?)?;
                Ok((app, spec, r.try_get("rollout_id")?))
            })
            .collect()
    }

    /// The stable port of a service, if one was assigned.
    pub async fn port(&self, app: &str, service: &str) -> Result<Option<u16>> {
        let row = sqlx::query("SELECT port FROM local_ports WHERE app = $1 AND service = $2")
            .bind(app)
            .bind(service)
            .fetch_optional(&mut *self.db.acquire().await?)
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>("port"))
            .transpose()?
            .map(|p| p as u16))
    }

    /// Every assigned stable port.
    pub async fn ports(&self) -> Result<Vec<u16>> {
        let rows = sqlx::query("SELECT port FROM local_ports")
            .fetch_all(&mut *self.db.acquire().await?)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<i64, _>("port")? as u16))
            .collect()
    }

    /// Assigns a stable port; `false` if the port is taken by another service.
    pub async fn assign_port(&self, app: &str, service: &str, port: u16) -> Result<bool> {
        let done = retry(|| async {
            sqlx::query("INSERT INTO local_ports (app, service, port) VALUES ($1, $2, $3)")
                .bind(app)
                .bind(service)
                .bind(i64::from(port))
                .execute(&mut *self.db.acquire().await?)
                .await
        })
        .await;
        match done {
            Ok(_) => Ok(true),
            Err(e) if matches!(classify(&e), ErrorClass::UniqueViolation(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The uid assigned to an app's processes, if any.
    pub async fn app_user(&self, app: &str) -> Result<Option<u32>> {
        let row = sqlx::query("SELECT uid FROM local_app_users WHERE app = $1")
            .bind(app)
            .fetch_optional(&mut *self.db.acquire().await?)
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>("uid"))
            .transpose()?
            .map(|uid| uid as u32))
    }

    /// Every assigned app uid.
    pub async fn app_users(&self) -> Result<Vec<u32>> {
        let rows = sqlx::query("SELECT uid FROM local_app_users")
            .fetch_all(&mut *self.db.acquire().await?)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<i64, _>("uid")? as u32))
            .collect()
    }

    /// Assigns `uid` to `app`; `false` if the app or the uid has one already.
    pub async fn assign_app_user(&self, app: &str, uid: u32) -> Result<bool> {
        let done = retry(|| async {
            sqlx::query("INSERT INTO local_app_users (app, uid) VALUES ($1, $2)")
                .bind(app)
                .bind(i64::from(uid))
                .execute(&mut *self.db.acquire().await?)
                .await
        })
        .await;
        match done {
            Ok(_) => Ok(true),
            Err(e) if matches!(classify(&e), ErrorClass::UniqueViolation(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Records a process about to be spawned.
    pub async fn insert_process(&self, p: &ProcessRecord) -> Result<()> {
        self.insert_processes(std::slice::from_ref(p)).await
    }

    /// Records processes about to be spawned (a width's starts), in one
    /// transaction: one write however wide the rollout is.
    pub async fn insert_processes(&self, ps: &[ProcessRecord]) -> Result<()> {
        if ps.is_empty() {
            return Ok(());
        }
        retry(|| async {
            let mut tx = self.db.begin_write().await?;
            for p in ps {
                sqlx::query(
                    "INSERT INTO local_processes (id, app, service, release_id, pid, port, started_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&p.id)
                .bind(&p.app)
                .bind(&p.service)
                .bind(&p.release)
                .bind(p.pid.map(i64::from))
                .bind(i64::from(p.port))
                .bind(micros(p.started))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        })
        .await?;
        Ok(())
    }

    /// Records the OS pid of a spawned process.
    pub async fn set_pid(&self, id: &str, pid: u32) -> Result<()> {
        self.set_pids(&[(id.to_owned(), pid)]).await
    }

    /// Records the OS pids of spawned processes (id, pid), in one transaction.
    pub async fn set_pids(&self, pids: &[(String, u32)]) -> Result<()> {
        if pids.is_empty() {
            return Ok(());
        }
        retry(|| async {
            let mut tx = self.db.begin_write().await?;
            for (id, pid) in pids {
                sqlx::query("UPDATE local_processes SET pid = $1 WHERE id = $2")
                    .bind(i64::from(*pid))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        })
        .await?;
        Ok(())
    }

    /// Forgets processes that are gone (or were never spawned), in one
    /// transaction.
    pub async fn delete_processes(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        retry(|| async {
            let mut tx = self.db.begin_write().await?;
            for id in ids {
                sqlx::query("DELETE FROM local_processes WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        })
        .await?;
        Ok(())
    }

    /// Forgets a process that is gone.
    pub async fn delete_process(&self, id: &str) -> Result<()> {
        retry(|| async {
            sqlx::query("DELETE FROM local_processes WHERE id = $1")
                .bind(id)
                .execute(&mut *self.db.acquire().await?)
                .await
        })
        .await?;
        Ok(())
    }

    /// Every recorded process.
    pub async fn processes(&self) -> Result<Vec<ProcessRecord>> {
        let rows = sqlx::query(
            "SELECT id, app, service, release_id, pid, port, started_at FROM local_processes ORDER BY started_at",
        )
        .fetch_all(&mut *self.db.acquire().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ProcessRecord {
                    id: r.try_get("id")?,
                    app: r.try_get("app")?,
                    service: r.try_get("service")?,
                    release: r.try_get("release_id")?,
                    pid: r.try_get::<Option<i64>, _>("pid")?.map(|p| p as u32),
                    port: r.try_get::<i64, _>("port")? as u16,
                    started: time(r.try_get("started_at")?),
                })
            })
            .collect()
    }
}
