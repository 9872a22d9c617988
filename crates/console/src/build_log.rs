//! A build's page (`/console/apps/{app}/builds/{id}`): its status and its
//! log, live while the build runs and replayed after. The page renders the
//! log so far; the stream (`…/stream`) goes on from the byte offset the page
//! ended at. Each message's `id:` is the log's byte offset after it, so a
//! reconnect (`Last-Event-ID`) resumes exactly there; its `data:` is the
//! text as a JSON string (a log may hold carriage returns, which the event
//! stream format would turn into line breaks). A chunk that ends inside a
//! UTF-8 character keeps those bytes for the next message, so offsets always
//! fall between characters. The last message is `event: outcome` with the
//! build's final status.

use std::time::Duration;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse as _, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use slipway_api::build::v1 as bpb;

use crate::Console;
use crate::auth::Viewer;
use crate::grpc::PageError;
use crate::history::{build_running, build_status};
use crate::live;
use crate::views::{self, Chrome, When};

/// The most of a log a page shows; a longer one shows its end.
const PAGE_BYTES: usize = 1 << 20;
/// How long a page waits for more of a running build's log before it
/// renders what it has (the stream carries on from there).
const BACKLOG_IDLE: Duration = Duration::from_millis(150);
/// At most this long for the whole backlog.
const BACKLOG_LIMIT: Duration = Duration::from_secs(5);

#[derive(Template)]
#[template(path = "build.html")]
struct BuildPage {
    chrome: Chrome,
    app: String,
    id: String,
    status: &'static str,
    tone: &'static str,
    release: String,
    description: String,
    reason: String,
    started: When,
    log: String,
    /// Bytes of the log's start not shown (a very long log).
    cut: u64,
    offset: u64,
    live: bool,
}

impl Console {
    async fn build_of(&self, app: &str, id: &str) -> Result<bpb::Build, PageError> {
        self.app(app).await?;
        self.inner
            .build
            .clone()
            .get_build(bpb::GetBuildRequest {
                app: app.to_owned(),
                id: id.to_owned(),
            })
            .await?
            .into_inner()
            .build
            .filter(|b| b.app == app)
            .ok_or_else(|| PageError::NotFound(format!("build {id} of app {app}")))
    }
}

/// `GET /console/apps/{app}/builds/{id}`.
pub(crate) async fn page(
    State(console): State<Console>,
    Path((app, id)): Path<(String, String)>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    let build = console.build_of(&app, &id).await?;
    let live = build_running(build.status);
    let (bytes, offset) = backlog(&console, &app, &id, live).await?;
    let cut = bytes.len().saturating_sub(PAGE_BYTES);
    let mut shown = &bytes[cut..];
    // Start at a character (and, when cut, a line).
    if cut > 0
        && let Some(nl) = shown.iter().position(|&b| b == b'\n')
    {
        shown = &shown[nl + 1..];
    }
    let (status, tone) = build_status(build.status);
    let mut chrome = Chrome::new(format!("Build {id} of {app}"), &viewer.session);
    chrome.refresh = live;
    let page = BuildPage {
        chrome,
        status,
        tone,
        release: build.release,
        description: build.description,
        reason: build.reason,
        started: When::of(build.started.as_ref(), Utc::now()),
        log: String::from_utf8_lossy(shown).into_owned(),
        cut: (bytes.len() - shown.len()) as u64,
        offset,
        live,
        app,
        id,
    };
    Ok(views::html(&page, StatusCode::OK))
}

/// The log so far, whole characters only, and the offset it ends at. A
/// finished build's stream ends by itself; a running one's is read until
/// it pauses.
async fn backlog(
    console: &Console,
    app: &str,
    id: &str,
    live: bool,
) -> Result<(Vec<u8>, u64), PageError> {
    let mut stream = console
        .inner
        .build
        .clone()
        .watch_build_logs(bpb::WatchBuildLogsRequest {
            app: app.to_owned(),
            id: id.to_owned(),
            from_offset: 0,
        })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    let deadline = tokio::time::Instant::now() + BACKLOG_LIMIT;
    loop {
        let wait = if live {
            BACKLOG_IDLE
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(wait, stream.message()).await {
            Ok(Ok(Some(message))) => bytes.extend_from_slice(&message.chunk),
            _ => break,
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    let whole = whole_chars(&bytes);
    bytes.truncate(whole);
    Ok((bytes, whole as u64))
}

/// How many leading bytes of `bytes` end at a character boundary (an
/// invalid sequence counts as whole: it will never complete).
fn whole_chars(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => {
            // Invalid somewhere: only hold back an incomplete tail.
            let tail = bytes.len().saturating_sub(3);
            (tail..bytes.len())
                .rev()
                .find(|&i| bytes[i] >= 0xC0)
                .filter(|&i| {
                    std::str::from_utf8(&bytes[i..]).is_err_and(|e| e.error_len().is_none())
                })
                .unwrap_or(bytes.len())
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct After {
    after: Option<String>,
}

#[derive(Serialize)]
struct OutcomeData {
    status: &'static str,
    reason: String,
}

/// `GET /console/apps/{app}/builds/{id}/stream`.
pub(crate) async fn stream(
    State(console): State<Console>,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<After>,
    headers: HeaderMap,
    _viewer: Viewer,
) -> Result<Response, PageError> {
    console.build_of(&app, &id).await?;
    let from: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.after)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let slot = match console.stream_slot(&headers) {
        Ok(slot) => slot,
        Err(refused) => return Ok(refused.into_response()),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(16);
    tokio::spawn(async move {
        let watched = console
            .inner
            .build
            .clone()
            .watch_build_logs(bpb::WatchBuildLogsRequest {
                app: app.clone(),
                id: id.clone(),
                from_offset: from,
            })
            .await;
        let mut stream = match watched {
            Ok(s) => s.into_inner(),
            Err(status) => {
                tracing::debug!("build log not watchable: {status}");
                let _ = tx
                    .send(
                        Event::default()
                            .retry(Duration::from_secs(2))
                            .comment("retry"),
                    )
                    .await;
                return;
            }
        };
        let (mut offset, mut held) = (from, Vec::<u8>::new());
        loop {
            match stream.message().await {
                Ok(Some(message)) => {
                    held.extend_from_slice(&message.chunk);
                    let whole = whole_chars(&held);
                    if whole == 0 {
                        continue;
                    }
                    let text: Vec<u8> = held.drain(..whole).collect();
                    offset += whole as u64;
                    let data = serde_json::to_string(&String::from_utf8_lossy(&text))
                        .expect("a string serialises");
                    let event = Event::default().id(offset.to_string()).data(data);
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    // A log ending inside a character: send what is left.
                    if !held.is_empty() {
                        offset += held.len() as u64;
                        let data = serde_json::to_string(&String::from_utf8_lossy(&held))
                            .expect("a string serialises");
                        let _ = tx
                            .send(Event::default().id(offset.to_string()).data(data))
                            .await;
                    }
                    break;
                }
                Err(status) => {
                    tracing::debug!("build log stream broke: {status}");
                    let _ = tx
                        .send(
                            Event::default()
                                .retry(Duration::from_secs(1))
                                .comment("reconnect"),
                        )
                        .await;
                    return;
                }
            }
        }
        // The log ended: the build has ended (its record may lag a moment).
        let mut build = None;
        for _ in 0..50 {
            build = console.build_of(&app, &id).await.ok();
            if build.as_ref().is_some_and(|b| !build_running(b.status)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, reason) = build.map_or(("unknown", String::new()), |b| {
            (build_status(b.status).0, b.reason)
        });
        let data =
            serde_json::to_string(&OutcomeData { status, reason }).expect("an outcome serialises");
        let _ = tx.send(Event::default().event("outcome").data(data)).await;
    });
    Ok(live::sse(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        slot,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_fall_between_characters() {
        let text = "é€".as_bytes();
        assert_eq!(whole_chars(text), text.len());
        assert_eq!(whole_chars(&text[..1]), 0);
        assert_eq!(whole_chars(&text[..3]), 2);
        assert_eq!(whole_chars(&text[..4]), 2);
        // An invalid byte never completes: it is not held back.
        assert_eq!(whole_chars(b"a\xffb"), 3);
        assert_eq!(whole_chars(b"a\xff\xe2\x82"), 2);
    }
}
