//! The promotion page: the rollout's events in the seed format, byte for
//! byte the lines `slipway releases promote` prints
//! (`slipway_api::events::event_line`), then the outcome and, when it did
//! not succeed, the reason. Live through server-sent events whose ids are
//! the rollout's event ids, so a reconnect (`Last-Event-ID`) resumes with
//! no gap and no duplicate; the page renders what has happened so far and
//! the stream continues after its last event. Finished promotions render
//! the same way, forever.

use std::time::Duration;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse as _, Response};
use chrono::Utc;
use futures::Stream;
use serde::{Deserialize, Serialize};
use slipway_api::events::event_line;
use slipway_api::release::v1 as rpb;
use slipway_api::rollout::v1 as opb;

use crate::Console;
use crate::auth::Viewer;
use crate::grpc::PageError;
use crate::views::{self, Chrome, When};

/// How a finished promotion is told.
struct Outcome {
    title: String,
    /// `status` for a success, `alert` otherwise.
    role: &'static str,
    tone: &'static str,
    reason: String,
}

fn outcome(p: &rpb::Promotion) -> Option<Outcome> {
    use rpb::PromotionState as S;
    let (title, role, tone) = match S::try_from(p.state).ok()? {
        S::Succeeded => (
            format!("Succeeded — {} is active", p.release),
            "status",
            "good",
        ),
        S::RolledBack => (
            if p.fallback_release.is_empty() {
                format!("Rolled back — {} was not kept", p.release)
            } else {
                format!("Rolled back — {} is active again", p.fallback_release)
            },
            "alert",
            "bad",
        ),
        S::Failed => (
            format!("Failed — {} is not active", p.release),
            "alert",
            "bad",
        ),
        S::Cancelled => ("Cancelled".to_owned(), "alert", "bad"),
        S::Pending | S::RollingOut | S::Unspecified => return None,
    };
    Some(Outcome {
        title,
        role,
        tone,
        reason: p.reason.clone(),
    })
}

#[derive(Template)]
#[template(path = "promotion.html")]
struct PromotionPage {
    chrome: Chrome,
    app: String,
    id: String,
    release: String,
    fallback: String,
    actor: String,
    state: &'static str,
    started: When,
    log: String,
    last_event: String,
    live: bool,
    outcome: Option<Outcome>,
    read_only: bool,
}

/// `GET /console/apps/{app}/promotions/{id}`.
pub(crate) async fn page(
    State(console): State<Console>,
    Path((app, id)): Path<(String, String)>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    let promotion = console.promotion_of(&app, &id).await?;
    let live = views::in_flight(promotion.state);
    let (log, last_event) = backlog(&console, &id, live).await;
    let mut chrome = Chrome::new(
        format!("Promotion of {} to {app}", promotion.release),
        &viewer.session,
    );
    chrome.refresh = live;
    let page = PromotionPage {
        chrome,
        state: views::state_words(promotion.state),
        started: When::of(promotion.created.as_ref(), Utc::now()),
        outcome: outcome(&promotion),
        release: promotion.release,
        fallback: promotion.fallback_release,
        actor: promotion.actor,
        log,
        last_event,
        live,
        read_only: !console.may_change(&viewer.session, &app),
        app,
        id,
    };
    Ok(views::html(&page, StatusCode::OK))
}

/// How long a page waits for the next stored event of a running rollout
/// before it renders what it has (the stream carries on from there).
const BACKLOG_IDLE: Duration = Duration::from_millis(150);
/// At most this long for the whole backlog.
const BACKLOG_LIMIT: Duration = Duration::from_secs(5);

/// The events so far, as text, and the last one's id. A finished rollout's
/// stream ends by itself; a running one's is read until it pauses.
async fn backlog(console: &Console, id: &str, live: bool) -> (String, String) {
    let (mut log, mut last) = (String::new(), String::new());
    let watched = console
        .rollout()
        .watch_rollout(opb::WatchRolloutRequest {
            id: id.to_owned(),
            after_event_id: String::new(),
        })
        .await;
    // A pending promotion has no rollout yet: nothing to show.
    let Ok(stream) = watched else {
        return (log, last);
    };
    let mut stream = stream.into_inner();
    let deadline = tokio::time::Instant::now() + BACKLOG_LIMIT;
    loop {
        let wait = if live {
            BACKLOG_IDLE
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        let next = tokio::time::timeout(wait, stream.message()).await;
        match next {
            Ok(Ok(Some(message))) => {
                if let Some(event) = message.event {
                    log.push_str(&event_line(&event));
                    last = event.id;
                }
                if message.finished.is_some() {
                    break;
                }
            }
            _ => break,
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    (log, last)
}

#[derive(Deserialize)]
pub(crate) struct After {
    after: Option<String>,
}

/// The last SSE message: how the promotion ended.
#[derive(Serialize)]
struct OutcomeData {
    state: &'static str,
    reason: String,
}

/// `GET /console/apps/{app}/promotions/{id}/stream`: `text/event-stream`,
/// one message per rollout event (`id:` the event id, `data:` its line
/// without the newline), then `event: outcome` with the recorded result.
/// Resumes after `Last-Event-ID` (a reconnect) or `?after=` (the page's
/// last rendered event).
pub(crate) async fn stream(
    State(console): State<Console>,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<After>,
    headers: HeaderMap,
    viewer: Viewer,
) -> Result<Response, PageError> {
    let promotion = console.promotion_of(&app, &id).await?;
    let slot = match console.stream_slot(&headers) {
        Ok(slot) => slot,
        Err(refused) => return Ok(refused.into_response()),
    };
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.after)
        .unwrap_or_default();
    // A token session's stream ends once its token is revoked or expires.
    let ended = console.clone().session_ended(viewer.session);
    let events = futures::StreamExt::take_until(events(console, promotion, after), ended);
    Ok(crate::live::sse(events, slot))
}

/// Wait before a browser reconnects when the rollout cannot be watched yet
/// (a pending promotion) or the watch broke.
const RETRY: Duration = Duration::from_secs(1);

fn events(
    console: Console,
    promotion: rpb::Promotion,
    after: String,
) -> impl Stream<Item = Event> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let id = promotion.id.clone();
        let watched = console
            .rollout()
            .watch_rollout(opb::WatchRolloutRequest {
                id: id.clone(),
                after_event_id: after,
            })
            .await;
        let mut stream = match watched {
            Ok(s) => s.into_inner(),
            Err(status) => {
                if views::in_flight(promotion.state) {
                    // Not started yet: the browser asks again shortly.
                    let _ = tx
                        .send(Event::default().retry(RETRY).comment("waiting"))
                        .await;
                } else {
                    tracing::debug!("no rollout events for a finished promotion: {status}");
                    let _ = tx.send(outcome_event(&promotion)).await;
                }
                return;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(message)) => {
                    if let Some(event) = message.event {
                        let line = event_line(&event);
                        let data = line.strip_suffix('\n').unwrap_or(&line);
                        let sse = Event::default().id(&event.id).data(data);
                        if tx.send(sse).await.is_err() {
                            return;
                        }
                    }
                    if message.finished.is_some() {
                        let recorded = recorded_outcome(&console, &promotion).await;
                        let _ = tx.send(outcome_event(&recorded)).await;
                        return;
                    }
                }
                // Ended or broke without finishing: the browser reconnects
                // after the last event it got.
                Ok(None) | Err(_) => {
                    let _ = tx
                        .send(Event::default().retry(RETRY).comment("reconnect"))
                        .await;
                    return;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn outcome_event(p: &rpb::Promotion) -> Event {
    let state = slipway_api::promotion::promotion_state(p.state)
        .map_or("unknown", slipway_domain::PromotionState::as_str);
    let data = serde_json::to_string(&OutcomeData {
        state,
        reason: p.reason.clone(),
    })
    .expect("an outcome serialises");
    Event::default().event("outcome").data(data)
}

/// The release service records the outcome a moment after the rollout's
/// last event: wait for that record (a few ms; at most 10 s), so that the
/// page reloaded on the outcome shows the ledger as it now is.
async fn recorded_outcome(console: &Console, promotion: &rpb::Promotion) -> rpb::Promotion {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        let found = console
            .release()
            .get_promotion(rpb::GetPromotionRequest {
                id: promotion.id.clone(),
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().promotion);
        match found {
            Some(p) if !views::in_flight(p.state) => return p,
            Some(p) if started.elapsed() >= Duration::from_secs(10) => return p,
            _ if started.elapsed() >= Duration::from_secs(10) => return promotion.clone(),
            _ => {}
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
