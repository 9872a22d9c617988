//! `slipway-rack`: the embedded rack. Prints the RACK_URL once ready; with
//! `--quickstart` also deploys the example app and prints its URL.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use slipway_rack::{Cli, Config, Rack};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let Cli {
        config,
        tls,
        connections,
    } = match slipway_rpc::load_config(Cli::validate) {
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
    let rack = match Rack::start_serving(&config, &tls, &connections).await {
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
    println!(
        "Console: {} (log in with the rack password)",
        rack.console_url()
    );
    // Listening from here on: a Ctrl-C during the quick start's deploy
    // still stops what it started.
    let mut shutdown = std::pin::pin!(slipway_rpc::shutdown_signal());
    let mut rack = rack;
    let mut outcome = Ok(());
    let mut code = ExitCode::SUCCESS;
    let serving = if config.quickstart {
        tokio::select! {
            () = &mut shutdown => false,
            done = quickstart(&config, &rack.rack_url, rack.ca_file.as_deref()) => match done {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("ERROR: quick start failed: {e:#}");
                    code = ExitCode::FAILURE;
                    false
                }
            },
        }
    } else {
        true
    };
    if serving {
        println!("Serving; press Ctrl-C to stop.");
        outcome = rack.run_until(&mut shutdown).await;
    }
    let processes = rack.app_processes().await.unwrap_or_else(|e| {
        eprintln!("WARNING: cannot tell which app processes run: {e:#}");
        Vec::new()
    });
    rack.shutdown().await;
    leave_or_stop(&config, processes).await;
    outcome?;
    Ok(code)
}

/// The app the quick start deploys (and stops when it ends).
const QUICKSTART_APP: &str = "myapp";

/// At shutdown, stops the processes of the apps it should (every app with
/// `--stop-apps`, the quick start's app with `--quickstart`) and says which
/// it leaves running, and how to stop them.
async fn leave_or_stop(config: &Config, processes: Vec<slipway_rack::AppProcess>) {
    let (stop, leave): (Vec<_>, Vec<_>) = processes
        .into_iter()
        .partition(|p| config.stop_apps || (config.quickstart && p.app == QUICKSTART_APP));
    if !stop.is_empty() {
        println!("Stopping {}...", describe(&stop));
        let left = slipway_rack::stop_processes(&stop, Duration::from_secs(10)).await;
        if left.is_empty() {
            println!("Stopped.");
        } else {
            eprintln!("WARNING: still running: {}", left.join(", "));
        }
    }
    if !leave.is_empty() {
        let groups: Vec<String> = leave.iter().map(|p| format!("-{}", p.pid)).collect();
        eprintln!(
            "Leaving {} running: the next slipway-rack start on {} adopts them.\n\
             To stop them: start the rack with --stop-apps and stop it (it stops every app's processes at shutdown), \
             remove an app with `slipway apps delete <app>` while the rack runs, \
             or now: kill -TERM -- {}",
            describe(&leave),
            config.data_dir.display(),
            groups.join(" ")
        );
    }
}

/// `2 processes of myapp (web-1 pid 10, web-2 pid 11)`.
fn describe(processes: &[slipway_rack::AppProcess]) -> String {
    let mut apps: Vec<&str> = processes.iter().map(|p| p.app.as_str()).collect();
    apps.dedup();
    let list: Vec<String> = processes
        .iter()
        .map(|p| format!("{} pid {}", p.id, p.pid))
        .collect();
    format!(
        "{} process{} of {} ({})",
        processes.len(),
        if processes.len() == 1 { "" } else { "es" },
        apps.join(", "),
        list.join(", ")
    )
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
    let app = QUICKSTART_APP;
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
