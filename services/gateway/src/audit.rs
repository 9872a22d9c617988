//! The gateway's part of the audit trail, and its routes.
//!
//! Every change is audited by the service that makes it, in the change's
//! transaction: the release service its own (apps, releases, env,
//! promotions, rollbacks, cancels, tokens, webhooks); the build and rollout
//! services theirs (builds and imports; scale, restart, one-off processes)
//! through their audit outboxes, relayed to the release service with a
//! dedup key (`slipway_storage::outbox`). What is recorded here, through
//! `RecordAudit`, is only what changed nothing: refusals of changes, once
//! refused. Those records are written in the background with at most
//! [`PENDING`] at once; past that they are dropped with a warning rather
//! than slowing requests (the log line still names them).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::Method;
use serde::Deserialize;
use slipway_api::release::v1 as rpb;
use slipway_convox::access::AuditRecord;
use slipway_domain::access::Need;
use tokio::sync::Semaphore;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};

/// Audit records being written at once, at most.
pub(crate) const PENDING: usize = 64;

/// The slots of [`PENDING`].
pub(crate) fn slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(PENDING))
}

/// Records a refused change (reads refused are only logged).
pub(crate) fn refused(state: &AppState, caller: &Caller, method: &Method, need: &Need, why: &str) {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        && need.what != "running commands in processes"
    {
        return;
    }
    let record = rpb::RecordAuditRequest {
        action: format!("denied: {}", need.what),
        app: need.app.clone().unwrap_or_default(),
        target: String::new(),
        outcome: "denied".into(),
        detail: why.to_owned(),
        ..Default::default()
    };
    send(state, caller, record);
}

fn send(state: &AppState, caller: &Caller, record: rpb::RecordAuditRequest) {
    let Ok(permit) = state.audit_slots.clone().try_acquire_owned() else {
        tracing::warn!(actor = %caller.actor, action = %record.action, app = %record.app, "audit record dropped: too many being written");
        return;
    };
    let mut client = state.audit.clone();
    let request = caller.actor.request(record);
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(status) = client.record_audit(request).await {
            tracing::warn!(code = ?status.code(), "failed to record an audit record: {}", status.message());
        }
    });
}

/// The query of `GET /audit`.
#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    /// One app's records.
    #[serde(default)]
    app: String,
    /// Only records this recent: a duration (`1h`, `30m`, `2d`).
    #[serde(default)]
    since: String,
    /// At most this many (default 100, at most 1000).
    #[serde(default)]
    limit: u32,
}

/// `GET /audit[?app=APP&since=1h&limit=N]`: the trail, newest first. A
/// token reads its apps' records; the whole rack's needs admin (access.rs).
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditRecord>>> {
    let since = match query.since.trim() {
        "" => None,
        text => {
            let ago = humantime::parse_duration(text).map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid since {text:?}: expected a duration like 1h or 30m"
                ))
            })?;
            let at = chrono::Utc::now()
                - chrono::Duration::from_std(ago)
                    .map_err(|_| ApiError::bad_request("since is too far back"))?;
            Some(slipway_api::timestamp(at))
        }
    };
    let request = caller.actor.request(rpb::ListAuditRequest {
        app: query.app,
        since,
        limit: query.limit,
    });
    let records = state
        .audit
        .clone()
        .list_audit(request)
        .await?
        .into_inner()
        .records;
    Ok(Json(
        records
            .into_iter()
            .map(|r| AuditRecord {
                id: r.id,
                time: r.time.as_ref().map(slipway_api::from_timestamp),
                actor: r.actor,
                source: r.source,
                action: r.action,
                app: r.app,
                target: r.target,
                outcome: r.outcome,
                detail: r.detail,
            })
            .collect(),
    ))
}
