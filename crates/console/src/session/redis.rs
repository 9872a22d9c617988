//! Sessions in Redis, for the scale setup: any gateway replica serves any
//! browser. One key per session, `<prefix>:v1:session:<sha256 of the id>`,
//! holding the record as JSON with the TTL the session has left (the
//! house rule: every Redis write sets a TTL; losing Redis logs everyone
//! out, which is the worst that can happen).

use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use super::{Session, SessionKey, SessionStore, StoreError};

/// Sessions in Redis.
pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    conn: Mutex<Option<MultiplexedConnection>>,
}

/// Each Redis call may take this long.
const TIMEOUT: Duration = Duration::from_secs(2);

impl RedisStore {
    /// A store at `url` (`redis://host:port/db`), keys under `prefix`
    /// (e.g. `console`). Connects lazily.
    pub fn new(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError(format!("invalid redis URL: {:?}", e.kind())))?;
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
            conn: Mutex::new(None),
        })
    }

    fn key(&self, key: &SessionKey) -> String {
        format!("{}:v1:session:{}", self.prefix, key.as_str())
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut conn = self.conn.lock().await;
        if let Some(conn) = &*conn {
            return Ok(conn.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let new = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| failed("connect", &e))?;
        *conn = Some(new.clone());
        Ok(new)
    }

    /// Runs a command; a broken connection is dropped so the next call
    /// reconnects.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.connection().await?;
        match cmd.query_async(&mut conn).await {
            Ok(value) => Ok(value),
            Err(e) => {
                if !matches!(e.kind(), redis::ErrorKind::Server(_)) {
                    *self.conn.lock().await = None;
                }
                Err(failed("command", &e))
            }
        }
    }
}

/// A Redis error as text, without the URL (it may carry a password).
fn failed(what: &str, e: &redis::RedisError) -> StoreError {
    StoreError(format!("redis {what}: {:?}", e.kind()))
}

#[async_trait::async_trait]
impl SessionStore for RedisStore {
    async fn put(
        &self,
        key: &SessionKey,
        session: &Session,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let record = serde_json::to_string(session).expect("a session serialises");
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run::<()>(
            redis::cmd("SET")
                .arg(self.key(key))
                .arg(record)
                .arg("PX")
                .arg(ms),
        )
        .await
    }

    async fn get(&self, key: &SessionKey) -> Result<Option<Session>, StoreError> {
        let record: Option<String> = self.run(redis::cmd("GET").arg(self.key(key))).await?;
        Ok(record.and_then(|r| serde_json::from_str(&r).ok()))
    }

    async fn remove(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.run::<()>(redis::cmd("DEL").arg(self.key(key))).await
    }
}
