//! The typed client: one async method per gateway route, each returning the
//! Convox JSON shapes of [`crate::types`]. Plain HTTP/1.1 over hyper (the
//! version axum and tonic already use, so the SDK adds no crates); request
//! bodies are encoded the way the `convox` CLI encodes them (forms for
//! params, raw bytes for objects, JSON for Slipway's env route).
//! `https://` racks go through hyper-rustls (see [`crate::tls`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::error::api_message;
use crate::socket::{LogStream, SocketOptions};
use crate::types::{
    App, Build, EnvChange, Object, Process, Promotion, Release, Rollback, Service, System,
};
use crate::{AFTER_HEADER, Error, PromotionEvents, RackUrl, TYPED_HEADER, TlsOptions};

/// The `User-Agent` of every request.
const USER_AGENT: &str = concat!("slipway/", env!("CARGO_PKG_VERSION"));

/// A client of one rack, through one gateway or several (`RACK_URL` may
/// list several, comma-separated). Cheap to clone; connections are reused.
///
/// With several gateways a call goes to the one that last answered and
/// moves on to the next when the connection is refused or the request
/// provably never left; a write (every non-GET request carries its own
/// `Idempotency-Key`, the same on every attempt) also moves on after an
/// ambiguous failure (sent, no answer), because the rack answers a repeated
/// key with the first result instead of acting twice.
#[derive(Clone, Debug)]
pub struct Client {
    /// The gateways, in the order given.
    racks: Arc<[RackUrl]>,
    /// The gateway calls go to first: the last one that answered.
    active: Arc<AtomicUsize>,
    http: HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// How the rack's certificate is checked (HTTP and websockets alike).
    tls: Arc<rustls::ClientConfig>,
    /// W3C `traceparent` sent on every request and websocket handshake, so
    /// that everything one command causes is one trace.
    traceparent: Option<String>,
}

/// Options of `POST /apps/{app}/builds` (unset fields are not sent).
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// `description`: what the build is; the release inherits it.
    pub description: Option<String>,
    /// `git-sha`: the commit built.
    pub git_sha: Option<String>,
    /// `manifest`: the manifest file in the source (default `convox.yml`).
    pub manifest: Option<String>,
    /// `no-cache=true`.
    pub no_cache: bool,
}

/// Options of `POST /apps/{app}/releases` (unset fields are not sent; an
/// empty `env` is sent as `env=`, which the server treats as "set to empty").
#[derive(Clone, Debug, Default)]
pub struct ReleaseOptions {
    /// `build`: the build the release runs.
    pub build: Option<String>,
    /// `env`: the complete env, `K=V` lines.
    pub env: Option<String>,
    /// `description`: overrides the server's.
    pub description: Option<String>,
    /// `parent-release`: fork from this release instead of the newest.
    pub parent_release: Option<String>,
}

/// Options of the app log stream (sent as headers, like the `convox` CLI).
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    /// Only one service's logs.
    pub service: Option<String>,
    /// How far back to start (server default: 2 minutes).
    pub since: Option<Duration>,
    /// False: end after the backlog instead of following.
    pub follow: bool,
}

/// A request body.
pub(crate) enum Body {
    Empty,
    Form(Vec<(&'static str, String)>),
    Json(Vec<u8>),
    Raw(Vec<u8>),
    /// No body; options as headers (`POST …/processes`, as Convox sends them).
    Headers(Vec<(&'static str, String)>),
}

impl Client {
    /// A client of the rack at `rack_url` (`http://user:password@host:port[/prefix]`,
    /// or several such URLs, comma-separated: the rack's gateways).
    /// An `https://` rack's certificate must chain to the system's roots.
    pub fn new(rack_url: &str) -> Result<Self, Error> {
        Self::with_tls(rack_url, &TlsOptions::default())
    }

    /// A client of the rack at `rack_url`, checking an `https://` rack's
    /// certificate as `tls` says (a CA file, or no check at all).
    pub fn with_tls(rack_url: &str, tls: &TlsOptions) -> Result<Self, Error> {
        Self::from_racks_with_tls(RackUrl::parse_list(rack_url)?, tls)
    }

    /// A client of an already parsed rack URL (system roots only).
    pub fn from_rack(rack: RackUrl) -> Result<Self, Error> {
        Self::from_rack_with_tls(rack, &TlsOptions::default())
    }

    /// A client of an already parsed rack URL, with `tls`.
    pub fn from_rack_with_tls(rack: RackUrl, tls: &TlsOptions) -> Result<Self, Error> {
        Self::from_racks_with_tls(vec![rack], tls)
    }

    /// A client of a rack's gateways (at least one), with `tls`.
    pub fn from_racks_with_tls(racks: Vec<RackUrl>, tls: &TlsOptions) -> Result<Self, Error> {
        if racks.is_empty() {
            return Err(Error::RackUrl {
                url: String::new(),
                reason: "no rack URL".to_owned(),
            });
        }
        let config = crate::tls::client_config(tls, racks.iter().any(RackUrl::is_https))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        // hyper-rustls adds ALPN `http/1.1` to its copy; the websocket copy
        // offers the same (the rack API is HTTP/1.1 only).
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(rustls::ClientConfig::clone(&config))
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = HttpClient::builder(TokioExecutor::new()).build(connector);
        let mut socket_config = rustls::ClientConfig::clone(&config);
        socket_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            racks: racks.into(),
            active: Arc::default(),
            http,
            tls: Arc::new(socket_config),
            traceparent: None,
        })
    }

    /// Sends `traceparent` (a W3C trace-context value) on every request
    /// from now on; the gateway's request spans become its children.
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// The websocket options of a stream: `headers`, plus `traceparent`.
    pub(crate) fn socket_options(&self, mut headers: Vec<(&'static str, String)>) -> SocketOptions {
        if let Some(traceparent) = &self.traceparent {
            headers.push(("traceparent", traceparent.clone()));
        }
        SocketOptions {
            headers,
            tls: Some(self.tls.clone()),
        }
    }

    /// The rack this client talks to (the gateway that last answered).
    pub fn rack(&self) -> &RackUrl {
        &self.racks[self.active.load(Ordering::Relaxed) % self.racks.len()]
    }

    /// Every gateway this client may use, in the order given.
    pub fn racks(&self) -> &[RackUrl] {
        &self.racks
    }

    /// Opens the websocket at `segments` on the current gateway, or the next
    /// one that accepts a connection.
    async fn stream(&self, segments: &[&str], options: &SocketOptions) -> Result<LogStream, Error> {
        let first = self.active.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.racks.len() {
            let at = (first + i) % self.racks.len();
            match LogStream::connect(&self.racks[at], segments, options).await {
                Ok(stream) => {
                    self.active.store(at, Ordering::Relaxed);
                    return Ok(stream);
                }
                Err(e @ Error::Connect { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one rack"))
    }

    /// `GET /system`.
    pub async fn system(&self) -> Result<System, Error> {
        self.json(Method::GET, &["system"], &[], Body::Empty).await
    }

    /// `GET /auth`: succeeds when the credentials are accepted.
    pub async fn auth(&self) -> Result<(), Error> {
        self.call(Method::GET, &["auth"], &[], Body::Empty)
            .await
            .map(drop)
    }

    /// `GET /apps`.
    pub async fn apps(&self) -> Result<Vec<App>, Error> {
        self.json(Method::GET, &["apps"], &[], Body::Empty).await
    }

    /// `POST /apps`: creates an app; `timeout` is its promotion deadline in seconds.
    pub async fn app_create(&self, name: &str, timeout: Option<u64>) -> Result<App, Error> {
        let mut form = vec![("name", name.to_owned())];
        if let Some(timeout) = timeout {
            form.push(("timeout", timeout.to_string()));
        }
        self.json(Method::POST, &["apps"], &[], Body::Form(form))
            .await
    }

    /// `GET /apps/{app}`.
    pub async fn app(&self, app: &str) -> Result<App, Error> {
        self.json(Method::GET, &["apps", app], &[], Body::Empty)
            .await
    }

    /// `DELETE /apps/{app}`.
    pub async fn app_delete(&self, app: &str) -> Result<(), Error> {
        self.call(Method::DELETE, &["apps", app], &[], Body::Empty)
            .await
            .map(drop)
    }

    /// `POST /apps/{app}/cancel`: cancels the app's promotion in flight.
    pub async fn app_cancel(&self, app: &str) -> Result<(), Error> {
        self.call(Method::POST, &["apps", app, "cancel"], &[], Body::Empty)
            .await
            .map(drop)
    }

    /// `POST /apps/{app}/objects/{key}`: uploads bytes (a source tarball).
    pub async fn object_store(&self, app: &str, key: &str, data: Vec<u8>) -> Result<Object, Error> {
        let mut segments = vec!["apps", app, "objects"];
        segments.extend(key.split('/'));
        self.json(Method::POST, &segments, &[], Body::Raw(data))
            .await
    }

    /// `POST /apps/{app}/builds`: starts a build of an uploaded source.
    pub async fn build_create(
        &self,
        app: &str,
        source_url: &str,
        options: &BuildOptions,
    ) -> Result<Build, Error> {
        let mut form = vec![("url", source_url.to_owned())];
        let optional = [
            ("description", &options.description),
            ("git-sha", &options.git_sha),
            ("manifest", &options.manifest),
        ];
        form.extend(
            optional
                .into_iter()
                .filter_map(|(k, v)| v.clone().map(|v| (k, v))),
        );
        if options.no_cache {
            form.push(("no-cache", "true".to_owned()));
        }
        self.json(
            Method::POST,
            &["apps", app, "builds"],
            &[],
            Body::Form(form),
        )
        .await
    }

    /// `GET /apps/{app}/builds/{id}`.
    pub async fn build(&self, app: &str, id: &str) -> Result<Build, Error> {
        self.json(Method::GET, &["apps", app, "builds", id], &[], Body::Empty)
            .await
    }

    /// `GET /apps/{app}/builds`, newest first.
    pub async fn builds(&self, app: &str, limit: Option<u32>) -> Result<Vec<Build>, Error> {
        let query: Vec<_> = limit
            .map(|l| ("limit", l.to_string()))
            .into_iter()
            .collect();
        self.json(Method::GET, &["apps", app, "builds"], &query, Body::Empty)
            .await
    }

    /// `GET /apps/{app}/builds/{id}.tgz`: the build as an archive.
    pub async fn build_export(&self, app: &str, id: &str) -> Result<Bytes, Error> {
        let file = format!("{id}.tgz");
        self.call(
            Method::GET,
            &["apps", app, "builds", &file],
            &[],
            Body::Empty,
        )
        .await
    }

    /// `POST /apps/{app}/builds/import`: builds an exported archive into a
    /// new build and release of `app` (not promoted).
    pub async fn build_import(&self, app: &str, archive: Vec<u8>) -> Result<Build, Error> {
        self.json(
            Method::POST,
            &["apps", app, "builds", "import"],
            &[],
            Body::Raw(archive),
        )
        .await
    }

    /// The build's log (websocket): from byte 0, live until the build ends.
    pub async fn build_logs(&self, app: &str, id: &str) -> Result<LogStream, Error> {
        self.stream(
            &["apps", app, "builds", id, "logs"],
            &self.socket_options(Vec::new()),
        )
        .await
    }

    /// `GET /apps/{app}/releases`, newest first (server default limit 10).
    pub async fn releases(&self, app: &str, limit: Option<u32>) -> Result<Vec<Release>, Error> {
        let query: Vec<_> = limit
            .map(|l| ("limit", l.to_string()))
            .into_iter()
            .collect();
        self.json(Method::GET, &["apps", app, "releases"], &query, Body::Empty)
            .await
    }

    /// `GET /apps/{app}/releases/{id}`.
    pub async fn release(&self, app: &str, id: &str) -> Result<Release, Error> {
        self.json(
            Method::GET,
            &["apps", app, "releases", id],
            &[],
            Body::Empty,
        )
        .await
    }

    /// `POST /apps/{app}/releases`: Convox's release create (fork + diff on the server).
    pub async fn release_create(
        &self,
        app: &str,
        options: &ReleaseOptions,
    ) -> Result<Release, Error> {
        let fields = [
            ("build", &options.build),
            ("description", &options.description),
            ("env", &options.env),
            ("parent-release", &options.parent_release),
        ];
        let form = fields
            .into_iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
            .collect();
        self.json(
            Method::POST,
            &["apps", app, "releases"],
            &[],
            Body::Form(form),
        )
        .await
    }

    /// `POST /apps/{app}/releases/{id}/promote`: starts a promotion (or
    /// answers a no-op when the release is already active).
    pub async fn release_promote(
        &self,
        app: &str,
        id: &str,
        force: bool,
    ) -> Result<Promotion, Error> {
        let form = vec![("force", force.to_string())];
        self.json(
            Method::POST,
            &["apps", app, "releases", id, "promote"],
            &[],
            Body::Form(form),
        )
        .await
    }

    /// Slipway: `POST /apps/{app}/releases/{id}/rollback`: copies the release
    /// and promotes the copy.
    pub async fn release_rollback(&self, app: &str, id: &str) -> Result<Rollback, Error> {
        self.json(
            Method::POST,
            &["apps", app, "releases", id, "rollback"],
            &[],
            Body::Empty,
        )
        .await
    }

    /// Slipway: `POST /apps/{app}/env`: applies only this change to the
    /// newest release's env, atomically on the server; returns the new release.
    pub async fn env_change(&self, app: &str, change: &EnvChange) -> Result<Release, Error> {
        let body = serde_json::to_vec(change).map_err(|e| Error::Decode {
            what: "env change".into(),
            reason: e.to_string(),
        })?;
        self.json(Method::POST, &["apps", app, "env"], &[], Body::Json(body))
            .await
    }

    /// Slipway: `GET /apps/{app}/promotions/{id}`.
    pub async fn promotion(&self, app: &str, id: &str) -> Result<Promotion, Error> {
        self.json(
            Method::GET,
            &["apps", app, "promotions", id],
            &[],
            Body::Empty,
        )
        .await
    }

    /// Slipway: the promotion's runtime events (websocket), one
    /// `<time> system/<runtime>/<object> <message>` line each, from the
    /// start; the stream ends when the rollout ends.
    pub async fn promotion_events(&self, app: &str, id: &str) -> Result<LogStream, Error> {
        self.stream(
            &["apps", app, "promotions", id, "events"],
            &self.socket_options(Vec::new()),
        )
        .await
    }

    /// Slipway: the promotion's events as typed frames (see
    /// [`PromotionEvents`]), after the event `after` (empty: from the
    /// start), ending with the promotion's result.
    pub async fn promotion_follow(
        &self,
        app: &str,
        id: &str,
        after: &str,
    ) -> Result<PromotionEvents, Error> {
        let mut headers = vec![(TYPED_HEADER, "true".to_owned())];
        if !after.is_empty() {
            headers.push((AFTER_HEADER, after.to_owned()));
        }
        self.stream(
            &["apps", app, "promotions", id, "events"],
            &self.socket_options(headers),
        )
        .await
        .map(PromotionEvents::new)
    }

    /// Slipway: `GET /apps/{app}/promotions`, newest first.
    pub async fn promotions(&self, app: &str, limit: Option<u32>) -> Result<Vec<Promotion>, Error> {
        let query: Vec<_> = limit
            .map(|l| ("limit", l.to_string()))
            .into_iter()
            .collect();
        self.json(
            Method::GET,
            &["apps", app, "promotions"],
            &query,
            Body::Empty,
        )
        .await
    }

    /// `GET /apps/{app}/processes`.
    pub async fn processes(&self, app: &str) -> Result<Vec<Process>, Error> {
        self.json(Method::GET, &["apps", app, "processes"], &[], Body::Empty)
            .await
    }

    /// `GET /apps/{app}/services`.
    pub async fn services(&self, app: &str) -> Result<Vec<Service>, Error> {
        self.json(Method::GET, &["apps", app, "services"], &[], Body::Empty)
            .await
    }

    /// `PUT /apps/{app}/services/{service}` (form `count`, `cpu`,
    /// `memory`): changes a service's scale; it rolls out in the background.
    pub async fn service_update(
        &self,
        app: &str,
        service: &str,
        form: &[(&'static str, String)],
    ) -> Result<(), Error> {
        self.call(
            Method::PUT,
            &["apps", app, "services", service],
            &[],
            Body::Form(form.to_vec()),
        )
        .await
        .map(drop)
    }

    /// `POST /apps/{app}/services/{service}/restart`: a rolling restart.
    pub async fn service_restart(&self, app: &str, service: &str) -> Result<(), Error> {
        self.call(
            Method::POST,
            &["apps", app, "services", service, "restart"],
            &[],
            Body::Empty,
        )
        .await
        .map(drop)
    }

    /// The app's logs (websocket), with options as headers.
    pub async fn app_logs(&self, app: &str, options: &LogOptions) -> Result<LogStream, Error> {
        let mut headers = vec![("Prefix", "true".to_owned())];
        if !options.follow {
            headers.push(("Follow", "false".to_owned()));
        }
        if let Some(since) = options.since {
            headers.push(("Since", go_duration(since)));
        }
        let socket = self.socket_options(headers);
        match &options.service {
            Some(service) => {
                self.stream(&["apps", app, "services", service, "logs"], &socket)
                    .await
            }
            None => self.stream(&["apps", app, "logs"], &socket).await,
        }
    }

    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Body,
    ) -> Result<T, Error> {
        let what = format!("{method} /{}", segments.join("/"));
        let bytes = self.call(method, segments, query, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
            what,
            reason: e.to_string(),
        })
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Body,
    ) -> Result<Bytes, Error> {
        let mut options = Vec::new();
        let (content_type, data) = match body {
            Body::Empty => ("application/octet-stream", Vec::new()),
            Body::Headers(headers) => {
                options = headers;
                ("application/octet-stream", Vec::new())
            }
            Body::Form(fields) => {
                let mut fields = fields;
                // Go's url.Values.Encode sorts the keys; do the same.
                fields.sort_by(|a, b| a.0.cmp(b.0));
                let encoded = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(fields)
                    .finish();
                ("application/x-www-form-urlencoded", encoded.into_bytes())
            }
            Body::Json(data) => ("application/json", data),
            Body::Raw(data) => ("application/octet-stream", data),
        };
        let request = Outgoing {
            method,
            segments,
            query,
            content_type,
            data: Bytes::from(data),
            options,
        };
        // One key per logical write, the same on every attempt: the rack
        // answers a repeated key with the first result.
        let key = (!matches!(request.method, Method::GET | Method::HEAD)).then(idempotency_key);
        let n = self.racks.len();
        let first = self.active.load(Ordering::Relaxed);
        let mut last = None;
        for attempt in 0..n * ROUNDS {
            if attempt > 0 && attempt % n == 0 {
                tokio::time::sleep(ROUND_PAUSE * (attempt / n) as u32).await;
            }
            let at = (first + attempt) % n;
            let error = match self.send(&self.racks[at], &request, key.as_deref()).await {
                Ok(answer) => {
                    self.active.store(at, Ordering::Relaxed);
                    return answer;
                }
                Err(error) => error,
            };
            // Never sent (refused, no route): any request may go elsewhere.
            // Sent without an answer: a read, or a write with its key.
            let again = matches!(error, Error::Connect { .. } | Error::Transport { .. });
            if !again {
                return Err(error);
            }
            last = Some(error);
        }
        Err(last.expect("at least one attempt"))
    }

    /// One attempt of `request` at `rack`: the rack's answer (`Ok`, an API
    /// error included), or why none came (`Err`: a connect or transport
    /// failure, or a refused certificate).
    async fn send(
        &self,
        rack: &RackUrl,
        request: &Outgoing<'_>,
        key: Option<&str>,
    ) -> Result<Result<Bytes, Error>, Error> {
        let url = rack.route(request.segments, request.query);
        let mut builder = Request::builder()
            .method(request.method.clone())
            .uri(url.as_str())
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::ACCEPT, "*/*")
            .header(header::CONTENT_TYPE, request.content_type);
        for (name, value) in &request.options {
            if let Ok(value) = HeaderValue::from_str(value) {
                builder = builder.header(*name, value);
            }
        }
        if let Some(key) = key.and_then(|k| HeaderValue::from_str(k).ok()) {
            builder = builder.header(IDEMPOTENCY_KEY, key);
        }
        if let Some(auth) = rack
            .authorization()
            .and_then(|a| HeaderValue::from_str(&a).ok())
        {
            builder = builder.header(header::AUTHORIZATION, auth);
        }
        if let Some(traceparent) = self
            .traceparent
            .as_deref()
            .and_then(|t| HeaderValue::from_str(t).ok())
        {
            builder = builder.header("traceparent", traceparent);
        }
        let http_request = match builder.body(Full::new(request.data.clone())) {
            Ok(r) => r,
            Err(e) => {
                return Ok(Err(Error::RackUrl {
                    url: rack.to_string(),
                    reason: e.to_string(),
                }));
            }
        };
        let response = self.http.request(http_request).await.map_err(|e| {
            if let Some(problem) = crate::tls::certificate_problem(&e) {
                return Error::Certificate {
                    rack: rack.to_string(),
                    problem,
                };
            }
            let reason = root_cause(&e);
            if e.is_connect() {
                Error::Connect {
                    rack: rack.to_string(),
                    reason,
                }
            } else {
                Error::Transport {
                    rack: rack.to_string(),
                    reason,
                }
            }
        })?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Transport {
                rack: rack.to_string(),
                reason: root_cause(&e),
            })?
            .to_bytes();
        if status >= 400 {
            return Ok(Err(Error::Api {
                status,
                message: api_message(status, &bytes),
            }));
        }
        Ok(Ok(bytes))
    }
}

/// A request as [`Client::call`] sends it, once per attempt.
struct Outgoing<'a> {
    method: Method,
    segments: &'a [&'a str],
    query: &'a [(&'a str, String)],
    content_type: &'static str,
    data: Bytes,
    options: Vec<(&'static str, String)>,
}

/// The header carrying a write's idempotency key.
pub(crate) const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// How often every gateway is tried before a call fails.
const ROUNDS: usize = 3;
/// Pause before the second round (twice that before the third).
const ROUND_PAUSE: Duration = Duration::from_millis(300);
/// How long a connection to a gateway may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A key no other write gets: 128 bits from the system's random source
/// (else the time, the process and a counter, which still differ per write).
fn idempotency_key() -> String {
    use std::io::Read as _;
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes[..8].copy_from_slice(&nanos.to_be_bytes());
        bytes[8..12].copy_from_slice(&std::process::id().to_be_bytes());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) as u32;
        bytes[12..].copy_from_slice(&n.to_be_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("cli-{hex}")
}

/// The innermost error's message (e.g. `Connection refused (os error 111)`).
pub(crate) fn root_cause(error: &dyn std::error::Error) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// A duration as Go prints it (`5s`, `2m0s`, `1h0m0s`, `1.5s`), which the
/// rack's header parser expects.
pub fn go_duration(d: Duration) -> String {
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, (total / 60) % 60, total % 60);
    let nanos = d.subsec_nanos();
    let seconds = if nanos == 0 {
        s.to_string()
    } else {
        let fraction = format!("{nanos:09}");
        format!("{s}.{}", fraction.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) if total == 0 && nanos == 0 => "0s".to_owned(),
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

#[cfg(test)]
mod tests;
