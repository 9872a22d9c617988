//! The embedded rack: release, build, rollout and gateway in one process,
//! still talking gRPC to each other on loopback, on SQLite files and the
//! local runtime in one data directory. It is the same code the scale setup
//! runs as separate binaries, wired together here.

pub mod config;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Config};
use slipway_gateway::serve::ConnectionArgs;
use slipway_gateway::tls::TlsArgs;

/// A running rack.
pub struct Rack {
    /// Where the gateway listens.
    pub addr: SocketAddr,
    /// `http(s)://convox:PW@HOST:PORT`, what RACK_URL should be.
    pub rack_url: String,
    /// The self-signed certificate clients should trust
    /// (`SLIPWAY_CA_FILE`), when the rack serves one.
    pub ca_file: Option<PathBuf>,
    /// gRPC addresses of the services (release, build, rollout).
    pub services: [SocketAddr; 3],
    security: slipway_rpc::SecurityArgs,
    stop: CancellationToken,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
}

impl Rack {
    /// The web console's address: the gateway's, without the password
    /// (a browser logs in with a form, never with URL credentials).
    pub fn console_url(&self) -> String {
        let (scheme, rest) = self.rack_url.split_once("://").unwrap_or(("http", ""));
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{host}/console/")
    }

    /// Binds every listener, starts every service, and returns once the
    /// gateway answers and the services are ready.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        Self::start_with(config, &TlsArgs::default()).await
    }

    /// [`Rack::start`] with the HTTP API served as `tls` says.
    pub async fn start_with(config: &Config, tls: &TlsArgs) -> anyhow::Result<Self> {
        Self::start_serving(config, tls, &ConnectionArgs::default()).await
    }

    /// [`Rack::start_with`], the gateway's connections held to `connections`
    /// (timeouts and caps; `slipway-rack` takes them as flags).
    pub async fn start_serving(
        config: &Config,
        tls: &TlsArgs,
        connections: &ConnectionArgs,
    ) -> anyhow::Result<Self> {
        tls.validate(config.listen).map_err(anyhow::Error::msg)?;
        connections.validate().map_err(anyhow::Error::msg)?;
        let data = &config.data_dir;
        // Owner-only, created so; keys from an older version tightened.
        slipway_storage::files::create_private_dir(data)
            .with_context(|| format!("create data dir {}", data.display()))?;
        for secret in ["password", "service-token-key"] {
            match slipway_storage::files::tighten(&data.join(secret), 0o600) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("tighten {secret}"));
                }
                _ => {}
            }
        }
        let password = config.password(data)?;
        // Even on loopback, only the rack's own services may call them.
        let security = slipway_rpc::SecurityArgs {
            service_token_key: Some(load_or_create_service_key(&data.join("service-token-key"))?),
            insecure_grpc: false,
        };
        let gateway_listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind {}", config.listen))?;
        let addr = gateway_listener.local_addr()?;
        let release_listener = loopback().await?;
        let build_listener = loopback().await?;
        let rollout_listener = loopback().await?;
        let release_addr = release_listener.local_addr()?;
        let build_addr = build_listener.local_addr()?;
        let rollout_addr = rollout_listener.local_addr()?;
        // The services call each other in this process, with no socket
        // between them (see `slipway_rpc::in_process`); their listeners
        // still serve callers from outside (tests, `grpcurl`).
        let url = slipway_rpc::in_process::url;

        let mut release = slipway_release::Config::dev(data.join("release"));
        release.security = security.clone();
        release.rollout_endpoints = vec![url(rollout_addr)];
        release.default_deadline = config.default_deadline;
        release.webhooks.rack_name = config.name.clone();
        release.webhooks.webhook_allow_private = config.webhook_allow_private;

        let mut build = slipway_build::Config::dev(data.join("build"));
        build.security = security.clone();
        build.release_endpoints = vec![url(release_addr)];

        let mut rollout = slipway_rollout::Config::dev(data.join("rollout"));
        rollout.security = security.clone();
        rollout.release_endpoints = vec![url(release_addr)];
        rollout.default_deadline = config.default_deadline;
        if let Some(range) = config.port_range {
            rollout.port_range = range;
        }
        // Beside the rack's data dir, not the rollout service's (inside it).
        rollout.isolation = slipway_rollout::config::AppIsolation {
            apps_dir: Some(config.apps.apps_dir(data)),
            ..config.apps.clone()
        };

        let gateway = slipway_gateway::Config {
            password: Some(password.clone().into()),
            rack_name: config.name.clone(),
            max_upload_bytes: config.max_upload_bytes,
            insecure_no_auth: config.insecure_no_auth,
            tls: tls.clone(),
            connections: connections.clone(),
            security: security.clone(),
            ..slipway_gateway::Config::with_peers(
                addr,
                vec![url(release_addr)],
                vec![url(build_addr)],
                vec![url(rollout_addr)],
                data.join("gateway"),
            )
        };
        gateway.validate().map_err(anyhow::Error::msg)?;

        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let signal = |stop: &CancellationToken| {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        };
        tasks.spawn(named(
            "release",
            slipway_release::run(release, release_listener, signal(&stop)),
        ));
        tasks.spawn(named(
            "build",
            slipway_build::run(build, build_listener, signal(&stop)),
        ));
        tasks.spawn(named(
            "rollout",
            slipway_rollout::run(rollout, rollout_listener, signal(&stop)),
        ));
        tasks.spawn(named(
            "gateway",
            slipway_gateway::run(gateway, gateway_listener, signal(&stop)),
        ));

        let host = match addr.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
            ip => ip.to_string(),
        };
        let scheme = if tls.enabled() { "https" } else { "http" };
        // Absolute, so the printed `export SLIPWAY_CA_FILE=…` works anywhere.
        let ca_file = (tls.tls_self_signed && tls.tls_cert.is_none()).then(|| {
            std::fs::canonicalize(data)
                .unwrap_or_else(|_| data.clone())
                .join("gateway")
                .join("tls")
                .join("cert.pem")
        });
        let rack = Self {
            addr,
            rack_url: format!("{scheme}://convox:{password}@{host}:{}", addr.port()),
            ca_file,
            security,
            services: [release_addr, build_addr, rollout_addr],
            stop,
            tasks,
        };
        rack.wait_ready().await?;
        Ok(rack)
    }

    /// Waits until every service answers a call (a NotFound counts).
    async fn wait_ready(&self) -> anyhow::Result<()> {
        use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let channel = slipway_rpc::channel(
            "release",
            &[format!("http://{}", self.services[0])],
            &slipway_rpc::ChannelOptions {
                service_token: self.security.client_token("rack"),
                ..Default::default()
            },
        )?;
        let mut client = ReleaseServiceClient::new(channel);
        loop {
            match client
                .list_apps(slipway_api::release::v1::ListAppsRequest {})
                .await
            {
                Ok(_) => return Ok(()),
                Err(status) if tokio::time::Instant::now() > deadline => {
                    anyhow::bail!(
                        "the release service did not come up within 60s: {}",
                        status.message()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Channel options that sign calls to the rack's gRPC services (for
    /// callers outside the rack: benchmarks, tests).
    pub fn channel_options(&self) -> slipway_rpc::ChannelOptions {
        slipway_rpc::ChannelOptions {
            service_token: self.security.client_token("rack"),
            ..Default::default()
        }
    }

    /// Runs until `shutdown` completes or a service stops, then stops all.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let outcome = self.run_until(shutdown).await;
        self.shutdown().await;
        outcome
    }

    /// Runs until `shutdown` completes or a service stops (an error), and
    /// leaves the services running: the caller stops them with
    /// [`Rack::shutdown`].
    pub async fn run_until(&mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            () = shutdown => Ok(()),
            Some(done) = self.tasks.join_next() => match done {
                Ok((name, Ok(()))) => Err(anyhow::anyhow!("the {name} service stopped unexpectedly")),
                Ok((name, Err(e))) => Err(e.context(format!("the {name} service failed"))),
                Err(e) => Err(anyhow::anyhow!("a service task panicked: {e}")),
            },
        }
    }

    /// The operating-system processes the local runtime runs for the apps
    /// (asked of the running services).
    pub async fn app_processes(&self) -> anyhow::Result<Vec<AppProcess>> {
        use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
        use slipway_api::rollout::v1::rollout_service_client::RolloutServiceClient;
        let channel = |name: &'static str, addr: SocketAddr| {
            slipway_rpc::channel(name, &[format!("http://{addr}")], &self.channel_options())
        };
        let apps = ReleaseServiceClient::new(channel("release", self.services[0])?)
            .list_apps(slipway_api::release::v1::ListAppsRequest {})
            .await
            .context("list apps")?
            .into_inner()
            .apps;
        let mut rollout = RolloutServiceClient::new(channel("rollout", self.services[2])?);
        let mut processes = Vec::new();
        for app in apps {
            let listed = rollout
                .list_processes(slipway_api::rollout::v1::ListProcessesRequest {
                    app: app.name.clone(),
                })
                .await
                .with_context(|| format!("list the processes of {}", app.name))?
                .into_inner()
                .processes;
            processes.extend(
                listed
                    .into_iter()
                    .filter(|p| p.pid != 0)
                    .map(|p| AppProcess {
                        app: app.name.clone(),
                        id: p.id,
                        pid: p.pid,
                    }),
            );
        }
        Ok(processes)
    }

    /// Stops every service and waits for them.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while let Some(done) = self.tasks.join_next().await {
            if let Ok((name, Err(e))) = done {
                tracing::warn!("the {name} service failed while stopping: {e:#}");
            }
        }
    }
}

/// An app's process as the operating system knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppProcess {
    /// The app.
    pub app: String,
    /// The runtime's name for it, e.g. `web-4f2a9c1d`.
    pub id: String,
    /// Its process id, which leads its own process group.
    pub pid: u32,
}

/// Stops app processes the way the local runtime does: SIGTERM to each
/// one's process group, then, for those still there after `grace`, SIGKILL.
/// Returns once every one is gone (or, after SIGKILL, at most a second
/// later); returns the ids of any that are not.
pub async fn stop_processes(processes: &[AppProcess], grace: Duration) -> Vec<String> {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let signal = |p: &AppProcess, signal: Signal| {
        let pid = Pid::from_raw(i32::try_from(p.pid).unwrap_or(i32::MAX));
        if killpg(pid, signal).is_err() {
            let _ = kill(pid, signal);
        }
    };
    let living = |all: &[AppProcess]| -> Vec<AppProcess> {
        all.iter().filter(|p| alive(p.pid)).cloned().collect()
    };
    let wait_gone = |all: Vec<AppProcess>, limit: Duration| async move {
        let deadline = tokio::time::Instant::now() + limit;
        let mut left = living(&all);
        while !left.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = living(&left);
        }
        left
    };
    for p in processes {
        signal(p, Signal::SIGTERM);
    }
    let left = wait_gone(processes.to_vec(), grace).await;
    for p in &left {
        signal(p, Signal::SIGKILL);
    }
    wait_gone(left, Duration::from_secs(1))
        .await
        .into_iter()
        .map(|p| p.id)
        .collect()
}

/// Whether process `pid` still runs (a zombie, exited but not yet reaped,
/// does not).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

async fn loopback() -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind("127.0.0.1:0").await?)
}

async fn named(
    name: &'static str,
    task: impl Future<Output = anyhow::Result<()>>,
) -> (&'static str, anyhow::Result<()>) {
    (name, task.await)
}

/// The key the rack's services sign their calls to each other with (see
/// `slipway_rpc::auth`): read from `path`, or generated there (owner-only).
/// Clients of the rack's gRPC ports (the bench, tests) read it with
/// [`Rack::channel_options`].
pub fn load_or_create_service_key(path: &Path) -> anyhow::Result<slipway_domain::Secret> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= slipway_rpc::auth::MIN_KEY_BYTES => {
            Ok(text.trim().to_owned().into())
        }
        Ok(_) => anyhow::bail!(
            "{} holds a service token key shorter than {} bytes; remove it to generate a new one",
            path.display(),
            slipway_rpc::auth::MIN_KEY_BYTES
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(create_random_secret(
            path,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            48,
        )?
        .into()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Reads the rack password from `path`, or writes a fresh random one there
/// (created owner-only). A file holding an empty, short or unsafe password
/// is a [`config::ConfigError`]: the rack never starts without one.
pub fn load_or_create_password(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let password = text.trim().to_owned();
            slipway_gateway::config::check_password(
                &password,
                &format!("the password file {}", path.display()),
            )
            .map_err(|e| {
                config::ConfigError(format!(
                    "{e}; put a password in it or remove it to have one generated"
                ))
            })?;
            Ok(password)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_random_secret(path, b"abcdefghijklmnopqrstuvwxyz0123456789", 24)
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Writes `len` random characters of `alphabet` to a new file at `path`,
/// created owner-only (never over an existing file), and returns them.
fn create_random_secret(path: &Path, alphabet: &[u8], len: usize) -> anyhow::Result<String> {
    use std::io::Write as _;
    let secret: String = (0..len)
        .map(|_| alphabet[rand::random_range(0..alphabet.len())] as char)
        .collect();
    slipway_storage::files::private_file_options()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut f| f.write_all(secret.as_bytes()))
        .with_context(|| format!("write {}", path.display()))?;
    Ok(secret)
}
