//! `slipway.release.v1.TokenService` and `AuditService`: scoped tokens and
//! the audit trail.
//!
//! A token is `slp_` and 43 characters of URL-safe base64 (256 random
//! bits). Only HMAC-SHA256(key, token) is stored, in hex; the key is the
//! operator's `--token-key`, or derived from the env key (so every replica
//! sharing the env key agrees on it) and never stored. Gateways fetch the
//! key and the hashes of the usable tokens (`GetTokenTable`), keep them in
//! memory and check each request there; the key is as secret as the env
//! values the same gateways already read, and goes over the same
//! service-authenticated channel.

use base64::Engine as _;
use hmac::Mac as _;
use rand::RngCore as _;
use slipway_api::release::v1 as pb;
use slipway_api::release::v1::audit_service_server::AuditService as AuditRpc;
use slipway_api::release::v1::token_service_server::TokenService as TokenRpc;
use slipway_api::{from_timestamp, timestamp};
use slipway_domain::access::{AppPattern, Role, check_token_name};
use slipway_rpc::actor::actor_of;
use slipway_storage::{micros, now_micros, time};
use tonic::{Request, Response, Status};

use crate::store::{AuditRecord, NewAuditRecord, NewToken, Store, TokenRecord};

/// What every token starts with, so scanners and people recognise one.
pub const TOKEN_PREFIX: &str = "slp_";

/// The label the token key is derived from the env key with.
pub const TOKEN_KEY_LABEL: &str = "slipway access-token hash v1";

/// Most app patterns one token may carry.
const MAX_PATTERNS: usize = 32;
/// Longest expiry: ten years.
const MAX_EXPIRY_SECS: u64 = 10 * 366 * 24 * 3600;
/// Largest audit page.
const MAX_AUDIT_LIMIT: u32 = 1000;
/// Longest audit action and target.
const MAX_AUDIT_FIELD: usize = 128;
/// Longest audit detail.
const MAX_AUDIT_DETAIL: usize = 1024;

/// The key token hashes are made under.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(***)")
    }
}

impl TokenKey {
    /// A key from its bytes.
    pub fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    /// A key from base64 (`--token-key`): 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| "the token key must be base64".to_owned())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "the token key must be 32 bytes, base64-encoded".to_owned())?;
        Ok(Self(key))
    }

    /// HMAC-SHA256 of `token`.
    pub fn hash(&self, token: &str) -> [u8; 32] {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0)
            .expect("HMAC takes keys of any length");
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// A fresh token value.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The token and audit services over the release store.
#[derive(Clone, Debug)]
pub struct Access {
    store: Store,
    key: TokenKey,
}

impl Access {
    /// Serves tokens hashed under `key`.
    pub fn new(store: Store, key: TokenKey) -> Self {
        Self { store, key }
    }
}

fn role_from_pb(value: i32) -> Result<Role, Status> {
    match pb::TokenRole::try_from(value) {
        Ok(pb::TokenRole::Read) => Ok(Role::Read),
        Ok(pb::TokenRole::Deploy) => Ok(Role::Deploy),
        Ok(pb::TokenRole::Admin) => Ok(Role::Admin),
        _ => Err(Status::invalid_argument("role: give read, deploy or admin")),
    }
}

/// The wire form of a role.
pub fn role_pb(role: Role) -> pb::TokenRole {
    match role {
        Role::Read => pb::TokenRole::Read,
        Role::Deploy => pb::TokenRole::Deploy,
        Role::Admin => pb::TokenRole::Admin,
    }
}

fn token_pb(token: &TokenRecord) -> pb::Token {
    pb::Token {
        name: token.name.clone(),
        role: role_pb(token.role) as i32,
        apps: token.apps.iter().map(|p| p.as_str().to_owned()).collect(),
        created: Some(timestamp(time(token.created_at))),
        created_by: token.created_by.clone(),
        last_used: token.last_used_at.map(|t| timestamp(time(t))),
        expires: token.expires_at.map(|t| timestamp(time(t))),
    }
}

fn record_pb(record: AuditRecord) -> pb::AuditRecord {
    pb::AuditRecord {
        id: record.id,
        time: Some(timestamp(time(record.at))),
        actor: record.actor,
        source: record.source,
        action: record.action,
        app: record.app,
        target: record.target,
        outcome: record.outcome,
        detail: record.detail,
    }
}

#[tonic::async_trait]
impl TokenRpc for Access {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let actor = actor_of(&request);
        let req = request.into_inner();
        check_token_name(&req.name).map_err(|e| Status::invalid_argument(e.0))?;
        let role = role_from_pb(req.role)?;
        if req.apps.len() > MAX_PATTERNS {
            return Err(Status::invalid_argument(format!(
                "apps: at most {MAX_PATTERNS} patterns"
            )));
        }
        let apps = req
            .apps
            .iter()
            .map(|a| AppPattern::parse(a.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("apps: {}", e.0)))?;
        if role == Role::Admin && !apps.is_empty() {
            return Err(Status::invalid_argument(
                "apps: an admin token applies to every app (it can create apps and tokens); give no app patterns, or use role deploy",
            ));
        }
        if req.expires_in_seconds > MAX_EXPIRY_SECS {
            return Err(Status::invalid_argument(
                "expires: at most ten years; give no expiry for a token that never expires",
            ));
        }
        let expires_at = (req.expires_in_seconds > 0)
            .then(|| now_micros() + (req.expires_in_seconds as i64) * 1_000_000);
        let value = generate_token();
        let token = NewToken {
            name: req.name,
            role,
            apps,
            hash: hex(&self.key.hash(&value)),
            expires_at,
        };
        let record = self.store.create_token(&token, &actor.name).await?;
        tracing::info!(token = %record.name, role = %record.role, actor = %actor, "token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token_pb(&record)),
            value: Some(pb::TokenSecret { value }),
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let tokens = self.store.list_tokens().await?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.iter().map(token_pb).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let actor = actor_of(&request);
        let name = request.into_inner().name;
        check_token_name(&name).map_err(|e| Status::invalid_argument(e.0))?;
        self.store.revoke_token(&name, &actor.name).await?;
        tracing::info!(token = %name, actor = %actor, "token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn get_token_table(
        &self,
        _request: Request<pb::GetTokenTableRequest>,
    ) -> Result<Response<pb::GetTokenTableResponse>, Status> {
        let tokens = self.store.usable_tokens().await?;
        let entries = tokens
            .iter()
            .filter_map(|t| {
                let Some(hash) = unhex(&t.hash) else {
                    tracing::error!(token = %t.name, "a stored token hash is not hex; the token cannot be used");
                    return None;
                };
                Some(pb::TokenEntry {
                    id: t.id,
                    name: t.name.clone(),
                    role: role_pb(t.role) as i32,
                    apps: t.apps.iter().map(|p| p.as_str().to_owned()).collect(),
                    expires: t.expires_at.map(|at| timestamp(time(at))),
                    hash,
                })
            })
            .collect();
        Ok(Response::new(pb::GetTokenTableResponse {
            hash_key: Some(pb::TokenSecret {
                value: base64::engine::general_purpose::STANDARD.encode(self.key.0),
            }),
            tokens: entries,
        }))
    }

    async fn touch_tokens(
        &self,
        request: Request<pb::TouchTokensRequest>,
    ) -> Result<Response<pb::TouchTokensResponse>, Status> {
        let req = request.into_inner();
        if req.ids.len() > 10_000 {
            return Err(Status::invalid_argument("ids: at most 10000 per report"));
        }
        let at = req
            .used
            .as_ref()
            .map(|t| micros(from_timestamp(t)))
            .unwrap_or_else(now_micros)
            .min(now_micros());
        self.store.touch_tokens(&req.ids, at).await?;
        Ok(Response::new(pb::TouchTokensResponse {}))
    }
}

#[tonic::async_trait]
impl AuditRpc for Access {
    async fn record_audit(
        &self,
        request: Request<pb::RecordAuditRequest>,
    ) -> Result<Response<pb::RecordAuditResponse>, Status> {
        let actor = actor_of(&request);
        let req = request.into_inner();
        if req.action.is_empty() || req.action.len() > MAX_AUDIT_FIELD {
            return Err(Status::invalid_argument(format!(
                "action: 1 to {MAX_AUDIT_FIELD} characters"
            )));
        }
        if req.target.len() > MAX_AUDIT_FIELD || req.app.len() > MAX_AUDIT_FIELD {
            return Err(Status::invalid_argument(format!(
                "app and target: at most {MAX_AUDIT_FIELD} characters"
            )));
        }
        let outcome = match req.outcome.as_str() {
            "" | "ok" => "ok",
            "denied" => "denied",
            "failed" => "failed",
            "unknown" => "unknown",
            other => {
                return Err(Status::invalid_argument(format!(
                    "outcome: ok, denied, failed or unknown, got {other:?}"
                )));
            }
        };
        let detail: String = req.detail.chars().take(MAX_AUDIT_DETAIL).collect();
        if req.id.len() > MAX_AUDIT_FIELD {
            return Err(Status::invalid_argument(format!(
                "id: at most {MAX_AUDIT_FIELD} characters"
            )));
        }
        self.store
            .record_audit(&NewAuditRecord {
                actor: actor.name,
                source: actor.source,
                action: req.action,
                app: req.app,
                target: req.target,
                outcome: outcome.to_owned(),
                detail,
                dedup_key: req.id,
                at: req.time.as_ref().map(|t| micros(from_timestamp(t))),
            })
            .await?;
        Ok(Response::new(pb::RecordAuditResponse {}))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let req = request.into_inner();
        let limit = match req.limit {
            0 => 100,
            n if n > MAX_AUDIT_LIMIT => {
                return Err(Status::invalid_argument(format!(
                    "limit must be at most {MAX_AUDIT_LIMIT}, got {n}"
                )));
            }
            n => n,
        };
        let app = (!req.app.is_empty()).then_some(req.app.as_str());
        let since = req.since.as_ref().map(|t| micros(from_timestamp(t)));
        let records = self.store.audit_trail(app, since, limit).await?;
        Ok(Response::new(pb::ListAuditResponse {
            records: records.into_iter().map(record_pb).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_url_safe() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn hashes_are_keyed_and_hex_round_trips() {
        let k1 = TokenKey::new([1; 32]);
        let k2 = TokenKey::new([2; 32]);
        assert_ne!(k1.hash("slp_x"), k2.hash("slp_x"));
        assert_eq!(k1.hash("slp_x"), k1.hash("slp_x"));
        let h = k1.hash("slp_x");
        assert_eq!(unhex(&hex(&h)).unwrap(), h.to_vec());
        assert!(unhex("abc").is_none() && unhex("zz").is_none());
        assert_eq!(format!("{k1:?}"), "TokenKey(***)");
        assert!(TokenKey::from_base64("c2hvcnQ=").is_err());
    }
}
