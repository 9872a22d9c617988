//! `slipway-bench`: Slipway's benchmarks, one subcommand per area. Each
//! prints a readable table and, as its last line, one JSON object with every
//! figure beside the baseline measured in the same run (so results are
//! ratios against this machine right now, not absolute numbers).

mod cli;
mod console;
mod deploy;
mod faults;
mod faults_db;
mod gateway;
mod kube;
mod ledger;
mod rack;
mod rollout;
mod run;
mod scale;
mod scratch;
mod stats;
mod upload;
mod webhooks;
mod width;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "slipway-bench",
    about = "Slipway benchmarks (ratios against same-run baselines)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Release creation through `env set` and `releases list` latency,
    /// beside raw single-row INSERTs on the same PostgreSQL.
    Ledger(ledger::Args),
    /// Promote-to-healthy on the local runtime beside the app's own
    /// time-to-first-healthy-response, and event latency to a subscriber.
    Rollout(rollout::Args),
    /// Promote-to-running at 1, 10 and 50 processes beside the app's own
    /// start, and the rack's resident memory with 100 apps deployed.
    Width(width::Args),
    /// Source upload throughput beside a raw loopback socket copy, and the
    /// time of a cached rebuild of an unchanged 50 MB source.
    Upload(upload::Args),
    /// `releases list` through the gateway beside the same gRPC call made
    /// directly.
    Gateway(gateway::Args),
    /// `releases list` and `env set` throughput through one gateway vs two
    /// gateway replicas on the same PostgreSQL (the scale setup), and
    /// Redis event fan-out latency beside a bare Redis round trip.
    Scale(scale::Args),
    /// Failed requests and p99 latency of steady `env set` through two
    /// gateways while a release replica is SIGKILLed, beside the same load
    /// with no fault.
    Faults(faults::Args),
    /// Case (c) of `faults`: steady `env set` through two gateways while
    /// PostgreSQL is unreachable for 20 s (through a relay): lost
    /// acknowledged writes, and the time to recover to the fault-free rate.
    FaultsDb(faults_db::Args),
    /// The wall time of the real `slipway deploy` (start to exit) of a small
    /// app already built once, beside the app's own spawn -> first 200.
    Deploy(deploy::Args),
    /// The web console: app page render time and SSE event latency.
    Console(console::Args),
    /// One-off processes: `slipway run web true` beside spawning `true`,
    /// and `run web cat` throughput beside a loopback TCP echo.
    Run(run::Args),
    /// Webhook delivery latency, event to receiver, with 1 and 50
    /// receivers, beside a direct POST to the same receivers.
    Webhooks(webhooks::Args),
    /// Promote -> running on the Kubernetes runtime against the fake API
    /// server, 1 and 20 replicas, beside the pods' fixed ready delay and a
    /// watch round trip.
    Kube(kube::Args),
    /// The app the `rollout` benchmark deploys (and spawns as its baseline):
    /// sleeps `APP_DELAY_MS`, then answers 200 to every request on `$PORT`.
    #[command(hide = true)]
    ServeApp,
}

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    if let Command::ServeApp = command {
        // No async runtime: the app should start as fast as a small server.
        return rollout::serve_app();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            match command {
                Command::Ledger(args) => ledger::run(args).await,
                Command::Rollout(args) => rollout::run(args).await,
                Command::Width(args) => width::run(args).await,
                Command::Upload(args) => upload::run(args).await,
                Command::Gateway(args) => gateway::run(args).await,
                Command::Scale(args) => scale::run(args).await,
                Command::Faults(args) => faults::run(args).await,
                Command::FaultsDb(args) => faults_db::run(args).await,
                Command::Deploy(args) => deploy::run(args).await,
                Command::Console(args) => console::run(args).await,
                Command::Run(args) => run::run(args).await,
                Command::Webhooks(args) => webhooks::run(args).await,
                Command::Kube(args) => kube::run(args).await,
                Command::ServeApp => unreachable!("handled above"),
            }
        })
}
