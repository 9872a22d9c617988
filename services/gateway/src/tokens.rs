//! The token table: the gateway's in-memory copy of the usable scoped
//! tokens (keyed hashes, roles, scopes, expiry), refreshed from the release
//! service every [`REFRESH_EVERY`], so that checking a token costs one
//! HMAC and one hash lookup and never a call, and a revoke reaches every
//! gateway replica within seconds.
//!
//! Fail closed: when the table has not been loaded for [`MAX_STALE`] (the
//! release service unreachable), tokens are refused with 503 and open
//! token streams end; the rack password still works.
//!
//! "Last used" is batched: uses are collected here and reported with one
//! `TouchTokens` call every [`TOUCH_EVERY`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use hmac::Mac as _;
use slipway_api::release::v1 as rpb;
use slipway_api::release::v1::token_service_client::TokenServiceClient;
use slipway_domain::access::{AppPattern, Grant, Role};
use slipway_rpc::Channel;
use subtle::ConstantTimeEq as _;

/// What every token starts with (`slp_`); a Basic password without it is
/// only ever compared with the rack password.
pub const TOKEN_PREFIX: &str = "slp_";

/// How often the table is fetched.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How old the table may get before tokens are refused.
pub const MAX_STALE: Duration = Duration::from_secs(10);
/// How often uses are reported.
pub const TOUCH_EVERY: Duration = Duration::from_secs(10);
/// How often an open stream re-checks its token.
pub const STREAM_RECHECK: Duration = Duration::from_secs(1);

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// One usable token.
#[derive(Clone, Debug)]
pub struct TokenGrant {
    /// The table's id of the token (for last-used reports).
    pub id: i64,
    /// Its name.
    pub name: String,
    /// What it may do.
    pub grant: Grant,
    /// When it stops working.
    pub expires: Option<SystemTime>,
}

impl TokenGrant {
    fn usable_at(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

/// A loaded table.
struct Table {
    mac: HmacSha256,
    by_hash: HashMap<[u8; 32], Arc<TokenGrant>>,
    by_id: HashMap<i64, Arc<TokenGrant>>,
    loaded: Instant,
}

/// Why a token was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Not a token the table knows (never made, revoked, or expired).
    Unknown,
    /// The table could not be loaded recently enough to judge.
    Unavailable,
}

/// The token table and its refresh loop.
pub struct Tokens {
    table: RwLock<Option<Table>>,
    used: Mutex<HashSet<i64>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(..)")
    }
}

impl Tokens {
    /// An empty table (refuses every token until loaded).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            table: RwLock::new(None),
            used: Mutex::new(HashSet::new()),
        })
    }

    /// Starts refreshing from `client` in the background; the loop ends
    /// when the table is dropped.
    pub fn start(self: &Arc<Self>, client: TokenServiceClient<Channel>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(refresh_loop(weak, client));
    }

    /// Fetches and loads the table now (after this gateway created or
    /// revoked a token, so that it holds here at once; other replicas see
    /// it at their next refresh).
    pub async fn refresh(&self, client: &mut TokenServiceClient<Channel>) {
        match client.get_token_table(rpb::GetTokenTableRequest {}).await {
            Ok(answer) => {
                if let Err(e) = self.load(answer.into_inner()) {
                    tracing::error!("failed to load the token table: {e}");
                }
            }
            Err(status) => {
                tracing::warn!("failed to refresh the token table: {}", status.message())
            }
        }
    }

    /// Replaces the table with what `GetTokenTable` answered.
    pub fn load(&self, answer: rpb::GetTokenTableResponse) -> Result<(), String> {
        let key = answer
            .hash_key
            .map(|k| k.value)
            .ok_or("the token table came without its key")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| "the token table's key is not base64")?;
        let mac = HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length");
        let mut by_hash = HashMap::with_capacity(answer.tokens.len());
        let mut by_id = HashMap::with_capacity(answer.tokens.len());
        for entry in answer.tokens {
            let Ok(hash) = <[u8; 32]>::try_from(entry.hash.as_slice()) else {
                tracing::warn!(token = %entry.name, "skipping a token whose hash is not 32 bytes");
                continue;
            };
            let role = match rpb::TokenRole::try_from(entry.role) {
                Ok(rpb::TokenRole::Read) => Role::Read,
                Ok(rpb::TokenRole::Deploy) => Role::Deploy,
                Ok(rpb::TokenRole::Admin) => Role::Admin,
                _ => {
                    tracing::warn!(token = %entry.name, "skipping a token with an unknown role");
                    continue;
                }
            };
            let Ok(apps) = entry
                .apps
                .iter()
                .map(|a| AppPattern::parse(a))
                .collect::<Result<Vec<_>, _>>()
            else {
                tracing::warn!(token = %entry.name, "skipping a token with an invalid app pattern");
                continue;
            };
            let expires = entry.expires.map(|t| {
                SystemTime::UNIX_EPOCH
                    + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
            });
            let grant = Arc::new(TokenGrant {
                id: entry.id,
                name: entry.name,
                grant: Grant { role, apps },
                expires,
            });
            by_id.insert(grant.id, grant.clone());
            by_hash.insert(hash, grant);
        }
        *self
            .table
            .write()
            .expect("the table lock is never poisoned") = Some(Table {
            mac,
            by_hash,
            by_id,
            loaded: Instant::now(),
        });
        Ok(())
    }

    /// The grant of `token`, if it is a usable token. Costs one HMAC and
    /// one hash lookup; the hash found is compared again in constant time.
    pub fn check(&self, token: &str) -> Result<Arc<TokenGrant>, TokenRefusal> {
        let guard = self.table.read().expect("the table lock is never poisoned");
        let table = match &*guard {
            Some(t) if t.loaded.elapsed() <= MAX_STALE => t,
            _ => return Err(TokenRefusal::Unavailable),
        };
        let mut mac = table.mac.clone();
        mac.update(token.as_bytes());
        let hash: [u8; 32] = mac.finalize().into_bytes().into();
        let Some((stored, grant)) = table.by_hash.get_key_value(&hash) else {
            return Err(TokenRefusal::Unknown);
        };
        if !bool::from(stored.ct_eq(&hash)) || !grant.usable_at(SystemTime::now()) {
            return Err(TokenRefusal::Unknown);
        }
        let grant = grant.clone();
        drop(guard);
        self.used
            .lock()
            .expect("the use lock is never poisoned")
            .insert(grant.id);
        Ok(grant)
    }

    /// Whether the token `grant` was checked as is still usable (not
    /// revoked, not expired, table fresh).
    pub fn still_usable(&self, grant: &TokenGrant) -> bool {
        self.usable_id(grant.id)
    }

    /// Whether the token with table id `id` is usable now.
    fn usable_id(&self, id: i64) -> bool {
        let guard = self.table.read().expect("the table lock is never poisoned");
        match &*guard {
            Some(t) if t.loaded.elapsed() <= MAX_STALE => t
                .by_id
                .get(&id)
                .is_some_and(|g| g.usable_at(SystemTime::now())),
            _ => false,
        }
    }

    /// Completes once `grant` is no longer usable (checked every
    /// [`STREAM_RECHECK`]): open streams select on it.
    pub async fn ended(self: Arc<Self>, grant: Arc<TokenGrant>) {
        let mut tick = tokio::time::interval(STREAM_RECHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.still_usable(&grant) {
                return;
            }
        }
    }

    fn take_used(&self) -> Vec<i64> {
        self.used
            .lock()
            .expect("the use lock is never poisoned")
            .drain()
            .collect()
    }
}

/// Console logins with a token (the console keeps the grant in its
/// session and asks whether the token is still usable on every request).
impl slipway_console::TokenLogin for Tokens {
    fn login(&self, value: &str) -> Option<(i64, String, Grant)> {
        if !value.starts_with(TOKEN_PREFIX) {
            return None;
        }
        let token = self.check(value).ok()?;
        Some((token.id, token.name.clone(), token.grant.clone()))
    }

    fn usable(&self, id: i64) -> bool {
        self.usable_id(id)
    }
}

async fn refresh_loop(tokens: Weak<Tokens>, mut client: TokenServiceClient<Channel>) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_touch = Instant::now();
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(table) = tokens.upgrade() else {
            return;
        };
        match client.get_token_table(rpb::GetTokenTableRequest {}).await {
            Ok(answer) => {
                if let Err(e) = table.load(answer.into_inner()) {
                    tracing::error!("failed to load the token table: {e}");
                } else if failing {
                    tracing::info!("token table loaded again");
                    failing = false;
                }
            }
            Err(status) if !failing => {
                failing = true;
                tracing::warn!(
                    code = ?status.code(),
                    "failed to refresh the token table (tokens are refused once it is {} s old): {}",
                    MAX_STALE.as_secs(),
                    status.message()
                );
            }
            Err(_) => {}
        }
        if last_touch.elapsed() >= TOUCH_EVERY {
            last_touch = Instant::now();
            let ids = table.take_used();
            if !ids.is_empty() {
                let used = Some(slipway_api::timestamp(chrono::Utc::now()));
                if let Err(status) = client
                    .touch_tokens(rpb::TouchTokensRequest { ids, used })
                    .await
                {
                    tracing::debug!("failed to report token uses: {}", status.message());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(key: &[u8], token: &str) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(key).unwrap();
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    fn table(entries: Vec<rpb::TokenEntry>) -> rpb::GetTokenTableResponse {
        rpb::GetTokenTableResponse {
            hash_key: Some(rpb::TokenSecret {
                value: base64::engine::general_purpose::STANDARD.encode([9u8; 32]),
            }),
            tokens: entries,
        }
    }

    fn entry(id: i64, name: &str, token: &str) -> rpb::TokenEntry {
        rpb::TokenEntry {
            id,
            name: name.into(),
            role: rpb::TokenRole::Deploy as i32,
            apps: vec!["web-*".into()],
            expires: None,
            hash: hash(&[9u8; 32], token),
        }
    }

    #[tokio::test]
    async fn tokens_are_found_by_keyed_hash_and_fail_closed_until_loaded() {
        let tokens = Tokens::new();
        assert_eq!(
            tokens.check("slp_a").unwrap_err(),
            TokenRefusal::Unavailable
        );
        tokens.load(table(vec![entry(1, "ci", "slp_a")])).unwrap();
        let grant = tokens.check("slp_a").unwrap();
        assert_eq!(grant.name, "ci");
        assert_eq!(grant.grant.role, Role::Deploy);
        assert!(grant.grant.covers("web-1") && !grant.grant.covers("api"));
        assert_eq!(tokens.check("slp_b").unwrap_err(), TokenRefusal::Unknown);
        assert_eq!(tokens.take_used(), vec![1]);
        // Revoked: gone from the next table.
        assert!(tokens.still_usable(&grant));
        tokens.load(table(vec![])).unwrap();
        assert!(!tokens.still_usable(&grant));
        assert_eq!(tokens.check("slp_a").unwrap_err(), TokenRefusal::Unknown);
    }

    #[tokio::test]
    async fn expired_tokens_are_refused() {
        let tokens = Tokens::new();
        let mut e = entry(2, "old", "slp_old");
        e.expires = Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        });
        tokens.load(table(vec![e])).unwrap();
        assert_eq!(tokens.check("slp_old").unwrap_err(), TokenRefusal::Unknown);
    }
}
