//! The rack's websocket streams (build logs, app logs, promotion events),
//! framed as stdapi frames them: payload only in TEXT frames, and any BINARY
//! frame, a close frame or a closed connection ends the stream. Options
//! travel as handshake headers, never in a query string.

use std::sync::Arc;

use futures::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::client::root_cause;
use crate::error::api_message;
use crate::{Error, RackUrl};

/// Extra handshake headers.
#[derive(Clone, Debug, Default)]
pub(crate) struct SocketOptions {
    /// `(name, value)` pairs, e.g. `("Since", "5m0s")`.
    pub(crate) headers: Vec<(&'static str, String)>,
    /// How a `wss://` rack's certificate is checked (required for one).
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

/// A websocket's connection: plain TCP or TLS over it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}

/// An open stream of text chunks. Chunk boundaries carry no meaning.
#[derive(Debug)]
pub struct LogStream {
    what: String,
    socket: Option<WebSocketStream<Box<dyn Io>>>,
}

impl LogStream {
    /// Opens the websocket at `segments` under the rack's prefix.
    pub(crate) async fn connect(
        rack: &RackUrl,
        segments: &[&str],
        options: &SocketOptions,
    ) -> Result<Self, Error> {
        let what = format!("/{}", segments.join("/"));
        let broken = |reason: String| Error::Stream {
            what: what.clone(),
            reason,
        };
        let mut request = rack
            .socket(segments)
            .into_client_request()
            .map_err(|e| broken(e.to_string()))?;
        let headers = request.headers_mut();
        let mut add = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        };
        add("User-Agent", concat!("slipway/", env!("CARGO_PKG_VERSION")));
        add("Origin", &rack.origin());
        if let Some(auth) = rack.authorization() {
            add("Authorization", &auth);
        }
        for (name, value) in &options.headers {
            add(name, value);
        }
        let tcp = TcpStream::connect(rack.authority())
            .await
            .map_err(|e| Error::Connect {
                rack: rack.to_string(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if rack.is_https() {
            let config = options
                .tls
                .clone()
                .ok_or_else(|| Error::Tls("no TLS configuration for a wss:// stream".into()))?;
            let name = rack
                .server_name()
                .ok_or_else(|| broken("the rack URL has no usable host name".into()))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| match crate::tls::certificate_problem(&e) {
                    Some(problem) => Error::Certificate {
                        rack: rack.to_string(),
                        problem,
                    },
                    None => Error::Connect {
                        rack: rack.to_string(),
                        reason: format!("TLS handshake failed: {e}"),
                    },
                })?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (socket, _) =
            tokio_tungstenite::client_async(request, io)
                .await
                .map_err(|e| match e {
                    WsError::Http(response) => {
                        let status = response.status().as_u16();
                        Error::Api {
                            status,
                            message: api_message(
                                status,
                                response.body().as_deref().unwrap_or_default(),
                            ),
                        }
                    }
                    other => broken(root_cause(&other)),
                })?;
        Ok(Self {
            what,
            socket: Some(socket),
        })
    }

    /// The next text chunk; `None` at the end of the stream. A stream that
    /// fails server-side carries `ERROR: <message>\n` as its last chunk (see
    /// [`stream_error`]).
    pub async fn next(&mut self) -> Option<Result<String, Error>> {
        loop {
            let socket = self.socket.as_mut()?;
            let item = match socket.next().await {
                Some(Ok(Message::Text(text))) if text.is_empty() => continue,
                Some(Ok(Message::Text(text))) => Some(Ok(text.as_str().to_owned())),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                // Any binary frame or a close is the end of the stream.
                Some(Ok(Message::Binary(_) | Message::Close(_))) | None => None,
                // A dropped connection also ends the stream cleanly, as for the `convox` CLI.
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => None,
                Some(Err(WsError::Protocol(e)))
                    if e.to_string().contains("without closing handshake") =>
                {
                    None
                }
                Some(Err(e)) => Some(Err(Error::Stream {
                    what: self.what.clone(),
                    reason: root_cause(&e),
                })),
            };
            if !matches!(item, Some(Ok(_))) {
                self.close().await;
            }
            return item;
        }
    }

    /// The route and the socket (`None` once closed), for a caller that
    /// also writes to it (an exec session).
    pub(crate) fn into_parts(self) -> (String, Option<WebSocketStream<Box<dyn Io>>>) {
        (self.what, self.socket)
    }

    /// Closes the stream (politely, ignoring errors); later calls to
    /// [`LogStream::next`] return `None`.
    pub async fn close(&mut self) {
        if let Some(mut socket) = self.socket.take() {
            let _ = socket.close(None).await;
        }
    }
}

/// The message of a chunk that is the rack's in-stream error report
/// (`ERROR: <message>\n`), as sent on a failed login or upstream error.
pub fn stream_error(chunk: &str) -> Option<&str> {
    chunk
        .strip_prefix("ERROR: ")
        .map(|m| m.trim_end_matches(['\n', '\r']))
}

#[cfg(test)]
mod tests {
    use super::stream_error;

    #[test]
    fn error_chunks_are_recognised() {
        assert_eq!(
            stream_error("ERROR: invalid authentication\n"),
            Some("invalid authentication")
        );
        assert_eq!(
            stream_error("2026-01-01T00:00:00Z system/local/web started\n"),
            None
        );
    }
}
