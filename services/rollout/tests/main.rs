//! The rollout service's tests: one binary. Real processes (the
//! `slipway-testapp` binary), real sockets, SQLite and PostgreSQL.

mod audit;
mod bus;
mod crash;
mod database;
mod helpers;
mod kube_oneoff;
mod kubectl;
mod kubernetes;
mod logs;
mod oneoff_ends;
mod release_phase;
mod rollouts;
mod runtime;
mod scale_k8s;
mod store;
