//! Slipway's token and audit routes (admin, or read on an app for its
//! audit records).

use hyper::Method;
use slipway_convox::access::{AuditRecord, CreatedToken, Token};

use crate::client::{Body, Client};
use crate::error::Error;

/// What `tokens create` asks for.
#[derive(Clone, Debug, Default)]
pub struct NewToken {
    /// The token's name.
    pub name: String,
    /// `read`, `deploy` or `admin`.
    pub role: String,
    /// App patterns (`web`, `web-*`); empty for every app.
    pub apps: Vec<String>,
    /// A duration (`30d`, `12h`); `None` never expires.
    pub expires: Option<String>,
}

impl Client {
    /// `POST /tokens`: creates a token; the answer carries its value, once.
    pub async fn token_create(&self, token: &NewToken) -> Result<CreatedToken, Error> {
        let mut form = vec![
            ("name", token.name.clone()),
            ("role", token.role.clone()),
            ("apps", token.apps.join(",")),
        ];
        if let Some(expires) = &token.expires {
            form.push(("expires", expires.clone()));
        }
        self.json(Method::POST, &["tokens"], &[], Body::Form(form))
            .await
    }

    /// `GET /tokens`: names, roles, scopes and times (never values).
    pub async fn tokens(&self) -> Result<Vec<Token>, Error> {
        self.json(Method::GET, &["tokens"], &[], Body::Empty).await
    }

    /// `DELETE /tokens/{name}`: revokes a token on every gateway within
    /// seconds.
    pub async fn token_revoke(&self, name: &str) -> Result<(), Error> {
        self.call(Method::DELETE, &["tokens", name], &[], Body::Empty)
            .await
            .map(drop)
    }

    /// `GET /audit`: the audit trail, newest first, of one app or (admin)
    /// the whole rack; `since` is a duration (`1h`).
    pub async fn audit(
        &self,
        app: Option<&str>,
        since: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<AuditRecord>, Error> {
        let mut query = Vec::new();
        if let Some(app) = app {
            query.push(("app", app.to_owned()));
        }
        if let Some(since) = since {
            query.push(("since", since.to_owned()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        self.json(Method::GET, &["audit"], &query, Body::Empty)
            .await
    }
}
