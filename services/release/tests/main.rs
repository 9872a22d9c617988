//! Release service tests: the real server in-process on 127.0.0.1:0, driven
//! through the generated gRPC client, against real PostgreSQL and SQLite.
//! Every behaviour test runs on both backends (the conformance suite).

#![allow(unreachable_pub)]
mod helpers;

mod access;
mod bounds;
mod database;
mod dispatch;
mod idempotency;
mod ledger;
mod promotions;
mod relay;
mod safety;
mod webhooks;
