//! The rack's interface, which scripts rely on:
//! `slipway-rack --data-dir DIR --listen HOST:PORT --password PW`, each also
//! from `SLIPWAY_DATA_DIR`, `SLIPWAY_LISTEN`, `SLIPWAY_PASSWORD`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use slipway_domain::Secret;
use slipway_domain::promotion::DEADLINE_RANGE;
use slipway_gateway::tls::TlsArgs;

/// The command line of `slipway-rack`: the rack's settings plus how its
/// HTTP API is served (HTTPS or, on loopback only, plain HTTP). Kept apart
/// from [`Config`] so that code building a `Config` for a loopback rack
/// needs no transport settings.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "slipway-rack",
    version,
    about = "The embedded Slipway rack: every service in one process"
)]
pub struct Cli {
    /// The rack's settings.
    #[command(flatten)]
    pub config: Config,
    /// HTTPS for the rack API (`--tls-self-signed` keeps the certificate in
    /// `<data-dir>/gateway/tls/`).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Timeouts and caps of the API's connections, bodies and streams.
    #[command(flatten)]
    pub connections: slipway_gateway::serve::ConnectionArgs,
}

impl Cli {
    /// Checks everything that can be checked without I/O.
    pub fn validate(&self) -> Result<(), String> {
        self.config.validate()?;
        self.connections.validate()?;
        self.tls.validate(self.config.listen)
    }
}

/// A setting that makes the rack refuse to start (exit 64), found only
/// once files are read (the password file).
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The embedded rack's settings.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "slipway-rack",
    version,
    about = "The embedded Slipway rack: every service in one process"
)]
pub struct Config {
    /// Directory for all state (SQLite files, sources, artifacts, logs, keys).
    #[arg(long, env = "SLIPWAY_DATA_DIR", default_value = ".slipway/rack")]
    pub data_dir: PathBuf,

    /// Address of the Convox-compatible HTTP API.
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "127.0.0.1:5443")]
    pub listen: SocketAddr,

    /// Rack password (HTTP Basic), at least 16 URL-safe characters. Without
    /// one, a random password is kept in `<data-dir>/password` (mode 0600).
    /// Prefer the variable or the file: a flag shows in `ps`.
    #[arg(long, env = "SLIPWAY_PASSWORD")]
    pub password: Option<Secret>,

    /// Serve the API without authentication: anyone who reaches the port
    /// can do anything. Loopback only; warned about on every start.
    #[arg(long, env = "SLIPWAY_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Rack name reported to clients.
    #[arg(long, env = "SLIPWAY_RACK_NAME", default_value = "local")]
    pub name: String,

    /// Rollout deadline for apps without their own (30s to 6h).
    #[arg(long, env = "SLIPWAY_DEFAULT_DEADLINE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub default_deadline: Duration,

    /// Largest source upload (bytes).
    #[arg(long, env = "SLIPWAY_MAX_UPLOAD_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_upload_bytes: usize,

    /// Stable service ports are taken from this range (e.g. `20000-29999`).
    #[arg(long, env = "SLIPWAY_PORT_RANGE", value_parser = slipway_rollout::config::parse_port_range)]
    pub port_range: Option<slipway_rollout::config::PortRange>,

    /// How apps are kept apart (`--apps-dir`, default `<data-dir>-apps`;
    /// `--app-uid-range` when the rack runs as root).
    #[command(flatten)]
    pub apps: slipway_rollout::config::AppIsolation,

    /// Bring the rack up, deploy `examples/myapp` with the `slipway` CLI,
    /// print the app's URL, and keep serving.
    #[arg(long)]
    pub quickstart: bool,

    /// The app directory the quick start deploys.
    #[arg(long, default_value = "examples/myapp")]
    pub quickstart_app: PathBuf,

    /// On shutdown (SIGTERM, SIGINT), stop every app's processes instead of
    /// leaving them running for the next start to adopt. The quick start
    /// always stops the app it deployed.
    #[arg(long, env = "SLIPWAY_STOP_APPS")]
    pub stop_apps: bool,

    /// Deliver webhooks to loopback, private and link-local addresses too
    /// (receivers on this machine or its network). Off by default: a
    /// webhook URL must not reach the rack's own network (SSRF).
    #[arg(long, env = "SLIPWAY_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
}

impl Config {
    /// The password in effect (given, or kept in the data dir). A password
    /// file that is empty or too short is a [`ConfigError`], never a rack
    /// without authentication.
    pub fn password(&self, data_dir: &Path) -> anyhow::Result<String> {
        match &self.password {
            Some(p) => Ok(p.expose().to_owned()),
            None => crate::load_or_create_password(&data_dir.join("password")),
        }
    }

    /// Checks everything that can be checked without I/O.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(password) = &self.password {
            slipway_gateway::config::check_password(
                password.expose(),
                "--password (SLIPWAY_PASSWORD)",
            )?;
        }
        self.apps.validate(&self.data_dir)?;
        if self.insecure_no_auth && !self.listen.ip().is_loopback() {
            return Err(format!(
                "--insecure-no-auth is refused on {}: serving without authentication is allowed on loopback only",
                self.listen
            ));
        }
        let secs = self.default_deadline.as_secs();
        let (min, max) = (DEADLINE_RANGE.start(), DEADLINE_RANGE.end());
        if !(u64::from(*min)..=u64::from(*max)).contains(&secs) {
            let limit =
                |secs: &u32| humantime::format_duration(Duration::from_secs(u64::from(*secs)));
            return Err(format!(
                "--default-deadline must be between {} and {}, got {secs}s",
                limit(min),
                limit(max)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(default_deadline: Duration) -> Config {
        Config {
            data_dir: PathBuf::from("/nonexistent/rack"),
            listen: "127.0.0.1:0".parse().unwrap(),
            password: None,
            name: "test".into(),
            default_deadline,
            max_upload_bytes: 1 << 20,
            port_range: None,
            insecure_no_auth: true,
            quickstart: false,
            quickstart_app: PathBuf::new(),
            stop_apps: false,
            apps: Default::default(),
            webhook_allow_private: false,
        }
    }

    #[test]
    fn the_default_deadline_is_checked_against_the_domain_range() {
        assert_eq!(config(Duration::from_secs(30)).validate(), Ok(()));
        assert_eq!(config(Duration::from_secs(21_600)).validate(), Ok(()));
        assert_eq!(
            config(Duration::from_secs(29)).validate(),
            Err("--default-deadline must be between 30s and 6h, got 29s".to_owned())
        );
        assert_eq!(
            config(Duration::from_secs(21_601)).validate(),
            Err("--default-deadline must be between 30s and 6h, got 21601s".to_owned())
        );
    }
}
