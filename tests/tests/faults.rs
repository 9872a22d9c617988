//! Faults users never see (issue 17), on the scale setup as processes (two
//! gateways, two release replicas, two rollout replicas, one build service,
//! PostgreSQL, Redis): while two writers change env through both gateways,
//! a release replica is SIGKILLed, or a gateway is. No acknowledged write is
//! lost or applied twice, and no write fails but those in flight on a killed
//! gateway, which the client sends again with the same `Idempotency-Key`
//! to the other gateway and which then apply once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use slipway_e2e::cluster::{Cluster, ClusterOptions};
use slipway_e2e::load::{self, Tally};

/// Writes per writer.
const WRITES: usize = 60;
/// Acknowledged writes (of both writers) before the fault.
const FAULT_AFTER: usize = 12;

/// Writer `w`: `WRITES` env changes `W<w>_<i>=<i>`, each with its own
/// idempotency key, first to `gateways[w % 2]`; a request without an answer
/// goes to the other gateway with the same key (the client is pointed at both).
async fn writer(w: usize, gateways: [SocketAddr; 2], tally: Arc<Tally>) {
    for i in 0..WRITES {
        let var = format!("W{w}_{i}");
        let key = format!("faults-{w}-{i}-{}", uuid::Uuid::new_v4().simple());
        let body = format!(r#"{{"set":{{"{var}":"{i}"}},"unset":[]}}"#);
        let started = Instant::now();
        let (answer, resent) =
            load::send_keyed(gateways, w, "POST", "/apps/myapp/env", &body, Some(&key)).await;
        tally.resent.fetch_add(resent, Ordering::SeqCst);
        tally.record(var, answer, started);
    }
}

/// Runs two writers and applies `fault` once `FAULT_AFTER` writes were
/// acknowledged; then checks the ledger.
async fn writes_through(cluster: &mut Cluster, fault: &[&str]) -> Arc<Tally> {
    let gateways = [cluster.addr("gateway-a"), cluster.addr("gateway-b")];
    let (status, body) = load::send(gateways[0], "POST", "/apps", "name=myapp", None)
        .await
        .expect("create the app");
    assert!(
        status == 200 || body.contains("myapp"),
        "apps create: {status} {body}"
    );
    let tally = Arc::new(Tally::default());
    let writers: Vec<_> = (0..2)
        .map(|w| tokio::spawn(writer(w, gateways, tally.clone())))
        .collect();
    slipway_e2e::eventually(Duration::from_secs(60), "writes before the fault", || {
        let n = tally.acked.lock().unwrap().len();
        async move { (n >= FAULT_AFTER).then_some(()) }
    })
    .await;
    for name in fault {
        cluster.kill(name).await;
    }
    let at_fault = tally.acked.lock().unwrap().len();
    assert!(
        at_fault + 20 <= 2 * WRITES,
        "the fault came too late to matter ({at_fault} writes done)"
    );
    for w in writers {
        tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .expect("writers finish")
            .unwrap();
    }
    let failed = tally.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "writes failed after killing {fault:?}: {failed:?}\n{}",
        cluster.logs()
    );
    check_ledger(cluster, &tally).await;
    tally
}

/// Every acknowledged change is in the ledger exactly once, as the release
/// that acknowledged it, and the newest release carries every variable.
async fn check_ledger(cluster: &Cluster, tally: &Tally) {
    let db = slipway_storage::connect(&cluster.release_db, &Default::default())
        .await
        .expect("connect to the release database");
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT r.id, r.description FROM releases r JOIN apps a ON a.id = r.app_id \
         WHERE a.name = 'myapp' ORDER BY r.seq",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read the ledger");
    db.pool.close().await;
    let acked = tally.acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 2 * WRITES, "every write acknowledged");
    for (var, release) in &acked {
        let made: Vec<&String> = rows
            .iter()
            .filter(|(_, d)| d == &format!("env add:{var}"))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(made, [release], "{var} applied {} times", made.len());
    }
    assert_eq!(
        rows.len(),
        2 * WRITES,
        "releases beyond the writes: {rows:?}"
    );
    let (status, newest) = load::send(
        cluster.addr("gateway-b"),
        "GET",
        "/apps/myapp/releases?limit=1",
        "",
        None,
    )
    .await
    .expect("list releases");
    assert_eq!(status, 200, "{newest}");
    for var in acked.keys() {
        assert!(
            newest.contains(&format!("{var}=")),
            "{var} missing in the newest release: {newest}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_replica_killed_under_load_costs_no_write() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    writes_through(&mut cluster, &["release-a"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_other_release_replica_and_a_gateway_killed_under_load_cost_no_write() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let tally = writes_through(&mut cluster, &["release-b", "gateway-a"]).await;
    // Writer 0 was on gateway A: its next request found it gone and went to B.
    assert!(
        tally.resent.load(Ordering::SeqCst) > 0,
        "no request was resent after gateway A died"
    );
}

/// Builds per writer in the build-service test.
const BUILDS: usize = 16;

/// Writer `w` of builds: `BUILDS` CreateBuilds described `B<w>_<i>`, each
/// with its own key, first to `gateways[w % 2]`; a request without an
/// answer, or answered 502/503 (the gateway could not reach the build
/// service in time), goes again with the same key to the other gateway.
async fn builder(w: usize, gateways: [SocketAddr; 2], url: String, tally: Arc<Tally>) {
    for i in 0..BUILDS {
        let description = format!("B{w}_{i}");
        let key = format!("builds-{w}-{i}-{}", uuid::Uuid::new_v4().simple());
        let body = format!("url={url}&description={description}");
        let started = Instant::now();
        let (answer, resent) = load::send_keyed_retrying(
            gateways,
            w,
            "POST",
            "/apps/myapp/builds",
            &body,
            Some(&key),
            &[502, 503],
        )
        .await;
        tally.resent.fetch_add(resent, Ordering::SeqCst);
        tally.record(description, answer, started);
    }
}

/// A gzip'd tar of a web app with its manifest.
fn source() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, body, mode) in [
        (
            "convox.yml",
            "services:\n  web:\n    build: .\n    command: ./run.sh\n    port: 3000\n",
            0o644,
        ),
        ("run.sh", "#!/bin/sh\nexec sleep 600\n", 0o755),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(mode);
        tar.append_data(&mut header, name, body.as_bytes()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_build_service_killed_under_load_costs_no_build() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let gateways = [cluster.addr("gateway-a"), cluster.addr("gateway-b")];
    let (status, body) = load::send(gateways[0], "POST", "/apps", "name=myapp", None)
        .await
        .expect("create the app");
    assert_eq!(status, 200, "apps create: {body}");
    let (status, object) = load::send(
        gateways[1],
        "POST",
        "/apps/myapp/objects/tmp/faults.tgz",
        source(),
        None,
    )
    .await
    .expect("upload the source");
    assert_eq!(status, 200, "upload: {object}");
    let url = serde_json::from_str::<serde_json::Value>(&object).unwrap()["Url"]
        .as_str()
        .unwrap()
        .to_owned();

    let tally = Arc::new(Tally::default());
    let writers: Vec<_> = (0..2)
        .map(|w| tokio::spawn(builder(w, gateways, url.clone(), tally.clone())))
        .collect();
    slipway_e2e::eventually(Duration::from_secs(60), "builds before the fault", || {
        let n = tally.acked.lock().unwrap().len();
        async move { (n >= 4).then_some(()) }
    })
    .await;
    cluster.kill("build").await;
    let at_fault = tally.acked.lock().unwrap().len();
    assert!(
        at_fault + 8 <= 2 * BUILDS,
        "the fault came too late to matter ({at_fault} builds made)"
    );
    cluster.start_again("build").await;
    for w in writers {
        tokio::time::timeout(Duration::from_secs(180), w)
            .await
            .expect("writers finish")
            .unwrap();
    }
    let failed = tally.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "builds failed after killing the build service: {failed:?}\n{}",
        cluster.logs()
    );
    // Every acknowledged build exists once, as the build that acknowledged it.
    let (status, list) = load::send(
        gateways[0],
        "GET",
        "/apps/myapp/builds?limit=1000",
        "",
        None,
    )
    .await
    .expect("list builds");
    assert_eq!(status, 200, "{list}");
    let builds: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    let acked = tally.acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 2 * BUILDS, "every build acknowledged");
    for (description, id) in &acked {
        let made: Vec<&str> = builds
            .iter()
            .filter(|b| b["description"] == description.as_str())
            .filter_map(|b| b["id"].as_str())
            .collect();
        assert_eq!(
            made,
            [id.as_str()],
            "{description} made {} times",
            made.len()
        );
    }
    assert_eq!(builds.len(), 2 * BUILDS, "builds beyond the requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_pointed_at_both_gateways_survives_losing_one() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let both = format!(
        "{},{}",
        cluster.rack_url("gateway-a"),
        cluster.rack_url("gateway-b")
    );
    let slipway = |args: &[&str]| {
        let mut command = tokio::process::Command::new(slipway_e2e::cluster::binary("slipway"));
        command
            .args(args)
            .current_dir(dir.path())
            .env("RACK_URL", &both)
            .env_remove("CONVOX_RACK")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    };
    let ok = |output: std::process::Output, what: &str| {
        assert!(
            output.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    ok(
        slipway(&["apps", "create", "myapp"])
            .output()
            .await
            .unwrap(),
        "apps create",
    );
    ok(
        slipway(&["env", "set", "BEFORE=1", "-a", "myapp"])
            .output()
            .await
            .unwrap(),
        "env set before",
    );
    // Gateway A (first in the list) gone: the CLI goes on through B.
    cluster.kill("gateway-a").await;
    for i in 0..3 {
        ok(
            slipway(&["env", "set", &format!("AFTER{i}=1"), "-a", "myapp"])
                .output()
                .await
                .unwrap(),
            "env set after gateway A died",
        );
    }
    let env = ok(
        slipway(&["env", "-a", "myapp"]).output().await.unwrap(),
        "env",
    );
    for var in ["BEFORE=1", "AFTER0=1", "AFTER1=1", "AFTER2=1"] {
        assert!(env.contains(var), "{var} missing: {env}");
    }
    let releases = ok(
        slipway(&["releases", "-a", "myapp", "--limit", "20"])
            .output()
            .await
            .unwrap(),
        "releases",
    );
    for var in ["BEFORE", "AFTER0", "AFTER1", "AFTER2"] {
        let n = releases.matches(&format!("env add:{var}")).count();
        assert_eq!(n, 1, "{var} applied {n} times: {releases}");
    }
}
