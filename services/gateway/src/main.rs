//! `slipway-gateway`: parses config, initialises telemetry, binds, runs.

use std::process::ExitCode;

use slipway_gateway::Config;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = match slipway_rpc::load_config(Config::validate) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let _telemetry = slipway_telemetry::init(env!("CARGO_BIN_NAME"));
    slipway_gateway::serve::raise_fd_limit();
    config.warn_at_start();
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    slipway_gateway::run(config, listener, slipway_rpc::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
