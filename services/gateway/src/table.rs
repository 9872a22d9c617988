//! The gateway's routes as one table: the router is built from it, and
//! [`routes`] lists it, so tests that must cover every route (the
//! authentication suite) cover a route the day it is added.

use std::convert::Infallible;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::routing::{MethodFilter, on};
use tower_http::limit::RequestBodyLimitLayer;

use crate::auth::SOCKET_ROUTES;
use crate::{AppState, Config, builds, processes, promotions, routes, scale, stream, webhooks};

/// What kind of request a route serves, which decides its limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// A small request and answer, under the request timeout.
    Api,
    /// A streamed source upload, under the upload size cap.
    Upload,
    /// A websocket; a failed login is reported inside the stream.
    Socket,
}

/// One route of the gateway.
#[derive(Clone, Debug)]
pub struct RouteInfo {
    /// Its method.
    pub method: Method,
    /// Its path pattern, `{name}` for a parameter.
    pub path: &'static str,
    /// Its kind.
    pub kind: RouteKind,
}

struct Table<'c> {
    config: &'c Config,
    router: Router<AppState>,
    list: Vec<RouteInfo>,
}

impl Table<'_> {
    fn add<H, T>(&mut self, method: Method, path: &'static str, kind: RouteKind, handler: H)
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        assert_eq!(
            kind == RouteKind::Socket,
            SOCKET_ROUTES.contains(&path),
            "{path}: the socket routes are exactly auth::SOCKET_ROUTES"
        );
        let filter = MethodFilter::try_from(method.clone()).expect("a routable method");
        let route = on(filter, handler);
        let route = match kind {
            RouteKind::Api => route
                .layer::<_, Infallible>(RequestBodyLimitLayer::new(self.config.max_body_bytes))
                .layer::<_, Infallible>(tower_http::timeout::TimeoutLayer::with_status_code(
                    StatusCode::GATEWAY_TIMEOUT,
                    self.config.request_timeout,
                )),
            // Sources may be large; everything else is small.
            RouteKind::Upload => route
                .layer::<_, Infallible>(RequestBodyLimitLayer::new(self.config.max_upload_bytes))
                .layer(DefaultBodyLimit::disable()),
            RouteKind::Socket => route,
        };
        self.router = std::mem::take(&mut self.router).route(path, route);
        self.list.push(RouteInfo { method, path, kind });
    }
}

fn table(config: &Config) -> Table<'_> {
    use Method as M;
    use RouteKind::{Api, Socket, Upload};
    use routes::*;
    let mut t = Table {
        config,
        router: Router::new(),
        list: Vec::new(),
    };
    t.add(M::POST, "/apps/{app}/objects/{*key}", Upload, upload_object);
    t.add(M::GET, "/system", Api, system);
    t.add(M::GET, "/apps", Api, list_apps);
    t.add(M::POST, "/apps", Api, create_app);
    t.add(M::GET, "/apps/{app}", Api, get_app);
    t.add(M::DELETE, "/apps/{app}", Api, delete_app);
    t.add(M::POST, "/apps/{app}/cancel", Api, cancel_app);
    t.add(M::GET, "/apps/{app}/builds", Api, list_builds);
    t.add(M::POST, "/apps/{app}/builds", Api, create_build);
    t.add(M::GET, "/apps/{app}/builds/{id}", Api, get_build);
    let import = "/apps/{app}/builds/import";
    t.add(M::POST, import, Upload, builds::import);
    t.add(M::GET, "/apps/{app}/releases", Api, list_releases);
    t.add(M::POST, "/apps/{app}/releases", Api, create_release);
    t.add(M::GET, "/apps/{app}/releases/{id}", Api, get_release);
    t.add(M::POST, "/apps/{app}/releases/{id}/promote", Api, promote);
    t.add(M::POST, "/apps/{app}/releases/{id}/rollback", Api, rollback);
    t.add(M::POST, "/apps/{app}/env", Api, change_env);
    let list = "/apps/{app}/promotions";
    t.add(M::GET, list, Api, promotions::list_promotions);
    t.add(M::GET, "/apps/{app}/promotions/{id}", Api, get_promotion);
    t.add(M::GET, "/apps/{app}/processes", Api, list_processes);
    t.add(M::GET, "/apps/{app}/services", Api, scale::list_services);
    let service = "/apps/{app}/services/{service}";
    t.add(M::PUT, service, Api, scale::update_service);
    let restart = "/apps/{app}/services/{service}/restart";
    t.add(M::POST, restart, Api, scale::restart_service);
    t.add(M::GET, "/apps/{app}/budget", Api, budget);
    t.add(M::GET, "/apps/{app}/configs/{name}", Api, get_config);
    t.add(M::GET, "/auth", Api, auth_check);
    t.add(M::GET, SOCKET_ROUTES[0], Socket, stream::build_logs);
    t.add(M::GET, SOCKET_ROUTES[1], Socket, stream::app_logs);
    t.add(M::GET, SOCKET_ROUTES[2], Socket, stream::app_logs);
    t.add(M::GET, SOCKET_ROUTES[3], Socket, stream::promotion_events);
    t.add(
        M::POST,
        "/apps/{app}/services/{service}/processes",
        Api,
        processes::run_process,
    );
    t.add(
        M::GET,
        "/apps/{app}/processes/{pid}",
        Api,
        processes::get_process,
    );
    t.add(
        M::DELETE,
        "/apps/{app}/processes/{pid}",
        Api,
        processes::stop_process,
    );
    t.add(M::GET, SOCKET_ROUTES[4], Socket, processes::exec);
    t.add(M::GET, "/webhooks", Api, webhooks::list);
    t.add(M::POST, "/webhooks", Api, webhooks::create);
    t.add(M::DELETE, "/webhooks/{id}", Api, webhooks::delete);
    t.add(M::GET, "/webhooks/keys", Api, webhooks::list_keys);
    t.add(M::POST, "/webhooks/keys", Api, webhooks::create_key);
    t.add(M::DELETE, "/webhooks/keys/{id}", Api, webhooks::delete_key);
    t.add(M::GET, "/webhooks/deliveries", Api, webhooks::deliveries);
    t.add(M::GET, "/tokens", Api, crate::token_routes::list);
    t.add(M::POST, "/tokens", Api, crate::token_routes::create);
    let token = "/tokens/{name}";
    t.add(M::DELETE, token, Api, crate::token_routes::revoke);
    t.add(M::GET, "/audit", Api, crate::audit::list);
    t
}

/// The routes, unauthenticated and without state: [`crate::router`] adds
/// both.
pub(crate) fn router(config: &Config) -> Router<AppState> {
    table(config).router
}

/// Every route the gateway serves.
pub fn routes(config: &Config) -> Vec<RouteInfo> {
    table(config).list
}
