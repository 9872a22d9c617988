//! The metrics Slipway exports (OTLP, when an endpoint is configured; no-ops
//! otherwise). Names and attributes live here, in one place, so dashboards
//! have one list to read:
//!
//! | instrument | kind | unit | attributes |
//! | --- | --- | --- | --- |
//! | `slipway.promotions` | counter | `{promotion}` | `outcome`: `started`, `succeeded`, `rolled_back`, `failed`, `cancelled` |
//! | `slipway.rollout.duration` | histogram | `s` | `outcome`: `succeeded`, `rolled_back`, `failed` |
//! | `slipway.build.duration` | histogram | `s` | `status`: `complete`, `failed`, `cancelled` |
//! | `rpc.server.duration` | histogram | `s` | `rpc.method` (`/pkg.Service/Method`), `rpc.grpc.status_code` |
//!
//! Instruments are created on first use from the global meter provider, so
//! they must not be used before `init` (every binary calls it first).

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

/// Bucket bounds (seconds) for gRPC calls: 1 ms to 30 s.
const RPC_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bucket bounds (seconds) for builds and rollouts: 1 s to 1 h.
const LONG_BOUNDS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

fn meter() -> Meter {
    opentelemetry::global::meter("slipway")
}

fn histogram(name: &'static str, description: &'static str, bounds: &[f64]) -> Histogram<f64> {
    meter()
        .f64_histogram(name)
        .with_description(description)
        .with_unit("s")
        .with_boundaries(bounds.to_vec())
        .build()
}

/// Counts a promotion event: `started` when one is recorded, then its end.
pub fn promotion(outcome: &'static str) {
    static COUNTER: OnceLock<Counter<u64>> = OnceLock::new();
    COUNTER
        .get_or_init(|| {
            meter()
                .u64_counter("slipway.promotions")
                .with_description("Promotions started and how they ended")
                .with_unit("{promotion}")
                .build()
        })
        .add(1, &[KeyValue::new("outcome", outcome)]);
}

/// Records a rollout that reached a terminal phase, from its start.
pub fn rollout_finished(duration: Duration, outcome: &'static str) {
    static HISTOGRAM: OnceLock<Histogram<f64>> = OnceLock::new();
    HISTOGRAM
        .get_or_init(|| {
            histogram(
                "slipway.rollout.duration",
                "Time from a rollout's start to its terminal phase",
                LONG_BOUNDS,
            )
        })
        .record(duration.as_secs_f64(), &[KeyValue::new("outcome", outcome)]);
}

/// Records a build that ended, from its start to its recorded outcome.
pub fn build_finished(duration: Duration, status: &str) {
    static HISTOGRAM: OnceLock<Histogram<f64>> = OnceLock::new();
    HISTOGRAM
        .get_or_init(|| {
            histogram(
                "slipway.build.duration",
                "Time from a build's start to its end",
                LONG_BOUNDS,
            )
        })
        .record(
            duration.as_secs_f64(),
            &[KeyValue::new("status", status.to_owned())],
        );
}

/// Records one gRPC call a server answered (until its response headers:
/// for streams, the time to open them).
pub fn grpc_server_call(method: &str, code: i32, duration: Duration) {
    static HISTOGRAM: OnceLock<Histogram<f64>> = OnceLock::new();
    HISTOGRAM
        .get_or_init(|| {
            histogram(
                "rpc.server.duration",
                "gRPC server latency by method and status code",
                RPC_BOUNDS,
            )
        })
        .record(
            duration.as_secs_f64(),
            &[
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.method", method.to_owned()),
                KeyValue::new("rpc.grpc.status_code", i64::from(code)),
            ],
        );
}
