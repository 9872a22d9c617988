//! The web console: server-rendered pages under `/console/` for the people
//! who promote releases without a terminal. The gateway mounts
//! [`router`] beside the Convox API (every gateway replica and the
//! embedded rack serve it), outside the API's HTTP Basic authentication:
//! the console has its own login, a server-side session in an HttpOnly,
//! SameSite=Strict cookie, and a CSRF token plus a same-origin check on
//! every form. Pages are askama templates (checked at compile time), with
//! one small script and one stylesheet embedded in the binary; every
//! action is a plain form, so the console works without JavaScript. The
//! design is `shared/CONSOLE.md`; decisions are in DEVELOPING.md.

mod access;
mod actions;
mod app_logs;
mod apps;
mod assets;
mod auth;
mod build_log;
mod env;
mod grpc;
mod history;
mod live;
mod processes;
mod promotion;
pub mod security;
pub mod session;
mod views;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::{get, post};
use slipway_api::build::v1::build_service_client::BuildServiceClient;
use slipway_api::release::v1::audit_service_client::AuditServiceClient;
use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_api::rollout::v1::rollout_service_client::RolloutServiceClient;
use slipway_domain::Secret;
use slipway_rpc::Channel;

pub use access::{SessionGrant, TokenLogin};
pub use live::MAX_STREAMS_PER_SESSION;
pub use session::{Lifetimes, MemoryStore, RedisStore, Session, SessionStore};

/// Where the console lives on the gateway.
pub const PREFIX: &str = "/console";

/// What the console needs from the gateway that mounts it.
pub struct Options {
    /// Release service client.
    pub release: ReleaseServiceClient<Channel>,
    /// Rollout service client.
    pub rollout: RolloutServiceClient<Channel>,
    /// Build service client.
    pub build: BuildServiceClient<Channel>,
    /// The rack password a login must give; `None` when the rack runs
    /// without authentication (`--insecure-no-auth`, loopback only), where
    /// any password logs in.
    pub password: Option<Secret>,
    /// Served over TLS (or behind a TLS-terminating proxy): `Secure`
    /// `__Host-` cookies.
    pub secure_cookies: bool,
    /// Session expiry.
    pub lifetimes: Lifetimes,
    /// Where sessions live.
    pub sessions: Arc<dyn SessionStore>,
    /// No action buttons, and every POST but login and logout refused.
    pub read_only: bool,
    /// Scoped tokens, which log in with their role (see access.rs);
    /// `None`: only the rack password logs in.
    pub tokens: Option<Arc<dyn TokenLogin>>,
    /// Where logins and reveals are recorded (the audit trail).
    pub audit: Option<AuditServiceClient<Channel>>,
}

/// The console's shared state.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    release: ReleaseServiceClient<Channel>,
    rollout: RolloutServiceClient<Channel>,
    build: BuildServiceClient<Channel>,
    password: Option<Secret>,
    cookies: security::CookiePolicy,
    lifetimes: Lifetimes,
    sessions: Arc<dyn SessionStore>,
    read_only: bool,
    tokens: Option<Arc<dyn TokenLogin>>,
    audit: Option<AuditServiceClient<Channel>>,
    /// Failed logins per source address: count and time of the last one.
    failures: Mutex<HashMap<IpAddr, (u32, tokio::time::Instant)>>,
    /// Open live streams per session.
    streams: live::Streams,
}

impl Console {
    /// The console over these clients and settings.
    pub fn new(options: Options) -> Self {
        Self {
            inner: Arc::new(Inner {
                release: options.release,
                rollout: options.rollout,
                build: options.build,
                password: options.password,
                cookies: security::CookiePolicy {
                    secure: options.secure_cookies,
                },
                lifetimes: options.lifetimes,
                sessions: options.sessions,
                read_only: options.read_only,
                tokens: options.tokens,
                audit: options.audit,
                failures: Mutex::default(),
                streams: live::Streams::default(),
            }),
        }
    }

    fn release(&self) -> ReleaseServiceClient<Channel> {
        self.inner.release.clone()
    }

    fn rollout(&self) -> RolloutServiceClient<Channel> {
        self.inner.rollout.clone()
    }
}

/// The console's routes, every path under [`PREFIX`], with their own
/// authentication and security headers; mount them outside the API's.
pub fn router(console: Console) -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { axum::response::Redirect::permanent("/console/") }),
        )
        .route("/console/", get(apps::list))
        .route("/console/stream", get(live::rack_stream))
        .route("/console/login", get(auth::login_page).post(auth::login))
        .route("/console/logout", post(auth::logout))
        .route("/console/static/{file}", get(assets::serve))
        .route("/console/apps/{app}", get(apps::show))
        .route("/console/apps/{app}/stream", get(live::app_stream))
        .route(
            "/console/apps/{app}/releases/{id}/{action}",
            get(actions::confirm).post(actions::act),
        )
        .route(
            "/console/apps/{app}/cancel",
            get(actions::confirm_cancel).post(actions::cancel),
        )
        .route("/console/apps/{app}/promotions/{id}", get(promotion::page))
        .route(
            "/console/apps/{app}/promotions/{id}/stream",
            get(promotion::stream),
        )
        .route("/console/apps/{app}/env", get(env::page).post(env::change))
        .route("/console/apps/{app}/builds", get(history::builds))
        .route("/console/apps/{app}/builds/{id}", get(build_log::page))
        .route(
            "/console/apps/{app}/builds/{id}/stream",
            get(build_log::stream),
        )
        .route("/console/apps/{app}/processes", get(processes::page))
        .route(
            "/console/apps/{app}/processes/stream",
            get(live::processes_stream),
        )
        .route("/console/apps/{app}/logs", get(app_logs::page))
        .route("/console/apps/{app}/logs/stream", get(app_logs::stream))
        .route("/console/apps/{app}/activity", get(history::activity))
        .route(
            "/console/{*rest}",
            get(views::not_found).post(views::not_found),
        )
        .layer(axum::middleware::from_fn(security::headers))
        .with_state(console)
}
