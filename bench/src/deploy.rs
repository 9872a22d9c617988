//! `deploy`: the wall time of the real `slipway deploy` process, start to
//! exit, for a small app already built once (so the build is a cache hit),
//! beside the app's own spawn → first 200 measured in the same run.
//!
//! - deploy: `slipway deploy DIR -a bench-deploy`, the CLI binary built
//!   beside this one, against an in-process rack: package, upload, cached
//!   build, release, promote, follow the promotion's events to the end.
//! - baseline: the app's command (`/bin/sh -c 'exec … serve-app'`, same env,
//!   `PORT` set) spawned by the bench and polled every millisecond until its
//!   first 200, alternating with the deploys so both share the machine's
//!   noise.
//!
//! Overhead is the paired difference. Goal (issue 12): p50 ≤ 150 ms and
//! p99 ≤ 300 ms. Before issue 12 the CLI slept a second and replayed the
//! event stream whenever the outcome was not recorded yet as the stream
//! ended, which put about half the deploys a second late.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use crate::cli::BenchCli;
use crate::rack::BenchRack;
use crate::rollout::baseline;
use crate::stats::{Spread, paired_overheads};

/// Options of the `deploy` benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Deploys measured (each beside one baseline start).
    #[arg(long, default_value = "20")]
    deploys: usize,
    /// How long the app sleeps before it listens (its own start time).
    #[arg(long, default_value = "100")]
    app_delay_ms: u64,
    /// The `slipway` CLI to run; default: the one built beside this binary.
    #[arg(long)]
    slipway: Option<PathBuf>,
}

const APP: &str = "bench-deploy";

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.deploys > 0, "--deploys must be at least 1");
    let cli = BenchCli::locate(args.slipway.clone())?;
    let rack = BenchRack::start(8 << 20).await?;
    let result = measure(&args, &rack, &cli).await;
    rack.stop().await;
    result
}

async fn measure(args: &Args, rack: &BenchRack, cli: &BenchCli) -> anyhow::Result<()> {
    let dir = rack.dir().join("app");
    cli.write_app(&dir, "    termination:\n      grace: 5\n")?;
    let command = cli.app_command();
    let env = HashMap::from([("APP_DELAY_MS".to_owned(), args.app_delay_ms.to_string())]);
    // Each stdout line stamped with when it arrived (ms after the start),
    // so the slowest deploy can show where its time went.
    let run = |args: Vec<String>| {
        let mut command = cli.command(rack, &args.iter().map(String::as_str).collect::<Vec<_>>());
        async move {
            use tokio::io::AsyncBufReadExt as _;
            let started = Instant::now();
            let mut child = command.spawn().context("run slipway")?;
            let mut lines =
                tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
            let mut out = String::new();
            let mut stamped = String::new();
            while let Some(line) = lines.next_line().await? {
                let at = started.elapsed().as_secs_f64() * 1000.0;
                stamped.push_str(&format!("{at:>8.1} ms  {line}\n"));
                out.push_str(&line);
                out.push('\n');
            }
            let output = child.wait_with_output().await?;
            let took = started.elapsed();
            anyhow::ensure!(
                output.status.success(),
                "slipway {args:?} failed: {out}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            stamped.push_str(&format!(
                "{:>8.1} ms  (exit)\n",
                took.as_secs_f64() * 1000.0
            ));
            Ok((took, out, stamped))
        }
    };
    let owned = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    eprintln!(
        "deploy: {} deploys of a 1-process app listening after {} ms",
        args.deploys, args.app_delay_ms
    );
    run(owned(&["apps", "create", APP])).await?;
    let delay = format!("APP_DELAY_MS={}", args.app_delay_ms);
    run(owned(&["env", "set", &delay, "-a", APP])).await?;
    let deploy = owned(&["deploy", &dir.to_string_lossy(), "-a", APP]);
    // Built once, unmeasured: every measured deploy is a cached build that
    // replaces a running release, as a redeploy usually is.
    let (first, _, _) = run(deploy.clone()).await?;

    let mut deploys = Vec::with_capacity(args.deploys);
    let mut baselines = Vec::with_capacity(args.deploys);
    let mut slowest: Option<(Duration, String)> = None;
    for _ in 0..args.deploys {
        baselines.push(baseline(&command, &dir, &env).await?);
        let (took, out, stamped) = run(deploy.clone()).await?;
        anyhow::ensure!(out.ends_with("\nOK\n"), "deploy did not end in OK:\n{out}");
        if slowest.as_ref().is_none_or(|(t, _)| took > *t) {
            slowest = Some((took, stamped));
        }
        deploys.push(took);
    }
    if let Some((_, stamped)) = &slowest {
        eprintln!("the slowest deploy, line by line:\n{stamped}");
    }
    let mut overheads = paired_overheads(&deploys, &baselines);
    let (took, base, over) = (
        Spread::of(&mut deploys),
        Spread::of(&mut baselines),
        Spread::of(&mut overheads),
    );
    let over_1s = overheads
        .iter()
        .filter(|o| **o >= Duration::from_secs(1))
        .count();
    let met = over.p50 <= 150.0 && over.p99 <= 300.0;

    Spread::header();
    took.row("slipway deploy, start -> exit");
    base.row("baseline: spawn -> first 200");
    over.row("overhead, paired");
    println!(
        "{:<44} {:>9.1} (first deploy, with the build; not counted)",
        "first deploy (ms)",
        first.as_secs_f64() * 1000.0
    );
    println!(
        "{:<44} {:>9} of {}",
        "deploys with overhead >= 1 s", over_1s, args.deploys
    );
    println!(
        "goal: overhead p50 <= 150 ms and p99 <= 300 ms: {}",
        if met { "met" } else { "NOT met" }
    );
    println!(
        "{}",
        json!({
            "deploys": args.deploys,
            "app_delay_ms": args.app_delay_ms,
            "deploy_ms": took.json(),
            "baseline_spawn_to_first_200_ms": base.json(),
            "overhead_ms": over.json(),
            "ratio_p50": took.p50 / base.p50,
            "deploys_over_1s_overhead": over_1s,
            "first_deploy_ms": first.as_secs_f64() * 1000.0,
            "goal_overhead_ms": {"p50": 150, "p99": 300},
            "goal_met": met,
        })
    );
    Ok(())
}
