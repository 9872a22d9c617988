//! PostgreSQL unreachable (issue 17): the release service's pool reaches
//! PostgreSQL through a TCP relay the test cuts (every connection dropped,
//! new ones refused) and restores. Stopping the shared PostgreSQL itself is
//! not possible on a machine other tests use. A call during a short outage
//! (connects answered "starting up" and hung up mid-handshake in turn)
//! waits and succeeds once the database answers; one outliving the pool's
//! wait fails with UNAVAILABLE "database unavailable, retrying"; the same
//! replica serves again afterwards without a restart, and every
//! acknowledged write is there once.

use std::time::{Duration, Instant};

use slipway_api::release::v1 as pb;
use slipway_storage::testing::relay::{Relay, postgres_addr, through};

use crate::helpers::{Backend, MANIFEST, TestApp};

fn change(app: &str, key: &str) -> pb::ChangeEnvRequest {
    pb::ChangeEnvRequest {
        app: app.into(),
        set: [(key.to_owned(), "1".to_owned())].into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_then_back() {
    let relay = Relay::start(postgres_addr()).await;
    let addr = relay.addr;
    let t = TestApp::spawn_with(Backend::Postgres, |config| {
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
    t.create_app("myapp").await;
    t.build_release("myapp", MANIFEST).await;
    let mut client = t.client.clone();
    client.change_env(change("myapp", "BEFORE")).await.unwrap();

    // A short outage: the call waits for the database and succeeds.
    relay.cut().await;
    let waiting = tokio::spawn({
        let mut client = client.clone();
        async move { client.change_env(change("myapp", "DURING")).await }
    });
    // The pool tries to reconnect while the call waits.
    relay.await_refused(2).await;
    assert!(
        !waiting.is_finished(),
        "answered with PostgreSQL unreachable"
    );
    relay.restore().await;
    let during = waiting
        .await
        .unwrap()
        .expect("the call waited out a short outage");

    // A long one: the call fails within its deadline, with the clear error.
    relay.cut().await;
    let started = Instant::now();
    let status = client
        .change_env(change("myapp", "LOST"))
        .await
        .expect_err("no database, no change");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("database unavailable, retrying"),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed past the deadline"
    );

    // Back: the same replica serves again, no restart.
    relay.restore().await;
    let after = client
        .change_env(change("myapp", "AFTER"))
        .await
        .expect("the pool recovered")
        .into_inner()
        .release
        .unwrap();
    for key in ["BEFORE", "DURING", "AFTER"] {
        assert!(
            after.env_vars.contains_key(key),
            "{key} lost: {:?}",
            after.env_vars.keys()
        );
    }
    assert!(
        !after.env_vars.contains_key("LOST"),
        "an unacknowledged write applied"
    );
    assert_eq!(
        during.into_inner().release.unwrap().description,
        "env add:DURING"
    );
    let descriptions: Vec<String> = t
        .releases("myapp", 100)
        .await
        .into_iter()
        .map(|r| r.description)
        .collect();
    for key in ["BEFORE", "DURING", "AFTER"] {
        let n = descriptions
            .iter()
            .filter(|d| **d == format!("env add:{key}"))
            .count();
        assert_eq!(n, 1, "{key} applied {n} times: {descriptions:?}");
    }
}
