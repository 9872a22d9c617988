//! One-off processes through requests shaped exactly like the `convox`
//! CLI's (reference `convox-rack-api-processes.md` §1-4: the holder POST,
//! the status polls, the exec socket's frames and exit marker, the DELETE),
//! and through the real `slipway` binary (`run`, `exec`, `ps`).

use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use slipway_e2e::{TestRack, eventually, ok_stdout, read_answer};
use tokio::io::AsyncWriteExt as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const MARKER: &str = "F1E49A85-0AD7-4AEF-A618-C249C6E6568D:";

/// An empty-body request with option headers, as `convox run` sends it.
async fn raw_with_headers(
    rack: &TestRack,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(rack.addr).await.unwrap();
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("convox:{}", rack.password));
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: convox.go/dev\r\nAccept: */*\r\n\
         Authorization: Basic {auth}\r\nContent-Type: application/octet-stream\r\nVersion: dev\r\n\
         Content-Length: 0\r\nConnection: close\r\n",
        rack.addr
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    read_answer(&mut stream).await
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// What an exec socket sent: the output text (all frames before the
/// marker), the marker frame, whether the end-of-stream followed it.
#[derive(Debug)]
struct Exchange {
    output: String,
    marker: Option<String>,
    ended: bool,
}

/// Opens the exec socket as the CLI does, sends `stdin` in text frames of
/// at most 1024 bytes and the empty binary frame, and reads to the end.
async fn exec(rack: &TestRack, pid: &str, headers: &[(&str, &str)], stdin: &[u8]) -> Exchange {
    let url = format!("ws://{}/apps/myapp/processes/{pid}/exec", rack.addr);
    let mut request = url.into_client_request().unwrap();
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("convox:{}", rack.password));
    request
        .headers_mut()
        .insert("Authorization", format!("Basic {auth}").parse().unwrap());
    for (name, value) in headers {
        let name: http::HeaderName = name.parse().unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    for chunk in stdin.chunks(1024) {
        let text = String::from_utf8(chunk.to_vec()).unwrap();
        socket.send(Message::Text(text.into())).await.unwrap();
    }
    socket
        .send(Message::Binary(Vec::new().into()))
        .await
        .unwrap();
    let mut exchange = Exchange {
        output: String::new(),
        marker: None,
        ended: false,
    };
    let read = async {
        while let Some(frame) = socket.next().await {
            match frame {
                Ok(Message::Text(text)) if text.starts_with(MARKER) => {
                    exchange.marker = Some(text.to_string())
                }
                Ok(Message::Text(text)) => {
                    assert!(
                        exchange.marker.is_none(),
                        "output after the marker: {text:?}"
                    );
                    exchange.output.push_str(&text);
                }
                Ok(Message::Binary(bytes)) if bytes.is_empty() => {
                    exchange.ended = true;
                    return;
                }
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the exec stream ends");
    exchange
}

/// Polls the process as `WaitForProcessRunning` does: 2 consecutive `running`.
async fn wait_running(rack: &TestRack, pid: &str) {
    let target = format!("/apps/myapp/processes/{pid}?");
    let mut running = 0;
    let start = std::time::Instant::now();
    while running < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the holder never ran"
        );
        let (status, body) = raw_with_headers(rack, "GET", &target, &[]).await;
        assert_eq!(status, 200, "{body}");
        running = if json(&body)["status"] == "running" {
            running + 1
        } else {
            0
        };
        // The CLI polls once a second; the test needs no such pace.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_off_processes_as_the_convox_cli_and_slipway_run_them() {
    let rack = TestRack::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    rack.app_deployed(dir, "myapp", "myapp").await;
    rack.slipway_ok(dir, &["apps", "create", "other"]).await;
    let (_, body) = raw_with_headers(&rack, "GET", "/apps/myapp?", &[]).await;
    let active = json(&body)["release"].as_str().unwrap().to_owned();
    // A staged release, not promoted.
    let out = rack
        .slipway_ok(dir, &["env", "set", "FOO=staged value", "-a", "myapp"])
        .await;
    let staged = out
        .split_whitespace()
        .find(|w| w.len() == 11 && w.starts_with('R') && *w != active)
        .unwrap_or_else(|| panic!("a release id in {out}"))
        .to_owned();

    // convox run web cat --release RNEW --timeout 600, stdin piped.
    let (status, body) = raw_with_headers(
        &rack,
        "POST",
        "/apps/myapp/services/web/processes?",
        &[
            ("Command", "sleep 600"),
            ("Release", &staged),
            ("Cpu", "512"),
            ("Memory", "1024"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let process = json(&body);
    let pid = process["id"].as_str().unwrap().to_owned();
    assert!(pid.starts_with("web-"), "{process}");
    assert_eq!(process["release"], staged.as_str());
    assert_eq!(process["command"], "sleep 600");
    wait_running(&rack, &pid).await;
    let (_, body) = raw_with_headers(&rack, "GET", "/apps/myapp/processes?", &[]).await;
    assert!(body.contains(&pid), "ps lists the holder: {body}");
    let exchange = exec(
        &rack,
        &pid,
        &[
            (
                "Command",
                "sh -c 'sed s/^/got:/; echo \"FOO=$FOO\"; exit 3'",
            ),
            ("Entrypoint", "false"),
            ("Tty", "false"),
        ],
        b"line1\nline2\n",
    )
    .await;
    assert_eq!(exchange.output, "got:line1\ngot:line2\nFOO=staged value\n");
    assert_eq!(exchange.marker.as_deref(), Some(&*format!("{MARKER}3\n")));
    assert!(exchange.ended, "{exchange:?}");
    // convox exec into the same holder: no Entrypoint header; 3000 bytes of
    // stdin in 1024-byte frames reach the command whole.
    let big = "x".repeat(2999) + "\n";
    let exchange = exec(
        &rack,
        &pid,
        &[("Command", "sh -c 'wc -c; exit 42'"), ("Tty", "false")],
        big.as_bytes(),
    )
    .await;
    assert_eq!(exchange.output.trim(), "3000");
    assert_eq!(exchange.marker.as_deref(), Some(&*format!("{MARKER}42\n")));
    // The CLI's DELETE ends the holder.
    let (status, body) = raw_with_headers(
        &rack,
        "DELETE",
        &format!("/apps/myapp/processes/{pid}?"),
        &[],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    eventually(Duration::from_secs(30), "the holder to end", || async {
        let (_, body) = raw_with_headers(&rack, "GET", "/apps/myapp/processes?", &[]).await;
        (!body.contains(&pid)).then_some(())
    })
    .await;
    // Exec into a process that is gone: the error text, then marker 1.
    let exchange = exec(&rack, &pid, &[("Command", "true"), ("Tty", "false")], b"").await;
    assert!(exchange.output.starts_with("ERROR: "), "{exchange:?}");
    assert_eq!(exchange.marker.as_deref(), Some(&*format!("{MARKER}1\n")));

    // --detach: the user's command is the process's; listed until it ends.
    let (status, body) = raw_with_headers(
        &rack,
        "POST",
        "/apps/myapp/services/web/processes?",
        &[("Command", "sleep 1")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let detached = json(&body)["id"].as_str().unwrap().to_owned();
    assert_eq!(
        json(&body)["release"],
        active.as_str(),
        "no Release: the active one"
    );
    let (_, body) = raw_with_headers(&rack, "GET", "/apps/myapp/processes?", &[]).await;
    assert!(body.contains("sleep 1"), "{body}");
    eventually(
        Duration::from_secs(30),
        "the detached process to complete",
        || async {
            let (_, body) = raw_with_headers(
                &rack,
                "GET",
                &format!("/apps/myapp/processes/{detached}?"),
                &[],
            )
            .await;
            (json(&body)["status"] == "complete").then_some(())
        },
    )
    .await;

    // Bad input: clear errors, nothing started.
    let before = raw_with_headers(&rack, "GET", "/apps/myapp/processes?", &[])
        .await
        .1;
    for (headers, path, want_status, want) in [
        (
            vec![("Command", "true"), ("Release", "RNOPENOPENO")],
            "/apps/myapp/services/web/processes?",
            404,
            "release not found: RNOPENOPENO",
        ),
        (
            vec![("Command", "true"), ("Release", "RNOPE")],
            "/apps/myapp/services/web/processes?",
            400,
            "invalid release id \"RNOPE\"",
        ),
        (
            vec![("Command", "true")],
            "/apps/myapp/services/nosuch/processes?",
            400,
            "no such service: nosuch",
        ),
        (
            vec![("Command", "true"), ("Release", staged.as_str())],
            "/apps/other/services/web/processes?",
            404,
            "release not found",
        ),
        (
            vec![("Command", "echo 'unclosed")],
            "/apps/myapp/services/web/processes?",
            400,
            "invalid command: a single quote is not closed",
        ),
        (
            vec![("Command", "true"), ("Timeout", "0")],
            "/apps/myapp/services/web/processes?",
            400,
            "invalid timeout",
        ),
        (
            vec![("Command", "true"), ("Timeout", "99999999")],
            "/apps/myapp/services/web/processes?",
            400,
            "out of range",
        ),
        (
            vec![("Command", "true")],
            "/apps/other/services/web/processes?",
            400,
            "app other has no active release",
        ),
    ] {
        let (status, body) = raw_with_headers(&rack, "POST", path, &headers).await;
        assert_eq!(status, want_status, "{headers:?}: {body}");
        assert!(body.contains(want), "{headers:?}: {body}");
    }
    let (status, body) =
        raw_with_headers(&rack, "GET", "/apps/myapp/processes/web-nope0?", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (404, "process not found: web-nope0\n")
    );
    let (status, _) =
        raw_with_headers(&rack, "DELETE", "/apps/myapp/processes/web-nope0?", &[]).await;
    assert_eq!(status, 404);
    assert_eq!(
        raw_with_headers(&rack, "GET", "/apps/myapp/processes?", &[])
            .await
            .1,
        before
    );

    // None of it touched the app: the active release is the same.
    let (_, body) = raw_with_headers(&rack, "GET", "/apps/myapp?", &[]).await;
    assert_eq!(json(&body)["release"], active.as_str());
    assert_eq!(json(&body)["status"], "running");

    slipway_cli(&rack, dir, &staged).await;
}

/// The same through `slipway run/exec/ps`.
async fn slipway_cli(rack: &TestRack, dir: &std::path::Path, staged: &str) {
    let run = |args: &[&str]| {
        let mut all = vec!["run", "-a", "myapp"];
        all.extend_from_slice(args);
        all.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let slipway = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rack.slipway(dir, &args).await
    };
    let out = slipway(run(&["web", "echo $FOO", "--release", staged])).await;
    assert_eq!(ok_stdout(&out, "run"), "staged value\n");
    for (command, want) in [("true", 0), ("exit 1", 1), ("exit 42", 42)] {
        let out = slipway(run(&["web", command])).await;
        assert_eq!(out.status.code(), Some(want), "{command}: {out:?}");
    }
    // stdin reaches the command.
    let mut child = tokio::process::Command::new(slipway_e2e::slipway_binary())
        .args(["run", "-a", "myapp", "web", "tr a-z A-Z"])
        .current_dir(dir)
        .env("RACK_URL", &rack.url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"piped in\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PIPED IN\n");

    // --detach returns at once; ps lists it with its command; ps stop ends it.
    let out = ok_stdout(
        &slipway(run(&["web", "sleep 300", "--detach"])).await,
        "run --detach",
    );
    assert!(
        out.starts_with("Running detached process... OK, web-"),
        "{out}"
    );
    let pid = out.trim().rsplit(' ').next().unwrap().to_owned();
    let ps = rack.slipway_ok(dir, &["ps", "-a", "myapp"]).await;
    let row = ps
        .lines()
        .find(|l| l.starts_with(&pid))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(row.contains("sleep 300"), "{ps}");
    let info = rack
        .slipway_ok(dir, &["ps", "info", &pid, "-a", "myapp"])
        .await;
    assert!(info.contains("Command   sleep 300"), "{info}");
    let out = rack
        .slipway_ok(dir, &["ps", "stop", &pid, "-a", "myapp"])
        .await;
    assert_eq!(out, format!("Stopping {pid}... OK\n"));
    eventually(
        Duration::from_secs(30),
        "the stopped process to go",
        || async {
            let ps = rack.slipway_ok(dir, &["ps", "-a", "myapp"]).await;
            (!ps.contains(&pid)).then_some(())
        },
    )
    .await;

    // exec into a running process of the app.
    let out = ok_stdout(
        &slipway(run(&["web", "sleep 300", "--detach"])).await,
        "run --detach",
    );
    let pid = out.trim().rsplit(' ').next().unwrap().to_owned();
    let out = rack
        .slipway(
            dir,
            &[
                "exec",
                &pid,
                "echo in $SLIPWAY_RELEASE; exit 5",
                "-a",
                "myapp",
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("in R"),
        "{out:?}"
    );

    // Ctrl-C stops the remote process.
    let mut child = tokio::process::Command::new(slipway_e2e::slipway_binary())
        .args(["run", "-a", "myapp", "web", "sleep 301"])
        .current_dir(dir)
        .env("RACK_URL", &rack.url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = eventually(Duration::from_secs(30), "the run to be listed", || async {
        let ps = rack.slipway_ok(dir, &["ps", "-a", "myapp"]).await;
        ps.lines()
            .find(|l| l.contains("sleep 301"))
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(130));
    eventually(
        Duration::from_secs(30),
        "the interrupted run to end",
        || async {
            let ps = rack.slipway_ok(dir, &["ps", "-a", "myapp"]).await;
            (!ps.contains(&pid)).then_some(())
        },
    )
    .await;

    // The timeout kills it.
    let out = slipway(run(&["web", "sleep 300", "--timeout", "1"])).await;
    assert_ne!(out.status.code(), Some(0), "{out:?}");

    // Bad input.
    let out = slipway(run(&["nosuch", "true"])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ERROR: no such service: nosuch"),
        "{out:?}"
    );
    let out = slipway(run(&["web", "true", "--release", "RNOPENOPENO"])).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ERROR: release not found: RNOPENOPENO"),
        "{out:?}"
    );
    let out = slipway(run(&["web", "true", "--timeout", "0"])).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ERROR: invalid timeout"),
        "{out:?}"
    );
    let out = rack
        .slipway(dir, &["ps", "stop", "web-nope0", "-a", "myapp"])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ERROR: process not found: web-nope0"),
        "{out:?}"
    );
}
