//! The command line, as clap derive types. Names, flags and defaults follow
//! the `convox` CLI so that its users need nothing new.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Build, release and promote apps on a Slipway (or Convox) rack.
#[derive(Debug, Parser)]
#[command(name = "slipway", version, about, propagate_version = true)]
pub struct Cli {
    /// The app (default: the contents of .convox/app, else the current directory's name).
    #[arg(short, long, global = true, value_name = "NAME")]
    pub app: Option<String>,
    /// The rack URL, `http://convox:PASSWORD@HOST:PORT`, or several gateways' URLs separated by
    /// commas (default: the URL `slipway login` stored).
    #[arg(
        long,
        global = true,
        env = "RACK_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub rack: Option<String>,
    /// Also trust the certificates in this PEM file for an https:// rack
    /// (e.g. a rack's self-signed certificate, which slipway-rack prints).
    #[arg(long, global = true, env = "SLIPWAY_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate from an https:// rack (self-signed, expired,
    /// another host's): encrypted, but not protected from interception.
    #[arg(long, global = true, env = "SLIPWAY_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List apps, or manage one.
    Apps {
        /// What to do (default: list).
        #[command(subcommand)]
        command: Option<AppsCommand>,
    },
    /// Package DIR, upload it and build it into a new release (not promoted).
    Build(BuildArgs),
    /// Build and promote in one step.
    Deploy(DeployArgs),
    /// List releases (newest first), or manage one.
    Releases {
        /// How many to list.
        #[arg(short, long)]
        limit: Option<u32>,
        /// What to do (default: list).
        #[command(subcommand)]
        command: Option<ReleasesCommand>,
    },
    /// List builds (newest first), or inspect one.
    Builds {
        /// How many to list.
        #[arg(short, long)]
        limit: Option<u32>,
        /// What to do (default: list).
        #[command(subcommand)]
        command: Option<BuildsCommand>,
    },
    /// Show the environment of the newest release, or change it.
    Env {
        /// What to do (default: print every KEY=VALUE).
        #[command(subcommand)]
        command: Option<EnvCommand>,
    },
    /// Stream the app's logs.
    Logs(LogsArgs),
    /// List the app's processes (one-offs with their command).
    Ps {
        #[command(subcommand)]
        command: Option<PsCommand>,
    },
    /// Run a one-off process of a service (of the active release, or --release).
    Run(RunArgs),
    /// Run a command inside a running process.
    Exec {
        /// The process id.
        pid: String,
        /// The command; shell text, its words joined with spaces.
        #[arg(required = true, num_args = 1.., value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List the app's services and where to reach them, or restart one.
    Services {
        /// What to do (default: list).
        #[command(subcommand)]
        command: Option<ServicesCommand>,
    },
    /// List the services' scale, or change one service's.
    Scale(ScaleArgs),
    /// Restart every service of the app, rolling (new processes healthy before old ones stop).
    Restart,
    /// Show the rack.
    Rack,
    /// List scoped tokens (names, roles, apps, times; never values), or
    /// create or revoke one (admin).
    Tokens {
        /// What to do (default: list).
        #[command(subcommand)]
        command: Option<TokensCommand>,
    },
    /// Show the audit trail (newest first): who changed what, when, from
    /// where. Of the app given with -a, else of the whole rack (admin).
    Audit(AuditArgs),
    /// List webhooks (receivers of the rack's events, Convox-compatible and
    /// signed), or add or remove one, manage signing keys, show deliveries.
    Webhooks {
        /// What to do (default: list).
        #[command(subcommand)]
        command: Option<WebhooksCommand>,
    },
    /// Check a rack URL and store it for commands run without RACK_URL.
    Login {
        /// `http://convox:PASSWORD@HOST:PORT`.
        url: String,
    },
}

/// `tokens` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token and print it (once: only a keyed hash is kept).
    Create {
        /// Its name (lowercase letters, digits, - _ .).
        name: String,
        /// read (every GET and stream), deploy (also builds, env, promote,
        /// rollback, cancel, run, scale, restart) or admin (everything).
        #[arg(long, value_parser = ["read", "deploy", "admin"])]
        role: String,
        /// The apps it applies to, comma-separated patterns (`web,web-*`;
        /// default: every app).
        #[arg(long, value_delimiter = ',', value_name = "PATTERN,...")]
        apps: Vec<String>,
        /// When it stops working, as a duration from now (`30d`, `12h`;
        /// default: never).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// Revoke a token: it stops working on every gateway within seconds,
    /// open streams included.
    Revoke {
        /// Its name.
        name: String,
    },
}

/// The flags of `audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only records this recent (`1h`, `30m`, `7d`).
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// At most this many records (default 100, at most 1000).
    #[arg(short, long)]
    pub limit: Option<u32>,
}

/// `webhooks` subcommands.
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Add a receiver (http:// or https://) of the events of the app given
    /// with -a, else of every app. The first one also creates a signing key
    /// and prints it once.
    Add {
        /// Where to POST the events.
        url: String,
        /// Only these actions, comma-separated (app:create, build:create,
        /// release:create, release:promote, app:promote:completed,
        /// app:promote:errored, app:promote:cancelled; default: all).
        #[arg(long, value_delimiter = ',', value_name = "ACTION,...")]
        events: Vec<String>,
    },
    /// Remove a receiver; its pending deliveries are cancelled.
    Remove {
        /// Its id (W…).
        id: String,
    },
    /// List, add or remove signing keys (at most 4 during a rotation).
    Keys {
        /// What to do (default: list).
        #[command(subcommand)]
        command: Option<WebhookKeysCommand>,
    },
    /// Recent deliveries, newest first, with their last result.
    Deliveries {
        /// Only this receiver's (W…).
        #[arg(long)]
        webhook: Option<String>,
        /// At most this many (default 50).
        #[arg(short, long)]
        limit: Option<u32>,
    },
}

/// `webhooks keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum WebhookKeysCommand {
    /// List the active keys (ids and fingerprints, never the keys).
    List,
    /// Generate a key and print it (once: the rack keeps it sealed).
    Add,
    /// Remove a key: deliveries are no longer signed with it.
    Remove {
        /// Its id (K…).
        id: String,
    },
}

/// `apps` subcommands.
#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Create an app.
    Create {
        /// The app's name (default: --app, .convox/app, or the directory's name).
        name: Option<String>,
        /// Promotion deadline in seconds (30-21600; default 600).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
    },
    /// Show an app.
    Info {
        /// The app (default: --app, .convox/app, or the directory's name).
        name: Option<String>,
    },
    /// Delete an app.
    Delete {
        /// The app (default: --app, .convox/app, or the directory's name).
        name: Option<String>,
    },
    /// Cancel the app's promotion in flight (it is rolled back).
    Cancel {
        /// The app (default: --app, .convox/app, or the directory's name).
        name: Option<String>,
    },
}

/// The flags of `build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The source directory.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The release's description (default, for a clean git tree: `build <sha> <subject>`).
    #[arg(short, long)]
    pub description: Option<String>,
    /// The manifest file in the source (default: convox.yml).
    #[arg(short, long, value_name = "FILE")]
    pub manifest: Option<String>,
    /// Build without the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Print only the release id on stdout (everything else goes to stderr).
    #[arg(long)]
    pub id: bool,
}

/// The flags of `deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// What to build.
    #[command(flatten)]
    pub build: BuildArgs,
    /// Promote even if the release is older than the active one.
    #[arg(long)]
    pub force: bool,
}

/// `releases` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReleasesCommand {
    /// Show a release.
    Info {
        /// The release id.
        id: String,
    },
    /// Print a release's manifest.
    Manifest {
        /// The release id.
        id: String,
    },
    /// Promote a release (default: the newest) and follow its rollout.
    Promote {
        /// The release id.
        id: Option<String>,
        /// Promote even if the release is older than the active one.
        #[arg(long)]
        force: bool,
    },
    /// Copy a release and promote the copy.
    Rollback {
        /// The release to go back to.
        id: String,
        /// Print only the new release's id on stdout.
        #[arg(long = "id")]
        id_only: bool,
    },
}

/// `builds` subcommands.
#[derive(Debug, Subcommand)]
pub enum BuildsCommand {
    /// Show a build.
    Info {
        /// The build id.
        id: String,
    },
    /// Print a build's log (live while it runs).
    Logs {
        /// The build id.
        id: String,
    },
    /// Write a build as an archive (to stdout when it is not a terminal).
    Export {
        /// The build id.
        id: String,
        /// Write to this file.
        #[arg(short, long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Build an exported archive into a new build and release of the app (not promoted).
    Import {
        /// Read from this file (default: stdin).
        #[arg(short, long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Print only the new release's id on stdout.
        #[arg(long)]
        id: bool,
    },
}

/// `services` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// Replace the service's processes, rolling.
    Restart {
        /// The service.
        service: String,
    },
}

/// The flags of `scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// The service (all of them when listing without it).
    pub service: Option<String>,
    /// How many processes to run.
    #[arg(long)]
    pub count: Option<u32>,
    /// CPU in millicores.
    #[arg(long)]
    pub cpu: Option<u32>,
    /// Memory in MiB.
    #[arg(long)]
    pub memory: Option<u32>,
}

/// `env` subcommands.
#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Print one value.
    Get {
        /// The variable.
        key: String,
    },
    /// Set variables (also reads KEY=VALUE lines from stdin when it is not a terminal,
    /// as `slipway env` prints them: a `$'…'` value is decoded).
    Set {
        /// `KEY=VALUE` pairs.
        #[arg(value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        /// Promote the new release.
        #[arg(short, long)]
        promote: bool,
        /// Print only the new release's id on stdout.
        #[arg(long)]
        id: bool,
        /// Fork the active release instead of the newest (when the newest
        /// failed to promote, say).
        #[arg(long)]
        from_active: bool,
    },
    /// Remove variables.
    Unset {
        /// The variables.
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
        /// Promote the new release.
        #[arg(short, long)]
        promote: bool,
        /// Print only the new release's id on stdout.
        #[arg(long)]
        id: bool,
        /// Fork the active release instead of the newest (when the newest
        /// failed to promote, say).
        #[arg(long)]
        from_active: bool,
    },
}

/// `ps info`, `ps stop`.
#[derive(Debug, Subcommand)]
pub enum PsCommand {
    /// Show a process.
    Info {
        /// The process id.
        pid: String,
    },
    /// Stop a process.
    Stop {
        /// The process id.
        pid: String,
    },
}

/// The arguments of `run`. Flags may come anywhere, as for `convox run`;
/// command words that start with `-` go after `--`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The service whose build, env and definition it runs with.
    pub service: String,
    /// The command: shell text (run with `sh -c`), its words joined with spaces.
    #[arg(required = true, num_args = 1.., value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Run this release (e.g. migrations before promoting it).
    #[arg(long, value_name = "ID")]
    pub release: Option<String>,
    /// Start it and return; `ps` lists it until it ends.
    #[arg(short, long)]
    pub detach: bool,
    /// Stop it after this many seconds (default 3600).
    #[arg(short, long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

/// The flags of `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Print what is there and stop instead of following.
    #[arg(long)]
    pub no_follow: bool,
    /// How far back to start, e.g. `10m` (default: 2m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Only this service's logs.
    #[arg(short, long)]
    pub service: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli =
            Cli::try_parse_from(["slipway", "releases", "info", "RX", "-a", "myapp"]).unwrap();
        assert_eq!(cli.app.as_deref(), Some("myapp"));
        let cli =
            Cli::try_parse_from(["slipway", "env", "set", "A=1", "B=2", "-p", "--id"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Env {
                command: Some(EnvCommand::Set {
                    promote: true,
                    id: true,
                    ..
                })
            }
        ));
        let cli = Cli::try_parse_from(["slipway", "releases", "rollback", "RX", "--id"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Releases {
                command: Some(ReleasesCommand::Rollback { id_only: true, .. }),
                ..
            }
        ));
    }
}
