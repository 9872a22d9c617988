//! The embedded rack's tests: one binary, a module per concern.

mod quickstart;
mod transport;
