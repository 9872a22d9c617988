//! The Convox rack API's wire shapes, shared by the two sides of it: the
//! gateway, which serves them, and the SDK (`slipway-client`), which reads
//! them. No I/O here, so the gateway does not link the SDK's HTTP client.
//!
//! - [`types`]: the JSON bodies of the Convox routes and Slipway's own.
//! - [`access`]: Slipway's token and audit routes.
//! - [`frames`]: the typed frames of a promotion's event stream.
//! - [`exec`]: the exec socket's exit marker and Slipway's handshake headers.
//! - [`webhooks`]: Slipway's webhook routes (receivers, keys, deliveries).

pub mod access;
pub mod exec;
pub mod frames;
pub mod types;
pub mod webhooks;
