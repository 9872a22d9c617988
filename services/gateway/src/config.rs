//! Configuration of the gateway: flags, each also readable from a
//! `SLIPWAY_*` variable, validated before the port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use slipway_domain::Secret;

/// The gateway's settings.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "slipway-gateway",
    version,
    about = "Slipway gateway: the Convox rack HTTP API"
)]
pub struct Config {
    /// Address to serve HTTP on.
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "127.0.0.1:5443")]
    pub listen: SocketAddr,

    /// The rack password clients send as HTTP Basic auth (user ignored).
    /// Required unless --dev.
    #[arg(long, env = "SLIPWAY_PASSWORD")]
    pub password: Option<Secret>,

    /// Release service replicas (comma-separated gRPC endpoints).
    #[arg(
        long = "release-endpoint",
        env = "SLIPWAY_RELEASE_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub release_endpoints: Vec<String>,

    /// Build service replicas.
    #[arg(
        long = "build-endpoint",
        env = "SLIPWAY_BUILD_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub build_endpoints: Vec<String>,

    /// Rollout service replicas.
    #[arg(
        long = "rollout-endpoint",
        env = "SLIPWAY_ROLLOUT_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub rollout_endpoints: Vec<String>,

    /// Name reported by `GET /system`.
    #[arg(long, env = "SLIPWAY_RACK_NAME", default_value = "slipway")]
    pub rack_name: String,

    /// Provider reported by `GET /system` (`local` or `k8s`).
    #[arg(long, env = "SLIPWAY_PROVIDER", default_value = "local")]
    pub provider: String,

    /// Largest source upload accepted (bytes); larger bodies get 413.
    #[arg(long, env = "SLIPWAY_MAX_UPLOAD_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_upload_bytes: usize,

    /// Largest body of any other request (bytes).
    #[arg(long, env = "SLIPWAY_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Upper bound of one non-streaming request.
    #[arg(long, env = "SLIPWAY_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Requests served at once before new ones are refused with 503.
    #[arg(long, env = "SLIPWAY_CONCURRENCY_LIMIT", default_value_t = 1024)]
    pub concurrency_limit: usize,

    /// Development mode: allows an empty password.
    #[arg(long, env = "SLIPWAY_DEV")]
    pub dev: bool,

    /// Directory for the gateway's own state (the self-signed certificate).
    #[arg(long, env = "SLIPWAY_DATA_DIR", default_value = ".slipway/gateway")]
    pub data_dir: PathBuf,

    /// HTTPS settings.
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,

    /// The service token signed onto every call to the services.
    #[command(flatten)]
    pub security: slipway_rpc::SecurityArgs,
}

impl Config {
    /// The defaults of the flags, serving on `listen` in front of the given
    /// peers with state in `data_dir`, plain HTTP, no password (set one, or
    /// `dev`): the starting point of the embedded rack and of tests, which
    /// change what they need with struct update syntax.
    pub fn with_peers(
        listen: SocketAddr,
        release_endpoints: Vec<String>,
        build_endpoints: Vec<String>,
        rollout_endpoints: Vec<String>,
        data_dir: PathBuf,
    ) -> Self {
        Self {
            listen,
            password: None,
            release_endpoints,
            build_endpoints,
            rollout_endpoints,
            rack_name: "slipway".into(),
            provider: "local".into(),
            max_upload_bytes: 512 * 1024 * 1024,
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(60),
            concurrency_limit: 1024,
            dev: false,
            data_dir,
            tls: Default::default(),
            security: Default::default(),
        }
    }

    /// Checks everything that can be checked without I/O.
    pub fn validate(&self) -> Result<(), String> {
        let empty = self.password.as_ref().is_none_or(|p| p.expose().is_empty());
        if empty && !self.dev {
            return Err("--password (SLIPWAY_PASSWORD) is required outside --dev".into());
        }
        if self
            .password
            .as_ref()
            .is_some_and(|p| p.expose().contains(['@', ':', '/']))
        {
            return Err(
                "--password must be URL-safe (no '@', ':' or '/'): clients send it inside RACK_URL"
                    .into(),
            );
        }
        self.tls.validate(self.listen)?;
        self.security.validate(None)?;
        if self.max_upload_bytes == 0 || self.max_body_bytes == 0 || self.concurrency_limit == 0 {
            return Err(
                "--max-upload-bytes, --max-body-bytes and --concurrency-limit must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn with_peers_starts_from_the_flag_defaults() {
        let parsed = Config::try_parse_from([
            "slipway-gateway",
            "--release-endpoint",
            "r:1",
            "--build-endpoint",
            "b:1",
            "--rollout-endpoint",
            "o:1",
        ])
        .unwrap();
        let built = Config::with_peers(
            parsed.listen,
            vec!["r:1".into()],
            vec!["b:1".into()],
            vec!["o:1".into()],
            parsed.data_dir.clone(),
        );
        assert_eq!(format!("{built:?}"), format!("{parsed:?}"));
    }
}
