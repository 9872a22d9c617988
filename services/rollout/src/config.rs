//! Configuration of the rollout service: flags, each also readable from a
//! `SLIPWAY_*` variable, validated before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use slipway_domain::Secret;

use crate::runtime::local::{UidRange, default_apps_dir};
use slipway_domain::promotion::DEADLINE_RANGE;

/// The rollout service's settings.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "slipway-rollout",
    version,
    about = "Slipway rollout service: rolling deployments, health, deadlines, automatic rollback"
)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "127.0.0.1:7102")]
    pub listen: SocketAddr,

    /// Service tokens: who may call this service (see `slipway_rpc::auth`).
    #[command(flatten)]
    pub security: slipway_rpc::SecurityArgs,

    /// Where the records live: `--database-url`, `--data-dir` (see
    /// `slipway_storage::StoreArgs`).
    #[command(flatten)]
    pub store: slipway_storage::StoreArgs,

    /// gRPC endpoints of the release service replicas (comma-separated),
    /// told the outcome of every rollout. Without one, outcomes are only
    /// recorded here.
    #[arg(
        long = "release-endpoint",
        env = "SLIPWAY_RELEASE_ENDPOINTS",
        value_delimiter = ','
    )]
    pub release_endpoints: Vec<String>,

    /// Rollout deadline when a StartRollout gives none (30s to 6h).
    #[arg(long, env = "SLIPWAY_DEFAULT_DEADLINE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub default_deadline: Duration,

    /// How long a replica owns a rollout without renewing; after a crash,
    /// another replica (or the restarted one) takes over after this long.
    #[arg(long, env = "SLIPWAY_LEASE_TTL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,

    /// Stable service ports of the local runtime: `LOW-HIGH`, or `0` to let
    /// the OS pick (each service keeps its port across releases either way).
    #[arg(long, env = "SLIPWAY_PORT_RANGE", default_value = "20000-29999", value_parser = parse_port_range)]
    pub port_range: PortRange,

    /// Exits of a new release's process that fail the rollout at once.
    #[arg(long, env = "SLIPWAY_RESTART_LIMIT", default_value_t = 3)]
    pub restart_limit: u32,

    /// How the local runtime keeps apps apart.
    #[command(flatten)]
    pub isolation: AppIsolation,

    /// This replica's name in rollout leases; random when not given.
    #[arg(long, env = "SLIPWAY_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Upper bound of one gRPC call.
    #[arg(long, env = "SLIPWAY_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// How long in-flight calls may run after SIGTERM.
    #[arg(long, env = "SLIPWAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Base64-encoded 32-byte AES-256-GCM key sealing stored specs (they
    /// carry the release env). Without it, a key is generated into the
    /// data directory (`spec.key`).
    #[arg(long, env = "SLIPWAY_SPEC_KEY")]
    pub spec_key: Option<Secret>,

    /// Where apps run: `local` processes (the embedded default) or
    /// `kubernetes` (a namespace per app, a Deployment per service).
    #[arg(long, env = "SLIPWAY_RUNTIME", value_enum, default_value_t = RuntimeKind::Local)]
    pub runtime: RuntimeKind,

    /// The rack's name: Kubernetes app namespaces are `<rack>-<app>` and
    /// carry it as the `rack` label.
    #[arg(long, env = "SLIPWAY_RACK", default_value = "slipway")]
    pub rack: String,

    /// Kubernetes: the kubeconfig file. Without it: `KUBECONFIG`,
    /// `~/.kube/config`, then the in-cluster service account.
    #[arg(long, env = "SLIPWAY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubernetes: the kubeconfig context; its current one otherwise.
    #[arg(long, env = "SLIPWAY_KUBE_CONTEXT")]
    pub kube_context: Option<String>,

    /// Kubernetes: use the pod's service account (running in the cluster).
    #[arg(long, env = "SLIPWAY_KUBE_IN_CLUSTER")]
    pub kube_in_cluster: bool,

    /// Redis for the event bus (`redis://[:PASSWORD@]HOST:PORT[/DB]` or
    /// `redis+unix:///PATH`): events go to Redis Streams, so every replica,
    /// and every gateway in front of them, streams every app and rollout.
    /// Without it the bus is in-process (one replica). Redis being down
    /// degrades events, never rollouts: their history is in the database.
    #[arg(long, env = "SLIPWAY_REDIS_URL")]
    pub redis_url: Option<Secret>,

    /// First part of the event bus's Redis keys
    /// (`<prefix>:v1:app:<app>`, `<prefix>:v1:rollout:<id>`); give racks
    /// sharing one Redis different prefixes.
    #[arg(long, env = "SLIPWAY_REDIS_PREFIX", default_value = "rollout")]
    pub redis_prefix: String,

    /// Kubernetes: a Secret of type `kubernetes.io/dockerconfigjson`,
    /// present in every app namespace, that pods pull their images with
    /// (a private registry, such as the oci builder's `--registry`).
    #[arg(long, env = "SLIPWAY_KUBE_IMAGE_PULL_SECRET")]
    pub kube_image_pull_secret: Option<String>,

    /// Kubernetes: the uid and gid app pods run as (non-root, every
    /// capability dropped); 0 runs them as their image says, root
    /// included, for images that must start as root.
    #[arg(long, env = "SLIPWAY_KUBE_POD_USER", default_value_t = crate::runtime::kubernetes::DEFAULT_POD_USER)]
    pub kube_pod_user: u32,
}

/// How the local runtime keeps apps away from the rack and each other
/// (`runtime::local::isolation`).
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct AppIsolation {
    /// Local runtime: where each release's working copy of its artifact
    /// goes (`<apps-dir>/<app>/<release>/`). Must be outside the data
    /// directory; as root, every directory above it must be searchable by
    /// other users. Default: `<data-dir>-apps`, beside the data directory.
    #[arg(long, env = "SLIPWAY_APPS_DIR")]
    pub apps_dir: Option<PathBuf>,

    /// Local runtime, running as root: the uids (and gids of the same
    /// numbers) app processes run as, one per app, `LOW-HIGH`.
    #[arg(long, env = "SLIPWAY_APP_UID_RANGE", default_value = "1900000000-1900065535", value_parser = UidRange::parse)]
    pub app_uid_range: UidRange,
}

impl Default for AppIsolation {
    fn default() -> Self {
        Self {
            apps_dir: None,
            app_uid_range: UidRange::DEFAULT,
        }
    }
}

impl AppIsolation {
    /// The apps directory in effect for `data_dir`.
    pub fn apps_dir(&self, data_dir: &Path) -> PathBuf {
        match &self.apps_dir {
            Some(dir) => std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
            None => default_apps_dir(data_dir),
        }
    }

    /// Refuses an apps directory inside (or being) the data directory: app
    /// users could not reach it, and must not.
    pub fn validate(&self, data_dir: &Path) -> Result<(), String> {
        let normal = |p: &Path| -> PathBuf {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.to_owned())
                .components()
                .collect()
        };
        let (apps, data) = (normal(&self.apps_dir(data_dir)), normal(data_dir));
        if apps.starts_with(&data) || data.starts_with(&apps) {
            return Err(format!(
                "--apps-dir {} must be outside the data directory {} (and not contain it)",
                apps.display(),
                data.display()
            ));
        }
        Ok(())
    }
}

/// The runtime apps run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Real processes on this machine.
    Local,
    /// A Kubernetes cluster.
    Kubernetes,
}

/// Where stable ports come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange(pub Option<(u16, u16)>);

/// Parses `LOW-HIGH` (or `0` for OS-assigned ports).
pub fn parse_port_range(text: &str) -> Result<PortRange, String> {
    if text.trim() == "0" {
        return Ok(PortRange(None));
    }
    let (lo, hi) = text
        .split_once('-')
        .ok_or_else(|| format!("expected LOW-HIGH or 0, got {text:?}"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .map_err(|_| format!("invalid port {lo:?}"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .map_err(|_| format!("invalid port {hi:?}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("expected 1 <= LOW <= HIGH, got {lo}-{hi}"));
    }
    Ok(PortRange(Some((lo, hi))))
}

impl Config {
    /// A configuration for tests and the embedded rack, rooted at `data_dir`:
    /// OS-assigned ports, a short lease.
    pub fn dev(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            security: Default::default(),
            store: slipway_storage::StoreArgs::at(data_dir),
            release_endpoints: Vec::new(),
            default_deadline: Duration::from_secs(600),
            lease_ttl: Duration::from_secs(3),
            port_range: PortRange(None),
            restart_limit: 3,
            isolation: AppIsolation::default(),
            replica_id: None,
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            spec_key: None,
            runtime: RuntimeKind::Local,
            rack: "slipway".to_owned(),
            kubeconfig: None,
            kube_context: None,
            kube_in_cluster: false,
            redis_url: None,
            redis_prefix: "rollout".to_owned(),
            kube_image_pull_secret: None,
            kube_pod_user: crate::runtime::kubernetes::DEFAULT_POD_USER,
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
        if self.lease_ttl < Duration::from_millis(300) {
            return Err("--lease-ttl must be at least 300ms".into());
        }
        if self.restart_limit == 0 {
            return Err("--restart-limit must be at least 1".into());
        }
        self.isolation.validate(&self.store.data_dir)?;
        // `<rack>-<app>` must be a DNS label (63) for apps of up to 30.
        let rack_ok = self.rack.len() <= 32
            && self.rack.starts_with(|c: char| c.is_ascii_lowercase())
            && !self.rack.ends_with('-')
            && self
                .rack
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !rack_ok {
            return Err(format!(
                "--rack must be [a-z][a-z0-9-]* of at most 32 characters, got {:?}",
                self.rack
            ));
        }
        if self.kube_in_cluster && self.kubeconfig.is_some() {
            return Err("--kube-in-cluster and --kubeconfig exclude each other".into());
        }
        self.store.validate()?;
        if let Some(redis) = self.redis() {
            slipway_events::RedisBus::new(redis)
                .map_err(|e| format!("--redis-url/--redis-prefix: {e}"))?;
        }
        Ok(())
    }

    /// The Redis event bus settings, when `--redis-url` is given.
    pub fn redis(&self) -> Option<slipway_events::RedisConfig> {
        let url = self.redis_url.as_ref()?;
        Some(slipway_events::RedisConfig::new(
            url.expose(),
            self.redis_prefix.clone(),
        ))
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.store.url("rollout.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn defaults_are_valid_and_bad_values_are_refused() {
        let config = Config::try_parse_from(["slipway-rollout"]).unwrap();
        config.validate().unwrap();
        assert_eq!(config.port_range, PortRange(Some((20000, 29999))));
        assert!(config.database_url().ends_with("rollout.db"));
        let config =
            Config::try_parse_from(["slipway-rollout", "--default-deadline", "10s"]).unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("--default-deadline")
        );
        assert!(Config::try_parse_from(["slipway-rollout", "--port-range", "9-3"]).is_err());
        let config = Config::try_parse_from(["slipway-rollout", "--port-range", "0"]).unwrap();
        assert_eq!(config.port_range, PortRange(None));
        let config =
            Config::try_parse_from(["slipway-rollout", "--release-endpoint", "a:1,b:2"]).unwrap();
        assert_eq!(config.release_endpoints, ["a:1", "b:2"]);
        let config = Config::try_parse_from([
            "slipway-rollout",
            "--runtime",
            "kubernetes",
            "--rack",
            "prod",
        ])
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.runtime, RuntimeKind::Kubernetes);
        let config = Config::try_parse_from(["slipway-rollout", "--rack", "Prod_1"]).unwrap();
        assert!(config.validate().unwrap_err().contains("--rack"));
        assert!(Config::try_parse_from(["slipway-rollout", "--runtime", "nomad"]).is_err());
    }

    #[test]
    fn app_isolation_settings_are_checked() {
        let config = Config::try_parse_from(["slipway-rollout", "--data-dir", "/srv/d"]).unwrap();
        assert_eq!(config.isolation, AppIsolation::default());
        assert_eq!(
            config.isolation.apps_dir(&config.store.data_dir),
            Path::new("/srv/d-apps")
        );
        let config = Config::try_parse_from([
            "slipway-rollout",
            "--data-dir",
            "/srv/d",
            "--apps-dir",
            "/srv/d/apps",
        ])
        .unwrap();
        assert!(config.validate().unwrap_err().contains("--apps-dir"));
        let config = Config::try_parse_from([
            "slipway-rollout",
            "--apps-dir",
            "/var/lib/apps",
            "--app-uid-range",
            "200000-265535",
        ])
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.isolation.app_uid_range.low, 200_000);
        assert!(Config::try_parse_from(["slipway-rollout", "--app-uid-range", "0-100"]).is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config =
            Config::try_parse_from(["slipway-rollout", "--database-url", "postgres://u:pw@h/db"])
                .unwrap();
        assert!(!format!("{config:?}").contains("pw@"));
        let config = Config::try_parse_from([
            "slipway-rollout",
            "--redis-url",
            "redis://:hunter2@redis:6379/0",
        ])
        .unwrap();
        config.validate().unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn redis_settings_are_checked() {
        let config = Config::try_parse_from(["slipway-rollout"]).unwrap();
        assert!(config.redis().is_none(), "in-process bus by default");
        let config =
            Config::try_parse_from(["slipway-rollout", "--redis-url", "http://redis"]).unwrap();
        assert!(config.validate().unwrap_err().contains("--redis-url"));
        let config = Config::try_parse_from([
            "slipway-rollout",
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--redis-prefix",
            "a:b",
        ])
        .unwrap();
        assert!(config.validate().unwrap_err().contains("--redis-prefix"));
        let config = Config::try_parse_from([
            "slipway-rollout",
            "--redis-url",
            "redis+unix:///run/redis.sock",
            "--redis-prefix",
            "prod",
        ])
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.redis().unwrap().prefix, "prod");
    }
}
