//! The webhook suite's harness: a real HTTP receiver on loopback that
//! records what it gets and answers as told, a release service set up to
//! deliver to it quickly, polling until a condition holds, and a signature
//! check done the way a receiver does it. The relay tests use it too.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use slipway_api::release::v1 as pb;
use slipway_api::release::v1::webhook_service_client::WebhookServiceClient;
use slipway_release::Config;
use slipway_rpc::Channel;
use slipway_rpc::actor::Actor;
use tokio::sync::oneshot;

use crate::helpers::{Backend, MANIFEST, TestApp};

// ---------------------------------------------------------------- receiver

/// How the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// 200.
    Ok,
    /// This status.
    Status(u16),
    /// Never answers.
    Hang,
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Received {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
    pub(crate) fn action(&self) -> String {
        self.json()["action"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
    pub(crate) fn delivery(&self) -> String {
        self.headers["slipway-delivery"]
            .to_str()
            .unwrap()
            .to_owned()
    }
}

#[derive(Clone)]
pub(crate) struct ReceiverState {
    mode: Arc<Mutex<Mode>>,
    got: Arc<Mutex<Vec<Received>>>,
    /// Requests that arrived and were not answered (yet).
    pub(crate) hanging: Arc<Mutex<usize>>,
}

/// A real HTTP receiver on loopback.
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    pub(crate) state: ReceiverState,
    stop: Option<oneshot::Sender<()>>,
}

impl Receiver {
    pub(crate) async fn start(mode: Mode) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = ReceiverState {
            mode: Arc::new(Mutex::new(mode)),
            got: Arc::default(),
            hanging: Arc::default(),
        };
        let mut receiver = Self {
            addr: listener.local_addr().unwrap(),
            state,
            stop: None,
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        async fn handle(
            State(state): State<ReceiverState>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            state.got.lock().unwrap().push(Received { headers, body });
            let mode = *state.mode.lock().unwrap();
            match mode {
                Mode::Ok => StatusCode::OK,
                Mode::Status(code) => StatusCode::from_u16(code).unwrap(),
                Mode::Hang => {
                    *state.hanging.lock().unwrap() += 1;
                    std::future::pending::<()>().await;
                    StatusCode::OK
                }
            }
        }
        let app = axum::Router::new()
            .fallback(axum::routing::post(handle))
            .with_state(self.state.clone());
        let (tx, rx) = oneshot::channel::<()>();
        self.stop = Some(tx);
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
    }

    /// Stops listening: connections are refused until [`Receiver::up`].
    pub(crate) async fn down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Refused once the port no longer accepts.
        eventually("the receiver to refuse connections", || async {
            tokio::net::TcpStream::connect(self.addr)
                .await
                .is_err()
                .then_some(())
        })
        .await;
    }

    /// Listens again on the same port.
    pub(crate) async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub(crate) fn got(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ----------------------------------------------------------------- service

/// One release service on a fresh database (the suite's [`TestApp`]), set
/// up to deliver to loopback receivers quickly, with a webhooks client.
pub(crate) struct Service {
    pub(crate) app: TestApp,
    pub(crate) webhooks: WebhookServiceClient<Channel>,
}

impl Service {
    pub(crate) async fn spawn(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        let app = TestApp::spawn_with(backend, |config| {
            config.webhooks.rack_name = "test-rack".into();
            config.webhooks.webhook_allow_private = true;
            config.webhooks.webhook_backoff = Duration::from_millis(50);
            config.webhooks.webhook_poll = Duration::from_millis(100);
            tweak(config);
        })
        .await;
        Self::around(app).await
    }

    /// `app` with a webhooks client, once it answers.
    async fn around(app: TestApp) -> Self {
        let channel = slipway_rpc::channel(
            "release",
            std::slice::from_ref(&app.endpoint),
            &Default::default(),
        )
        .unwrap();
        eventually("the release service to answer", || async {
            app.client
                .clone()
                .list_apps(pb::ListAppsRequest {})
                .await
                .ok()
        })
        .await;
        Self {
            app,
            webhooks: WebhookServiceClient::new(channel),
        }
    }

    /// Another replica on the same database and key.
    pub(crate) async fn replica(&self) -> Self {
        Self::around(self.app.replica().await).await
    }

    fn as_actor<T>(message: T) -> tonic::Request<T> {
        Actor::token("ci-web", "10.0.0.7").request(message)
    }

    pub(crate) async fn add_key(&self) -> String {
        self.webhooks
            .clone()
            .create_webhook_key(pb::CreateWebhookKeyRequest {})
            .await
            .unwrap()
            .into_inner()
            .secret
            .unwrap()
            .value
    }

    pub(crate) async fn add_webhook(
        &self,
        url: &str,
        events: &[&str],
        app: &str,
    ) -> pb::CreateWebhookResponse {
        self.webhooks
            .clone()
            .create_webhook(Self::as_actor(pb::CreateWebhookRequest {
                url: Some(pb::WebhookSecret { value: url.into() }),
                app: app.into(),
                events: events.iter().map(|e| e.to_string()).collect(),
            }))
            .await
            .unwrap()
            .into_inner()
    }

    pub(crate) async fn create_app(&self, name: &str) {
        self.app
            .client
            .clone()
            .create_app(Self::as_actor(pb::CreateAppRequest {
                name: name.into(),
                deadline_seconds: 0,
            }))
            .await
            .unwrap();
    }

    pub(crate) async fn release(&self, app: &str) -> pb::Release {
        self.app
            .client
            .clone()
            .create_release(Self::as_actor(pb::CreateReleaseRequest {
                app: app.into(),
                build: Some(slipway_domain::BuildId::generate().to_string()),
                manifest: Some(MANIFEST.into()),
                description: Some("build 0a1b2c3 fix the thing".into()),
                artifacts: [("web".to_owned(), "file:///srv/artifact".to_owned())].into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .release
            .unwrap()
    }

    pub(crate) async fn promote(&self, app: &str, release: &str) -> pb::Promotion {
        self.app
            .client
            .clone()
            .promote_release(Self::as_actor(pb::PromoteReleaseRequest {
                app: app.into(),
                release: release.into(),
                force: false,
                deadline_seconds: 0,
            }))
            .await
            .unwrap()
            .into_inner()
            .promotion
            .unwrap()
    }

    pub(crate) async fn complete(
        &self,
        promotion: &str,
        outcome: pb::PromotionOutcome,
        reason: &str,
    ) -> Result<pb::Promotion, tonic::Status> {
        self.app.complete(promotion, outcome, reason).await
    }

    pub(crate) async fn deliveries(&self) -> Vec<pb::WebhookDelivery> {
        self.webhooks
            .clone()
            .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
                webhook: String::new(),
                limit: 1000,
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries
    }

    /// Waits until every delivery has left `pending`, and returns them.
    pub(crate) async fn settled(&self) -> Vec<pb::WebhookDelivery> {
        eventually("every delivery to settle", || async {
            let all = self.deliveries().await;
            (!all.is_empty() && all.iter().all(|d| d.state != "pending")).then_some(all)
        })
        .await
    }
}

/// Polls `probe` every 20 ms until it answers, for at most 30 s.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks `Convox-Signature` the way a receiver does, with an HMAC computed
/// here: the `v1=` values that verify under `key`.
pub(crate) fn verifying(received: &Received, key: &str) -> usize {
    let header = received.headers["convox-signature"].to_str().unwrap();
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v.to_owned()),
            Some(("v1", v)) => sigs.push(v.to_owned()),
            _ => panic!("unexpected segment in {header}"),
        }
    }
    let t = t.expect("a t= segment");
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now - t.parse::<i64>().unwrap()).abs() < 300,
        "t within 5 minutes"
    );
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&received.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    sigs.iter().filter(|s| **s == expected).count()
}
