//! `slipway-gateway`: parses config, initialises telemetry, binds, runs.

use std::process::ExitCode;

use clap::Parser as _;
use slipway_gateway::Config;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(e) if e.use_stderr() => {
            eprintln!("invalid config: {e}");
            return Ok(ExitCode::from(64));
        }
        Err(e) => {
            e.print()?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("invalid config: {e}");
        return Ok(ExitCode::from(64)); // EX_USAGE
    }
    let _telemetry = slipway_telemetry::init("gateway");
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    slipway_gateway::run(config, listener, slipway_rpc::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
