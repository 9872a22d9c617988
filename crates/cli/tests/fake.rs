//! A fake gateway for the CLI tests: axum on 127.0.0.1:0 answering the
//! routes the `slipway` command uses with canned data, recording every
//! request, and checking HTTP Basic credentials like the real one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// The password the fake accepts.
pub(crate) const PASSWORD: &str = "secret";

/// The build log the fake streams.
pub(crate) const BUILD_LOG: &str =
    "Step 1/2 : FROM scratch\nStep 2/2 : COPY . /app\nSuccessfully built\n";

/// The events of a successful rollout.
pub(crate) const EVENTS_OK: &[&str] = &[
    "2019-01-01T00:00:49Z system/k8s/atom/app Status: Running => Pending\n",
    "2019-01-01T00:00:51Z system/k8s/web Scaled up replica set web-745f845dc to 1\n",
    "2019-01-01T00:00:53Z system/k8s/atom/app Status: Pending => Updating\n",
    "2019-01-01T00:00:56Z system/k8s/web-745f845dc-rzl2q Started container main\n",
];

/// The events of a rollout that was rolled back.
pub(crate) const EVENTS_FAILED: &[&str] = &[
    "2019-01-01T00:01:00Z system/k8s/atom/app Status: Running => Pending\n",
    "2019-01-01T00:01:02Z system/k8s/web-1 health check failed: GET / returned 500\n",
    "2019-01-01T00:01:09Z system/k8s/atom/app Status: Updating => Reverting\n",
];

/// Why the failing promotion was rolled back.
pub(crate) const FAILED_REASON: &str = "web: health check failed 3 times: GET / returned 500";

/// One recorded request.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    /// `GET`, `POST`, ….
    pub(crate) method: String,
    /// The path, without the query.
    pub(crate) path: String,
    /// The query, if any.
    pub(crate) query: Option<String>,
    /// The `Authorization` header.
    pub(crate) authorization: Option<String>,
    /// The `Content-Type` header.
    pub(crate) content_type: Option<String>,
    /// The body.
    pub(crate) body: Vec<u8>,
}

/// A running fake.
pub(crate) struct Fake {
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Fake {
    /// Starts a fake on a free port.
    pub(crate) async fn start() -> Self {
        Self::serve(None).await
    }

    /// Starts a fake serving HTTPS with a self-signed certificate it
    /// generates into `dir` (`dir/cert.pem`, what SLIPWAY_CA_FILE names),
    /// the way the gateway does.
    pub(crate) async fn start_tls(dir: &std::path::Path) -> Self {
        let addr = "127.0.0.1:0".parse().unwrap();
        let (cert, key) = slipway_gateway::tls::self_signed(dir, addr, &[]).unwrap();
        let args = slipway_gateway::tls::TlsArgs {
            tls_cert: Some(cert),
            tls_key: Some(key),
            ..Default::default()
        };
        Self::serve(args.server_config(dir, addr).unwrap()).await
    }

    async fn serve(tls: Option<std::sync::Arc<rustls::ServerConfig>>) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let router = Router::new()
            .route("/apps/{app}/builds/{id}/logs", get(build_logs))
            .route("/apps/{app}/promotions/{id}/events", get(promotion_events))
            .fallback(handle)
            .with_state(requests.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        match tls {
            // TLS the way the gateway terminates it: its own serve loop.
            Some(tls) => {
                tokio::spawn(async move {
                    let args = slipway_gateway::serve::ConnectionArgs::default();
                    slipway_gateway::serve::serve(
                        listener,
                        Some(tls),
                        router,
                        &args,
                        std::future::pending(),
                    )
                    .await
                    .unwrap()
                });
            }
            None => {
                tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
            }
        }
        Self {
            base: format!("{scheme}://127.0.0.1:{}", addr.port()),
            requests,
        }
    }

    /// The rack URL with the right password.
    pub(crate) fn rack_url(&self) -> String {
        self.base
            .replacen("://", &format!("://convox:{PASSWORD}@"), 1)
    }

    /// Every request so far.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// The requests to `method path`.
    pub(crate) fn requests_to(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }
}

type Shared = Arc<Mutex<Vec<Recorded>>>;

fn authorised(headers: &HeaderMap) -> bool {
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("convox:{PASSWORD}"))
    );
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str())
}

fn text(status: StatusCode, message: &str) -> Response {
    (status, format!("{message}\n")).into_response()
}

fn json_response(value: Value) -> Response {
    axum::Json(value).into_response()
}

fn release(id: &str, created: chrono::DateTime<chrono::Utc>, description: &str) -> Value {
    json!({
        "id": id, "app": "myapp", "build": "BABCDEFGHI", "env": "BAR=baz\nFOO=bar",
        "manifest": "services:\n  web:\n    build: .\n    command: bin/web\n    port: 5000\n",
        "description": description, "created": created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

fn promotion(id: &str, state: &str, reason: &str) -> Value {
    json!({"id": id, "app": "myapp", "release": "", "state": state, "reason": reason, "noop": false, "message": ""})
}

async fn handle(
    State(requests): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    requests.lock().unwrap().push(Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: body.to_vec(),
    });
    if !authorised(&headers) {
        return text(StatusCode::UNAUTHORIZED, "invalid authentication");
    }
    let segments: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let now = chrono::Utc::now();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["system"]) => json_response(
            json!({"name": "dev", "provider": "local", "status": "running", "version": "3.24.6"}),
        ),
        ("GET", ["apps"]) => json_response(json!([
            {"name": "myapp", "status": "running", "release": "RBCDEFGHIJ", "generation": "3"},
            {"name": "new", "status": "running", "release": ""},
        ])),
        ("GET", ["apps", "missing", ..]) => text(StatusCode::NOT_FOUND, "app not found: missing"),
        ("GET", ["apps", app]) => json_response(
            json!({"name": app, "status": "running", "release": "RBCDEFGHIJ", "generation": "3"}),
        ),
        ("POST", ["apps", app, "objects", key @ ..]) => {
            json_response(json!({"Url": format!("object://{app}/{}", key.join("/"))}))
        }
        ("POST", ["apps", _, "builds"]) => {
            json_response(json!({"id": "BABCDEFGHI", "status": "created"}))
        }
        ("GET", ["apps", _, "builds", id]) => json_response(json!({
            "id": id, "status": "complete", "release": "RBCDEFGHIJ",
            "manifest": "services:\n  web:\n    build: .\n", "started": "2026-11-23T06:20:52.113Z",
        })),
        ("GET", ["apps", _, "releases"]) => json_response(json!([
            release(
                "RCDEFGHIJK",
                now - chrono::Duration::seconds(61),
                "env add:FOO"
            ),
            release(
                "RBCDEFGHIJ",
                now - chrono::Duration::seconds(300),
                "build 0a1b2c3d4e my commit message"
            ),
        ])),
        ("GET", ["apps", _, "releases", "RNOTFOUNDX"]) => {
            text(StatusCode::NOT_FOUND, "release not found: RNOTFOUNDX")
        }
        ("GET", ["apps", _, "releases", id]) => {
            let created = chrono::DateTime::parse_from_rfc3339("2026-11-23T06:22:44.261Z")
                .unwrap()
                .to_utc();
            json_response(release(id, created, "env add:FOO"))
        }
        ("POST", ["apps", _, "releases", "RACTIVEXXX", "promote"]) => json_response(json!({
            "id": "", "state": "succeeded", "noop": true, "message": "release RACTIVEXXX is already active",
        })),
        ("POST", ["apps", _, "releases", "RBUSYBUSYX", "promote"]) => {
            text(StatusCode::FORBIDDEN, "app is currently updating")
        }
        ("POST", ["apps", _, "releases", "RDROPDROPD", "promote"]) => {
            json_response(promotion("PDROP", "pending", ""))
        }
        ("POST", ["apps", _, "releases", "RFAILFAILF", "promote"]) => {
            json_response(promotion("PFAIL", "pending", ""))
        }
        ("POST", ["apps", _, "releases", _, "promote"]) => {
            json_response(promotion("POK", "pending", ""))
        }
        ("POST", ["apps", _, "releases", _, "rollback"]) => json_response(json!({
            "release": release("RDEFGHIJKL", now, "rollback to RBCDEFGHIJ"),
            "promotion": promotion("POK", "pending", ""),
        })),
        // The newest release's last promotion succeeded: env changes warn of nothing.
        ("GET", ["apps", _, "promotions"]) => json_response(json!([{
            "id": "POK", "app": "myapp", "release": "RCDEFGHIJK", "state": "succeeded",
            "reason": "",
        }])),
        ("GET", ["apps", _, "promotions", "PDROP"]) => {
            json_response(promotion("PDROP", "rolling_out", ""))
        }
        ("GET", ["apps", _, "promotions", "POK"]) => {
            json_response(promotion("POK", "succeeded", ""))
        }
        ("GET", ["apps", _, "promotions", "PFAIL"]) => {
            json_response(promotion("PFAIL", "rolled_back", FAILED_REASON))
        }
        ("POST", ["apps", _, "env"]) => json_response(release("RCDEFGHIJK", now, "env add:FOO")),
        ("GET", ["apps", _, "processes"]) => json_response(json!([{
            "id": "web-tqfee-ztay3", "name": "web", "status": "running", "release": "RBCDEFGHIJ",
            "started": (now - chrono::Duration::seconds(34)).to_rfc3339(), "command": "",
        }])),
        ("GET", ["apps", _, "services"]) => json_response(json!([
            {"name": "web", "domain": "127.0.0.1:41000", "ports": [{"balancer": 0, "container": 41000}]},
            {"name": "worker", "domain": "", "ports": []},
        ])),
        _ => text(StatusCode::NOT_FOUND, "response status 404"),
    }
}

async fn send_all(mut socket: WebSocket, chunks: Vec<String>) {
    for chunk in chunks {
        if socket.send(Message::Text(chunk.into())).await.is_err() {
            return;
        }
        // Arrive one at a time, like a real rollout's events.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = socket.send(Message::Binary(Bytes::new())).await;
    let _ = socket.send(Message::Close(None)).await;
}

async fn build_logs(headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let chunks = if authorised(&headers) {
        BUILD_LOG.split_inclusive('\n').map(str::to_owned).collect()
    } else {
        vec!["ERROR: invalid authentication\n".to_owned()]
    };
    ws.on_upgrade(move |socket| send_all(socket, chunks))
}

async fn promotion_events(
    State(requests): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let after = header("after");
    requests.lock().unwrap().push(Recorded {
        method: "GET".into(),
        path: format!("/apps/{app}/promotions/{id}/events"),
        query: after.clone().map(|a| format!("after={a}")),
        authorization: header("authorization"),
        content_type: None,
        body: Vec::new(),
    });
    let (events, state, reason) = match id.as_str() {
        "PFAIL" => (EVENTS_FAILED, "rolled_back", FAILED_REASON),
        _ => (EVENTS_OK, "succeeded", ""),
    };
    let chunks: Vec<String> = if !authorised(&headers) {
        vec!["ERROR: invalid authentication\n".to_owned()]
    } else if header("typed").as_deref() == Some("true") {
        // Typed frames: events numbered from 1, then the result. PDROP's
        // first stream breaks after two events, as a restarting gateway's
        // would; a stream resumed after an event goes on from there.
        let from = after.and_then(|a| a.parse::<usize>().ok()).unwrap_or(0);
        let drop = id == "PDROP" && from == 0;
        let mut frames: Vec<String> = events
            .iter()
            .enumerate()
            .skip(from)
            .take(if drop { 2 } else { usize::MAX })
            .map(|(i, line)| {
                json!({"event": {"id": (i + 1).to_string(), "line": line}}).to_string()
            })
            .collect();
        if !drop {
            frames.push(json!({"result": {"state": state, "reason": reason}}).to_string());
        }
        frames
    } else {
        events.iter().map(|s| (*s).to_owned()).collect()
    };
    ws.on_upgrade(move |socket| send_all(socket, chunks))
}
