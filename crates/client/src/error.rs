//! What can go wrong talking to a rack. The `Display` of every variant is a
//! sentence a person can act on; for [`Error::Api`] it is exactly the
//! server's message, as the `convox` CLI prints it after `ERROR: `.

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rack answered with a status of 400 or more.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The server's message (its plain-text body, trimmed), or
        /// `response status N` when the body was empty.
        message: String,
    },
    /// The rack URL cannot be used.
    #[error("invalid rack URL {url:?}: {reason}")]
    RackUrl {
        /// The URL with any password removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The rack could not be reached.
    #[error("could not connect to the rack at {rack}: {reason} (is it running? check RACK_URL)")]
    Connect {
        /// The rack, without credentials.
        rack: String,
        /// The underlying reason.
        reason: String,
    },
    /// The rack's TLS certificate is not trusted by this client.
    #[error(
        "the rack at {rack} presented a TLS certificate this client does not trust: {problem}. If the rack uses a self-signed certificate, trust it with SLIPWAY_CA_FILE=PATH (or --ca-file; slipway-rack prints the path), or skip verification with SLIPWAY_INSECURE=1 (or --insecure)"
    )]
    Certificate {
        /// The rack, without credentials.
        rack: String,
        /// What is wrong with the certificate.
        problem: String,
    },
    /// TLS could not be set up (e.g. an unreadable CA file).
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The connection broke during a call.
    #[error("request to the rack at {rack} failed: {reason}")]
    Transport {
        /// The rack, without credentials.
        rack: String,
        /// The underlying reason.
        reason: String,
    },
    /// The rack answered something that is not the expected JSON.
    #[error("unexpected answer from {what}: {reason}")]
    Decode {
        /// The route, e.g. `GET /apps/myapp`.
        what: String,
        /// The JSON error.
        reason: String,
    },
    /// A websocket stream failed part way.
    #[error("stream {what} broke: {reason}")]
    Stream {
        /// The route.
        what: String,
        /// The underlying reason.
        reason: String,
    },
}

impl Error {
    /// The HTTP status of an [`Error::Api`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The message of an HTTP error body, as the `convox` CLI reads it: JSON
/// `{"error":"msg"}`, else the trimmed text, else `response status N`.
pub(crate) fn api_message(status: u16, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct JsonError {
        error: String,
    }
    if let Ok(JsonError { error }) = serde_json::from_slice::<JsonError>(body) {
        return error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        format!("response status {status}")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::api_message;

    #[test]
    fn messages_come_from_text_json_or_the_status() {
        assert_eq!(
            api_message(401, b"invalid authentication\n"),
            "invalid authentication"
        );
        assert_eq!(
            api_message(404, br#"{"error":"app not found: x"}"#),
            "app not found: x"
        );
        assert_eq!(api_message(404, b""), "response status 404");
    }
}
