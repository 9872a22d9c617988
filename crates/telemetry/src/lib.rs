//! Logging, tracing and OpenTelemetry set-up for every binary: filter from
//! `RUST_LOG` (default `info`), human-readable lines on stderr, or JSON lines
//! when `SLIPWAY_LOG_FORMAT=json` (deployed services). When
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans (through
//! `tracing-opentelemetry`) and metrics are also exported over OTLP/gRPC,
//! configured by the standard `OTEL_*` variables the SDK reads
//! (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`,
//! `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_EXPORTER_OTLP_*`, `OTEL_TRACES_SAMPLER`);
//! the [`Guard`] flushes and shuts the exporters down when it drops.
//!
//! [`propagation`] carries W3C trace context across gRPC and HTTP hops and
//! [`metrics`] holds the instruments the services record.

pub mod metrics;
pub mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, Registry};

pub use propagation::RequestSpan;

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
    providers: Option<Providers>,
}

/// The OpenTelemetry providers of an exporting process.
struct Providers {
    /// `None` when `OTEL_TRACES_EXPORTER` turns spans off.
    tracer: Option<SdkTracerProvider>,
    /// `None` when `OTEL_METRICS_EXPORTER` turns metrics off.
    meter: Option<SdkMeterProvider>,
}

impl Providers {
    /// Exports what is buffered and stops the exporters (blocking: the
    /// batch processor and the periodic reader run on their own threads).
    fn shutdown(self) {
        if let Some(tracer) = self.tracer
            && let Err(e) = tracer.shutdown()
        {
            eprintln!("telemetry: failed to flush spans: {e}");
        }
        if let Some(meter) = self.meter
            && let Err(e) = meter.shutdown()
        {
            eprintln!("telemetry: failed to flush metrics: {e}");
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(providers) = self.providers.take() {
            providers.shutdown();
        }
    }
}

/// Initialises the global subscriber for binary `name` (its Cargo binary
/// name, e.g. `slipway-release`: the default OTel `service.name`). Calling
/// it twice (as tests that start several services do) keeps the first
/// subscriber. Must run inside the Tokio runtime: the OTLP client is tonic's.
pub fn init(name: &'static str) -> Guard {
    init_with_default(name, "info")
}

/// Like [`init`], with another log filter when `RUST_LOG` is unset (the
/// embedded rack shares a terminal with the CLI and defaults to `warn`).
/// Exported spans always default to `info`, whatever the log filter.
pub fn init_with_default(name: &'static str, default_filter: &str) -> Guard {
    let format = match std::env::var("SLIPWAY_LOG_FORMAT").as_deref() {
        Ok("json") => Format::Json,
        _ => Format::Text,
    };
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let mut layers: Vec<Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync>> =
        vec![match format {
            Format::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_filter(filter())
                .boxed(),
            Format::Text => tracing_subscriber::fmt::layer()
                .compact()
                .with_writer(std::io::stderr)
                .with_filter(filter())
                .boxed(),
        }];
    let mut notes = Vec::new();
    let (providers, otel_error) = match otel(name, &mut notes) {
        Ok(providers) => (providers, None),
        Err(e) => (None, Some(e)),
    };
    if let Some(tracer) = providers.as_ref().and_then(|p| p.tracer.as_ref()) {
        let tracer = tracer.tracer("slipway");
        let spans = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_threads(false)
                .with_filter(spans)
                .boxed(),
        );
    }
    if tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_err()
    {
        // Someone else's subscriber is in place: exporting spans through it
        // is impossible, so do not keep exporters running for nothing.
        if let Some(providers) = providers {
            providers.shutdown();
        }
        return Guard { providers: None };
    }
    if let Some(e) = otel_error {
        tracing::warn!("OTLP export disabled: {e}");
    }
    for note in notes {
        tracing::warn!("{note}");
    }
    if let Some(providers) = &providers {
        if let Some(tracer) = &providers.tracer {
            opentelemetry::global::set_tracer_provider(tracer.clone());
        }
        if let Some(meter) = &providers.meter {
            opentelemetry::global::set_meter_provider(meter.clone());
        }
        tracing::info!(
            service = name,
            traces = providers.tracer.is_some(),
            metrics = providers.meter.is_some(),
            "exporting over OTLP"
        );
    }
    tracing::debug!(service = name, "telemetry initialised");
    Guard { providers }
}

/// The OTLP providers, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and
/// `OTEL_SDK_DISABLED` is not `true`), each of spans and metrics unless its
/// `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` says `none`. What is
/// worth a warning once logging is up goes to `notes`.
fn otel(
    name: &'static str,
    notes: &mut Vec<String>,
) -> Result<Option<Providers>, Box<dyn std::error::Error>> {
    let set = |var: &str| std::env::var(var).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT")
        || std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Ok(None);
    }
    let mut wants = |var: &str| {
        let (otlp, note) = exporter_choice(var, std::env::var(var).ok().as_deref());
        notes.extend(note);
        otlp
    };
    let (traces, metrics) = (
        wants("OTEL_TRACES_EXPORTER"),
        wants("OTEL_METRICS_EXPORTER"),
    );
    if !traces && !metrics {
        return Ok(None);
    }
    let resource = resource(name);
    let tracer = if traces {
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        Some(
            SdkTracerProvider::builder()
                .with_resource(resource.clone())
                .with_batch_exporter(spans)
                .build(),
        )
    } else {
        None
    };
    let meter = if metrics {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()?;
        Some(
            SdkMeterProvider::builder()
                .with_resource(resource)
                .with_periodic_exporter(exporter)
                .build(),
        )
    } else {
        None
    };
    Ok(Some(Providers { tracer, meter }))
}

/// Whether `var` (a comma-separated exporter list, as the OpenTelemetry
/// spec defines `OTEL_TRACES_EXPORTER` and `OTEL_METRICS_EXPORTER`) asks for
/// OTLP: unset or empty means the default, `otlp`; `none` turns the signal
/// off. Exporters other than those two are not built in; naming one gives a
/// note saying so.
fn exporter_choice(var: &str, value: Option<&str>) -> (bool, Option<String>) {
    let names: Vec<String> = value
        .unwrap_or("")
        .split(',')
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return (true, None);
    }
    let otlp = names.iter().any(|n| n == "otlp");
    let unsupported: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !matches!(*n, "otlp" | "none"))
        .collect();
    let note = (!unsupported.is_empty()).then(|| {
        format!(
            "{var}: {} not supported (only otlp and none); {}",
            unsupported.join(", "),
            if otlp {
                "exporting over OTLP only"
            } else {
                "not exporting this signal"
            }
        )
    });
    (otlp, note)
}

/// The SDK's resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
/// telemetry.sdk.*), with `service.name` defaulting to the binary's name
/// instead of `unknown_service`, and `service.version` from Cargo.
fn resource(name: &'static str) -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::new("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    let mut builder = Resource::builder();
    if !named {
        builder = builder.with_service_name(Value::from(name));
    }
    if detected
        .get(&opentelemetry::Key::new("service.version"))
        .is_none()
    {
        builder =
            builder.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    builder.build()
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

#[cfg(test)]
mod tests {
    use super::exporter_choice;

    #[test]
    fn exporter_variables_follow_the_spec() {
        let var = "OTEL_TRACES_EXPORTER";
        for default in [None, Some(""), Some(" ")] {
            assert_eq!(exporter_choice(var, default), (true, None));
        }
        assert_eq!(exporter_choice(var, Some("otlp")), (true, None));
        assert_eq!(exporter_choice(var, Some("OTLP")), (true, None));
        assert_eq!(exporter_choice(var, Some("none")), (false, None));
        assert_eq!(
            exporter_choice(var, Some("zipkin")),
            (
                false,
                Some(
                    "OTEL_TRACES_EXPORTER: zipkin not supported (only otlp and none); not exporting this signal"
                        .into()
                )
            )
        );
        assert_eq!(
            exporter_choice("OTEL_METRICS_EXPORTER", Some("otlp, prometheus")),
            (
                true,
                Some(
                    "OTEL_METRICS_EXPORTER: prometheus not supported (only otlp and none); exporting over OTLP only"
                        .into()
                )
            )
        );
    }
}
