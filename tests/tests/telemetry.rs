//! OpenTelemetry end to end: the four service binaries as separate
//! processes (SQLite each, the local runtime), exporting over OTLP/gRPC to a
//! receiver started inside the test, and one `slipway deploy` run by the
//! real CLI. The deploy must come back as ONE trace that spans the gateway,
//! build, release and rollout services, every span's parent inside that
//! trace except the gateway's request spans, whose parent is the span id of
//! the CLI's `traceparent`; and the promotion counter, the build and
//! rollout duration histograms and the gRPC latency histogram must arrive.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use slipway_e2e::cluster::{binary, free_port};
use slipway_e2e::{eventually, example, kill_processes_under, ok_stdout, raw_request};
use tokio::process::{Child, Command};

/// The rack password of the gateway.
const PASSWORD: &str = "otel-secret-0123456";

/// What the receiver got, as the exporters sent it.
#[derive(Clone, Default)]
struct Received {
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.traces.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Starts the OTLP receiver on a free loopback port.
async fn start_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(received.clone()))
        .add_service(MetricsServiceServer::new(received.clone()))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);
    (addr, received)
}

/// One service process, its log in the test's directory.
struct Service {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// Starts `bin` with `args`, exporting to `otlp` with short intervals.
fn spawn(dir: &Path, name: &'static str, otlp: SocketAddr, args: &[String]) -> Service {
    spawn_with_env(dir, name, otlp, args, &[])
}

/// [`spawn`] with extra environment variables.
fn spawn_with_env(
    dir: &Path,
    name: &'static str,
    otlp: SocketAddr,
    args: &[String],
    env: &[(&str, &str)],
) -> Service {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let data = dir.join(name);
    std::fs::create_dir_all(&data).expect("data dir");
    let child = Command::new(binary(&format!("slipway-{name}")))
        .args(args)
        .arg("--data-dir")
        .arg(&data)
        .current_dir(&data)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .env("RUST_LOG", "info")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_TRACES_SAMPLER")
        .env_remove("SLIPWAY_LOG_FORMAT")
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("OTEL_METRICS_EXPORTER")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start slipway-{name}: {e}"));
    Service { name, child, log }
}

/// The gateway's flags: listening on `port`, the other services on theirs.
fn gateway_args(port: u16, release: u16, build: u16, rollout: u16) -> Vec<String> {
    let endpoint = |port: u16| format!("http://127.0.0.1:{port}");
    vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--password".into(),
        PASSWORD.into(),
        "--release-endpoint".into(),
        endpoint(release),
        "--build-endpoint".into(),
        endpoint(build),
        "--rollout-endpoint".into(),
        endpoint(rollout),
    ]
}

/// Waits until every port in `ports` accepts connections and the gateway
/// at `gateway` answers `GET /apps`.
async fn wait_ready(ports: &[u16], gateway: SocketAddr) {
    for &port in ports {
        eventually(
            Duration::from_secs(60),
            "a service to listen",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(drop)
            },
        )
        .await;
    }
    eventually(Duration::from_secs(60), "the gateway to answer", || async {
        let (status, _) = raw_request(gateway, "GET", "/apps", "text/plain", b"", PASSWORD).await;
        (status == 200).then_some(())
    })
    .await;
}

/// Kills what is left under a directory when dropped: the app's processes
/// outlive the rollout service by design, and must not outlive a failed test.
struct KillUnder(PathBuf);

impl Drop for KillUnder {
    fn drop(&mut self) {
        kill_processes_under(&self.0);
    }
}

/// The four services' logs, for failure messages.
fn logs(services: &[Service]) -> String {
    services
        .iter()
        .map(|s| {
            let text = std::fs::read_to_string(&s.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("--- slipway-{} ---\n{}\n", s.name, tail.join("\n"))
        })
        .collect()
}

fn string_attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref() {
            Some(AnyValue {
                value: Some(Value::StringValue(s)),
            }) => Some(s.clone()),
            _ => None,
        })
}

/// One received span, flattened.
#[derive(Clone, Debug)]
struct Span {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attributes: Vec<KeyValue>,
}

fn spans(received: &Received) -> Vec<Span> {
    let mut out = Vec::new();
    for request in received.traces.lock().unwrap().iter() {
        for resource_spans in &request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| string_attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in &resource_spans.scope_spans {
                for span in &scope.spans {
                    out.push(Span {
                        service: service.clone(),
                        name: span.name.clone(),
                        trace_id: span.trace_id.clone(),
                        span_id: span.span_id.clone(),
                        parent: span.parent_span_id.clone(),
                        attributes: span.attributes.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Services along the parent chain of `span`, nearest first, and the id
/// the chain's root names as its parent.
fn ancestry(span: &Span, by_id: &HashMap<Vec<u8>, Span>) -> (Vec<String>, Vec<u8>) {
    let mut services = Vec::new();
    let mut current = span.clone();
    for _ in 0..1000 {
        match by_id.get(&current.parent) {
            Some(parent) => {
                services.push(parent.service.clone());
                current = parent.clone();
            }
            None => return (services, current.parent),
        }
    }
    panic!("a parent cycle above {span:?}");
}

/// Data points of metric `name` from `service`: (attributes, count or value).
fn points(received: &Received, service: &str, name: &str) -> Vec<(Vec<KeyValue>, f64)> {
    let mut out = Vec::new();
    for request in received.metrics.lock().unwrap().iter() {
        for resource in &request.resource_metrics {
            let from = resource
                .resource
                .as_ref()
                .and_then(|r| string_attr(&r.attributes, "service.name"));
            if from.as_deref() != Some(service) {
                continue;
            }
            for scope in &resource.scope_metrics {
                for metric in scope.metrics.iter().filter(|m| m.name == name) {
                    match &metric.data {
                        Some(Data::Sum(sum)) => out.extend(sum.data_points.iter().map(|p| {
                            let value = match p.value {
                                Some(
                                    opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(
                                        i,
                                    ),
                                ) => i as f64,
                                Some(
                                    opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(
                                        d,
                                    ),
                                ) => d,
                                None => 0.0,
                            };
                            (p.attributes.clone(), value)
                        })),
                        Some(Data::Histogram(h)) => out.extend(
                            h.data_points
                                .iter()
                                .map(|p| (p.attributes.clone(), p.count as f64)),
                        ),
                        _ => {}
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_deploy_is_one_trace_across_the_four_services() {
    let (otlp, received) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let _cleanup = KillUnder(root.to_owned());
    let [release, build, rollout, gateway] = [free_port(), free_port(), free_port(), free_port()];
    let at = |port: u16| format!("127.0.0.1:{port}");
    let endpoint = |port: u16| format!("http://127.0.0.1:{port}");
    let mut services = vec![
        spawn(
            root,
            "release",
            otlp,
            &[
                "--dev".into(),
                "--listen".into(),
                at(release),
                "--rollout-endpoint".into(),
                endpoint(rollout),
            ],
        ),
        spawn(
            root,
            "rollout",
            otlp,
            &[
                "--listen".into(),
                at(rollout),
                "--release-endpoint".into(),
                endpoint(release),
            ],
        ),
        spawn(
            root,
            "build",
            otlp,
            &[
                "--listen".into(),
                at(build),
                "--release-endpoint".into(),
                endpoint(release),
            ],
        ),
        spawn(
            root,
            "gateway",
            otlp,
            &gateway_args(gateway, release, build, rollout),
        ),
    ];
    let gateway_addr: SocketAddr = at(gateway).parse().unwrap();
    wait_ready(&[release, build, rollout, gateway], gateway_addr).await;

    // One `slipway deploy`, through the real CLI.
    let cwd = tempfile::tempdir().unwrap();
    let rack_url = format!("http://convox:{PASSWORD}@127.0.0.1:{gateway}");
    let slipway = |args: &[&str]| {
        let mut command = Command::new(binary("slipway"));
        command
            .args(args)
            .current_dir(cwd.path())
            .env("RACK_URL", &rack_url)
            .env_remove("CONVOX_RACK")
            .stdin(std::process::Stdio::null());
        command
    };
    let out = slipway(&["apps", "create", "myapp"])
        .output()
        .await
        .unwrap();
    ok_stdout(&out, &format!("apps create\n{}", logs(&services)));
    let app = example("myapp");
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        slipway(&["deploy", app.to_str().unwrap(), "-a", "myapp"]).output(),
    )
    .await
    .expect("deploy within 4 minutes")
    .unwrap();
    let stdout = ok_stdout(&out, &format!("deploy\n{}", logs(&services)));
    assert_eq!(stdout.lines().last(), Some("OK"), "{stdout}");

    // SIGTERM: each service drains and its telemetry guard flushes.
    for service in &services {
        let pid = service.child.id().expect("running") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
    for service in &mut services {
        let status = tokio::time::timeout(Duration::from_secs(30), service.child.wait())
            .await
            .unwrap_or_else(|_| panic!("slipway-{} did not stop on SIGTERM", service.name))
            .unwrap();
        assert!(status.success(), "slipway-{} exited {status}", service.name);
    }
    // The app's processes outlive the rollout service by design.
    kill_processes_under(root);
    let context = logs(&services);

    // The deploy's trace: the one its build upload request belongs to.
    let all = spans(&received);
    let upload = all
        .iter()
        .find(|s| {
            s.service == "slipway-gateway"
                && string_attr(&s.attributes, "http.request.method").as_deref() == Some("POST")
                && string_attr(&s.attributes, "url.path").as_deref() == Some("/apps/myapp/builds")
        })
        .unwrap_or_else(|| {
            panic!("no gateway span of POST /apps/myapp/builds in {all:#?}\n{context}")
        });
    let trace: Vec<Span> = all
        .iter()
        .filter(|s| s.trace_id == upload.trace_id)
        .cloned()
        .collect();
    let by_id: HashMap<Vec<u8>, Span> = trace
        .iter()
        .map(|s| (s.span_id.clone(), s.clone()))
        .collect();
    let names = || {
        trace
            .iter()
            .map(|s| format!("{} {}", s.service, s.name))
            .collect::<Vec<_>>()
    };

    eprintln!("the deploy's trace: {} spans\n{:#?}", trace.len(), names());

    // All four services are in it.
    let in_trace: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        in_trace,
        BTreeSet::from([
            "slipway-build",
            "slipway-gateway",
            "slipway-release",
            "slipway-rollout"
        ]),
        "{:#?}",
        names()
    );

    // Every span's parent is in the trace, except the roots: gateway
    // request spans, all children of the CLI's one (unexported) span.
    let mut cli_spans = BTreeSet::new();
    for span in &trace {
        assert_eq!(span.parent.len(), 8, "{span:?} has no parent: a broken hop");
        if !by_id.contains_key(&span.parent) {
            assert_eq!(
                span.service, "slipway-gateway",
                "{span:?} has a parent outside the trace"
            );
            cli_spans.insert(span.parent.clone());
        }
    }
    assert_eq!(
        cli_spans.len(),
        1,
        "one traceparent per command: {cli_spans:?}"
    );
    let cli_span = cli_spans.into_iter().next().unwrap();
    let roots: Vec<String> = trace
        .iter()
        .filter(|s| s.parent == cli_span)
        .map(|s| s.name.clone())
        .collect();
    assert!(
        roots
            .iter()
            .any(|n| n.starts_with("POST /apps/myapp/releases/") && n.ends_with("/promote")),
        "the promotion request is in the same trace: {roots:?}"
    );

    // The hops: gateway -> build -> release (the build's CreateRelease, from
    // its background pipeline), gateway -> release -> rollout (StartRollout),
    // and rollout -> release (CompletePromotion, from the rollout's driver).
    let chain = |service: &str, name: &str| -> Vec<String> {
        let span = trace
            .iter()
            .find(|s| s.service == service && s.name == name)
            .unwrap_or_else(|| panic!("no {service} span {name} in {:#?}\n{context}", names()));
        let (services, root_parent) = ancestry(span, &by_id);
        assert_eq!(
            root_parent, cli_span,
            "{name} does not lead back to the CLI"
        );
        services
    };
    let create_release = chain(
        "slipway-release",
        "slipway.release.v1.ReleaseService/CreateRelease",
    );
    assert!(
        create_release.first().map(String::as_str) == Some("slipway-build")
            && create_release.last().map(String::as_str) == Some("slipway-gateway"),
        "CreateRelease: {create_release:?}"
    );
    let start_rollout = chain(
        "slipway-rollout",
        "slipway.rollout.v1.RolloutService/StartRollout",
    );
    assert!(
        start_rollout.first().map(String::as_str) == Some("slipway-release")
            && start_rollout.last().map(String::as_str) == Some("slipway-gateway"),
        "StartRollout: {start_rollout:?}"
    );
    let complete = chain(
        "slipway-release",
        "slipway.release.v1.ReleaseService/CompletePromotion",
    );
    assert!(
        complete.first().map(String::as_str) == Some("slipway-rollout")
            && complete.iter().any(|s| s == "slipway-release")
            && complete.last().map(String::as_str) == Some("slipway-gateway"),
        "CompletePromotion: {complete:?}"
    );

    // Metrics.
    let with = |points: &[(Vec<KeyValue>, f64)], key: &str, value: &str| {
        points
            .iter()
            .filter(|(attrs, _)| string_attr(attrs, key).as_deref() == Some(value))
            .map(|(_, v)| *v)
            .fold(0.0, f64::max)
    };
    let promotions = points(&received, "slipway-release", "slipway.promotions");
    assert_eq!(
        with(&promotions, "outcome", "started"),
        1.0,
        "{promotions:?}\n{context}"
    );
    assert_eq!(
        with(&promotions, "outcome", "succeeded"),
        1.0,
        "{promotions:?}"
    );
    let builds = points(&received, "slipway-build", "slipway.build.duration");
    assert_eq!(with(&builds, "status", "complete"), 1.0, "{builds:?}");
    let rollouts = points(&received, "slipway-rollout", "slipway.rollout.duration");
    assert_eq!(with(&rollouts, "outcome", "succeeded"), 1.0, "{rollouts:?}");
    let rpc = points(&received, "slipway-release", "rpc.server.duration");
    assert!(
        with(
            &rpc,
            "rpc.method",
            "/slipway.release.v1.ReleaseService/CompletePromotion"
        ) >= 1.0,
        "{rpc:?}"
    );
}

#[tokio::test]
async fn traces_exporter_none_keeps_metrics_and_sends_no_span() {
    let (otlp, received) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let [release, gateway] = [free_port(), free_port()];
    let at = |port: u16| format!("127.0.0.1:{port}");
    let no_traces = [("OTEL_TRACES_EXPORTER", "none")];
    let services = vec![
        spawn_with_env(
            root,
            "release",
            otlp,
            &["--dev".into(), "--listen".into(), at(release)],
            &no_traces,
        ),
        spawn_with_env(
            root,
            "gateway",
            otlp,
            // Build and rollout are not called by `GET /apps`.
            &gateway_args(gateway, release, free_port(), free_port()),
            &no_traces,
        ),
    ];
    let gateway_addr: SocketAddr = at(gateway).parse().unwrap();
    // Each answered `GET /apps` is a traced request through both services,
    // and a ListApps call the release service measures.
    wait_ready(&[release, gateway], gateway_addr).await;
    eventually(Duration::from_secs(30), "release metrics", || async {
        (!points(&received, "slipway-release", "rpc.server.duration").is_empty()).then_some(())
    })
    .await;
    // Well past the span batch delay (200 ms): had spans been on, they
    // would have arrived with the metrics.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        received.traces.lock().unwrap().is_empty(),
        "spans were exported with OTEL_TRACES_EXPORTER=none\n{}",
        logs(&services)
    );
    // Both say so at start (the text log styles field names: drop the escapes).
    let log = logs(&services);
    let mut plain = String::new();
    let mut rest = log.as_str();
    while let Some(at) = rest.find('\x1b') {
        plain.push_str(&rest[..at]);
        rest = &rest[at..];
        rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
    }
    plain.push_str(rest);
    assert_eq!(
        plain.matches("traces=false metrics=true").count(),
        2,
        "{plain}"
    );
}
