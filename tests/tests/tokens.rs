//! Scoped tokens through the gateway: every credential (the rack
//! password, read / deploy / admin tokens in and out of scope, an unknown,
//! a revoked and an expired token) against a table of routes, HTTP and
//! websocket, with 200/403/401 as the role decides and the ledger unchanged
//! after each refusal; the `slipway` CLI with a token in RACK_URL; a
//! canary token that never reaches the database, the data dir or a log
//! line; and a revoke that ends the token's open log stream.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use slipway_e2e::{TestRack, eventually, ok_stdout, slipway_binary};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const FORM: &str = "application/x-www-form-urlencoded";

/// Creates a token with the rack password; returns its value.
async fn token(rack: &TestRack, name: &str, role: &str, apps: &str, expires: &str) -> String {
    let body = format!("name={name}&role={role}&apps={apps}&expires={expires}");
    let (status, answer) = rack
        .raw("POST", "/tokens", FORM, body.as_bytes(), &rack.password)
        .await;
    assert_eq!(status, 200, "create token {name}: {answer}");
    let created: serde_json::Value = serde_json::from_str(&answer).expect("token JSON");
    let value = created["value"].as_str().expect("a value").to_owned();
    assert!(
        value.starts_with("slp_") && value.len() >= 4 + 22,
        "{value}"
    );
    value
}

/// One request like [`TestRack::raw`], from loopback source number `n`
/// (127.2.x.y): the failed-login throttle counts per source, and the
/// matrix makes hundreds of failed logins on purpose.
async fn raw_from(
    rack: &TestRack,
    n: u32,
    method: &str,
    target: &str,
    body: &[u8],
    password: &str,
) -> (u16, String) {
    let source = std::net::Ipv4Addr::from(0x7f02_0000 + n);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::new(source.into(), 0))
        .expect("bind a loopback source");
    let mut stream = socket.connect(rack.addr).await.expect("connect");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("convox:{password}"));
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: convox.go/dev\r\n\
         Authorization: Basic {auth}\r\nContent-Type: {FORM}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        rack.addr,
        body.len()
    );
    use tokio::io::AsyncWriteExt as _;
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(body).await;
    slipway_e2e::read_answer(&mut stream).await
}

/// What the rack's state looks like to the password: apps, the ledger of
/// `web`, its promotions, and the tokens.
async fn ledger(rack: &TestRack) -> Vec<String> {
    let mut seen = Vec::new();
    for target in [
        "/apps",
        "/apps/web/releases?limit=100",
        "/apps/web/promotions",
        "/apps/api/releases?limit=100",
        "/tokens",
    ] {
        let (status, body) = rack.raw("GET", target, "", b"", &rack.password).await;
        // Last-used times move on their own; everything else must not.
        let body = if target == "/tokens" {
            let mut tokens: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
            for t in &mut tokens {
                t["last-used"] = serde_json::Value::Null;
            }
            serde_json::to_string(&tokens).unwrap()
        } else {
            body
        };
        seen.push(format!("{target} {status} {body}"));
    }
    seen
}

/// A websocket request with `password` as Basic credentials: the text of
/// its frames until the stream ends (at most 10 s, then what came).
async fn socket_text(rack: &TestRack, path: &str, password: &str) -> String {
    let (mut ws, _) = open_socket(rack, path, password).await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, ws.next()).await {
        match frame {
            Message::Text(t) => text.push_str(&t),
            Message::Binary(b) if b.is_empty() => break,
            Message::Close(_) => break,
            _ => {}
        }
    }
    text
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_socket(rack: &TestRack, path: &str, password: &str) -> (Socket, u16) {
    let mut request = format!("ws://{}{path}", rack.addr)
        .into_client_request()
        .unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("convox:{password}"));
    request
        .headers_mut()
        .insert("authorization", format!("Basic {auth}").parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket handshake");
    (ws, response.status().as_u16())
}

/// (role needed, app or None, method, target, body)
type Route<'a> = (&'a str, Option<&'a str>, &'a str, String, &'a [u8]);

/// (label, password, role (None: refused), apps it covers (None: every app))
type Credential<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a [&'a str]>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Served: neither 401 nor 403 (the handler may still refuse the
    /// input, with 400 or 404: authorisation passed).
    Served,
    /// 403 naming the token, its role and what is needed.
    Forbidden,
    /// 401.
    Unauthorized,
}

#[tokio::test(flavor = "multi_thread")]
async fn every_credential_gets_what_its_role_allows_and_refusals_change_nothing() {
    let rack = TestRack::start().await;
    let pw = rack.password.clone();
    for app in ["web", "api"] {
        let (status, body) = rack
            .raw("POST", "/apps", FORM, format!("name={app}").as_bytes(), &pw)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = rack
        .raw("POST", "/apps/web/releases", FORM, b"env=A%3D1", &pw)
        .await;
    assert_eq!(status, 200, "{body}");
    let release: serde_json::Value = serde_json::from_str(&body).unwrap();
    let release = release["id"].as_str().unwrap().to_owned();

    let reader = token(&rack, "reader", "read", "web", "").await;
    let deployer = token(&rack, "deployer", "deploy", "web,web-*", "").await;
    let other = token(&rack, "other", "deploy", "api", "").await;
    let admin = token(&rack, "boss", "admin", "", "").await;
    let revoked = token(&rack, "gone", "admin", "", "").await;
    let expiring = token(&rack, "brief", "admin", "", "1s").await;
    let (status, body) = rack.raw("DELETE", "/tokens/gone", "", b"", &pw).await;
    assert_eq!(status, 200, "{body}");
    let unknown = format!("slp_{}", "A".repeat(43));
    // The revoke and the expiry reach the gateway's table within seconds
    // (each probe from a source of its own: failed logins are throttled).
    let probes = std::sync::atomic::AtomicU32::new(50_000);
    eventually(
        Duration::from_secs(15),
        "the revoked and expired tokens refused",
        || {
            let (rack, probes) = (&rack, &probes);
            let (revoked, expiring) = (revoked.clone(), expiring.clone());
            async move {
                let n = probes.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
                let a = raw_from(rack, n, "GET", "/apps", b"", &revoked).await.0;
                let b = raw_from(rack, n + 1, "GET", "/apps", b"", &expiring)
                    .await
                    .0;
                (a == 401 && b == 401).then_some(())
            }
        },
    )
    .await;

    // (role needed, app or None, method, target, body)
    let promote = format!("/apps/web/releases/{release}/promote");
    let rollback = format!("/apps/web/releases/{release}/rollback");
    let routes: Vec<Route<'_>> = vec![
        ("read", None, "GET", "/apps".into(), b""),
        ("read", Some("web"), "GET", "/apps/web".into(), b""),
        ("read", Some("web"), "GET", "/apps/web/releases".into(), b""),
        ("read", Some("web"), "GET", "/apps/web/builds".into(), b""),
        (
            "read",
            Some("web"),
            "GET",
            "/apps/web/processes".into(),
            b"",
        ),
        (
            "read",
            Some("web"),
            "GET",
            "/apps/web/promotions".into(),
            b"",
        ),
        ("read", Some("web"), "GET", "/audit?app=web".into(), b""),
        ("admin", None, "GET", "/audit".into(), b""),
        ("admin", None, "POST", "/apps".into(), b"name=Bad_Name"),
        (
            "admin",
            Some("web"),
            "DELETE",
            "/apps/web-ghost".into(),
            b"",
        ),
        ("admin", Some("web"), "DELETE", "/apps/web".into(), b""),
        (
            "deploy",
            Some("web"),
            "POST",
            "/apps/web/releases".into(),
            b"env=B%3D2",
        ),
        ("deploy", Some("web"), "POST", "/apps/web/env".into(), b"{}"),
        ("deploy", Some("web"), "POST", promote.clone(), b""),
        ("deploy", Some("web"), "POST", rollback.clone(), b""),
        (
            "deploy",
            Some("web"),
            "POST",
            "/apps/web/cancel".into(),
            b"",
        ),
        (
            "deploy",
            Some("web"),
            "POST",
            "/apps/web/builds".into(),
            b"",
        ),
        (
            "deploy",
            Some("web"),
            "PUT",
            "/apps/web/services/web".into(),
            b"count=x",
        ),
        (
            "deploy",
            Some("web"),
            "POST",
            "/apps/web/services/web/restart".into(),
            b"",
        ),
        (
            "deploy",
            Some("web"),
            "POST",
            "/apps/web/services/web/processes".into(),
            b"",
        ),
        (
            "deploy",
            Some("web"),
            "DELETE",
            "/apps/web/processes/nope".into(),
            b"",
        ),
        (
            "deploy",
            Some("web"),
            "POST",
            "/apps/web/objects/tmp/x.tgz".into(),
            b"x",
        ),
        ("admin", None, "GET", "/tokens".into(), b""),
        (
            "admin",
            None,
            "POST",
            "/tokens".into(),
            b"name=Bad&role=read",
        ),
        ("admin", None, "DELETE", "/tokens/nobody".into(), b""),
    ];
    let rank = |role: &str| match role {
        "read" => 0,
        "deploy" => 1,
        _ => 2,
    };
    // (label, password, role, apps it covers (None: every app))
    let credentials: Vec<Credential<'_>> = vec![
        ("password", pw.as_str(), Some("admin"), None),
        ("token boss", admin.as_str(), Some("admin"), None),
        (
            "token deployer",
            deployer.as_str(),
            Some("deploy"),
            Some(&["web"]),
        ),
        (
            "token reader",
            reader.as_str(),
            Some("read"),
            Some(&["web"]),
        ),
        (
            "token other",
            other.as_str(),
            Some("deploy"),
            Some(&["api"]),
        ),
        ("unknown", unknown.as_str(), None, None),
        ("revoked", revoked.as_str(), None, None),
        ("expired", expiring.as_str(), None, None),
    ];
    let mut checked = 0;
    for (label, password, role, scope) in &credentials {
        for (need, app, method, target, body) in &routes {
            // Deleting web for real would end the matrix: only the admin
            // credentials' refusals of it are skipped (they are allowed).
            let expect = match role {
                None => Expect::Unauthorized,
                Some(role) => {
                    let covered = match (app, scope) {
                        (_, None) => true,
                        (Some(app), Some(apps)) => apps.contains(app),
                        (None, Some(_)) => *need == "read",
                    };
                    if rank(role) >= rank(need) && covered {
                        Expect::Served
                    } else {
                        Expect::Forbidden
                    }
                }
            };
            if expect == Expect::Served && *method == "DELETE" && target == "/apps/web" {
                continue;
            }
            let before = ledger(&rack).await;
            let (status, answer) = raw_from(&rack, checked, method, target, body, password).await;
            let what = format!("{label} {method} {target}: {status} {answer}");
            match expect {
                Expect::Served => assert!(
                    status != 401 && status != 403 && status != 0,
                    "expected served: {what}"
                ),
                Expect::Forbidden => {
                    assert_eq!(status, 403, "expected 403: {what}");
                    assert!(
                        answer.contains(label),
                        "the refusal names the token: {what}"
                    );
                    assert!(
                        answer.contains(&format!("has role {}", role.unwrap())),
                        "the refusal names the role: {what}"
                    );
                    assert!(answer.contains(&format!("needs {need}")), "{what}");
                    assert_eq!(
                        ledger(&rack).await,
                        before,
                        "a refusal changed state: {what}"
                    );
                }
                Expect::Unauthorized => {
                    assert_eq!(status, 401, "expected 401: {what}");
                    assert_eq!(ledger(&rack).await, before, "a 401 changed state: {what}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 150, "{checked} cases");

    // The exact sentence of the issue.
    let (status, answer) = rack.raw("DELETE", "/apps/web", "", b"", &deployer).await;
    assert_eq!(status, 403);
    assert_eq!(
        answer.trim(),
        "token deployer has role deploy on web, web-*; deleting apps needs admin"
    );
    // A scoped token lists only its apps.
    let (_, apps) = rack.raw("GET", "/apps", "", b"", &other).await;
    let apps: Vec<serde_json::Value> = serde_json::from_str(&apps).unwrap();
    let names: Vec<&str> = apps.iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, ["api"]);

    // Websockets: a log stream is a read, exec needs deploy; refusals come
    // inside the stream, as a failed login does.
    let logs = socket_text(&rack, "/apps/web/logs", &reader).await;
    assert!(!logs.contains("ERROR: token"), "{logs}");
    let logs = socket_text(&rack, "/apps/web/logs", &other).await;
    assert!(
        logs.contains("ERROR: token other has role deploy on api, not on web"),
        "{logs}"
    );
    let exec = socket_text(&rack, "/apps/web/processes/p1/exec", &reader).await;
    assert!(
        exec.contains(
            "token reader has role read on web; running commands in processes needs deploy"
        ),
        "{exec}"
    );
    let exec = socket_text(&rack, "/apps/web/processes/p1/exec", &deployer).await;
    assert!(!exec.contains("needs deploy"), "{exec}");
    let refused = socket_text(&rack, "/apps/web/logs", &revoked).await;
    assert!(
        refused.contains("ERROR: invalid authentication"),
        "{refused}"
    );

    // The trail names each change's actor and source, and the refusals.
    let (status, trail) = rack.raw("GET", "/audit?limit=1000", "", b"", &pw).await;
    assert_eq!(status, 200, "{trail}");
    let trail: Vec<serde_json::Value> = serde_json::from_str(&trail).unwrap();
    let find = |actor: &str, action: &str| {
        trail
            .iter()
            .find(|r| r["actor"] == actor && r["action"].as_str().unwrap_or("").starts_with(action))
            .cloned()
    };
    let created = find("token:deployer", "release.create").expect("the deployer's release");
    assert!(
        created["source"].as_str().unwrap().starts_with("127."),
        "{created}"
    );
    assert!(find("password", "token.create").is_some(), "{trail:?}");
    assert!(find("password", "token.revoke").is_some(), "{trail:?}");
    // Refusals are recorded in the background.
    eventually(Duration::from_secs(10), "a denied record", || async {
        let (_, trail) = rack.raw("GET", "/audit?limit=1000", "", b"", &pw).await;
        let trail: Vec<serde_json::Value> = serde_json::from_str(&trail).unwrap();
        trail
            .iter()
            .any(|r| r["actor"] == "token:reader" && r["outcome"] == "denied")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_works_with_a_token_as_its_password_and_says_why_not() {
    let rack = TestRack::start().await;
    let cwd = tempfile::tempdir().unwrap();
    rack.slipway_ok(cwd.path(), &["apps", "create", "web"])
        .await;
    let created = rack
        .slipway_ok(
            cwd.path(),
            &[
                "tokens",
                "create",
                "ci-web",
                "--role",
                "deploy",
                "--apps",
                "web",
                "--expires",
                "30d",
            ],
        )
        .await;
    let deploy = created.trim().to_owned();
    assert!(deploy.starts_with("slp_"), "{created}");
    let read = rack
        .slipway_ok(cwd.path(), &["tokens", "create", "dash", "--role", "read"])
        .await
        .trim()
        .to_owned();
    let listed = rack.slipway_ok(cwd.path(), &["tokens"]).await;
    assert!(
        listed.contains("ci-web") && listed.contains("deploy") && listed.contains("dash"),
        "{listed}"
    );
    assert!(
        !listed.contains(&deploy) && !listed.contains(&read),
        "{listed}"
    );

    let with = |token: &str| rack.url.replace(&rack.password, token);
    let run = |url: String, args: &'static [&'static str]| {
        let dir = cwd.path().to_owned();
        async move {
            let mut command = tokio::process::Command::new(slipway_binary());
            command
                .args(args)
                .current_dir(dir)
                .env("RACK_URL", url)
                .env_remove("CONVOX_RACK")
                .stdin(std::process::Stdio::null());
            command.output().await.expect("run slipway")
        }
    };
    // A deploy token changes the env of its app.
    let out = run(with(&deploy), &["env", "set", "A=1", "-a", "web"]).await;
    ok_stdout(&out, "env set with a deploy token");
    // A read token reads it, and is told why it cannot change it.
    let out = run(with(&read), &["env", "-a", "web"]).await;
    assert!(ok_stdout(&out, "env with a read token").contains("A=1"));
    let out = run(with(&read), &["env", "set", "B=2", "-a", "web"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("token dash has role read on every app;")
            && stderr.contains("needs deploy"),
        "{stderr}"
    );
    let out = run(with(&deploy), &["apps", "delete", "web"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("token ci-web has role deploy on web; deleting apps needs admin"),
        "{stderr}"
    );
    // The audit command shows who did what.
    let trail = rack
        .slipway_ok(cwd.path(), &["audit", "-a", "web", "--since", "1h"])
        .await;
    assert!(
        trail.contains("token:ci-web") && trail.contains("env"),
        "{trail}"
    );
    // Revoked: the CLI is refused.
    rack.slipway_ok(cwd.path(), &["tokens", "revoke", "ci-web"])
        .await;
    eventually(
        Duration::from_secs(15),
        "the revoked token refused",
        || async {
            let out = run(with(&deploy), &["apps"]).await;
            (!out.status.success()).then_some(())
        },
    )
    .await;
}

/// Collects every log line of the process (nextest runs each test in a
/// process of its own).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn files_containing(
    dir: &std::path::Path,
    needle: &[u8],
    found: &mut Vec<String>,
    seen: &mut usize,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_containing(&path, needle, found, seen);
        } else if let Ok(bytes) = std::fs::read(&path) {
            *seen += 1;
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_token_never_reaches_the_database_the_data_dir_or_a_log() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .expect("the only subscriber of this process");
    let rack = TestRack::start().await;
    let canary = token(&rack, "canary", "deploy", "web", "").await;
    let secret = canary.trim_start_matches("slp_").to_owned();
    let (status, _) = rack
        .raw("POST", "/apps", FORM, b"name=web", &rack.password)
        .await;
    assert_eq!(status, 200);
    // Used for reads, a change, a refusal and a socket; then revoked.
    assert_eq!(rack.raw("GET", "/apps/web", "", b"", &canary).await.0, 200);
    assert_eq!(
        rack.raw("POST", "/apps/web/releases", FORM, b"env=K%3Dv", &canary)
            .await
            .0,
        200
    );
    assert_eq!(
        rack.raw("DELETE", "/apps/web", "", b"", &canary).await.0,
        403
    );
    let _ = socket_text(&rack, "/apps/web/logs?", &canary).await;
    let (status, _) = rack
        .raw("DELETE", "/tokens/canary", "", b"", &rack.password)
        .await;
    assert_eq!(status, 200);
    // Let the batched last-used report and a refused use happen too.
    eventually(Duration::from_secs(20), "the token refused", || async {
        (rack.raw("GET", "/apps", "", b"", &canary).await.0 == 401).then_some(())
    })
    .await;
    let data = rack.dir().to_owned();
    let (mut found, mut seen) = (Vec::new(), 0);
    files_containing(&data, secret.as_bytes(), &mut found, &mut seen);
    drop(rack);
    assert!(seen > 0, "no file under {}", data.display());
    assert!(found.is_empty(), "the canary token is in {found:?}");
    let logs = captured.0.lock().unwrap().clone();
    let _ = std::io::stderr().write_all(b"");
    assert!(logs.len() > 1000, "hardly any log lines were captured");
    assert!(
        !logs.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the canary token is in a log line"
    );
    let text = String::from_utf8_lossy(&logs);
    assert!(
        text.contains("token created"),
        "the logs name the token instead"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_token_ends_its_open_log_stream() {
    let rack = TestRack::start().await;
    let pw = rack.password.clone();
    let (status, _) = rack.raw("POST", "/apps", FORM, b"name=web", &pw).await;
    assert_eq!(status, 200);
    let watcher = token(&rack, "watcher", "read", "web", "").await;
    let keeper = token(&rack, "keeper", "read", "web", "").await;
    let (mut revoked_stream, status) = open_socket(&rack, "/apps/web/logs", &watcher).await;
    assert_eq!(status, 101);
    let (mut kept_stream, _) = open_socket(&rack, "/apps/web/logs", &keeper).await;
    // Both are open and following: nothing ends them for a while.
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), revoked_stream.next())
            .await
            .is_err(),
        "the stream ended before the revoke"
    );
    let (status, body) = rack.raw("DELETE", "/tokens/watcher", "", b"", &pw).await;
    assert_eq!(status, 200, "{body}");
    let revoked_at = tokio::time::Instant::now();
    let mut text = String::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), revoked_stream.next())
            .await
            .expect("the stream ends within 15 s of the revoke");
        match frame {
            Some(Ok(Message::Text(t))) => text.push_str(&t),
            Some(Ok(Message::Binary(b))) if b.is_empty() => break,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            _ => {}
        }
    }
    assert!(
        text.contains("ERROR: the credentials of this stream were revoked or expired"),
        "{text}"
    );
    assert!(revoked_at.elapsed() < Duration::from_secs(15));
    // The other token's stream is still open.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), kept_stream.next())
            .await
            .is_err(),
        "revoking one token ended another's stream"
    );
}
