//! Real processes in the fake cluster: pods that run to completion
//! (`restartPolicy: Never`, as one-off processes are) and the `exec`
//! subresource.
//!
//! **Run-to-completion pods.** The kubelet runs the container's `command`
//! and `args` as a real local process, in a process group of its own, with
//! the pod's env: `envFrom` Secrets (a missing one leaves the pod `Pending`
//! with `CreateContainerConfigError`, as a real kubelet does) and then
//! `env`, over a minimal base (`PATH`, `HOME`, `HOSTNAME`). The pod is
//! `Running` (and Ready) while it runs, then `Succeeded` (exit 0) or
//! `Failed`, with the container's `terminated.exitCode`. Past
//! `activeDeadlineSeconds` (counted from its start) its processes are
//! killed and it is `Failed` with reason `DeadlineExceeded`. Deleting it
//! kills its processes (the main one and every exec) before it goes. A
//! container without a command runs the image's own, which the fake cannot:
//! it exits 1 for the image tag `crash` and 0 otherwise.
//!
//! **Exec** (`GET|POST /api/v1/namespaces/NS/pods/NAME/exec?command=…&command=…
//! &stdin=true&stdout=true&stderr=true`) is served over a websocket with
//! the Kubernetes channel framing: subprotocol `v5.channel.k8s.io` (or
//! `v4.channel.k8s.io`), binary messages whose first byte is the channel
//! (0 stdin, 1 stdout, 2 stderr, 3 the error channel, 255 close in v5: the
//! client's `[255, 0]` closes the command's stdin). On connection the
//! server sends one 1-byte message per open channel, as the real one does.
//! The command (an argv, not shell text) runs as a real local process with
//! the pod's env, for any `Running` pod (a Deployment's too); at its end the
//! error channel carries a `Status`: `Success`, or `Failure` with reason
//! `NonZeroExitCode` and `details.causes[{reason: ExitCode, message: "N"}]`
//! (a process killed by signal N exits 128+N, as container runtimes
//! report it), and the socket closes with the closing handshake. A client that goes away kills the
//! command. A pod that is missing is a 404 and one that is not running a
//! 400, before the upgrade, as the API server answers.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::controller::{record, tag};
use crate::store::{ApiError, Key, Store};
use crate::{Options, Shared};

/// The subprotocols served, preferred first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const CLOSE: u8 = 255;
/// How long the output of an ended command may still drain (a descendant
/// that left the process group can hold a pipe open).
const DRAIN: Duration = Duration::from_secs(2);

/// The real processes of one pod.
#[derive(Default)]
struct PodProcs {
    /// The main process's group, once started.
    main: Option<i32>,
    /// Its exit code once ended (128+N for signal N).
    exit: Option<i32>,
    /// Exec processes' groups.
    execs: Vec<i32>,
}

/// Every pod's processes, by [`run_key`]. Global, because the kubelet
/// only sees the store; the key includes the uid, so two fakes in one
/// test process do not mix.
static PROCS: LazyLock<Mutex<HashMap<String, PodProcs>>> = LazyLock::new(Mutex::default);

fn procs() -> std::sync::MutexGuard<'static, HashMap<String, PodProcs>> {
    PROCS.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_key(ns: &str, name: &str, pod: &Value) -> String {
    format!(
        "{ns}/{name}/{}",
        pod["metadata"]["uid"].as_str().unwrap_or_default()
    )
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn kill_group(pgid: i32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pgid), signal);
}

/// Kills every process of the pod; with `main`, its main process too.
fn kill_pod(key: &str, main: bool) {
    let mut map = procs();
    if let Some(p) = map.get_mut(key) {
        for pgid in p.execs.drain(..) {
            kill_group(pgid, Signal::SIGKILL);
        }
        if main
            && p.exit.is_none()
            && let Some(pgid) = p.main
        {
            kill_group(pgid, Signal::SIGKILL);
        }
    }
}

/// The exit code convention: the code, or 128+N for signal N.
fn exit_code(status: std::io::Result<std::process::ExitStatus>) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            _ => 1,
        },
        Err(_) => 1,
    }
}

/// The env a container of `pod` sees: `envFrom` Secrets, then `env`.
fn pod_env(store: &Store, ns: &str, pod: &Value) -> Result<Vec<(String, String)>, String> {
    let container = &pod["spec"]["containers"][0];
    let mut env = vec![
        (
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ),
        ("HOME".to_owned(), "/tmp".to_owned()),
        (
            "HOSTNAME".to_owned(),
            pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
    ];
    let engine = base64::engine::general_purpose::STANDARD;
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let Some(name) = from["secretRef"]["name"].as_str() else {
            continue;
        };
        let key = ("secrets".to_owned(), ns.to_owned(), name.to_owned());
        let secret = store
            .objects
            .get(&key)
            .ok_or_else(|| format!("secret \"{name}\" not found"))?;
        for (k, v) in secret["data"].as_object().into_iter().flatten() {
            let value = engine
                .decode(v.as_str().unwrap_or_default())
                .map_err(|e| format!("secret \"{name}\" key {k}: {e}"))?;
            env.push((k.clone(), String::from_utf8_lossy(&value).into_owned()));
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        if let Some(name) = e["name"].as_str() {
            env.push((
                name.to_owned(),
                e["value"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    Ok(env)
}

/// `argv` as a command with `env` (and nothing else), in a process group
/// of its own, in the system's temporary directory.
fn command(argv: &[String], env: &[(String, String)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(std::env::temp_dir())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// The kubelet for a pod that runs to completion; `false` if `k` is not
/// such a pod (the ordinary kubelet plays it).
pub(crate) fn kubelet(store: &mut Store, k: &Key, now: DateTime<Utc>, options: Options) -> bool {
    let Some(pod) = store.objects.get(k) else {
        return false;
    };
    if pod["spec"]["restartPolicy"] != "Never" {
        return false;
    }
    let mut pod = pod.clone();
    let (ns, name) = (k.1.clone(), k.2.clone());
    let key = run_key(&ns, &name, &pod);
    if let Some(deleted) = pod["metadata"]["deletionTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<DateTime<Utc>>().ok())
    {
        kill_pod(&key, true);
        let grace = pod["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30);
        let requested = deleted - chrono::Duration::seconds(grace);
        let stop = chrono::Duration::from_std(options.pod_stop)
            .unwrap_or_default()
            .min(chrono::Duration::seconds(grace));
        let main_gone = procs()
            .get(&key)
            .is_none_or(|p| p.main.is_none() || p.exit.is_some());
        if main_gone || now - requested >= stop {
            procs().remove(&key);
            store.commit("DELETED", k.clone(), pod);
        }
        return true;
    }
    if matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) {
        return true;
    }
    let container = pod["spec"]["containers"][0].clone();
    let cname = container["name"].as_str().unwrap_or_default().to_owned();
    let image = container["image"].as_str().unwrap_or_default().to_owned();
    let started = procs().get(&key).map(|p| (p.main.is_some(), p.exit));
    let started = match started {
        Some(state) => state,
        None => {
            // First sight: its env, then its process.
            let env = match pod_env(store, &ns, &pod) {
                Ok(env) => env,
                Err(message) => {
                    let status = json!({
                        "phase": "Pending", "qosClass": "BestEffort",
                        "containerStatuses": [{
                            "name": cname, "image": image, "imageID": "", "ready": false,
                            "restartCount": 0, "started": false,
                            "state": {"waiting": {"reason": "CreateContainerConfigError",
                                                  "message": message}},
                        }],
                    });
                    if status != pod["status"] {
                        record(store, &ns, ("Pod", &name), "Failed", &message, now);
                        pod["status"] = status;
                        store.commit("MODIFIED", k.clone(), pod);
                    }
                    return true;
                }
            };
            let argv: Vec<String> = container["command"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(container["args"].as_array().into_iter().flatten())
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            let mut p = PodProcs::default();
            if argv.is_empty() {
                p.exit = Some(i32::from(tag(&image) == "crash"));
            } else {
                match command(&argv, &env).stdin(Stdio::null()).spawn() {
                    Ok(mut child) => {
                        p.main = child.id().and_then(|id| i32::try_from(id).ok());
                        let key = key.clone();
                        tokio::spawn(async move {
                            let code = exit_code(child.wait().await);
                            if let Some(p) = procs().get_mut(&key) {
                                p.exit = Some(code);
                            }
                        });
                    }
                    Err(_) => p.exit = Some(127),
                }
            }
            procs().insert(key.clone(), p);
            for (reason, message) in [
                (
                    "Scheduled",
                    format!("Successfully assigned {ns}/{name} to fake-node"),
                ),
                (
                    "Pulled",
                    format!("Container image \"{image}\" already present on machine"),
                ),
                ("Created", format!("Created container: {cname}")),
                ("Started", format!("Started container {cname}")),
            ] {
                record(store, &ns, ("Pod", &name), reason, &message, now);
            }
            (true, procs().get(&key).and_then(|p| p.exit))
        }
    };
    let start = pod["status"]["startTime"]
        .as_str()
        .and_then(|t| t.parse::<DateTime<Utc>>().ok())
        .unwrap_or(now);
    let condition = |kind: &str, ok: bool| {
        json!({"type": kind, "status": if ok { "True" } else { "False" },
               "lastProbeTime": null, "lastTransitionTime": ts(now)})
    };
    let deadline = pod["spec"]["activeDeadlineSeconds"]
        .as_i64()
        .map(|s| start + chrono::Duration::seconds(s));
    let status = match started {
        (_, Some(code)) => {
            kill_pod(&key, false);
            json!({
                "phase": if code == 0 { "Succeeded" } else { "Failed" },
                "qosClass": "BestEffort", "startTime": ts(start),
                "conditions": [condition("Ready", false)],
                "containerStatuses": [{
                    "name": cname, "image": image, "imageID": "", "ready": false,
                    "restartCount": 0, "started": false,
                    "state": {"terminated": {"exitCode": code,
                        "reason": if code == 0 { "Completed" } else { "Error" },
                        "startedAt": ts(start), "finishedAt": ts(now)}},
                }],
            })
        }
        _ if deadline.is_some_and(|d| now >= d) => {
            kill_pod(&key, true);
            if let Some(p) = procs().get_mut(&key) {
                p.exit.get_or_insert(137);
            }
            record(
                store,
                &ns,
                ("Pod", &name),
                "DeadlineExceeded",
                "Pod was active on the node longer than the specified deadline",
                now,
            );
            json!({
                "phase": "Failed", "reason": "DeadlineExceeded",
                "message": "Pod was active on the node longer than the specified deadline",
                "qosClass": "BestEffort", "startTime": ts(start),
                "conditions": [condition("Ready", false)],
                "containerStatuses": [{
                    "name": cname, "image": image, "imageID": "", "ready": false,
                    "restartCount": 0, "started": false,
                    "state": {"terminated": {"exitCode": 137, "reason": "Error",
                        "startedAt": ts(start), "finishedAt": ts(now)}},
                }],
            })
        }
        _ => {
            if pod["status"]["phase"] == "Running" {
                return true;
            }
            json!({
                "phase": "Running", "qosClass": "BestEffort", "hostIP": "10.0.0.1",
                "podIP": "10.244.0.3", "startTime": ts(start),
                "conditions": [condition("PodScheduled", true), condition("Initialized", true),
                               condition("ContainersReady", true), condition("Ready", true)],
                "containerStatuses": [{
                    "name": cname, "image": image, "imageID": "", "ready": true,
                    "restartCount": 0, "started": true,
                    "state": {"running": {"startedAt": ts(start)}},
                }],
            })
        }
    };
    if status != pod["status"] {
        pod["status"] = status;
        store.commit("MODIFIED", k.clone(), pod);
    }
    true
}

/// What an exec request asks for.
struct ExecRequest {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: &str) -> ExecRequest {
    let mut request = ExecRequest {
        command: Vec::new(),
        stdin: false,
        stdout: false,
        stderr: false,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        let yes = matches!(v.as_str(), "true" | "1");
        match k {
            "command" => request.command.push(v),
            "stdin" => request.stdin = yes,
            "stdout" => request.stdout = yes,
            "stderr" => request.stderr = yes,
            _ => {}
        }
    }
    request
}

fn refuse(e: &ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(e.body())).into_response()
}

/// The `exec` subresource of pods.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let request = parse_query(query.as_deref().unwrap_or_default());
    let (env, key) = {
        let state = shared.lock();
        let store = &state.store;
        let k = ("pods".to_owned(), ns.clone(), name.clone());
        let Some(pod) = store.objects.get(&k) else {
            return refuse(&ApiError::not_found(&k));
        };
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        if phase != "Running" || pod["metadata"]["deletionTimestamp"].is_string() {
            return refuse(&ApiError::new(
                400,
                "BadRequest",
                format!(
                    "cannot exec into a container in a completed pod; current phase is {phase}"
                ),
            ));
        }
        match pod_env(store, &ns, pod) {
            Ok(env) => (env, run_key(&ns, &name, pod)),
            Err(message) => return refuse(&ApiError::new(400, "BadRequest", message)),
        }
    };
    if request.command.is_empty() {
        return refuse(&ApiError::new(
            400,
            "BadRequest",
            "you must specify at least 1 command",
        ));
    }
    let Ok(upgrade) = upgrade else {
        return refuse(&ApiError::new(
            400,
            "BadRequest",
            "Upgrade request required (websocket, subprotocol v5.channel.k8s.io or v4.channel.k8s.io)",
        ));
    };
    let upgrade = upgrade.protocols(PROTOCOLS);
    let v5 = match upgrade.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(p) => p == PROTOCOLS[0],
        None => {
            return refuse(&ApiError::new(
                400,
                "BadRequest",
                "no supported subprotocol: offer v5.channel.k8s.io or v4.channel.k8s.io",
            ));
        }
    };
    upgrade.on_upgrade(move |socket| session(socket, request, env, key, v5))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::Binary(bytes.into())
}

/// The error channel's `Status` for an exit code.
fn status(argv: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {}, "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            argv.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// Reads `pipe` into `out` as messages of `channel` until EOF.
fn pump(
    mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    channel: u8,
    out: mpsc::Sender<Message>,
) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if out.send(frame(channel, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

async fn session(
    mut socket: WebSocket,
    request: ExecRequest,
    env: Vec<(String, String)>,
    key: String,
    v5: bool,
) {
    let mut cmd = command(&request.command, &env);
    cmd.stdin(if request.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(if request.stdout {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stderr(if request.stderr {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    for (channel, open) in [
        (STDIN, request.stdin),
        (STDOUT, request.stdout),
        (STDERR, request.stderr),
        (ERROR, true),
    ] {
        if open && socket.send(frame(channel, &[])).await.is_err() {
            return;
        }
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let failure = json!({
                "metadata": {}, "status": "Failure", "reason": "InternalError",
                "message": format!("exec: {:?}: {e}", request.command[0]),
                "details": {"causes": [{"reason": "ExitCode", "message": "127"}]},
            });
            let _ = socket
                .send(frame(ERROR, failure.to_string().as_bytes()))
                .await;
            close(socket).await;
            return;
        }
    };
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());
    if let Some(pgid) = pgid {
        procs().entry(key.clone()).or_default().execs.push(pgid);
    }
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    if let Some(stdout) = child.stdout.take() {
        pump(stdout, STDOUT, out_tx.clone());
    }
    if let Some(stderr) = child.stderr.take() {
        pump(stderr, STDERR, out_tx.clone());
    }
    drop(out_tx);
    let mut stdin = child.stdin.take();
    let mut exited: Option<i32> = None;
    let mut output_done = false;
    let mut drain_until: Option<tokio::time::Instant> = None;
    let abandoned = loop {
        if exited.is_some() && output_done {
            break false;
        }
        let drain = async {
            match drain_until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Binary(bytes))) if !bytes.is_empty() => match bytes[0] {
                    STDIN => {
                        if let Some(pipe) = stdin.as_mut()
                            && pipe.write_all(&bytes[1..]).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    CLOSE if v5 && bytes.get(1) == Some(&STDIN) => stdin = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break true,
                Some(Ok(_)) => {}
            },
            message = out_rx.recv(), if !output_done => match message {
                Some(message) => {
                    if socket.send(message).await.is_err() {
                        break true;
                    }
                }
                None => output_done = true,
            },
            status = child.wait(), if exited.is_none() => {
                exited = Some(exit_code(status));
                drain_until = Some(tokio::time::Instant::now() + DRAIN);
            }
            () = drain => output_done = true,
        }
    };
    if let Some(pgid) = pgid {
        if abandoned {
            kill_group(pgid, Signal::SIGKILL);
        }
        if let Some(p) = procs().get_mut(&key) {
            p.execs.retain(|g| *g != pgid);
        }
    }
    if abandoned {
        return;
    }
    let code = exited.unwrap_or(1);
    let body = status(&request.command, code).to_string();
    let _ = socket.send(frame(ERROR, body.as_bytes())).await;
    close(socket).await;
}

/// How long the closing handshake waits for the client's Close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Ends a session with the websocket closing handshake: Close, then what
/// the client still sends read and dropped up to its own Close. Dropping
/// the connection with frames of the client unread (a late stdin frame,
/// the `[255, 0]` that ends stdin) makes the kernel answer with a reset,
/// which discards what was not yet sent: the status frame, now and then.
async fn close(mut socket: WebSocket) {
    if socket.send(Message::Close(None)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                return;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_decoded_with_repeated_commands() {
        let r =
            parse_query("command=sh&command=-c&command=echo%20%24FOO%3Bexit+3&stdin=true&stdout=1");
        assert_eq!(r.command, ["sh", "-c", "echo $FOO;exit 3"]);
        assert!(r.stdin && r.stdout && !r.stderr);
    }

    #[test]
    fn a_non_zero_exit_carries_its_code_as_a_cause() {
        let s = status(&["sh".into()], 42);
        assert_eq!(s["details"]["causes"][0]["message"], "42");
        assert_eq!(status(&[], 0)["status"], "Success");
    }
}
