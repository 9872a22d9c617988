//! One-off processes and exec sessions: `POST
//! /apps/{app}/services/{service}/processes` (options as headers, as the
//! `convox` CLI sends them), `GET`/`DELETE /apps/{app}/processes/{pid}`, and
//! the exec socket, whose end carries the remote exit status as the Convox
//! marker (`F1E49A85-…:<code>\n`, a text frame of its own).
//!
//! Slipway's own client asks for two extensions in the handshake: `Attach:
//! true` (the session is the one-off's own command, started with `Attach:
//! true`, instead of a command exec'd into a holder) and `Binary: true`
//! (output in non-empty BINARY frames, byte for byte; TEXT frames then carry
//! only the marker and `ERROR:` lines). Stdin goes up as BINARY frames; an
//! empty one ends it.

use futures::{SinkExt as _, StreamExt as _};
use hyper::Method;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::client::{Body, root_cause};
use crate::socket::LogStream;
use crate::types::Process;
use crate::{Client, Error};

pub use slipway_convox::exec::{ATTACH_HEADER, BINARY_HEADER, EXIT_MARKER, TIMEOUT_HEADER};

/// Options of a one-off run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Run this release instead of the app's active one.
    pub release: Option<String>,
    /// Stop it after this many seconds (server default 3600).
    pub timeout: Option<u64>,
    /// Keep its stdin and output for [`Client::process_attach`].
    pub attach: bool,
}

/// How an exec session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutcome {
    /// The remote exit status (the marker's; 0 if none came, as for the
    /// `convox` CLI).
    pub code: i32,
    /// What the rack reported in-stream (`ERROR: …`), if anything.
    pub error: Option<String>,
}

/// An open exec socket.
#[derive(Debug)]
pub struct ExecSession {
    stream: LogStream,
}

impl Client {
    /// `POST /apps/{app}/services/{service}/processes`: starts a one-off
    /// process running `command` (empty: the service's own command).
    pub async fn process_run(
        &self,
        app: &str,
        service: &str,
        command: &str,
        options: &RunOptions,
    ) -> Result<Process, Error> {
        let mut headers = vec![("Command", command.to_owned())];
        if let Some(release) = &options.release {
            headers.push(("Release", release.clone()));
        }
        if let Some(timeout) = options.timeout {
            headers.push((TIMEOUT_HEADER, timeout.to_string()));
        }
        if options.attach {
            headers.push((ATTACH_HEADER, "true".to_owned()));
        }
        self.json(
            Method::POST,
            &["apps", app, "services", service, "processes"],
            &[],
            Body::Headers(headers),
        )
        .await
    }

    /// `GET /apps/{app}/processes/{pid}`.
    pub async fn process(&self, app: &str, id: &str) -> Result<Process, Error> {
        self.json(
            Method::GET,
            &["apps", app, "processes", id],
            &[],
            Body::Empty,
        )
        .await
    }

    /// `DELETE /apps/{app}/processes/{pid}`: stops it.
    pub async fn process_stop(&self, app: &str, id: &str) -> Result<(), Error> {
        self.call(
            Method::DELETE,
            &["apps", app, "processes", id],
            &[],
            Body::Empty,
        )
        .await
        .map(drop)
    }

    /// Opens a session with the one-off `id` started with
    /// [`RunOptions::attach`]: its own command's stdin and output.
    pub async fn process_attach(&self, app: &str, id: &str) -> Result<ExecSession, Error> {
        self.exec_socket(app, id, vec![(ATTACH_HEADER, "true".to_owned())])
            .await
    }

    /// Opens a session running `command` inside process `id`.
    pub async fn process_exec(
        &self,
        app: &str,
        id: &str,
        command: &str,
    ) -> Result<ExecSession, Error> {
        self.exec_socket(app, id, vec![("Command", command.to_owned())])
            .await
    }

    async fn exec_socket(
        &self,
        app: &str,
        id: &str,
        mut headers: Vec<(&'static str, String)>,
    ) -> Result<ExecSession, Error> {
        headers.push((BINARY_HEADER, "true".to_owned()));
        headers.push(("Tty", "false".to_owned()));
        let options = self.socket_options(headers);
        let stream = LogStream::connect(
            self.rack(),
            &["apps", app, "processes", id, "exec"],
            &options,
        )
        .await?;
        Ok(ExecSession { stream })
    }
}

/// The most stdin one frame carries: a bulk copy (`run web cat < dump`)
/// moves in few, large steps, each of which wakes every hop on the way.
const STDIN_CHUNK: usize = 1 << 20;

/// The exit status a marker frame carries, if `text` is one.
pub fn exit_marker(text: &str) -> Option<i32> {
    text.strip_prefix(EXIT_MARKER)?.trim().parse().ok()
}

impl ExecSession {
    /// Copies `stdin` to the command (then ends its stdin) and its output
    /// to `stdout` until the rack ends the stream; says how it ended.
    pub async fn run(
        self,
        stdin: impl AsyncRead + Unpin + Send + 'static,
        mut stdout: impl AsyncWrite + Unpin,
    ) -> Result<ExecOutcome, Error> {
        let (what, socket) = self.stream.into_parts();
        let Some(socket) = socket else {
            return Ok(ExecOutcome {
                code: 0,
                error: None,
            });
        };
        let (mut sink, mut frames) = socket.split();
        // Stdin goes up in a task of its own, so that output keeps flowing
        // down while a stdin frame waits to be sent (full duplex: `cat` of a
        // large input would otherwise stall in turns); the command may also
        // end before its stdin does (`sleep 20 | … exec … true`).
        let writer = tokio::spawn(async move {
            // Chunks split off one buffer, no copies.
            let mut chunks = tokio_util::io::ReaderStream::with_capacity(stdin, STDIN_CHUNK);
            loop {
                let chunk = match chunks.next().await {
                    Some(Ok(chunk)) => chunk,
                    None | Some(Err(_)) => bytes::Bytes::new(),
                };
                let end = chunk.is_empty();
                // The empty binary frame is the end of stdin. A failed send
                // shows up as the end of the output.
                if sink.send(Message::Binary(chunk)).await.is_err() || end {
                    return sink;
                }
            }
        });
        let broken = |e: WsError| Error::Stream {
            what: what.clone(),
            reason: root_cause(&e),
        };
        let mut outcome = ExecOutcome {
            code: 0,
            error: None,
        };
        loop {
            match frames.next().await {
                Some(Ok(Message::Binary(bytes))) if bytes.is_empty() => break,
                Some(Ok(Message::Binary(bytes))) => {
                    stdout.write_all(&bytes).await.map_err(|e| Error::Stream {
                        what: what.clone(),
                        reason: format!("cannot write the output: {e}"),
                    })?;
                }
                Some(Ok(Message::Text(text))) => {
                    if let Some(code) = exit_marker(&text) {
                        outcome.code = code;
                    } else if let Some(message) = crate::stream_error(&text) {
                        outcome.error = Some(message.to_owned());
                    } else {
                        let _ = stdout.write_all(text.as_bytes()).await;
                    }
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => break,
                Some(Err(e)) => return Err(broken(e)),
            }
        }
        writer.abort();
        let _ = stdout.flush().await;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_carry_the_exit_status() {
        assert_eq!(exit_marker(&format!("{EXIT_MARKER}42\n")), Some(42));
        assert_eq!(exit_marker(&format!("{EXIT_MARKER}0")), Some(0));
        assert_eq!(exit_marker("ERROR: process not found: x\n"), None);
        assert_eq!(exit_marker(&format!("{EXIT_MARKER}x\n")), None);
    }
}
