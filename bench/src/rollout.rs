//! `rollout`: how long a promotion takes on the local runtime beside how
//! long the app itself needs to answer its first health check, both in the
//! same run, and how late rollout events reach a `WatchRollout` subscriber.
//!
//! - promote-to-healthy: `PromoteRelease` on the release service of an
//!   in-process rack until the rollout's `WatchRollout` stream reports it
//!   `RUNNING` (what `slipway releases promote` waits for). The app is this
//!   binary's hidden `serve-app`, which listens after `APP_DELAY_MS`.
//! - baseline: the same command (`/bin/sh -c`, same directory, same env,
//!   `PORT` set) spawned by the bench, timed until the first 200 from its
//!   health path, polled every millisecond. Baseline and promotion alternate
//!   so they share the machine's noise.
//! - event latency: arrival at the subscriber minus the event's own
//!   timestamp, for every event emitted after the subscription was open.
//!
//! Goal (issue 3): overhead (promotion minus baseline) ≤ 100 ms plus one
//! health interval.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde_json::json;
use slipway_api::release::v1 as rpb;
use slipway_api::rollout::v1 as pb;
use slipway_api::rollout::v1::rollout_service_client::RolloutServiceClient;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::rack::BenchRack;
use crate::stats::percentile_ms;

/// Options of the `rollout` benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Promotions measured (each beside one baseline start).
    #[arg(long, default_value = "10")]
    promotions: usize,
    /// How long the app sleeps before it listens (its own start time).
    #[arg(long, default_value = "250")]
    app_delay_ms: u64,
    /// The manifest's health interval in seconds (the smallest is 1).
    #[arg(long, default_value = "1")]
    health_interval: u32,
}

const APP: &str = "bench-rollout";
/// A build id the release service accepts; the bench brings its own
/// artifact, so no build service is involved.
const BUILD: &str = "BBENCHROLLO";

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.promotions > 0, "--promotions must be at least 1");
    let rack = BenchRack::start(8 << 20).await?;
    let result = measure(&args, &rack).await;
    rack.stop().await;
    result
}

/// One promotion, timed from the caller's side.
pub(crate) struct Promotion {
    pub(crate) to_running: Duration,
    to_first_healthy_event: Option<Duration>,
    /// Arrival minus event time, for events emitted after subscribing.
    live_latencies: Vec<Duration>,
    backlog_events: usize,
}

async fn measure(args: &Args, rack: &BenchRack) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("find the bench binary")?;
    let artifact = rack.dir().join("artifact");
    std::fs::create_dir_all(&artifact)?;
    let command = format!("exec {} serve-app", exe.display());
    let manifest = format!(
        "services:\n  web:\n    command: {command}\n    port: 3000\n    health:\n      path: /health\n      grace: 5\n      interval: {i}\n      timeout: {i}\n    scale:\n      count: 1\n    termination:\n      grace: 5\n",
        i = args.health_interval,
    );
    let env = HashMap::from([("APP_DELAY_MS".to_owned(), args.app_delay_ms.to_string())]);
    eprintln!(
        "rollout: {} promotions of a 1-process app listening after {} ms, health interval {} s",
        args.promotions, args.app_delay_ms, args.health_interval
    );

    let mut release = rack.release()?;
    let rollout = RolloutServiceClient::new(rack.channel("rollout", 2)?);
    release
        .create_app(rpb::CreateAppRequest {
            name: APP.into(),
            deadline_seconds: 0,
        })
        .await?;

    // A first promotion (not measured) so every measured one replaces a
    // running release, as a deploy usually does.
    let mut promotions = Vec::with_capacity(args.promotions);
    let mut baselines = Vec::with_capacity(args.promotions);
    for round in 0..=args.promotions {
        if round > 0 {
            baselines.push(baseline(&command, &artifact, &env).await?);
        }
        let id = create_release(&mut release, APP, &manifest, &env, &artifact).await?;
        let promotion = promote(&mut release, rollout.clone(), APP, &id).await?;
        if round > 0 {
            promotions.push(promotion);
        }
    }

    let mut running: Vec<Duration> = promotions.iter().map(|p| p.to_running).collect();
    let mut healthy_events: Vec<Duration> = promotions
        .iter()
        .filter_map(|p| p.to_first_healthy_event)
        .collect();
    let mut overheads: Vec<Duration> = promotions
        .iter()
        .zip(&baselines)
        .map(|(p, b)| p.to_running.saturating_sub(*b))
        .collect();
    let mut latencies: Vec<Duration> = promotions
        .iter()
        .flat_map(|p| p.live_latencies.iter().copied())
        .collect();
    let backlog: usize = promotions.iter().map(|p| p.backlog_events).sum();

    let goal_ms = 100.0 + 1000.0 * f64::from(args.health_interval);
    let (run50, run90) = (
        percentile_ms(&mut running, 50.0),
        percentile_ms(&mut running, 90.0),
    );
    let (hev50, hev90) = (
        percentile_ms(&mut healthy_events, 50.0),
        percentile_ms(&mut healthy_events, 90.0),
    );
    let (base50, base90) = (
        percentile_ms(&mut baselines, 50.0),
        percentile_ms(&mut baselines, 90.0),
    );
    let (over50, over90) = (
        percentile_ms(&mut overheads, 50.0),
        percentile_ms(&mut overheads, 90.0),
    );
    let (lat50, lat99) = (
        percentile_ms(&mut latencies, 50.0),
        percentile_ms(&mut latencies, 99.0),
    );

    println!("{:<46} {:>10} {:>10}", "case (ms)", "p50", "p90/p99");
    let row = |name: &str, a: f64, b: f64| println!("{name:<46} {a:>10.1} {b:>10.1}");
    row("promote -> rollout RUNNING (p50, p90)", run50, run90);
    row(
        "promote -> first 'is healthy' event (p50, p90)",
        hev50,
        hev90,
    );
    row("baseline: spawn -> first 200 (p50, p90)", base50, base90);
    row("overhead, paired (p50, p90)", over50, over90);
    println!(
        "{:<46} {:>10.1} (goal: overhead <= 100 ms + {} s interval: {})",
        "goal (ms)",
        goal_ms,
        args.health_interval,
        if over90 <= goal_ms {
            "met at p90"
        } else if over50 <= goal_ms {
            "met at p50 only"
        } else {
            "NOT met"
        }
    );
    row("event -> subscriber latency (p50, p99)", lat50, lat99);
    println!(
        "{:<46} {:>10} live, {} backlog (replayed, not counted)",
        "events",
        latencies.len(),
        backlog
    );
    println!(
        "{}",
        json!({
            "promotions": args.promotions,
            "app_delay_ms": args.app_delay_ms,
            "health_interval_s": args.health_interval,
            "promote_to_running_ms": {"p50": run50, "p90": run90},
            "promote_to_healthy_event_ms": {"p50": hev50, "p90": hev90},
            "baseline_spawn_to_first_200_ms": {"p50": base50, "p90": base90},
            "overhead_ms": {"p50": over50, "p90": over90},
            "goal_overhead_ms": goal_ms,
            "goal_met_p50": over50 <= goal_ms,
            "goal_met_p90": over90 <= goal_ms,
            "event_latency_ms": {"p50": lat50, "p99": lat99, "events": latencies.len(), "backlog_events": backlog},
        })
    );
    Ok(())
}

pub(crate) async fn create_release(
    release: &mut slipway_api::release::v1::release_service_client::ReleaseServiceClient<
        slipway_rpc::Channel,
    >,
    app: &str,
    manifest: &str,
    env: &HashMap<String, String>,
    artifact: &Path,
) -> anyhow::Result<String> {
    let created = release
        .create_release(rpb::CreateReleaseRequest {
            app: app.into(),
            build: Some(BUILD.into()),
            manifest: Some(manifest.into()),
            env_vars: Some(rpb::EnvVars { vars: env.clone() }),
            description: Some("bench".into()),
            parent_release: None,
            artifacts: HashMap::from([(
                "web".to_owned(),
                format!("file://{}", artifact.display()),
            )]),
            ..Default::default()
        })
        .await
        .context("create a release")?
        .into_inner();
    Ok(created.release.context("no release in answer")?.id)
}

/// Promotes `release` and follows its rollout to the end.
pub(crate) async fn promote(
    release: &mut slipway_api::release::v1::release_service_client::ReleaseServiceClient<
        slipway_rpc::Channel,
    >,
    mut rollout: RolloutServiceClient<slipway_rpc::Channel>,
    app: &str,
    id: &str,
) -> anyhow::Result<Promotion> {
    let started = Instant::now();
    let promotion = release
        .promote_release(rpb::PromoteReleaseRequest {
            app: app.into(),
            release: id.into(),
            force: false,
            deadline_seconds: 0,
        })
        .await
        .context("promote")?
        .into_inner()
        .promotion
        .context("no promotion in answer")?;
    let mut stream = loop {
        match rollout
            .watch_rollout(pb::WatchRolloutRequest {
                id: promotion.id.clone(),
                after_event_id: String::new(),
            })
            .await
        {
            Ok(stream) => break stream.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => {
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(10),
                    "rollout {} never appeared",
                    promotion.id
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(status) => return Err(status).context("watch the rollout"),
        }
    };
    let subscribed = SystemTime::now();
    let mut to_first_healthy_event = None;
    let mut live_latencies = Vec::new();
    let mut backlog_events = 0;
    while let Some(message) = stream.message().await? {
        let arrived = SystemTime::now();
        if let Some(event) = message.event {
            let time = event
                .time
                .map(|t| SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32))
                .context("event without time")?;
            if time >= subscribed {
                live_latencies.push(arrived.duration_since(time).unwrap_or_default());
            } else {
                backlog_events += 1;
            }
            if to_first_healthy_event.is_none() && event.message.ends_with("is healthy") {
                to_first_healthy_event = Some(started.elapsed());
            }
        }
        if let Some(finished) = message.finished {
            anyhow::ensure!(
                finished.phase == pb::RolloutPhase::Running as i32,
                "rollout of {id} ended {:?}: {}",
                pb::RolloutPhase::try_from(finished.phase),
                finished.reason
            );
            return Ok(Promotion {
                to_running: started.elapsed(),
                to_first_healthy_event,
                live_latencies,
                backlog_events,
            });
        }
    }
    anyhow::bail!("the watch of {} ended without an outcome", promotion.id)
}

/// Spawns the app as the runtime does and times it to its first 200.
pub(crate) async fn baseline(
    command: &str,
    dir: &Path,
    env: &HashMap<String, String>,
) -> anyhow::Result<Duration> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .env_clear()
        .envs(env)
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().context("spawn the baseline app")?;
    loop {
        if healthy(port).await {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the baseline app never answered"
        );
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the baseline app exited with {status}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = started.elapsed();
    child.kill().await?;
    Ok(took)
}

/// One `GET /health`; true on a 200.
async fn healthy(port: u16) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        std::io::Result::Ok(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
    };
    attempt.await.unwrap_or(false)
}

/// The hidden `serve-app` subcommand: sleeps `APP_DELAY_MS`, then answers
/// `200 ok` to every request on 127.0.0.1:`$PORT`, one at a time.
pub(crate) fn serve_app() -> anyhow::Result<()> {
    let delay = std::env::var("APP_DELAY_MS")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    std::thread::sleep(Duration::from_millis(delay));
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .context("PORT is not set")?;
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
        );
    }
    Ok(())
}
