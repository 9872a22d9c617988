//! `faults-db`: case (c) of the `faults` benchmark (issue 17), a PostgreSQL
//! outage under steady load. On the scale setup (two gateways, two release
//! and two rollout replicas, one build service, each its own process) every
//! service reaches PostgreSQL through one relay
//! (`slipway_storage::testing::relay`), which the run cuts for `--outage`
//! (every connection dropped, new ones answered as by a PostgreSQL starting
//! up) and then restores: the machine's PostgreSQL, which other people's
//! tests use, is never stopped.
//!
//! `env set` arrives at a steady rate, open loop, through both gateways:
//! each request goes through the `slipway` client pointed at both (its own
//! `Idempotency-Key`, failing over between them), spread over `--apps`
//! apps. The baseline is the same run's fault-free stretch before the cut.
//!
//! Figures: requests acknowledged, failed (with the answers they got), and
//! acknowledged writes missing from the ledger or present twice (goal:
//! none lost); the time from PostgreSQL answering again until requests
//! succeed at the fault-free rate (goal: at most 5 s); latency before the
//! cut and after the recovery, as a ratio.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use slipway_client::Client;
use slipway_client::types::EnvChange;
use slipway_e2e::cluster::{Cluster, ClusterOptions, Relay, postgres_addr};

use crate::stats::percentile_ms;

/// Options of the `faults-db` benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Requests per second, over both gateways.
    #[arg(long, default_value = "20")]
    rate: u32,
    /// Fault-free load before the cut (the baseline).
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    before: Duration,
    /// How long PostgreSQL is unreachable.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    outage: Duration,
    /// Load after PostgreSQL answers again.
    #[arg(long, default_value = "12s", value_parser = humantime::parse_duration)]
    after: Duration,
    /// Apps the writes spread over (writes to one app serialise).
    #[arg(long, default_value = "8")]
    apps: usize,
    /// Redis for the setup.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

/// One request: when it was sent (since the start), how long it took and
/// how it ended.
struct Sent {
    at: Duration,
    took: Duration,
    /// The variable it set, on its app.
    var: (String, String),
    outcome: Result<String, String>,
}

/// Requests are binned by send time in steps of this for the recovery.
const BIN: Duration = Duration::from_millis(500);

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0 && args.apps > 0,
        "--rate and --apps must be positive"
    );
    let relay = Relay::start(postgres_addr()).await;
    let cluster = Cluster::start_via(
        ClusterOptions {
            redis_url: Some(args.redis_url.clone()),
        },
        Some(relay.addr),
    )
    .await;
    let both = |first: &str, second: &str| {
        Client::new(&format!(
            "{},{}",
            cluster.rack_url(first),
            cluster.rack_url(second)
        ))
    };
    let clients = Arc::new([
        both("gateway-a", "gateway-b")?,
        both("gateway-b", "gateway-a")?,
    ]);
    let apps: Arc<Vec<String>> =
        Arc::new((0..args.apps).map(|i| format!("faults-db-{i}")).collect());
    for app in apps.iter() {
        clients[0].app_create(app, None).await?;
    }

    let sent = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let (cut_at, restore_at) = (args.before, args.before + args.outage);
    let end = restore_at + args.after;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate);
    let mut requests = Vec::new();
    let (mut cut, mut restored) = (false, false);
    let mut restored_at = None;
    let mut n = 0usize;
    while start.elapsed() < end {
        tick.tick().await;
        if !cut && start.elapsed() >= cut_at {
            relay.cut().await;
            cut = true;
        }
        if cut && !restored && start.elapsed() >= restore_at {
            relay.restore().await;
            restored = true;
            restored_at = Some(start.elapsed());
        }
        let (clients, apps, sent) = (clients.clone(), apps.clone(), sent.clone());
        let at = start.elapsed();
        requests.push(tokio::spawn(async move {
            let app = apps[n % apps.len()].clone();
            let var = format!("K{n}");
            let change = EnvChange {
                set: [(var.clone(), n.to_string())].into(),
                ..Default::default()
            };
            let began = Instant::now();
            let answer = clients[n % 2].env_change(&app, &change).await;
            let outcome = answer.map(|r| r.id).map_err(|e| e.to_string());
            sent.lock().expect("sent lock").push(Sent {
                at,
                took: began.elapsed(),
                var: (app, var),
                outcome,
            });
        }));
        n += 1;
    }
    for r in requests {
        r.await?;
    }
    let restored_at = restored_at.unwrap_or(restore_at);
    let sent = Arc::try_unwrap(sent)
        .map_err(|_| anyhow::anyhow!("requests still running"))?
        .into_inner()
        .expect("sent lock");

    let (lost, doubled) = check_ledger(&cluster, &sent).await?;
    drop(cluster);

    // The fault-free rate: acknowledged requests per second before the cut.
    let ok_in = |from: Duration, to: Duration| {
        sent.iter()
            .filter(|s| s.at >= from && s.at < to && s.outcome.is_ok())
            .count()
    };
    let sent_in =
        |from: Duration, to: Duration| sent.iter().filter(|s| s.at >= from && s.at < to).count();
    let base_rate = ok_in(Duration::ZERO, cut_at) as f64 / cut_at.as_secs_f64();
    // Recovered: from the first bin after the restore from which every bin
    // of requests sent succeeds at the fault-free rate (95%).
    let mut bins = Vec::new();
    let mut t = restored_at;
    while t + BIN <= end {
        let (ok, all) = (ok_in(t, t + BIN), sent_in(t, t + BIN));
        bins.push((
            t,
            all > 0 && ok as f64 >= 0.95 * base_rate * BIN.as_secs_f64(),
        ));
        t += BIN;
    }
    let recovered_from = bins
        .iter()
        .enumerate()
        .find(|(i, _)| bins[*i..].iter().all(|(_, good)| *good))
        .map(|(_, (t, _))| *t);
    let recovery = recovered_from.map(|t| t.saturating_sub(restored_at));
    let after_rate = recovered_from.map_or(0.0, |t| {
        ok_in(t, end) as f64 / end.saturating_sub(t).as_secs_f64().max(0.001)
    });

    let p99 = |from: Duration, to: Duration| {
        let mut v: Vec<Duration> = sent
            .iter()
            .filter(|s| s.at >= from && s.at < to && s.outcome.is_ok())
            .map(|s| s.took)
            .collect();
        if v.is_empty() {
            0.0
        } else {
            percentile_ms(&mut v, 99.0)
        }
    };
    let base_p99 = p99(Duration::ZERO, cut_at);
    let after_p99 = recovered_from.map_or(0.0, |t| p99(t, end));
    let failed: Vec<&Sent> = sent.iter().filter(|s| s.outcome.is_err()).collect();
    let during = |s: &Sent| s.at >= cut_at && s.at < restored_at;
    let mut reasons = BTreeMap::<String, usize>::new();
    for s in &failed {
        if let Err(e) = &s.outcome {
            *reasons.entry(e.clone()).or_default() += 1;
        }
    }

    println!(
        "PostgreSQL outage of {} at {} req/s through both gateways",
        humantime::format_duration(args.outage),
        args.rate
    );
    println!(
        "requests {}  acknowledged {}  failed {} ({} sent during the outage)",
        sent.len(),
        sent.len() - failed.len(),
        failed.len(),
        failed.iter().filter(|s| during(s)).count()
    );
    println!("acknowledged writes lost: {lost}  applied twice: {doubled}");
    println!(
        "fault-free rate {base_rate:.1}/s; after the restore {after_rate:.1}/s = {:.2}x",
        after_rate / base_rate
    );
    match recovery {
        Some(r) => println!(
            "recovered to the fault-free rate {:.1} s after PostgreSQL answered again (goal <= 5 s)",
            r.as_secs_f64()
        ),
        None => println!("did not recover to the fault-free rate within the run"),
    }
    println!(
        "p99 before the cut {base_p99:.1} ms, after the recovery {after_p99:.1} ms = {:.2}x",
        after_p99 / base_p99
    );
    for (reason, count) in reasons.iter().take(5) {
        eprintln!("failed x{count}: {reason}");
    }
    println!(
        "{}",
        json!({
            "rate_per_sec": args.rate,
            "outage_secs": args.outage.as_secs_f64(),
            "requests": sent.len(),
            "failed": failed.len(),
            "failed_during_outage": failed.iter().filter(|s| during(s)).count(),
            "acknowledged_lost": lost,
            "acknowledged_doubled": doubled,
            "fault_free_rate": base_rate,
            "after_rate_ratio": after_rate / base_rate,
            "recovery_secs": recovery.map(|r| r.as_secs_f64()),
            "p99_before_ms": base_p99,
            "p99_after_ms": after_p99,
            "p99_ratio": after_p99 / base_p99,
        })
    );
    Ok(())
}

/// Acknowledged writes missing from the ledger, and writes present more
/// than once (each request sets its own variable, described `env add:K…`).
async fn check_ledger(cluster: &Cluster, sent: &[Sent]) -> anyhow::Result<(usize, usize)> {
    let pool = sqlx::postgres::PgPool::connect(&cluster.release_db).await?;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.name, r.description FROM releases r JOIN apps a ON a.id = r.app_id",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    let mut made = BTreeMap::<(String, String), usize>::new();
    for (app, description) in rows {
        if let Some(var) = description.strip_prefix("env add:") {
            *made.entry((app, var.to_owned())).or_default() += 1;
        }
    }
    let lost = sent
        .iter()
        .filter(|s| s.outcome.is_ok() && !made.contains_key(&s.var))
        .count();
    let doubled = made.values().filter(|n| **n > 1).count();
    Ok((lost, doubled))
}
