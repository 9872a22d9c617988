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
//! Only `http://` racks work for now: the SDK has no TLS client yet.

mod client;
mod error;
mod rack;
mod socket;
pub mod types;

pub use client::{BuildOptions, Client, LogOptions, ReleaseOptions, go_duration};
pub use error::Error;
pub use rack::RackUrl;
pub use socket::{LogStream, stream_error};
