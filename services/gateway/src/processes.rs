//! One-off processes and the exec socket, as the `convox` CLI drives them
//! (reference: `convox-rack-api-processes.md` §1-4):
//!
//! - `POST /apps/{app}/services/{service}/processes`, options as headers on
//!   an empty body: `Command` (for an attached `convox run` the holder,
//!   `sleep N`, whose N becomes the timeout), `Release` (else the app's
//!   active release); Slipway's own `Timeout` and `Attach`. The release is
//!   read here (its env, manifest and artifacts) and handed to the rollout
//!   service's `RunProcess`; nothing about the app changes.
//! - `GET`/`DELETE /apps/{app}/processes/{pid}`: `ps info`, `ps stop`.
//! - The exec socket: stdin in TEXT (or non-empty BINARY) frames, an empty
//!   BINARY frame closes the command's stdin without ending the session;
//!   output in TEXT frames; then the exit status as the marker in a frame
//!   of its own, then the end-of-stream. Failures are told as `ERROR: …`
//!   followed by marker 1, so the CLI prints them and exits 1.
//!
//! There is no PTY: `Tty`, `Height` and `Width` are accepted and ignored,
//! and so is `Entrypoint` (local artifacts have none), except as the sign of
//! a `convox run` session, whose holder is stopped if the client drops the
//! socket before the end (the CLI is often killed in CI).

use std::sync::Arc;

use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures::{SinkExt as _, StreamExt as _};
use slipway_api::exec::{ExecOutput, ExecPlane};
use slipway_api::release::v1 as rpb;
use slipway_api::rollout::v1 as opb;
use slipway_convox::exec::{ATTACH_HEADER, BINARY_HEADER, EXIT_MARKER, TIMEOUT_HEADER};
use slipway_convox::types;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument as _;

use crate::auth::SocketCaller;
use crate::error::{ApiError, ApiResult};
use crate::{AppState, convert};

/// `POST /apps/{app}/services/{service}/processes`.
pub(crate) async fn run_process(
    State(state): State<AppState>,
    Path((app, service)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<types::Process>> {
    let command = header(&headers, "command").unwrap_or_default();
    check_words(&command).map_err(|e| ApiError::bad_request(format!("invalid command: {e}")))?;
    let timeout_seconds = timeout(&headers, &command)?;
    let attach = flag(&headers, ATTACH_HEADER);
    let release = header(&headers, "release").filter(|r| !r.is_empty());
    let spec = release_spec(&state, &app, release).await?;
    let process = state
        .processes
        .clone()
        .run_process(opb::RunProcessRequest {
            release: Some(spec),
            service,
            command,
            timeout_seconds,
            attach,
        })
        .await?
        .into_inner()
        .process
        .unwrap_or_default();
    Ok(Json(process_json(process)))
}

/// `GET /apps/{app}/processes/{pid}`.
pub(crate) async fn get_process(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<types::Process>> {
    let process = state
        .processes
        .clone()
        .get_process(opb::GetProcessRequest { app, id })
        .await?
        .into_inner()
        .process
        .unwrap_or_default();
    Ok(Json(process_json(process)))
}

/// `DELETE /apps/{app}/processes/{pid}`.
pub(crate) async fn stop_process(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<(StatusCode, &'static str)> {
    state
        .processes
        .clone()
        .stop_process(opb::StopProcessRequest { app, id })
        .await?;
    Ok((StatusCode::OK, "ok\n"))
}

/// The Convox JSON of a process.
fn process_json(p: opb::OneOffProcess) -> types::Process {
    types::Process {
        started: convert::time(p.started.as_ref()),
        id: p.id,
        app: p.app,
        command: p.command,
        name: p.service,
        release: p.release,
        status: p.status,
        host: "127.0.0.1".into(),
        ..Default::default()
    }
}

/// The release to run: `release`, else the app's active one.
async fn release_spec(
    state: &AppState,
    app: &str,
    release: Option<String>,
) -> Result<opb::ReleaseSpec, ApiError> {
    let id = match release {
        Some(id) => id.to_uppercase(),
        None => {
            let found = crate::routes::read_app(state, app).await?;
            if found.release.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "app {app} has no active release: promote one first, or name one with --release"
                )));
            }
            found.release
        }
    };
    let release = state
        .reads
        .release
        .read(
            rpb::GetReleaseRequest {
                app: app.to_owned(),
                id: id.clone(),
            },
            |mut c, m| async move { c.get_release(m).await },
        )
        .await?
        .release
        .filter(|r| r.app == app)
        .ok_or_else(|| ApiError::not_found(format!("release not found: {id}")))?;
    if release.manifest.trim().is_empty() || release.artifacts.is_empty() {
        return Err(ApiError::bad_request(format!(
            "release {id} has no build to run (build it first)"
        )));
    }
    Ok(opb::ReleaseSpec {
        app: release.app,
        release: release.id,
        build: release.build,
        manifest: release.manifest,
        env: release.env_vars,
        artifacts: release.artifacts,
    })
}

/// The one-off's timeout in seconds (0: the rollout service's default):
/// Slipway's `Timeout` header, else the N of a `convox run` holder's
/// `sleep N`.
fn timeout(headers: &HeaderMap, command: &str) -> Result<u32, ApiError> {
    if let Some(text) = header(headers, TIMEOUT_HEADER) {
        return match text.trim().parse::<u32>() {
            Ok(secs) if secs > 0 => Ok(secs),
            _ => Err(ApiError::bad_request(format!(
                "invalid timeout {text:?}: expected a number of seconds, at least 1"
            ))),
        };
    }
    let holder = command
        .trim()
        .strip_prefix("sleep ")
        .and_then(|n| n.trim().parse::<i64>().ok());
    Ok(match holder {
        // The holder ends itself; a minute more lets it.
        Some(n) if n > 0 => u32::try_from(n.saturating_add(60)).unwrap_or(u32::MAX),
        _ => 0,
    })
}

/// Checks `text` splits into words by POSIX shell rules (balanced quotes, no
/// trailing backslash), as the real rack splits it before running it.
fn check_words(text: &str) -> Result<(), &'static str> {
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next().ok_or("it ends with a backslash")?;
            }
            '\'' => loop {
                match chars.next() {
                    Some('\'') => break,
                    Some(_) => {}
                    None => return Err("a single quote is not closed"),
                }
            },
            '"' => loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => {
                        chars.next().ok_or("a double quote is not closed")?;
                    }
                    Some(_) => {}
                    None => return Err("a double quote is not closed"),
                }
            },
            _ => {}
        }
    }
    Ok(())
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn flag(headers: &HeaderMap, name: &str) -> bool {
    header(headers, name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// What an exec socket asks for.
struct ExecRequest {
    app: String,
    pid: String,
    /// The command, or `None` to attach.
    command: Option<String>,
    /// Output in BINARY frames (Slipway's client).
    binary: bool,
    /// A `convox run` session: its holder goes if the client drops out.
    run_session: bool,
}

/// `SOCKET /apps/{app}/processes/{pid}/exec`.
pub(crate) async fn exec(
    State(state): State<AppState>,
    Path((app, pid)): Path<(String, String)>,
    headers: HeaderMap,
    caller: SocketCaller,
    ws: WebSocketUpgrade,
) -> Response {
    let request = ExecRequest {
        app,
        pid,
        command: (!flag(&headers, ATTACH_HEADER))
            .then(|| header(&headers, "command").unwrap_or_default()),
        binary: flag(&headers, BINARY_HEADER),
        run_session: headers.contains_key("entrypoint"),
    };
    let refusal = caller.refusal().to_owned();
    let ended = caller.clone().ended(state.tokens.clone());
    let actor = match &caller {
        SocketCaller::Authenticated(c) => c.actor.clone(),
        SocketCaller::Refused(_) => slipway_rpc::actor::Actor::unknown(),
    };
    let span = tracing::Span::current();
    ws.on_upgrade(move |mut socket| {
        let run = async move {
            if refusal.is_empty() {
                // A token revoked mid-session ends it (the command is
                // killed with its session).
                tokio::select! {
                    () = session(&state, socket, request) => {}
                    () = ended => tracing::info!("exec session ended: its credentials were revoked or expired"),
                }
            } else {
                fail(&mut socket, &refusal).await;
            }
        };
        slipway_rpc::actor::scope(actor, run).instrument(span)
    })
}

/// Ends a session that could not start: `ERROR: <message>`, then marker 1
/// (so the CLI prints the message and exits 1), then the end-of-stream.
async fn fail(socket: &mut WebSocket, message: &str) {
    let _ = socket
        .send(Message::Text(format!("ERROR: {message}\n").into()))
        .await;
    end(socket, 1).await;
}

/// The marker in a frame of its own, then the end-of-stream.
async fn end<S>(sink: &mut S, code: i32)
where
    S: futures::Sink<Message> + Unpin,
{
    let _ = sink
        .send(Message::Text(format!("{EXIT_MARKER}{code}\n").into()))
        .await;
    let _ = sink.send(Message::Binary(Default::default())).await;
    let _ = sink.send(Message::Close(None)).await;
}

/// Opens the session `input` starts: through the rollout service's handle
/// when it runs in this process and offers one, else by gRPC.
async fn open_session(
    state: &AppState,
    input: tokio::sync::mpsc::Receiver<opb::ExecProcessRequest>,
) -> Result<ExecOutput, tonic::Status> {
    let input = ReceiverStream::new(input);
    let plane = state
        .local_rollout
        .and_then(slipway_rpc::in_process::handle::<Arc<dyn ExecPlane>>);
    match plane {
        Some(plane) => plane.exec(Box::pin(input.map(Ok))).await,
        None => {
            let response = state.processes.clone().exec_process(input).await?;
            Ok(Box::pin(response.into_inner()))
        }
    }
}

/// Runs one exec session to its end (or until the client goes away).
async fn session(state: &AppState, mut socket: WebSocket, request: ExecRequest) {
    if let Some(command) = &request.command {
        if command.trim().is_empty() {
            return fail(&mut socket, "empty command").await;
        }
        if let Err(e) = check_words(command) {
            return fail(&mut socket, &format!("invalid command: {e}")).await;
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let start = opb::ExecStart {
        app: request.app.clone(),
        process: request.pid.clone(),
        command: request.command.clone().unwrap_or_default(),
        attach: request.command.is_none(),
    };
    let _ = tx
        .send(opb::ExecProcessRequest {
            input: Some(opb::exec_process_request::Input::Start(start)),
        })
        .await;
    let mut output = match open_session(state, rx).await {
        Ok(output) => output,
        Err(status) => return fail(&mut socket, &ApiError::from(status).message).await,
    };
    let (mut sink, mut frames) = socket.split();
    // The client's frames: stdin, its end, and whether the client is gone.
    let gone = tokio_util::sync::CancellationToken::new();
    let reader = tokio::spawn({
        let gone = gone.clone();
        async move {
            use opb::exec_process_request::Input;
            let mut stdin = Some(tx);
            while let Some(frame) = frames.next().await {
                let input = match frame {
                    Ok(Message::Text(text)) if !text.is_empty() => {
                        Input::Stdin(text.as_bytes().to_vec().into())
                    }
                    Ok(Message::Binary(bytes)) if bytes.is_empty() => Input::StdinEnd(true),
                    Ok(Message::Binary(bytes)) => Input::Stdin(bytes),
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                let end = matches!(input, Input::StdinEnd(_));
                if let Some(tx) = &stdin {
                    let _ = tx
                        .send(opb::ExecProcessRequest { input: Some(input) })
                        .await;
                }
                if end {
                    // The session goes on; the command's stdin is closed.
                    stdin = None;
                }
            }
            gone.cancel();
            // Holding the sender until here keeps the call open while the
            // client is connected, with or without stdin.
            drop(stdin);
        }
    });
    let mut code = None;
    let mut pending = Vec::new();
    let mut first = true;
    loop {
        tokio::select! {
            message = output.next() => match message.transpose() {
                Ok(Some(opb::ExecProcessResponse { output: Some(item) })) => match item {
                    opb::exec_process_response::Output::Data(bytes) => {
                        let frame = if request.binary {
                            Message::Binary(bytes)
                        } else {
                            pending.extend_from_slice(&bytes);
                            if first && pending.first() == Some(&0) {
                                // A first chunk starting with NUL is taken for
                                // an ECS session blob by the convox CLI.
                                pending.splice(..1, "\u{FFFD}".bytes());
                            }
                            let text = crate::stream::take_utf8(&mut pending);
                            if text.is_empty() {
                                continue;
                            }
                            Message::Text(text.into())
                        };
                        first = false;
                        if sink.send(frame).await.is_err() {
                            break;
                        }
                    }
                    opb::exec_process_response::Output::ExitCode(c) => code = Some(c),
                },
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(status) => {
                    let message = ApiError::from(status).message;
                    let _ = sink.send(Message::Text(format!("ERROR: {message}\n").into())).await;
                    code = Some(1);
                    break;
                }
            },
            () = gone.cancelled() => {
                // Dropping the call abandons the session: the command is
                // killed (an attached one-off is stopped with it).
                if request.run_session {
                    let _ = state
                        .processes
                        .clone()
                        .stop_process(opb::StopProcessRequest {
                            app: request.app.clone(),
                            id: request.pid.clone(),
                        })
                        .await;
                }
                return;
            }
        }
    }
    if !pending.is_empty() {
        let text = String::from_utf8_lossy(&pending).into_owned();
        let _ = sink.send(Message::Text(text.into())).await;
    }
    // A stream that ended without a status broke on the way.
    end(&mut sink, code.unwrap_or(1)).await;
    reader.abort();
}
