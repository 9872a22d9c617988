//! PostgreSQL unreachable (issue 17), for the rollout service: its pool
//! reaches PostgreSQL through the relay of `slipway_storage::testing` that
//! the test cuts and restores. A call during a short outage waits and is
//! answered; one outliving the pool's wait fails with UNAVAILABLE
//! "database unavailable, retrying"; the same process answers again
//! afterwards, without a restart.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use slipway_api::rollout::v1 as pb;
use slipway_storage::testing::relay::{Relay, postgres_addr, through};

use crate::helpers::{connect, promotion_id, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_then_back() {
    let db = slipway_storage::testing::postgres().await;
    let relay = Relay::start(postgres_addr()).await;
    let url = through(&db.url, relay.addr);
    let (addr, _release, _stop, _dir) = serve(|config| {
        config.store.database_url = Some(url.into());
    })
    .await;
    let mut client = connect(addr).await;
    let get = |n| pb::GetRolloutRequest {
        id: promotion_id("myapp", n),
    };
    // Up (it migrates before serving): an unknown rollout is NOT_FOUND.
    let mut answered = None;
    for _ in 0..400 {
        match client.get_rollout(get(1)).await {
            Err(status) if status.code() == tonic::Code::NotFound => {
                answered = Some(status);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    answered.expect("the rollout service answers");

    // A short outage: the call waits for the database, then is answered.
    relay.cut().await;
    let refused_before = relay.refused.load(Ordering::SeqCst);
    let waiting = tokio::spawn({
        let mut client = client.clone();
        async move { client.get_rollout(get(2)).await }
    });
    relay.await_refused(refused_before + 2).await;
    assert!(
        !waiting.is_finished(),
        "answered with PostgreSQL unreachable"
    );
    relay.restore().await;
    let status = waiting.await.unwrap().expect_err("no such rollout");
    // Its answer once PostgreSQL is back; on a loaded machine the pool's
    // reconnect can outlast the call's deadline, and then the answer is the
    // clear error, never another.
    assert!(
        status.code() == tonic::Code::NotFound
            || (status.code() == tonic::Code::Unavailable
                && status.message() == slipway_storage::UNAVAILABLE_MESSAGE),
        "{status:?}"
    );

    // A long one: the clear error, within the deadline.
    relay.cut().await;
    let started = Instant::now();
    let status = client.get_rollout(get(3)).await.expect_err("no database");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("database unavailable, retrying"),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    // Back, without a restart.
    relay.restore().await;
    let status = client
        .get_rollout(get(4))
        .await
        .expect_err("no such rollout");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}
