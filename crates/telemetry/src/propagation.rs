//! W3C trace context (`traceparent`/`tracestate`) across process hops: the
//! request span of a server (gRPC or HTTP) takes the caller's context as its
//! parent, and outgoing calls carry the current span's context. Both are
//! no-ops when no OpenTelemetry layer is installed (nothing is exported, so
//! there is nothing to link).

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The OTel context carried by `headers`, when they carry a valid one.
pub fn extract(headers: &HeaderMap) -> Option<opentelemetry::Context> {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes the context carried by `headers` the parent of `span`, which must
/// be new (not yet entered). Returns whether a parent was set.
pub fn set_parent(span: &Span, headers: &HeaderMap) -> bool {
    extract(headers).is_some_and(|cx| span.set_parent(cx).is_ok())
}

/// Writes `span`'s context into `headers` (`traceparent`, `tracestate`).
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

/// The trace id of `span` in hex, when it belongs to an OTel trace.
pub fn trace_id(span: &Span) -> Option<String> {
    let cx = span.context();
    let span_context = cx.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// `tower_http`'s `MakeSpan` for request spans: an `info` span named after
/// the call (`slipway.release.v1.ReleaseService/CreateRelease`, `POST
/// /apps/x/builds`), kind server, parented by the caller's `traceparent`,
/// with `trace_id` recorded. `info`, not `debug`, so it reaches the exporter
/// under the default filter.
#[derive(Clone, Copy, Debug)]
pub struct RequestSpan {
    grpc: bool,
}

impl RequestSpan {
    /// For gRPC servers: `rpc.*` attributes from the path.
    pub fn grpc() -> Self {
        Self { grpc: true }
    }

    /// For HTTP servers: method and path.
    pub fn http() -> Self {
        Self { grpc: false }
    }

    /// The span of `request`.
    pub fn span<B>(&self, request: &http::Request<B>) -> Span {
        let path = request.uri().path();
        let span = if self.grpc && path.starts_with("/grpc.health.v1.Health/") {
            // Probes every few seconds: not worth a trace (debug, so off
            // under the default filter); their latency is still measured.
            tracing::debug_span!("grpc", otel.name = path.trim_start_matches('/'))
        } else if self.grpc {
            let call = path.trim_start_matches('/');
            let (service, method) = call.split_once('/').unwrap_or((call, ""));
            tracing::info_span!(
                "grpc",
                otel.name = call,
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = method,
                trace_id = tracing::field::Empty,
            )
        } else {
            let method = request.method().as_str();
            tracing::info_span!(
                "http",
                otel.name = format!("{method} {path}"),
                otel.kind = "server",
                http.request.method = method,
                url.path = path,
                trace_id = tracing::field::Empty,
            )
        };
        set_parent(&span, request.headers());
        if let Some(id) = trace_id(&span) {
            span.record("trace_id", id);
        }
        span
    }
}

impl<B> tower_http::trace::MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &http::Request<B>) -> Span {
        self.span(request)
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_a_remote_sampled_parent() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-07070707070707070707070707070707-0707070707070707-01"
                .parse()
                .unwrap(),
        );
        let cx = extract(&headers).expect("a valid context");
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "07070707070707070707070707070707"
        );
        assert!(cx.span().span_context().is_sampled());
        assert!(cx.span().span_context().is_remote());
    }

    /// A subscriber exporting `info` spans to memory, as `init` wires it
    /// under the default filter (without OTLP).
    fn recording() -> (
        impl tracing::Subscriber + Send + Sync,
        opentelemetry_sdk::trace::SdkTracerProvider,
        opentelemetry_sdk::trace::InMemorySpanExporter,
    ) {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry().with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        );
        (subscriber, provider, exporter)
    }

    #[test]
    fn a_request_span_continues_the_callers_trace_and_passes_it_on() {
        let (subscriber, provider, exporter) = recording();
        let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let request = http::Request::builder()
            .uri("/slipway.release.v1.ReleaseService/CreateRelease")
            .header("traceparent", caller)
            .body(())
            .unwrap();
        let mut outgoing = HeaderMap::new();
        tracing::subscriber::with_default(subscriber, || {
            let span = RequestSpan::grpc().span(&request);
            let _entered = span.enter();
            inject(&tracing::Span::current(), &mut outgoing);
        });
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 1, "{spans:?}");
        let span = &spans[0];
        assert_eq!(span.name, "slipway.release.v1.ReleaseService/CreateRelease");
        assert_eq!(
            span.span_context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(span.parent_span_id.to_string(), "b7ad6b7169203331");
        assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Server);
        // The next hop gets the same trace, with this span as its parent.
        let sent = outgoing.get("traceparent").unwrap().to_str().unwrap();
        assert_eq!(
            sent,
            format!(
                "00-0af7651916cd43dd8448eb211c80319c-{}-01",
                span.span_context.span_id()
            )
        );
    }

    #[test]
    fn health_checks_make_no_spans_and_nothing_is_sent_outside_a_trace() {
        let (subscriber, provider, exporter) = recording();
        let request = http::Request::builder()
            .uri("/grpc.health.v1.Health/Check")
            .body(())
            .unwrap();
        let mut outgoing = HeaderMap::new();
        tracing::subscriber::with_default(subscriber, || {
            let span = RequestSpan::grpc().span(&request);
            let _entered = span.enter();
        });
        inject(&tracing::Span::current(), &mut outgoing);
        provider.force_flush().unwrap();
        assert!(exporter.get_finished_spans().unwrap().is_empty());
        assert!(outgoing.is_empty());
    }

    #[test]
    fn garbage_is_no_parent() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-zz-11-01".parse().unwrap());
        assert!(extract(&headers).is_none());
        assert!(extract(&HeaderMap::new()).is_none());
    }
}
