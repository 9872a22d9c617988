//! Connection hygiene over real sockets: idle and slowloris connections
//! cannot lock users out (header and idle timeouts, the connection cap),
//! not even with 512 file descriptors; uploads have no total deadline but
//! fail when they stall, storing nothing; a credential's streams are
//! capped. Tests wait on conditions; the only timers pace the clients whose
//! slowness is under test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt as _;
use slipway_api::build::v1 as bpb;
use slipway_api::build::v1::build_service_client::BuildServiceClient;
use slipway_domain::Secret;
use slipway_gateway::serve::ConnectionArgs;
use slipway_rpc::SecurityArgs;
use slipway_rpc::auth::{ServiceKey, TokenSigner};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "0123456789abcdef0123456789abcdef-test-key";
const PASSWORD: &str = "connections-test-password";

fn security() -> SecurityArgs {
    SecurityArgs {
        service_token_key: Some(Secret::new(KEY)),
        insecure_grpc: false,
    }
}

fn signer() -> TokenSigner {
    TokenSigner::new(ServiceKey::new(&Secret::new(KEY)).unwrap(), "test")
}

/// A listener on a free loopback port.
async fn loopback() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// The release service on SQLite in `dir`.
async fn release_service(dir: &Path) -> SocketAddr {
    let (listener, addr) = loopback().await;
    let mut config = slipway_release::Config::dev(dir.to_owned());
    config.security = security();
    tokio::spawn(async move {
        slipway_release::run(config, listener, std::future::pending())
            .await
            .unwrap();
    });
    addr
}

/// The build service in `dir`, with request and upload idle timeouts.
async fn build_service(
    dir: &Path,
    release: SocketAddr,
    request_timeout: Duration,
    upload_idle: Duration,
) -> SocketAddr {
    let (listener, addr) = loopback().await;
    let mut config = slipway_build::Config::dev(dir.to_owned());
    config.security = security();
    config.release_endpoints = vec![format!("http://{release}")];
    config.request_timeout = request_timeout;
    config.upload_idle_timeout = upload_idle;
    tokio::spawn(async move {
        slipway_build::run(config, listener, std::future::pending())
            .await
            .unwrap();
    });
    addr
}

/// The gateway in front of `release` and `build` with `connections`.
async fn gateway(
    dir: &Path,
    release: SocketAddr,
    build: SocketAddr,
    connections: ConnectionArgs,
    request_timeout: Duration,
) -> SocketAddr {
    let (listener, addr) = loopback().await;
    let config = slipway_gateway::Config {
        password: Some(Secret::new(PASSWORD)),
        request_timeout,
        security: security(),
        connections,
        ..slipway_gateway::Config::with_peers(
            addr,
            vec![release.to_string()],
            vec![build.to_string()],
            vec![dead_port().await.to_string()],
            dir.to_owned(),
        )
    };
    config.validate().unwrap();
    tokio::spawn(async move {
        slipway_gateway::run(config, listener, std::future::pending())
            .await
            .unwrap();
    });
    wait_until_answering(addr).await;
    addr
}

/// A loopback port nothing listens on.
async fn dead_port() -> SocketAddr {
    loopback().await.1
}

fn basic() -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("convox:{PASSWORD}"));
    format!("Basic {token}")
}

/// Sends `GET path` on a new connection; the status and the whole answer.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic()
    );
    stream.write_all(head.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok((status_of(&answer), answer))
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Waits (bounded) until `GET /apps` answers 200: the gateway and the
/// release service behind it are up.
async fn wait_until_answering(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = get(addr, "/apps").await {
            return;
        }
        assert!(Instant::now() < deadline, "the gateway did not come up");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How long a normal request takes, which must succeed.
async fn timed_request(addr: SocketAddr) -> Duration {
    let start = Instant::now();
    let (status, answer) = get(addr, "/apps").await.unwrap();
    assert_eq!(status, 200, "{answer}");
    start.elapsed()
}

/// `n` connections that never send a byte.
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    futures::future::join_all((0..n).map(|_| TcpStream::connect(addr)))
        .await
        .into_iter()
        .map(|c| c.expect("connect"))
        .collect()
}

/// Waits until the server closes `stream` (EOF or reset); how long that took.
async fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server did not close the connection within {limit:?}"),
        }
    }
}

/// A slowloris client: a request head that never ends, one header byte
/// every `every` until the server closes the connection; how long after
/// it connected (at `start`) that was.
async fn slowloris(mut stream: TcpStream, start: Instant, every: Duration) -> Duration {
    if stream
        .write_all(b"GET /apps HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .is_err()
    {
        return start.elapsed();
    }
    let mut tick = tokio::time::interval(every);
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {}
            },
            _ = tick.tick() => {
                if stream.write_all(b"X").await.is_err() {
                    return start.elapsed();
                }
            }
        }
    }
}

fn short_timeouts() -> ConnectionArgs {
    ConnectionArgs {
        header_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(2),
        ..ConnectionArgs::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_neither_lock_out_a_request_nor_stay_open() {
    slipway_telemetry::init_for_tests();
    // 800 connections are 1600 descriptors in this one process.
    slipway_gateway::serve::raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let release = release_service(&dir.path().join("release")).await;
    let addr = gateway(
        &dir.path().join("gateway"),
        release,
        dead_port().await,
        // The idle timeout out of the way: the header timeout does it.
        ConnectionArgs {
            idle_timeout: Duration::from_secs(30),
            ..short_timeouts()
        },
        Duration::from_secs(10),
    )
    .await;

    let idle_since = Instant::now();
    let mut idle = idle_connections(addr, 500).await;
    let lorises = futures::future::join_all((0..300).map(|_| async {
        let stream = TcpStream::connect(addr).await.unwrap();
        (stream, Instant::now())
    }))
    .await;
    let lorises: Vec<_> = lorises
        .into_iter()
        .map(|(c, at)| tokio::spawn(slowloris(c, at, Duration::from_millis(200))))
        .collect();

    // Answers keep their length (the serve loop passes the body through).
    let (_, answer) = get(addr, "/apps").await.unwrap();
    let head = answer.to_ascii_lowercase();
    assert!(head.contains("content-length:"), "{answer}");
    assert!(!head.contains("transfer-encoding"), "{answer}");

    // While all 800 are open, a normal request answers at once.
    let took = timed_request(addr).await;
    assert!(took < Duration::from_secs(1), "a request took {took:?}");

    // The slowloris connections are closed after the header timeout (2 s),
    // though they keep sending; the idle ones too. Nothing else could close
    // them: the idle timeout is 30 s and a slowloris is never idle. The upper
    // bounds leave room for a machine busy with other tests (CI runs two at
    // once on two cores), far below what the idle timeout would give.
    for loris in lorises {
        let open_for = loris.await.unwrap();
        assert!(
            open_for >= Duration::from_millis(1900) && open_for < Duration::from_secs(15),
            "a slowloris connection was closed after {open_for:?}"
        );
    }
    let idle_deadline = idle_since + Duration::from_secs(15);
    for stream in &mut idle {
        let left = idle_deadline.saturating_duration_since(Instant::now());
        closed_by_server(stream, left.max(Duration::from_millis(1))).await;
    }
    assert!(timed_request(addr).await < Duration::from_secs(1));
}

const FD_CHILD: &str = "SLIPWAY_TEST_FD_LIMITED_GATEWAYS";

/// Not a test on its own: run by [`six_hundred_idle_connections_under_512_descriptors`]
/// in a child process (with [`FD_CHILD`] set), it serves two gateways with
/// the open-file limit at 512, soft and hard: one with the automatic
/// connection cap, one with a cap above the limit (so accepting fails with
/// EMFILE), prints their addresses and serves until stdin closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_limited_gateways() {
    if std::env::var_os(FD_CHILD).is_none() {
        return;
    }
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_NOFILE, 512, 512).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let release = release_service(&dir.path().join("release")).await;
    let auto = gateway(
        &dir.path().join("auto"),
        release,
        dead_port().await,
        short_timeouts(),
        Duration::from_secs(10),
    )
    .await;
    let over = gateway(
        &dir.path().join("over"),
        release,
        dead_port().await,
        ConnectionArgs {
            max_connections: 4096,
            ..short_timeouts()
        },
        Duration::from_secs(10),
    )
    .await;
    println!("GATEWAYS {auto} {over}");
    let _ = tokio::task::spawn_blocking(|| {
        use std::io::Read as _;
        std::io::stdin().read_to_end(&mut Vec::new())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_idle_connections_under_512_descriptors() {
    slipway_gateway::serve::raise_fd_limit();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "fd_limited_gateways",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FD_CHILD, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (auto, over) = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // The harness may print its "test ... " on the same line.
            if let Some((_, addrs)) = line.split_once("GATEWAYS ") {
                let (a, b) = addrs.split_once(' ').unwrap();
                return (a.parse::<SocketAddr>().unwrap(), b.parse().unwrap());
            }
        }
        panic!("the child exited without serving");
    })
    .await
    .expect("the fd-limited gateways came up");
    let header_timeout = short_timeouts().header_timeout;

    // The automatic cap (three quarters of 512) is full of idle
    // connections: the idlest make room, so a request is not held up.
    let idle = idle_connections(auto, 600).await;
    let took = timed_request(auto).await;
    eprintln!("automatic cap, 600 idle: a request took {took:?}");
    assert!(
        took <= header_timeout,
        "with the automatic cap a request took {took:?}"
    );
    drop(idle);

    // A cap above the descriptor limit: accepting fails (EMFILE); the
    // gateway closes the idlest connections, backs off and goes on.
    let idle = idle_connections(over, 600).await;
    let took = timed_request(over).await;
    eprintln!("cap above the descriptor limit, 600 idle: a request took {took:?}");
    assert!(
        took <= header_timeout,
        "past the descriptor limit a request took {took:?}"
    );
    for _ in 0..20 {
        timed_request(over).await;
    }
    drop(idle);
    // And again: it never stops accepting for good.
    let idle = idle_connections(over, 600).await;
    timed_request(over).await;
    drop(idle);
    timed_request(auto).await;

    drop(child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the child exits when stdin closes")
        .unwrap();
    assert!(status.success(), "the fd-limited child failed: {status}");
}

/// Every file under `dir` whose path contains `needle`.
fn files_named(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.to_string_lossy().contains(needle) {
                found.push(path);
            }
        }
    }
    found
}

/// Sends an upload head for `len` bytes of object `key`, then `sent` bytes
/// at `rate` bytes a second; returns the connection.
async fn upload(addr: SocketAddr, key: &str, len: usize, sent: usize, rate: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /apps/slow/objects/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        basic()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let slice = rate / 10;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut done = 0;
    while done < sent {
        tick.tick().await;
        let n = slice.min(sent - done);
        stream.write_all(&vec![b'x'; n]).await.unwrap();
        done += n;
    }
    stream
}

async fn answer(mut stream: TcpStream) -> (u16, String) {
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    (status_of(&answer), answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_succeeds_and_stalled_ones_store_nothing() {
    slipway_telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let release = release_service(&dir.path().join("release")).await;
    // Request timeouts far below the upload's 70 s on both sides; the
    // build service's upload idle timeout (6 s) is shorter than a 1 MiB
    // chunk takes at 150 KB/s, so the gateway's heartbeats must keep it.
    let build_dir = dir.path().join("build");
    let build = build_service(
        &build_dir,
        release,
        Duration::from_secs(20),
        Duration::from_secs(6),
    )
    .await;
    let addr = gateway(
        &dir.path().join("gateway"),
        release,
        build,
        ConnectionArgs {
            body_idle_timeout: Duration::from_secs(3),
            ..ConnectionArgs::default()
        },
        Duration::from_secs(20),
    )
    .await;
    let client = slipway_client::Client::new(&format!("http://convox:{PASSWORD}@{addr}")).unwrap();
    client.app_create("slow", None).await.unwrap();

    // 10 MB at 150 KB/s: about 70 s, far past every request timeout.
    const SLOW: usize = 10_000_000;
    let slow = tokio::spawn(async move {
        let start = Instant::now();
        let stream = upload(addr, "slow.tgz", SLOW, SLOW, 150_000).await;
        (answer(stream).await, start.elapsed())
    });

    // Meanwhile, a client that stalls half-way: refused once the body has
    // been idle for 3 s, and nothing stored.
    let start = Instant::now();
    let stalled = upload(addr, "stalled.tgz", 1_000_000, 300_000, 1_000_000).await;
    let (status, text) = answer(stalled).await;
    let after = start.elapsed();
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("nothing stored"), "{text}");
    assert!(
        after < Duration::from_secs(10),
        "the stall was noticed after {after:?}"
    );

    // A gRPC caller that stalls is cut off by the build service itself.
    let channel = slipway_rpc::channel(
        "build",
        &[build.to_string()],
        &slipway_rpc::ChannelOptions {
            service_token: Some(signer()),
            ..Default::default()
        },
    )
    .unwrap();
    let first = bpb::UploadSourceRequest {
        app: "slow".into(),
        key: "grpc-stalled.tgz".into(),
        chunk: vec![b'x'; 1000].into(),
        last: false,
    };
    let start = Instant::now();
    let refused = BuildServiceClient::new(channel)
        .upload_source(futures::stream::iter([first]).chain(futures::stream::pending()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::DeadlineExceeded, "{refused:?}");
    assert!(refused.message().contains("nothing stored"), "{refused:?}");
    assert!(start.elapsed() < Duration::from_secs(15));

    let ((status, text), took) = slow.await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        took > Duration::from_secs(60),
        "the slow upload took {took:?}"
    );
    let stored = files_named(&build_dir, "slow.tgz");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(std::fs::metadata(&stored[0]).unwrap().len(), SLOW as u64);
    assert_eq!(
        files_named(&build_dir, "stalled.tgz"),
        Vec::<PathBuf>::new()
    );
    assert_eq!(
        files_named(&build_dir, "grpc-stalled.tgz"),
        Vec::<PathBuf>::new()
    );
}

/// Opens a websocket on `path`; the answer's status line's code.
async fn open_stream(addr: SocketAddr, path: &str) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        basic()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => seen.push(byte[0]),
            _ => break,
        }
    }
    (status_of(&String::from_utf8_lossy(&seen)), stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_gets_its_stream_cap_and_no_more() {
    slipway_telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let release = release_service(&dir.path().join("release")).await;
    // A build service whose log streams never end (nor send anything).
    let (silent, silent_addr) = loopback().await;
    let endless = axum::Router::new().route(
        "/slipway.build.v1.BuildService/WatchBuildLogs",
        axum::routing::post(|| async {
            axum::http::Response::builder()
                .header("content-type", "application/grpc")
                .body(axum::body::Body::from_stream(futures::stream::pending::<
                    Result<axum::body::Bytes, std::io::Error>,
                >()))
                .unwrap()
        }),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::from(endless))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(silent)),
    );
    let addr = gateway(
        &dir.path().join("gateway"),
        release,
        silent_addr,
        ConnectionArgs {
            max_streams_per_credential: 2,
            ..ConnectionArgs::default()
        },
        Duration::from_secs(10),
    )
    .await;
    let path = "/apps/app/builds/BABCDEFGHIJ/logs";
    let (first, one) = open_stream(addr, path).await;
    let (second, _two) = open_stream(addr, path).await;
    assert_eq!((first, second), (101, 101));
    let (third, mut refused) = open_stream(addr, path).await;
    assert_eq!(third, 429);
    // The answer is kept alive: read what arrives, not to the end.
    let mut body = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&body).ends_with("try again\n") {
        match tokio::time::timeout(Duration::from_secs(5), refused.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => body.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("too many open streams"), "{body}");
    // The cap is the credential's, over every stream route.
    let (logs, _) = open_stream(addr, "/apps/app/logs").await;
    assert_eq!(logs, 429);

    // Other requests are not streams and are not counted.
    timed_request(addr).await;

    // A stream that ends gives its place back.
    drop(one);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _stream) = open_stream(addr, path).await;
        if status == 101 {
            break;
        }
        assert_eq!(status, 429);
        assert!(
            Instant::now() < deadline,
            "a closed stream's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_and_finishes_requests_in_flight() {
    slipway_telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let release = release_service(&dir.path().join("release")).await;
    let (listener, addr) = loopback().await;
    let config = slipway_gateway::Config {
        password: Some(Secret::new(PASSWORD)),
        security: security(),
        ..slipway_gateway::Config::with_peers(
            addr,
            vec![release.to_string()],
            vec![dead_port().await.to_string()],
            vec![dead_port().await.to_string()],
            dir.path().join("gateway"),
        )
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(slipway_gateway::run(config, listener, async {
        let _ = stopped.await;
    }));
    wait_until_answering(addr).await;

    // An idle connection, and a request whose handler waits for its body
    // (the gateway's `100 Continue` says it does).
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut in_flight = TcpStream::connect(addr).await.unwrap();
    let body = "name=late";
    let head = format!(
        "POST /apps HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        basic(),
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        assert_eq!(in_flight.read(&mut byte).await.unwrap(), 1, "closed early");
        seen.push(byte[0]);
    }
    assert_eq!(status_of(&String::from_utf8_lossy(&seen)), 100);

    stop.send(()).unwrap();
    closed_by_server(&mut idle, Duration::from_secs(5)).await;
    in_flight.write_all(body.as_bytes()).await.unwrap();
    let (status, text) = answer(in_flight).await;
    assert_eq!(status, 200, "{text}");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("run returns once in-flight requests are done")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}
