//! `slipway-rack`: the embedded rack. Prints the RACK_URL once ready; with
//! `--quickstart` also deploys the example app and prints its URL.

use std::process::ExitCode;

use anyhow::Context as _;
use slipway_rack::{Cli, Config, Rack};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let Cli { config, tls } = match slipway_rpc::load_config(Cli::validate) {
        Ok(cli) => cli,
        Err(code) => return Ok(code),
    };
    let _telemetry = slipway_telemetry::init_with_default(env!("CARGO_BIN_NAME"), "warn");
    slipway_gateway::serve::raise_fd_limit();
    if slipway_gateway::config::password_flag_given() {
        eprintln!("{}", slipway_gateway::config::PASSWORD_FLAG_WARNING);
    }
    if config.insecure_no_auth {
        eprintln!(
            "WARNING: serving without authentication (--insecure-no-auth): anyone who can reach {} can read every secret and deploy anything",
            config.listen
        );
    }
    let rack = match Rack::start_with(&config, &tls).await {
        Ok(rack) => rack,
        Err(e) => {
            if let Some(refused) = e.downcast_ref::<slipway_rack::config::ConfigError>() {
                eprintln!("invalid config: {refused}");
                return Ok(ExitCode::from(64));
            }
            return Err(e);
        }
    };
    println!("Rack ready. Use it with:");
    println!("  export RACK_URL={}", rack.rack_url);
    if let Some(ca) = &rack.ca_file {
        println!("  export SLIPWAY_CA_FILE={}", ca.display());
    }
    if config.quickstart
        && let Err(e) = quickstart(&config, &rack.rack_url, rack.ca_file.as_deref()).await
    {
        eprintln!("ERROR: quick start failed: {e:#}");
        rack.shutdown().await;
        return Ok(ExitCode::FAILURE);
    }
    println!("Serving; press Ctrl-C to stop.");
    rack.serve(slipway_rpc::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Deploys the example app with the `slipway` CLI (built next to this
/// binary) and prints the URL of its web service.
async fn quickstart(
    config: &Config,
    rack_url: &str,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let cli = std::env::current_exe()?.with_file_name("slipway");
    anyhow::ensure!(
        cli.exists(),
        "the slipway CLI is not built next to slipway-rack ({}): run `cargo build -p slipway-cli`",
        cli.display()
    );
    let app = "myapp";
    let run = |args: &[&str]| {
        let mut command = tokio::process::Command::new(&cli);
        command.args(args).env("RACK_URL", rack_url);
        if let Some(ca) = ca_file {
            command.env("SLIPWAY_CA_FILE", ca);
        }
        command
    };
    let exists = run(&["apps", "info", app]).output().await?.status.success();
    if !exists {
        let status = run(&["apps", "create", app])
            .status()
            .await
            .context("run slipway apps create")?;
        anyhow::ensure!(status.success(), "slipway apps create {app} failed");
    }
    let dir = config.quickstart_app.to_string_lossy().into_owned();
    let status = run(&["deploy", &dir, "-a", app, "-d", "quick start"])
        .status()
        .await
        .context("run slipway deploy")?;
    anyhow::ensure!(status.success(), "slipway deploy failed");
    let services = run(&["services", "-a", app]).output().await?;
    let text = String::from_utf8_lossy(&services.stdout);
    let domain = text
        .lines()
        .skip(1)
        .find_map(|line| line.split_whitespace().nth(1).map(str::to_owned))
        .context("the app has no service address")?;
    println!("App {app} is live at http://{domain}/");
    Ok(())
}
