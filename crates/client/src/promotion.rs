//! The typed form of a promotion's event stream, which a client asks for
//! with the [`TYPED_HEADER`] handshake header: each TEXT frame is then one
//! JSON [`PromotionFrame`], every event with its id (so a broken stream
//! resumes after the last one it delivered, sent as [`AFTER_HEADER`]), and
//! the last one before the end-of-stream carries the promotion's result, so
//! the client needs no second request to learn how the rollout ended.
//! Without the header the stream is plain event lines, as before.

use crate::Error;
use crate::socket::{LogStream, stream_error};

pub use slipway_convox::frames::{AFTER_HEADER, PromotionFrame, PromotionResult, TYPED_HEADER};

/// An open typed promotion event stream.
#[derive(Debug)]
pub struct PromotionEvents {
    inner: LogStream,
}

impl PromotionEvents {
    pub(crate) fn new(inner: LogStream) -> Self {
        Self { inner }
    }

    /// The next frame; `None` when the stream ended without its result (a
    /// dropped connection, or a gateway that predates typed frames). The
    /// rack's in-stream error report (`ERROR: …`) and an unreadable frame
    /// are errors.
    pub async fn next(&mut self) -> Option<Result<PromotionFrame, Error>> {
        let chunk = match self.inner.next().await? {
            Ok(chunk) => chunk,
            Err(e) => return Some(Err(e)),
        };
        let broken = |reason: String| Error::Stream {
            what: "promotion events".into(),
            reason,
        };
        if let Some(message) = stream_error(&chunk) {
            self.inner.close().await;
            return Some(Err(broken(message.to_owned())));
        }
        Some(serde_json::from_str(&chunk).map_err(|e| broken(format!("unreadable frame: {e}"))))
    }

    /// Closes the stream.
    pub async fn close(&mut self) {
        self.inner.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_a_stable_wire_form() {
        let event = PromotionFrame::Event {
            id: "7".into(),
            line: "t system/local/web started\n".into(),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(
            json,
            r#"{"event":{"id":"7","line":"t system/local/web started\n"}}"#
        );
        let result = PromotionFrame::Result(PromotionResult {
            state: "rolled_back".into(),
            reason: "web: not healthy".into(),
        });
        let json = serde_json::to_string(&result).unwrap();
        assert_eq!(
            json,
            r#"{"result":{"state":"rolled_back","reason":"web: not healthy"}}"#
        );
        assert_eq!(
            serde_json::from_str::<PromotionFrame>(&json).unwrap(),
            result
        );
    }
}
