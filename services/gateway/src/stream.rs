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

use crate::auth::authenticate;
use crate::{AppState, convert};

/// `GET /apps/{app}/builds/{id}/logs`: the build's log from byte 0, live
/// while the build runs; ends when it ends.
pub(crate) async fn build_logs(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| async move {
        let authorised = authenticate(&state, &headers).is_some();
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
        serve(socket, authorised, source).await;
    })
}

/// `GET /apps/{app}/logs` (and per service): the app's `system/...` events
/// while a promotion is in flight. With `Follow: false` the stream ends
/// after what is there; `Since` limits how far back it starts.
pub(crate) async fn app_logs(
    State(state): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let app = params
        .iter()
        .find(|(k, _)| k == "app")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    ws.on_upgrade(move |socket| async move {
        let authorised = authenticate(&state, &headers).is_some();
        let since = header(&headers, "since")
            .and_then(|s| humantime::parse_duration(&s).ok())
            .unwrap_or(Duration::from_secs(120));
        let follow = header(&headers, "follow").is_none_or(|f| f != "false");
        let source = async move {
            let found = state
                .release
                .clone()
                .get_app(rpb::GetAppRequest { name: app })
                .await
                .map_err(|s| s.message().to_owned())?;
            let Some(open) = found.into_inner().app.and_then(|a| a.open_promotion) else {
                return Ok(futures::stream::empty().boxed());
            };
            let cutoff = chrono::Utc::now() - chrono::Duration::from_std(since).unwrap_or_default();
            Ok(rollout_lines(&state, open.id, follow)
                .await?
                .filter(move |line| {
                    let keep = match line {
                        Ok((at, _)) => *at >= cutoff,
                        Err(_) => true,
                    };
                    std::future::ready(keep)
                })
                .map(|line| line.map(|(_, text)| text.into_bytes()))
                .boxed())
        };
        serve(socket, authorised, source).await;
    })
}

/// Slipway: `GET /apps/{app}/promotions/{id}/events`: every event of the
/// promotion's rollout from the start, ending when the rollout ends.
pub(crate) async fn promotion_events(
    State(state): State<AppState>,
    Path((_app, id)): Path<(String, String)>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| async move {
        let authorised = authenticate(&state, &headers).is_some();
        let source = async move {
            Ok(rollout_lines(&state, id, true)
                .await?
                .map(|line| line.map(|(_, text)| text.into_bytes()))
                .boxed())
        };
        serve(socket, authorised, source).await;
    })
}

type Lines =
    futures::stream::BoxStream<'static, Result<(chrono::DateTime<chrono::Utc>, String), String>>;

async fn rollout_lines(state: &AppState, id: String, follow: bool) -> Result<Lines, String> {
    let stream = state
        .rollout
        .clone()
        .watch_rollout(opb::WatchRolloutRequest {
            id,
            after_event_id: String::new(),
        })
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    let lines = stream.filter_map(|m| async move {
        match m {
            Ok(m) => m.event.map(|e| {
                let at = e
                    .time
                    .as_ref()
                    .map(slipway_api::from_timestamp)
                    .unwrap_or_default();
                Ok((at, convert::event_line(&e)))
            }),
            Err(s) => Some(Err(s.message().to_owned())),
        }
    });
    Ok(if follow {
        lines.boxed()
    } else {
        // Without follow: what is there now, then the end.
        lines
            .take_until(tokio::time::sleep(Duration::from_millis(300)))
            .boxed()
    })
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Runs one socket: auth failure or upstream error as `ERROR: …` text, the
/// payload as text frames (split only at UTF-8 boundaries), then EOF.
async fn serve<S, F>(mut socket: WebSocket, authorised: bool, source: F)
where
    F: std::future::Future<Output = Result<S, String>>,
    S: Stream<Item = Result<Vec<u8>, String>> + Unpin,
{
    if !authorised {
        let _ = socket
            .send(Message::Text("ERROR: invalid authentication\n".into()))
            .await;
        return finish(socket).await;
    }
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
fn take_utf8(buf: &mut Vec<u8>) -> String {
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
    use super::take_utf8;

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
