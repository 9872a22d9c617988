//! `slipway-release`: parses config, initialises telemetry, binds, runs.

use std::process::ExitCode;

use slipway_release::Config;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = match slipway_rpc::load_config(Config::validate) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let _telemetry = slipway_telemetry::init(env!("CARGO_BIN_NAME"));
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    slipway_release::run(config, listener, slipway_rpc::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
