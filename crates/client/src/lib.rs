//! The Slipway gateway SDK: the Convox rack API's JSON shapes and a typed
//! client for it (used by the `slipway` CLI and the end-to-end tests).
//!
//! ```no_run
//! # async fn demo() -> Result<(), slipway_client::Error> {
//! let client = slipway_client::Client::new("http://convox:secret@127.0.0.1:5443")?;
//! for release in client.releases("myapp", Some(5)).await? {
//!     println!("{} {}", release.id, release.description);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! `https://` racks are checked against the system's roots, plus a CA file
//! or nothing at all when [`TlsOptions`] says so ([`Client::with_tls`]).

mod access;
mod client;
mod error;
mod exec;
mod promotion;
mod rack;
mod socket;
mod tls;
mod webhooks;

pub use access::NewToken;
pub use client::{BuildOptions, Client, LogOptions, ReleaseOptions, go_duration};
pub use error::Error;
pub use exec::{
    ATTACH_HEADER, BINARY_HEADER, EXIT_MARKER, ExecOutcome, ExecSession, RunOptions,
    TIMEOUT_HEADER, exit_marker,
};
pub use promotion::{AFTER_HEADER, PromotionEvents, PromotionFrame, PromotionResult, TYPED_HEADER};
pub use rack::RackUrl;
pub use slipway_convox::webhooks as webhook_types;
pub use slipway_convox::{access as access_types, types};
pub use socket::{LogStream, stream_error};
pub use tls::TlsOptions;
