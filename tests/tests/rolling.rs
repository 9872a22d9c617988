//! Rolling restarts (issue 17) on the scale setup as processes: every
//! service stopped with SIGTERM and started again on its address, one after
//! the other, under steady writes through both gateways, costs no request
//! and loses or doubles no ledger entry; and a rollout in flight when its
//! rollout replica is stopped is handed over at once (not after its lease
//! runs out), while the CLI's promotion stream, across restarts of both
//! rollout replicas and both release replicas, prints every event once.

use std::time::{Duration, Instant};

use slipway_e2e::cluster::{Cluster, ClusterOptions, SERVICES};
use slipway_e2e::load::{self, Load};
use slipway_e2e::{eventually, example};

/// Creates `app` through gateway A.
async fn create_app(cluster: &Cluster, app: &str) {
    let (status, body) = load::send(
        cluster.addr("gateway-a"),
        "POST",
        "/apps",
        &format!("name={app}"),
        None,
    )
    .await
    .expect("create the app");
    assert!(status == 200, "apps create {app}: {status} {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_every_service_under_load_fails_no_request() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    create_app(&cluster, "myapp").await;
    let load = Load::start(&cluster, "myapp", 2, Duration::from_millis(20));
    load.progress(10, Duration::from_secs(60), "writes before the restarts")
        .await;
    for name in SERVICES {
        let started = Instant::now();
        cluster.restart(name).await;
        eprintln!("restarted {name} in {:?}", started.elapsed());
        // The load goes on (and reaches the restarted replica again)
        // before the next one stops.
        load.progress(
            6,
            Duration::from_secs(60),
            &format!("writes after restarting {name}"),
        )
        .await;
    }
    let tally = load.finish().await;
    let failed = tally.failed();
    assert!(
        failed.is_empty(),
        "{} requests failed during the rolling restart: {failed:?}\n{}",
        failed.len(),
        cluster.logs()
    );
    let rows = load::check_env_writes(&cluster, "myapp", &tally, false, false).await;
    assert_eq!(
        rows.len(),
        tally.acked(),
        "releases beyond the acknowledged writes"
    );
    eprintln!(
        "{} writes, {} resent to the other gateway, p99 {:?}",
        tally.acked(),
        tally.resent.load(std::sync::atomic::Ordering::SeqCst),
        load::percentile(&tally.latencies.lock().unwrap(), 99.0)
    );
}

/// The (id, owner, epoch, lease expiry in µs) of the newest rollout of `app`.
async fn newest_rollout(cluster: &Cluster, app: &str) -> Option<(String, String, i64, i64)> {
    let db = slipway_storage::connect(&cluster.rollout_db, &Default::default())
        .await
        .expect("connect to the rollout database");
    let row: Option<(String, Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT id, owner, epoch, lease_expires FROM rollouts WHERE app = $1 \
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(app)
    .fetch_optional(&db.pool)
    .await
    .expect("query rollouts");
    db.pool.close().await;
    row.map(|(id, owner, epoch, lease)| (id, owner.unwrap_or_default(), epoch, lease))
}

/// The durable events of `rollout`, oldest first, as `source message`.
async fn rollout_events(cluster: &Cluster, rollout: &str) -> Vec<String> {
    let db = slipway_storage::connect(&cluster.rollout_db, &Default::default())
        .await
        .expect("connect to the rollout database");
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT source, message FROM rollout_events WHERE rollout_id = $1 ORDER BY seq",
    )
    .bind(rollout)
    .fetch_all(&db.pool)
    .await
    .expect("read rollout events");
    db.pool.close().await;
    rows.into_iter()
        .map(|(source, message)| format!("{source} {message}"))
        .collect()
}

/// A lease long enough that a takeover after expiry cannot pass for a
/// hand-over.
const LONG_LEASE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_rollout_replica_hands_its_rollout_over_and_the_stream_prints_each_event_once() {
    let mut cluster = Cluster::start_with_lease(ClusterOptions::default(), LONG_LEASE).await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    cluster
        .ok(
            "gateway-a",
            dir,
            &["apps", "create", "myapp"],
            "apps create",
        )
        .await;
    let good = example("myapp");
    cluster
        .ok(
            "gateway-a",
            dir,
            &["deploy", good.to_str().unwrap(), "-a", "myapp"],
            "first deploy",
        )
        .await;
    let namespace = "scale-myapp";
    let generation_before = cluster
        .deployment(namespace, "web")
        .expect("Deployment web")["metadata"]["generation"]
        .as_i64()
        .unwrap();
    // The promotion's rollout is held in Updating while replicas restart.
    let (_, promote) = cluster.start_held_promotion(dir, "myapp").await;
    let (rollout, owner, epoch, lease) = eventually(
        Duration::from_secs(60),
        "the rollout to be applied",
        || async {
            let generation =
                cluster.deployment(namespace, "web")?["metadata"]["generation"].as_i64()?;
            let (id, owner, epoch, lease) = newest_rollout(&cluster, "myapp").await?;
            (generation > generation_before && !owner.is_empty())
                .then_some((id, owner, epoch, lease))
        },
    )
    .await;

    // SIGTERM the owner: it hands the lease back as it drains, and a
    // replica takes the rollout at once, long before the lease would run
    // out.
    let stopped_at = Instant::now();
    let status = cluster.stop(&owner).await;
    assert!(status.success(), "{owner} exited with {status}");
    let (new_owner, new_epoch) = eventually(
        LONG_LEASE * 2,
        "another replica to take the rollout",
        || async {
            let (id, owner_now, epoch_now, _) = newest_rollout(&cluster, "myapp").await?;
            (id == rollout && epoch_now > epoch).then_some((owner_now, epoch_now))
        },
    )
    .await;
    let handed_over = stopped_at.elapsed();
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    eprintln!(
        "{owner} stopped; {new_owner} took {rollout} (epoch {new_epoch}) {handed_over:?} after \
         SIGTERM, {} ms before the old lease would have run out",
        (lease - now_micros) / 1000
    );
    assert!(
        now_micros < lease,
        "the rollout was taken only after the stopped owner's lease ran out \
         ({handed_over:?}): no hand-over\n{}",
        cluster.logs()
    );
    cluster.start_again(&owner).await;

    // Both release replicas and the other rollout replica restart too,
    // one by one, while the rollout is still in flight.
    let survivor = if owner == "rollout-a" {
        "rollout-b"
    } else {
        "rollout-a"
    };
    for name in ["release-a", "release-b", survivor] {
        cluster.restart(name).await;
    }

    cluster.pause_deployments(false);
    let output = tokio::time::timeout(Duration::from_secs(120), promote.wait_with_output())
        .await
        .expect("promote finishes")
        .expect("promote output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "promote failed across the restarts:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.logs()
    );

    // Every durable event of the rollout reached the CLI exactly as often
    // as it was recorded, and no phase change was recorded twice.
    let events = rollout_events(&cluster, &rollout).await;
    assert!(
        events
            .iter()
            .any(|e| e.ends_with("Status: Updating => Running")),
        "the rollout did not finish: {events:#?}"
    );
    for event in &events {
        let recorded = events.iter().filter(|e| *e == event).count();
        let printed = stdout
            .lines()
            .filter(|l| l.ends_with(event.as_str()))
            .count();
        assert_eq!(
            printed, recorded,
            "{event:?} recorded {recorded} times, printed {printed} times:\n{stdout}"
        );
        if event.contains("Status: ") {
            assert_eq!(recorded, 1, "{event:?} recorded twice: {events:#?}");
        }
    }
    assert!(stdout.trim_end().ends_with("OK"), "{stdout}");

    // Applied once: the hand-over's re-apply was a no-op.
    let after = cluster.deployment(namespace, "web").unwrap();
    assert_eq!(
        after["metadata"]["generation"].as_i64().unwrap(),
        generation_before + 1,
        "the new release's template must be applied once"
    );
}
