//! The Environment page: the keys of the app's newest release, values
//! hidden until a per-key Reveal (audited, without the value), and one
//! form to add, change and remove variables that either saves a new
//! release or saves and promotes it (Apply Changes). An edit made against
//! an environment that changed since the page was rendered is refused,
//! never merged or overwritten.
//!
//! Values never go into an input: a "new value" field is empty, and empty
//! means unchanged. A refused form is shown again without what was typed
//! (it may be a secret; the page must not carry it back).

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use slipway_api::release::v1 as rpb;
use slipway_domain::env::{Env, validate_key};

use crate::auth::{Posted, Viewer};
use crate::grpc::{self, PageError};
use crate::security::Forbidden;
use crate::session::Session;
use crate::views::{self, Chrome};
use crate::{Console, auth};

/// "Add variable" rows in the form.
const NEW_ROWS: usize = 3;

struct Row {
    key: String,
    /// The value, only when revealed.
    value: Option<String>,
    /// The page with this key revealed (or hidden again).
    toggle: String,
}

#[derive(Template)]
#[template(path = "env.html")]
struct EnvPage {
    chrome: Chrome,
    app: String,
    /// The release the form edits (the newest), sent back as the parent.
    parent: String,
    rows: Vec<Row>,
    new_rows: Vec<usize>,
    errors: Vec<String>,
    notice: Option<String>,
    read_only: bool,
    all_revealed: bool,
}

#[derive(Deserialize)]
pub(crate) struct Reveal {
    reveal: Option<String>,
}

/// `GET /console/apps/{app}/env[?reveal=KEY|*]`.
pub(crate) async fn page(
    State(console): State<Console>,
    Path(app): Path<String>,
    Query(reveal): Query<Reveal>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    if let Some(key) = reveal.reveal.as_deref() {
        // Who looked at which values (never the values) is on the trail.
        console.audit(
            &viewer.session.actor,
            &viewer.source,
            "env.reveal",
            &app,
            key,
        );
    }
    let page = env_page(
        &console,
        &viewer.session,
        &app,
        reveal.reveal.as_deref(),
        Vec::new(),
    )
    .await?;
    Ok(views::html(&page, StatusCode::OK))
}

async fn env_page(
    console: &Console,
    session: &Session,
    app_name: &str,
    reveal: Option<&str>,
    errors: Vec<String>,
) -> Result<EnvPage, PageError> {
    let app = console.app(app_name).await?;
    let newest = match console.release_of(app_name, "").await {
        Ok(r) => Some(r),
        Err(PageError::Upstream(s)) if s.code() == tonic::Code::NotFound => None,
        Err(e) => return Err(e),
    };
    let (parent, vars): (String, BTreeMap<String, String>) = match newest {
        Some(r) => (r.id, r.env_vars.into_iter().collect()),
        None => (String::new(), BTreeMap::new()),
    };
    let all = reveal == Some("*");
    let revealed: Vec<&str> = vars
        .keys()
        .map(String::as_str)
        .filter(|k| all || reveal == Some(*k))
        .collect();
    if !revealed.is_empty() {
        // The audit names the keys, never a value.
        tracing::info!(target: "slipway_console::audit", action = "env.reveal", actor = %session.actor, app = %app_name, keys = ?revealed, release = %parent, "console env reveal");
    }
    let base = format!("/console/apps/{app_name}/env");
    let rows = vars
        .into_iter()
        .map(|(key, value)| {
            let shown = all || reveal == Some(key.as_str());
            Row {
                toggle: if shown {
                    base.clone()
                } else {
                    format!("{base}?reveal={}#{}", auth::encode(&key), key)
                },
                value: shown.then_some(value),
                key,
            }
        })
        .collect();
    let notice = (!parent.is_empty() && parent != app.release).then(|| {
        format!(
            "You are editing the environment of {parent}, the newest release, which is not \
             active (active: {}).",
            if app.release.is_empty() {
                "none"
            } else {
                &app.release
            }
        )
    });
    Ok(EnvPage {
        chrome: Chrome::new(format!("Environment of {app_name}"), session),
        app: app_name.to_owned(),
        parent,
        rows,
        new_rows: (0..NEW_ROWS).collect(),
        errors,
        notice,
        read_only: !console.may_change(session, app_name),
        all_revealed: all,
    })
}

/// What a submitted form asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Edit {
    set: BTreeMap<String, String>,
    unset: BTreeSet<String>,
}

/// Reads the form: `set:KEY` (empty: unchanged), `remove:KEY`,
/// `new_key`/`new_value` pairs in order, and `bulk` `KEY=VALUE` lines.
/// Errors name keys and lines, never values.
fn read_edit(fields: &[(String, String)]) -> Result<Edit, Vec<String>> {
    let mut edit = Edit::default();
    let mut errors = Vec::new();
    let mut new_keys = Vec::new();
    let mut new_values = Vec::new();
    for (name, value) in fields {
        if let Some(key) = name.strip_prefix("set:") {
            if !value.is_empty() {
                edit.set.insert(key.to_owned(), value.clone());
            }
        } else if let Some(key) = name.strip_prefix("remove:") {
            edit.unset.insert(key.to_owned());
        } else if name == "new_key" {
            new_keys.push(value.trim().to_owned());
        } else if name == "new_value" {
            new_values.push(value.clone());
        } else if name == "bulk" && !value.trim().is_empty() {
            match Env::parse(value) {
                Ok(env) => edit.set.extend(env.into_map()),
                Err(e) => errors.push(format!("Bulk variables: {e}")),
            }
        }
    }
    for (i, key) in new_keys.iter().enumerate() {
        let value = new_values.get(i).cloned().unwrap_or_default();
        if key.is_empty() {
            if !value.is_empty() {
                errors.push(format!("New variable {}: a value without a name", i + 1));
            }
            continue;
        }
        edit.set.insert(key.clone(), value);
    }
    for key in edit.set.keys().chain(edit.unset.iter()) {
        if let Err(e) = validate_key(key) {
            errors.push(e.to_string());
        }
    }
    for key in &edit.unset {
        if edit.set.contains_key(key) {
            errors.push(format!("{key}: both changed and removed; choose one"));
        }
    }
    if errors.is_empty() && edit.set.is_empty() && edit.unset.is_empty() {
        errors.push("Nothing to change: give a new value, a new variable or a removal.".into());
    }
    if errors.is_empty() {
        Ok(edit)
    } else {
        Err(errors)
    }
}

/// `POST /console/apps/{app}/env`: `action=save` creates the release,
/// `action=apply` creates and promotes it.
pub(crate) async fn change(
    State(console): State<Console>,
    Path(app): Path<String>,
    posted: Posted,
) -> Response {
    if !console.may_change(&posted.session, &app) {
        return Forbidden::ReadOnly.into_response();
    }
    let refuse = |errors: Vec<String>, status: StatusCode| {
        let console = console.clone();
        let session = posted.session.clone();
        let app = app.clone();
        async move {
            match env_page(&console, &session, &app, None, errors).await {
                Ok(page) => views::html(&page, status),
                Err(e) => e.into_response(),
            }
        }
    };
    let apply = match posted.field("action") {
        Some("apply") => true,
        Some("save") => false,
        _ => {
            return refuse(
                vec!["Choose Save or Apply Changes.".into()],
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    };
    let edit = match read_edit(&posted.fields) {
        Ok(edit) => edit,
        Err(errors) => return refuse(errors, StatusCode::BAD_REQUEST).await,
    };
    // The release the page showed: the change applies only if it is still
    // the newest, checked by the release service in the same transaction
    // as the change (a compare-and-set), so an edit made elsewhere since
    // the page was rendered is never merged into or overwritten.
    let parent = posted.field("parent").unwrap_or_default().to_owned();
    let actor = posted.session.actor.clone();
    let keys: Vec<&String> = edit.set.keys().chain(edit.unset.iter()).collect();
    tracing::info!(target: "slipway_console::audit", action = "env.change", %actor, %app, keys = ?keys, apply, "console env change");
    let created = console
        .release()
        .change_env(grpc::as_actor(
            rpb::ChangeEnvRequest {
                app: app.clone(),
                set: edit.set.into_iter().collect(),
                unset: edit.unset.into_iter().collect(),
                parent_release: None,
                expected_newest_release: Some(parent),
            },
            &actor,
            &posted.source,
        ))
        .await;
    let release = match created.map(|r| r.into_inner().release) {
        Ok(Some(release)) => release,
        Ok(None) => {
            return refuse(
                vec!["No release was created.".into()],
                StatusCode::BAD_GATEWAY,
            )
            .await;
        }
        // The newest release is no longer the one the page showed.
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            return refuse(
                vec![format!(
                    "The environment changed since you opened this page: {}. Nothing was \
                     saved: review it below and make your change again.",
                    status.message()
                )],
                StatusCode::CONFLICT,
            )
            .await;
        }
        Err(status) => {
            let (code, message) = grpc::describe_status(&status);
            return refuse(vec![message], code).await;
        }
    };
    if !apply {
        return Redirect::to(&format!("/console/apps/{app}?saved={}", release.id)).into_response();
    }
    let promoted = console
        .release()
        .promote_release(grpc::as_actor(
            rpb::PromoteReleaseRequest {
                app: app.clone(),
                release: release.id.clone(),
                ..Default::default()
            },
            &actor,
            &posted.source,
        ))
        .await;
    match promoted.map(|r| r.into_inner().promotion) {
        Ok(Some(p)) if !p.id.is_empty() => {
            Redirect::to(&format!("/console/apps/{app}/promotions/{}", p.id)).into_response()
        }
        Ok(_) => Redirect::to(&format!("/console/apps/{app}")).into_response(),
        Err(status) => {
            let (code, message) = grpc::describe_status(&status);
            refuse(
                vec![format!(
                    "Saved as {} but not promoted: {message}",
                    release.id
                )],
                code,
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn forms_become_deltas() {
        let edit = read_edit(&fields(&[
            ("set:FOO", ""),
            ("set:BAR", "new"),
            ("remove:OLD", "on"),
            ("new_key", "ADDED"),
            ("new_value", "v"),
            ("new_key", ""),
            ("new_value", ""),
            ("bulk", "A=1\nB=2"),
        ]))
        .unwrap();
        assert_eq!(
            edit.set.keys().collect::<Vec<_>>(),
            ["A", "ADDED", "B", "BAR"]
        );
        assert_eq!(edit.unset.iter().collect::<Vec<_>>(), ["OLD"]);
    }

    #[test]
    fn bad_forms_say_why_without_values() {
        let errors =
            read_edit(&fields(&[("new_key", "1BAD"), ("new_value", "s3cret")])).unwrap_err();
        assert!(errors.iter().any(|e| e.contains("1BAD")), "{errors:?}");
        assert!(errors.iter().all(|e| !e.contains("s3cret")));
        let errors = read_edit(&fields(&[("bulk", "NOEQUALS s3cret")])).unwrap_err();
        assert!(errors.iter().all(|e| !e.contains("s3cret")), "{errors:?}");
        assert!(read_edit(&fields(&[("set:A", "")])).is_err());
        assert!(read_edit(&fields(&[("set:A", "x"), ("remove:A", "on")])).is_err());
    }
}
