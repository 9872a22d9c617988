//! The exec socket's wire words: the Convox exit-status marker, and the
//! handshake headers Slipway's own client adds (see the gateway's
//! `processes` module for what each does).

/// What precedes the exit status in an exec stream (`sdk/sdk.go`
/// `statusCodePrefix` in Convox).
pub const EXIT_MARKER: &str = "F1E49A85-0AD7-4AEF-A618-C249C6E6568D:";
/// Slipway: on the run POST, keep the one-off's stdin and output for a
/// session; on the exec socket, attach to that one-off's own command.
pub const ATTACH_HEADER: &str = "Attach";
/// Slipway: exec output in BINARY frames, byte for byte.
pub const BINARY_HEADER: &str = "Binary";
/// Slipway: the one-off's timeout in seconds (Convox sends `Command: sleep
/// N` instead).
pub const TIMEOUT_HEADER: &str = "Timeout";
