//! The app's history pages: its builds (`/console/apps/{app}/builds`) and
//! its activity (`/console/apps/{app}/activity`), the audit log of
//! releases, promotions and their outcomes, env changes and app changes.
//! Audit details name keys, never values (the release service writes
//! them that way).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use slipway_api::build::v1 as bpb;
use slipway_api::release::v1 as rpb;

use crate::Console;
use crate::auth::Viewer;
use crate::grpc::PageError;
use crate::views::{self, Chrome, When};

/// Rows shown on either page.
const LIMIT: u32 = 100;

struct BuildRow {
    id: String,
    status: &'static str,
    tone: &'static str,
    release: String,
    started: When,
    duration: String,
    description: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "builds.html")]
struct BuildsPage {
    chrome: Chrome,
    app: String,
    builds: Vec<BuildRow>,
}

/// `GET /console/apps/{app}/builds`.
pub(crate) async fn builds(
    State(console): State<Console>,
    Path(app): Path<String>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    console.app(&app).await?;
    let builds = console
        .inner
        .build
        .clone()
        .list_builds(bpb::ListBuildsRequest {
            app: app.clone(),
            limit: LIMIT,
        })
        .await?
        .into_inner()
        .builds;
    let now = Utc::now();
    let builds = builds
        .into_iter()
        .map(|b| {
            let (status, tone) = build_status(b.status);
            let duration = match (&b.started, &b.ended) {
                (Some(s), Some(e)) if e.seconds >= s.seconds && s.seconds > 0 => {
                    format!("{} s", e.seconds - s.seconds)
                }
                _ => String::new(),
            };
            BuildRow {
                started: When::of(b.started.as_ref(), now),
                id: b.id,
                status,
                tone,
                release: b.release,
                duration,
                description: b.description,
                reason: b.reason,
            }
        })
        .collect();
    let page = BuildsPage {
        chrome: Chrome::new(format!("Builds of {app}"), &viewer.session),
        app,
        builds,
    };
    Ok(views::html(&page, StatusCode::OK))
}

/// A build status in words, and its tone (a second cue).
pub(crate) fn build_status(status: i32) -> (&'static str, &'static str) {
    use bpb::BuildStatus as S;
    match S::try_from(status) {
        Ok(S::Created) => ("created", "busy"),
        Ok(S::Running) => ("running", "busy"),
        Ok(S::Complete) => ("complete", "good"),
        Ok(S::Failed) => ("failed", "bad"),
        Ok(S::Cancelled) => ("cancelled", "bad"),
        _ => ("unknown", ""),
    }
}

/// Whether a build may still write to its log.
pub(crate) fn build_running(status: i32) -> bool {
    matches!(build_status(status).1, "busy")
}

struct ActivityRow {
    when: When,
    actor: String,
    action: String,
    subject: String,
    link: Option<String>,
    detail: String,
    /// The client's address (the audit trail's source).
    source: String,
    /// `ok`, or `denied` for a refused change.
    outcome: String,
}

#[derive(Template)]
#[template(path = "activity.html")]
struct ActivityPage {
    chrome: Chrome,
    app: String,
    events: Vec<ActivityRow>,
}

/// `GET /console/apps/{app}/activity`: newest first.
pub(crate) async fn activity(
    State(console): State<Console>,
    Path(app): Path<String>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    console.app(&app).await?;
    let now = Utc::now();
    let link = |subject: &str| {
        subject
            .starts_with('P')
            .then(|| format!("/console/apps/{app}/promotions/{subject}"))
    };
    // The audit trail with sources and outcomes, when the console has it.
    let mut events: Vec<ActivityRow> = match console.inner.audit.clone() {
        Some(mut audit) => audit
            .list_audit(rpb::ListAuditRequest {
                app: app.clone(),
                since: None,
                limit: LIMIT,
            })
            .await?
            .into_inner()
            .records
            .into_iter()
            .map(|r| ActivityRow {
                when: When::of(r.time.as_ref(), now),
                link: link(&r.target),
                actor: r.actor,
                action: r.action,
                subject: r.target,
                detail: r.detail,
                source: r.source,
                outcome: r.outcome,
            })
            .collect(),
        None => console
            .release()
            .list_audit_events(rpb::ListAuditEventsRequest {
                app: app.clone(),
                limit: LIMIT,
            })
            .await?
            .into_inner()
            .events
            .into_iter()
            .map(|e| ActivityRow {
                when: When::of(e.time.as_ref(), now),
                link: link(&e.subject),
                actor: e.actor,
                action: e.action,
                subject: e.subject,
                detail: e.detail,
                source: String::new(),
                outcome: String::new(),
            })
            .collect(),
    };
    events.sort_by(|a, b| b.when.iso.cmp(&a.when.iso));
    let page = ActivityPage {
        chrome: Chrome::new(format!("Activity of {app}"), &viewer.session),
        app,
        events,
    };
    Ok(views::html(&page, StatusCode::OK))
}
