//! The apps list (`/console/`) and an app's page with its Releases table
//! (`/console/apps/{app}`), newest first, 20 a page.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use serde::Deserialize;
use slipway_api::release::v1 as rpb;

use crate::auth::Viewer;
use crate::grpc::PageError;
use crate::views::{self, Chrome, When};
use crate::{Console, auth, live};

/// Releases per page of the app page.
pub(crate) const PAGE: u32 = 20;
/// Promotions read to annotate a page of releases.
const PROMOTIONS: u32 = 200;

struct AppRow {
    name: String,
    status: String,
    release: String,
    last: Option<LastPromotion>,
}

struct LastPromotion {
    link: String,
    words: &'static str,
    release: String,
    when: When,
}

#[derive(Template)]
#[template(path = "apps.html")]
struct AppsPage {
    chrome: Chrome,
    apps: Vec<AppRow>,
}

/// `GET /console/`: every app, its status in words, its active release
/// and its last promotion.
pub(crate) async fn list(
    State(console): State<Console>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    let apps = console
        .release()
        .list_apps(rpb::ListAppsRequest {})
        .await?
        .into_inner()
        .apps
        .into_iter()
        // A token session sees the apps of its scope.
        .filter(|a| console.may_see(&viewer.session, &a.name))
        .collect::<Vec<_>>();
    let now = Utc::now();
    let lasts = futures::future::join_all(apps.iter().map(|app| {
        let mut client = console.release();
        let name = app.name.clone();
        async move {
            client
                .list_promotions(rpb::ListPromotionsRequest {
                    app: name,
                    limit: 1,
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().promotions.into_iter().next())
        }
    }))
    .await;
    let mut chrome = Chrome::new("Apps", &viewer.session);
    chrome.refresh = apps.iter().any(|a| a.open_promotion.is_some());
    chrome.live = Some(views::Live {
        stream: "/console/stream".to_owned(),
        version: live::apps_version(&apps),
    });
    let apps = apps
        .into_iter()
        .zip(lasts)
        .map(|(app, last)| AppRow {
            last: last.map(|p| LastPromotion {
                link: format!("/console/apps/{}/promotions/{}", app.name, p.id),
                words: views::state_words(p.state),
                release: p.release.clone(),
                when: When::of(p.created.as_ref(), now),
            }),
            status: app.status,
            release: app.release,
            name: app.name,
        })
        .collect();
    Ok(views::html(&AppsPage { chrome, apps }, StatusCode::OK))
}

/// What a release row offers.
#[derive(PartialEq, Eq)]
enum Action {
    None,
    Promote,
    Rollback,
}

struct ReleaseRow {
    id: String,
    status: String,
    /// A CSS class for the status (a second cue; the words are the first).
    tone: &'static str,
    build: String,
    created: When,
    description: String,
    action: Action,
    /// The last promotion of this release, when it did not succeed.
    promotion: Option<String>,
}

struct OpenPromotion {
    link: String,
    release: String,
    actor: String,
    words: &'static str,
    started: When,
}

#[derive(Template)]
#[template(path = "app.html")]
struct AppPage {
    chrome: Chrome,
    app: String,
    status: String,
    active: String,
    open: Option<OpenPromotion>,
    releases: Vec<ReleaseRow>,
    next_page: Option<String>,
    read_only: bool,
}

#[derive(Deserialize)]
pub(crate) struct PageQuery {
    page: Option<String>,
}

/// `GET /console/apps/{app}`: the header, the promotion in flight and the
/// Releases table.
pub(crate) async fn show(
    State(console): State<Console>,
    Path(name): Path<String>,
    Query(query): Query<PageQuery>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    let app = console.app(&name).await?;
    let mut client = console.release();
    let page = client
        .list_releases(rpb::ListReleasesRequest {
            app: name.clone(),
            limit: PAGE,
            page_token: query.page.clone().unwrap_or_default(),
        })
        .await?
        .into_inner();
    let promotions = client
        .list_promotions(rpb::ListPromotionsRequest {
            app: name.clone(),
            limit: PROMOTIONS,
        })
        .await?
        .into_inner()
        .promotions;
    // The active release's creation time splits newer from older, also
    // when it is on another page.
    let active_created = match page.releases.iter().find(|r| r.id == app.release) {
        Some(r) => r.created,
        None if app.release.is_empty() => None,
        None => console.release_of(&name, &app.release).await?.created,
    };
    let now = Utc::now();
    let open = app.open_promotion.as_ref().map(|p| OpenPromotion {
        link: format!("/console/apps/{name}/promotions/{}", p.id),
        release: p.release.clone(),
        actor: p.actor.clone(),
        words: views::state_words(p.state),
        started: When::of(p.created.as_ref(), now),
    });
    let releases = rows(&app, &page.releases, &promotions, active_created, now);
    let mut chrome = Chrome::new(name.clone(), &viewer.session);
    chrome.refresh = open.is_some();
    // The first page follows the app's status stream (the newest release
    // is its first row).
    if query.page.as_deref().unwrap_or_default().is_empty() {
        let newest = page.releases.first().map_or("", |r| r.id.as_str());
        chrome.live = Some(views::Live {
            stream: format!("/console/apps/{name}/stream"),
            version: live::app_version(&app, newest),
        });
    }
    let page = AppPage {
        chrome,
        status: app.status.clone(),
        active: app.release.clone(),
        open,
        releases,
        next_page: Some(page.next_page_token)
            .filter(|t| !t.is_empty())
            .map(|t| format!("/console/apps/{name}?page={}", auth::encode(&t))),
        read_only: !console.may_change(&viewer.session, &name),
        app: name,
    };
    Ok(views::html(&page, StatusCode::OK))
}

/// The Releases table's rows: status words, and Promote for releases newer
/// than the active one, Rollback for older ones.
fn rows(
    app: &rpb::App,
    releases: &[rpb::Release],
    promotions: &[rpb::Promotion],
    active_created: Option<prost_types::Timestamp>,
    now: chrono::DateTime<Utc>,
) -> Vec<ReleaseRow> {
    // Newest first, so the first promotion seen of a release is its last.
    let mut last: HashMap<&str, &rpb::Promotion> = HashMap::new();
    for p in promotions {
        last.entry(p.release.as_str()).or_insert(p);
    }
    let key = |t: Option<&prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos));
    let active_key = key(active_created.as_ref());
    let mut known_good_marked = false;
    releases
        .iter()
        .map(|r| {
            let newer = match active_key {
                None => true,
                Some(active) => key(r.created.as_ref()).is_some_and(|k| k > active),
            };
            let promotion = last.get(r.id.as_str()).copied();
            let succeeded_before = promotions
                .iter()
                .any(|p| p.release == r.id && p.state == rpb::PromotionState::Succeeded as i32);
            let (status, tone) = if r.id == app.release {
                ("active".to_owned(), "good")
            } else if !newer && succeeded_before && !known_good_marked {
                known_good_marked = true;
                ("last known good".to_owned(), "")
            } else if let Some(p) =
                promotion.filter(|p| p.state != rpb::PromotionState::Succeeded as i32)
            {
                let words = views::state_words(p.state);
                let tone = if views::in_flight(p.state) {
                    "busy"
                } else {
                    "bad"
                };
                (words.to_owned(), tone)
            } else if newer {
                ("staged".to_owned(), "")
            } else {
                (String::new(), "")
            };
            let action = if r.id == app.release {
                Action::None
            } else if newer {
                Action::Promote
            } else {
                Action::Rollback
            };
            ReleaseRow {
                promotion: promotion
                    .filter(|p| p.state != rpb::PromotionState::Succeeded as i32)
                    .map(|p| format!("/console/apps/{}/promotions/{}", app.name, p.id)),
                id: r.id.clone(),
                status,
                tone,
                build: r.build.clone(),
                created: When::of(r.created.as_ref(), now),
                description: r.description.clone(),
                action,
            }
        })
        .collect()
}
