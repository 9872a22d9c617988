//! Configuration of the build service: flags, each also readable from a
//! `SLIPWAY_*` variable, validated before any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use slipway_domain::Secret;

/// Which builder turns an unpacked source into artifacts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BuilderKind {
    /// The unpacked source becomes an immutable, content-addressed directory
    /// (the embedded default, for the local runtime).
    Snapshot,
    /// An OCI image per built service, made with buildah and pushed to
    /// `--registry`.
    Oci,
}

/// Caps on what a source tarball may unpack to; every one is a refusal with
/// a clear message, never a partial build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceLimits {
    /// Largest compressed tarball accepted (upload and build).
    pub max_compressed_bytes: u64,
    /// Largest total size of the unpacked files.
    pub max_unpacked_bytes: u64,
    /// Most entries (files, directories, links) in one tarball.
    pub max_entries: u64,
}

impl Default for SourceLimits {
    fn default() -> Self {
        Self {
            max_compressed_bytes: 1 << 30,
            max_unpacked_bytes: 4 << 30,
            max_entries: 200_000,
        }
    }
}

/// The build service's settings.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "slipway-build",
    version,
    about = "Slipway build service: sources, manifests, builders and build logs"
)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "127.0.0.1:7103")]
    pub listen: SocketAddr,

    /// Service tokens: who may call this service (see `slipway_rpc::auth`).
    #[command(flatten)]
    pub security: slipway_rpc::SecurityArgs,

    /// Where the records live: `--database-url`, `--data-dir` (see
    /// `slipway_storage::StoreArgs`).
    #[command(flatten)]
    pub store: slipway_storage::StoreArgs,

    /// Object store for sources and build logs: `file:///abs/dir`, or
    /// `s3://bucket[/prefix]` (credentials, region and endpoint from the
    /// standard `AWS_*` variables, or from the URL's query, which wins:
    /// `?endpoint=http://127.0.0.1:9000&region=us-east-1&allow_http=true`).
    /// Defaults to `<data-dir>/objects`.
    #[arg(long, env = "SLIPWAY_OBJECT_STORE")]
    pub object_store: Option<Secret>,

    /// gRPC endpoints of the release service replicas (comma-separated).
    #[arg(
        long = "release-endpoint",
        env = "SLIPWAY_RELEASE_ENDPOINTS",
        value_delimiter = ','
    )]
    pub release_endpoints: Vec<String>,

    /// The builder: `snapshot` (local runtime) or `oci` (images for Kubernetes).
    #[arg(long, env = "SLIPWAY_BUILDER", value_enum, default_value = "snapshot")]
    pub builder: BuilderKind,

    /// Registry the oci builder pushes to, as `host:port[/path]`.
    #[arg(long, env = "SLIPWAY_REGISTRY")]
    pub registry: Option<String>,

    /// Push over plain HTTP / without TLS verification (always on for
    /// loopback registries).
    #[arg(long, env = "SLIPWAY_REGISTRY_INSECURE")]
    pub registry_insecure: bool,

    /// The buildah binary the oci builder runs.
    #[arg(long, env = "SLIPWAY_BUILDAH", default_value = "buildah")]
    pub buildah: PathBuf,

    /// Largest compressed source accepted, in bytes.
    #[arg(long, env = "SLIPWAY_MAX_SOURCE_BYTES", default_value_t = SourceLimits::default().max_compressed_bytes)]
    pub max_source_bytes: u64,

    /// Largest total unpacked size of a source, in bytes.
    #[arg(long, env = "SLIPWAY_MAX_UNPACKED_BYTES", default_value_t = SourceLimits::default().max_unpacked_bytes)]
    pub max_unpacked_bytes: u64,

    /// Most entries a source tarball may hold.
    #[arg(long, env = "SLIPWAY_MAX_SOURCE_ENTRIES", default_value_t = SourceLimits::default().max_entries)]
    pub max_source_entries: u64,

    /// Builds run at once by this replica; more wait in `created`.
    #[arg(long, env = "SLIPWAY_MAX_CONCURRENT_BUILDS", default_value_t = 4)]
    pub max_concurrent_builds: usize,

    /// A build still running after this long fails (the CLI gives up after 60 minutes).
    #[arg(long, env = "SLIPWAY_BUILD_TIMEOUT", default_value = "55m", value_parser = humantime::parse_duration)]
    pub build_timeout: Duration,

    /// Upper bound of one unary gRPC call (a source upload has none: see
    /// --upload-idle-timeout).
    #[arg(long, env = "SLIPWAY_REQUEST_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// A source upload that sends no message for this long fails and
    /// stores nothing (the gateway sends one at least every 10 s while its
    /// client is sending).
    #[arg(long, env = "SLIPWAY_UPLOAD_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub upload_idle_timeout: Duration,

    /// How long in-flight calls may run after SIGTERM.
    #[arg(long, env = "SLIPWAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Uploaded sources older than this are deleted from the object store
    /// (build logs, releases and artifacts are kept); `0s` keeps them all.
    /// At least an hour, so no upload is swept before its build starts.
    #[arg(long, env = "SLIPWAY_SOURCE_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub source_retention: Duration,

    /// Redis for the event bus (`redis://[:PASSWORD@]HOST:PORT[/DB]` or
    /// `redis+unix:///PATH`): running builds' logs are published to Redis
    /// Streams, so every replica streams every build's log live. Without it
    /// a replica streams live only the builds it runs (others once they
    /// end). Redis being down degrades live logs, never builds.
    #[arg(long, env = "SLIPWAY_REDIS_URL")]
    pub redis_url: Option<Secret>,

    /// First part of the event bus's Redis keys (`<prefix>:v1:app:<build>`,
    /// one stream per build); every replica of one rack shares it, racks
    /// sharing one Redis use different ones.
    #[arg(long, env = "SLIPWAY_REDIS_PREFIX", default_value = "build")]
    pub redis_prefix: String,
}

/// Entries kept per build log stream: chunks are coalesced (at most about
/// 20 a second) and a log is at most 32 MiB, so this bounds nothing that
/// the log size does not already, while keeping a whole build's chunks.
const LOG_STREAM_ENTRIES: usize = 100_000;

/// The shortest `--source-retention` accepted (other than 0, "forever").
const MIN_SOURCE_RETENTION: Duration = Duration::from_secs(3600);

impl Config {
    /// A development configuration rooted at `data_dir` (tests build on it).
    pub fn dev(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            security: Default::default(),
            store: slipway_storage::StoreArgs::at(data_dir),
            object_store: None,
            release_endpoints: Vec::new(),
            builder: BuilderKind::Snapshot,
            registry: None,
            registry_insecure: false,
            buildah: PathBuf::from("buildah"),
            max_source_bytes: SourceLimits::default().max_compressed_bytes,
            max_unpacked_bytes: SourceLimits::default().max_unpacked_bytes,
            max_source_entries: SourceLimits::default().max_entries,
            max_concurrent_builds: 4,
            build_timeout: Duration::from_secs(55 * 60),
            request_timeout: Duration::from_secs(300),
            upload_idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            source_retention: Duration::from_secs(7 * 86_400),
            redis_url: None,
            redis_prefix: "build".to_owned(),
        }
    }

    /// Checks everything that can be checked without I/O.
    pub fn validate(&self) -> Result<(), String> {
        self.security.validate(Some(self.listen))?;
        if self.release_endpoints.is_empty() {
            return Err("--release-endpoint (SLIPWAY_RELEASE_ENDPOINTS) is required: a finished build creates a release".into());
        }
        if self.builder == BuilderKind::Oci && self.registry.as_deref().is_none_or(str::is_empty) {
            return Err("--registry (SLIPWAY_REGISTRY) is required with --builder oci".into());
        }
        if self.upload_idle_timeout.is_zero() {
            return Err("--upload-idle-timeout must be positive".into());
        }
        if self.max_source_bytes == 0
            || self.max_unpacked_bytes == 0
            || self.max_source_entries == 0
        {
            return Err("source limits must be greater than zero".into());
        }
        if self.max_concurrent_builds == 0 {
            return Err("--max-concurrent-builds must be at least 1".into());
        }
        if !self.source_retention.is_zero() && self.source_retention < MIN_SOURCE_RETENTION {
            return Err(format!(
                "--source-retention (SLIPWAY_SOURCE_RETENTION) is {}: use at least 1h, or 0s to keep every source",
                humantime::format_duration(self.source_retention)
            ));
        }
        self.store.validate()?;
        if let Some(url) = &self.object_store {
            crate::objects::ObjectLocation::parse(url.expose()).map_err(|e| e.to_string())?;
        }
        if let Some(redis) = self.redis() {
            slipway_events::RedisBus::new(redis)
                .map_err(|e| format!("--redis-url/--redis-prefix: {e}"))?;
        }
        Ok(())
    }

    /// The Redis event bus settings, when `--redis-url` is given.
    pub fn redis(&self) -> Option<slipway_events::RedisConfig> {
        let url = self.redis_url.as_ref()?;
        let mut redis = slipway_events::RedisConfig::new(url.expose(), self.redis_prefix.clone());
        redis.max_len = LOG_STREAM_ENTRIES;
        Some(redis)
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.store.url("build.db")
    }

    /// The source limits in effect.
    pub fn limits(&self) -> SourceLimits {
        SourceLimits {
            max_compressed_bytes: self.max_source_bytes,
            max_unpacked_bytes: self.max_unpacked_bytes,
            max_entries: self.max_source_entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn release_endpoint_and_registry_are_required() {
        let config = Config::try_parse_from(["slipway-build"]).unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("--release-endpoint")
        );
        let config = Config::try_parse_from([
            "slipway-build",
            "--release-endpoint",
            "127.0.0.1:1",
            "--builder",
            "oci",
        ])
        .unwrap();
        assert!(config.validate().unwrap_err().contains("--registry"));
        let config =
            Config::try_parse_from(["slipway-build", "--release-endpoint", "127.0.0.1:1"]).unwrap();
        config.validate().unwrap();
        assert!(config.database_url().ends_with("build.db"));
    }

    #[test]
    fn source_retention_is_a_week_by_default_and_never_under_an_hour() {
        let base = ["slipway-build", "--release-endpoint", "127.0.0.1:1"];
        let config = Config::try_parse_from(base).unwrap();
        assert_eq!(config.source_retention, Duration::from_secs(7 * 86_400));
        for ok in ["0s", "1h", "30d"] {
            let config =
                Config::try_parse_from(base.into_iter().chain(["--source-retention", ok])).unwrap();
            config.validate().unwrap();
        }
        let config =
            Config::try_parse_from(base.into_iter().chain(["--source-retention", "10m"])).unwrap();
        assert_eq!(
            config.validate().unwrap_err(),
            "--source-retention (SLIPWAY_SOURCE_RETENTION) is 10m: use at least 1h, or 0s to keep every source"
        );
        assert!(
            Config::try_parse_from(base.into_iter().chain(["--source-retention", "soon"])).is_err()
        );
    }

    #[test]
    fn redis_settings_are_checked() {
        let base = ["slipway-build", "--release-endpoint", "127.0.0.1:1"];
        let config = Config::try_parse_from(base).unwrap();
        assert!(config.redis().is_none(), "no bus by default");
        let config =
            Config::try_parse_from(base.into_iter().chain(["--redis-url", "http://redis"]))
                .unwrap();
        assert!(config.validate().unwrap_err().contains("--redis-url"));
        let config = Config::try_parse_from(base.into_iter().chain([
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--redis-prefix",
            "",
        ]))
        .unwrap();
        assert!(config.validate().unwrap_err().contains("--redis-prefix"));
        let config = Config::try_parse_from(
            base.into_iter()
                .chain(["--redis-url", "redis://:hunter2@redis:6379/0"]),
        )
        .unwrap();
        config.validate().unwrap();
        let redis = config.redis().unwrap();
        assert_eq!(redis.prefix, "build");
        assert_eq!(redis.max_len, LOG_STREAM_ENTRIES);
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = Config::try_parse_from([
            "slipway-build",
            "--database-url",
            "postgres://u:pw@h/db",
            "--object-store",
            "s3://bucket/prefix?secret=xyz",
        ])
        .unwrap();
        let text = format!("{config:?}");
        assert!(!text.contains("pw@") && !text.contains("xyz"), "{text}");
    }
}
