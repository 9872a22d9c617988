//! `run`: one-off processes through the real `slipway run`, each beside a
//! baseline measured in the same run.
//!
//! - attach overhead: the wall time of `slipway run web true` (CLI start to
//!   exit: start the one-off, attach, its exit status) beside spawning
//!   `/bin/sh -c true` directly, alternating so both share the machine's
//!   noise; the overhead is the paired difference. Goal (issue 14): p50 ≤
//!   100 ms.
//! - throughput: `slipway run web cat` with `--mb` MB on stdin, its output
//!   read to the end, beside a raw loopback TCP echo of the same bytes (a
//!   writer, a server copying each read back, a reader), also both ways.
//!   Goal: at least 50% of the raw copy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::rack::BenchRack;
use crate::stats::percentile_ms;

/// Options of the `run` benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Runs of `true` measured (each beside one direct spawn).
    #[arg(long, default_value = "20")]
    runs: usize,
    /// Megabytes piped through `run web cat`.
    #[arg(long, default_value = "100")]
    mb: usize,
    /// The `slipway` CLI to run; default: the one built beside this binary.
    #[arg(long)]
    slipway: Option<PathBuf>,
}

const APP: &str = "bench-run";

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(args.mb > 0, "--mb must be at least 1");
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

fn cli(rack: &BenchRack, slipway: &Path, args: &[&str]) -> tokio::process::Command {
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
}

async fn ok(mut command: tokio::process::Command, what: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = command
        .output()
        .await
        .with_context(|| format!("run {what}"))?;
    let took = started.elapsed();
    anyhow::ensure!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(took)
}

async fn measure(args: &Args, rack: &BenchRack, exe: &Path, slipway: &Path) -> anyhow::Result<()> {
    let dir = rack.dir().join("app");
    std::fs::create_dir_all(&dir)?;
    let command = format!("exec {} serve-app", exe.display());
    std::fs::write(
        dir.join("convox.yml"),
        format!(
            "services:\n  web:\n    build: .\n    command: {command}\n    port: 3000\n    health:\n      path: /health\n      grace: 5\n      interval: 1\n      timeout: 1\n    scale:\n      count: 1\n"
        ),
    )?;
    ok(cli(rack, slipway, &["apps", "create", APP]), "apps create").await?;
    let deploy = ["deploy", &dir.to_string_lossy(), "-a", APP].map(str::to_owned);
    let deploy: Vec<&str> = deploy.iter().map(String::as_str).collect();
    ok(cli(rack, slipway, &deploy), "deploy").await?;
    eprintln!(
        "run: {} runs of `true`, then {} MB through `cat`",
        args.runs, args.mb
    );

    // Attach overhead.
    let env: HashMap<String, String> = HashMap::new();
    let mut runs = Vec::with_capacity(args.runs);
    let mut spawns = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let started = Instant::now();
        let status = tokio::process::Command::new("/bin/sh")
            .args(["-c", "true"])
            .current_dir(&dir)
            .env_clear()
            .envs(&env)
            .status()
            .await?;
        anyhow::ensure!(status.success(), "sh -c true failed");
        spawns.push(started.elapsed());
        runs.push(
            ok(
                cli(rack, slipway, &["run", "-a", APP, "web", "true"]),
                "run web true",
            )
            .await?,
        );
    }
    let mut overheads: Vec<Duration> = runs
        .iter()
        .zip(&spawns)
        .map(|(r, s)| r.saturating_sub(*s))
        .collect();

    // Throughput.
    let bytes = args.mb << 20;
    let through_cat = cat_through_run(rack, slipway, bytes).await?;
    let raw = loopback_echo(bytes).await?;
    let mbps = |d: Duration| bytes as f64 / (1 << 20) as f64 / d.as_secs_f64();
    let (cat_mbps, raw_mbps) = (mbps(through_cat), mbps(raw));
    let share = cat_mbps / raw_mbps;

    let p = |samples: &mut Vec<Duration>| {
        (
            percentile_ms(samples, 50.0),
            percentile_ms(samples, 90.0),
            percentile_ms(samples, 99.0),
        )
    };
    let (run50, run90, run99) = p(&mut runs);
    let (sp50, sp90, sp99) = p(&mut spawns);
    let (ov50, ov90, ov99) = p(&mut overheads);
    let attach_met = ov50 <= 100.0;
    let throughput_met = share >= 0.5;

    println!("{:<44} {:>9} {:>9} {:>9}", "case (ms)", "p50", "p90", "p99");
    let row =
        |name: &str, (a, b, c): (f64, f64, f64)| println!("{name:<44} {a:>9.1} {b:>9.1} {c:>9.1}");
    row("slipway run web true, start -> exit", (run50, run90, run99));
    row("baseline: spawn sh -c true", (sp50, sp90, sp99));
    row("overhead, paired", (ov50, ov90, ov99));
    println!("{:<44} {:>9.1}", "run web cat (MB/s)", cat_mbps);
    println!(
        "{:<44} {:>9.1}",
        "baseline: loopback TCP echo (MB/s)", raw_mbps
    );
    println!(
        "goal: attach overhead p50 <= 100 ms: {}; throughput >= 50% of the raw copy ({:.0}%): {}",
        if attach_met { "met" } else { "NOT met" },
        share * 100.0,
        if throughput_met { "met" } else { "NOT met" }
    );
    println!(
        "{}",
        json!({
            "runs": args.runs,
            "mb": args.mb,
            "run_true_ms": {"p50": run50, "p90": run90, "p99": run99},
            "baseline_spawn_ms": {"p50": sp50, "p90": sp90, "p99": sp99},
            "attach_overhead_ms": {"p50": ov50, "p90": ov90, "p99": ov99},
            "run_cat_mb_per_s": cat_mbps,
            "baseline_loopback_echo_mb_per_s": raw_mbps,
            "throughput_ratio": share,
            "goal_attach_overhead_p50_ms": 100,
            "goal_throughput_ratio": 0.5,
            "goal_met": attach_met && throughput_met,
        })
    );
    Ok(())
}

/// A block of `bytes` bytes of printable text (the output travels as the
/// CLI reads it, byte for byte).
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// `slipway run web cat` with `bytes` on stdin; the time until it exits
/// with all of them read back.
async fn cat_through_run(
    rack: &BenchRack,
    slipway: &Path,
    bytes: usize,
) -> anyhow::Result<Duration> {
    let mut command = cli(rack, slipway, &["run", "-a", APP, "web", "cat"]);
    command.stdin(std::process::Stdio::piped());
    let block = payload(1 << 20);
    let started = Instant::now();
    let mut child = command.spawn().context("run slipway")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let writer = tokio::spawn(async move {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(block.len());
            stdin.write_all(&block[..n]).await?;
            left -= n;
        }
        drop(stdin);
        anyhow::Ok(())
    });
    let mut buf = vec![0; 1 << 16];
    let mut read = 0;
    loop {
        let n = stdout.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        read += n;
    }
    writer.await??;
    let status = child.wait().await?;
    let took = started.elapsed();
    anyhow::ensure!(status.success(), "run web cat failed: {status}");
    anyhow::ensure!(read == bytes, "run web cat gave {read} bytes of {bytes}");
    Ok(took)
}

/// `bytes` through a loopback TCP echo: written, copied back by a server,
/// read to the end.
async fn loopback_echo(bytes: usize) -> anyhow::Result<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await?;
        let (mut from, mut to) = socket.into_split();
        tokio::io::copy(&mut from, &mut to).await?;
        to.shutdown().await?;
        anyhow::Ok(())
    });
    let block = payload(1 << 20);
    let started = Instant::now();
    let socket = tokio::net::TcpStream::connect(addr).await?;
    let (mut from, mut to) = socket.into_split();
    let writer = tokio::spawn(async move {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(block.len());
            to.write_all(&block[..n]).await?;
            left -= n;
        }
        to.shutdown().await?;
        anyhow::Ok(())
    });
    let mut buf = vec![0; 1 << 16];
    let mut read = 0;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        read += n;
    }
    writer.await??;
    server.await??;
    anyhow::ensure!(read == bytes, "the echo gave {read} bytes of {bytes}");
    Ok(started.elapsed())
}
