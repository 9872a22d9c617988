//! The scale setup in one test: every service as its own process (two
//! gateways, two release replicas, two rollout replicas, one build service)
//! on PostgreSQL and Redis, the way `deploy/` runs them, with the rollout
//! service on the Kubernetes runtime against the fake API server and
//! cluster, `slipway-kube-fake`, also a process of its own (no API server
//! can run here; see `crates/kube-fake` for how its pods behave). The
//! local runtime is a one-machine runtime (one
//! rollout replica supervises its processes), so the replicated setup uses
//! the runtime it is meant for.
//!
//! Processes are the real binaries built beside the test; each one binds
//! `127.0.0.1:0` and reports its address in its log, except the release
//! replicas, whose addresses the rollout replicas need before the release
//! replicas can be told theirs (the two call each other).
//!
//! Any service can be stopped (SIGTERM, drained), killed (SIGKILL) and
//! started again on the same address with the same configuration
//! ([`Cluster::restart`], [`Cluster::kill_and_restart`]), so rolling restarts
//! and crashes with recovery can be tested; the names are [`SERVICES`].

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// The PostgreSQL relay [`Cluster::start_via`] takes (for benches, which
/// reach the test helpers through this crate).
pub use slipway_storage::testing::relay::{Relay, postgres_addr};

/// The rack password of the cluster's gateways.
pub const PASSWORD: &str = "scale-secret-0123456";
/// The rollout lease: how long a killed replica's rollouts wait for takeover.
pub const LEASE_TTL: Duration = Duration::from_secs(2);

/// One service process.
struct Replica {
    name: String,
    /// The binary and the arguments it was started with, its `--listen`
    /// pinned to the address it bound first, so a restart comes back there.
    bin: String,
    args: Vec<OsString>,
    child: Child,
    addr: SocketAddr,
    /// Its last log lines (of every start), shown when a test fails.
    log: Arc<Mutex<Vec<String>>>,
}

/// The service processes of a cluster by name, in the order a rolling
/// restart takes them (the fake API server, `kube`, is not a Slipway service
/// and keeps its state in memory, so it is not among them).
pub const SERVICES: [&str; 7] = [
    "release-a",
    "release-b",
    "build",
    "rollout-a",
    "rollout-b",
    "gateway-a",
    "gateway-b",
];

/// How long a SIGTERMed service may take to drain and exit.
pub const STOP_LIMIT: Duration = Duration::from_secs(30);

/// Settings of a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Redis the rollout replicas publish events to (`None`: in-process
    /// buses, so events do not cross replicas).
    pub redis_url: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            redis_url: Some(
                std::env::var("SLIPWAY_TEST_REDIS_URL")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
            ),
        }
    }
}

/// A running scale setup.
pub struct Cluster {
    replicas: Vec<Replica>,
    /// The fake API server (`slipway-kube-fake`).
    kube: SocketAddr,
    /// Its kubeconfig, for the rollout replicas and `kubectl`.
    pub kubeconfig: PathBuf,
    /// The rollout service's database (shared by both rollout replicas).
    pub rollout_db: String,
    /// The release service's database.
    pub release_db: String,
    /// Key prefix of this cluster's Redis streams.
    pub redis_prefix: String,
    dir: tempfile::TempDir,
}

/// Path of a binary of the workspace built beside the running executable
/// (a test in `target/<profile>/deps`, or a benchmark in `target/<profile>`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .collect();
    candidates
        .iter()
        .find(|bin| bin.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing beside {}: build the workspace's binaries first \
                 (`cargo build --workspace --bins`; scripts/test does)",
                exe.display()
            )
        })
}

fn key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand_bytes())
}

fn rand_bytes() -> [u8; 32] {
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(16) {
        chunk.copy_from_slice(&uuid::Uuid::new_v4().into_bytes());
    }
    out
}

/// A port that was free a moment ago. Only for services that must be told
/// each other's address before either starts (release and rollout call each
/// other): a port chosen here and released is the only way, with a tiny race.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("http://{a}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Cluster {
    /// Starts the whole setup on fresh PostgreSQL databases, with rollout
    /// leases of [`LEASE_TTL`].
    pub async fn start(options: ClusterOptions) -> Self {
        Self::start_with_lease(options, LEASE_TTL).await
    }

    /// [`Cluster::start`] with rollout leases of `lease_ttl` (a long lease
    /// tells a prompt hand-over from a takeover after expiry).
    pub async fn start_with_lease(options: ClusterOptions, lease_ttl: Duration) -> Self {
        Self::start_full(options, lease_ttl, None).await
    }

    /// [`Cluster::start`] with every service reaching PostgreSQL at
    /// `postgres` (a relay a test or bench cuts and restores:
    /// `slipway_storage::testing::relay`). The `*_db` fields keep the
    /// direct URLs, for checks made past the relay.
    pub async fn start_via(options: ClusterOptions, postgres: Option<SocketAddr>) -> Self {
        Self::start_full(options, LEASE_TTL, postgres).await
    }

    async fn start_full(
        options: ClusterOptions,
        lease_ttl: Duration,
        postgres: Option<SocketAddr>,
    ) -> Self {
        let via = |url: &str| match postgres {
            Some(addr) => slipway_storage::testing::relay::through(url, addr),
            None => url.to_owned(),
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let release_db = slipway_storage::testing::postgres().await;
        let rollout_db = slipway_storage::testing::postgres().await;
        let build_db = slipway_storage::testing::postgres().await;
        let (release_db, rollout_db, build_db) = (
            release_db.url.clone(),
            rollout_db.url.clone(),
            build_db.url.clone(),
        );

        let kubeconfig = dir.path().join("kubeconfig");
        let env_key = key();
        let spec_key = key();
        let redis_prefix = format!("slipway-test-{}", uuid::Uuid::new_v4().simple());
        let release_addrs: Vec<SocketAddr> = (0..2)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();

        let mut cluster = Self {
            replicas: Vec::new(),
            kube: SocketAddr::from(([127, 0, 0, 1], 0)),
            kubeconfig: kubeconfig.clone(),
            rollout_db,
            release_db,
            redis_prefix,
            dir,
        };

        let fake: Vec<OsString> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--write-kubeconfig".into(),
            kubeconfig.clone().into(),
        ];
        cluster.kube = cluster.spawn("kube", "slipway-kube-fake", fake).await;

        let mut rollouts = Vec::new();
        for name in ["rollout-a", "rollout-b"] {
            let mut args: Vec<OsString> = [
                "--listen",
                "127.0.0.1:0",
                "--runtime",
                "kubernetes",
                "--rack",
                "scale",
                "--replica-id",
                name,
            ]
            .iter()
            .map(OsString::from)
            .collect();
            args.extend([
                "--lease-ttl".into(),
                humantime::format_duration(lease_ttl).to_string().into(),
            ]);
            args.extend(["--kubeconfig".into(), kubeconfig.clone().into()]);
            args.extend(["--database-url".into(), via(&cluster.rollout_db).into()]);
            args.extend(["--release-endpoint".into(), join(&release_addrs).into()]);
            args.extend(["--spec-key".into(), spec_key.clone().into()]);
            args.extend([
                "--data-dir".into(),
                cluster.dir.path().join(name).into_os_string(),
            ]);
            if let Some(url) = &options.redis_url {
                args.extend(["--redis-url".into(), url.into()]);
                args.extend(["--redis-prefix".into(), cluster.redis_prefix.clone().into()]);
            }
            rollouts.push(cluster.spawn(name, "slipway-rollout", args).await);
        }

        for (i, name) in ["release-a", "release-b"].into_iter().enumerate() {
            let mut args: Vec<OsString> =
                vec!["--listen".into(), release_addrs[i].to_string().into()];
            args.extend(["--database-url".into(), via(&cluster.release_db).into()]);
            args.extend(["--env-key".into(), env_key.clone().into()]);
            args.extend(["--rollout-endpoint".into(), join(&rollouts).into()]);
            args.extend(["--redispatch-every".into(), "1s".into()]);
            args.extend([
                "--data-dir".into(),
                cluster.dir.path().join(name).into_os_string(),
            ]);
            cluster.spawn(name, "slipway-release", args).await;
        }

        let mut args: Vec<OsString> = vec!["--listen".into(), "127.0.0.1:0".into()];
        args.extend(["--database-url".into(), via(&build_db).into()]);
        args.extend(["--release-endpoint".into(), join(&release_addrs).into()]);
        args.extend([
            "--data-dir".into(),
            cluster.dir.path().join("build").into_os_string(),
        ]);
        let build = cluster.spawn("build", "slipway-build", args).await;

        for name in ["gateway-a", "gateway-b"] {
            let mut args: Vec<OsString> = vec!["--listen".into(), "127.0.0.1:0".into()];
            args.extend(["--password".into(), PASSWORD.into()]);
            args.extend(["--release-endpoint".into(), join(&release_addrs).into()]);
            args.extend(["--rollout-endpoint".into(), join(&rollouts).into()]);
            args.extend(["--build-endpoint".into(), join(&[build]).into()]);
            if let Some(url) = &options.redis_url {
                // Console sessions, shared by both gateways.
                args.extend(["--redis-url".into(), url.into()]);
                args.extend(["--redis-prefix".into(), cluster.redis_prefix.clone().into()]);
            }
            args.extend([
                "--provider".into(),
                "k8s".into(),
                "--rack-name".into(),
                "scale".into(),
            ]);
            cluster.spawn(name, "slipway-gateway", args).await;
        }
        cluster
    }

    /// Starts `bin` and waits for the `serving addr=` line of its log.
    async fn spawn(&mut self, name: &str, bin: &str, args: Vec<OsString>) -> SocketAddr {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (child, addr) = launch(name, bin, &args, &log, None).await;
        self.replicas.push(Replica {
            name: name.to_owned(),
            bin: bin.to_owned(),
            args: pin_listen(args, addr),
            child,
            addr,
            log,
        });
        addr
    }

    fn replica_mut(&mut self, name: &str) -> &mut Replica {
        self.replicas
            .iter_mut()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no replica {name}"))
    }

    fn replica(&self, name: &str) -> &Replica {
        self.replicas
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no replica {name}"))
    }

    /// `RACK_URL` of gateway `name` (`gateway-a`, `gateway-b`).
    pub fn rack_url(&self, gateway: &str) -> String {
        format!("http://convox:{PASSWORD}@{}", self.replica(gateway).addr)
    }

    /// Address of replica `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.replica(name).addr
    }

    /// Runs `slipway args…` against gateway `gateway`, in `cwd`.
    pub async fn slipway(&self, gateway: &str, cwd: &Path, args: &[&str]) -> Output {
        tokio::time::timeout(
            Duration::from_secs(240),
            self.slipway_command(gateway, cwd, args).output(),
        )
        .await
        .unwrap_or_else(|_| panic!("slipway {args:?} took over 4 minutes"))
        .expect("run slipway")
    }

    /// Runs `slipway args…` against gateway `gateway` and returns its stdout,
    /// failing the test (with both streams and every replica's log) unless
    /// it succeeded.
    pub async fn ok(&self, gateway: &str, cwd: &Path, args: &[&str], what: &str) -> String {
        let output = self.slipway(gateway, cwd, args).await;
        if !output.status.success() {
            eprintln!("{}", self.logs());
        }
        crate::ok_stdout(&output, what)
    }

    /// The `slipway args…` command against gateway `gateway`, not started.
    pub fn slipway_command(&self, gateway: &str, cwd: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(binary("slipway"));
        command
            .args(args)
            .current_dir(cwd)
            .env("RACK_URL", self.rack_url(gateway))
            .env_remove("CONVOX_RACK")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// `env set FOO=bar` on `app` through gateway-a, then, with the
    /// cluster holding Deployments back, `releases promote` of that release
    /// through gateway-b, started and not waited for: the new release and
    /// the running promote (its output piped).
    pub async fn start_held_promotion(&self, cwd: &Path, app: &str) -> (String, Child) {
        let out = self
            .ok(
                "gateway-a",
                cwd,
                &["env", "set", "FOO=bar", "-a", app],
                "env set",
            )
            .await;
        let target = crate::release_of(&out);
        self.pause_deployments(true);
        let promote = self
            .slipway_command(
                "gateway-b",
                cwd,
                &["releases", "promote", &target, "-a", app],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start promote");
        (target, promote)
    }

    /// SIGKILLs replica `name` and waits for it to be gone.
    pub async fn kill(&mut self, name: &str) {
        let replica = self.replica_mut(name);
        let _ = replica.child.start_kill();
        let _ = replica.child.wait().await;
    }

    /// Stops replica `name` the way an orchestrator does (SIGTERM), waits
    /// for it to drain and exit ([`STOP_LIMIT`]) and returns its exit status
    /// (the test fails if it does not exit in time).
    pub async fn stop(&mut self, name: &str) -> std::process::ExitStatus {
        let replica = self.replica_mut(name);
        if let Ok(Some(status)) = replica.child.try_wait() {
            return status;
        }
        let pid = replica.child.id().expect("a running child has a pid");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .unwrap_or_else(|e| panic!("SIGTERM {name}: {e}"));
        match tokio::time::timeout(STOP_LIMIT, replica.child.wait()).await {
            Ok(Ok(status)) => status,
            _ => panic!(
                "{name} did not exit within {STOP_LIMIT:?} of SIGTERM; its log:\n{}",
                replica.log.lock().expect("log lock").join("\n")
            ),
        }
    }

    /// Starts replica `name` again (after [`Cluster::stop`] or
    /// [`Cluster::kill`]) with the same binary, arguments and address, and
    /// waits until it serves. Its peers keep their endpoint lists, so they
    /// find it where it was.
    pub async fn start_again(&mut self, name: &str) {
        let replica = self.replica_mut(name);
        if let Ok(None) = replica.child.try_wait() {
            panic!("{name} is still running: stop or kill it first");
        }
        let (bin, args, addr, log) = (
            replica.bin.clone(),
            replica.args.clone(),
            replica.addr,
            replica.log.clone(),
        );
        log.lock()
            .expect("log lock")
            .push(format!("----- {name} started again -----"));
        let (child, bound) = launch(name, &bin, &args, &log, Some(addr)).await;
        assert_eq!(bound, addr, "{name} came back on another address");
        self.replica_mut(name).child = child;
    }

    /// A rolling-restart step: [`Cluster::stop`] (SIGTERM, drain, exit),
    /// then [`Cluster::start_again`] on the same address. Panics unless the
    /// process exited cleanly on SIGTERM.
    pub async fn restart(&mut self, name: &str) {
        let status = self.stop(name).await;
        assert!(
            status.success(),
            "{name} exited with {status} on SIGTERM; its log:\n{}",
            self.replica(name).log.lock().expect("log lock").join("\n")
        );
        self.start_again(name).await;
    }

    /// A crash and a restart: SIGKILL, then [`Cluster::start_again`].
    pub async fn kill_and_restart(&mut self, name: &str) {
        self.kill(name).await;
        self.start_again(name).await;
    }

    /// Whether replica `name` is running.
    pub fn is_running(&mut self, name: &str) -> bool {
        matches!(self.replica_mut(name).child.try_wait(), Ok(None))
    }

    /// Sends `signal` to replica `name` (SIGSTOP/SIGCONT to pause one).
    pub fn signal(&self, name: &str, signal: nix::sys::signal::Signal) {
        let pid = self
            .replica(name)
            .child
            .id()
            .unwrap_or_else(|| panic!("{name} has exited"));
        let pid = i32::try_from(pid).expect("pid fits in i32");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .unwrap_or_else(|e| panic!("signal {name}: {e}"));
    }

    /// One request to the fake API server (plain HTTP/1.1, blocking: it
    /// answers on loopback at once); the body of its answer.
    fn kube_request(&self, method: &str, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(self.kube).expect("connect to the fake");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.kube
        )
        .expect("send to the fake");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("read the fake's answer");
        answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// Holds every Deployment where it is (true) or lets the cluster's
    /// controllers finish them (false).
    pub fn pause_deployments(&self, paused: bool) {
        self.kube_request("POST", &format!("/fake/v1/controller?paused={paused}"));
    }

    /// A Deployment of the fake cluster, as JSON.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<serde_json::Value> {
        let body = self.kube_request(
            "GET",
            &format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}"),
        );
        let value: serde_json::Value = serde_json::from_str(&body).ok()?;
        (value["kind"] == "Deployment").then_some(value)
    }

    /// Every write (POST, PUT, PATCH, DELETE) the rollout replicas sent to
    /// the API server for `path_part`.
    pub fn writes_to(&self, path_part: &str) -> usize {
        let body = self.kube_request("GET", "/fake/v1/requests");
        let requests: Vec<serde_json::Value> =
            serde_json::from_str(&body).expect("the fake's requests");
        requests
            .iter()
            .filter(|r| {
                r["method"] != "GET" && r["path"].as_str().is_some_and(|p| p.contains(path_part))
            })
            .count()
    }

    /// The logs of every replica, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for r in &self.replicas {
            out.push_str(&format!("===== {} ({})\n", r.name, r.addr));
            out.push_str(&r.log.lock().expect("log lock").join("\n"));
            out.push('\n');
        }
        out
    }
}

/// `args` with the value of `--listen` replaced by `addr`, the address the
/// process bound (its first start may have asked for port 0).
fn pin_listen(mut args: Vec<OsString>, addr: SocketAddr) -> Vec<OsString> {
    if let Some(i) = args.iter().position(|a| a == "--listen")
        && let Some(value) = args.get_mut(i + 1)
    {
        *value = addr.to_string().into();
    }
    args
}

/// Starts `bin args…`, appending its log to `log`, and waits for the
/// `serving addr=` line. A restart (`again`: the address it must bind)
/// whose port is still held for a moment (a lingering socket) is tried
/// again for a few seconds.
async fn launch(
    name: &str,
    bin: &str,
    args: &[OsString],
    log: &Arc<Mutex<Vec<String>>>,
    again: Option<SocketAddr>,
) -> (Child, SocketAddr) {
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    let mut pause = Duration::from_millis(25);
    loop {
        let mut child = Command::new(binary(bin))
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().expect("log lock").push(line.clone());
                if line.contains("serving")
                    && let Some(rest) = line.split("addr=").nth(1)
                    && let Some(addr) = rest
                        .split_whitespace()
                        .next()
                        .and_then(|a| a.trim_matches('"').parse::<SocketAddr>().ok())
                {
                    return Some(addr);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(addr)) => {
                let tail = log.clone();
                tokio::spawn(async move {
                    while let Ok(Some(line)) = lines.next_line().await {
                        let mut tail = tail.lock().expect("log lock");
                        tail.push(line);
                        if tail.len() > 400 {
                            tail.drain(..200);
                        }
                    }
                });
                return (child, addr);
            }
            _ => {
                let in_use = log
                    .lock()
                    .expect("log lock")
                    .iter()
                    .rev()
                    .take(5)
                    .any(|l| l.contains("Address already in use"));
                if again.is_some() && in_use && std::time::Instant::now() < give_up {
                    let _ = child.kill().await;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                    continue;
                }
                panic!(
                    "{name} ({bin} {args:?}) did not start serving; its log:\n{}",
                    log.lock().expect("log lock").join("\n")
                )
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            let _ = r.child.start_kill();
        }
    }
}
