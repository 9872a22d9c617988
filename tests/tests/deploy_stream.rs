//! `slipway deploy` and `releases promote` end with the promotion's event
//! stream: its last frame carries the result, so the CLI opens the stream
//! once, never asks for the promotion again, and prints what the stream
//! said. A counting proxy between the CLI and the rack sees every request
//! (client frames are masked, so only real request lines match) and the
//! stream's frames as the gateway sent them (server frames are not).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use slipway_e2e::{TestRack, example, ok_stdout};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One proxied connection: what the client sent and what it got back.
#[derive(Default)]
struct Connection {
    sent: Vec<u8>,
    received: Vec<u8>,
}

/// A TCP proxy to `target` that keeps every connection's bytes.
struct Proxy {
    addr: std::net::SocketAddr,
    connections: Arc<Mutex<Vec<Arc<Mutex<Connection>>>>>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<Arc<Mutex<Connection>>>>> = Arc::default();
        let all = connections.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let connection = Arc::new(Mutex::new(Connection::default()));
                all.lock().unwrap().push(connection.clone());
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = connection.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                        up.lock().unwrap().sent.extend_from_slice(&buf[..n]);
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = server_write.shutdown().await;
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                        connection
                            .lock()
                            .unwrap()
                            .received
                            .extend_from_slice(&buf[..n]);
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = client_write.shutdown().await;
                });
            }
        });
        Self { addr, connections }
    }

    /// The request targets the client sent whose path starts with `prefix`,
    /// each with what the server sent back on that connection.
    fn requests(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let needle = format!("GET {prefix}");
        let mut found = Vec::new();
        for connection in self.connections.lock().unwrap().iter() {
            let connection = connection.lock().unwrap();
            let sent = String::from_utf8_lossy(&connection.sent);
            for (at, _) in sent.match_indices(&needle) {
                let target = sent[at + 4..].split(' ').next().unwrap_or_default();
                found.push((target.to_owned(), connection.received.clone()));
            }
        }
        found
    }
}

/// The JSON frames in a websocket's server bytes that start with `{"<kind>"`.
fn frames(received: &[u8], kind: &str) -> Vec<Value> {
    let needle = format!("{{\"{kind}\":");
    let text = String::from_utf8_lossy(received);
    text.match_indices(&needle)
        .map(|(at, _)| {
            serde_json::Deserializer::from_str(&text[at..])
                .into_iter::<Value>()
                .next()
                .expect("a frame")
                .expect("a JSON frame")
        })
        .collect()
}

/// Runs `slipway args…` against the rack through `proxy`.
async fn slipway(
    rack: &TestRack,
    proxy: &Proxy,
    cwd: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    let url = rack
        .url
        .replace(&rack.addr.to_string(), &proxy.addr.to_string());
    let mut command = tokio::process::Command::new(slipway_e2e::slipway_binary());
    command
        .args(args)
        .current_dir(cwd)
        .env("RACK_URL", url)
        .env_remove("CONVOX_RACK")
        .stdin(std::process::Stdio::null());
    tokio::time::timeout(Duration::from_secs(240), command.output())
        .await
        .expect("slipway finishes")
        .expect("run slipway")
}

/// The promotion whose events the CLI followed (the one stream it opened).
fn the_one_stream(proxy: &Proxy) -> (String, Vec<u8>) {
    let mut streams: Vec<_> = proxy
        .requests("/apps/myapp/promotions/")
        .into_iter()
        .filter(|(target, _)| target.ends_with("/events"))
        .collect();
    assert_eq!(
        streams.len(),
        1,
        "one event stream, never reopened: {:?}",
        streams.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    let (target, received) = streams.remove(0);
    let id = target.split('/').nth(4).unwrap().to_owned();
    (id, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_ends_with_the_streams_result_frame() {
    let rack = TestRack::start().await;
    let proxy = Proxy::start(rack.addr).await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    ok_stdout(
        &slipway(&rack, &proxy, dir, &["apps", "create", "myapp"]).await,
        "apps create",
    );

    // Success: the printed event lines are the stream's, then OK.
    let app = example("myapp");
    let out = ok_stdout(
        &slipway(
            &rack,
            &proxy,
            dir,
            &["deploy", app.to_str().unwrap(), "-a", "myapp"],
        )
        .await,
        "deploy",
    );
    let (id, received) = the_one_stream(&proxy);
    let lines: String = frames(&received, "event")
        .iter()
        .map(|f| f["event"]["line"].as_str().unwrap().to_owned())
        .collect();
    assert!(!lines.is_empty(), "the rollout has events");
    let printed = out
        .split_once("\nPromoting ")
        .and_then(|(_, rest)| rest.split_once('\n'))
        .map(|(_, rest)| rest)
        .unwrap();
    assert_eq!(printed, format!("{lines}OK\n"), "{out}");
    let results = frames(&received, "result");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["result"]["state"], "succeeded");
    // The result came with the stream: the CLI never asked for it.
    let asked = proxy.requests(&format!("/apps/myapp/promotions/{id} "));
    assert!(asked.is_empty(), "no GET of promotion {id}");

    // A broken release rolls back: the reason printed is the result frame's.
    let broken = example("broken");
    let out = ok_stdout(
        &slipway(
            &rack,
            &proxy,
            dir,
            &["build", broken.to_str().unwrap(), "-a", "myapp"],
        )
        .await,
        "build broken",
    );
    let bad = out
        .lines()
        .find_map(|l| l.strip_prefix("Release: "))
        .unwrap()
        .to_owned();
    let before = proxy.connections.lock().unwrap().len();
    let out = slipway(
        &rack,
        &proxy,
        dir,
        &["releases", "promote", &bad, "-a", "myapp"],
    )
    .await;
    assert!(!out.status.success());
    // Only this command's connections from here on.
    proxy.connections.lock().unwrap().drain(..before);
    let (id, received) = the_one_stream(&proxy);
    let results = frames(&received, "result");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["result"]["state"], "rolled_back");
    let reason = results[0]["result"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("web"),
        "the reason names the service: {reason}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("ERROR: rollback: {reason}\n")
    );
    let asked = proxy.requests(&format!("/apps/myapp/promotions/{id} "));
    assert!(asked.is_empty(), "no GET of promotion {id}");
}
