//! PostgreSQL unreachable (issue 17), for the build service: its pool
//! reaches PostgreSQL through the relay of `slipway_storage::testing` that
//! the test cuts and restores. A call during a short outage waits and
//! succeeds; one outliving the pool's wait fails with UNAVAILABLE
//! "database unavailable, retrying"; the same process serves again
//! afterwards, and what it acknowledged is there once.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use slipway_api::build::v1 as pb;
use slipway_storage::testing::Backend;
use slipway_storage::testing::relay::{Relay, postgres_addr, through};

use crate::helpers::{Tarball, TestApp, WEB};

fn create(url: &str, description: &str) -> pb::CreateBuildRequest {
    pb::CreateBuildRequest {
        app: "myapp".into(),
        source_url: url.into(),
        description: description.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_then_back() {
    let relay = Relay::start(postgres_addr()).await;
    let addr = relay.addr;
    let app = TestApp::spawn_with(Backend::Postgres, None, |config| {
        let url = config
            .store
            .database_url
            .as_ref()
            .unwrap()
            .expose()
            .to_owned();
        config.store.database_url = Some(through(&url, addr).into());
    })
    .await;
    let url = app
        .upload("myapp", &Tarball::source(WEB, &[]))
        .await
        .unwrap();
    let mut client = app.client.clone();

    // A short outage: the call waits for the database and succeeds.
    relay.cut().await;
    let refused_before = relay.refused.load(Ordering::SeqCst);
    let waiting = tokio::spawn({
        let mut client = client.clone();
        let request = create(&url, "during");
        async move { client.create_build(request).await }
    });
    relay.await_refused(refused_before + 2).await;
    assert!(
        !waiting.is_finished(),
        "answered with PostgreSQL unreachable"
    );
    relay.restore().await;
    let during = waiting
        .await
        .unwrap()
        .expect("the call waited out a short outage")
        .into_inner()
        .build
        .unwrap();

    // A long one: the call fails within its deadline, with the clear error.
    relay.cut().await;
    let started = Instant::now();
    let status = client
        .create_build(create(&url, "lost"))
        .await
        .expect_err("no database, no build");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("database unavailable, retrying"),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed past the deadline"
    );

    // Back: the same process serves again, no restart.
    relay.restore().await;
    let after = client
        .create_build(create(&url, "after"))
        .await
        .expect("the pool recovered")
        .into_inner()
        .build
        .unwrap();
    let builds = client
        .list_builds(pb::ListBuildsRequest {
            app: "myapp".into(),
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .builds;
    let descriptions: Vec<&str> = builds.iter().map(|b| b.description.as_str()).collect();
    assert_eq!(descriptions, ["after", "during"], "{builds:?}");
    assert_eq!(builds[1].id, during.id);
    assert_eq!(builds[0].id, after.id);
    app.shutdown().await;
}
