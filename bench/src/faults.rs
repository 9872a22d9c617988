//! `faults`: what losing or restarting parts of the platform costs users
//! (issue 17). On the scale setup (two gateways, two release and two
//! rollout replicas, one build service, each its own process, PostgreSQL
//! and Redis), `env set` (`POST /apps/{app}/env`, shaped as the `convox`
//! CLI sends it, with an `Idempotency-Key` of its own) arrives at a steady
//! rate, open loop, alternating gateways A and B, over `--apps` apps. A
//! request that gets no answer (a gateway refusing while it restarts) is
//! sent again to the other gateway with the same key, as a client pointed
//! at both does; any answer but 200, or none after that, is a failure.
//!
//! Cases, each beside the same load on a fresh setup with no fault, of the
//! same length (the baseline, measured in the same run):
//! - (a) release replica A SIGKILLed a third of the way in;
//! - (b) a rolling restart: every service (both release replicas, build,
//!   both rollout replicas, both gateways) SIGTERMed, waited for and started
//!   again on its address, one after the other, from 2 s in; the run ends
//!   2 s after the last one serves again.
//!
//! Figures: failed requests, and p99 latency as a ratio to the fault-free
//! run's (overall, and over the second after the kill for (a)).
//! Goal for both: zero failed requests, p99 at most 3x the fault-free p99.
//! Case (c), a PostgreSQL outage, is `faults_db.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use slipway_e2e::cluster::{Cluster, ClusterOptions, SERVICES};
use slipway_e2e::load;

use crate::stats::percentile_ms;

/// Options of the `faults` benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Requests per second, over both gateways.
    #[arg(long, default_value = "60")]
    rate: u32,
    /// Length of each run of case (a) (case (b) lasts as long as its
    /// rolling restart takes, plus 4 s).
    #[arg(long, default_value = "9s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Apps the writes spread over (writes to one app serialise).
    #[arg(long, default_value = "16")]
    apps: usize,
    /// Which cases to run: `a`, `b`, or `ab`.
    #[arg(long, default_value = "ab")]
    cases: String,
    /// Redis for the setup.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

/// What one run saw.
#[derive(Default)]
struct Run {
    /// Latency of each answered request, by send time since the start.
    answered: Vec<(Duration, Duration)>,
    /// Failed requests (no answer, or not 200), with why.
    failed: Vec<String>,
    /// Requests sent again to the other gateway (same key).
    resent: usize,
    /// How long the run lasted.
    length: Duration,
}

impl Run {
    fn p99(&self, from: Duration, to: Duration) -> f64 {
        let mut v: Vec<Duration> = self
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
    }

    fn p99_all(&self) -> f64 {
        self.p99(Duration::ZERO, self.length)
    }

    fn requests(&self) -> usize {
        self.answered.len() + self.failed.len()
    }
}

/// The fault of a run.
#[derive(Clone, Copy)]
enum Fault {
    /// None, for this long.
    None(Duration),
    /// Release replica A SIGKILLed this long after the start of a run of
    /// `--duration`.
    Kill(Duration),
    /// Every service restarted one by one from 2 s in.
    Rolling,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0 && args.apps > 0,
        "--rate and --apps must be positive"
    );
    anyhow::ensure!(
        !args.cases.is_empty() && args.cases.chars().all(|c| c == 'a' || c == 'b'),
        "--cases takes a, b or ab (case c is `faults-db`)"
    );
    let mut report = serde_json::Map::new();
    report.insert("rate_per_sec".into(), json!(args.rate));
    println!(
        "run                        length s  requests  failed  resent  p99 ms  p99 ratio  p99 ms, 1 s after"
    );
    if args.cases.contains('a') {
        let baseline = once(&args, Fault::None(args.duration)).await?;
        let fault_at = args.duration / 3;
        let killed = once(&args, Fault::Kill(fault_at)).await?;
        let after = (fault_at, fault_at + Duration::from_secs(1));
        let (base_after, kill_after) =
            (baseline.p99(after.0, after.1), killed.p99(after.0, after.1));
        row("no fault (a)", &baseline, 1.0, Some(base_after));
        let ratio = killed.p99_all() / baseline.p99_all();
        row("release replica SIGKILL", &killed, ratio, Some(kill_after));
        report.insert(
            "release_replica_sigkill".into(),
            json!({
                "duration_secs": args.duration.as_secs_f64(),
                "baseline": {"failed": baseline.failed.len(), "p99_ms": baseline.p99_all(), "p99_after_ms": base_after},
                "failed": killed.failed.len(),
                "resent": killed.resent,
                "p99_ms": killed.p99_all(),
                "p99_after_ms": kill_after,
                "p99_ratio": ratio,
                "p99_after_ratio": kill_after / base_after,
            }),
        );
        failures(&killed);
    }
    if args.cases.contains('b') {
        let rolling = once(&args, Fault::Rolling).await?;
        let baseline = once(&args, Fault::None(rolling.length)).await?;
        row("no fault (b)", &baseline, 1.0, None);
        let ratio = rolling.p99_all() / baseline.p99_all();
        row("rolling restart of all", &rolling, ratio, None);
        report.insert(
            "rolling_restart".into(),
            json!({
                "duration_secs": rolling.length.as_secs_f64(),
                "baseline": {"failed": baseline.failed.len(), "p99_ms": baseline.p99_all()},
                "failed": rolling.failed.len(),
                "resent": rolling.resent,
                "p99_ms": rolling.p99_all(),
                "p99_ratio": ratio,
            }),
        );
        failures(&rolling);
    }
    println!("{}", serde_json::Value::Object(report));
    Ok(())
}

fn row(name: &str, run: &Run, ratio: f64, after: Option<f64>) {
    println!(
        "{name:<26} {:>8.1}  {:>8}  {:>6}  {:>6}  {:>6.1}  {ratio:>9.2}  {}",
        run.length.as_secs_f64(),
        run.requests(),
        run.failed.len(),
        run.resent,
        run.p99_all(),
        after.map_or(String::new(), |a| format!("{a:.1}"))
    );
}

fn failures(run: &Run) {
    for f in run.failed.iter().take(10) {
        eprintln!("failed: {f}");
    }
}

/// One run on a fresh setup with `fault`.
async fn once(args: &Args, fault: Fault) -> anyhow::Result<Run> {
    let mut cluster = Cluster::start(ClusterOptions {
        redis_url: Some(args.redis_url.clone()),
    })
    .await;
    let gateways = [cluster.addr("gateway-a"), cluster.addr("gateway-b")];
    let apps: Arc<Vec<String>> = Arc::new((0..args.apps).map(|i| format!("faults-{i}")).collect());
    for app in apps.iter() {
        let (answer, _) =
            load::send_keyed(gateways, 0, "POST", "/apps", &format!("name={app}"), None).await;
        match answer {
            Some((200, _)) => {}
            other => anyhow::bail!("apps create {app}: {other:?}"),
        }
    }
    let run = Arc::new(Mutex::new(Run::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let sender = tokio::spawn(steady(
        args.rate,
        gateways,
        apps,
        run.clone(),
        stop.clone(),
        start,
    ));
    match fault {
        Fault::None(length) => tokio::time::sleep(length).await,
        Fault::Kill(at) => {
            tokio::time::sleep(at).await;
            cluster.kill("release-a").await;
            tokio::time::sleep(args.duration.saturating_sub(start.elapsed())).await;
        }
        Fault::Rolling => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            for name in SERVICES {
                let began = Instant::now();
                cluster.restart(name).await;
                eprintln!(
                    "restarted {name} in {:.2?} ({:.1?} in)",
                    began.elapsed(),
                    start.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let length = start.elapsed();
    sender.await??;
    drop(cluster);
    let mut run = Arc::try_unwrap(run)
        .map_err(|_| anyhow::anyhow!("requests still running"))?
        .into_inner()
        .expect("run lock");
    run.length = length;
    Ok(run)
}

/// Sends `rate` env changes a second until `stop`, each in a task of its
/// own (open loop), and waits for the last answers.
async fn steady(
    rate: u32,
    gateways: [SocketAddr; 2],
    apps: Arc<Vec<String>>,
    run: Arc<Mutex<Run>>,
    stop: Arc<AtomicBool>,
    start: Instant,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut requests = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let (apps, run) = (apps.clone(), run.clone());
        let sent = start.elapsed();
        requests.push(tokio::spawn(async move {
            let body = format!(r#"{{"set":{{"K{n}":"{n}"}},"unset":[]}}"#);
            // Unique in the run: each run has fresh databases.
            let key = format!("bench-faults-{n}");
            let began = Instant::now();
            let (answer, resent) = load::send_keyed(
                gateways,
                n % 2,
                "POST",
                &format!("/apps/{}/env", apps[n % apps.len()]),
                &body,
                Some(&key),
            )
            .await;
            let latency = began.elapsed();
            let mut run = run.lock().expect("run lock");
            run.resent += resent;
            match answer {
                Some((200, _)) => run.answered.push((sent, latency)),
                other => run.failed.push(format!("K{n}: {other:?}")),
            }
        }));
        n += 1;
    }
    for r in requests {
        r.await?;
    }
    Ok(())
}
