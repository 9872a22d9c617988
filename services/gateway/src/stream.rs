//! The SOCKET routes: build logs, app logs and (Slipway) promotion events
//! over websockets framed as the `convox` CLI expects: payload only in TEXT
//! frames, an empty BINARY frame as end-of-stream. Like the real rack, the
//! upgrade happens first and a failed login is reported inside the stream.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::{Stream, StreamExt as _};
use slipway_api::build::v1 as bpb;
use slipway_api::release::v1 as rpb;
use slipway_api::rollout::v1 as opb;
use tracing::Instrument as _;

use slipway_convox::frames::{AFTER_HEADER, PromotionFrame, PromotionResult, TYPED_HEADER};

use crate::auth::SocketCaller;
use crate::resume::{RESUME_FOR, Resumed, Taken};
use crate::{AppState, convert};

/// `GET /apps/{app}/builds/{id}/logs`: the build's log from byte 0, live
/// while the build runs; ends when it ends.
pub(crate) async fn build_logs(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    caller: SocketCaller,
    ws: WebSocketUpgrade,
) -> Response {
    let tokens = state.tokens.clone();
    let source = async move {
        let request = bpb::WatchBuildLogsRequest {
            app,
            id: id.to_uppercase(),
            from_offset: 0,
        };
        state
            .build
            .clone()
            .watch_build_logs(request)
            .await
            .map(|r| {
                r.into_inner()
                    .map(|m| {
                        m.map(|m| m.chunk.to_vec())
                            .map_err(|s| s.message().to_owned())
                    })
                    .boxed()
            })
            .map_err(|s| s.message().to_owned())
    };
    upgrade(ws, tokens, caller, source)
}

/// `GET /apps/{app}/logs` and `GET /apps/{app}/services/{service}/logs`: the
/// app's log (runtime events `system/...` and process output
/// `service/<name>/<process>`) as `<RFC 3339 time> <source> <message>` lines.
/// Headers as the `convox` CLI sends them: `Since` (Go duration, default
/// 2m), `Follow` (default true; `false` ends after the backlog), `Filter`
/// (substring), `Tail` (only the last N lines of the backlog).
pub(crate) async fn app_logs(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    headers: HeaderMap,
    caller: SocketCaller,
    ws: WebSocketUpgrade,
) -> Response {
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (app, service) = (param("app").unwrap_or_default(), param("service"));
    let tokens = state.tokens.clone();
    let source = async move {
        let request = log_request(app, service, &headers)?;
        // An unknown app is an error, not an empty log.
        crate::routes::read_app(&state, &request.app)
            .await
            .map_err(|s| s.message().to_owned())?;
        // Resumed on another rollout replica when the one serving it
        // restarts (see `app_log.rs`).
        crate::app_log::lines(&state, request).await
    };
    upgrade(ws, tokens, caller, source)
}

/// The `StreamAppLogs` request the option headers of a log socket ask for.
fn log_request(
    app: String,
    service: Option<String>,
    headers: &HeaderMap,
) -> Result<opb::StreamAppLogsRequest, String> {
    let since = match header(headers, "since").filter(|s| !s.is_empty()) {
        Some(text) => parse_go_duration(&text).ok_or_else(|| {
            format!("invalid since {text:?}: expected a duration like 5s or 10m0s")
        })?,
        None => DEFAULT_SINCE,
    };
    let tail = match header(headers, "tail").filter(|t| !t.is_empty()) {
        Some(text) => text
            .parse::<u32>()
            .map_err(|_| format!("invalid tail {text:?}: expected a number of lines"))?,
        None => 0,
    };
    Ok(opb::StreamAppLogsRequest {
        app,
        // Rounded up, so `Since: 500ms` still has a backlog.
        since_seconds: u32::try_from(since.as_secs() + u64::from(since.subsec_nanos() > 0))
            .unwrap_or(u32::MAX),
        follow: header(headers, "follow").is_none_or(|f| !f.eq_ignore_ascii_case("false")),
        service,
        tail,
        filter: header(headers, "filter").unwrap_or_default(),
        after_cursor: String::new(),
    })
}

/// How far back an app log starts when the client sends no `Since`.
const DEFAULT_SINCE: Duration = Duration::from_secs(120);

/// Parses a Go duration string (`5s`, `2m0s`, `1h30m`, `1.5h`, `300ms`);
/// negative durations are refused.
fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Slipway: `GET /apps/{app}/promotions/{id}/events`: every event of the
/// promotion's rollout from the start, ending when the rollout ends.
///
/// Plain by default (one `<time> <source> <message>` line per event). With
/// the `Typed: true` handshake header, each TEXT frame is one JSON
/// [`PromotionFrame`]: the events with their ids, then the promotion's
/// result as the last frame, so a client learns how the rollout ended
/// without asking again; `After: <event id>` resumes after that event.
pub(crate) async fn promotion_events(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    caller: SocketCaller,
    ws: WebSocketUpgrade,
) -> Response {
    let typed = header(&headers, TYPED_HEADER).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let after = header(&headers, AFTER_HEADER).unwrap_or_default();
    let tokens = state.tokens.clone();
    let source = async move {
        promotion_of_app(&state, &app, &id).await?;
        let watched = rollout_events(&state, id.clone(), after).await?;
        Ok(if typed {
            watched
                .then(move |item| typed_frame(state.clone(), id.clone(), item))
                .boxed()
        } else {
            watched
                .filter_map(|item| async move {
                    match item {
                        Ok(Watched::Event(event)) => {
                            Some(Ok(convert::event_line(&event).into_bytes()))
                        }
                        Ok(Watched::Finished(_)) => None,
                        Err(message) => Some(Err(message)),
                    }
                })
                .boxed()
        })
    };
    upgrade(ws, tokens, caller, source)
}

/// Refuses a promotion that is not `app`'s, as `GET .../promotions/{id}`
/// does.
async fn promotion_of_app(state: &AppState, app: &str, id: &str) -> Result<(), String> {
    crate::routes::promotion_of_app(state, app, id)
        .await
        .map(|_| ())
        .map_err(|e| e.message)
}

/// One item of a watched rollout as a typed frame.
async fn typed_frame(
    state: AppState,
    id: String,
    item: Result<Watched, String>,
) -> Result<Vec<u8>, String> {
    let frame = match item? {
        Watched::Event(event) => PromotionFrame::Event {
            line: convert::event_line(&event),
            id: event.id,
        },
        Watched::Finished(rollout) => {
            PromotionFrame::Result(promotion_result(&state, &id, &rollout).await)
        }
    };
    Ok(serde_json::to_vec(&frame).expect("a frame serialises"))
}

/// How the promotion ended, as the release service records it: the
/// rollout service reports the finished rollout to the release service a
/// moment after its last event, so this waits for that record (a few
/// milliseconds, polled with a doubling pause) before the client is told,
/// so that a `slipway deploy` that printed OK is followed by a ledger that
/// shows the release active. Should the report be later than
/// [`REPORT_WAIT`], the finished rollout's own phase and reason answer.
async fn promotion_result(state: &AppState, id: &str, rollout: &opb::Rollout) -> PromotionResult {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(2);
    let recorded = loop {
        let found = crate::routes::read_promotion(state, id)
            .await
            .ok()
            .filter(|p| {
                !matches!(
                    rpb::PromotionState::try_from(p.state),
                    Ok(rpb::PromotionState::Unspecified
                        | rpb::PromotionState::Pending
                        | rpb::PromotionState::RollingOut)
                        | Err(_)
                )
            });
        if found.is_some() || started.elapsed() >= REPORT_WAIT {
            break found;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    };
    let promotion = recorded.unwrap_or_else(|| rpb::Promotion {
        id: id.to_owned(),
        state: promotion_state(rollout.phase) as i32,
        reason: rollout.reason.clone(),
        ..Default::default()
    });
    let promotion = convert::promotion(promotion);
    PromotionResult {
        state: promotion.state,
        reason: promotion.reason,
    }
}

/// How long a finished rollout's result waits for the release service's
/// record of it.
const REPORT_WAIT: Duration = Duration::from_secs(10);

/// The promotion state a finished rollout's phase stands for (the mapping
/// the rollout service reports with).
fn promotion_state(phase: i32) -> rpb::PromotionState {
    opb::RolloutPhase::try_from(phase)
        .ok()
        .and_then(slipway_api::promotion::rollout_outcome)
        .map_or(rpb::PromotionState::Unspecified, |outcome| {
            outcome.into_state().into()
        })
}

/// One item of a watched rollout.
enum Watched {
    Event(opb::Event),
    /// The rollout in its terminal phase; the last item.
    Finished(opb::Rollout),
}

type Items = futures::stream::BoxStream<'static, Result<Watched, String>>;

/// A rollout's events after event `after` (empty: from its start), then the
/// finished rollout, resumed across rollout replicas (`resume.rs`): every
/// watch ends with the finished rollout, so an end without it is a replica
/// going away.
async fn rollout_events(state: &AppState, id: String, after: String) -> Result<Items, String> {
    let replicas = state.reads.rollout.clone();
    let open = move |after: String| {
        let id = id.clone();
        let mut client = replicas.next_client();
        async move {
            client
                .watch_rollout(opb::WatchRolloutRequest {
                    id,
                    after_event_id: after,
                })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    Resumed {
        open,
        take: |message: opb::WatchRolloutResponse| {
            let position = message.event.as_ref().map(|e| e.id.clone());
            let last = message.finished.is_some();
            let items = message
                .event
                .map(Watched::Event)
                .into_iter()
                .chain(message.finished.map(Watched::Finished))
                .collect();
            Taken {
                items,
                position,
                last,
            }
        },
        end_is_normal: false,
        lost: |after: &str, reason: &str| {
            format!(
                "lost the promotion's events after {after:?} and no rollout replica resumed \
                 them within {RESUME_FOR:?}: {reason}; follow it again with `slipway releases` \
                 or the promotion's state"
            )
        },
        what: "promotion event stream",
    }
    .start(after)
    .await
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The prologue of every SOCKET route, in one place because its order is
/// the contract: upgrade first and check the login inside the stream (as
/// the real rack does, so the `convox` CLI prints a failed login as an
/// `ERROR:` line instead of a handshake failure), run the socket in a task
/// of its own that keeps the request span and the caller's actor, and only
/// then, if the caller is authorised, open `source` (an unauthorised
/// caller never reaches the services behind it). A token's stream ends
/// with an `ERROR:` line within seconds of the token being revoked or
/// expiring (`ended`).
fn upgrade<S, F>(
    ws: WebSocketUpgrade,
    tokens: std::sync::Arc<crate::tokens::Tokens>,
    caller: SocketCaller,
    source: F,
) -> Response
where
    F: std::future::Future<Output = Result<S, String>> + Send + 'static,
    S: Stream<Item = Result<Vec<u8>, String>> + Unpin + Send + 'static,
{
    let span = tracing::Span::current();
    let ended = caller.clone().ended(tokens);
    let actor = match &caller {
        SocketCaller::Authenticated(c) => c.actor.clone(),
        SocketCaller::Refused(_) => slipway_rpc::actor::Actor::unknown(),
    };
    ws.on_upgrade(move |socket| {
        let served = serve(socket, caller.refusal().to_owned(), source, ended);
        slipway_rpc::actor::scope(actor, served).instrument(span)
    })
}

/// Runs one socket: a refusal or upstream error as `ERROR: …` text, the
/// payload as text frames (split only at UTF-8 boundaries), then EOF.
/// `refusal` is empty when the caller may read the stream; when `ended`
/// completes (the credential was revoked) the stream stops.
async fn serve<S, F>(
    mut socket: WebSocket,
    refusal: String,
    source: F,
    ended: impl std::future::Future<Output = ()>,
) where
    F: std::future::Future<Output = Result<S, String>>,
    S: Stream<Item = Result<Vec<u8>, String>> + Unpin,
{
    if !refusal.is_empty() {
        let _ = socket
            .send(Message::Text(format!("ERROR: {refusal}\n").into()))
            .await;
        return finish(socket).await;
    }
    let mut ended = std::pin::pin!(ended);
    let mut stream = match source.await {
        Ok(stream) => stream,
        Err(message) => {
            let _ = socket
                .send(Message::Text(format!("ERROR: {message}\n").into()))
                .await;
            return finish(socket).await;
        }
    };
    let mut pending: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(bytes)) => {
                    pending.extend_from_slice(&bytes);
                    let text = take_utf8(&mut pending);
                    if !text.is_empty() && socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Some(Err(message)) => {
                    let _ = socket.send(Message::Text(format!("ERROR: {message}\n").into())).await;
                    break;
                }
                None => break,
            },
            incoming = socket.recv() => match incoming {
                // The client went away (or sent its own EOF).
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
            () = &mut ended => {
                let _ = socket
                    .send(Message::Text("ERROR: the credentials of this stream were revoked or expired\n".into()))
                    .await;
                break;
            }
        }
    }
    if !pending.is_empty() {
        let _ = socket
            .send(Message::Text(
                String::from_utf8_lossy(&pending).into_owned().into(),
            ))
            .await;
    }
    finish(socket).await
}

async fn finish(mut socket: WebSocket) {
    let _ = socket.send(Message::Binary(Default::default())).await;
    let _ = socket.send(Message::Close(None)).await;
}

/// Takes the longest valid UTF-8 prefix out of `buf`, leaving an incomplete
/// trailing character for the next chunk (invalid bytes become U+FFFD).
pub(crate) fn take_utf8(buf: &mut Vec<u8>) -> String {
    match std::str::from_utf8(buf) {
        Ok(text) => {
            let text = text.to_owned();
            buf.clear();
            text
        }
        Err(e) if e.error_len().is_none() => {
            let valid = e.valid_up_to();
            let rest = buf.split_off(valid);
            String::from_utf8(std::mem::replace(buf, rest)).expect("prefix checked valid")
        }
        Err(_) => {
            let text = String::from_utf8_lossy(buf).into_owned();
            buf.clear();
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        let secs = |s: &str| parse_go_duration(s).map(|d| d.as_secs_f64());
        assert_eq!(secs("5s"), Some(5.0));
        assert_eq!(secs("2m0s"), Some(120.0));
        assert_eq!(secs("10m0s"), Some(600.0));
        assert_eq!(secs("1h0m0s"), Some(3600.0));
        assert_eq!(secs("1h30m"), Some(5400.0));
        assert_eq!(secs("1.5h"), Some(5400.0));
        assert_eq!(secs("300ms"), Some(0.3));
        assert_eq!(secs("0"), Some(0.0));
        for bad in ["", "5", "5x", "-5s", "s", "1..5s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn log_headers_become_the_request() {
        let mut headers = HeaderMap::new();
        let request = log_request("myapp".into(), None, &headers).unwrap();
        assert_eq!(request.since_seconds, 120);
        assert!(request.follow);
        assert_eq!((request.tail, request.filter.as_str()), (0, ""));
        headers.insert("Since", "5s".parse().unwrap());
        headers.insert("Follow", "false".parse().unwrap());
        headers.insert("Tail", "7".parse().unwrap());
        headers.insert("Filter", "GET /".parse().unwrap());
        let request = log_request("myapp".into(), Some("web".into()), &headers).unwrap();
        assert_eq!(request.since_seconds, 5);
        assert!(!request.follow);
        assert_eq!((request.tail, request.filter.as_str()), (7, "GET /"));
        assert_eq!(request.service.as_deref(), Some("web"));
        headers.insert("Since", "yesterday".parse().unwrap());
        assert!(log_request("myapp".into(), None, &headers).is_err());
    }

    #[test]
    fn split_characters_wait_for_their_rest() {
        let snowman = "☃".as_bytes();
        let mut buf = b"ab".to_vec();
        buf.extend_from_slice(&snowman[..1]);
        assert_eq!(take_utf8(&mut buf), "ab");
        buf.extend_from_slice(&snowman[1..]);
        assert_eq!(take_utf8(&mut buf), "☃");
        assert!(buf.is_empty());
    }
}
