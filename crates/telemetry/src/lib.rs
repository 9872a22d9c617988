//! Logging and tracing set-up for every binary: filter from `RUST_LOG`
//! (default `info`), human-readable lines on stderr, or JSON lines when
//! `SLIPWAY_LOG_FORMAT=json` (deployed services). Export over OTLP comes with
//! the scale setup; the guard returned here is where it will flush.

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Compact text for people.
    #[default]
    Text,
    /// One JSON object per line for log collectors.
    Json,
}

/// Flushes telemetry when dropped; keep it alive for the life of `main`.
#[must_use = "telemetry is flushed when the guard drops"]
pub struct Guard {
    _private: (),
}

/// Initialises the global subscriber for binary `name`. Calling it twice (as
/// tests that start several services do) keeps the first subscriber.
pub fn init(name: &'static str) -> Guard {
    init_with_default(name, "info")
}

/// Like [`init`], with another filter when `RUST_LOG` is unset (the
/// embedded rack shares a terminal with the CLI and defaults to `warn`).
pub fn init_with_default(name: &'static str, default_filter: &str) -> Guard {
    let format = match std::env::var("SLIPWAY_LOG_FORMAT").as_deref() {
        Ok("json") => Format::Json,
        _ => Format::Text,
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        Format::Json => builder.json().try_init(),
        Format::Text => builder.compact().try_init(),
    };
    tracing::debug!(service = name, "telemetry initialised");
    Guard { _private: () }
}

/// For tests: logs only when `TEST_LOG=1`, so suites stay silent by default.
pub fn init_for_tests() {
    if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("debug")),
            )
            .with_test_writer()
            .try_init();
    }
}
