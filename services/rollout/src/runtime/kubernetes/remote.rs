//! The Kubernetes exec protocol, client side: a websocket to
//! `/api/v1/namespaces/NS/pods/NAME/exec?command=…&stdin=true&stdout=true&stderr=true`
//! with subprotocol `v5.channel.k8s.io` (falling back to
//! `v4.channel.k8s.io`), binary messages whose first byte is the channel:
//! 0 stdin, 1 stdout, 2 stderr, 3 the error channel (a `Status`: `Success`,
//! or `Failure` whose `details.causes[{reason: ExitCode, message: "N"}]`
//! gives the exit status), 255 close (v5: `[255, 0]` ends the command's
//! stdin). A v4 server cannot be told that stdin ended: the command then
//! sees it end only when the session does.
//!
//! The upgrade goes through the kube client's own stack (its TLS, its
//! credentials) with `Client::send`, and the upgraded connection is handed
//! to tokio-tungstenite, the websocket crate the workspace already has;
//! kube's `ws` feature would pull a second tungstenite.

use futures::{SinkExt as _, StreamExt as _};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};
use tokio_tungstenite::tungstenite::protocol::Role;

use super::super::{RuntimeError, Session, SessionOutput};

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const CLOSE: u8 = 255;

/// An open exec stream.
pub(super) struct ExecStream {
    socket: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    /// Whether the server speaks v5 (stdin can be closed).
    v5: bool,
}

/// How a bridged session ended, for whoever keeps the books.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// The command exited with this status.
    Exit(i32),
    /// The caller dropped the output: the command was left running (the
    /// caller stops what it must).
    Abandoned,
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The exec path of `pod`'s `container` for `argv`.
fn exec_path(ns: &str, pod: &str, container: &str, argv: &[String]) -> String {
    let mut path = format!(
        "/api/v1/namespaces/{ns}/pods/{pod}/exec?container={}&stdin=true&stdout=true&stderr=true&tty=false",
        encode(container)
    );
    for arg in argv {
        path.push_str("&command=");
        path.push_str(&encode(arg));
    }
    path
}

/// Opens an exec of `argv` in `pod`'s `container`.
pub(super) async fn open(
    client: &kube::Client,
    ns: &str,
    pod: &str,
    container: &str,
    argv: &[String],
) -> Result<ExecStream, RuntimeError> {
    let what = format!("exec into pod {pod} in namespace {ns}");
    let key = generate_key();
    let request = http::Request::get(exec_path(ns, pod, container, argv))
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::SEC_WEBSOCKET_VERSION, "13")
        .header(http::header::SEC_WEBSOCKET_KEY, &key)
        .header(http::header::SEC_WEBSOCKET_PROTOCOL, format!("{V5}, {V4}"))
        .body(kube::client::Body::from(Vec::new()))
        .map_err(|e| RuntimeError::Backend(format!("kubernetes: cannot {what}: {e}")))?;
    let response = client
        .send(request)
        .await
        .map_err(|e| RuntimeError::Backend(format!("kubernetes: cannot {what}: {e}")))?;
    let status = response.status();
    if status != http::StatusCode::SWITCHING_PROTOCOLS {
        let body = response
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        let text = format!("kubernetes: cannot {what} ({status}): {message}");
        return Err(match status.as_u16() {
            404 => RuntimeError::NotFound(text),
            400 => RuntimeError::Refused(text),
            403 => RuntimeError::Backend(format!(
                "{text}; the rollout service needs verb \"create\" on resource \"pods/exec\""
            )),
            _ => RuntimeError::Backend(text),
        });
    }
    let (accept, protocol) = {
        let header = |name: http::header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        (
            header(http::header::SEC_WEBSOCKET_ACCEPT),
            header(http::header::SEC_WEBSOCKET_PROTOCOL),
        )
    };
    if accept != derive_accept_key(key.as_bytes()) {
        return Err(RuntimeError::Backend(format!(
            "kubernetes: cannot {what}: the server's Sec-WebSocket-Accept does not match"
        )));
    }
    let v5 = match protocol.as_str() {
        V5 => true,
        V4 => false,
        other => {
            return Err(RuntimeError::Backend(format!(
                "kubernetes: cannot {what}: the server chose subprotocol {other:?}, not {V5} or {V4}"
            )));
        }
    };
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| RuntimeError::Backend(format!("kubernetes: cannot {what}: {e}")))?;
    let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    Ok(ExecStream { socket, v5 })
}

/// The exit status an error-channel `Status` carries.
pub(super) fn exit_status(status: &[u8]) -> i32 {
    let Ok(status) = serde_json::from_slice::<serde_json::Value>(status) else {
        return 1;
    };
    if status["status"] == "Success" {
        return 0;
    }
    status["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["reason"] == "ExitCode")
        .and_then(|c| c["message"].as_str()?.parse().ok())
        .unwrap_or(1)
}

/// Bridges `stream` to a [`Session`]; the receiver tells how it ended.
/// Output items are stdout and stderr merged, then the exit status (1 when
/// the stream ended without one).
pub(super) fn bridge(stream: ExecStream) -> (Session, oneshot::Receiver<Ended>) {
    let (stdin_tx, mut stdin_rx) = mpsc::channel::<bytes::Bytes>(16);
    let (out_tx, out_rx) = mpsc::channel::<SessionOutput>(16);
    let (ended_tx, ended_rx) = oneshot::channel();
    let ExecStream { socket, v5 } = stream;
    tokio::spawn(async move {
        let (mut sink, mut source) = socket.split();
        let mut stdin_open = true;
        let mut code: Option<i32> = None;
        let ended = loop {
            tokio::select! {
                data = stdin_rx.recv(), if stdin_open => match data {
                    Some(data) => {
                        let mut frame = Vec::with_capacity(data.len() + 1);
                        frame.push(STDIN);
                        frame.extend_from_slice(&data);
                        if sink.send(Message::Binary(frame.into())).await.is_err() {
                            stdin_open = false;
                        }
                    }
                    None => {
                        stdin_open = false;
                        if v5 {
                            let _ = sink.send(Message::Binary(vec![CLOSE, STDIN].into())).await;
                        }
                    }
                },
                message = source.next() => match message {
                    Some(Ok(Message::Binary(bytes))) if bytes.len() > 1 => match bytes[0] {
                        STDOUT | STDERR => {
                            let data = SessionOutput::Data(bytes.slice(1..));
                            let sent = out_tx.send(data).await;
                            if sent.is_err() {
                                break Ended::Abandoned;
                            }
                        }
                        ERROR => code = Some(exit_status(&bytes[1..])),
                        _ => {}
                    },
                    ended @ (Some(Ok(Message::Close(_)) | Err(_)) | None) => {
                        if code.is_none() {
                            // A server that closes without the status (or a
                            // connection reset that lost it) leaves 1.
                            tracing::warn!(?ended, "exec session ended without an exit status; reporting 1");
                        }
                        break Ended::Exit(code.unwrap_or(1));
                    }
                    Some(Ok(_)) => {}
                },
                () = out_tx.closed() => break Ended::Abandoned,
            }
        };
        match ended {
            Ended::Exit(code) => {
                let _ = out_tx.send(SessionOutput::Exit(code)).await;
            }
            Ended::Abandoned => {
                let _ = sink.send(Message::Close(None)).await;
            }
        }
        let _ = ended_tx.send(ended);
    });
    (
        Session {
            stdin: stdin_tx,
            output: out_rx,
        },
        ended_rx,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_status_comes_from_the_status_causes() {
        assert_eq!(exit_status(br#"{"metadata":{},"status":"Success"}"#), 0);
        let failure = br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"42"}]}}"#;
        assert_eq!(exit_status(failure), 42);
        assert_eq!(exit_status(br#"{"status":"Failure","message":"boom"}"#), 1);
        assert_eq!(exit_status(b"not json"), 1);
    }

    #[test]
    fn commands_are_query_encoded_one_word_per_parameter() {
        let path = exec_path(
            "t-app",
            "web-abcde",
            "web",
            &[
                "/bin/sh".into(),
                "-c".into(),
                "echo \"$FOO\" & exit 3".into(),
            ],
        );
        assert!(
            path.ends_with(
                "&command=%2Fbin%2Fsh&command=-c&command=echo%20%22%24FOO%22%20%26%20exit%203"
            ),
            "{path}"
        );
    }
}
