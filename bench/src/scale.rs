//! `scale`: what a second gateway replica buys, and how fast Redis fans
//! events out. The scale setup of the e2e tests (two gateways, two release
//! and two rollout replicas, one build service, each its own process, on
//! PostgreSQL and Redis) serves `releases list` and `env set` (the CLI's
//! `GET /apps/{app}/releases` and `POST /apps/{app}/env`) from closed-loop
//! workers, first all through gateway A, then spread over A and B, in
//! alternating rounds so both configurations share the machine's noise.
//! The figure is the ratio two-gateways / one-gateway against the same
//! PostgreSQL. `env set` spreads over many apps: writes to one app
//! serialise on its row lock, which no gateway count changes.
//!
//! Fan-out: one publisher and `--subscribers` readers, each on its own
//! Redis bus (its own connections, as separate gateway replicas would
//! be), publish→receive latency per reader and event, beside a bare Redis
//! `PING` round trip measured in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use slipway_client::Client;
use slipway_client::types::EnvChange;
use slipway_e2e::cluster::{Cluster, ClusterOptions};
use slipway_events::{EventBus as _, NewEvent, RedisBus, RedisConfig, Topic};
use tokio_stream::StreamExt as _;

use crate::stats::{percentile_ms, throughput};

/// Options of the `scale` benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Closed-loop workers issuing requests.
    #[arg(long, default_value = "32")]
    concurrency: usize,
    /// Length of one measured round per operation and configuration.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    round: Duration,
    /// Rounds per configuration (alternating one / two gateways).
    #[arg(long, default_value = "3")]
    rounds: usize,
    /// Apps `env set` spreads over.
    #[arg(long, default_value = "32")]
    apps: usize,
    /// Readers of the fan-out measurement.
    #[arg(long, default_value = "8")]
    subscribers: usize,
    /// Events published in the fan-out measurement.
    #[arg(long, default_value = "2000")]
    events: usize,
    /// Redis for the setup and the fan-out.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.concurrency > 0 && args.rounds > 0 && args.apps > 0 && args.subscribers > 0,
        "--concurrency, --rounds, --apps and --subscribers must be positive"
    );
    let cluster = Cluster::start(ClusterOptions {
        redis_url: Some(args.redis_url.clone()),
    })
    .await;
    let gateways = [
        Client::new(&cluster.rack_url("gateway-a"))?,
        Client::new(&cluster.rack_url("gateway-b"))?,
    ];
    let apps: Vec<String> = (0..args.apps).map(|i| format!("bench-scale-{i}")).collect();
    for app in &apps {
        gateways[0].app_create(app, None).await?;
        env_set(&gateways[0], app, "SEED", "1").await?;
    }
    eprintln!(
        "scale: {} workers, {} rounds of {:?} per configuration, env set over {} apps",
        args.concurrency, args.rounds, args.round, args.apps
    );

    let gateways = Arc::new(gateways);
    let apps = Arc::new(apps);
    let mut list = [Vec::new(), Vec::new()];
    let mut env = [Vec::new(), Vec::new()];
    for _ in 0..args.rounds {
        for spread in [1usize, 2] {
            let (g, a) = (gateways.clone(), apps.clone());
            list[spread - 1].push(
                throughput(args.concurrency, args.round, move |worker, _| {
                    let (g, a) = (g.clone(), a.clone());
                    async move {
                        let client = &g[worker % spread];
                        let page = client.releases(&a[worker % a.len()], None).await?;
                        anyhow::ensure!(!page.is_empty(), "an empty release list");
                        Ok(())
                    }
                })
                .await?,
            );
            let (g, a) = (gateways.clone(), apps.clone());
            env[spread - 1].push(
                throughput(args.concurrency, args.round, move |worker, n| {
                    let (g, a) = (g.clone(), a.clone());
                    async move {
                        let client = &g[worker % spread];
                        let app = &a[(worker + n as usize) % a.len()];
                        env_set(client, app, &format!("W{worker}"), &n.to_string()).await
                    }
                })
                .await?,
            );
        }
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0_f64, f64::max);
    let (list1, list2) = (best(&list[0]), best(&list[1]));
    let (env1, env2) = (best(&env[0]), best(&env[1]));

    let fanout = fan_out(&args).await?;
    drop(cluster);

    println!(
        "{:<16} {:>14} {:>14} {:>8}",
        "operation", "1 gateway /s", "2 gateways /s", "ratio"
    );
    println!(
        "{:<16} {list1:>14.0} {list2:>14.0} {:>8.2}",
        "releases list",
        list2 / list1
    );
    println!(
        "{:<16} {env1:>14.0} {env2:>14.0} {:>8.2}",
        "env set",
        env2 / env1
    );
    println!(
        "{:<16} {:>14} {:>14} {:>8}",
        "fan-out", "event p50 ms", "event p99 ms", "PING p99"
    );
    println!(
        "{:<16} {:>14.3} {:>14.3} {:>8.3}",
        format!("{} readers", args.subscribers),
        fanout.p50,
        fanout.p99,
        fanout.ping_p99
    );
    println!(
        "{}",
        json!({
            "concurrency": args.concurrency,
            "round_secs": args.round.as_secs_f64(),
            "rounds": args.rounds,
            "apps": args.apps,
            "releases_list_per_sec": {"one_gateway": list1, "two_gateways": list2, "ratio": list2 / list1},
            "env_set_per_sec": {"one_gateway": env1, "two_gateways": env2, "ratio": env2 / env1},
            "fanout": {
                "subscribers": args.subscribers,
                "events": args.events,
                "latency_ms": {"p50": fanout.p50, "p99": fanout.p99},
                "redis_ping_ms": {"p50": fanout.ping_p50, "p99": fanout.ping_p99},
            },
        })
    );
    Ok(())
}

async fn env_set(client: &Client, app: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let change = EnvChange {
        set: [(key.to_owned(), value.to_owned())].into(),
        ..Default::default()
    };
    client.env_change(app, &change).await?;
    Ok(())
}

struct FanOut {
    p50: f64,
    p99: f64,
    ping_p50: f64,
    ping_p99: f64,
}

/// Publish→receive latency over Redis to every reader, and the bare PING
/// round trip beside it.
async fn fan_out(args: &Args) -> anyhow::Result<FanOut> {
    let prefix = format!("slipway-bench-{}", std::process::id());
    let bus = |prefix: &str| RedisBus::new(RedisConfig::new(args.redis_url.clone(), prefix));
    let publisher = bus(&prefix)?;
    let topic = Topic::App("fanout".into());
    let start = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..args.subscribers {
        let reader = bus(&prefix)?;
        let mut stream = reader.subscribe(topic.clone(), None).await?;
        let events = args.events;
        readers.push(tokio::spawn(async move {
            let _keep = reader;
            let mut latencies = Vec::with_capacity(events);
            while latencies.len() < events {
                let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
                    .await
                    .map_err(|_| anyhow::anyhow!("a reader waited 10 s for an event"))?
                    .ok_or_else(|| anyhow::anyhow!("a reader's stream ended"))??;
                let sent: u64 = event.message.parse()?;
                let now = start.elapsed().as_micros() as u64;
                latencies.push(Duration::from_micros(now.saturating_sub(sent)));
            }
            anyhow::Ok(latencies)
        }));
    }
    // Readers are subscribed; publish at a steady pace (not a burst, which
    // would measure queueing instead of delivery).
    let mut tick = tokio::time::interval(Duration::from_micros(500));
    for _ in 0..args.events {
        tick.tick().await;
        let sent = start.elapsed().as_micros() as u64;
        publisher
            .publish(NewEvent::now(
                "fanout",
                "system/bench/fanout",
                sent.to_string(),
            ))
            .await?;
    }
    let mut all = Vec::new();
    for reader in readers {
        all.extend(reader.await??);
    }

    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut pings = Vec::with_capacity(args.events);
    for _ in 0..args.events {
        let started = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        pings.push(started.elapsed());
    }
    let keys: Vec<String> = [publisher.key(&topic)].into();
    let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
    Ok(FanOut {
        p50: percentile_ms(&mut all, 50.0),
        p99: percentile_ms(&mut all, 99.0),
        ping_p50: percentile_ms(&mut pings, 50.0),
        ping_p99: percentile_ms(&mut pings, 99.0),
    })
}
