//! Promote, rollback and cancel: a confirm page that says what will change
//! (the build, and the env keys added, changed or removed — never values),
//! then one POST that does it and sends the browser to the promotion page.
//! A refusal ("app is updating") shows the confirm page again with the
//! rack's words.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use slipway_api::release::v1 as rpb;
use slipway_domain::env::{Env, EnvDiff};

use crate::auth::{Posted, Viewer};
use crate::grpc::{self, PageError};
use crate::security::Forbidden;
use crate::views::{self, Chrome};
use crate::{Console, session::Session};

/// The change a promotion would make, keys only.
pub(crate) struct Change {
    pub(crate) build_from: String,
    pub(crate) build_to: String,
    pub(crate) adds: Vec<String>,
    pub(crate) changes: Vec<String>,
    pub(crate) removes: Vec<String>,
}

impl Change {
    /// From the active release (if any) to `target`.
    pub(crate) fn between(active: Option<&rpb::Release>, target: &rpb::Release) -> Self {
        let env = |r: &rpb::Release| {
            Env::from_map(r.env_vars.clone().into_iter().collect()).unwrap_or_default()
        };
        let before = active.map(env).unwrap_or_default();
        let diff = EnvDiff::between(&before, &env(target));
        Self {
            build_from: active.map(|a| a.build.clone()).unwrap_or_default(),
            build_to: target.build.clone(),
            adds: diff.adds,
            changes: diff.changes,
            removes: diff.removes,
        }
    }

    fn build_changed(&self) -> bool {
        self.build_from != self.build_to
    }

    fn env_unchanged(&self) -> bool {
        self.adds.is_empty() && self.changes.is_empty() && self.removes.is_empty()
    }
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage {
    chrome: Chrome,
    app: String,
    heading: String,
    explanation: String,
    change: Option<Change>,
    warnings: Vec<String>,
    error: Option<String>,
    action: String,
    button: &'static str,
    read_only: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Promote,
    Rollback,
}

fn kind(action: &str) -> Result<Kind, PageError> {
    match action {
        "promote" => Ok(Kind::Promote),
        "rollback" => Ok(Kind::Rollback),
        _ => Err(PageError::NotFound("page".into())),
    }
}

/// `GET /console/apps/{app}/releases/{id}/{promote|rollback}`.
pub(crate) async fn confirm(
    State(console): State<Console>,
    Path((app, id, action)): Path<(String, String, String)>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    let kind = kind(&action)?;
    let page = confirm_page(&console, &viewer.session, &app, &id, kind, None).await?;
    Ok(views::html(&page, StatusCode::OK))
}

async fn confirm_page(
    console: &Console,
    session: &Session,
    app_name: &str,
    id: &str,
    kind: Kind,
    error: Option<String>,
) -> Result<ConfirmPage, PageError> {
    let app = console.app(app_name).await?;
    let target = console.release_of(app_name, id).await?;
    let active = match app.release.as_str() {
        "" => None,
        active => Some(console.release_of(app_name, active).await?),
    };
    let mut warnings = Vec::new();
    if app.open_promotion.is_some() {
        warnings.push(
            "A promotion of this app is running: this will be refused until it ends or is \
             cancelled."
                .to_owned(),
        );
    }
    let newer = match &active {
        Some(a) => key(&target) > key(a),
        None => true,
    };
    let (heading, explanation, button) = match kind {
        Kind::Promote => {
            if target.id == app.release {
                warnings.push(format!(
                    "{} is already active: nothing will happen.",
                    target.id
                ));
            } else if !newer {
                warnings.push(format!(
                    "{} is older than the active release: promoting it is refused; use Rollback.",
                    target.id
                ));
            }
            (
                format!("Promote {} of {app_name}?", target.id),
                format!(
                    "Rolls {} out in place of {}. If it fails its checks, {} stays active.",
                    target.id,
                    none_if_empty(&app.release),
                    none_if_empty(&app.release)
                ),
                "Promote",
            )
        }
        Kind::Rollback => (
            format!("Roll {app_name} back to {}?", target.id),
            format!(
                "Creates a new release as a copy of {} (its build and environment) and promotes \
                 it in place of {}.",
                target.id,
                none_if_empty(&app.release)
            ),
            "Roll back",
        ),
    };
    let mut chrome = Chrome::new(heading.clone(), session);
    chrome.refresh = false;
    Ok(ConfirmPage {
        chrome,
        app: app_name.to_owned(),
        heading,
        explanation,
        change: Some(Change::between(active.as_ref(), &target)),
        warnings,
        error,
        action: format!(
            "/console/apps/{app_name}/releases/{}/{}",
            target.id,
            if kind == Kind::Promote {
                "promote"
            } else {
                "rollback"
            }
        ),
        button,
        read_only: !console.may_change(session, app_name),
    })
}

fn key(r: &rpb::Release) -> (i64, i32) {
    r.created.map_or((0, 0), |t| (t.seconds, t.nanos))
}

fn none_if_empty(release: &str) -> &str {
    if release.is_empty() {
        "no release (the app has none active)"
    } else {
        release
    }
}

/// `POST /console/apps/{app}/releases/{id}/{promote|rollback}`.
pub(crate) async fn act(
    State(console): State<Console>,
    Path((app, id, action)): Path<(String, String, String)>,
    posted: Posted,
) -> Response {
    if !console.may_change(&posted.session, &app) {
        return Forbidden::ReadOnly.into_response();
    }
    let kind = match kind(&action) {
        Ok(kind) => kind,
        Err(e) => return e.into_response(),
    };
    let actor = &posted.session.actor;
    let mut client = console.release();
    let result = match kind {
        Kind::Promote => client
            .promote_release(grpc::as_actor(
                rpb::PromoteReleaseRequest {
                    app: app.clone(),
                    release: id.clone(),
                    ..Default::default()
                },
                actor,
                &posted.source,
            ))
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.promotion, r.noop.then_some(r.message))
            }),
        Kind::Rollback => client
            .rollback_release(grpc::as_actor(
                rpb::RollbackReleaseRequest {
                    app: app.clone(),
                    release: id.clone(),
                    ..Default::default()
                },
                actor,
                &posted.source,
            ))
            .await
            .map(|r| (r.into_inner().promotion, None)),
    };
    let error = match result {
        Ok((Some(p), None)) if !p.id.is_empty() => {
            return Redirect::to(&format!("/console/apps/{app}/promotions/{}", p.id))
                .into_response();
        }
        Ok((_, Some(message))) if !message.is_empty() => message,
        Ok(_) => format!("{id} is already active: nothing was started."),
        Err(status) => {
            let (code, message) = grpc::describe_status(&status);
            return match confirm_page(&console, &posted.session, &app, &id, kind, Some(message))
                .await
            {
                Ok(page) => views::html(&page, code),
                Err(e) => e.into_response(),
            };
        }
    };
    match confirm_page(&console, &posted.session, &app, &id, kind, Some(error)).await {
        Ok(page) => views::html(&page, StatusCode::OK),
        Err(e) => e.into_response(),
    }
}

#[derive(Template)]
#[template(path = "cancel.html")]
struct CancelPage {
    chrome: Chrome,
    app: String,
    open: Option<rpb::Promotion>,
    error: Option<String>,
    read_only: bool,
}

/// `GET /console/apps/{app}/cancel`: what is running, and the button.
pub(crate) async fn confirm_cancel(
    State(console): State<Console>,
    Path(app): Path<String>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    let found = console.app(&app).await?;
    let page = CancelPage {
        chrome: Chrome::new(format!("Cancel the deployment of {app}?"), &viewer.session),
        open: found.open_promotion,
        error: None,
        read_only: !console.may_change(&viewer.session, &app),
        app,
    };
    Ok(views::html(&page, StatusCode::OK))
}

/// `POST /console/apps/{app}/cancel`: the rollout reverts; off to its page.
pub(crate) async fn cancel(
    State(console): State<Console>,
    Path(app): Path<String>,
    posted: Posted,
) -> Response {
    if !console.may_change(&posted.session, &app) {
        return Forbidden::ReadOnly.into_response();
    }
    let result = console
        .release()
        .cancel_promotion(grpc::as_actor(
            rpb::CancelPromotionRequest { app: app.clone() },
            &posted.session.actor,
            &posted.source,
        ))
        .await;
    match result {
        Ok(r) => match r.into_inner().promotion {
            Some(p) => {
                tracing::info!(target: "slipway_console::audit", action = "promotion.cancel", actor = %posted.session.actor, app = %app, promotion = %p.id, "console cancel");
                Redirect::to(&format!("/console/apps/{app}/promotions/{}", p.id)).into_response()
            }
            None => Redirect::to(&format!("/console/apps/{app}")).into_response(),
        },
        Err(status) => {
            let (code, message) = grpc::describe_status(&status);
            let open = console.app(&app).await.ok().and_then(|a| a.open_promotion);
            let page = CancelPage {
                chrome: Chrome::new(format!("Cancel the deployment of {app}?"), &posted.session),
                open,
                error: Some(message),
                read_only: !console.may_change(&posted.session, &app),
                app,
            };
            views::html(&page, code)
        }
    }
}
