//! Test harness: the real build service in-process on 127.0.0.1:0 against a
//! real database (SQLite or PostgreSQL), a fake release service that records
//! CreateRelease calls, tarball makers (including hostile ones), and a
//! builder that runs a real shell process, for log and cancel tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use slipway_api::build::v1 as pb;
use slipway_api::build::v1::build_service_client::BuildServiceClient;
use slipway_api::release::v1 as rpb;
use slipway_api::release::v1::audit_service_server::{AuditService, AuditServiceServer};
use slipway_api::release::v1::release_service_server::{ReleaseService, ReleaseServiceServer};
use slipway_build::Config;
use slipway_build::builder::{Artifacts, BuildError, BuildJob, Builder, run_logged};
use slipway_rpc::Channel;
use slipway_storage::testing::TestDb;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

pub use slipway_storage::testing::Backend;

/// Silences logs unless TEST_LOG=1.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_test_writer()
            .try_init();
    }
}

/// The fake release service: records every CreateRelease and answers with a
/// fresh release id, and records every RecordAudit the audit relay makes
/// (with the actor and source of its metadata).
#[derive(Clone, Default)]
pub struct FakeReleases {
    pub calls: Arc<Mutex<Vec<rpb::CreateReleaseRequest>>>,
    pub audits: Arc<Mutex<Vec<(slipway_rpc::actor::Actor, rpb::RecordAuditRequest)>>>,
}

impl FakeReleases {
    pub fn calls(&self) -> Vec<rpb::CreateReleaseRequest> {
        self.calls.lock().unwrap().clone()
    }

    /// The audit records relayed so far.
    pub fn audits(&self) -> Vec<(slipway_rpc::actor::Actor, rpb::RecordAuditRequest)> {
        self.audits.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl AuditService for FakeReleases {
    async fn record_audit(
        &self,
        request: Request<rpb::RecordAuditRequest>,
    ) -> Result<Response<rpb::RecordAuditResponse>, Status> {
        let actor = slipway_rpc::actor::actor_of(&request);
        self.audits
            .lock()
            .unwrap()
            .push((actor, request.into_inner()));
        Ok(Response::new(rpb::RecordAuditResponse::default()))
    }

    async fn list_audit(
        &self,
        _: Request<rpb::ListAuditRequest>,
    ) -> Result<Response<rpb::ListAuditResponse>, Status> {
        Err(Status::unimplemented("list_audit"))
    }
}

macro_rules! unimplemented_rpcs {
    ($($name:ident($req:ident) -> $resp:ident;)*) => {
        $(
            // Spelled as `async_trait` expands methods, since it cannot see
            // into this macro.
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                _: Request<rpb::$req>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<rpb::$resp>, Status>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async { Err(Status::unimplemented(stringify!($name))) })
            }
        )*
    };
}

#[tonic::async_trait]
impl ReleaseService for FakeReleases {
    async fn create_release(
        &self,
        request: Request<rpb::CreateReleaseRequest>,
    ) -> Result<Response<rpb::CreateReleaseResponse>, Status> {
        let req = request.into_inner();
        self.calls.lock().unwrap().push(req.clone());
        let id = slipway_domain::ReleaseId::generate().into_string();
        Ok(Response::new(rpb::CreateReleaseResponse {
            release: Some(rpb::Release {
                id,
                app: req.app,
                build: req.build.unwrap_or_default(),
                manifest: req.manifest.unwrap_or_default(),
                description: req.description.unwrap_or_default(),
                artifacts: req.artifacts,
                ..Default::default()
            }),
        }))
    }

    unimplemented_rpcs! {
        create_app(CreateAppRequest) -> CreateAppResponse;
        get_app(GetAppRequest) -> GetAppResponse;
        list_apps(ListAppsRequest) -> ListAppsResponse;
        delete_app(DeleteAppRequest) -> DeleteAppResponse;
        change_env(ChangeEnvRequest) -> ChangeEnvResponse;
        get_release(GetReleaseRequest) -> GetReleaseResponse;
        list_releases(ListReleasesRequest) -> ListReleasesResponse;
        promote_release(PromoteReleaseRequest) -> PromoteReleaseResponse;
        rollback_release(RollbackReleaseRequest) -> RollbackReleaseResponse;
        cancel_promotion(CancelPromotionRequest) -> CancelPromotionResponse;
        get_promotion(GetPromotionRequest) -> GetPromotionResponse;
        list_promotions(ListPromotionsRequest) -> ListPromotionsResponse;
        complete_promotion(CompletePromotionRequest) -> CompletePromotionResponse;
        list_audit_events(ListAuditEventsRequest) -> ListAuditEventsResponse;
    }
}

/// A builder that runs `sh -c <script>` as a real process (its output goes
/// to the build log) and then reports one artifact per service.
#[derive(Debug)]
pub struct ScriptBuilder {
    pub script: String,
}

#[async_trait::async_trait]
impl Builder for ScriptBuilder {
    fn name(&self) -> &'static str {
        "script"
    }

    async fn build(&self, job: BuildJob<'_>) -> Result<Artifacts, BuildError> {
        let mut command = tokio::process::Command::new("sh");
        command.arg("-c").arg(&self.script);
        run_logged(command, "script", job.log, job.cancel).await?;
        Ok(job
            .manifest
            .services
            .keys()
            .map(|s| (s.clone(), format!("script://{s}")))
            .collect())
    }
}

/// A running build service with its fake release service.
pub struct TestApp {
    pub client: BuildServiceClient<Channel>,
    /// Where the service listens.
    pub addr: std::net::SocketAddr,
    pub releases: FakeReleases,
    pub data_dir: PathBuf,
    _dir: tempfile::TempDir,
    /// The build service's database.
    pub db: TestDb,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts the service with the configured (snapshot) builder.
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, None, |_| {}).await
    }

    /// Starts the service with an optional builder of the test's own and
    /// config tweaks.
    pub async fn spawn_with(
        backend: Backend,
        builder: Option<Arc<dyn Builder>>,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        init_logs();
        let db = backend.db().await;
        let releases = FakeReleases::default();
        let release_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let release_addr = release_listener.local_addr().unwrap();
        {
            let releases = releases.clone();
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(ReleaseServiceServer::new(releases.clone()))
                    .add_service(AuditServiceServer::new(releases))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                        release_listener,
                    ))
                    .await
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut config = Config::dev(data_dir.clone());
        config.store.database_url = Some(slipway_domain::Secret::new(db.url.clone()));
        config.release_endpoints = vec![release_addr.to_string()];
        tweak(&mut config);
        let builder = match builder {
            Some(b) => b,
            None => slipway_build::builder_from_config(&config).unwrap(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(slipway_build::run_with_builder(
            config,
            listener,
            async move {
                let _ = stopped.await;
            },
            builder,
        ));
        let channel =
            slipway_rpc::channel("build", &[format!("http://{addr}")], &Default::default())
                .unwrap();
        let mut client = BuildServiceClient::new(channel);
        // Ready once the server answers (it binds before migrating).
        for _ in 0..200 {
            let probe = client
                .list_builds(pb::ListBuildsRequest {
                    app: "probe".into(),
                    limit: 1,
                })
                .await;
            if probe.is_ok() {
                break;
            }
            assert!(!server.is_finished(), "build service exited early");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Self {
            client,
            addr,
            releases,
            data_dir,
            _dir: dir,
            db,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// Uploads `bytes` for `app` in 64 KiB chunks and returns the object URL.
    pub async fn upload(&self, app: &str, bytes: &[u8]) -> Result<String, Status> {
        let mut messages = vec![pb::UploadSourceRequest {
            app: app.into(),
            key: String::new(),
            chunk: Default::default(),
            last: false,
        }];
        for chunk in bytes.chunks(64 << 10) {
            messages.push(pb::UploadSourceRequest {
                chunk: bytes::Bytes::copy_from_slice(chunk),
                ..Default::default()
            });
        }
        if let Some(end) = messages.last_mut() {
            end.last = true;
        }
        let response = self
            .client
            .clone()
            .upload_source(futures::stream::iter(messages))
            .await?;
        Ok(response.into_inner().url)
    }

    /// Creates a build of an uploaded source.
    pub async fn create(&self, app: &str, url: &str, description: &str) -> pb::Build {
        self.client
            .clone()
            .create_build(pb::CreateBuildRequest {
                app: app.into(),
                source_url: url.into(),
                description: description.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .build
            .unwrap()
    }

    /// Uploads `tgz`, builds it and waits for the end; returns the build and
    /// its full log.
    pub async fn build(&self, app: &str, tgz: &[u8], description: &str) -> (pb::Build, String) {
        let url = self.upload(app, tgz).await.unwrap();
        let build = self.create(app, &url, description).await;
        let log = self.logs(app, &build.id, 0).await;
        (
            self.get(app, &build.id).await,
            String::from_utf8(log).unwrap(),
        )
    }

    /// Reads a build's log from `offset` to its end (the stream ends when
    /// the build does).
    pub async fn logs(&self, app: &str, id: &str, offset: u64) -> Vec<u8> {
        let mut stream = self
            .client
            .clone()
            .watch_build_logs(pb::WatchBuildLogsRequest {
                app: app.into(),
                id: id.into(),
                from_offset: offset,
            })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        let read = async {
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk.unwrap().chunk);
            }
        };
        tokio::time::timeout(Duration::from_secs(120), read)
            .await
            .expect("build log did not end");
        out
    }

    pub async fn get(&self, app: &str, id: &str) -> pb::Build {
        self.client
            .clone()
            .get_build(pb::GetBuildRequest {
                app: app.into(),
                id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .build
            .unwrap()
    }

    /// Every `sha256-*` snapshot artifact in the data directory.
    pub fn snapshots(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.data_dir.join("artifacts"))
            .map(|dir| {
                dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.retain(|n| n.starts_with("sha256-"));
        names.sort();
        names
    }

    /// Whether the work directories of ended builds are all gone.
    pub fn work_is_empty(&self) -> bool {
        std::fs::read_dir(self.data_dir.join("work"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    }
}

pub fn status(build: &pb::Build) -> pb::BuildStatus {
    pb::BuildStatus::try_from(build.status).unwrap()
}

/// A gzip'd tarball made entry by entry; entries can be hostile.
pub struct Tarball {
    builder: tar::Builder<flate2::write::GzEncoder<Vec<u8>>>,
}

impl Default for Tarball {
    fn default() -> Self {
        Self::new()
    }
}

impl Tarball {
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::fast(),
            )),
        }
    }

    /// A source with `convox.yml` = `manifest` and the given files.
    pub fn source(manifest: &str, files: &[(&str, &str)]) -> Vec<u8> {
        let mut t = Self::new().file("convox.yml", manifest.as_bytes(), 0o644);
        for (path, body) in files {
            t = t.file(path, body.as_bytes(), 0o644);
        }
        t.finish()
    }

    fn header(name: &[u8], kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        // Written raw, so hostile names (`..`, absolute) reach the archive.
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_mtime(1_700_000_000);
        header
    }

    pub fn entry(
        mut self,
        name: &str,
        kind: tar::EntryType,
        body: impl std::io::Read,
        size: u64,
        mode: u32,
        link: Option<&str>,
    ) -> Self {
        let mut header = Self::header(name.as_bytes(), kind, size, mode);
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        self.builder.append(&header, body).unwrap();
        self
    }

    pub fn file(self, name: &str, body: &[u8], mode: u32) -> Self {
        self.entry(
            name,
            tar::EntryType::Regular,
            body,
            body.len() as u64,
            mode,
            None,
        )
    }

    pub fn dir(self, name: &str) -> Self {
        self.entry(
            name,
            tar::EntryType::Directory,
            std::io::empty(),
            0,
            0o755,
            None,
        )
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(
            name,
            tar::EntryType::Symlink,
            std::io::empty(),
            0,
            0o777,
            Some(target),
        )
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap().finish().unwrap()
    }
}

/// A manifest with one service built from the source root.
pub const WEB: &str = "services:\n  web:\n    build: .\n    command: ./run.sh\n    port: 3000\n";

/// Files a test build may have left anywhere under `root`, by name.
pub fn find_named(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy() == name {
                found.push(path.clone());
            }
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path);
            }
        }
    }
    found
}

/// Artifacts as a sorted map, for comparisons.
pub fn artifacts(build: &pb::Build) -> BTreeMap<String, String> {
    build.artifacts.clone().into_iter().collect()
}
