//! The `slipway` command: clap over `slipway-client`, printing what the
//! `convox` CLI prints (see `shared/reference/convox-rack-api.md` §1 and §7)
//! except where Slipway does better: promotions follow the rollout's event
//! stream and end the moment it ends, failures say why, and `env set/unset`
//! send only the change.

pub mod cli;
mod commands;
mod dockerignore;
mod humanize;
mod output;
mod package;
mod settings;

use slipway_client::Client;

pub use cli::Cli;
pub use settings::Environment;

/// What every command needs: where it runs and the global flags.
pub(crate) struct Context {
    env: Environment,
    app_flag: Option<String>,
    rack_flag: Option<String>,
}

impl Context {
    /// A client of the configured rack.
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.env.rack_url(self.rack_flag.as_deref())?)?)
    }

    /// The app the command is about.
    pub(crate) fn app(&self) -> anyhow::Result<String> {
        self.env.app(self.app_flag.as_deref())
    }

    /// `name` when given, else the default app.
    pub(crate) fn app_or(&self, name: Option<&str>) -> anyhow::Result<String> {
        match name {
            Some(name) => Ok(name.to_owned()),
            None => self.app(),
        }
    }
}

/// Runs one command line in `env`.
pub async fn run(cli: Cli, env: Environment) -> anyhow::Result<()> {
    let ctx = Context {
        env,
        app_flag: cli.app,
        rack_flag: cli.rack,
    };
    commands::run(&ctx, cli.command).await
}
