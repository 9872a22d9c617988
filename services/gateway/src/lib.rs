//! The gateway: the Convox rack HTTP API (so the `convox` CLI and
//! `slipway` both work against Slipway), translated into gRPC calls on the
//! release, build and rollout services. It owns no database.

pub mod access;
mod app_log;
mod audit;
pub mod auth;
mod builds;
pub mod config;
mod convert;
pub mod error;
mod idempotency;
pub mod logins;
mod objects;
mod processes;
mod promotions;
mod reads;
mod resume;
mod routes;
mod scale;
pub mod serve;
mod stream;
mod streams;
pub mod table;
pub mod tls;
mod token_routes;
pub mod tokens;
mod webhooks;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use slipway_api::build::v1::build_archive_service_client::BuildArchiveServiceClient;
use slipway_api::build::v1::build_service_client::BuildServiceClient;
use slipway_api::release::v1::audit_service_client::AuditServiceClient;
use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_api::release::v1::token_service_client::TokenServiceClient;
use slipway_api::release::v1::webhook_service_client::WebhookServiceClient;
use slipway_api::rollout::v1::process_service_client::ProcessServiceClient;
use slipway_api::rollout::v1::rollout_service_client::RolloutServiceClient;
use slipway_api::rollout::v1::scale_service_client::ScaleServiceClient;
use slipway_rpc::{Channel, MessageLimits as _};
use tokio::net::TcpListener;
use tower::Layer as _;

pub use config::Config;
pub use reads::Replicas;

/// The version `GET /system` reports. It must compare greater than
/// `20180708231844` as a string, or the `convox` CLI uses legacy routes.
pub const VERSION: &str = "3.24.6-slipway.0.1.0";

/// A client per replica of each service, for the GET handlers' reads.
#[derive(Clone)]
pub struct Reads {
    /// Release service replicas.
    pub release: Replicas<ReleaseServiceClient<Channel>>,
    /// Build service replicas.
    pub build: Replicas<BuildServiceClient<Channel>>,
    /// Rollout service replicas.
    pub rollout: Replicas<RolloutServiceClient<Channel>>,
}

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    /// Release service client (balanced over its replicas), for writes and
    /// streams: never retried.
    pub release: ReleaseServiceClient<Channel>,
    /// Build service client.
    pub build: BuildServiceClient<Channel>,
    /// Rollout service client.
    pub rollout: RolloutServiceClient<Channel>,
    /// The rollout service's one-off processes and exec sessions.
    pub processes: ProcessServiceClient<Channel>,
    /// The rollout service's address when it is reached in this process
    /// (the embedded rack): exec sessions then go through the handle it
    /// offers there, if it does (`slipway_api::exec`).
    pub local_rollout: Option<std::net::SocketAddr>,
    /// The rollout service's scale and restart client.
    pub scale: ScaleServiceClient<Channel>,
    /// The build service's export and import client.
    pub archives: BuildArchiveServiceClient<Channel>,
    /// The release service's webhooks (receivers, keys, deliveries).
    pub webhooks: WebhookServiceClient<Channel>,
    /// The release service's tokens (create, list, revoke).
    pub token_client: TokenServiceClient<Channel>,
    /// The release service's audit trail.
    pub audit: AuditServiceClient<Channel>,
    /// Audit records being written in the background (see audit.rs).
    pub audit_slots: Arc<tokio::sync::Semaphore>,
    /// The usable scoped tokens, refreshed from the release service.
    pub tokens: Arc<tokens::Tokens>,
    /// Requests in flight per credential (access.rs).
    pub in_flight: Arc<access::InFlight>,
    /// Clients for idempotent reads, which are retried (see [`Replicas`]).
    pub reads: Reads,
    /// How callers prove who they are.
    pub authentication: auth::Authentication,
    /// Failed logins per source address.
    pub logins: Arc<logins::Logins>,
    /// Rack name for `GET /system`.
    pub rack_name: String,
    /// Provider for `GET /system`.
    pub provider: String,
    /// Where console sessions are kept (Redis when configured, so every
    /// replica knows a login; else this process).
    pub console_sessions: Arc<dyn slipway_console::SessionStore>,
}

impl AppState {
    /// Builds the clients from the configuration (connections are lazy).
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let options = slipway_rpc::ChannelOptions {
            request_timeout: config.request_timeout,
            // Uploads last as long as they progress (objects.rs).
            untimed_methods: &[objects::UPLOAD_SOURCE],
            service_token: config.security.client_token("gateway"),
            ..Default::default()
        };
        Ok(Self {
            release: ReleaseServiceClient::new(slipway_rpc::channel(
                "release",
                &config.release_endpoints,
                &options,
            )?)
            .with_message_limits(),
            build: BuildServiceClient::new(slipway_rpc::channel(
                "build",
                &config.build_endpoints,
                &options,
            )?)
            .with_message_limits(),
            rollout: RolloutServiceClient::new(slipway_rpc::channel(
                "rollout",
                &config.rollout_endpoints,
                &options,
            )?)
            .with_message_limits(),
            scale: ScaleServiceClient::new(slipway_rpc::channel(
                "rollout",
                &config.rollout_endpoints,
                &options,
            )?)
            .with_message_limits(),
            processes: ProcessServiceClient::new(slipway_rpc::channel(
                "rollout",
                &config.rollout_endpoints,
                &options,
            )?)
            .with_message_limits(),
            local_rollout: match config.rollout_endpoints.as_slice() {
                [one] => slipway_rpc::in_process::address(one),
                _ => None,
            },
            archives: BuildArchiveServiceClient::new(slipway_rpc::channel(
                "build",
                &config.build_endpoints,
                &options,
            )?)
            .with_message_limits(),
            token_client: TokenServiceClient::new(slipway_rpc::channel(
                "release",
                &config.release_endpoints,
                &options,
            )?)
            .with_message_limits(),
            audit: AuditServiceClient::new(slipway_rpc::channel(
                "release",
                &config.release_endpoints,
                &options,
            )?)
            .with_message_limits(),
            audit_slots: audit::slots(),
            tokens: {
                let tokens = tokens::Tokens::new();
                tokens.start(
                    TokenServiceClient::new(slipway_rpc::channel(
                        "release",
                        &config.release_endpoints,
                        &options,
                    )?)
                    .with_message_limits(),
                );
                tokens
            },
            // Half the gateway's limit per credential: one credential
            // cannot take every slot.
            in_flight: access::InFlight::new((config.concurrency_limit / 2).max(1)),
            webhooks: WebhookServiceClient::new(slipway_rpc::channel(
                "release",
                &config.release_endpoints,
                &options,
            )?),
            reads: Reads {
                release: Replicas::connect("release", &config.release_endpoints, &options, |c| {
                    ReleaseServiceClient::new(c).with_message_limits()
                })?,
                build: Replicas::connect("build", &config.build_endpoints, &options, |c| {
                    BuildServiceClient::new(c).with_message_limits()
                })?,
                rollout: Replicas::connect("rollout", &config.rollout_endpoints, &options, |c| {
                    RolloutServiceClient::new(c).with_message_limits()
                })?,
            },
            authentication: match &config.password {
                Some(password) if !config.insecure_no_auth => {
                    auth::Authentication::Password(password.clone())
                }
                _ => auth::Authentication::Disabled,
            },
            logins: Arc::new(logins::Logins::new(config.login_policy())),
            rack_name: config.rack_name.clone(),
            provider: config.provider.clone(),
            console_sessions: match &config.redis_url {
                Some(url) => Arc::new(
                    slipway_console::RedisStore::new(
                        url.expose(),
                        &format!("{}:console", config.redis_prefix),
                    )
                    .map_err(|e| anyhow::anyhow!("--redis-url: {e}"))?,
                ),
                None => Arc::new(slipway_console::MemoryStore::new()),
            },
        })
    }
}

/// The routes, with their limits, behind authentication.
pub fn router(state: AppState, config: &Config) -> Router {
    let routes = table::router(config)
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            config.concurrency_limit,
        ))
        .with_state(state.clone());
    // Authentication wraps the routing itself: an unknown path, a wrong
    // method, a rejected extractor all need credentials first.
    let api = Router::new()
        .fallback_service(routes)
        // An idempotency key on every write's gRPC calls, after
        // authentication (idempotency.rs).
        .layer(axum::middleware::from_fn(idempotency::scope))
        // Streams per credential, after authentication (see streams.rs).
        .layer(axum::middleware::from_fn_with_state(
            streams::StreamCaps::new(config.connections.max_streams_per_credential),
            streams::limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate_first,
        ));
    // The web console under /console/ is the one exception: it ignores
    // HTTP Basic and has its own login, session cookie and CSRF checks
    // (slipway_console). Everything else falls through to the API.
    Router::new()
        .merge(slipway_console::router(console(&state, config)))
        .fallback_service(api)
        // The request span, parented by the caller's W3C `traceparent` (the
        // CLI sends one per command), so one deploy is one trace.
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(slipway_telemetry::RequestSpan::http()),
        )
}

/// The web console over the gateway's clients and password.
fn console(state: &AppState, config: &Config) -> slipway_console::Console {
    slipway_console::Console::new(slipway_console::Options {
        release: state.release.clone(),
        rollout: state.rollout.clone(),
        build: state.build.clone(),
        password: match &state.authentication {
            auth::Authentication::Password(password) => Some(password.clone()),
            auth::Authentication::Disabled => None,
        },
        // Over TLS, or behind a TLS-terminating proxy (--insecure-http).
        secure_cookies: config.tls.enabled() || config.tls.insecure_http,
        lifetimes: slipway_console::Lifetimes::default(),
        sessions: state.console_sessions.clone(),
        read_only: config.console_read_only,
        // Tokens log in to the console with their role (tokens.rs).
        tokens: Some(state.tokens.clone()),
        audit: Some(state.audit.clone()),
    })
}

/// Serves the gateway on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState::from_config(&config)?;
    let tls = config
        .tls
        .server_config(&config.data_dir, listener.local_addr()?)?;
    let router = router(state, &config);
    // Tolerate a RACK_URL with a trailing slash (`//apps`), before routing.
    let app = tower::util::MapRequestLayer::new(collapse_leading_slashes).layer(router);
    let addr = listener.local_addr()?;
    match &tls {
        Some(_) => tracing::info!(%addr, "gateway serving HTTPS"),
        None if addr.ip().is_loopback() => tracing::info!(%addr, "gateway serving plain HTTP"),
        // Only reachable with --insecure-http (validated at start-up).
        None => {
            tracing::warn!(%addr, "gateway serving plain HTTP off loopback (--insecure-http): credentials cross the network in the clear")
        }
    }
    // Timeouts, the connection cap, TLS; the peer address goes into each
    // request's extensions (see serve.rs).
    serve::serve(listener, tls, app, &config.connections, shutdown).await?;
    Ok(())
}

fn collapse_leading_slashes(mut request: Request) -> Request {
    let path = request.uri().path();
    if path.starts_with("//") {
        let trimmed = format!("/{}", path.trim_start_matches('/'));
        let rebuilt = match request.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed,
        };
        if let Ok(uri) = rebuilt.parse() {
            *request.uri_mut() = uri;
        }
    }
    request
}
