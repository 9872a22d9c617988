//! The object store on S3: the real build service configured for
//! `s3://bucket/prefix?endpoint=…` against a local moto server (installed by
//! scripts/install-test-deps), checked by listing the bucket itself.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, PutPayload};
use slipway_api::build::v1 as pb;
use slipway_api::build::v1::BuildStatus;
use slipway_build::Config;
use slipway_domain::Secret;
use tonic::Code;

use crate::helpers::{Backend, Tarball, TestApp, WEB, artifacts, status};

const BUCKET: &str = "slipway";
const PREFIX: &str = "rack/one";
const MIB: usize = 1 << 20;

/// A moto S3 server on a free loopback port, killed on drop.
struct Moto {
    child: Child,
    addr: SocketAddr,
    /// The bucket seen directly, not through the service.
    bucket: Arc<dyn ObjectStore>,
    /// moto's output.
    log: tempfile::NamedTempFile,
}

impl Moto {
    /// Starts moto and creates [`BUCKET`]. Fails, never skips, without moto.
    fn start() -> Self {
        const INSTALL: &str = "run scripts/install-test-deps (it installs moto[server] with pip)";
        // A free port can be taken between probing and moto binding it.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            // moto logs every request: to a file, so no pipe fills up.
            let log = tempfile::NamedTempFile::new().unwrap();
            let child = Command::new("python3")
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.reopen().unwrap()))
                .stderr(Stdio::from(log.reopen().unwrap()))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run python3 for moto ({e}): {INSTALL}"));
            let mut moto = Self {
                child,
                addr,
                bucket: Arc::new(s3_client(addr, BUCKET)),
                log,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(exit) = moto.child.try_wait().unwrap() {
                    let output = std::fs::read_to_string(moto.log.path()).unwrap_or_default();
                    if output.contains("Address already in use") {
                        break;
                    }
                    if output.contains("No module named") {
                        panic!("moto is not installed: {INSTALL}\n{output}");
                    }
                    panic!("moto exited ({exit}): {INSTALL}\n{output}");
                }
                if TcpStream::connect(addr).is_ok() {
                    let (code, body) = moto.http("PUT", &format!("/{BUCKET}"));
                    assert_eq!(code, 200, "create the bucket: {body}");
                    return moto;
                }
                assert!(Instant::now() < deadline, "moto did not start in 30s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("moto could not bind a free loopback port");
    }

    /// The service's object store setting: everything in the URL.
    fn store_url(&self, bucket: &str) -> String {
        format!(
            "s3://{bucket}/{PREFIX}?endpoint=http://{}&region=us-east-1&allow_http=true\
             &access_key_id=testing&secret_access_key=testing",
            self.addr
        )
    }

    /// One plain HTTP/1.1 request (moto takes unsigned ones); status and body.
    fn http(&self, method: &str, target: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let code = response
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b);
        (code, body.unwrap_or_default().to_owned())
    }

    /// Every object in the bucket.
    async fn objects(&self) -> Vec<ObjectMeta> {
        let mut all: Vec<ObjectMeta> = self.bucket.list(None).try_collect().await.unwrap();
        all.sort_by(|a, b| a.location.cmp(&b.location));
        all
    }

    /// Every key in the bucket.
    async fn keys(&self) -> Vec<String> {
        self.objects()
            .await
            .into_iter()
            .map(|o| o.location.to_string())
            .collect()
    }

    async fn get(&self, key: &str) -> Bytes {
        let path = ObjectPath::from(key);
        self.bucket.get(&path).await.unwrap().bytes().await.unwrap()
    }

    /// Multipart uploads begun and neither completed nor aborted: their
    /// parts are stored (and billed) but in no listing.
    fn pending_uploads(&self) -> usize {
        let (code, body) = self.http("GET", &format!("/{BUCKET}?uploads"));
        assert_eq!(code, 200, "list multipart uploads: {body}");
        body.matches("<Upload>").count()
    }

    /// Waits until `pending_uploads` is `want`.
    async fn wait_pending(&self, want: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let pending = self.pending_uploads();
            if pending == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {pending} multipart uploads in progress, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3_client(addr: SocketAddr, bucket: &str) -> impl ObjectStore {
    AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(format!("http://{addr}"))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap()
}

/// The build service on `bucket` of `moto`, with config tweaks.
async fn spawn(moto: &Moto, bucket: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let url = moto.store_url(bucket);
    TestApp::spawn_with(Backend::Sqlite, None, |config| {
        config.object_store = Some(Secret::new(url));
        tweak(config);
    })
    .await
}

/// `len` incompressible bytes.
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The messages of an upload of `bytes` in 1 MiB chunks (as the gateway
/// sends them), the last one marked `last` if `finish`.
fn messages(app: &str, bytes: &[u8], finish: bool) -> Vec<pb::UploadSourceRequest> {
    let mut messages = vec![pb::UploadSourceRequest {
        app: app.into(),
        ..Default::default()
    }];
    messages.extend(bytes.chunks(MIB).map(|chunk| pb::UploadSourceRequest {
        chunk: Bytes::copy_from_slice(chunk),
        ..Default::default()
    }));
    if let Some(end) = messages.last_mut() {
        end.last = finish;
    }
    messages
}

/// Parts of a multipart upload, read from its ETag (`"<md5>-<parts>"`).
fn parts(object: &ObjectMeta) -> Option<u32> {
    let tag = object.e_tag.as_deref()?.trim_matches('"');
    tag.rsplit_once('-')?.1.parse().ok()
}

#[tokio::test]
async fn s3_sources_land_under_the_prefix_and_build_with_their_log_stored() {
    let moto = Moto::start();
    let app = spawn(&moto, BUCKET, |_| {}).await;

    // Incompressible, so the tarball is as big: several parts.
    let blob = noise(24 * MIB);
    let tgz = Tarball::new()
        .file("convox.yml", WEB.as_bytes(), 0o644)
        .file("run.sh", b"#!/bin/sh\necho hi\n", 0o755)
        .file("blob.bin", &blob, 0o644)
        .finish();
    let url = app.upload("myapp", &tgz).await.unwrap();
    let key = url.strip_prefix("object://myapp/").expect("object URL");
    let objects = moto.objects().await;
    let source_key = format!("{PREFIX}/apps/myapp/objects/{key}");
    assert_eq!(moto.keys().await, std::slice::from_ref(&source_key));
    assert_eq!(objects[0].size, tgz.len() as u64);
    assert!(
        parts(&objects[0]).is_some_and(|n| n >= 3),
        "not a multipart upload of several parts: {:?}",
        objects[0].e_tag
    );
    assert!(
        moto.get(&source_key).await == tgz,
        "the stored bytes differ"
    );
    assert_eq!(moto.pending_uploads(), 0);

    // A build from it completes and creates a release, as on a local store.
    let build = app.create("myapp", &url, "from s3").await;
    let log = app.logs("myapp", &build.id, 0).await;
    let text = String::from_utf8_lossy(&log).into_owned();
    let build = app.get("myapp", &build.id).await;
    assert_eq!(status(&build), BuildStatus::Complete, "{text}");
    assert!(text.contains("Created snapshot sha256-"), "{text}");
    let calls = app.releases.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].build.as_deref(), Some(build.id.as_str()));
    assert_eq!(calls[0].description.as_deref(), Some("from s3"));
    assert!(
        log_line(&text, "Creating release... OK").contains(&build.release),
        "{text}"
    );
    let root = artifacts(&build)["web"]
        .strip_prefix("file://")
        .expect("file URL")
        .to_owned();
    let built = std::fs::read(std::path::Path::new(&root).join("blob.bin")).unwrap();
    assert!(
        built == blob,
        "the snapshot's blob.bin differs from the source"
    );
    assert!(app.work_is_empty());

    // The full log is in the bucket, and ended builds replay it from there.
    let log_key = format!("{PREFIX}/apps/myapp/builds/{}/log", build.id);
    assert_eq!(moto.keys().await, [log_key.clone(), source_key]);
    assert_eq!(moto.get(&log_key).await, log);
    assert_eq!(app.logs("myapp", &build.id, 0).await, log);
    assert_eq!(app.logs("myapp", &build.id, 10).await, log[10..]);
    let replaced = b"replayed from the bucket\n";
    moto.bucket
        .put(
            &ObjectPath::from(log_key.as_str()),
            PutPayload::from_static(replaced),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.logs("myapp", &build.id, 0).await != replaced {
        assert!(
            Instant::now() < deadline,
            "the log is not read from the bucket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A source missing from the bucket fails its build with "not found".
    let missing = app
        .create("myapp", "object://myapp/tmp/missing.tgz", "")
        .await;
    let missing_log = app.logs("myapp", &missing.id, 0).await;
    let missing = app.get("myapp", &missing.id).await;
    assert_eq!(
        status(&missing),
        BuildStatus::Failed,
        "{}",
        String::from_utf8_lossy(&missing_log)
    );
    assert!(missing.reason.contains("not found"), "{}", missing.reason);

    // Sweeping: a fresh source stays; once past the cutoff it goes, and the
    // build's log stays.
    let store = slipway_build::objects::Objects::open(
        &slipway_build::objects::ObjectLocation::parse(&moto.store_url(BUCKET)).unwrap(),
    )
    .unwrap();
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(store.sweep_sources(hour_ago).await.unwrap().sources, 0);
    let later = chrono::Utc::now() + chrono::Duration::minutes(1);
    let swept = store.sweep_sources(later).await.unwrap();
    assert_eq!((swept.sources, swept.bytes), (1, tgz.len() as u64));
    // Left: the two builds' logs (this one's and the missing source's).
    let left = moto.keys().await;
    assert!(left.contains(&log_key), "{left:?}");
    assert!(
        left.iter()
            .all(|k| k.ends_with("/log") && !k.contains("/objects/")),
        "{left:?}"
    );
    app.shutdown().await;
}

fn log_line<'a>(log: &'a str, start: &str) -> &'a str {
    log.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_default()
}

#[tokio::test]
async fn s3_uploads_over_the_limit_or_ended_early_leave_nothing() {
    let moto = Moto::start();
    let app = spawn(&moto, BUCKET, |c| c.max_source_bytes = (12 * MIB) as u64).await;
    let mut client = app.client.clone();

    // Over the limit, after a multipart upload began.
    let err = app.upload("myapp", &noise(16 * MIB)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("12582912-byte limit"), "{err:?}");
    moto.wait_pending(0, "over the limit").await;
    assert!(moto.keys().await.is_empty(), "{:?}", moto.keys().await);

    // The stream ends before a message marked `last`.
    let unfinished = messages("myapp", &noise(11 * MIB), false);
    let err = client
        .upload_source(futures::stream::iter(unfinished))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("before a message marked last"),
        "{err:?}"
    );
    moto.wait_pending(0, "ended early").await;
    assert!(moto.keys().await.is_empty(), "{:?}", moto.keys().await);

    // Under the limit it is stored, so the refusals above were the limit's.
    let url = app.upload("myapp", &noise(11 * MIB)).await.unwrap();
    let key = url.strip_prefix("object://myapp/").unwrap();
    assert_eq!(
        moto.keys().await,
        [format!("{PREFIX}/apps/myapp/objects/{key}")]
    );
    app.shutdown().await;
}

/// Sends `bytes` and then nothing more, the stream left open; returns once
/// moto shows the multipart upload begun. The upload runs on its own task.
async fn stall_upload(
    client: &slipway_api::build::v1::build_service_client::BuildServiceClient<slipway_rpc::Channel>,
    moto: &Moto,
    bytes: &[u8],
) -> (
    tokio::task::JoinHandle<Result<tonic::Response<pb::UploadSourceResponse>, tonic::Status>>,
    tokio::sync::mpsc::Sender<pb::UploadSourceRequest>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    for message in messages("myapp", bytes, false) {
        tx.send(message).await.unwrap();
    }
    let mut client = client.clone();
    let call = tokio::spawn(async move {
        client
            .upload_source(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    moto.wait_pending(1, "upload under way").await;
    (call, tx)
}

/// A loopback TCP relay to `upstream`; `cut` closes every connection through
/// it, as a client process that dies closes its sockets.
struct Relay {
    addr: SocketAddr,
    cut: tokio_util::sync::CancellationToken,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = tokio_util::sync::CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }

    fn client(
        &self,
    ) -> slipway_api::build::v1::build_service_client::BuildServiceClient<slipway_rpc::Channel>
    {
        let channel = slipway_rpc::channel(
            "build",
            &[format!("http://{}", self.addr)],
            &Default::default(),
        )
        .unwrap();
        slipway_api::build::v1::build_service_client::BuildServiceClient::new(channel)
    }
}

#[tokio::test]
async fn s3_uploads_cut_off_midway_leave_no_parts_behind() {
    let moto = Moto::start();

    // The client goes away (the CLI killed): its connection closes.
    let app = spawn(&moto, BUCKET, |_| {}).await;
    let relay = Relay::start(app.addr).await;
    let (call, tx) = stall_upload(&relay.client(), &moto, &noise(11 * MIB)).await;
    relay.cut.cancel();
    let _ = call.await;
    moto.wait_pending(0, "client went away").await;
    assert!(moto.keys().await.is_empty(), "{:?}", moto.keys().await);
    drop(tx);
    app.shutdown().await;

    // The client stalls past the upload idle timeout (uploads have no
    // total deadline): the server drops the upload midway.
    let app = spawn(&moto, BUCKET, |c| {
        c.upload_idle_timeout = Duration::from_secs(2)
    })
    .await;
    let (call, tx) = stall_upload(&app.client, &moto, &noise(11 * MIB)).await;
    let err = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the upload did not time out")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("nothing stored"), "{err:?}");
    moto.wait_pending(0, "upload stalled").await;
    assert!(moto.keys().await.is_empty(), "{:?}", moto.keys().await);
    drop(tx);
    app.shutdown().await;
}

#[tokio::test]
async fn s3_store_failures_are_request_errors() {
    let moto = Moto::start();
    // A bucket that does not exist: every store call fails.
    let app = spawn(&moto, "no-such-bucket", |_| {}).await;
    for size in [1000, 11 * MIB] {
        let err = app.upload("myapp", &noise(size)).await.unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::Internal, "internal error"),
            "{size} bytes: {err:?}"
        );
    }
    // The service still answers.
    let url = "object://myapp/tmp/x.tgz";
    let build = app.create("myapp", url, "").await;
    app.logs("myapp", &build.id, 0).await;
    assert_eq!(
        status(&app.get("myapp", &build.id).await),
        BuildStatus::Failed
    );
    app.shutdown().await;
}
