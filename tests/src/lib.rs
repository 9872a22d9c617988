//! Support for the end-to-end tests: a rack in a temporary directory, the
//! `slipway` binary run against it, and raw HTTP/1.1 requests shaped the way
//! the `convox` CLI sends them.

pub mod cluster;
pub mod load;

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use base64::Engine as _;
use slipway_rack::{Config, Rack};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A rack for one test.
pub struct TestRack {
    /// The running rack.
    pub rack: Option<Rack>,
    /// RACK_URL for clients.
    pub url: String,
    /// `host:port` of the gateway.
    pub addr: std::net::SocketAddr,
    /// The password.
    pub password: String,
    config: Config,
    _dir: tempfile::TempDir,
}

impl TestRack {
    /// Starts a rack on a free loopback port with a short default deadline.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // App users (apps run as users of their own when the tests run as
        // root) pass through it to their working copies in `rack-apps/`.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("chmod temp dir");
        let password = "e2e-secret-0123456".to_owned();
        let config = Config {
            data_dir: dir.path().join("rack"),
            listen: "127.0.0.1:0".parse().expect("address"),
            password: Some(password.clone().into()),
            name: "e2e".into(),
            default_deadline: Duration::from_secs(120),
            max_upload_bytes: 8 * 1024 * 1024,
            port_range: None,
            insecure_no_auth: false,
            quickstart: false,
            quickstart_app: PathBuf::new(),
            stop_apps: false,
            webhook_allow_private: false,
            apps: Default::default(),
        };
        let rack = Rack::start(&config).await.expect("rack starts");
        Self {
            url: rack.rack_url.clone(),
            addr: rack.addr,
            rack: Some(rack),
            password,
            config,
            _dir: dir,
        }
    }

    /// Shuts the rack down (its apps' processes keep running, as they do
    /// when the real binary stops) and starts it again on the same address
    /// and data dir, as an operator's restart would.
    pub async fn restart(&mut self) {
        if let Some(rack) = self.rack.take() {
            rack.shutdown().await;
        }
        let mut config = self.config.clone();
        config.listen = self.addr;
        let rack = Rack::start(&config).await.expect("rack starts again");
        assert_eq!(rack.addr, self.addr, "the same address");
        self.rack = Some(rack);
    }

    /// The rack's temporary directory (its data dir is `rack/` below it).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Runs `slipway args…` with RACK_URL set, in `cwd`.
    pub async fn slipway(&self, cwd: &std::path::Path, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(slipway_binary());
        command
            .args(args)
            .current_dir(cwd)
            .env("RACK_URL", &self.url)
            .env_remove("CONVOX_RACK")
            .stdin(std::process::Stdio::null());
        tokio::time::timeout(Duration::from_secs(240), command.output())
            .await
            .unwrap_or_else(|_| panic!("slipway {args:?} took over 4 minutes"))
            .expect("run slipway")
    }

    /// Runs `slipway ARGS` from `cwd` and returns its stdout; a failure
    /// fails the test with both streams.
    pub async fn slipway_ok(&self, cwd: &std::path::Path, args: &[&str]) -> String {
        ok_stdout(&self.slipway(cwd, args).await, &args.join(" "))
    }

    /// Creates `app` and deploys the example app of the same name (or
    /// `example`) into it: the set-up most workflow tests start from.
    /// Returns the deploy's stdout.
    pub async fn app_deployed(
        &self,
        cwd: &std::path::Path,
        app: &str,
        example_app: &str,
    ) -> String {
        self.slipway_ok(cwd, &["apps", "create", app]).await;
        let source = example(example_app);
        self.slipway_ok(cwd, &["deploy", source.to_str().unwrap(), "-a", app])
            .await
    }

    /// One raw request the way the `convox` CLI sends it (target ending in
    /// `?`, Basic auth, octet-stream content type on bodiless requests).
    pub async fn raw(
        &self,
        method: &str,
        target: &str,
        content_type: &str,
        body: &[u8],
        password: &str,
    ) -> (u16, String) {
        raw_request(self.addr, method, target, content_type, body, password).await
    }
}

impl Drop for TestRack {
    fn drop(&mut self) {
        if let Some(rack) = self.rack.take() {
            // Stop the services on the runtime that is still alive.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(rack.shutdown());
            }
        }
        // App processes outlive their rack by design (a restarted rack
        // adopts them); a test's must not outlive the test.
        kill_processes_under(self._dir.path());
    }
}

/// SIGKILLs every process whose working directory is below `dir`.
pub fn kill_processes_under(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Path of the `slipway` binary built beside this test.
pub fn slipway_binary() -> PathBuf {
    cluster::binary("slipway")
}

/// The example app directory.
pub fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// Sends one HTTP/1.1 request and reads the whole answer.
pub async fn raw_request(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    content_type: &str,
    body: &[u8],
    password: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to gateway");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("convox:{password}"));
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: convox.go/dev\r\nAccept: */*\r\n\
         Authorization: Basic {auth}\r\nContent-Type: {content_type}\r\nVersion: dev\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("write request");
    // A server may answer (413) before the body is all sent, and close.
    let _ = stream.write_all(body).await;
    read_answer(&mut stream).await
}

/// Reads an HTTP/1.1 answer to its end: the status (0 when there is none)
/// and the body.
pub async fn read_answer(stream: &mut tokio::net::TcpStream) -> (u16, String) {
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `probe` until it returns `Some`, failing after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET `http://addr/path` with a plain HTTP/1.1 request; `None` when the
/// connection fails.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    ))
}

/// The release a `slipway env set` or `build` printed (`Release: R…`).
pub fn release_of(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("Release: "))
        .unwrap_or_else(|| panic!("no `Release: R…` line in:\n{out}"))
        .trim()
        .to_owned()
}

/// stdout of a command, panicking with both streams when it failed.
pub fn ok_stdout(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout
}
