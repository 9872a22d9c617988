//! The server stack as STYLE §5 orders it: a call the load shedder refuses
//! and a call the deadline cuts off each still get a request span and an
//! `rpc.server.duration` point, because the span and the metrics sit above
//! both. Its own binary: it installs the global subscriber and meter
//! provider.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tower::ServiceExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// A gRPC service whose one method reports that it started, then never
/// answers (it holds the only concurrency slot until the deadline).
#[derive(Clone)]
struct Hold {
    started: mpsc::UnboundedSender<()>,
}

impl tonic::server::NamedService for Hold {
    const NAME: &'static str = "test.Hold";
}

impl tower::Service<http::Request<Body>> for Hold {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: http::Request<Body>) -> Self::Future {
        let _ = self.started.send(());
        Box::pin(std::future::pending())
    }
}

/// The `grpc-status` of a call to `path` (answers here are trailers-only).
async fn call(channel: &tonic::transport::Channel, path: &str) -> String {
    let request = http::Request::builder()
        .uri(format!("http://test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::empty())
        .unwrap();
    let response = channel.clone().oneshot(request).await.unwrap();
    response.headers()["grpc-status"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_and_timed_out_calls_each_get_a_span_and_a_metric() {
    let spans = InMemorySpanExporter::default();
    let tracer = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer.tracer("test"))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        ),
    )
    .unwrap();
    let metrics = InMemoryMetricExporter::default();
    let meter = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(metrics.clone()).build())
        .build();
    opentelemetry::global::set_meter_provider(meter.clone());

    let (routes, health) = slipway_rpc::standard_routes(&[]).await;
    let (started, mut started_rx) = mpsc::unbounded_channel();
    let routes = routes.add_service(Hold { started });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = slipway_rpc::ServerOptions {
        request_timeout: Duration::from_millis(300),
        concurrency_limit: 1,
        ..Default::default()
    };
    let stop = CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            slipway_rpc::serve(
                routes,
                listener,
                &options,
                health,
                CancellationToken::new(),
                async move { stop.cancelled().await },
            )
            .await
        }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // The first call takes the only slot and keeps it until its deadline;
    // the second, made meanwhile, is shed.
    let held = tokio::spawn({
        let channel = channel.clone();
        async move { call(&channel, "/test.Hold/Timed").await }
    });
    started_rx.recv().await.unwrap();
    assert_eq!(call(&channel, "/test.Hold/Shed").await, "8"); // RESOURCE_EXHAUSTED
    assert_eq!(held.await.unwrap(), "1"); // CANCELLED

    // Both spans end once their (empty) bodies are sent; wait for them.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let names: Vec<String> = spans
                .get_finished_spans()
                .unwrap()
                .iter()
                .map(|s| s.name.to_string())
                .collect();
            if ["test.Hold/Timed", "test.Hold/Shed"]
                .iter()
                .all(|n| names.iter().any(|s| s == n))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a span for the timed-out and for the shed call");

    meter.force_flush().unwrap();
    let mut points = Vec::new();
    for resource in metrics.get_finished_metrics().unwrap() {
        for scope in resource.scope_metrics() {
            for metric in scope.metrics() {
                if metric.name() != "rpc.server.duration" {
                    continue;
                }
                let AggregatedMetrics::F64(MetricData::Histogram(histogram)) = metric.data() else {
                    panic!("rpc.server.duration is an f64 histogram");
                };
                for point in histogram.data_points() {
                    let attribute = |key: &str| {
                        point
                            .attributes()
                            .find(|kv| kv.key.as_str() == key)
                            .map(|kv| kv.value.to_string())
                    };
                    points.push((
                        attribute("rpc.method").unwrap(),
                        attribute("rpc.grpc.status_code").unwrap(),
                        point.count(),
                    ));
                }
            }
        }
    }
    assert!(
        points.contains(&("/test.Hold/Timed".to_owned(), "1".to_owned(), 1)),
        "{points:?}"
    );
    assert!(
        points.contains(&("/test.Hold/Shed".to_owned(), "8".to_owned(), 1)),
        "{points:?}"
    );

    stop.cancel();
    server.await.unwrap().unwrap();
}
