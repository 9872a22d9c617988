//! What every live page shares: the per-session cap on open streams, the
//! shape of a server-sent event response, and the status streams of the
//! apps list, an app's pages and its processes.
//!
//! A status stream sends `event: version` with a short digest of what the
//! page shows (the app's status, active release, promotion in flight,
//! newest release; or the processes and services). The page was rendered
//! with the same digest in `data-version`; when a message differs, the
//! script reloads the page, which the server renders afresh. So a page
//! never shows a half-updated table, and without JavaScript the same page
//! still refreshes itself while something is moving.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use slipway_api::release::v1 as rpb;
use slipway_api::rollout::v1 as opb;

use crate::auth::Viewer;
use crate::grpc::PageError;
use crate::session::SessionKey;
use crate::{Console, security};

/// Live streams one session may hold open on one gateway at once. A page
/// opens one; a browser over HTTP/1.1 has about six connections per site,
/// so only a script (or a tab left open per release) reaches this.
pub const MAX_STREAMS_PER_SESSION: usize = 16;

/// How often a status stream looks again.
const POLL: Duration = Duration::from_secs(1);
/// How often the processes stream looks again (a runtime call).
const POLL_PROCESSES: Duration = Duration::from_secs(2);

/// Open streams per session on this gateway.
#[derive(Default)]
pub(crate) struct Streams(Arc<Mutex<HashMap<SessionKey, usize>>>);

/// One open stream of a session; dropping it (the body ended or the
/// browser went away) frees its place.
pub(crate) struct Slot {
    counts: Arc<Mutex<HashMap<SessionKey, usize>>>,
    key: SessionKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("streams lock");
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl Streams {
    fn take(&self, key: SessionKey) -> Option<Slot> {
        let mut counts = self.0.lock().expect("streams lock");
        let n = counts.entry(key.clone()).or_default();
        if *n >= MAX_STREAMS_PER_SESSION {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.0.clone(),
            key,
        })
    }
}

impl Console {
    /// A place for one more stream of the request's session, or the
    /// refusal (429, saying why and what to do).
    pub(crate) fn stream_slot(&self, headers: &HeaderMap) -> Result<Slot, TooMany> {
        let id = security::cookie(headers, self.inner.cookies.session_name()).unwrap_or_default();
        self.inner.streams.take(SessionKey::of(id)).ok_or(TooMany)
    }
}

/// The refusal of one stream too many.
pub(crate) struct TooMany;

impl IntoResponse for TooMany {
    fn into_response(self) -> Response {
        too_many()
    }
}

fn too_many() -> Response {
    tracing::info!(
        limit = MAX_STREAMS_PER_SESSION,
        "console stream refused: too many open"
    );
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::RETRY_AFTER, "10"),
        ],
        format!(
            "refused: this session already has {MAX_STREAMS_PER_SESSION} live streams open on \
             this gateway (the most one session may have); close other console tabs or windows \
             and reload this page"
        ),
    )
        .into_response()
}

/// A `text/event-stream` response over `events`, holding `slot` until the
/// body is dropped, with a keep-alive comment every 15 s and no caching
/// or buffering by proxies.
pub(crate) fn sse<S>(events: S, slot: Slot) -> Response
where
    S: Stream<Item = Event> + Send + 'static,
{
    let events = events.map(move |event| {
        let _held = &slot;
        Ok::<_, Infallible>(event)
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A short digest of the parts of a page that a status stream watches.
pub(crate) fn digest(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the apps list shows that can change: every app's status, active
/// release and promotion in flight.
pub(crate) fn apps_version(apps: &[rpb::App]) -> String {
    let parts: Vec<String> = apps.iter().map(app_parts).collect();
    digest(&parts.iter().map(String::as_str).collect::<Vec<_>>())
}

fn app_parts(app: &rpb::App) -> String {
    let open = app
        .open_promotion
        .as_ref()
        .map(|p| format!("{}:{}", p.id, p.state))
        .unwrap_or_default();
    format!("{} {} {} {open}", app.name, app.status, app.release)
}

/// What an app's pages show that can change: the app's status, active
/// release and promotion in flight, and its newest release.
pub(crate) fn app_version(app: &rpb::App, newest: &str) -> String {
    digest(&[&app_parts(app), newest])
}

/// What the processes page shows that can change.
pub(crate) fn processes_version(services: &[opb::Service], processes: &[opb::Process]) -> String {
    let mut parts: Vec<String> = services
        .iter()
        .map(|s| format!("s {} {} {}", s.name, s.address, s.count))
        .collect();
    parts.extend(
        processes
            .iter()
            .map(|p| format!("p {} {} {} {}", p.id, p.status, p.release, p.port)),
    );
    parts.sort();
    digest(&parts.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A stream that asks `look` every `every` and sends its answer as
/// `event: version` whenever it changes (the first answer at once). A
/// failed look is skipped; the stream goes on until the browser leaves.
fn versions<F, Fut>(every: Duration, look: F) -> impl Stream<Item = Event> + Send + 'static
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<String>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(4);
    tokio::spawn(async move {
        let mut last = String::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = tx.closed() => return,
                _ = tick.tick() => {}
            }
            let Some(version) = look().await else {
                continue;
            };
            if version != last {
                if tx
                    .send(Event::default().event("version").data(&version))
                    .await
                    .is_err()
                {
                    return;
                }
                last = version;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// `GET /console/stream`: the apps list's status stream.
pub(crate) async fn rack_stream(
    State(console): State<Console>,
    headers: HeaderMap,
    _viewer: Viewer,
) -> Response {
    let slot = match console.stream_slot(&headers) {
        Ok(slot) => slot,
        Err(refused) => return refused.into_response(),
    };
    let look = move || {
        let mut client = console.release();
        async move {
            let apps = client
                .list_apps(rpb::ListAppsRequest {})
                .await
                .ok()?
                .into_inner()
                .apps;
            Some(apps_version(&apps))
        }
    };
    sse(versions(POLL, look), slot)
}

/// The app's newest release id (empty: none yet).
pub(crate) async fn newest(console: &Console, app: &str) -> Result<String, PageError> {
    match console.release_of(app, "").await {
        Ok(r) => Ok(r.id),
        Err(PageError::Upstream(s)) if s.code() == tonic::Code::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

/// `GET /console/apps/{app}/stream`: the app's status stream.
pub(crate) async fn app_stream(
    State(console): State<Console>,
    Path(app): Path<String>,
    headers: HeaderMap,
    _viewer: Viewer,
) -> Result<Response, PageError> {
    console.app(&app).await?;
    let slot = match console.stream_slot(&headers) {
        Ok(slot) => slot,
        Err(refused) => return Ok(refused.into_response()),
    };
    let look = move || {
        let (console, app) = (console.clone(), app.clone());
        async move {
            let found = console.app(&app).await.ok()?;
            let newest = newest(&console, &app).await.ok()?;
            Some(app_version(&found, &newest))
        }
    };
    Ok(sse(versions(POLL, look), slot))
}

/// The app's services and processes as the runtime reports them now.
pub(crate) async fn processes_of(
    console: &Console,
    app: &str,
) -> Result<(Vec<opb::Service>, Vec<opb::Process>), PageError> {
    let mut client = console.rollout();
    let services = client
        .list_services(opb::ListServicesRequest {
            app: app.to_owned(),
        })
        .await?
        .into_inner()
        .services;
    let processes = client
        .list_processes(opb::ListProcessesRequest {
            app: app.to_owned(),
        })
        .await?
        .into_inner()
        .processes;
    Ok((services, processes))
}

/// `GET /console/apps/{app}/processes/stream`: the processes page's
/// status stream.
pub(crate) async fn processes_stream(
    State(console): State<Console>,
    Path(app): Path<String>,
    headers: HeaderMap,
    _viewer: Viewer,
) -> Result<Response, PageError> {
    console.app(&app).await?;
    let slot = match console.stream_slot(&headers) {
        Ok(slot) => slot,
        Err(refused) => return Ok(refused.into_response()),
    };
    let look = move || {
        let (console, app) = (console.clone(), app.clone());
        async move {
            let (services, processes) = processes_of(&console, &app).await.ok()?;
            Some(processes_version(&services, &processes))
        }
    };
    Ok(sse(versions(POLL_PROCESSES, look), slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_holds_at_most_the_cap_and_dropping_frees_a_place() {
        let streams = Streams::default();
        let key = SessionKey::of("one");
        let mut slots: Vec<Slot> = (0..MAX_STREAMS_PER_SESSION)
            .map(|_| streams.take(key.clone()).expect("under the cap"))
            .collect();
        assert!(streams.take(key.clone()).is_none());
        // Another session is not affected.
        let other = streams
            .take(SessionKey::of("two"))
            .expect("another session");
        slots.pop();
        slots.push(streams.take(key.clone()).expect("a freed place"));
        assert!(streams.take(key.clone()).is_none());
        drop(slots);
        assert!(!streams.0.lock().unwrap().contains_key(&key));
        drop(other);
        assert!(
            !streams
                .0
                .lock()
                .unwrap()
                .contains_key(&SessionKey::of("two"))
        );
    }

    #[test]
    fn digests_change_with_what_they_cover() {
        assert_eq!(digest(&["a", "b"]), digest(&["a", "b"]));
        assert_ne!(digest(&["a", "b"]), digest(&["ab", ""]));
        assert_eq!(digest(&["x"]).len(), 16);
    }
}
