//! `width`: whether a rollout's cost grows with its width, and what the
//! rack holds in memory per deployed app (issue 15).
//!
//! - width: promote → rollout `RUNNING` for one service at each of
//!   `--counts` processes (default 1, 10, 50) on the local runtime of an
//!   in-process rack, each promotion replacing a running release of the same
//!   width, beside the app's own spawn → first 200 measured in the same run
//!   (alternating). Goal: the widest p50 is at most 2× the narrowest.
//! - memory: this process's resident set (the rack runs in it) after the
//!   rack starts and after `--memory-apps` apps of one process each are
//!   deployed (the apps' own processes are not in it). Goal: ≤ 60 MB with
//!   100 apps. The bench's own client side is in the figure too, so it
//!   overstates the rack slightly.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use slipway_api::release::v1 as rpb;
use slipway_api::rollout::v1::rollout_service_client::RolloutServiceClient;

use crate::cli::serve_app_command;
use crate::rack::BenchRack;
use crate::rollout::{baseline, create_release, promote};
use crate::stats::Spread;

/// Options of the `width` benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Process counts measured, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    counts: Vec<u32>,
    /// Measured promotions per count (each beside one baseline start).
    #[arg(long, default_value = "5")]
    promotions: usize,
    /// How long the app sleeps before it listens (its own start time).
    #[arg(long, default_value = "250")]
    app_delay_ms: u64,
    /// Apps deployed for the memory figure (0 skips it).
    #[arg(long, default_value = "100")]
    memory_apps: usize,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.counts.is_empty() && args.counts.iter().all(|c| *c > 0),
        "--counts must name at least one count, each at least 1"
    );
    anyhow::ensure!(args.promotions > 0, "--promotions must be at least 1");
    let command = serve_app_command()?;
    let rack = BenchRack::start(8 << 20).await?;
    let result = measure(&args, &rack, &command).await;
    rack.stop().await;
    result
}

fn manifest(command: &str, count: u32) -> String {
    format!(
        "services:\n  web:\n    command: {command}\n    port: 3000\n    health:\n      path: /health\n      grace: 5\n      interval: 1\n      timeout: 1\n    scale:\n      count: {count}\n    termination:\n      grace: 5\n"
    )
}

/// This process's resident set in MB.
fn rss_mb() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kb / 1024.0)
}

async fn measure(args: &Args, rack: &BenchRack, command: &str) -> anyhow::Result<()> {
    let artifact = rack.dir().join("artifact");
    std::fs::create_dir_all(&artifact)?;
    let env = HashMap::from([("APP_DELAY_MS".to_owned(), args.app_delay_ms.to_string())]);
    let mut release = rack.release()?;
    let rollout = RolloutServiceClient::new(rack.channel("rollout", 2)?);
    let rss_started = rss_mb()?;

    let mut rows = Vec::new();
    let mut baselines = Vec::new();
    for &count in &args.counts {
        eprintln!(
            "width: {} promotions at {count} processes (app listening after {} ms)",
            args.promotions, args.app_delay_ms
        );
        let app = format!("bench-width-{count}");
        release
            .create_app(rpb::CreateAppRequest {
                name: app.clone(),
                deadline_seconds: 0,
            })
            .await?;
        let manifest = manifest(command, count);
        let mut took = Vec::with_capacity(args.promotions);
        let mut spawned = Vec::with_capacity(args.promotions);
        // The first promotion starts the app (not measured): every measured
        // one replaces `count` running processes, as a redeploy does.
        for round in 0..=args.promotions {
            if round > 0 {
                baselines.push(baseline(command, &artifact, &env).await?);
                // The same width spawned directly, all at once: what the
                // machine itself needs to start `count` of them.
                let started = std::time::Instant::now();
                let all = (0..count).map(|_| baseline(command, &artifact, &env));
                for result in futures::future::join_all(all).await {
                    result?;
                }
                spawned.push(started.elapsed());
            }
            let id = create_release(&mut release, &app, &manifest, &env, &artifact).await?;
            let promotion = promote(&mut release, rollout.clone(), &app, &id).await?;
            if round > 0 {
                took.push(promotion.to_running);
            }
        }
        rows.push((count, Spread::of(&mut took), Spread::of(&mut spawned)));
        // Stop this width's processes before the next is measured.
        release
            .delete_app(rpb::DeleteAppRequest { name: app.clone() })
            .await
            .map_err(|status| anyhow::anyhow!("delete {app}: {status:?}"))?;
    }
    let base = Spread::of(&mut baselines);
    let narrowest = rows.first().map(|(_, s, _)| s.p50).unwrap_or(f64::NAN);
    let widest = rows.last().map(|(_, s, _)| s.p50).unwrap_or(f64::NAN);
    let ratio = widest / narrowest;
    // The runtime's own part: promotion minus the same width spawned
    // directly, widest beside narrowest.
    let overhead = |(_, took, spawned): &(u32, Spread, Spread)| took.p50 - spawned.p50;
    let overheads: Vec<f64> = rows.iter().map(overhead).collect();
    let width_met = ratio <= 2.0;

    // Memory with many apps deployed.
    let mut memory = None;
    if args.memory_apps > 0 {
        eprintln!("memory: deploying {} apps of one process", args.memory_apps);
        let before = rss_mb()?;
        let manifest = manifest(command, 1);
        for n in 0..args.memory_apps {
            let app = format!("bench-mem-{n}");
            release
                .create_app(rpb::CreateAppRequest {
                    name: app.clone(),
                    deadline_seconds: 0,
                })
                .await?;
            let id = create_release(&mut release, &app, &manifest, &env, &artifact).await?;
            promote(&mut release, rollout.clone(), &app, &id).await?;
        }
        // Let the rack settle (health checks, proxies) before reading.
        tokio::time::sleep(Duration::from_secs(2)).await;
        memory = Some((before, rss_mb()?));
    }

    Spread::header();
    for (count, took, spawned) in &rows {
        took.row(&format!("promote -> RUNNING, {count} processes"));
        spawned.row(&format!("baseline: spawn {count} at once -> all 200"));
    }
    base.row("baseline: spawn -> first 200");
    println!(
        "goal: {} processes p50 <= 2x {} process p50 ({ratio:.2}x): {}",
        args.counts.last().copied().unwrap_or_default(),
        args.counts.first().copied().unwrap_or_default(),
        if width_met { "met" } else { "NOT met" }
    );
    println!(
        "runtime overhead (promotion - direct spawn of the same width, p50 ms): {}",
        rows.iter()
            .zip(&overheads)
            .map(|((count, _, _), o)| format!("{count}: {o:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some((before, after)) = memory {
        println!(
            "resident memory: {rss_started:.1} MB at start, {before:.1} MB before and {after:.1} MB after {} apps (goal <= 60 MB: {})",
            args.memory_apps,
            if after <= 60.0 { "met" } else { "NOT met" }
        );
    }
    println!(
        "{}",
        json!({
            "promotions_per_count": args.promotions,
            "app_delay_ms": args.app_delay_ms,
            "promote_to_running_ms": rows.iter().map(|(c, s, _)| (c.to_string(), s.json())).collect::<serde_json::Map<_, _>>(),
            "direct_spawn_same_width_ms": rows.iter().map(|(c, _, d)| (c.to_string(), d.json())).collect::<serde_json::Map<_, _>>(),
            "runtime_overhead_p50_ms": rows.iter().zip(&overheads).map(|((c, _, _), o)| (c.to_string(), json!(o))).collect::<serde_json::Map<_, _>>(),
            "baseline_spawn_to_first_200_ms": base.json(),
            "widest_over_narrowest_p50": ratio,
            "goal_width_met": width_met,
            "memory_apps": args.memory_apps,
            "rss_mb": memory.map(|(before, after)| json!({"start": rss_started, "before_apps": before, "after_apps": after})),
        })
    );
    Ok(())
}
