//! `gateway`: what the HTTP gateway adds to a call. `releases list`
//! (`GET /apps/{app}/releases`, Basic auth, through `slipway_client`, as the
//! CLI sends it) beside the `ListReleases` gRPC call the gateway makes,
//! sent directly to the release service of the same in-process rack.
//!
//! Both paths run in alternating batches, one call at a time, so they share
//! the machine's noise; the difference of their percentiles is the
//! gateway's overhead (HTTP parsing, auth, the extra loopback hop, JSON).
//!
//! Goal (issue 5): ≤ 1 ms added at p50, ≤ 2 ms at p99.
//!
//! Then the cost of a scoped token (issue 16): the same `releases list`
//! with a deploy token as the Basic password beside the rack password, in
//! alternating batches (goal: ≤ 0.1 ms added at p50), and the token check
//! itself (`Tokens::check`: one HMAC-SHA256 and a hash lookup) in-process.
//!
//! Then the throughput a normal client gets (`releases list`, closed loop)
//! while idle and slowloris connections are open, beside the same client
//! without them, in alternating rounds (issue 11: ≥ 90%).

use std::time::{Duration, Instant};

use serde_json::json;
use slipway_api::release::v1 as rpb;

use crate::rack::BenchRack;
use crate::stats::percentile_ms;

/// Options of the `gateway` benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Calls per path (after a warm-up).
    #[arg(long, default_value = "3000")]
    calls: usize,
    /// Calls per batch before switching path.
    #[arg(long, default_value = "50")]
    batch: usize,
    /// Releases in the listed app.
    #[arg(long, default_value = "25")]
    releases: usize,
    /// Idle connections (never send a byte) held open during attack rounds.
    #[arg(long, default_value = "500")]
    idle: usize,
    /// Slowloris connections (a request head that never ends, a byte a
    /// second each) held open during attack rounds.
    #[arg(long, default_value = "300")]
    slowloris: usize,
    /// Seconds per throughput round (under the 30 s header timeout, so the
    /// attack holds for the whole round).
    #[arg(long, default_value = "5")]
    round_seconds: u64,
    /// Rounds of each kind (baseline, attack), alternating.
    #[arg(long, default_value = "3")]
    rounds: usize,
    /// Concurrent normal clients.
    #[arg(long, default_value = "4")]
    clients: usize,
    /// Calls per credential in the token-versus-password comparison.
    #[arg(long, default_value = "3000")]
    token_calls: usize,
}

const APP: &str = "bench-gateway";

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.calls > 0 && args.batch > 0,
        "--calls and --batch must be positive"
    );
    // The attack holds ~2 descriptors per connection in this process.
    slipway_gateway::serve::raise_fd_limit();
    let rack = BenchRack::start(8 << 20).await?;
    let result = measure(&args, &rack).await;
    rack.stop().await;
    result
}

async fn measure(args: &Args, rack: &BenchRack) -> anyhow::Result<()> {
    let mut grpc = rack.release()?;
    let http = slipway_client::Client::new(&rack.url)?;
    grpc.create_app(rpb::CreateAppRequest {
        name: APP.into(),
        deadline_seconds: 0,
    })
    .await?;
    let manifest = "services:\n  web:\n    command: sleep 1000\n    port: 3000\n";
    for i in 0..args.releases {
        grpc.create_release(rpb::CreateReleaseRequest {
            app: APP.into(),
            build: Some("BBENCHGATEW".into()),
            manifest: Some(manifest.into()),
            env_vars: Some(rpb::EnvVars {
                vars: [
                    ("N".to_owned(), i.to_string()),
                    ("FOO".into(), "bar".into()),
                ]
                .into(),
            }),
            description: Some(format!("release {i}")),
            parent_release: None,
            artifacts: [("web".to_owned(), "file:///tmp".to_owned())].into(),
            ..Default::default()
        })
        .await?;
    }
    eprintln!(
        "gateway: {} calls per path in batches of {}, app with {} releases (pages of 10)",
        args.calls, args.batch, args.releases
    );

    let mut via_gateway = Vec::with_capacity(args.calls);
    let mut direct = Vec::with_capacity(args.calls);
    let mut calls = 0;
    // Warm-up (connections, caches), not recorded.
    for _ in 0..200 {
        anyhow::ensure!(http.releases(APP, None).await?.len() == 10, "short page");
        list(&mut grpc).await?;
    }
    while calls < args.calls {
        let n = args.batch.min(args.calls - calls);
        for _ in 0..n {
            let started = Instant::now();
            let releases = http.releases(APP, None).await?;
            via_gateway.push(started.elapsed());
            anyhow::ensure!(releases.len() == 10, "short page through the gateway");
        }
        for _ in 0..n {
            let started = Instant::now();
            let releases = list(&mut grpc).await?;
            direct.push(started.elapsed());
            anyhow::ensure!(releases == 10, "short page from gRPC");
        }
        calls += n;
    }

    let p = |s: &mut Vec<Duration>, q| percentile_ms(s, q);
    let (g50, g99) = (p(&mut via_gateway, 50.0), p(&mut via_gateway, 99.0));
    let (d50, d99) = (p(&mut direct, 50.0), p(&mut direct, 99.0));
    let (a50, a99) = (g50 - d50, g99 - d99);
    let verdict = |added: f64, goal: f64| if added <= goal { "yes" } else { "NO" };
    println!(
        "{:<10} {:>14} {:>14} {:>10} {:>8} {:>5}",
        "releases", "gateway (ms)", "gRPC (ms)", "added", "goal", "met"
    );
    println!(
        "{:<10} {g50:>14.3} {d50:>14.3} {a50:>10.3} {:>8} {:>5}",
        "p50",
        "1.0",
        verdict(a50, 1.0)
    );
    println!(
        "{:<10} {g99:>14.3} {d99:>14.3} {a99:>10.3} {:>8} {:>5}",
        "p99",
        "2.0",
        verdict(a99, 2.0)
    );
    println!(
        "{}",
        json!({
            "calls_per_path": args.calls,
            "releases_in_app": args.releases,
            "page": 10,
            "gateway_ms": {"p50": g50, "p99": g99},
            "grpc_ms": {"p50": d50, "p99": d99},
            "added_ms": {"p50": a50, "p99": a99},
            "goal_added_ms": {"p50": 1.0, "p99": 2.0},
            "goal_met": a50 <= 1.0 && a99 <= 2.0,
        })
    );
    tokens(args, rack, &http).await?;
    under_attack(args, rack).await
}

/// `releases list` with a deploy token beside the rack password, and the
/// token check alone.
async fn tokens(
    args: &Args,
    rack: &BenchRack,
    password: &slipway_client::Client,
) -> anyhow::Result<()> {
    let created = password
        .token_create(&slipway_client::NewToken {
            name: "bench".into(),
            role: "deploy".into(),
            apps: vec![APP.into()],
            expires: None,
        })
        .await?;
    // http://convox:PASSWORD@host → http://convox:TOKEN@host
    let (before, host) = rack.url.split_once('@').expect("a URL with credentials");
    let (user, _) = before.rsplit_once(':').expect("a URL with a password");
    let with_token = slipway_client::Client::new(&format!("{user}:{}@{host}", created.value))?;
    anyhow::ensure!(
        with_token.releases(APP, None).await?.len() == 10,
        "the token is refused"
    );
    let (mut by_token, mut by_password) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        with_token.releases(APP, None).await?;
        password.releases(APP, None).await?;
    }
    let mut calls = 0;
    while calls < args.token_calls {
        let n = args.batch.min(args.token_calls - calls);
        for (client, samples) in [(&with_token, &mut by_token), (password, &mut by_password)] {
            for _ in 0..n {
                let started = Instant::now();
                let releases = client.releases(APP, None).await?;
                samples.push(started.elapsed());
                anyhow::ensure!(releases.len() == 10, "short page");
            }
        }
        calls += n;
    }
    let p = |s: &mut Vec<Duration>, q| percentile_ms(s, q);
    let (t50, t99) = (p(&mut by_token, 50.0), p(&mut by_token, 99.0));
    let (w50, w99) = (p(&mut by_password, 50.0), p(&mut by_password, 99.0));

    // The check alone, on a table loaded from this rack.
    let table = slipway_gateway::tokens::Tokens::new();
    let mut client = slipway_api::release::v1::token_service_client::TokenServiceClient::new(
        rack.channel("release", 0)?,
    );
    table.refresh(&mut client).await;
    let mut checks = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let started = Instant::now();
        for _ in 0..100 {
            anyhow::ensure!(table.check(&created.value).is_ok(), "the check failed");
        }
        checks.push(started.elapsed() / 100);
    }
    let c50 = percentile_ms(&mut checks, 50.0) * 1000.0;
    let c99 = percentile_ms(&mut checks, 99.0) * 1000.0;
    println!(
        "{:<10} {:>14} {:>14} {:>10} {:>8} {:>5}",
        "token", "token (ms)", "password (ms)", "added", "goal", "met"
    );
    println!(
        "{:<10} {t50:>14.3} {w50:>14.3} {:>10.3} {:>8} {:>5}",
        "p50",
        t50 - w50,
        "0.1",
        if t50 - w50 <= 0.1 { "yes" } else { "NO" }
    );
    println!("{:<10} {t99:>14.3} {w99:>14.3} {:>10.3}", "p99", t99 - w99);
    println!("token check alone: p50 {c50:.2} µs, p99 {c99:.2} µs");
    println!(
        "{}",
        json!({
            "calls_per_credential": args.token_calls,
            "token_ms": {"p50": t50, "p99": t99},
            "password_ms": {"p50": w50, "p99": w99},
            "added_ms": {"p50": t50 - w50, "p99": t99 - w99},
            "check_us": {"p50": c50, "p99": c99},
            "goal_added_p50_ms": 0.1,
            "goal_met": t50 - w50 <= 0.1,
        })
    );
    Ok(())
}

/// Requests/second of `clients` normal clients without and with the idle
/// and slowloris connections open, in alternating rounds.
async fn under_attack(args: &Args, rack: &BenchRack) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rounds > 0 && args.clients > 0 && args.round_seconds > 0 && args.round_seconds < 30,
        "--rounds and --clients must be positive, --round-seconds between 1 and 29"
    );
    let addr: std::net::SocketAddr = rack
        .url
        .rsplit_once('@')
        .map(|(_, host)| host.trim_end_matches('/'))
        .ok_or_else(|| anyhow::anyhow!("no host in {}", rack.url))?
        .parse()?;
    let round = Duration::from_secs(args.round_seconds);
    let url = rack.url.clone();
    let normal = || {
        let url = url.clone();
        async move {
            let http = slipway_client::Client::new(&url)?;
            crate::stats::throughput(args.clients, round, move |_, _| {
                let http = http.clone();
                async move {
                    anyhow::ensure!(http.releases(APP, None).await?.len() == 10, "short page");
                    Ok(())
                }
            })
            .await
        }
    };
    eprintln!(
        "gateway under attack: {} rounds of {round:?} each way, {} clients, {} idle + {} slowloris",
        args.rounds, args.clients, args.idle, args.slowloris
    );
    let (mut quiet, mut attacked) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        quiet.push(normal().await?);
        let attack = Attack::open(addr, args.idle, args.slowloris).await?;
        attacked.push(normal().await?);
        let still_open = attack.close().await;
        anyhow::ensure!(
            still_open == args.slowloris,
            "only {still_open} of {} slowloris connections lasted the round",
            args.slowloris
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (q, a) = (mean(&quiet), mean(&attacked));
    let ratio = a / q;
    println!(
        "{:<22} {:>10} {:>10} {:>8} {:>6} {:>5}",
        "releases list", "quiet/s", "attack/s", "ratio", "goal", "met"
    );
    println!(
        "{:<22} {q:>10.0} {a:>10.0} {ratio:>8.3} {:>6} {:>5}",
        format!("{} clients", args.clients),
        "0.90",
        if ratio >= 0.9 { "yes" } else { "NO" }
    );
    println!(
        "{}",
        json!({
            "clients": args.clients,
            "round_seconds": args.round_seconds,
            "idle_connections": args.idle,
            "slowloris_connections": args.slowloris,
            "quiet_rps": quiet,
            "attacked_rps": attacked,
            "ratio": ratio,
            "goal_ratio": 0.9,
            "goal_met": ratio >= 0.9,
        })
    );
    Ok(())
}

/// Idle and slowloris connections to the gateway, held open.
struct Attack {
    idle: Vec<tokio::net::TcpStream>,
    slowloris: Vec<tokio::task::JoinHandle<bool>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Attack {
    async fn open(
        addr: std::net::SocketAddr,
        idle: usize,
        slowloris: usize,
    ) -> anyhow::Result<Self> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let connect =
            |n| futures::future::try_join_all((0..n).map(|_| tokio::net::TcpStream::connect(addr)));
        let idle = connect(idle).await?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let slowloris = connect(slowloris)
            .await?
            .into_iter()
            .map(|mut stream| {
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    // True when still open at the end of the round.
                    if stream
                        .write_all(b"GET /apps HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    let mut buf = [0u8; 64];
                    loop {
                        tokio::select! {
                            _ = stopped.changed() => return true,
                            read = stream.read(&mut buf) => if matches!(read, Ok(0) | Err(_)) {
                                return false;
                            },
                            _ = tick.tick() => if stream.write_all(b"X").await.is_err() {
                                return false;
                            },
                        }
                    }
                })
            })
            .collect();
        Ok(Self {
            idle,
            slowloris,
            stop,
        })
    }

    /// Closes everything; how many slowloris connections were still open.
    async fn close(self) -> usize {
        let _ = self.stop.send(true);
        drop(self.idle);
        futures::future::join_all(self.slowloris)
            .await
            .into_iter()
            .filter(|open| matches!(open, Ok(true)))
            .count()
    }
}

async fn list(
    grpc: &mut slipway_api::release::v1::release_service_client::ReleaseServiceClient<
        slipway_rpc::Channel,
    >,
) -> anyhow::Result<usize> {
    Ok(grpc
        .list_releases(rpb::ListReleasesRequest {
            app: APP.into(),
            limit: 0,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .releases
        .len())
}
