//! The `slipway` binary: parses the command line, runs it, and reports any
//! failure as `ERROR: <message>` on stderr with exit status 1.

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = slipway_cli::Cli::parse();
    let result = match slipway_cli::Environment::from_process() {
        Ok(env) => slipway_cli::run(cli, env).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ERROR: {e:#}");
            ExitCode::FAILURE
        }
    }
}
