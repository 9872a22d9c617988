//! The embedded rack in a temporary directory, shared by the `rollout`,
//! `upload` and `gateway` benchmarks: every service in-process over gRPC on
//! loopback, SQLite, the local runtime and the snapshot builder, exactly as
//! `slipway-rack` runs them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_e2e::kill_processes_under;
use slipway_rpc::Channel;

/// A rack for one benchmark run; app processes die with it.
pub(crate) struct BenchRack {
    rack: Option<slipway_rack::Rack>,
    /// `http://convox:PW@HOST:PORT`.
    pub(crate) url: String,
    /// gRPC addresses: release, build, rollout.
    pub(crate) services: [std::net::SocketAddr; 3],
    dir: tempfile::TempDir,
}

impl BenchRack {
    /// Starts a rack on a free loopback port.
    pub(crate) async fn start(max_upload_bytes: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        // App users (as root, apps run as users of their own) pass through
        // it to their working copies in `rack-apps/`.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )?;
        let config = slipway_rack::Config {
            data_dir: dir.path().join("rack"),
            listen: "127.0.0.1:0".parse()?,
            password: Some("bench-secret-0123456".to_owned().into()),
            name: "bench".into(),
            default_deadline: Duration::from_secs(120),
            max_upload_bytes,
            port_range: None,
            insecure_no_auth: false,
            quickstart: false,
            quickstart_app: PathBuf::new(),
            stop_apps: false,
            webhook_allow_private: false,
            apps: Default::default(),
        };
        let rack = slipway_rack::Rack::start(&config).await?;
        Ok(Self {
            url: rack.rack_url.clone(),
            services: rack.services,
            rack: Some(rack),
            dir,
        })
    }

    /// A scratch directory that lives as long as the rack.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A gRPC channel to service `index` (0 release, 1 build, 2 rollout),
    /// built the way the gateway builds its own (signing the rack's service
    /// token onto every call).
    pub(crate) fn channel(&self, name: &'static str, index: usize) -> anyhow::Result<Channel> {
        Ok(slipway_rpc::channel(
            name,
            &[format!("http://{}", self.services[index])],
            &slipway_rpc::ChannelOptions {
                // Long enough for a cold 50 MB build's log stream.
                request_timeout: Duration::from_secs(300),
                // The rack's services take only calls signed with its key.
                ..self
                    .rack
                    .as_ref()
                    .map(|r| r.channel_options())
                    .unwrap_or_default()
            },
        )?)
    }

    /// A client of the release service.
    pub(crate) fn release(&self) -> anyhow::Result<ReleaseServiceClient<Channel>> {
        Ok(ReleaseServiceClient::new(self.channel("release", 0)?))
    }

    /// Stops the services, then kills every process left running in the
    /// rack's directory (app processes outlive a rack by design).
    pub(crate) async fn stop(mut self) {
        if let Some(rack) = self.rack.take() {
            rack.shutdown().await;
        }
        kill_processes_under(self.dir.path());
    }
}

impl Drop for BenchRack {
    fn drop(&mut self) {
        kill_processes_under(self.dir.path());
    }
}
