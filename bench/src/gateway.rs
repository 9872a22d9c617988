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
}

const APP: &str = "bench-gateway";

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.calls > 0 && args.batch > 0,
        "--calls and --batch must be positive"
    );
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
            env: Some(format!("N={i}\nFOO=bar\n")),
            description: Some(format!("release {i}")),
            parent_release: None,
            artifacts: [("web".to_owned(), "file:///tmp".to_owned())].into(),
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
    Ok(())
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
