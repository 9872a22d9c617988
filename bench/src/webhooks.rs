//! `webhooks`: delivery latency from an event to its receivers, with 1 and
//! 50 healthy receivers (each its own HTTP server on loopback), beside a
//! direct POST of a body of the same size from this process to the same
//! receivers in the same run.
//!
//! - measured: `CreateApp` on the release service (in-process, PostgreSQL
//!   scratch database) writes `app:create` into the outbox; the time from
//!   sending the call to each receiver's arrival of that delivery. One event
//!   at a time (the next once every receiver has it), so this is latency,
//!   not queueing.
//! - baseline: the same body POSTed by this process to every receiver at
//!   once (hyper-util client, kept-alive connections), start to arrival.
//!
//! Goal (issue 16): delivery p99 <= 100 ms with 50 healthy receivers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use serde_json::json;
use slipway_api::release::v1 as pb;
use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_api::release::v1::webhook_service_client::WebhookServiceClient;
use tokio::sync::Notify;

use crate::scratch::with_scratch_database;
use crate::stats::Spread;

/// Options of the `webhooks` benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// PostgreSQL server (a scratch database is created on it).
    #[arg(
        long,
        env = "SLIPWAY_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Events per case.
    #[arg(long, default_value = "200")]
    events: usize,
}

/// What the receivers saw: arrival times by the event's app name.
#[derive(Clone, Default)]
struct Arrivals {
    at: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
    changed: Arc<Notify>,
}

impl Arrivals {
    fn count(&self, key: &str) -> usize {
        self.at.lock().unwrap().get(key).map_or(0, Vec::len)
    }

    /// Waits until `key` arrived `n` times (30 s at most).
    async fn wait(&self, key: &str, n: usize) -> anyhow::Result<Vec<Instant>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let notified = self.changed.notified();
            if self.count(key) >= n {
                return Ok(self.at.lock().unwrap()[key].clone());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{key}: {} of {n} deliveries in 30 s",
                self.count(key)
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }
}

async fn receive(State(arrivals): State<Arrivals>, body: Bytes) -> StatusCode {
    let now = Instant::now();
    let key = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["data"]["app"].as_str().map(str::to_owned))
        .unwrap_or_default();
    arrivals
        .at
        .lock()
        .unwrap()
        .entry(key)
        .or_default()
        .push(now);
    arrivals.changed.notify_waiters();
    StatusCode::OK
}

/// `n` receivers, each an HTTP server of its own.
async fn receivers(n: usize, arrivals: &Arrivals) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        let app = axum::Router::new()
            .fallback(axum::routing::post(receive))
            .with_state(arrivals.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    Ok(addrs)
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let admin = args.database_url.clone();
    with_scratch_database(&admin, "webhooks_", |url| async move {
        measure(&args, &url).await
    })
    .await
}

async fn measure(args: &Args, url: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = slipway_release::Config::dev(dir.path().to_path_buf());
    config.store.database_url = Some(url.to_owned().into());
    config.env_key = Some(
        base64::engine::general_purpose::STANDARD
            .encode(rand::random::<[u8; 32]>())
            .into(),
    );
    // The receivers are on loopback.
    config.webhooks.webhook_allow_private = true;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(slipway_release::run(config, listener, async {
        let _ = stopped.await;
    }));
    let channel =
        slipway_rpc::channel("release", &[format!("http://{addr}")], &Default::default())?;
    let release = ReleaseServiceClient::new(channel.clone());
    let hooks = WebhookServiceClient::new(channel);
    let arrivals = Arrivals::default();
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();

    println!("webhooks: {} events per case, PostgreSQL", args.events);
    Spread::header();
    let mut summary = serde_json::Map::new();
    let mut total = 0usize;
    for n in [1usize, 50] {
        let addrs = receivers(n, &arrivals).await?;
        // Remove the previous case's receivers, add this case's.
        for old in hooks
            .clone()
            .list_webhooks(pb::ListWebhooksRequest {})
            .await?
            .into_inner()
            .webhooks
        {
            hooks
                .clone()
                .delete_webhook(pb::DeleteWebhookRequest { id: old.id })
                .await?;
        }
        for a in &addrs {
            hooks
                .clone()
                .create_webhook(pb::CreateWebhookRequest {
                    url: Some(pb::WebhookSecret {
                        value: format!("http://{a}/hook"),
                    }),
                    app: String::new(),
                    events: vec!["app:create".into()],
                })
                .await?;
        }

        // Warm up both paths (connections, caches).
        for i in 0..5 {
            let key = format!("warm-{n}-{i}");
            release
                .clone()
                .create_app(pb::CreateAppRequest {
                    name: key.clone(),
                    deadline_seconds: 0,
                })
                .await?;
            arrivals.wait(&key, n).await?;
        }

        let mut delivered = Vec::with_capacity(args.events * n);
        for i in 0..args.events {
            let key = format!("e{n}-{i}");
            let start = Instant::now();
            release
                .clone()
                .create_app(pb::CreateAppRequest {
                    name: key.clone(),
                    deadline_seconds: 0,
                })
                .await?;
            for t in arrivals.wait(&key, n).await? {
                delivered.push(t - start);
            }
            total += n;
        }

        // Baseline: the same-sized body POSTed directly to every receiver.
        let body = serde_json::to_vec(&json!({
            "action": "app:create", "status": "success",
            "timestamp": "2026-12-03T10:00:00.000000000Z",
            "data": {"app": "x", "rack": "slipway", "actor": "unknown", "id": "x", "message": ""},
            "delivery_id": format!("E{:032x}-W{:032x}", 0, 0),
            "event_id": format!("E{:032x}", 0),
        }))?;
        let mut direct = Vec::with_capacity(args.events * n);
        for i in 0..args.events + 5 {
            let key = format!("d{n}-{i}");
            let mut value: serde_json::Value = serde_json::from_slice(&body)?;
            value["data"]["app"] = json!(key);
            let bytes = Bytes::from(serde_json::to_vec(&value)?);
            let start = Instant::now();
            let posts = addrs.iter().map(|a| {
                let request = axum::http::Request::post(format!("http://{a}/hook"))
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes.clone()))
                    .expect("a valid request");
                http.request(request)
            });
            for response in futures::future::join_all(posts).await {
                anyhow::ensure!(response?.status().is_success(), "direct POST failed");
            }
            let at = arrivals.wait(&key, n).await?;
            if i >= 5 {
                direct.extend(at.into_iter().map(|t| t - start));
            }
        }

        let d = Spread::of(&mut delivered);
        let b = Spread::of(&mut direct);
        d.row(&format!("event -> receiver, {n} receiver(s)"));
        b.row(&format!("direct POST -> receiver, {n} receiver(s)"));
        summary.insert(
            format!("receivers_{n}"),
            json!({
                "delivery_ms": d.json(),
                "direct_post_ms": b.json(),
                "p99_ratio": d.p99 / b.p99,
                "p99_minus_direct_ms": d.p99 - b.p99,
            }),
        );
    }
    let failed = hooks
        .clone()
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
            webhook: String::new(),
            limit: 1000,
        })
        .await?
        .into_inner()
        .deliveries
        .into_iter()
        .filter(|d| d.state != "delivered")
        .count();
    println!("deliveries measured: {total}; of the last 1000, not delivered: {failed}");
    summary.insert("goal_p99_ms_50_receivers".into(), json!(100));
    println!("{}", serde_json::Value::Object(summary));
    let _ = stop.send(());
    server.await??;
    Ok(())
}
