//! Scoped access tokens: kept only as keyed hashes (see `crate::access`),
//! created and revoked in the transaction that audits it, listed without
//! values or hashes, and read whole by the gateways as their token table.

use slipway_domain::access::{AppPattern, Role};
use slipway_storage::{ErrorClass, classify, now_micros};
use sqlx::Row as _;

use super::{Store, audit, retry};
use crate::error::{Error, Result};
use slipway_storage::time;

/// A token to store: its hash, never its value.
#[derive(Clone, Debug)]
pub struct NewToken {
    /// Its name (checked by `slipway_domain::access::check_token_name`).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its app patterns; empty for every app.
    pub apps: Vec<AppPattern>,
    /// Hex HMAC-SHA256 of the value under the token key.
    pub hash: String,
    /// Microseconds since the epoch; `None`: never expires.
    pub expires_at: Option<i64>,
}

/// A stored token (times in microseconds since the epoch).
#[derive(Clone, Debug)]
pub struct TokenRecord {
    /// Row id, stable for its life.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its app patterns; empty for every app.
    pub apps: Vec<AppPattern>,
    /// Hex HMAC-SHA256 of the value.
    pub hash: String,
    /// When it was made.
    pub created_at: i64,
    /// Who made it.
    pub created_by: String,
    /// When it stops working.
    pub expires_at: Option<i64>,
    /// When a gateway last reported it used.
    pub last_used_at: Option<i64>,
}

const TOKEN_COLUMNS: &str =
    "id, name, role, apps, hash, created_at, created_by, expires_at, last_used_at";

impl Store {
    /// Stores a new token (its hash) and audits it. `AlreadyExists` when an
    /// active token has the name.
    pub async fn create_token(&self, token: &NewToken, actor: &str) -> Result<TokenRecord> {
        retry(|| async {
            let mut tx = self.db.begin_write().await?;
            let now = now_micros();
            let apps = join_apps(&token.apps);
            let inserted = sqlx::query(
                "INSERT INTO access_tokens (name, role, apps, hash, created_at, created_by, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(&token.name)
            .bind(token.role.as_str())
            .bind(&apps)
            .bind(&token.hash)
            .bind(now)
            .bind(actor)
            .bind(token.expires_at)
            .fetch_one(&mut *tx)
            .await;
            if let Err(e) = &inserted
                && matches!(classify(e), ErrorClass::UniqueViolation(_))
            {
                return Err(Error::AlreadyExists(format!(
                    "a token named {} exists already: revoke it first or pick another name",
                    token.name
                )));
            }
            let id: i64 = inserted?.try_get("id")?;
            let expiry = match token.expires_at {
                Some(at) => format!(", expires {}", time(at).to_rfc3339()),
                None => String::new(),
            };
            let detail = format!(
                "role {} on {}{expiry}",
                token.role,
                if apps.is_empty() { "every app" } else { &apps }
            );
            audit(&mut tx, actor, "token.create", "", &token.name, &detail).await?;
            tx.commit().await?;
            Ok(TokenRecord {
                id,
                name: token.name.clone(),
                role: token.role,
                apps: token.apps.clone(),
                hash: token.hash.clone(),
                created_at: now,
                created_by: actor.to_owned(),
                expires_at: token.expires_at,
                last_used_at: None,
            })
        })
        .await
    }

    /// Revokes the active token named `name` and audits it.
    pub async fn revoke_token(&self, name: &str, actor: &str) -> Result<()> {
        retry(|| async {
            let mut tx = self.db.begin_write().await?;
            let done = sqlx::query(
                "UPDATE access_tokens SET revoked_at = $1, revoked_by = $2 \
                 WHERE name = $3 AND revoked_at IS NULL",
            )
            .bind(now_micros())
            .bind(actor)
            .bind(name)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(Error::NotFound(format!("no active token named {name}")));
            }
            audit(&mut tx, actor, "token.revoke", "", name, "").await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Every token not revoked (expired ones too, so `tokens` shows them),
    /// oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM access_tokens WHERE revoked_at IS NULL ORDER BY id"
        ))
        .fetch_all(&mut *self.db.acquire().await?)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// The tokens a gateway may accept now: not revoked, not expired.
    pub async fn usable_tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM access_tokens \
             WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) ORDER BY id"
        ))
        .bind(now_micros())
        .fetch_all(&mut *self.db.acquire().await?)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Records that the tokens `ids` were used at `at` (microseconds): one
    /// statement per report, never moving a time backwards.
    pub async fn touch_tokens(&self, ids: &[i64], at: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        sqlx::query(&format!(
            "UPDATE access_tokens SET last_used_at = $1 \
             WHERE id IN ({list}) AND (last_used_at IS NULL OR last_used_at < $1)"
        ))
        .bind(at)
        .execute(&mut *self.db.acquire().await?)
        .await?;
        Ok(())
    }
}

fn join_apps(apps: &[AppPattern]) -> String {
    apps.iter()
        .map(AppPattern::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

fn token_from_row(row: &sqlx::any::AnyRow) -> Result<TokenRecord> {
    let role: String = row.try_get("role")?;
    let apps: String = row.try_get("apps")?;
    let corrupt = |what: String| {
        Error::Store(sqlx::Error::Decode(
            format!("access_tokens row: {what}").into(),
        ))
    };
    Ok(TokenRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: role.parse::<Role>().map_err(|e| corrupt(e.0))?,
        apps: apps
            .split(',')
            .filter(|a| !a.is_empty())
            .map(AppPattern::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| corrupt(e.0))?,
        hash: row.try_get("hash")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        expires_at: row.try_get("expires_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

impl Store {
    /// The token hash key derived from the env key (used when the operator
    /// gives no `--token-key`).
    pub fn derived_token_key(&self) -> [u8; 32] {
        self.cipher.derive_key(crate::access::TOKEN_KEY_LABEL)
    }
}
