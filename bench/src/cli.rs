//! The real `slipway` CLI, as the benches that time it drive it, and the
//! small app they deploy (this bench binary's own `serve-app`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::rack::BenchRack;

/// The `slipway` CLI to time and the bench binary the app runs.
pub(crate) struct BenchCli {
    /// This bench binary (the app's command is its `serve-app`).
    pub exe: PathBuf,
    /// The CLI: `given`, or the one built beside this binary.
    pub slipway: PathBuf,
}

impl BenchCli {
    /// Finds both binaries; says how to build the CLI when it is missing.
    pub(crate) fn locate(given: Option<PathBuf>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("find the bench binary")?;
        let slipway = given.unwrap_or_else(|| exe.with_file_name("slipway"));
        anyhow::ensure!(
            slipway.exists(),
            "{} is missing: build the CLI in the same profile (cargo build --release -p slipway-cli) or pass --slipway",
            slipway.display()
        );
        Ok(Self { exe, slipway })
    }

    /// `slipway ARGS` against `rack`, from the rack's directory, stdout and
    /// stderr piped, stdin closed.
    pub(crate) fn command(&self, rack: &BenchRack, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.slipway);
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

    /// The app's start command: this binary's `serve-app`.
    pub(crate) fn app_command(&self) -> String {
        format!("exec {} serve-app", self.exe.display())
    }
}

/// The start command of the app the benches deploy: this binary's
/// `serve-app`, which listens on `PORT` after `APP_DELAY_MS`.
pub(crate) fn serve_app_command() -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("find the bench binary")?;
    Ok(format!("exec {} serve-app", exe.display()))
}

impl BenchCli {
    /// Writes a one-service app (`web`, health on `/health`, one process)
    /// into `dir`, with `extra` appended to the service's block.
    pub(crate) fn write_app(&self, dir: &Path, extra: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let command = self.app_command();
        std::fs::write(
            dir.join("convox.yml"),
            format!(
                "services:\n  web:\n    build: .\n    command: {command}\n    port: 3000\n    health:\n      path: /health\n      grace: 5\n      interval: 1\n      timeout: 1\n    scale:\n      count: 1\n{extra}"
            ),
        )
        .context("write convox.yml")
    }
}
