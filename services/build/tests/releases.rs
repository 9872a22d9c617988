//! Release creation: a successful build creates exactly one release with its
//! id, manifest, description and artifacts; a failed build creates none.

use slipway_api::build::v1::{BuildStatus, CreateBuildRequest, ListBuildsRequest};

use crate::helpers::{Backend, Tarball, TestApp, WEB, artifacts, status};

async fn success_creates_one_release(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let description = "build 37ea8cd80e initial commit of myapp";
    let (build, log) = app
        .build(
            "myapp",
            &Tarball::source(WEB, &[("run.sh", "echo")]),
            description,
        )
        .await;
    assert_eq!(status(&build), BuildStatus::Complete, "{log}");
    let calls = app.releases.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call.app, "myapp");
    assert_eq!(call.build.as_deref(), Some(build.id.as_str()));
    assert_eq!(call.manifest.as_deref(), Some(WEB));
    assert_eq!(call.description.as_deref(), Some(description));
    assert_eq!(
        call.artifacts
            .clone()
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>(),
        artifacts(&build)
    );
    assert!(call.env_vars.is_none() && call.parent_release.is_none());
    // The build records the release and the rest of what it did.
    assert!(
        build.release.starts_with('R') && build.release.len() == 11,
        "{build:?}"
    );
    assert!(
        log.contains(&format!("Creating release... OK {}", build.release)),
        "{log}"
    );
    assert_eq!(build.manifest, WEB);
    assert_eq!(build.description, description);
    assert!(build.ended.is_some() && build.started.is_some());
    app.shutdown().await;
}

async fn bad_manifest_fails_before_building(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let manifest = "services:\n  web:\n    build: .\n    port: abc\n";
    let (build, log) = app
        .build("myapp", &Tarball::source(manifest, &[]), "")
        .await;
    assert_eq!(status(&build), BuildStatus::Failed, "{log}");
    assert!(
        build
            .reason
            .starts_with("convox.yml line 4, column 11: services.web.port"),
        "{}",
        build.reason
    );
    assert!(log.contains(&build.reason), "{log}");
    assert!(!log.contains("Building with"), "a builder ran: {log}");
    assert!(app.releases.calls().is_empty());
    assert!(build.release.is_empty());
    assert_eq!(
        build.manifest, manifest,
        "the invalid manifest is kept for inspection"
    );

    // A missing manifest, and a manifest path of the request's choosing.
    let url = app
        .upload("myapp", &Tarball::source(WEB, &[("deploy/other.yml", WEB)]))
        .await
        .unwrap();
    let mut client = app.client.clone();
    let missing = client
        .create_build(CreateBuildRequest {
            app: "myapp".into(),
            source_url: url.clone(),
            manifest_path: "nope.yml".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .build
        .unwrap();
    app.logs("myapp", &missing.id, 0).await;
    assert_eq!(
        app.get("myapp", &missing.id).await.reason,
        "manifest nope.yml not found in the source"
    );
    let other = client
        .create_build(CreateBuildRequest {
            app: "myapp".into(),
            source_url: url,
            manifest_path: "deploy/other.yml".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .build
        .unwrap();
    app.logs("myapp", &other.id, 0).await;
    assert_eq!(
        status(&app.get("myapp", &other.id).await),
        BuildStatus::Complete
    );
    assert_eq!(app.releases.calls().len(), 1);
    assert!(app.releases.calls()[0].description.is_none());

    // Newest first.
    let listed = client
        .list_builds(ListBuildsRequest {
            app: "myapp".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .builds;
    let ids: Vec<&str> = listed.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(
        ids,
        [other.id.as_str(), missing.id.as_str(), build.id.as_str()]
    );
    app.shutdown().await;
}

slipway_storage::both_backends!(
    success_creates_one_release,
    bad_manifest_fails_before_building
);
