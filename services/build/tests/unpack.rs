//! Hostile and oversized tarballs: each fails its build with a reason that
//! names the problem, and nothing is written outside the build's directory.

use std::io::Read as _;

use slipway_api::build::v1::BuildStatus;
use tar::EntryType;

use crate::helpers::{Backend, Tarball, TestApp, WEB, find_named, status};

const MIB: u64 = 1 << 20;

async fn app() -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, None, |c| {
        c.max_source_bytes = 4 * MIB;
        c.max_unpacked_bytes = 8 * MIB;
        c.max_source_entries = 100;
    })
    .await
}

/// Builds `tgz` and expects a failure whose reason contains `expected`.
async fn refused(app: &TestApp, tgz: Vec<u8>, expected: &str) -> String {
    let (build, log) = app.build("myapp", &tgz, "").await;
    assert_eq!(status(&build), BuildStatus::Failed, "{log}");
    assert!(
        build.reason.contains(expected),
        "reason {:?} lacks {expected:?}",
        build.reason
    );
    assert!(
        log.contains(&format!("Build failed: {}", build.reason)),
        "{log}"
    );
    assert!(
        app.releases.calls().is_empty(),
        "a failed build created a release"
    );
    assert!(app.work_is_empty(), "work directory left behind");
    build.reason
}

#[tokio::test]
async fn hostile_paths_are_refused_and_nothing_escapes() {
    let app = app().await;
    let base = || Tarball::new().file("convox.yml", WEB.as_bytes(), 0o644);
    let marker = format!("slipway-escape-{}", uuid_like());

    let reason = refused(
        &app,
        base().file(&format!("../{marker}"), b"x", 0o644).finish(),
        "path leaves the source directory",
    )
    .await;
    assert_eq!(
        reason,
        format!("refusing tar entry \"../{marker}\": path leaves the source directory")
    );
    refused(
        &app,
        base()
            .file(&format!("a/../../{marker}"), b"x", 0o644)
            .finish(),
        "path leaves the source directory",
    )
    .await;

    let absolute = format!("/tmp/{marker}");
    refused(
        &app,
        base().file(&absolute, b"x", 0o644).finish(),
        "absolute paths are not allowed",
    )
    .await;
    assert!(!std::path::Path::new(&absolute).exists());
    refused(
        &app,
        base().file("/etc/x", b"x", 0o644).finish(),
        "refusing tar entry \"/etc/x\": absolute paths are not allowed",
    )
    .await;

    // A link to `/`, then a file written "through" it.
    let reason = refused(
        &app,
        base()
            .symlink("root", "/")
            .file(&format!("root/tmp/{marker}"), b"x", 0o644)
            .finish(),
        "points outside the source directory",
    )
    .await;
    assert!(reason.contains("\"root\""), "{reason}");
    refused(
        &app,
        base().symlink("up", "../..").finish(),
        "points outside the source directory",
    )
    .await;
    // An inward link followed by a write through it is refused too.
    refused(
        &app,
        base()
            .dir("d")
            .symlink("d/in", "..")
            .file(&format!("d/in/{marker}"), b"x", 0o644)
            .finish(),
        "path passes through the symlink",
    )
    .await;
    // Each link alone looks inside; resolved through each other they leave.
    refused(
        &app,
        base()
            .dir("d")
            .symlink("d/b", "..")
            .symlink("d/c", "b/../x")
            .finish(),
        "symlink resolves outside the source directory",
    )
    .await;
    // Hard links may only name files of the archive.
    refused(
        &app,
        base()
            .entry(
                "h",
                EntryType::Link,
                std::io::empty(),
                0,
                0o644,
                Some("/etc/passwd"),
            )
            .finish(),
        "hard link target",
    )
    .await;
    refused(
        &app,
        base()
            .entry("dev", EntryType::Char, std::io::empty(), 0, 0o644, None)
            .finish(),
        "device files are not allowed",
    )
    .await;
    refused(
        &app,
        base()
            .entry("fifo", EntryType::Fifo, std::io::empty(), 0, 0o644, None)
            .finish(),
        "fifos are not allowed",
    )
    .await;

    assert!(
        find_named(app.data_dir.parent().unwrap(), &marker).is_empty(),
        "an entry escaped"
    );
    assert!(
        find_named(std::path::Path::new("/tmp"), &marker).is_empty(),
        "an entry escaped to /tmp"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn size_caps_and_gzip_bombs_are_refused() {
    let app = app().await;
    let base = || Tarball::new().file("convox.yml", WEB.as_bytes(), 0o644);

    // Compressed size: the upload itself is refused.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..5 * MIB)
        .map(|_| {
            // xorshift: incompressible enough for gzip.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let big = base().file("noise.bin", &noise, 0o644).finish();
    assert!(big.len() as u64 > 4 * MIB);
    let err = app.upload("myapp", &big).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");

    // Unpacked size, from the entry's header before anything is written.
    let reason = refused(
        &app,
        base()
            .entry(
                "zeros.bin",
                EntryType::Regular,
                std::io::repeat(0).take(64 * MIB),
                64 * MIB,
                0o644,
                None,
            )
            .finish(),
        "unpacked size exceeds the 8388608-byte limit",
    )
    .await;
    assert!(
        reason.starts_with("refusing tar entry \"zeros.bin\""),
        "{reason}"
    );

    // A gzip bomb the headers do not announce: a 64 MiB GNU long name,
    // which the tar reader buffers; the decompressed-stream cap stops it.
    let bomb = base()
        .entry(
            "././@LongLink",
            EntryType::GNULongName,
            std::io::repeat(b'a').take(64 * MIB),
            64 * MIB,
            0o644,
            None,
        )
        .file("x", b"x", 0o644)
        .finish();
    assert!(
        bomb.len() < 1 << 20,
        "the bomb should be small: {}",
        bomb.len()
    );
    refused(
        &app,
        bomb,
        "source unpacks to more than the 8388608-byte limit",
    )
    .await;

    // Entry count.
    let mut many = base();
    for i in 0..150 {
        many = many.file(&format!("f{i}"), b"", 0o644);
    }
    refused(&app, many.finish(), "source has more than 100 entries").await;

    // Not gzip at all.
    refused(&app, b"just some text".to_vec(), "not a gzip'd tar archive").await;
    app.shutdown().await;
}

#[tokio::test]
async fn upload_keys_and_urls_are_checked() {
    let app = app().await;
    let mut client = app.client.clone();
    for key in ["../x", "/abs", "a//b"] {
        let err = client
            .upload_source(futures::stream::iter([
                slipway_api::build::v1::UploadSourceRequest {
                    app: "myapp".into(),
                    key: key.into(),
                    chunk: bytes::Bytes::from_static(b"x"),
                    last: true,
                },
            ]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{key}: {err:?}");
    }
    // A stream that ends before a message marked last was abandoned.
    let err = client
        .upload_source(futures::stream::iter([
            slipway_api::build::v1::UploadSourceRequest {
                app: "myapp".into(),
                key: "tmp/abandoned.tgz".into(),
                chunk: bytes::Bytes::from_static(b"half a source"),
                last: false,
            },
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("nothing stored"), "{err:?}");
    let url = app.upload("myapp", b"x").await.unwrap();
    assert!(
        url.starts_with("object://myapp/tmp/") && url.ends_with(".tgz"),
        "{url}"
    );
    // Another app's object cannot be built.
    let err = client
        .create_build(slipway_api::build::v1::CreateBuildRequest {
            app: "other".into(),
            source_url: url,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    app.shutdown().await;
}

fn uuid_like() -> String {
    format!("{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}
