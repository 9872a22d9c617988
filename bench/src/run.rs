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
//!   writer, a server copying each read back, a reader), also both ways;
//!   `--copies` of each, alternating, the figure being the median of the
//!   paired ratios. Goal: at least 50% of the raw copy.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::cli::BenchCli;
use crate::rack::BenchRack;
use crate::stats::{Spread, paired_overheads};

/// Options of the `run` benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Runs of `true` measured (each beside one direct spawn).
    #[arg(long, default_value = "20")]
    runs: usize,
    /// Megabytes piped through `run web cat`.
    #[arg(long, default_value = "100")]
    mb: usize,
    /// Copies of `--mb` measured each way (alternating), the figure being
    /// the median of each and of the paired ratios.
    #[arg(long, default_value = "5")]
    copies: usize,
    /// The `slipway` CLI to run; default: the one built beside this binary.
    #[arg(long)]
    slipway: Option<PathBuf>,
}

const APP: &str = "bench-run";

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(args.mb > 0, "--mb must be at least 1");
    anyhow::ensure!(args.copies > 0, "--copies must be at least 1");
    let cli = BenchCli::locate(args.slipway.clone())?;
    let rack = BenchRack::start(8 << 20).await?;
    let result = measure(&args, &rack, &cli).await;
    rack.stop().await;
    result
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

async fn measure(args: &Args, rack: &BenchRack, cli: &BenchCli) -> anyhow::Result<()> {
    let dir = rack.dir().join("app");
    cli.write_app(&dir, "")?;
    ok(cli.command(rack, &["apps", "create", APP]), "apps create").await?;
    let deploy = ["deploy", &dir.to_string_lossy(), "-a", APP].map(str::to_owned);
    let deploy: Vec<&str> = deploy.iter().map(String::as_str).collect();
    ok(cli.command(rack, &deploy), "deploy").await?;
    eprintln!(
        "run: {} runs of `true`, then {} × {} MB through `cat` and the echo",
        args.runs, args.copies, args.mb
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
                cli.command(rack, &["run", "-a", APP, "web", "true"]),
                "run web true",
            )
            .await?,
        );
    }
    let mut overheads = paired_overheads(&runs, &spawns);

    // Throughput: copies alternating with the baseline's, so both share
    // the machine's noise; the medians, and the median of paired ratios.
    let bytes = args.mb << 20;
    let mbps = |d: Duration| bytes as f64 / (1 << 20) as f64 / d.as_secs_f64();
    let (mut cats, mut raws, mut shares) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.copies {
        let cat = mbps(cat_through_run(rack, cli, bytes).await?);
        let raw = mbps(loopback_echo(bytes).await?);
        cats.push(cat);
        raws.push(raw);
        shares.push(cat / raw);
    }
    let (cat_mbps, raw_mbps, share) = (median(cats), median(raws), median(shares));

    let (took, spawned, over) = (
        Spread::of(&mut runs),
        Spread::of(&mut spawns),
        Spread::of(&mut overheads),
    );
    let attach_met = over.p50 <= 100.0;
    let throughput_met = share >= 0.5;

    Spread::header();
    took.row("slipway run web true, start -> exit");
    spawned.row("baseline: spawn sh -c true");
    over.row("overhead, paired");
    println!("{:<44} {:>9.1}", "run web cat (MB/s)", cat_mbps);
    println!(
        "{:<44} {:>9.1}",
        "baseline: loopback TCP echo (MB/s)", raw_mbps
    );
    println!(
        "goal: attach overhead p50 <= 100 ms: {}; throughput >= 50% of the raw copy (median \
         of {} paired copies: {:.0}%): {}",
        if attach_met { "met" } else { "NOT met" },
        args.copies,
        share * 100.0,
        if throughput_met { "met" } else { "NOT met" }
    );
    println!(
        "{}",
        json!({
            "runs": args.runs,
            "mb": args.mb,
            "copies": args.copies,
            "run_true_ms": took.json(),
            "baseline_spawn_ms": spawned.json(),
            "attach_overhead_ms": over.json(),
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

/// The middle of `values` (the upper middle of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
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
    cli: &BenchCli,
    bytes: usize,
) -> anyhow::Result<Duration> {
    let mut command = cli.command(rack, &["run", "-a", APP, "web", "cat"]);
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
