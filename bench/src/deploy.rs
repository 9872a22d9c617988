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
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use crate::rack::BenchRack;
use crate::rollout::baseline;
use crate::stats::percentile_ms;

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
    let exe = std::env::current_exe().context("find the bench binary")?;
    let slipway = args
        .slipway
        .clone()
        .unwrap_or_else(|| exe.with_file_name("slipway"));
    anyhow::ensure!(
        slipway.exists(),
        "{} is missing: build the CLI in the same profile (cargo build --release -p slipway-cli) or pass --slipway",
        slipway.display()
    );
    let rack = BenchRack::start(8 << 20).await?;
    let result = measure(&args, &rack, &exe, &slipway).await;
    rack.stop().await;
    result
}

async fn measure(args: &Args, rack: &BenchRack, exe: &Path, slipway: &Path) -> anyhow::Result<()> {
    let dir = rack.dir().join("app");
    std::fs::create_dir_all(&dir)?;
    let command = format!("exec {} serve-app", exe.display());
    std::fs::write(
        dir.join("convox.yml"),
        format!(
            "services:\n  web:\n    build: .\n    command: {command}\n    port: 3000\n    health:\n      path: /health\n      grace: 5\n      interval: 1\n      timeout: 1\n    scale:\n      count: 1\n    termination:\n      grace: 5\n"
        ),
    )?;
    let env = HashMap::from([("APP_DELAY_MS".to_owned(), args.app_delay_ms.to_string())]);
    let cli = |args: &[&str]| {
        let mut command = tokio::process::Command::new(slipway);
        command
            .args(args)
            .current_dir(rack.dir())
            .env("RACK_URL", &rack.url)
            .env_remove("CONVOX_RACK")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    };
    // Each stdout line stamped with when it arrived (ms after the start),
    // so the slowest deploy can show where its time went.
    let run = |args: Vec<String>| {
        let mut command = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
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
    let mut overheads: Vec<Duration> = deploys
        .iter()
        .zip(&baselines)
        .map(|(d, b)| d.saturating_sub(*b))
        .collect();
    let p = |samples: &mut Vec<Duration>| {
        (
            percentile_ms(samples, 50.0),
            percentile_ms(samples, 90.0),
            percentile_ms(samples, 99.0),
        )
    };
    let (dep50, dep90, dep99) = p(&mut deploys);
    let (base50, base90, base99) = p(&mut baselines);
    let (over50, over90, over99) = p(&mut overheads);
    let over_1s = overheads
        .iter()
        .filter(|o| **o >= Duration::from_secs(1))
        .count();
    let met = over50 <= 150.0 && over99 <= 300.0;

    println!("{:<44} {:>9} {:>9} {:>9}", "case (ms)", "p50", "p90", "p99");
    let row =
        |name: &str, (a, b, c): (f64, f64, f64)| println!("{name:<44} {a:>9.1} {b:>9.1} {c:>9.1}");
    row("slipway deploy, start -> exit", (dep50, dep90, dep99));
    row("baseline: spawn -> first 200", (base50, base90, base99));
    row("overhead, paired", (over50, over90, over99));
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
            "deploy_ms": {"p50": dep50, "p90": dep90, "p99": dep99},
            "baseline_spawn_to_first_200_ms": {"p50": base50, "p90": base90, "p99": base99},
            "overhead_ms": {"p50": over50, "p90": over90, "p99": over99},
            "ratio_p50": dep50 / base50,
            "deploys_over_1s_overhead": over_1s,
            "first_deploy_ms": first.as_secs_f64() * 1000.0,
            "goal_overhead_ms": {"p50": 150, "p99": 300},
            "goal_met": met,
        })
    );
    Ok(())
}
