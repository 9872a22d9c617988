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

    /// The rack password clients send as HTTP Basic auth (user ignored),
    /// at least 16 URL-safe characters. Pass it in the variable: a flag
    /// shows in `ps` to every user of the machine.
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

    /// Serve without authentication: anyone who reaches the port can do
    /// anything. Loopback only; warned about on every start.
    #[arg(long, env = "SLIPWAY_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Failed logins one source address may make in a row before it is
    /// slowed down.
    #[arg(long, env = "SLIPWAY_FAILED_LOGIN_BURST", default_value_t = 10)]
    pub failed_login_burst: u32,

    /// Failed logins a slowed source address regains per minute.
    #[arg(long, env = "SLIPWAY_FAILED_LOGINS_PER_MINUTE", default_value_t = 30)]
    pub failed_logins_per_minute: u32,

    /// Redis for the web console's sessions, so a console login holds on
    /// every gateway replica. Without it sessions live in this process (one
    /// gateway, or the embedded rack).
    #[arg(long, env = "SLIPWAY_REDIS_URL")]
    pub redis_url: Option<Secret>,

    /// First part of the console's Redis keys (`<prefix>:console:v1:…`);
    /// give racks sharing one Redis different prefixes.
    #[arg(long, env = "SLIPWAY_REDIS_PREFIX", default_value = "slipway")]
    pub redis_prefix: String,

    /// The web console shows everything and changes nothing (no promote,
    /// rollback, cancel or env change from a browser).
    #[arg(long, env = "SLIPWAY_CONSOLE_READ_ONLY")]
    pub console_read_only: bool,

    /// Directory for the gateway's own state (the self-signed certificate).
    #[arg(long, env = "SLIPWAY_DATA_DIR", default_value = ".slipway/gateway")]
    pub data_dir: PathBuf,

    /// HTTPS settings.
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,

    /// Timeouts and caps of connections, request bodies and streams.
    #[command(flatten)]
    pub connections: crate::serve::ConnectionArgs,

    /// The service token signed onto every call to the services.
    #[command(flatten)]
    pub security: slipway_rpc::SecurityArgs,
}

impl Config {
    /// The defaults of the flags, serving on `listen` in front of the given
    /// peers with state in `data_dir`, plain HTTP, no password (set one, or
    /// `insecure_no_auth`): the starting point of the embedded rack and of tests, which
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
            insecure_no_auth: false,
            failed_login_burst: 10,
            failed_logins_per_minute: 30,
            redis_url: None,
            redis_prefix: "slipway".into(),
            console_read_only: false,
            data_dir,
            tls: Default::default(),
            connections: Default::default(),
            security: Default::default(),
        }
    }

    /// The failed-login policy the flags describe.
    pub fn login_policy(&self) -> crate::logins::Policy {
        crate::logins::Policy {
            burst: self.failed_login_burst,
            per_minute: self.failed_logins_per_minute,
        }
    }

    /// Checks everything that can be checked without I/O.
    pub fn validate(&self) -> Result<(), String> {
        if self.insecure_no_auth {
            if !self.listen.ip().is_loopback() {
                return Err(format!(
                    "--insecure-no-auth is refused on {}: serving without authentication is allowed on loopback only",
                    self.listen
                ));
            }
        } else {
            match &self.password {
                Some(password) => check_password(password.expose(), "--password")?,
                None => {
                    return Err("a password is required: set SLIPWAY_PASSWORD (at least 16 URL-safe characters)".into());
                }
            }
        }
        self.tls.validate(self.listen)?;
        self.connections.validate()?;
        self.security.validate(None)?;
        if self.max_upload_bytes == 0 || self.max_body_bytes == 0 || self.concurrency_limit == 0 {
            return Err(
                "--max-upload-bytes, --max-body-bytes and --concurrency-limit must be positive"
                    .into(),
            );
        }
        if self.failed_login_burst == 0 {
            return Err("--failed-login-burst must be at least 1".into());
        }
        Ok(())
    }

    /// Says on every start what an operator must know: authentication off,
    /// or a password given where `ps` shows it.
    pub fn warn_at_start(&self) {
        if self.insecure_no_auth {
            tracing::warn!(listen = %self.listen, "serving WITHOUT AUTHENTICATION (--insecure-no-auth): anyone who can reach {} can read every secret and deploy anything", self.listen);
            eprintln!(
                "WARNING: serving without authentication (--insecure-no-auth): anyone who can reach {} can read every secret and deploy anything",
                self.listen
            );
        }
        if password_flag_given() {
            eprintln!("{PASSWORD_FLAG_WARNING}");
        }
    }
}

/// The shortest rack password accepted.
pub const MIN_PASSWORD_CHARS: usize = 16;

/// What a rack password must be: at least [`MIN_PASSWORD_CHARS`] URL-safe
/// characters (clients send it inside RACK_URL). `source` names where it
/// came from in the error.
pub fn check_password(password: &str, source: &str) -> Result<(), String> {
    if password.is_empty() {
        return Err(format!(
            "{source} is empty: a rack password of at least {MIN_PASSWORD_CHARS} characters is required"
        ));
    }
    if !password
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
    {
        return Err(format!(
            "{source} must be URL-safe (letters, digits, - _ . ~): clients send it inside RACK_URL"
        ));
    }
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(format!(
            "{source} is too short ({chars} characters): at least {MIN_PASSWORD_CHARS} are required"
        ));
    }
    Ok(())
}

/// The warning printed when the password was given as a flag.
pub const PASSWORD_FLAG_WARNING: &str = "WARNING: --password is visible to every user of this machine (ps, /proc): pass the password in SLIPWAY_PASSWORD instead";

/// True when this process's command line carries `--password`.
pub fn password_flag_given() -> bool {
    std::env::args().any(|a| a == "--password" || a.starts_with("--password="))
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

    #[test]
    fn passwords_are_long_and_url_safe() {
        assert!(check_password("abcdefghijklmnop", "--password").is_ok());
        assert!(check_password("a-b_c.d~e0123456789", "--password").is_ok());
        let empty = check_password("", "the password file").unwrap_err();
        assert!(empty.contains("the password file is empty"), "{empty}");
        let short = check_password("abcdefghijklmno", "--password").unwrap_err();
        assert!(short.contains("too short (15 characters)"), "{short}");
        let unsafe_ = check_password("abcdefghijklmnop@", "--password").unwrap_err();
        assert!(unsafe_.contains("URL-safe"), "{unsafe_}");
    }

    #[test]
    fn no_auth_is_refused_off_loopback() {
        let mut config = Config::with_peers(
            "0.0.0.0:5443".parse().unwrap(),
            vec!["r:1".into()],
            vec!["b:1".into()],
            vec!["o:1".into()],
            "data".into(),
        );
        config.insecure_no_auth = true;
        config.tls.insecure_http = true;
        let refused = config.validate().unwrap_err();
        assert!(refused.contains("loopback only"), "{refused}");
        config.listen = "127.0.0.1:5443".parse().unwrap();
        config.tls.insecure_http = false;
        assert_eq!(config.validate(), Ok(()));
        config.insecure_no_auth = false;
        let missing = config.validate().unwrap_err();
        assert!(missing.contains("password is required"), "{missing}");
    }
}
