//! Configuration of the release service: flags, each also readable from a
//! `SLIPWAY_*` variable, validated before any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use slipway_domain::Secret;

use slipway_domain::promotion::DEADLINE_RANGE;

/// The release service's settings.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "slipway-release",
    version,
    about = "Slipway release service: apps, the release ledger and promotions"
)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "127.0.0.1:7101")]
    pub listen: SocketAddr,

    /// Service tokens: who may call this service (see `slipway_rpc::auth`).
    #[command(flatten)]
    pub security: slipway_rpc::SecurityArgs,

    /// Where the records live: `--database-url`, `--data-dir` (see
    /// `slipway_storage::StoreArgs`).
    #[command(flatten)]
    pub store: slipway_storage::StoreArgs,

    /// Base64-encoded 32-byte AES-256-GCM key sealing env snapshots at rest.
    /// Required unless --dev (which generates one into the data directory).
    #[arg(long, env = "SLIPWAY_ENV_KEY")]
    pub env_key: Option<Secret>,

    /// gRPC endpoints of the rollout service replicas (comma-separated).
    /// Without one, promotions wait in `pending` for a rollout driver.
    #[arg(
        long = "rollout-endpoint",
        env = "SLIPWAY_ROLLOUT_ENDPOINTS",
        value_delimiter = ','
    )]
    pub rollout_endpoints: Vec<String>,

    /// Rollout deadline for apps that do not set their own (30s to 6h).
    #[arg(long, env = "SLIPWAY_DEFAULT_DEADLINE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub default_deadline: Duration,

    /// Upper bound of one gRPC call.
    #[arg(long, env = "SLIPWAY_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// How long in-flight calls may run after SIGTERM.
    #[arg(long, env = "SLIPWAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// How often promotions still pending (their hand-over to the rollout
    /// service possibly lost in a crash) are re-sent.
    #[arg(long, env = "SLIPWAY_REDISPATCH_EVERY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub redispatch_every: Duration,

    /// Development mode: allows a generated env key.
    #[arg(long, env = "SLIPWAY_DEV")]
    pub dev: bool,

    /// Webhook delivery (`--rack-name`, `--webhook-*`).
    #[command(flatten)]
    pub webhooks: crate::webhooks::WebhookArgs,

    /// Base64-encoded 32-byte key the access tokens' HMACs are made with.
    /// Default: derived from the env key (every replica sharing it agrees).
    /// Changing it makes every existing token unusable.
    #[arg(long, env = "SLIPWAY_TOKEN_KEY")]
    pub token_key: Option<Secret>,
}

impl Config {
    /// A development configuration rooted at `data_dir` (tests build on it).
    pub fn dev(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            security: Default::default(),
            store: slipway_storage::StoreArgs::at(data_dir),
            env_key: None,
            rollout_endpoints: Vec::new(),
            default_deadline: Duration::from_secs(600),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            redispatch_every: Duration::from_secs(5),
            dev: true,
            webhooks: Default::default(),
            token_key: None,
        }
    }

    /// Checks everything that can be checked without I/O.
    pub fn validate(&self) -> Result<(), String> {
        self.security.validate(Some(self.listen))?;
        let deadline = self.default_deadline.as_secs();
        if !(u64::from(*DEADLINE_RANGE.start())..=u64::from(*DEADLINE_RANGE.end()))
            .contains(&deadline)
        {
            return Err(format!(
                "--default-deadline must be between {}s and {}s, got {}",
                DEADLINE_RANGE.start(),
                DEADLINE_RANGE.end(),
                humantime::format_duration(self.default_deadline)
            ));
        }
        if self.env_key.is_none() && !self.dev {
            return Err("--env-key (SLIPWAY_ENV_KEY) is required outside --dev: it seals env snapshots at rest".into());
        }
        self.store.validate()?;
        self.webhooks.validate()?;
        if let Some(key) = &self.token_key {
            crate::access::TokenKey::from_base64(key.expose())
                .map_err(|e| format!("--token-key: {e}"))?;
        }
        Ok(())
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.store.url("release.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn production_needs_a_key_and_sane_deadline() {
        let config = Config::try_parse_from(["slipway-release"]).unwrap();
        assert!(config.validate().unwrap_err().contains("--env-key"));
        let config =
            Config::try_parse_from(["slipway-release", "--dev", "--default-deadline", "10s"])
                .unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("--default-deadline")
        );
        let config = Config::try_parse_from(["slipway-release", "--dev"]).unwrap();
        config.validate().unwrap();
        assert!(config.database_url().ends_with("release.db"));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = Config::try_parse_from([
            "slipway-release",
            "--env-key",
            "c2VjcmV0",
            "--database-url",
            "postgres://u:pw@h/db",
        ])
        .unwrap();
        let text = format!("{config:?}");
        assert!(
            !text.contains("c2VjcmV0") && !text.contains("pw@"),
            "{text}"
        );
    }

    #[test]
    fn unknown_database_schemes_are_refused() {
        let config =
            Config::try_parse_from(["slipway-release", "--dev", "--database-url", "mysql://h/db"])
                .unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("unsupported database URL")
        );
    }
}
