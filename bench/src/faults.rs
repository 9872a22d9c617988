//! `faults`: what losing a release replica costs users (issue 17). On the
//! scale setup (two gateways, two release and two rollout replicas, one
//! build service, each its own process, PostgreSQL and Redis), `env set`
//! (`POST /apps/{app}/env`) arrives at a steady rate, open loop, spread over
//! both gateways and over `--apps` apps (the gateway gives each request its
//! idempotency key). The same load runs on a fresh setup without a fault
//! (the baseline) and with release replica A SIGKILLed a third of the way
//! in. Figures: failed requests, and p99 latency as a ratio to the
//! fault-free run's (overall and over the second after the kill).
//! Goal: zero failed requests, p99 at most 3x the fault-free p99.
//!
//! Not measured yet: a rolling restart of every service and a PostgreSQL
//! outage (the setup cannot restart a process on its address, nor route
//! PostgreSQL through a relay, yet).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use slipway_client::Client;
use slipway_client::types::EnvChange;
use slipway_e2e::cluster::{Cluster, ClusterOptions};

use crate::stats::percentile_ms;

/// Options of the `faults` benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Requests per second, over both gateways.
    #[arg(long, default_value = "60")]
    rate: u32,
    /// Length of each run.
    #[arg(long, default_value = "9s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Apps the writes spread over (writes to one app serialise).
    #[arg(long, default_value = "16")]
    apps: usize,
    /// Redis for the setup.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

/// What one run saw.
struct Run {
    /// Latency of each answered request, by send time since the start.
    answered: Vec<(Duration, Duration)>,
    /// Failed requests (no answer, or not 200), with why.
    failed: Vec<String>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0 && args.apps > 0,
        "--rate and --apps must be positive"
    );
    let baseline = once(&args, None).await?;
    let fault_at = args.duration / 3;
    let killed = once(&args, Some(fault_at)).await?;

    let p99 = |run: &Run, from: Duration, to: Duration| {
        let mut v: Vec<Duration> = run
            .answered
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, l)| *l)
            .collect();
        if v.is_empty() {
            0.0
        } else {
            percentile_ms(&mut v, 99.0)
        }
    };
    let all = (Duration::ZERO, args.duration);
    let after = (fault_at, fault_at + Duration::from_secs(1));
    let (base_p99, kill_p99) = (p99(&baseline, all.0, all.1), p99(&killed, all.0, all.1));
    let (base_after, kill_after) = (
        p99(&baseline, after.0, after.1),
        p99(&killed, after.0, after.1),
    );
    println!("run                      requests  failed  p99 ms  p99 ms (1 s after the fault)");
    for (name, run, p, pa) in [
        ("no fault", &baseline, base_p99, base_after),
        ("release replica SIGKILL", &killed, kill_p99, kill_after),
    ] {
        println!(
            "{name:<24} {:>8}  {:>6}  {p:>6.1}  {pa:>6.1}",
            run.answered.len() + run.failed.len(),
            run.failed.len()
        );
    }
    for f in killed.failed.iter().chain(&baseline.failed).take(10) {
        eprintln!("failed: {f}");
    }
    println!(
        "{}",
        json!({
            "rate_per_sec": args.rate,
            "duration_secs": args.duration.as_secs_f64(),
            "no_fault": {"failed": baseline.failed.len(), "p99_ms": base_p99, "p99_after_ms": base_after},
            "release_replica_sigkill": {
                "failed": killed.failed.len(),
                "p99_ms": kill_p99,
                "p99_after_ms": kill_after,
                "p99_ratio": kill_p99 / base_p99,
                "p99_after_ratio": kill_after / base_after,
            },
        })
    );
    Ok(())
}

/// One run on a fresh setup; with `fault`, release replica A is SIGKILLed
/// that long after the start.
async fn once(args: &Args, fault: Option<Duration>) -> anyhow::Result<Run> {
    let mut cluster = Cluster::start(ClusterOptions {
        redis_url: Some(args.redis_url.clone()),
    })
    .await;
    let gateways = Arc::new([
        Client::new(&cluster.rack_url("gateway-a"))?,
        Client::new(&cluster.rack_url("gateway-b"))?,
    ]);
    let apps: Arc<Vec<String>> = Arc::new((0..args.apps).map(|i| format!("faults-{i}")).collect());
    for app in apps.iter() {
        gateways[0].app_create(app, None).await?;
    }
    let run = Arc::new(Mutex::new(Run {
        answered: Vec::new(),
        failed: Vec::new(),
    }));
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate);
    let mut requests = Vec::new();
    let mut killed = fault.is_none();
    let mut n = 0usize;
    while start.elapsed() < args.duration {
        tick.tick().await;
        if !killed && fault.is_some_and(|f| start.elapsed() >= f) {
            cluster.kill("release-a").await;
            killed = true;
        }
        let (gateways, apps, run) = (gateways.clone(), apps.clone(), run.clone());
        let sent = start.elapsed();
        requests.push(tokio::spawn(async move {
            let change = EnvChange {
                set: [(format!("K{n}"), n.to_string())].into(),
                ..Default::default()
            };
            let began = Instant::now();
            let answer = gateways[n % 2]
                .env_change(&apps[n % apps.len()], &change)
                .await;
            let mut run = run.lock().expect("run lock");
            match answer {
                Ok(_) => run.answered.push((sent, began.elapsed())),
                Err(e) => run.failed.push(format!("K{n}: {e}")),
            }
        }));
        n += 1;
    }
    for r in requests {
        r.await?;
    }
    drop(cluster);
    let run = Arc::try_unwrap(run)
        .map_err(|_| anyhow::anyhow!("requests still running"))?
        .into_inner()
        .expect("run lock");
    Ok(run)
}
