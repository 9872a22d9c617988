//! Webhook delivery survives `kill -9` of the delivering service: the
//! release service runs as a process (`slipway-release`, on PostgreSQL)
//! with one delivery waiting for its next retry (its receiver answered 503)
//! and one attempt in flight (its receiver hangs); it is SIGKILLed, both
//! receivers recover, and a new process on the same database delivers both
//! (the second once the dead process's claim has expired), each under its
//! one delivery id.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use slipway_api::release::v1 as pb;
use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_api::release::v1::webhook_service_client::WebhookServiceClient;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    Unavailable,
    Hang,
}

#[derive(Clone, Default)]
struct Got {
    mode: Arc<Mutex<Option<Mode>>>,
    deliveries: Arc<Mutex<Vec<(String, Bytes)>>>,
    /// Requests that arrived while hanging.
    hung: Arc<Mutex<u32>>,
}

async fn receiver(mode: Mode) -> (SocketAddr, Got) {
    async fn handle(State(got): State<Got>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let mode = got.mode.lock().unwrap().expect("a mode");
        if mode == Mode::Hang {
            *got.hung.lock().unwrap() += 1;
            std::future::pending::<()>().await;
        }
        let id = headers["slipway-delivery"].to_str().unwrap().to_owned();
        got.deliveries.lock().unwrap().push((id, body));
        match mode {
            Mode::Ok => StatusCode::OK,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
    let got = Got::default();
    *got.mode.lock().unwrap() = Some(mode);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .fallback(axum::routing::post(handle))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, got)
}

/// Starts `slipway-release` and waits for its `serving addr=` line.
async fn release_process(
    database: &str,
    env_key: &str,
    dir: &std::path::Path,
) -> (Child, SocketAddr) {
    let mut child = Command::new(slipway_e2e::cluster::binary("slipway-release"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            database,
            "--env-key",
            env_key,
        ])
        .args(["--rack-name", "e2e", "--webhook-allow-private"])
        .args([
            "--webhook-timeout",
            "3s",
            "--webhook-backoff",
            "300ms",
            "--webhook-poll",
            "200ms",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start slipway-release");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("serving")
                && let Some(rest) = line.split("addr=").nth(1)
                && let Some(addr) = rest
                    .split_whitespace()
                    .next()
                    .and_then(|a| a.trim_matches('"').parse::<SocketAddr>().ok())
            {
                return addr;
            }
        }
        panic!("slipway-release ended without serving")
    })
    .await
    .expect("slipway-release serves within a minute");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

fn clients(
    addr: SocketAddr,
) -> (
    ReleaseServiceClient<tonic::transport::Channel>,
    WebhookServiceClient<tonic::transport::Channel>,
) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    (
        ReleaseServiceClient::new(channel.clone()),
        WebhookServiceClient::new(channel),
    )
}

async fn deliveries(
    hooks: &mut WebhookServiceClient<tonic::transport::Channel>,
) -> Vec<pb::WebhookDelivery> {
    hooks
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
            webhook: String::new(),
            limit: 100,
        })
        .await
        .map(|r| r.into_inner().deliveries)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_delivering_service_mid_retry_still_delivers() {
    let db = slipway_storage::testing::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let env_key = base64::engine::general_purpose::STANDARD.encode(rand_key());
    let (failing_addr, failing) = receiver(Mode::Unavailable).await;
    let (hanging_addr, hanging) = receiver(Mode::Hang).await;

    let (mut first, addr) = release_process(&db.url, &env_key, &dir.path().join("a")).await;
    let (mut release, mut hooks) = clients(addr);
    for (receiver, events) in [
        (failing_addr, "app:create"),
        (hanging_addr, "release:create"),
    ] {
        hooks
            .create_webhook(pb::CreateWebhookRequest {
                url: Some(pb::WebhookSecret {
                    value: format!("http://{receiver}/hook"),
                }),
                app: String::new(),
                events: vec![events.into()],
            })
            .await
            .unwrap();
    }
    release
        .create_app(pb::CreateAppRequest {
            name: "web".into(),
            deadline_seconds: 0,
        })
        .await
        .unwrap();
    release
        .create_release(pb::CreateReleaseRequest {
            app: "web".into(),
            build: Some(slipway_domain::BuildId::generate().to_string()),
            manifest: Some(
                "services:\n  web:\n    build: .\n    command: x\n    port: 5000\n".into(),
            ),
            artifacts: [("web".to_owned(), "file:///srv/artifact".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Mid-retry: the 503 receiver has been tried twice; the hanging one
    // holds an attempt in flight (more requests arrived than attempts were
    // recorded; each lasts up to the 3 s timeout).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = deliveries(&mut hooks).await;
        let retried = all
            .iter()
            .any(|d| d.action == "app:create" && d.attempts >= 2 && d.state == "pending");
        let in_flight = all
            .iter()
            .find(|d| d.action == "release:create")
            .is_some_and(|d| *hanging.hung.lock().unwrap() > d.attempts);
        if retried && in_flight {
            break;
        }
        assert!(Instant::now() < deadline, "no retry seen: {all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failing.deliveries.lock().unwrap().len() >= 2);
    first.start_kill().expect("SIGKILL");
    first.wait().await.unwrap();
    // Nothing was delivered: neither receiver ever answered 2xx.
    *failing.mode.lock().unwrap() = Some(Mode::Ok);
    *hanging.mode.lock().unwrap() = Some(Mode::Ok);

    let (_second, addr) = release_process(&db.url, &env_key, &dir.path().join("b")).await;
    let (_, mut hooks) = clients(addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    let settled = loop {
        let all = deliveries(&mut hooks).await;
        if all.len() == 2 && all.iter().all(|d| d.state == "delivered") {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered after the restart: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for d in &settled {
        let got = if d.action == "app:create" {
            &failing
        } else {
            &hanging
        };
        let got = got.deliveries.lock().unwrap();
        let ok: Vec<_> = got.iter().filter(|(id, _)| *id == d.id).collect();
        assert!(!ok.is_empty(), "{} never arrived", d.id);
        // Every copy of a delivery is the same delivery.
        assert!(ok.iter().all(|(_, body)| *body == ok[0].1));
        assert!(got.iter().all(|(id, _)| *id == d.id), "only its one id");
    }
}

fn rand_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    for chunk in key.chunks_mut(16) {
        chunk.copy_from_slice(&uuid::Uuid::new_v4().into_bytes());
    }
    key
}

/// `slipway webhooks …` against the embedded rack (which refuses
/// non-public receivers, as a rack does unless `--webhook-allow-private`):
/// add (the first prints its signing key once, on stdout alone), list with
/// secrets hidden, refusals of other schemes and of loopback literals, a
/// build's `build:create` relayed from the build service's outbox into a
/// delivery whose attempts are refused at connection time (the name
/// resolves to loopback) and shown by `webhooks deliveries`, keys, remove.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_manages_webhooks_and_the_rack_refuses_loopback_receivers() {
    let rack = slipway_e2e::TestRack::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    let (addr, got) = receiver(Mode::Ok).await;
    rack.slipway_ok(dir, &["apps", "create", "myapp"]).await;

    let url = format!(
        "http://bot:hunter2-canary@localhost:{}/hook?k=canary",
        addr.port()
    );
    let added = rack
        .slipway(dir, &["webhooks", "add", &url, "-a", "myapp"])
        .await;
    let stdout = slipway_e2e::ok_stdout(&added, "webhooks add");
    let stderr = String::from_utf8_lossy(&added.stderr);
    assert!(stdout.starts_with("Adding webhook... OK, W"), "{stdout}");
    let key = stdout.lines().nth(1).expect("the key on its own line");
    assert!(key.starts_with("slwhk_"), "{stdout}");
    assert!(stderr.contains("shown only this once"), "{stderr}");
    let webhook = stdout
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();

    let list = rack.slipway_ok(dir, &["webhooks"]).await;
    assert!(list.contains(&webhook) && list.contains("myapp"), "{list}");
    assert!(!list.contains("canary") && list.contains("***"), "{list}");

    for (bad, needle) in [
        ("ftp://example.com/x".to_owned(), "http:// or https://"),
        (format!("http://127.0.0.1:{}/", addr.port()), "not public"),
    ] {
        let out = rack.slipway(dir, &["webhooks", "add", &bad]).await;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{bad}: {err}");
    }

    // A build: its start goes through the build service's outbox to the
    // release service, which writes the delivery.
    let source = slipway_e2e::example("myapp");
    rack.slipway_ok(
        dir,
        &["build", source.to_str().unwrap(), "-a", "myapp", "--id"],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let shown = loop {
        let shown = rack.slipway_ok(dir, &["webhooks", "deliveries"]).await;
        let refused = |action: &str| {
            shown
                .lines()
                .any(|l| l.contains(action) && l.contains("pending") && l.contains("not public"))
        };
        if refused("build:create") && refused("release:create") {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "no refused build:create delivery: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!shown.contains("canary"), "{shown}");
    assert!(
        got.deliveries.lock().unwrap().is_empty(),
        "nothing reached loopback"
    );

    let keys = rack.slipway_ok(dir, &["webhooks", "keys"]).await;
    assert_eq!(keys.lines().count(), 2, "{keys}");
    assert!(!keys.contains(key), "{keys}");
    let second = rack.slipway_ok(dir, &["webhooks", "keys", "add"]).await;
    assert!(second.trim().starts_with("slwhk_") && second.trim() != key);
    assert_eq!(
        rack.slipway_ok(dir, &["webhooks", "keys"])
            .await
            .lines()
            .count(),
        3
    );

    let removed = rack
        .slipway_ok(dir, &["webhooks", "remove", &webhook])
        .await;
    assert_eq!(removed.trim(), format!("Removing webhook {webhook}... OK"));
    let list = rack.slipway_ok(dir, &["webhooks"]).await;
    assert!(!list.contains(&webhook), "{list}");
    let after = rack.slipway_ok(dir, &["webhooks", "deliveries"]).await;
    assert!(!after.contains("pending"), "removal cancels: {after}");
    assert!(after.contains("cancelled"), "{after}");
}
