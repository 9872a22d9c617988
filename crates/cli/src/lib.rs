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
mod stdio;

use slipway_client::Client;

pub use cli::Cli;
pub use settings::Environment;

/// What every command needs: where it runs and the global flags.
pub(crate) struct Context {
    env: Environment,
    app_flag: Option<String>,
    rack_flag: Option<String>,
    /// How an https:// rack's certificate is checked.
    tls: slipway_client::TlsOptions,
    /// The W3C `traceparent` of this command, sent on all its requests.
    traceparent: String,
}

impl Context {
    /// A client of the configured rack.
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        Ok(
            Client::with_tls(&self.env.rack_url(self.rack_flag.as_deref())?, &self.tls)?
                .with_traceparent(self.traceparent.clone()),
        )
    }

    /// How an https:// rack's certificate is checked.
    pub(crate) fn tls(&self) -> &slipway_client::TlsOptions {
        &self.tls
    }

    /// This command's `traceparent`.
    pub(crate) fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The app the command is about.
    pub(crate) fn app(&self) -> anyhow::Result<String> {
        self.env.app(self.app_flag.as_deref())
    }

    /// The app given with `-a`, without a default (`audit` lists the
    /// whole rack without one).
    pub(crate) fn app_flag(&self) -> Option<&str> {
        self.app_flag.as_deref()
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
        tls: slipway_client::TlsOptions {
            ca_file: cli.ca_file,
            insecure: cli.insecure,
        },
        traceparent: new_traceparent(rand::random()),
    };
    commands::run(&ctx, cli.command).await
}

/// A W3C `traceparent` with a random trace id and span id, sampled: every
/// request of one command carries it, so the services' spans of one
/// `slipway deploy` form one trace whose root is this (unexported) command
/// span. No OpenTelemetry SDK is needed for that. All-zero ids are invalid,
/// so a zero id gets its last bit set.
fn new_traceparent(random: [u8; 24]) -> String {
    let (mut trace, mut span) = (random[..16].to_vec(), random[16..].to_vec());
    if trace.iter().all(|b| *b == 0) {
        trace[15] = 1;
    }
    if span.iter().all(|b| *b == 0) {
        span[7] = 1;
    }
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!("00-{}-{}-01", hex(&trace), hex(&span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_w3c_values() {
        assert_eq!(
            new_traceparent([0xab; 24]),
            "00-abababababababababababababababab-abababababababab-01"
        );
        assert_eq!(
            new_traceparent([0; 24]),
            "00-00000000000000000000000000000001-0000000000000001-01"
        );
        assert_ne!(
            new_traceparent(rand::random()),
            new_traceparent(rand::random())
        );
    }
}
