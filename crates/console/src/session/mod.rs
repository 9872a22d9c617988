//! Browser sessions: a random id in a cookie, the record on the server.
//!
//! The cookie holds 32 random bytes (base64url); the store is keyed by
//! the SHA-256 of that id, so whoever reads the store (a Redis dump, a
//! debug print) cannot log in with what they see. A record carries the
//! actor, its CSRF token, its times and a fingerprint of the rack password
//! it was opened with: a rack restarted with a new password ends every
//! session. [`SessionStore`] is one trait for the in-process store (the
//! embedded rack) and a shared one (Redis, at scale).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

mod redis;

pub use self::redis::RedisStore;

/// What a session knows. Never holds the cookie's id itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The audit actor, `console` or `console:<name>`.
    pub actor: String,
    /// The token every form of this session carries.
    pub csrf: String,
    /// When the session was opened (absolute expiry counts from here).
    pub created: DateTime<Utc>,
    /// When it was last used (idle expiry counts from here).
    pub last_seen: DateTime<Utc>,
    /// [`password_fingerprint`] of the password it was opened with.
    pub password: String,
    /// The token's role and apps, when a token opened it (`None`: the
    /// rack password, admin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<crate::access::SessionGrant>,
}

/// The store's key for a session id: its SHA-256, hex.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey(String);

impl SessionKey {
    /// The key of the id a cookie carries.
    pub fn of(id: &str) -> Self {
        Self(hex(&Sha256::digest(id.as_bytes())))
    }

    /// The key as text (the store's key).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A session store failed (not "no such session", which is `Ok(None)`).
#[derive(Debug, thiserror::Error)]
#[error("session store: {0}")]
pub struct StoreError(pub String);

/// Where sessions live. Implementations expire records on their own after
/// the `ttl` they were last written with.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Writes (creates or replaces) a session, to expire after `ttl`.
    async fn put(
        &self,
        key: &SessionKey,
        session: &Session,
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// Reads a session; `None` when absent or expired.
    async fn get(&self, key: &SessionKey) -> Result<Option<Session>, StoreError>;
    /// Deletes a session (absent is fine).
    async fn remove(&self, key: &SessionKey) -> Result<(), StoreError>;
}

/// Sessions in this process (the embedded rack: one gateway).
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<SessionKey, (Session, tokio::time::Instant)>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sessions held, expired ones included until they are next swept.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("sessions lock").len()
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Past this many records, a write sweeps the expired ones first.
const SWEEP_AT: usize = 1024;

#[async_trait::async_trait]
impl SessionStore for MemoryStore {
    async fn put(
        &self,
        key: &SessionKey,
        session: &Session,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = tokio::time::Instant::now();
        let mut entries = self.entries.lock().expect("sessions lock");
        if entries.len() >= SWEEP_AT {
            entries.retain(|_, (_, expires)| *expires > now);
        }
        entries.insert(key.clone(), (session.clone(), now + ttl));
        Ok(())
    }

    async fn get(&self, key: &SessionKey) -> Result<Option<Session>, StoreError> {
        let now = tokio::time::Instant::now();
        let mut entries = self.entries.lock().expect("sessions lock");
        match entries.get(key) {
            Some((session, expires)) if *expires > now => Ok(Some(session.clone())),
            Some(_) => {
                entries.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn remove(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.entries.lock().expect("sessions lock").remove(key);
        Ok(())
    }
}

/// How long sessions last.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    /// Unused for this long, a session ends.
    pub idle: Duration,
    /// Whatever its use, a session ends this long after login.
    pub absolute: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(60 * 60),
            absolute: Duration::from_secs(12 * 60 * 60),
        }
    }
}

impl Lifetimes {
    /// Whether `session` is still valid at `now`.
    pub fn valid(&self, session: &Session, now: DateTime<Utc>) -> bool {
        let since = |t: DateTime<Utc>| (now - t).to_std().unwrap_or_default();
        since(session.last_seen) < self.idle && since(session.created) < self.absolute
    }

    /// The store TTL for a session last seen at `now`: the idle timeout,
    /// cut at the absolute expiry.
    pub fn ttl(&self, session: &Session, now: DateTime<Utc>) -> Duration {
        let lived = (now - session.created).to_std().unwrap_or_default();
        self.idle
            .min(self.absolute.saturating_sub(lived))
            .max(Duration::from_secs(1))
    }
}

/// 32 random bytes, base64url without padding: session ids, CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What a session records of the rack password: a hash, so the store
/// never holds the password and a changed password is noticed.
pub fn password_fingerprint(password: Option<&str>) -> String {
    match password {
        Some(p) => hex(&Sha256::digest(
            [b"slipway-console-password:".as_slice(), p.as_bytes()].concat(),
        )),
        None => "no-password".to_owned(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The behaviour every [`SessionStore`] must have; run against each
/// implementation by its tests.
#[cfg(test)]
pub(crate) async fn conformance(store: &dyn SessionStore) {
    let now = Utc::now();
    let session = Session {
        actor: "console:conformance".into(),
        csrf: random_token(),
        created: now,
        last_seen: now,
        password: password_fingerprint(Some("pw")),
        grant: None,
    };
    let key = SessionKey::of(&random_token());
    assert_eq!(store.get(&key).await.unwrap(), None, "absent");
    store
        .put(&key, &session, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.get(&key).await.unwrap().as_ref(), Some(&session));
    let mut later = session.clone();
    later.last_seen = now + chrono::Duration::seconds(5);
    store
        .put(&key, &later, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.get(&key).await.unwrap(), Some(later), "replaced");
    store.remove(&key).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap(), None, "removed");
    store.remove(&key).await.unwrap();
    // A record expires on its own.
    let short = SessionKey::of(&random_token());
    store
        .put(&short, &session, Duration::from_millis(200))
        .await
        .unwrap();
    let start = std::time::Instant::now();
    while store.get(&short).await.unwrap().is_some() {
        assert!(start.elapsed() < Duration::from_secs(10), "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_conforms() {
        conformance(&MemoryStore::new()).await;
    }

    /// Needs Redis on 127.0.0.1:6379 (scripts/services starts it); fails
    /// loudly without it.
    #[tokio::test]
    async fn redis_store_conforms() {
        let prefix = format!("console-test-{}", random_token());
        let store = RedisStore::new("redis://127.0.0.1:6379", &prefix).unwrap();
        conformance(&store).await;
    }

    fn session(now: DateTime<Utc>) -> Session {
        Session {
            actor: "console:ann".into(),
            csrf: random_token(),
            created: now,
            last_seen: now,
            password: password_fingerprint(Some("pw")),
            grant: None,
        }
    }

    #[test]
    fn tokens_are_random_and_keys_hide_them() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        let key = SessionKey::of(&a);
        assert!(!key.as_str().contains(&a));
        assert_eq!(key, SessionKey::of(&a));
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let life = Lifetimes {
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(600),
        };
        let t0 = Utc::now();
        let mut s = session(t0);
        assert!(life.valid(&s, t0 + chrono::Duration::seconds(59)));
        assert!(!life.valid(&s, t0 + chrono::Duration::seconds(61)));
        s.last_seen = t0 + chrono::Duration::seconds(590);
        assert!(life.valid(&s, t0 + chrono::Duration::seconds(599)));
        assert!(!life.valid(&s, t0 + chrono::Duration::seconds(601)));
        assert_eq!(
            life.ttl(&s, t0 + chrono::Duration::seconds(590)),
            Duration::from_secs(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn memory_store_expires_records() {
        let store = MemoryStore::new();
        let key = SessionKey::of("id");
        let s = session(Utc::now());
        store.put(&key, &s, Duration::from_secs(5)).await.unwrap();
        assert_eq!(store.get(&key).await.unwrap(), Some(s));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(store.get(&key).await.unwrap(), None);
        assert!(store.is_empty());
    }

    #[test]
    fn fingerprints_differ_by_password() {
        assert_ne!(
            password_fingerprint(Some("a")),
            password_fingerprint(Some("b"))
        );
        assert!(!password_fingerprint(Some("hunter2hunter2")).contains("hunter2"));
    }
}
