//! The console under scoped tokens: a token logs in with its role (the
//! password field takes the rack password or a token), the session keeps
//! the token's role and apps, every page and form asks [`Console::may_change`]
//! (a read token sees no action buttons and every POST but login and
//! logout is refused), and a session ends once its token is revoked or
//! expires. Logins, reveals and cancels are also written to the audit
//! trail (`RecordAudit`), not only to the log.

use serde::{Deserialize, Serialize};
use slipway_api::release::v1 as rpb;
use slipway_domain::access::{AppPattern, Grant, Need, Role};

use crate::Console;
use crate::session::Session;

/// How the console recognises scoped tokens (the gateway's token table).
pub trait TokenLogin: Send + Sync + 'static {
    /// The token's id, name and grant when `value` is a usable token.
    fn login(&self, value: &str) -> Option<(i64, String, Grant)>;
    /// Whether the token with this id is still usable.
    fn usable(&self, id: i64) -> bool;
}

/// The role of a session opened with a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionGrant {
    /// The token's id in the table.
    pub token: i64,
    /// `read`, `deploy` or `admin`.
    pub role: String,
    /// App patterns; empty for every app.
    pub apps: Vec<String>,
}

impl SessionGrant {
    /// From a token's grant.
    pub fn new(token: i64, grant: &Grant) -> Self {
        Self {
            token,
            role: grant.role.as_str().to_owned(),
            apps: grant.apps.iter().map(|p| p.as_str().to_owned()).collect(),
        }
    }

    /// Back to a grant; a damaged record grants reading nothing.
    pub fn grant(&self) -> Grant {
        let apps: Result<Vec<_>, _> = self.apps.iter().map(|a| AppPattern::parse(a)).collect();
        match (self.role.parse::<Role>(), apps) {
            (Ok(role), Ok(apps)) => Grant { role, apps },
            _ => Grant {
                role: Role::Read,
                apps: vec![AppPattern::parse("-").expect("a valid pattern that fits no app")],
            },
        }
    }
}

impl Console {
    /// Whether `session` may change `app` (promote, roll back, cancel,
    /// change env): not in a read-only console, and a token session needs
    /// deploy on the app.
    pub(crate) fn may_change(&self, session: &Session, app: &str) -> bool {
        if self.inner.read_only {
            return false;
        }
        match &session.grant {
            None => true,
            Some(grant) => grant
                .grant()
                .allows(
                    &session.actor,
                    &Need {
                        role: Role::Deploy,
                        app: Some(app.to_owned()),
                        what: "changing apps",
                    },
                )
                .is_ok(),
        }
    }

    /// Whether `session` may look at `app` at all.
    pub(crate) fn may_see(&self, session: &Session, app: &str) -> bool {
        session.grant.as_ref().is_none_or(|g| g.grant().covers(app))
    }

    /// Whether a token session's token is still usable.
    pub(crate) fn token_usable(&self, session: &Session) -> bool {
        match (&session.grant, &self.inner.tokens) {
            (None, _) => true,
            (Some(grant), Some(tokens)) => tokens.usable(grant.token),
            (Some(_), None) => false,
        }
    }

    /// Completes once a token session's token stops being usable (checked
    /// every second); never for a password session.
    pub(crate) async fn session_ended(self, session: Session) {
        if session.grant.is_none() {
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            if !self.token_usable(&session) {
                return;
            }
        }
    }

    /// Writes an audit record for `actor` at `source` (the client's
    /// address) in the background (when the console has the audit client).
    pub(crate) fn audit(&self, actor: &str, source: &str, action: &str, app: &str, target: &str) {
        let Some(client) = &self.inner.audit else {
            return;
        };
        let mut client = client.clone();
        let request =
            slipway_rpc::actor::Actor::new(actor, source).request(rpb::RecordAuditRequest {
                action: action.to_owned(),
                app: app.to_owned(),
                target: target.to_owned(),
                outcome: "ok".into(),
                ..Default::default()
            });
        tokio::spawn(async move {
            if let Err(status) = client.record_audit(request).await {
                tracing::warn!(
                    "failed to record a console audit record: {}",
                    status.message()
                );
            }
        });
    }
}
