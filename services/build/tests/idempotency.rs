//! Idempotency keys of CreateBuild and CancelBuild (issue 17): the same key
//! answers the first build instead of making another, also when copies of
//! one call race; the same key with another request is ALREADY_EXISTS naming
//! the key; a cancel repeated with its key answers the cancelled build.

use slipway_api::build::v1 as pb;
use slipway_storage::testing::Backend;

use crate::helpers::{Tarball, TestApp, WEB};

fn keyed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    slipway_rpc::idempotency::set_key(&mut request, key);
    request
}

fn create(url: &str, description: &str) -> pb::CreateBuildRequest {
    pb::CreateBuildRequest {
        app: "myapp".into(),
        source_url: url.into(),
        description: description.into(),
        ..Default::default()
    }
}

async fn builds(app: &TestApp) -> Vec<pb::Build> {
    app.client
        .clone()
        .list_builds(pb::ListBuildsRequest {
            app: "myapp".into(),
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .builds
}

async fn a_key_makes_one_build(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let url = app
        .upload("myapp", &Tarball::source(WEB, &[]))
        .await
        .unwrap();
    let mut client = app.client.clone();
    let first = client
        .create_build(keyed(create(&url, "one"), "k-1"))
        .await
        .unwrap()
        .into_inner()
        .build
        .unwrap();
    // Retried (the answer was lost): the same build, not another.
    let again = client
        .create_build(keyed(create(&url, "one"), "k-1"))
        .await
        .unwrap()
        .into_inner()
        .build
        .unwrap();
    assert_eq!(again.id, first.id);
    // Copies racing each other: one build between them.
    let racing: Vec<_> = (0..6)
        .map(|_| {
            let mut client = client.clone();
            let request = create(&url, "two");
            tokio::spawn(async move { client.create_build(keyed(request, "k-2")).await })
        })
        .collect();
    let mut ids = Vec::new();
    for task in racing {
        ids.push(task.await.unwrap().unwrap().into_inner().build.unwrap().id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "racing copies made several builds: {ids:?}");
    // Unkeyed calls are not deduplicated.
    app.create("myapp", &url, "three").await;
    app.create("myapp", &url, "three").await;
    let all = builds(&app).await;
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(all.iter().filter(|b| b.description == "two").count(), 1);

    // The same key with another request: refused, naming the key; nothing made.
    let status = client
        .create_build(keyed(create(&url, "other"), "k-1"))
        .await
        .expect_err("a used key with another body");
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("k-1"), "{status:?}");
    assert!(status.message().contains("CreateBuild"), "{status:?}");
    assert_eq!(builds(&app).await.len(), 4);

    // A cancel repeated with its key answers the build it cancelled; the key
    // on another build is refused.
    let cancel = |id: &str| pb::CancelBuildRequest {
        app: "myapp".into(),
        id: id.into(),
    };
    let once = client
        .cancel_build(keyed(cancel(&first.id), "c-1"))
        .await
        .unwrap()
        .into_inner()
        .build
        .unwrap();
    let twice = client
        .cancel_build(keyed(cancel(&first.id), "c-1"))
        .await
        .unwrap()
        .into_inner()
        .build
        .unwrap();
    assert_eq!(
        (once.id.as_str(), once.status),
        (first.id.as_str(), twice.status)
    );
    assert_ne!(all[0].id, first.id);
    let status = client
        .cancel_build(keyed(cancel(&all[0].id), "c-1"))
        .await
        .expect_err("a used cancel key on another build");
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    app.shutdown().await;
}

slipway_storage::both_backends!(a_key_makes_one_build);
