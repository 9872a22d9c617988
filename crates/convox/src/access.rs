//! Slipway's token and audit routes (not in the Convox API): `POST /tokens`,
//! `GET /tokens`, `DELETE /tokens/{name}` and `GET /audit`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A scoped token as listed: never its value.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Token {
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// `read`, `deploy` or `admin`.
    #[serde(default)]
    pub role: String,
    /// App patterns; empty for every app.
    #[serde(default)]
    pub apps: Vec<String>,
    /// When it was made.
    #[serde(default)]
    pub created: Option<DateTime<Utc>>,
    /// Who made it.
    #[serde(default, rename = "created-by")]
    pub created_by: String,
    /// When it was last used (reported by gateways every few seconds).
    #[serde(default, rename = "last-used")]
    pub last_used: Option<DateTime<Utc>>,
    /// When it stops working; `None` never.
    #[serde(default)]
    pub expires: Option<DateTime<Utc>>,
}

/// The answer of `POST /tokens`: the token and, this once, its value.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CreatedToken {
    /// The token.
    #[serde(default)]
    pub token: Token,
    /// Its value (`slp_…`), shown once.
    #[serde(default)]
    pub value: String,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken")
            .field("token", &self.token)
            .field("value", &"***")
            .finish()
    }
}

/// One record of the audit trail.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    /// Monotonic id.
    #[serde(default)]
    pub id: i64,
    /// When.
    #[serde(default)]
    pub time: Option<DateTime<Utc>>,
    /// `password`, `token:NAME`, `console:NAME`, or a service.
    #[serde(default)]
    pub actor: String,
    /// The client's address.
    #[serde(default)]
    pub source: String,
    /// What was done (`release.promote`, `token.revoke`, ...).
    #[serde(default)]
    pub action: String,
    /// Which app; empty for rack-wide actions.
    #[serde(default)]
    pub app: String,
    /// What was changed (a release, promotion or build id, a token name).
    #[serde(default)]
    pub target: String,
    /// `ok`, `denied` or `failed`.
    #[serde(default)]
    pub outcome: String,
    /// Keys and descriptions only.
    #[serde(default)]
    pub detail: String,
}
