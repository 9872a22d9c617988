//! The snapshot builder: content-addressed, read-only artifacts; identical
//! sources share one, different sources never do.

use std::os::unix::fs::PermissionsExt as _;

use slipway_api::build::v1::BuildStatus;

use crate::helpers::{Backend, Tarball, TestApp, artifacts, status};

const MANIFEST: &str = "services:\n  web:\n    build: .\n    command: ./run.sh\n  api:\n    build: api\n  db:\n    image: postgres:16\n";

fn source(body: &str) -> Vec<u8> {
    Tarball::new()
        .file("convox.yml", MANIFEST.as_bytes(), 0o644)
        .file("run.sh", b"#!/bin/sh\necho hi\n", 0o755)
        .dir("api")
        .file("api/main.txt", body.as_bytes(), 0o644)
        .finish()
}

#[tokio::test]
async fn identical_sources_share_one_artifact_and_different_ones_never_do() {
    let app = TestApp::spawn(Backend::Sqlite).await;

    let (one, log_one) = app.build("myapp", &source("v1"), "").await;
    assert_eq!(status(&one), BuildStatus::Complete, "{log_one}");
    assert!(log_one.contains("Created snapshot sha256-"), "{log_one}");
    let arts = artifacts(&one);
    let root = arts["web"]
        .strip_prefix("file://")
        .expect("file URL")
        .to_owned();
    assert!(root.contains("/artifacts/sha256-"), "{root}");
    assert_eq!(arts["api"], format!("file://{root}/api"));
    assert_eq!(arts["db"], "postgres:16");
    // The artifact holds the source, read-only and owner-only, executables kept.
    let run = std::path::Path::new(&root).join("run.sh");
    assert_eq!(
        std::fs::read_to_string(&run).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        std::fs::metadata(&run).unwrap().permissions().mode() & 0o777,
        0o500
    );
    assert_eq!(
        std::fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o500
    );

    // The same bytes again (a separate upload): verified, reused, and the
    // log says so.
    let (two, log_two) = app.build("myapp", &source("v1"), "").await;
    assert_eq!(status(&two), BuildStatus::Complete, "{log_two}");
    assert!(
        log_two.contains("Reusing snapshot sha256-")
            && log_two.contains("(source unchanged, verified)"),
        "{log_two}"
    );
    assert_eq!(artifacts(&two), arts);

    // A different source gets its own artifact.
    let (three, _) = app.build("myapp", &source("v2"), "").await;
    assert_ne!(artifacts(&three)["web"], arts["web"]);
    assert_eq!(app.snapshots().len(), 2, "{:?}", app.snapshots());

    // Two identical builds racing each other end up on one artifact.
    let tgz = source("v3");
    let (a, b) = tokio::join!(app.build("myapp", &tgz, ""), app.build("myapp", &tgz, ""));
    assert_eq!(status(&a.0), BuildStatus::Complete, "{}", a.1);
    assert_eq!(status(&b.0), BuildStatus::Complete, "{}", b.1);
    assert_eq!(artifacts(&a.0), artifacts(&b.0));
    assert_eq!(app.snapshots().len(), 3, "{:?}", app.snapshots());
    assert!(app.work_is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn a_missing_build_path_fails_the_build() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let tgz = Tarball::source("services:\n  web:\n    build: nowhere\n", &[("x", "y")]);
    let (build, log) = app.build("myapp", &tgz, "").await;
    assert_eq!(status(&build), BuildStatus::Failed, "{log}");
    assert_eq!(
        build.reason,
        "service web: build path \"nowhere\" does not exist in the source"
    );
    assert!(app.releases.calls().is_empty());
    app.shutdown().await;
}
