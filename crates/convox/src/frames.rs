//! The typed form of a promotion's event stream (asked for with the
//! [`TYPED_HEADER`] handshake header): one JSON [`PromotionFrame`] per TEXT
//! frame, each event with its id (a broken stream resumes after the last one
//! delivered, sent as [`AFTER_HEADER`]), the last one carrying the result.

use serde::{Deserialize, Serialize};

/// The handshake header (value `true`) that asks for typed frames.
pub const TYPED_HEADER: &str = "Typed";
/// The handshake header naming the event id to resume after; absent or
/// empty for the start.
pub const AFTER_HEADER: &str = "After";

/// One frame of a typed promotion event stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionFrame {
    /// A rollout event: its id, and its line as the plain stream shows it
    /// (`<time> system/<runtime>/<object> <message>\n`).
    Event {
        /// The event's id, to resume after.
        id: String,
        /// The printed line, newline included.
        line: String,
    },
    /// The last frame: how the rollout ended.
    Result(PromotionResult),
}

/// How a promotion ended, as [`crate::types::Promotion`] names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionResult {
    /// `succeeded`, `rolled_back`, `failed` or `cancelled`.
    pub state: String,
    /// Why it did not succeed; empty when it did.
    #[serde(default)]
    pub reason: String,
}
