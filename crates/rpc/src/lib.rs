//! How every Slipway service serves gRPC and how every caller connects: one
//! server stack (request span, metrics, timeout, load shedding, concurrency
//! limit, service auth), standard health and reflection services, the
//! shutdown sequence, and one client channel builder. Services never
//! assemble these themselves, so the behaviour under overload and shutdown
//! is the same everywhere.

pub mod actor;
#[cfg(feature = "audit-relay")]
pub mod audit_relay;
pub mod auth;
mod balance;
mod deadline;
pub mod idempotency;
pub mod in_process;
pub mod limits;
mod telemetry;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::{Endpoint, Server};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Layer as _;

pub use auth::SecurityArgs;
pub use deadline::{Deadline, DeadlineLayer};
pub use limits::{MAX_MESSAGE_BYTES, MessageLimits, PAGE_BYTES};
pub use telemetry::{Channel, ServerMetrics, ServerMetricsLayer};

/// Metadata key carrying the acting user (see [`actor`]: the gateway sets
/// it from the credential it authenticated).
pub const ACTOR_HEADER: &str = actor::ACTOR_KEY;

/// How often a channel pings its peer over HTTP/2 while calls are open.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection counts as dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 flow-control window per stream, on servers and channels.
const STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 flow-control window per connection, on servers and channels.
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest HTTP/2 frame a server accepts (the protocol default is 16 KiB).
const MAX_FRAME: u32 = 1 << 20;

/// Server-side limits.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Upper bound for one call until its answer starts (server streams are
    /// bounded by their own logic).
    pub request_timeout: Duration,
    /// Methods (`/package.Service/Method`) exempt from `request_timeout`:
    /// client streams that fail on their own when they stop making progress.
    pub untimed_methods: &'static [&'static str],
    /// In-flight requests on the server (all connections together) before
    /// new ones are shed.
    pub concurrency_limit: usize,
    /// How long in-flight calls may take to finish after shutdown starts.
    pub shutdown_grace: Duration,
    /// How long the server keeps taking calls after it reports NOT_SERVING
    /// at shutdown, so balanced channels (whose health watchers hear it at
    /// once) stop sending before the port closes.
    pub drain_delay: Duration,
    /// With a key, calls without a valid service token are refused (see
    /// [`auth`]); `None` accepts every call.
    pub service_auth: Option<auth::ServiceKey>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            untimed_methods: &[],
            concurrency_limit: 256,
            shutdown_grace: Duration::from_secs(10),
            drain_delay: Duration::from_millis(500),
            service_auth: None,
        }
    }
}

/// The health service, reporting NOT_SERVING until [`Health::serving`] is called.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    names: Vec<&'static str>,
}

impl Health {
    /// Marks the whole server and every named service SERVING; call it only
    /// once migrations ran and dependencies answer.
    pub async fn serving(&self) {
        self.set(ServingStatus::Serving).await;
    }

    /// Marks everything NOT_SERVING (the first step of shutdown).
    pub async fn not_serving(&self) {
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for name in &self.names {
            self.reporter.set_service_status(*name, status).await;
        }
    }
}

/// Builds the routes shared by every server (health and reflection) and
/// returns them with the health handle. `names` are the fully qualified gRPC
/// service names the server hosts (e.g. `slipway.release.v1.ReleaseService`).
pub async fn standard_routes(names: &[&'static str]) -> (Routes, Health) {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health {
        reporter,
        names: names.to_vec(),
    };
    health.not_serving().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(slipway_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let routes = Routes::new(health_service).add_service(reflection);
    (routes, health)
}

/// Serves `routes` on `listener` until `shutdown` completes, then runs the
/// shutdown sequence: health NOT_SERVING, `background` cancelled (background
/// loops stop), in-flight calls drained for at most `shutdown_grace`.
pub async fn serve(
    routes: Routes,
    listener: TcpListener,
    options: &ServerOptions,
    health: Health,
    background: CancellationToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let draining = CancellationToken::new();
    let drain_delay = options.drain_delay;
    let signal = {
        let draining = draining.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
            health.not_serving().await;
            // Callers' watchers take this endpoint out of their sets; calls
            // already on their way are still taken.
            tokio::time::sleep(drain_delay).await;
            background.cancel();
            draining.cancel();
        }
    };
    // tonic wraps whatever `.layer()` gets in its own per-connection
    // stack (`MakeSvc::call`): error recovery, then load shed,
    // concurrency limit and `Server::timeout` when those builder options
    // are set, then the caller's `grpc-timeout`. We set none of those
    // options, so the whole documented order is this one `.layer()`;
    // only a caller's own `grpc-timeout` is still enforced outside it.
    // Below, outermost first (STYLE §5): every call, shed or timed out
    // too, gets a span and a metric.
    let stack = tower::ServiceBuilder::new()
        // A span per request, outermost, so every log line below
        // carries it; its parent is the caller's W3C `traceparent`.
        .layer(
            tower_http::trace::TraceLayer::new_for_grpc()
                .make_span_with(slipway_telemetry::RequestSpan::grpc())
                // A non-OK status is an answer (NotFound,
                // FailedPrecondition), not an outage; the service
                // logs what needs a human.
                .on_failure(
                    tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
                ),
        )
        // Latency by method and code, inside the span, over
        // everything below, so timed-out and shed calls count too.
        .layer(ServerMetricsLayer)
        // Bounds each call but the untimed client streams; above
        // the limit, so the metrics see its CANCELLED answer.
        .layer(DeadlineLayer::new(
            options.request_timeout,
            options.untimed_methods,
        ))
        // A shed call becomes RESOURCE_EXHAUSTED here, in tonic's
        // own words, so the layers above see an answer, not an error.
        .map_result(answer_shed)
        // Answers at once instead of queueing when the limit below
        // is full.
        .load_shed()
        // In-flight calls on this server (every connection shares it).
        .concurrency_limit(options.concurrency_limit)
        // Service tokens, innermost: only calls that got past the
        // limits above pay for the HMAC; health checks pass without.
        .layer(auth::RequireServiceTokenLayer::new(
            options.service_auth.clone(),
        ))
        // The caller's actor and source (metadata a service that
        // passed the check above set) as `actor::current()` for the
        // handler: the audit trail's source.
        .layer(actor::ScopeLayer)
        .into_inner();
    // The same stack, for callers in this process (see `in_process`).
    let _registration = listener.local_addr().ok().map(|addr| {
        let local = tower::util::MapErr::new(
            tower::util::MapResponse::new(stack.layer(routes.clone()), |r: http::Response<_>| {
                r.map(tonic::body::Body::new)
            }),
            Into::into,
        );
        in_process::register(addr, tower::util::BoxCloneService::new(local))
    });
    let server = Server::builder()
        .layer(stack)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // Large fixed HTTP/2 windows and 1 MiB frames: hyper's 64 KiB default
        // windows stall client-streamed source uploads, and adaptive (BDP)
        // windows measured no better; big frames cut per-frame wakeups.
        // The connection window bounds what one peer can make us buffer.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_frame_size(Some(MAX_FRAME))
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            // Nagle's algorithm with delayed ACKs adds ~40 ms to small
            // responses; the builder's tcp_nodelay does not reach streams
            // from our own listener, so set it here.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        );
    let grace = options.shutdown_grace;
    tokio::select! {
        res = server => res,
        () = async { draining.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight calls outlived the shutdown grace; closing");
            Ok(())
        }
    }
}

/// Turns `load_shed`'s `Overloaded` error into the response tonic sends
/// for it.
fn answer_shed(
    result: Result<http::Response<tonic::body::Body>, tower::BoxError>,
) -> Result<http::Response<tonic::body::Body>, tower::BoxError> {
    match result {
        Err(e) if e.is::<tower::load_shed::error::Overloaded>() => Ok(
            tonic::Status::resource_exhausted("Too many active requests for the connection")
                .into_http(),
        ),
        other => other,
    }
}

/// Parses a binary's `Config` (flags, each with a `SLIPWAY_*` fallback) and
/// validates it before anything is bound. On a bad setting it prints one
/// line and returns exit code 64 (EX_USAGE); `--help`/`--version` print and
/// return success. Every service's `main` starts with it.
pub fn load_config<C: clap::Parser>(
    validate: impl FnOnce(&C) -> Result<(), String>,
) -> Result<C, std::process::ExitCode> {
    let config = match C::try_parse() {
        Ok(config) => config,
        Err(e) if e.use_stderr() => {
            eprintln!("invalid config: {e}");
            return Err(std::process::ExitCode::from(64));
        }
        Err(e) => {
            let _ = e.print();
            return Err(std::process::ExitCode::SUCCESS);
        }
    };
    if let Err(e) = validate(&config) {
        eprintln!("invalid config: {e}");
        return Err(std::process::ExitCode::from(64));
    }
    Ok(config)
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("failed to listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("failed to listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Client-side settings.
#[derive(Clone, Debug)]
pub struct ChannelOptions {
    /// Upper bound for one call until its answer starts, sent along as
    /// `grpc-timeout` so the server stops when the caller gives up.
    pub request_timeout: Duration,
    /// Methods (`/package.Service/Method`) called without `request_timeout`:
    /// client streams that fail on their own when they stop making progress.
    pub untimed_methods: &'static [&'static str],
    /// Upper bound for establishing a connection.
    pub connect_timeout: Duration,
    /// Signs a service token onto every call (see [`auth`]).
    pub service_token: Option<auth::TokenSigner>,
    /// How long a call that no server read yet (connection refused, no
    /// stream opened) keeps trying the peer's endpoints, within its own
    /// deadline (see `balance.rs`). Zero: one try on each live endpoint.
    pub unsent_retry: Duration,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            untimed_methods: &[],
            connect_timeout: Duration::from_secs(5),
            service_token: None,
            unsent_retry: Duration::from_secs(10),
        }
    }
}

/// Errors building a channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// No endpoint was given.
    #[error("no endpoint given for {0}")]
    NoEndpoints(&'static str),
    /// An endpoint is not a valid URI.
    #[error("invalid endpoint {endpoint:?} for {peer}: {source}")]
    InvalidEndpoint {
        /// Which peer the endpoint was for.
        peer: &'static str,
        /// The text given.
        endpoint: String,
        /// Why it was refused.
        #[source]
        source: tonic::transport::Error,
    },
    /// An in-process endpoint that cannot be used.
    #[error("invalid endpoint for {peer}: {reason}")]
    InProcess {
        /// Which peer the endpoint was for.
        peer: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

/// A lazily connecting channel to one or several replicas of `peer`,
/// balancing calls over the live ones and sending a call that no server
/// read to the next (see `balance.rs` for the policy). Endpoints are
/// `http://host:port`, or one `in-process://host:port` for the server on
/// that address in this process ([`in_process`]). Every call carries the
/// current span's trace context.
pub fn channel(
    peer: &'static str,
    endpoints: &[String],
    options: &ChannelOptions,
) -> Result<Channel, ChannelError> {
    if endpoints.is_empty() {
        return Err(ChannelError::NoEndpoints(peer));
    }
    if let [endpoint] = endpoints
        && let Some(addr) = in_process::parse(endpoint)
    {
        let addr = addr.map_err(|reason| ChannelError::InProcess { peer, reason })?;
        return Ok(Channel::in_process(addr, options.unsent_retry)
            .with_service_token(options.service_token.clone())
            .with_deadline(options.request_timeout, options.untimed_methods));
    }
    if let Some(endpoint) = endpoints.iter().find(|e| e.starts_with(in_process::SCHEME)) {
        return Err(ChannelError::InProcess {
            peer,
            reason: format!(
                "{endpoint:?} is in this process; it cannot be balanced with other endpoints"
            ),
        });
    }
    let built = endpoints
        .iter()
        .map(|e| {
            let uri = if e.contains("://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            Endpoint::from_shared(uri.clone())
                .map(|ep| {
                    // No `timeout` here: the channel sets `grpc-timeout` on
                    // each call but the untimed ones (see `deadline`).
                    let ep = ep
                        .connect_timeout(options.connect_timeout)
                        .tcp_nodelay(true)
                        // A peer that stops answering pings (frozen, or cut
                        // off) fails its calls and streams within 15 s, so
                        // streams resume on another replica instead of hanging.
                        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                        .initial_stream_window_size(STREAM_WINDOW)
                        .initial_connection_window_size(CONNECTION_WINDOW);
                    (uri, ep.connect_lazy())
                })
                .map_err(|source| ChannelError::InvalidEndpoint {
                    peer,
                    endpoint: e.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(
        Channel::new(balance::Balanced::new(peer, built, options.unsent_retry))
            .with_service_token(options.service_token.clone())
            .with_deadline(options.request_timeout, options.untimed_methods),
    )
}

/// Reads the actor's name from request metadata (see [`actor::actor_of`]);
/// `anonymous` when absent.
pub fn actor<T>(request: &tonic::Request<T>) -> String {
    let actor = actor::actor_of(request);
    if actor.is_unknown() {
        "anonymous".to_owned()
    } else {
        actor.name
    }
}
