//! The gateway: the Convox rack HTTP API (so the `convox` CLI and
//! `slipway` both work against Slipway), translated into gRPC calls on the
//! release, build and rollout services. It owns no database.

pub mod auth;
pub mod config;
mod convert;
pub mod error;
mod objects;
mod reads;
mod routes;
mod stream;
pub mod tls;

use std::future::Future;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::routing::{get, post};
use slipway_api::build::v1::build_service_client::BuildServiceClient;
use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_api::rollout::v1::rollout_service_client::RolloutServiceClient;
use slipway_domain::Secret;
use slipway_rpc::Channel;
use tokio::net::TcpListener;
use tower::Layer as _;
use tower_http::limit::RequestBodyLimitLayer;

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
    /// Clients for idempotent reads, which are retried (see [`Replicas`]).
    pub reads: Reads,
    /// The rack password (empty accepts anything, --dev only).
    pub password: Secret,
    /// Rack name for `GET /system`.
    pub rack_name: String,
    /// Provider for `GET /system`.
    pub provider: String,
}

impl AppState {
    /// Builds the clients from the configuration (connections are lazy).
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let options = slipway_rpc::ChannelOptions {
            request_timeout: config.request_timeout,
            service_token: config.security.client_token("gateway"),
            ..Default::default()
        };
        Ok(Self {
            release: ReleaseServiceClient::new(slipway_rpc::channel(
                "release",
                &config.release_endpoints,
                &options,
            )?),
            build: BuildServiceClient::new(slipway_rpc::channel(
                "build",
                &config.build_endpoints,
                &options,
            )?)
            .max_decoding_message_size(16 << 20),
            rollout: RolloutServiceClient::new(slipway_rpc::channel(
                "rollout",
                &config.rollout_endpoints,
                &options,
            )?),
            reads: Reads {
                release: Replicas::connect(
                    "release",
                    &config.release_endpoints,
                    &options,
                    ReleaseServiceClient::new,
                )?,
                build: Replicas::connect("build", &config.build_endpoints, &options, |c| {
                    BuildServiceClient::new(c).max_decoding_message_size(16 << 20)
                })?,
                rollout: Replicas::connect(
                    "rollout",
                    &config.rollout_endpoints,
                    &options,
                    RolloutServiceClient::new,
                )?,
            },
            password: config.password.clone().unwrap_or_else(|| Secret::new("")),
            rack_name: config.rack_name.clone(),
            provider: config.provider.clone(),
        })
    }
}

/// The routes, with their limits, behind authentication.
pub fn router(state: AppState, config: &Config) -> Router {
    use routes::*;
    let uploads = Router::new()
        .route("/apps/{app}/objects/{*key}", post(upload_object))
        // Sources may be large; everything else is small.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(config.max_upload_bytes));
    let api = Router::new()
        .route("/system", get(system))
        .route("/apps", get(list_apps).post(create_app))
        .route("/apps/{app}", get(get_app).delete(delete_app))
        .route("/apps/{app}/cancel", post(cancel_app))
        .route("/apps/{app}/builds", get(list_builds).post(create_build))
        .route("/apps/{app}/builds/{id}", get(get_build))
        .route(
            "/apps/{app}/releases",
            get(list_releases).post(create_release),
        )
        .route("/apps/{app}/releases/{id}", get(get_release))
        .route("/apps/{app}/releases/{id}/promote", post(promote))
        .route("/apps/{app}/releases/{id}/rollback", post(rollback))
        .route("/apps/{app}/env", post(change_env))
        .route("/apps/{app}/promotions/{id}", get(get_promotion))
        .route("/apps/{app}/processes", get(list_processes))
        .route("/apps/{app}/services", get(list_services))
        .route("/apps/{app}/budget", get(budget))
        .route("/apps/{app}/configs/{name}", get(get_config))
        .route("/auth", get(auth_check))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            config.request_timeout,
        ));
    let sockets = Router::new()
        .route("/apps/{app}/builds/{id}/logs", get(stream::build_logs))
        .route("/apps/{app}/logs", get(stream::app_logs))
        .route("/apps/{app}/services/{service}/logs", get(stream::app_logs))
        .route(
            "/apps/{app}/promotions/{id}/events",
            get(stream::promotion_events),
        );
    Router::new()
        .merge(uploads)
        .merge(api)
        .merge(sockets)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            config.concurrency_limit,
        ))
        // The request span, parented by the caller's W3C `traceparent` (the
        // CLI sends one per command), so one deploy is one trace.
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(slipway_telemetry::RequestSpan::http()),
        )
        .with_state(state)
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
    let app = axum::ServiceExt::<Request>::into_make_service(app);
    let addr = listener.local_addr()?;
    match tls {
        Some(tls) => {
            tracing::info!(%addr, "gateway serving HTTPS");
            axum::serve(tls::TlsListener::new(listener, tls)?, app)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
        None => {
            if addr.ip().is_loopback() {
                tracing::info!(%addr, "gateway serving plain HTTP");
            } else {
                // Only reachable with --insecure-http (validated at start-up).
                tracing::warn!(%addr, "gateway serving plain HTTP off loopback (--insecure-http): credentials cross the network in the clear");
            }
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
    }
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
