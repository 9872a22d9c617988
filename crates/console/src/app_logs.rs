//! The app's logs (`/console/apps/{app}/logs[?service=S]`): the last hour's
//! lines (at most [`BACKLOG_LINES`]) rendered in the page, in the format
//! `slipway logs` prints (`TIME SOURCE MESSAGE`), then a live tail over
//! server-sent events. Without JavaScript the page has a Refresh button.
//!
//! `StreamAppLogs` has no cursor, so a message's `id:` is the event's time
//! in microseconds and a digest of its line (`<micros>.<digest>`; not the
//! event's id, which differs between the live bus and the durable log a
//! backlog reads). A reconnect asks for the backlog since a moment before
//! that time and skips what the browser already has: everything older, and
//! at the same microsecond everything up to the same line. If that line is
//! not among the events of that microsecond (the log moved on), those are
//! sent: a line twice rather than a gap.

use std::time::Duration;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse as _, Response};
use chrono::Utc;
use serde::Deserialize;
use slipway_api::events::event_line;
use slipway_api::rollout::v1 as opb;

use crate::Console;
use crate::auth::Viewer;
use crate::grpc::PageError;
use crate::live;
use crate::views::{self, Chrome};

/// Lines of backlog a page shows.
const BACKLOG_LINES: u32 = 500;
/// How far back the page's backlog reaches, in seconds.
const BACKLOG_SECONDS: u32 = 3600;

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsPage {
    chrome: Chrome,
    app: String,
    services: Vec<String>,
    service: String,
    log: String,
    last_event: String,
    stream: String,
}

#[derive(Deserialize)]
pub(crate) struct LogQuery {
    service: Option<String>,
    after: Option<String>,
}

impl LogQuery {
    fn service(&self) -> Option<String> {
        self.service.clone().filter(|s| !s.is_empty())
    }
}

/// An event's SSE id: `<micros>.<digest of its line>`.
fn cursor(event: &opb::Event) -> String {
    format!("{}.{}", micros_of(event), line_digest(event))
}

fn line_digest(event: &opb::Event) -> String {
    live::digest(&[&event.source, &event.message])
}

fn micros_of(event: &opb::Event) -> i64 {
    event
        .time
        .as_ref()
        .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000))
}

/// `GET /console/apps/{app}/logs`.
pub(crate) async fn page(
    State(console): State<Console>,
    Path(app): Path<String>,
    Query(query): Query<LogQuery>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    console.app(&app).await?;
    let service = query.service();
    let services = console
        .rollout()
        .list_services(opb::ListServicesRequest { app: app.clone() })
        .await?
        .into_inner()
        .services
        .into_iter()
        .map(|s| s.name)
        .collect();
    // With no backlog, the tail starts from this moment (no line between
    // the page and its stream is missed).
    let asked = Utc::now().timestamp_micros();
    let mut stream = console
        .rollout()
        .stream_app_logs(opb::StreamAppLogsRequest {
            app: app.clone(),
            since_seconds: BACKLOG_SECONDS,
            follow: false,
            service: service.clone(),
            tail: BACKLOG_LINES,
            filter: String::new(),
            after_cursor: String::new(),
        })
        .await?
        .into_inner();
    let (mut log, mut last_event) = (String::new(), String::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(Some(message))) = tokio::time::timeout_at(deadline, stream.message()).await {
        if let Some(event) = message.event {
            log.push_str(&event_line(&event));
            last_event = cursor(&event);
        }
    }
    if last_event.is_empty() {
        last_event = format!("{asked}.");
    }
    let stream = match &service {
        Some(s) => format!(
            "/console/apps/{app}/logs/stream?service={}",
            crate::auth::encode(s)
        ),
        None => format!("/console/apps/{app}/logs/stream"),
    };
    let page = LogsPage {
        chrome: Chrome::new(format!("Logs of {app}"), &viewer.session),
        services,
        service: service.unwrap_or_default(),
        log,
        last_event,
        stream,
        app,
    };
    Ok(views::html(&page, StatusCode::OK))
}

/// Where a resumed tail starts: after the event with this time and line.
#[derive(Debug, PartialEq, Eq)]
struct Resume {
    micros: i64,
    line: String,
}

impl Resume {
    fn parse(text: &str) -> Option<Self> {
        let (micros, line) = text.split_once('.')?;
        Some(Self {
            micros: micros.parse().ok()?,
            line: line.to_owned(),
        })
    }
}

/// Drops the events a resumed browser already has (see the module docs).
struct Skip {
    resume: Option<Resume>,
    /// Events at the resume time seen before its line turned up.
    held: Vec<opb::Event>,
}

impl Skip {
    fn new(resume: Option<Resume>) -> Self {
        Self {
            resume,
            held: Vec::new(),
        }
    }

    /// The events to send now that `event` arrived.
    fn next(&mut self, event: opb::Event) -> Vec<opb::Event> {
        let Some(resume) = &self.resume else {
            return vec![event];
        };
        let at = micros_of(&event);
        if at < resume.micros {
            return Vec::new();
        }
        if at == resume.micros {
            if line_digest(&event) == resume.line {
                // Everything held came before it: the browser has it.
                self.held.clear();
                self.resume = None;
            } else {
                self.held.push(event);
            }
            return Vec::new();
        }
        // Past the resume time without meeting its line: send what was held.
        self.resume = None;
        let mut out = std::mem::take(&mut self.held);
        out.push(event);
        out
    }
}

/// `GET /console/apps/{app}/logs/stream[?service=S][&after=CURSOR]`: one
/// message per log line (`data:` the line without its newline, as a JSON
/// string), live until the browser leaves.
pub(crate) async fn stream(
    State(console): State<Console>,
    Path(app): Path<String>,
    Query(query): Query<LogQuery>,
    headers: HeaderMap,
    _viewer: Viewer,
) -> Result<Response, PageError> {
    console.app(&app).await?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.after.clone())
        .and_then(|a| Resume::parse(&a));
    let since_seconds = match &resume {
        // From a second before the last line the browser has.
        Some(r) => {
            let back = Utc::now().timestamp_micros() - r.micros;
            u32::try_from(back / 1_000_000 + 2).unwrap_or(u32::MAX)
        }
        None => 0,
    };
    let slot = match console.stream_slot(&headers) {
        Ok(slot) => slot,
        Err(refused) => return Ok(refused.into_response()),
    };
    let mut logs = console
        .rollout()
        .stream_app_logs(opb::StreamAppLogsRequest {
            app,
            since_seconds,
            follow: true,
            service: query.service(),
            tail: 0,
            filter: String::new(),
            after_cursor: String::new(),
        })
        .await?
        .into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let mut skip = Skip::new(resume);
        loop {
            let message = tokio::select! {
                () = tx.closed() => return,
                message = logs.message() => message,
            };
            match message {
                Ok(Some(message)) => {
                    for event in message.event.into_iter().flat_map(|e| skip.next(e)) {
                        let line = event_line(&event);
                        let data = serde_json::to_string(line.strip_suffix('\n').unwrap_or(&line))
                            .expect("a string serialises");
                        if tx
                            .send(Event::default().id(cursor(&event)).data(data))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                Ok(None) | Err(_) => {
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
    });
    Ok(live::sse(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        slot,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(micros: i64, id: &str) -> opb::Event {
        opb::Event {
            id: id.to_owned(),
            message: id.to_owned(),
            time: Some(prost_types::Timestamp {
                seconds: micros / 1_000_000,
                nanos: i32::try_from(micros % 1_000_000).unwrap() * 1000,
            }),
            ..Default::default()
        }
    }

    fn ids(events: Vec<opb::Event>) -> Vec<String> {
        events.into_iter().map(|e| e.id).collect()
    }

    fn at(micros: i64, line: &str) -> Option<Resume> {
        Resume::parse(&cursor(&event(micros, line)))
    }

    #[test]
    fn cursors_round_trip_and_ignore_the_events_id() {
        let e = event(1_700_000_000_123_456, "1700000000123-0");
        let resume = Resume::parse(&cursor(&e)).unwrap();
        assert_eq!(resume.micros, 1_700_000_000_123_456);
        // The same line read from the durable log has another id.
        let durable = opb::Event {
            id: "P1:3".into(),
            ..e.clone()
        };
        assert_eq!(cursor(&durable), cursor(&e));
        assert_eq!(Resume::parse("nonsense"), None);
    }

    #[test]
    fn a_resume_skips_what_was_sent_and_nothing_else() {
        let mut skip = Skip::new(at(20, "b"));
        let mut out = Vec::new();
        for e in [
            event(10, "x"),
            event(20, "a"),
            event(20, "b"),
            event(20, "c"),
            event(30, "d"),
        ] {
            out.extend(skip.next(e));
        }
        assert_eq!(ids(out), ["c", "d"]);
        // The id is gone (trimmed): the events of that moment are sent.
        let mut skip = Skip::new(at(20, "z"));
        let mut out = Vec::new();
        for e in [event(20, "a"), event(30, "d")] {
            out.extend(skip.next(e));
        }
        assert_eq!(ids(out), ["a", "d"]);
        // No resume: everything.
        let mut skip = Skip::new(None);
        assert_eq!(ids(skip.next(event(1, "q"))), ["q"]);
    }
}
