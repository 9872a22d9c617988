//! One module per command group; `run` dispatches the parsed command line.

mod access;
mod apps;
mod build;
mod build_archive;
mod builds;
mod env;
mod promote;
mod rack;
mod releases;
mod run;
mod runtime;
mod scale;
mod webhooks;

use crate::Context;
use crate::cli::{Command, ServicesCommand};

/// Runs a parsed command.
pub(crate) async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Apps { command } => apps::run(ctx, command).await,
        Command::Build(args) => build::build(ctx, &args).await,
        Command::Deploy(args) => build::deploy(ctx, &args).await,
        Command::Builds { limit, command } => builds::run(ctx, limit, command).await,
        Command::Releases { limit, command } => releases::run(ctx, limit, command).await,
        Command::Env { command } => env::run(ctx, command).await,
        Command::Logs(args) => runtime::logs(ctx, &args).await,
        Command::Ps { command: None } => runtime::ps(ctx).await,
        Command::Ps {
            command: Some(command),
        } => run::ps(ctx, command).await,
        Command::Run(args) => run::run(ctx, &args).await,
        Command::Exec { pid, command } => run::exec(ctx, &pid, &command).await,
        Command::Services { command: None } => runtime::services(ctx).await,
        Command::Services {
            command: Some(ServicesCommand::Restart { service }),
        } => scale::restart_one(ctx, &service).await,
        Command::Scale(args) => scale::scale(ctx, &args).await,
        Command::Restart => scale::restart_all(ctx).await,
        Command::Rack => rack::rack(ctx).await,
        Command::Login { url } => rack::login(ctx, &url).await,
        Command::Webhooks { command } => webhooks::webhooks(ctx, command).await,
        Command::Tokens { command } => access::tokens(ctx, command).await,
        Command::Audit(args) => access::audit(ctx, &args).await,
    }
}
