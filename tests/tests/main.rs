//! End-to-end tests: a whole rack in-process (release, build, rollout and
//! gateway on loopback gRPC, SQLite, the local runtime), driven by the real
//! `slipway` binary and by raw requests shaped like the `convox` CLI's.

#![allow(unreachable_pub)]

mod auth;
mod bounds;
mod builds;
mod chaos;
mod convox_wire;
mod deploy_stream;
mod env_basis;
mod env_values;
mod faults;
mod isolation;
mod log_resume;
mod logs;
mod outage;
mod processes;
mod rolling;
mod scale;
mod scaling;
mod telemetry;
mod tokens;
mod webhooks;
mod workflow;
