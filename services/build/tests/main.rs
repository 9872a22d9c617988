//! Build service tests: the real server in-process on 127.0.0.1:0, driven
//! through the generated gRPC client, against real PostgreSQL and SQLite,
//! a real filesystem and real processes. The release service is a fake that
//! records CreateRelease calls.

#![allow(unreachable_pub)]
mod helpers;

mod bus;
mod cancel;
mod database;
mod idempotency;
mod logs;
mod oci;
mod releases;
mod s3;
mod snapshot;
mod store;
mod unpack;
