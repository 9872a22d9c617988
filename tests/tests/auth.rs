//! Authentication fails closed: every route the gateway serves (listed from
//! its route table, so a new route is covered the day it is added), with
//! and without a websocket upgrade, with no, wrong and empty credentials,
//! answers 401 (a socket: the error inside the stream) and changes nothing.
//! Also: the failed-login throttle, cross-site refusals, uploads to apps
//! that do not exist, promotion events of another app, and a rack that
//! refuses to start without a real password.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use slipway_e2e::{TestRack, example};
use slipway_gateway::table::RouteKind;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A connection from a loopback address of the test's choosing: each
/// probe comes from its own source, as the throttle counts per source.
async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind a loopback source");
    socket.connect(addr).await.expect("connect to the gateway")
}

/// The n-th loopback source address (127.1.x.y).
fn source(n: u32) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::from(0x7f01_0000 + n))
}

/// The `Authorization` header line of the `convox` user with `password`.
fn basic(password: &str) -> String {
    format!(
        "Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(format!("convox:{password}"))
    )
}

#[derive(Clone, Copy, Debug)]
enum Credentials {
    None,
    Wrong,
    Empty,
}

impl Credentials {
    fn header(self) -> String {
        match self {
            Self::None => String::new(),
            Self::Wrong => basic("not-the-password-at-all"),
            Self::Empty => basic(""),
        }
    }
}

/// What came back: the status, the body, and for a websocket the text of
/// every TEXT frame until the stream ended.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
    frames: String,
}

/// Sends one request (optionally a complete websocket handshake) and reads
/// the answer to its end.
async fn probe(
    (addr, from): (SocketAddr, IpAddr),
    method: &str,
    target: &str,
    headers: &str,
    upgrade: bool,
    body: &[u8],
) -> Answer {
    let upgrade_headers = if upgrade {
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    } else {
        "Connection: close\r\n"
    };
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: rack\r\nUser-Agent: probe\r\n{headers}{upgrade_headers}\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let stream = &mut connect_from(from, addr).await;
    stream.write_all(head.as_bytes()).await.expect("write");
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let head_end = loop {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("an answer within 20s")
            .unwrap_or(0);
        if n == 0 {
            break raw.len();
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut rest = raw[head_end..].to_vec();
    if status == 101 {
        let frames = read_text_frames(stream, rest).await;
        return Answer {
            status,
            body: String::new(),
            frames,
        };
    }
    // Read to the end of the body, not of the connection: an upgrade
    // request that was refused may be kept alive.
    let lower = head.to_ascii_lowercase();
    let chunked = lower.contains("transfer-encoding: chunked");
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok());
    let complete = |rest: &[u8]| match length {
        Some(n) => rest.len() >= n,
        None => chunked && rest.ends_with(b"0\r\n\r\n"),
    };
    while !complete(&rest) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("the answer completes within 20s")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        rest.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&rest).into_owned();
    Answer {
        status,
        body: if chunked { dechunk(&body) } else { body },
        frames: String::new(),
    }
}

/// The payload of a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Server frames (unmasked) until a close frame, an empty BINARY frame
/// (the Convox end-of-stream) or the end of the connection.
async fn read_text_frames(stream: &mut TcpStream, mut buffered: Vec<u8>) -> String {
    let mut text = String::new();
    loop {
        // Parse as many whole frames as the buffer holds.
        loop {
            if buffered.len() < 2 {
                break;
            }
            let opcode = buffered[0] & 0x0f;
            let (len, offset) = match buffered[1] & 0x7f {
                126 if buffered.len() >= 4 => (
                    usize::from(u16::from_be_bytes([buffered[2], buffered[3]])),
                    4,
                ),
                127 if buffered.len() >= 10 => (
                    usize::try_from(u64::from_be_bytes(buffered[2..10].try_into().unwrap()))
                        .unwrap(),
                    10,
                ),
                126 | 127 => break,
                n => (usize::from(n), 2),
            };
            if buffered.len() < offset + len {
                break;
            }
            let payload: Vec<u8> = buffered.drain(..offset + len).skip(offset).collect();
            match opcode {
                0x1 => text.push_str(&String::from_utf8_lossy(&payload)),
                0x2 if payload.is_empty() => return text,
                0x8 => return text,
                _ => {}
            }
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("the stream ends within 20s")
            .unwrap_or(0);
        if n == 0 {
            return text;
        }
        buffered.extend_from_slice(&buf[..n]);
    }
}

/// What an authenticated reader sees of the rack: the state probes must
/// not change.
async fn snapshot(rack: &TestRack, data: &Path) -> Vec<String> {
    let mut seen = Vec::new();
    for target in [
        "/apps",
        "/apps/victim/releases",
        "/apps/victim/builds",
        "/apps/victim/processes",
        "/apps/ghost",
    ] {
        let (status, body) = rack.raw("GET", target, "", b"", &rack.password).await;
        seen.push(format!("{target} {status} {body}"));
    }
    let mut objects: Vec<String> = walk(&data.join("build").join("objects"));
    objects.sort();
    seen.extend(objects);
    seen
}

fn walk(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                found.push(format!("{} {len}", path.display()));
            }
        }
    }
    found
}

/// Deploys the example app as `victim` and builds a second release whose
/// promotion is then started, so the probes aim at real ids.
async fn victim(rack: &TestRack) -> (String, String, String) {
    let cwd = tempfile::tempdir().unwrap();
    let app = ["-a", "victim"];
    let created = rack
        .slipway(cwd.path(), &["apps", "create", "victim"])
        .await;
    assert!(created.status.success(), "{created:?}");
    let dir = example("myapp");
    let built = rack
        .slipway(
            cwd.path(),
            &["build", dir.to_str().unwrap(), app[0], app[1]],
        )
        .await;
    let out = String::from_utf8_lossy(&built.stdout).into_owned();
    assert!(built.status.success(), "{out}");
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| panic!("no {prefix} in {out}"))
    };
    let (build, release) = (field("Build:"), field("Release:"));
    let secret = rack
        .slipway(
            cwd.path(),
            &["env", "set", "CANARY_SECRET=hunter2-canary", app[0], app[1]],
        )
        .await;
    assert!(secret.status.success(), "{secret:?}");
    let (status, body) = rack
        .raw(
            "POST",
            &format!("/apps/victim/releases/{release}/promote"),
            "application/x-www-form-urlencoded",
            b"",
            &rack.password,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let promotion: serde_json::Value = serde_json::from_str(&body).expect("promotion JSON");
    let promotion = promotion["id"].as_str().expect("promotion id").to_owned();
    // Follow the rollout to its end, so nothing moves while probes run.
    let events = events(rack, "victim", &promotion, 0xfff0).await;
    assert!(events.frames.contains("is running"), "{events:?}");
    // The ledger records the outcome just after the last event.
    let active = format!("\"release\":\"{release}\"");
    slipway_e2e::eventually(
        Duration::from_secs(30),
        "the promotion recorded",
        || async {
            let (_, app) = rack
                .raw("GET", "/apps/victim", "", b"", &rack.password)
                .await;
            app.contains(&active).then_some(())
        },
    )
    .await;
    (build, release, promotion)
}

/// The promotion's event stream on `app`'s route, with the rack password,
/// from the `n`-th source, read to its end.
async fn events(rack: &TestRack, app: &str, promotion: &str, n: u32) -> Answer {
    probe(
        (rack.addr, source(n)),
        "GET",
        &format!("/apps/{app}/promotions/{promotion}/events"),
        &basic(&rack.password),
        true,
        b"",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_refuses_missing_wrong_and_empty_credentials() {
    let rack = TestRack::start().await;
    let (build, release, promotion) = victim(&rack).await;
    let data = rack.dir().join("rack");
    let before = snapshot(&rack, &data).await;
    assert!(
        before.iter().any(|l| l.contains("CANARY_SECRET")),
        "the snapshot sees the env it guards: {before:?}"
    );

    let config = slipway_gateway::Config::with_peers(
        rack.addr,
        vec![],
        vec![],
        vec![],
        data.join("gateway"),
    );
    let routes = slipway_gateway::table::routes(&config);
    assert!(routes.len() >= 25, "the route table is listed: {routes:?}");
    // Unknown paths and methods are judged before routing too.
    let extra = [
        ("GET", "/nothing/here".to_owned(), RouteKind::Api),
        ("PUT", "/apps/victim".to_owned(), RouteKind::Api),
    ];
    let targets = routes
        .iter()
        .map(|r| {
            let path = r
                .path
                .replace("{app}", "victim")
                .replace(
                    "{id}",
                    match r.path {
                        p if p.contains("/builds/") => &build,
                        p if p.contains("/promotions/") => &promotion,
                        _ => &release,
                    },
                )
                .replace("{service}", "web")
                .replace("{name}", "env")
                .replace("{*key}", "attack/source.tgz");
            (r.method.as_str(), path, r.kind)
        })
        .chain(extra);

    let mut n = 0;
    let mut checked = 0;
    for (method, path, kind) in targets {
        for upgrade in [false, true] {
            for credentials in [Credentials::None, Credentials::Wrong, Credentials::Empty] {
                n += 1;
                let body = b"name=evil&env=CANARY_SECRET%3Dstolen&description=x";
                let answer = probe(
                    (rack.addr, source(n)),
                    method,
                    &format!("{path}?"),
                    &credentials.header(),
                    upgrade,
                    body,
                )
                .await;
                let what = format!("{method} {path} upgrade={upgrade} {credentials:?}");
                assert!(
                    !answer.body.contains("hunter2") && !answer.frames.contains("hunter2"),
                    "{what} leaked the env: {answer:?}"
                );
                if upgrade && kind == RouteKind::Socket {
                    assert_eq!(answer.status, 101, "{what}: {answer:?}");
                    // The exec socket ends with the exit marker (status 1),
                    // so that `convox run`/`exec` exit non-zero.
                    let want = if path.ends_with("/exec") {
                        "ERROR: invalid authentication\nF1E49A85-0AD7-4AEF-A618-C249C6E6568D:1\n"
                    } else {
                        "ERROR: invalid authentication\n"
                    };
                    assert_eq!(
                        answer.frames, want,
                        "{what}: the failed login is reported in the stream"
                    );
                } else {
                    assert_eq!(answer.status, 401, "{what}: {answer:?}");
                    assert_eq!(answer.body, "invalid authentication\n", "{what}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, (routes.len() + 2) * 6);
    let after = snapshot(&rack, &data).await;
    assert_eq!(before, after, "no probe changed anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guesses_are_slowed_per_source_and_browsers_cannot_act_cross_site() {
    let rack = TestRack::start().await;
    let addr = rack.addr;
    let guesser = source(9000);
    let wrong = Credentials::Wrong.header();
    // The default burst (10) is answered 401, then the source must wait,
    // even with the right password (its guesses are not looked at).
    for i in 0..10 {
        let answer = probe((addr, guesser), "GET", "/apps", &wrong, false, b"").await;
        assert_eq!(answer.status, 401, "guess {i}: {answer:?}");
    }
    let right = basic(&rack.password);
    let answer = probe((addr, guesser), "GET", "/apps", &right, false, b"").await;
    assert_eq!(answer.status, 429, "{answer:?}");
    assert!(
        answer
            .body
            .starts_with("too many failed logins from this address: try again in "),
        "{answer:?}"
    );
    // Another source is not affected; the scheme is case-insensitive.
    let upper = right.replace("Basic ", "BASIC ");
    let answer = probe((addr, source(9001)), "GET", "/apps", &upper, false, b"").await;
    assert_eq!(answer.status, 200, "{answer:?}");

    // A browser sent by another site: refused before anything happens.
    for headers in [
        "Origin: http://evil.example\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
        "Origin: null\r\n",
    ] {
        let answer = probe(
            (addr, source(9002)),
            "POST",
            "/apps",
            &format!("{right}{headers}"),
            false,
            b"name=csrf",
        )
        .await;
        assert_eq!(answer.status, 403, "{headers}: {answer:?}");
        assert!(
            answer.body.starts_with("cross-site request refused"),
            "{answer:?}"
        );
        let answer = probe(
            (addr, source(9002)),
            "GET",
            "/apps/csrf/logs",
            &format!("{right}{headers}"),
            true,
            b"",
        )
        .await;
        assert_eq!(answer.status, 403, "upgrade {headers}: {answer:?}");
    }
    // The same origin (what the console will send) is fine.
    let answer = probe(
        (addr, source(9003)),
        "POST",
        "/apps",
        &format!("{right}Origin: http://rack\r\nSec-Fetch-Site: same-origin\r\n"),
        false,
        b"name=same-origin",
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let (_, apps) = rack.raw("GET", "/apps", "", b"", &rack.password).await;
    assert!(
        !apps.contains("csrf"),
        "no cross-site app was created: {apps}"
    );
    assert!(apps.contains("same-origin"), "{apps}");

    // Uploads need an app that exists; nothing is stored otherwise.
    let (status, body) = rack
        .raw(
            "POST",
            "/apps/ghost/objects/source.tgz",
            "application/octet-stream",
            b"not even a tarball",
            &rack.password,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("ghost"), "{body}");
    let objects = walk(&rack.dir().join("rack").join("build").join("objects"));
    assert!(objects.is_empty(), "nothing stored: {objects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promotion_events_belong_to_the_app_in_the_route() {
    let rack = TestRack::start().await;
    let (_, _, promotion) = victim(&rack).await;
    let created = rack
        .raw(
            "POST",
            "/apps",
            "application/x-www-form-urlencoded",
            b"name=other",
            &rack.password,
        )
        .await;
    assert_eq!(created.0, 200, "{created:?}");
    let answer = events(&rack, "other", &promotion, 1).await;
    assert_eq!(answer.status, 101, "{answer:?}");
    assert_eq!(
        answer.frames,
        format!("ERROR: promotion not found: {promotion}\n")
    );
    // Its own app's route streams it, to the end of the rollout.
    let answer = events(&rack, "victim", &promotion, 2).await;
    assert_eq!(answer.status, 101, "{answer:?}");
    assert!(
        answer.frames.contains("Status: Running => Pending")
            || answer.frames.contains("Deploying release"),
        "{answer:?}"
    );
    assert!(!answer.frames.contains("ERROR"), "{answer:?}");
}

/// Runs `slipway-rack` with `args` and `env`, expecting it to refuse to
/// start: exit 64 and one line naming the problem.
fn refused(data: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = std::process::Command::new(slipway_e2e::cluster::binary("slipway-rack"));
    command.arg("--data-dir").arg(data);
    if !args.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    command
        .args(args)
        .env_remove("SLIPWAY_PASSWORD")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("run slipway-rack");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(64), "{args:?} {env:?}: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("WARNING: --password"))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    lines[0].to_owned()
}

#[test]
fn a_rack_never_starts_without_a_real_password() {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let data = dir.path().join("rack");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let write = |text: &str| {
        let path = data.join("password");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    write("");
    let line = refused(&data, &[], &[]);
    assert!(
        line.contains("password file") && line.contains("is empty"),
        "{line}"
    );
    write("short\n");
    let line = refused(&data, &[], &[]);
    assert!(line.contains("too short (5 characters)"), "{line}");
    let line = refused(&data, &["--password", "fifteen-chars15"], &[]);
    assert!(line.contains("too short (15 characters)"), "{line}");
    // An empty variable counts as unset: the short file is refused.
    let line = refused(&data, &[], &[("SLIPWAY_PASSWORD", "")]);
    assert!(
        line.contains("empty") || line.contains("too short"),
        "{line}"
    );
    let line = refused(
        &data,
        &[
            "--insecure-no-auth",
            "--listen",
            "0.0.0.0:0",
            "--insecure-http",
        ],
        &[],
    );
    assert!(line.contains("loopback only"), "{line}");
}
