//! `slipway-bench`: Slipway's benchmarks, one subcommand per area. Each
//! prints a readable table and, as its last line, one JSON object with every
//! figure beside the baseline measured in the same run (so results are
//! ratios against this machine right now, not absolute numbers).

mod ledger;
mod stats;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ledger(args) => ledger::run(args).await,
    }
}
