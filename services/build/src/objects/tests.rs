use super::*;

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn chunks(
    parts: Vec<Result<&'static [u8], &'static str>>,
) -> impl Stream<Item = Result<Bytes, &'static str>> + Unpin {
    futures::stream::iter(parts.into_iter().map(|p| p.map(Bytes::from_static)))
}

#[tokio::test]
async fn local_uploads_publish_whole_objects_and_leave_nothing_when_refused() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::open(&ObjectLocation::Local(dir.path().to_path_buf())).unwrap();
    let app = AppName::parse("myapp").unwrap();
    let object = ObjectRef::new(app.clone(), "tmp/a.tgz").unwrap();
    let got = |o: ObjectRef| {
        let objects = objects.clone();
        async move {
            objects
                .store
                .get(&o.path())
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        }
    };

    let size = objects
        .put_stream(&object, chunks(vec![Ok(b"hello "), Ok(b"world")]), 100)
        .await
        .unwrap();
    assert_eq!(size, 11);
    assert_eq!(&got(object.clone()).await[..], b"hello world");

    // The same key again replaces the object.
    objects
        .put_stream(&object, chunks(vec![Ok(b"second")]), 100)
        .await
        .unwrap();
    assert_eq!(&got(object.clone()).await[..], b"second");

    // Over the limit, or the input failing, stores nothing: the old
    // object stays, no staging file is left, a new key never appears.
    let other = ObjectRef::new(app, "tmp/b.tgz").unwrap();
    for target in [&object, &other] {
        let err = objects
            .put_stream(target, chunks(vec![Ok(b"0123456789"), Ok(b"x")]), 10)
            .await
            .unwrap_err();
        assert!(
            matches!(err, PutError::Store(Error::TooLarge { limit: 10 })),
            "{err:?}"
        );
        let err = objects
            .put_stream(target, chunks(vec![Ok(b"part"), Err("reset")]), 100)
            .await
            .unwrap_err();
        assert!(matches!(err, PutError::Input("reset")), "{err:?}");
    }
    assert_eq!(&got(object).await[..], b"second");
    assert_eq!(files(dir.path()), ["apps/myapp/objects/tmp/a.tgz"]);
}

#[tokio::test]
async fn large_local_uploads_arrive_intact() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::open(&ObjectLocation::Local(dir.path().to_path_buf())).unwrap();
    let object = ObjectRef::new(AppName::parse("myapp").unwrap(), "big.tgz").unwrap();
    // More chunks than the write queue holds, of uneven sizes.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let data = Bytes::from(data);
    let parts: Vec<Result<Bytes, std::convert::Infallible>> = (0..data.len())
        .step_by(77_777)
        .map(|at| Ok(data.slice(at..(at + 77_777).min(data.len()))))
        .collect();
    let size = objects
        .put_stream(&object, futures::stream::iter(parts), u64::MAX)
        .await
        .unwrap();
    assert_eq!(size, data.len() as u64);
    let (mut file, size) = objects
        .fetch(&object, &dir.path().join("unused"), u64::MAX)
        .await
        .unwrap();
    assert_eq!(size, data.len() as u64);
    let mut read = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut read).unwrap();
    assert_eq!(read, data);
    // Read in place: no copy was made.
    assert!(!dir.path().join("unused").exists());
}

#[tokio::test]
async fn sweeps_remove_old_sources_and_stale_staging_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::open(&ObjectLocation::Local(dir.path().to_path_buf())).unwrap();
    let app = AppName::parse("myapp").unwrap();
    let day = std::time::Duration::from_secs(86_400);
    let age = |path: &Path, by: std::time::Duration| {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(std::time::SystemTime::now() - by)
            .unwrap();
    };
    let put = async |key: &str| {
        let object = ObjectRef::new(app.clone(), key).unwrap();
        objects
            .put_stream(&object, chunks(vec![Ok(b"0123456789")]), 100)
            .await
            .unwrap();
        dir.path().join("apps/myapp/objects").join(key)
    };
    let old = put("tmp/old.tgz").await;
    let older = put("nested/dir/older.tgz").await;
    let fresh = put("tmp/fresh.tgz").await;
    age(&old, 8 * day);
    age(&older, 30 * day);
    // A build log as old as any source stays: it is not a source.
    let build = BuildId::parse("BABCDEFGHIJ").unwrap();
    objects
        .put_log(&app, &build, Bytes::from_static(b"log\n"))
        .await
        .unwrap();
    let log = dir.path().join("apps/myapp/builds/BABCDEFGHIJ/log");
    age(&log, 30 * day);
    // Staging files left by uploads a crash cut off, one stale, one of
    // an upload still running.
    let stale = dir.path().join("apps/myapp/objects/tmp/gone.tgz#123");
    let running = dir.path().join("apps/myapp/objects/tmp/now.tgz#456");
    std::fs::write(&stale, b"part").unwrap();
    std::fs::write(&running, b"part").unwrap();
    age(&stale, 8 * day);

    let cutoff = chrono::Utc::now() - chrono::Duration::days(7);
    let swept = objects.sweep_sources(cutoff).await.unwrap();
    assert_eq!(
        swept,
        Swept {
            sources: 2,
            bytes: 20,
            staging: 1
        }
    );
    assert!(!old.exists() && !older.exists() && !stale.exists());
    assert!(fresh.exists() && log.exists() && running.exists());
    // Nothing left to sweep: a second sweep (or another replica's)
    // removes nothing and fails on nothing.
    assert_eq!(
        objects.sweep_sources(cutoff).await.unwrap(),
        Swept::default()
    );
}

#[test]
fn object_urls_round_trip() {
    let r = ObjectRef::parse_url("object://myapp/tmp/abc.tgz").unwrap();
    assert_eq!(r.app.as_str(), "myapp");
    assert_eq!(r.key, "tmp/abc.tgz");
    assert_eq!(r.url(), "object://myapp/tmp/abc.tgz");
    for bad in [
        "s3://myapp/x",
        "object://myapp",
        "object://My_App/x",
        "object://myapp/../x",
    ] {
        assert!(ObjectRef::parse_url(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn store_locations() {
    assert_eq!(
        ObjectLocation::parse("/var/x").unwrap(),
        ObjectLocation::Local("/var/x".into())
    );
    assert_eq!(
        ObjectLocation::parse("file:///var/x").unwrap(),
        ObjectLocation::Local("/var/x".into())
    );
    assert_eq!(
        ObjectLocation::parse("s3://bucket/a/b/").unwrap(),
        ObjectLocation::S3 {
            bucket: "bucket".into(),
            prefix: "a/b".into(),
            options: S3Options::default(),
        }
    );
    let err = ObjectLocation::parse("ftp://h/x?token=secret")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("secret"), "{err}");
}

#[test]
fn s3_settings_come_from_the_query_and_stay_out_of_errors_and_debug() {
    let location = ObjectLocation::parse(
        "s3://bucket/p?endpoint=http%3A%2F%2F127.0.0.1%3A9000&AWS_REGION=eu-west-1\
         &allow_http=true&access_key_id=AKIDX&secret_access_key=hunter2",
    )
    .unwrap();
    let ObjectLocation::S3 { options, .. } = &location else {
        panic!("{location:?}");
    };
    assert_eq!(
        options.0,
        [
            (AmazonS3ConfigKey::Endpoint, "http://127.0.0.1:9000".into()),
            (AmazonS3ConfigKey::Region, "eu-west-1".into()),
            (
                AmazonS3ConfigKey::Client(object_store::ClientConfigKey::AllowHttp),
                "true".into()
            ),
            (AmazonS3ConfigKey::AccessKeyId, "AKIDX".into()),
            (AmazonS3ConfigKey::SecretAccessKey, "hunter2".into()),
        ]
    );
    let debug = format!("{location:?}");
    assert!(
        debug.contains("aws_endpoint") && !debug.contains("hunter2"),
        "{debug}"
    );
    Objects::open(&location).unwrap();

    for (bad, why) in [
        (
            "s3://bucket/p?colour=blue&secret_access_key=hunter2",
            "unknown setting \"colour\"",
        ),
        ("s3://bucket/p?bucket=other", "the bucket is the URL's host"),
        ("s3://bucket/p?allow_http=maybe", "maybe"),
    ] {
        let err = ObjectLocation::parse(bad).unwrap_err().to_string();
        assert!(err.contains(why), "{bad}: {err}");
        assert!(
            err.contains("\"s3://bucket/p\"") && !err.contains("hunter2"),
            "{err}"
        );
    }
}
