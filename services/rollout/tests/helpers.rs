//! Test helpers: manifests and specs for the test app, the service run
//! in-process, a fake release service recording outcomes, a load loop, and
//! cleanup of every process a test started.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_api::release::v1 as rpb;
use slipway_api::release::v1::release_service_server::{ReleaseService, ReleaseServiceServer};
use slipway_api::rollout::v1 as pb;
use slipway_api::rollout::v1::rollout_service_client::RolloutServiceClient;
use slipway_rollout::model::SpecRecord;
use slipway_rollout::runtime::Spec;
use slipway_rollout::runtime::conformance::{Behaviour, Fixture};
use slipway_rpc::Channel;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

/// A unique app name.
pub(crate) fn app_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// How a test release behaves and is checked.
#[derive(Clone, Debug)]
pub(crate) struct App {
    pub(crate) mode: &'static str,
    pub(crate) count: u32,
    pub(crate) grace: u32,
    pub(crate) delay_ms: Option<u64>,
}

impl App {
    pub(crate) fn healthy(count: u32) -> Self {
        Self {
            mode: "healthy",
            count,
            grace: 2,
            delay_ms: None,
        }
    }
    pub(crate) fn mode(mode: &'static str) -> Self {
        Self {
            mode,
            count: 1,
            grace: 1,
            delay_ms: None,
        }
    }
    /// Listens only after `delay_ms`; a grace longer than that keeps the
    /// health check from failing it first.
    pub(crate) fn slow(delay_ms: u64, grace: u32) -> Self {
        Self {
            mode: "healthy",
            count: 1,
            grace,
            delay_ms: Some(delay_ms),
        }
    }
}

/// The directory every test release runs in.
pub(crate) fn artifact_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap())
        .path()
        .to_owned()
}

pub(crate) fn manifest(app: &App) -> String {
    format!(
        "services:\n  web:\n    command: exec {bin}\n    port: 3000\n    health:\n      path: /\n      grace: {grace}\n      interval: 1\n      timeout: 1\n    scale:\n      count: {count}\n    termination:\n      grace: 5\n",
        bin = env!("CARGO_BIN_EXE_slipway-testapp"),
        grace = app.grace,
        count = app.count,
    )
}

/// The wire spec of release `release` of `app_name`.
pub(crate) fn spec(app_name: &str, release: &str, app: &App) -> pb::ReleaseSpec {
    let mut env = std::collections::HashMap::new();
    env.insert("TESTAPP_MODE".to_owned(), app.mode.to_owned());
    if let Some(delay) = app.delay_ms {
        env.insert("TESTAPP_DELAY_MS".to_owned(), delay.to_string());
    }
    let mut artifacts = std::collections::HashMap::new();
    artifacts.insert(
        "web".to_owned(),
        format!("file://{}", artifact_dir().display()),
    );
    pb::ReleaseSpec {
        app: app_name.to_owned(),
        release: release.to_owned(),
        build: String::new(),
        manifest: manifest(app),
        env,
        artifacts,
    }
}

/// The domain spec (for runtime-level tests).
pub(crate) fn domain_spec(app_name: &str, release: &str, app: &App) -> Spec {
    let wire = spec(app_name, release, app);
    Spec::from_record(SpecRecord {
        app: wire.app,
        release: wire.release,
        build: wire.build,
        manifest: wire.manifest,
        env: wire.env.into_iter().collect(),
        artifacts: wire.artifacts.into_iter().collect(),
    })
    .unwrap()
}

/// Specs for the runtime conformance suite.
pub(crate) struct TestAppFixture;

impl Fixture for TestAppFixture {
    fn spec(&self, app: &str, release: &str, behaviour: Behaviour, count: u32) -> Spec {
        let mut test_app = match behaviour {
            Behaviour::Healthy => App::healthy(count),
            Behaviour::ExitAtStart => App::mode("exit"),
            Behaviour::NeverHealthy => App::mode("never-healthy"),
        };
        test_app.count = count;
        domain_spec(app, release, &test_app)
    }
}

/// Kills every process a test started for `app` (they run in their own
/// process groups and would outlive the test).
pub(crate) fn kill_app_processes(app: &str) {
    let marker = format!("SLIPWAY_APP={app}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ"))
            && environ.split(|b| *b == 0).any(|v| v == marker.as_bytes())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Live processes carrying `app`'s marker.
pub(crate) fn count_app_processes(app: &str) -> usize {
    let marker = format!("SLIPWAY_APP={app}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    !s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(false);
            alive
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .map(|e| e.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
                    .unwrap_or(false)
        })
        .count()
}

/// Kills the app's processes when dropped (also on panic).
pub(crate) struct AppGuard(pub String);

impl Drop for AppGuard {
    fn drop(&mut self) {
        kill_app_processes(&self.0);
    }
}

/// What the fake release service was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Completed {
    pub(crate) promotion: String,
    pub(crate) outcome: rpb::PromotionOutcome,
    pub(crate) reason: String,
    pub(crate) lease_epoch: u64,
}

/// A release service that records `CompletePromotion` calls; the first
/// `fail_first` calls answer UNAVAILABLE (to exercise retries).
#[derive(Clone, Default)]
pub(crate) struct FakeRelease {
    pub(crate) completed: Arc<Mutex<Vec<Completed>>>,
    pub(crate) fail_first: Arc<AtomicU64>,
}

impl FakeRelease {
    /// Serves on a fresh port; returns the address.
    pub(crate) async fn spawn(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = ReleaseServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        addr
    }

    pub(crate) fn outcomes(&self, promotion: &str) -> Vec<Completed> {
        self.completed
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.promotion == promotion)
            .cloned()
            .collect()
    }

    /// Waits until the promotion's outcome arrived.
    pub(crate) async fn wait_for(&self, promotion: &str) -> Completed {
        let start = Instant::now();
        loop {
            if let Some(c) = self.outcomes(promotion).into_iter().next() {
                return c;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no outcome for {promotion}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("fake"))
}

#[tonic::async_trait]
impl ReleaseService for FakeRelease {
    async fn create_app(
        &self,
        _: Request<rpb::CreateAppRequest>,
    ) -> Result<Response<rpb::CreateAppResponse>, Status> {
        unimplemented()
    }
    async fn get_app(
        &self,
        _: Request<rpb::GetAppRequest>,
    ) -> Result<Response<rpb::GetAppResponse>, Status> {
        unimplemented()
    }
    async fn list_apps(
        &self,
        _: Request<rpb::ListAppsRequest>,
    ) -> Result<Response<rpb::ListAppsResponse>, Status> {
        unimplemented()
    }
    async fn delete_app(
        &self,
        _: Request<rpb::DeleteAppRequest>,
    ) -> Result<Response<rpb::DeleteAppResponse>, Status> {
        unimplemented()
    }
    async fn create_release(
        &self,
        _: Request<rpb::CreateReleaseRequest>,
    ) -> Result<Response<rpb::CreateReleaseResponse>, Status> {
        unimplemented()
    }
    async fn change_env(
        &self,
        _: Request<rpb::ChangeEnvRequest>,
    ) -> Result<Response<rpb::ChangeEnvResponse>, Status> {
        unimplemented()
    }
    async fn get_release(
        &self,
        _: Request<rpb::GetReleaseRequest>,
    ) -> Result<Response<rpb::GetReleaseResponse>, Status> {
        unimplemented()
    }
    async fn list_releases(
        &self,
        _: Request<rpb::ListReleasesRequest>,
    ) -> Result<Response<rpb::ListReleasesResponse>, Status> {
        unimplemented()
    }
    async fn promote_release(
        &self,
        _: Request<rpb::PromoteReleaseRequest>,
    ) -> Result<Response<rpb::PromoteReleaseResponse>, Status> {
        unimplemented()
    }
    async fn rollback_release(
        &self,
        _: Request<rpb::RollbackReleaseRequest>,
    ) -> Result<Response<rpb::RollbackReleaseResponse>, Status> {
        unimplemented()
    }
    async fn cancel_promotion(
        &self,
        _: Request<rpb::CancelPromotionRequest>,
    ) -> Result<Response<rpb::CancelPromotionResponse>, Status> {
        unimplemented()
    }
    async fn get_promotion(
        &self,
        _: Request<rpb::GetPromotionRequest>,
    ) -> Result<Response<rpb::GetPromotionResponse>, Status> {
        unimplemented()
    }
    async fn list_promotions(
        &self,
        _: Request<rpb::ListPromotionsRequest>,
    ) -> Result<Response<rpb::ListPromotionsResponse>, Status> {
        unimplemented()
    }
    async fn complete_promotion(
        &self,
        request: Request<rpb::CompletePromotionRequest>,
    ) -> Result<Response<rpb::CompletePromotionResponse>, Status> {
        if self.fail_first.load(Ordering::Acquire) > 0 {
            self.fail_first.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::unavailable("try again"));
        }
        let req = request.into_inner();
        let outcome = req.outcome();
        self.completed.lock().unwrap().push(Completed {
            promotion: req.promotion,
            outcome,
            reason: req.reason,
            lease_epoch: req.lease_epoch,
        });
        Ok(Response::new(rpb::CompletePromotionResponse::default()))
    }
    async fn list_audit_events(
        &self,
        _: Request<rpb::ListAuditEventsRequest>,
    ) -> Result<Response<rpb::ListAuditEventsResponse>, Status> {
        unimplemented()
    }
}

/// A temporary directory for a data directory (`data/`) and an apps
/// directory (`apps/`) that app users can reach (the tests run as root in
/// CI, so apps run as users of their own), removed with it.
pub(crate) fn private_and_apps_dirs() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

/// Runs the rollout service in-process on SQLite in a fresh directory, with
/// a fake release service, after `adjust` had its say on the dev config.
/// Returns its address, the fake, the handle that stops it when dropped,
/// and the directory.
pub(crate) async fn serve(
    adjust: impl FnOnce(&mut slipway_rollout::Config),
) -> (
    SocketAddr,
    FakeRelease,
    tokio::sync::oneshot::Sender<()>,
    tempfile::TempDir,
) {
    slipway_telemetry::init_for_tests();
    let dir = private_and_apps_dirs();
    let release = FakeRelease::default();
    let release_addr = release.spawn().await;
    let mut config = slipway_rollout::Config::dev(dir.path().join("data"));
    config.isolation.apps_dir = Some(dir.path().join("apps"));
    config.release_endpoints = vec![release_addr.to_string()];
    adjust(&mut config);
    config.validate().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        slipway_rollout::run(config, listener, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (addr, release, stop, dir)
}

/// The rollout service running in-process on SQLite, with a fake release service.
pub(crate) struct TestService {
    pub(crate) client: RolloutServiceClient<Channel>,
    pub(crate) release: FakeRelease,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl TestService {
    pub(crate) async fn spawn() -> Self {
        let (addr, release, stop, dir) = serve(|_| {}).await;
        let client = connect(addr).await;
        Self {
            client,
            release,
            _stop: stop,
            _dir: dir,
        }
    }
}

/// A client for a rollout service at `addr`.
pub(crate) async fn connect(addr: SocketAddr) -> RolloutServiceClient<Channel> {
    let channel =
        slipway_rpc::channel("rollout", &[addr.to_string()], &Default::default()).unwrap();
    RolloutServiceClient::new(channel)
}

/// The id of `app`'s promotion number `n` in a test: the same on every
/// call, shaped as the service requires (`P` and 32 hex digits).
pub(crate) fn promotion_id(app: &str, n: usize) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (app, n, salt).hash(&mut h);
        h.finish()
    };
    format!("P{:016x}{:016x}", half(0), half(1))
}

/// Starts a rollout.
pub(crate) async fn start(
    client: &mut RolloutServiceClient<Channel>,
    promotion: &str,
    target: pb::ReleaseSpec,
    fallback: Option<pb::ReleaseSpec>,
    deadline: u32,
) -> pb::Rollout {
    client
        .start_rollout(pb::StartRolloutRequest {
            promotion: promotion.to_owned(),
            target: Some(target),
            fallback,
            deadline_seconds: deadline,
        })
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap()
}

/// Watches a rollout to its end; returns it with the event lines seen.
pub(crate) async fn finish(
    client: &mut RolloutServiceClient<Channel>,
    id: &str,
    limit: Duration,
) -> (pb::Rollout, Vec<pb::Event>) {
    let watch = async {
        let mut stream = client
            .watch_rollout(pb::WatchRolloutRequest {
                id: id.to_owned(),
                after_event_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut events = Vec::new();
        while let Some(item) = stream.next().await {
            let item = item.unwrap();
            if let Some(event) = item.event {
                events.push(event);
            }
            if let Some(done) = item.finished {
                return (done, events);
            }
        }
        panic!("watch of {id} ended without a finished rollout; events: {events:?}");
    };
    tokio::time::timeout(limit, watch)
        .await
        .unwrap_or_else(|_| panic!("rollout {id} did not finish within {limit:?}"))
}

/// The stable address of `app`'s web service.
pub(crate) async fn web_address(client: &mut RolloutServiceClient<Channel>, app: &str) -> String {
    let services = client
        .list_services(pb::ListServicesRequest {
            app: app.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .services;
    services
        .into_iter()
        .find(|s| s.name == "web")
        .expect("web service")
        .address
}

/// One HTTP GET; the body on 200.
pub(crate) async fn get(address: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(format!("bad response {response:?}"));
    }
    Ok(response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned())
}

/// Requests in a loop against `address` until stopped.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    /// Requests answered so far.
    ok: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    pub(crate) fn start(address: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, ok) = (stop.clone(), ok.clone());
            async move {
                let mut failures = Vec::new();
                let started = Instant::now();
                // Bounded in time, whatever happens to the test.
                while !stop.load(Ordering::Acquire) && started.elapsed() < Duration::from_secs(120)
                {
                    match get(&address).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::AcqRel);
                        }
                        Err(e) => failures.push(e),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                failures
            }
        });
        Self { stop, ok, task }
    }

    /// Waits until `n` requests have been answered: the loop is running.
    pub(crate) async fn until_answered(&self, n: u64) {
        eventually(
            Duration::from_secs(30),
            "the load loop's first answers",
            || {
                let ok = self.ok.clone();
                async move { ok.load(Ordering::Acquire) >= n }
            },
        )
        .await;
    }

    /// Stops; returns (successes, failures).
    pub(crate) async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        let failures = self.task.await.unwrap();
        (self.ok.load(Ordering::Acquire), failures)
    }
}

/// The app's processes.
pub(crate) async fn processes(
    client: &mut RolloutServiceClient<Channel>,
    app: &str,
) -> Vec<pb::Process> {
    client
        .list_processes(pb::ListProcessesRequest {
            app: app.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .processes
}

/// Polls `check` until it holds, or panics after `limit`.
pub(crate) async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
