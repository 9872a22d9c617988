//! `slipway logs` (the Convox `GET /apps/{app}/logs` stream) followed
//! through a gateway of the scale setup survives restarts of the rollout
//! service that serves it (issue 17): both rollout replicas stopped with
//! SIGTERM and started again, then both SIGKILLed and started again, while
//! the app's log gets lines before, during and after each; the CLI prints
//! every line once, in order, none lost and none twice. The lines are
//! written to the app's log on the event bus (Redis) directly, as a
//! process's output is, so they keep coming while no rollout replica runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_e2e::cluster::{Cluster, ClusterOptions};
use slipway_e2e::{eventually, load};
use slipway_events::{EventBus as _, NewEvent, RedisBus, RedisConfig};
use tokio::io::AsyncBufReadExt as _;

const APP: &str = "logapp";
const SOURCE: &str = "service/web/web-1";

/// Writes lines `range` to the app's log.
async fn write(bus: &RedisBus, range: std::ops::Range<u32>) {
    for n in range {
        bus.publish(NewEvent::now(APP, SOURCE, format!("line {n:04}")))
            .await
            .expect("publish a log line");
    }
}

/// The numbered lines the CLI printed so far, in order.
fn printed(out: &Mutex<Vec<String>>) -> Vec<u32> {
    out.lock()
        .unwrap()
        .iter()
        .filter_map(|l| l.split_once(&format!(" {SOURCE} line ")))
        .map(|(_, n)| n.trim().parse().expect("a line number"))
        .collect()
}

/// Waits until the CLI printed line `n`.
async fn until_printed(out: &Arc<Mutex<Vec<String>>>, n: u32, what: &str) {
    eventually(Duration::from_secs(90), what, || {
        let out = out.clone();
        async move { printed(&out).contains(&n).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_followed_log_survives_rollout_restarts_with_every_line_once() {
    let options = ClusterOptions::default();
    let redis_url = options.redis_url.clone().expect("the scale setup's Redis");
    let mut cluster = Cluster::start(options).await;
    let (status, body) = load::send(
        cluster.addr("gateway-a"),
        "POST",
        "/apps",
        &format!("name={APP}"),
        None,
    )
    .await
    .expect("create the app");
    assert_eq!(status, 200, "apps create: {body}");
    let bus = RedisBus::new(RedisConfig::new(redis_url, cluster.redis_prefix.clone()))
        .expect("a bus on the setup's Redis");

    // Before the stream opens: its backlog.
    write(&bus, 0..5).await;
    let cwd = tempfile::tempdir().unwrap();
    let mut cli = cluster
        .slipway_command("gateway-a", cwd.path(), &["logs", "-a", APP])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start slipway logs");
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut lines = tokio::io::BufReader::new(cli.stdout.take().unwrap()).lines();
    let reader = {
        let out = out.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                out.lock().unwrap().push(line);
            }
        })
    };
    until_printed(&out, 4, "the backlog").await;
    write(&bus, 5..10).await;
    until_printed(&out, 9, "live lines").await;

    // SIGTERM: each replica ends its streams as it starts draining; lines
    // written while neither runs come after the restart.
    cluster.stop("rollout-a").await;
    write(&bus, 10..13).await;
    cluster.stop("rollout-b").await;
    write(&bus, 13..16).await;
    cluster.start_again("rollout-a").await;
    cluster.start_again("rollout-b").await;
    write(&bus, 16..20).await;
    until_printed(&out, 19, "lines after the SIGTERM restarts").await;

    // SIGKILL: the streams just break.
    cluster.kill("rollout-a").await;
    write(&bus, 20..23).await;
    cluster.kill("rollout-b").await;
    write(&bus, 23..26).await;
    cluster.start_again("rollout-b").await;
    cluster.start_again("rollout-a").await;
    write(&bus, 26..30).await;
    until_printed(&out, 29, "lines after the SIGKILL restarts").await;

    let _ = cli.start_kill();
    let _ = cli.wait().await;
    reader.abort();
    // The stream did break and was resumed (not merely left open).
    let logs = cluster.logs();
    assert!(
        logs.contains("app log stream broke, resuming on the next rollout replica"),
        "the gateway never resumed the log stream:\n{logs}"
    );
    let got = printed(&out);
    let want: Vec<u32> = (0..30).collect();
    assert_eq!(
        got,
        want,
        "each line once, in order; the CLI printed:\n{}\n{}",
        out.lock().unwrap().join("\n"),
        cluster.logs()
    );
}
