//! PostgreSQL unreachable for 20 s under load (issue 17), on the scale setup
//! as processes: every service reaches PostgreSQL through one relay that
//! the test cuts (every connection dropped, new ones answered as by a
//! PostgreSQL starting up) and restores; the machine's PostgreSQL, which
//! other tests use, is never stopped. While the writers keep going through
//! both gateways, a write either waits within its deadline or fails with
//! the clear "database unavailable, retrying" answer; once PostgreSQL
//! answers again the same processes serve without a restart; and every
//! acknowledged write is in the ledger exactly once.

use std::time::Duration;

use slipway_e2e::cluster::{Cluster, ClusterOptions, Relay, postgres_addr};
use slipway_e2e::load::{self, Load};

/// How long PostgreSQL stays unreachable: the outage.
const OUTAGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_20_s_postgres_outage_under_load_loses_no_acknowledged_write() {
    let relay = Relay::start(postgres_addr()).await;
    let cluster = Cluster::start_via(ClusterOptions::default(), Some(relay.addr)).await;
    let (status, body) = load::send(
        cluster.addr("gateway-a"),
        "POST",
        "/apps",
        "name=myapp",
        None,
    )
    .await
    .expect("create the app");
    assert_eq!(status, 200, "apps create: {body}");

    let writes = Load::start(&cluster, "myapp", 2, Duration::from_millis(50));
    writes
        .progress(10, Duration::from_secs(60), "writes before the outage")
        .await;
    relay.cut().await;
    // The fault's own length, not a wait for a condition.
    tokio::time::sleep(OUTAGE).await;
    relay.restore().await;
    let at_restore = writes.tally.acked();
    writes
        .progress(
            20,
            Duration::from_secs(60),
            "writes once PostgreSQL answers again",
        )
        .await;
    let tally = writes.finish().await;

    // The outage was felt: writes failed, or waited it out.
    let failed = tally.failed();
    let slowest = tally
        .latencies
        .lock()
        .unwrap()
        .iter()
        .copied()
        .max()
        .unwrap_or_default();
    eprintln!(
        "{} acknowledged, {} failed, slowest acknowledged {slowest:?}",
        tally.acked(),
        failed.len()
    );
    assert!(
        !failed.is_empty() || slowest >= Duration::from_secs(1),
        "the outage changed nothing: did the services reach PostgreSQL another way?"
    );
    // Every failure is the clear answer of a write sent while PostgreSQL
    // was away.
    for failure in &failed {
        assert!(
            failure.contains("503") && failure.contains("database unavailable, retrying"),
            "a write failed otherwise: {failure}\n{}",
            cluster.logs()
        );
    }
    assert!(
        tally.acked() >= at_restore + 20,
        "the services did not serve again without a restart"
    );
    // A write whose answer was lost with its connection may have applied
    // (once); every acknowledged one is there exactly once.
    load::check_env_writes(&cluster, "myapp", &tally, true, false).await;
}
