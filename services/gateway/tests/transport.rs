//! Transport security end to end: the gateway serving HTTPS with its
//! self-signed certificate, driven by the SDK over real TLS handshakes
//! (HTTP and websockets), and service tokens on the gRPC hop behind it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use slipway_api::release::v1 as rpb;
use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_client::{Client, Error, LogOptions, TlsOptions};
use slipway_domain::Secret;
use slipway_rpc::SecurityArgs;
use slipway_rpc::auth::{ServiceKey, TokenSigner};
use tokio::net::TcpListener;
use tonic::Code;

const KEY: &str = "0123456789abcdef0123456789abcdef-test-key";
const OTHER_KEY: &str = "fedcba9876543210fedcba9876543210-other-key";

fn security(key: &str) -> SecurityArgs {
    SecurityArgs {
        service_token_key: Some(Secret::new(key)),
        insecure_grpc: false,
    }
}

/// The release service on SQLite in `dir`, refusing calls without a token
/// signed with [`KEY`].
async fn release_service(dir: &Path) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = slipway_release::Config::dev(dir.to_owned());
    config.security = security(KEY);
    tokio::spawn(async move {
        slipway_release::run(config, listener, std::future::pending())
            .await
            .unwrap();
    });
    addr
}

/// The gateway with a self-signed certificate in `dir`, in front of the
/// release service `release` (build and rollout on a closed port).
async fn gateway(dir: &Path, release: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = slipway_gateway::Config {
        password: Some(Secret::new("test-password-0123")),
        rack_name: "tls".into(),
        max_upload_bytes: 1 << 20,
        request_timeout: Duration::from_secs(10),
        concurrency_limit: 64,
        tls: slipway_gateway::tls::TlsArgs {
            tls_self_signed: true,
            ..Default::default()
        },
        security: security(KEY),
        ..slipway_gateway::Config::with_peers(
            addr,
            vec![release.to_string()],
            vec![dead.to_string()],
            vec![dead.to_string()],
            dir.to_owned(),
        )
    };
    config.validate().unwrap();
    tokio::spawn(async move {
        slipway_gateway::run(config, listener, std::future::pending())
            .await
            .unwrap();
    });
    addr
}

/// Waits until the release service answers a signed call.
async fn wait_for(release: SocketAddr) {
    let mut client = signed_client(release, KEY);
    for _ in 0..200 {
        if client.list_apps(rpb::ListAppsRequest {}).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the release service did not come up");
}

fn channel(addr: SocketAddr, signer: Option<TokenSigner>) -> slipway_rpc::Channel {
    slipway_rpc::channel(
        "release",
        &[addr.to_string()],
        &slipway_rpc::ChannelOptions {
            service_token: signer,
            ..Default::default()
        },
    )
    .unwrap()
}

fn signed_client(addr: SocketAddr, key: &str) -> ReleaseServiceClient<slipway_rpc::Channel> {
    let key = ServiceKey::new(&Secret::new(key)).unwrap();
    ReleaseServiceClient::new(channel(addr, Some(TokenSigner::new(key, "test"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_talks_https_and_wss_to_a_self_signed_gateway_with_its_ca_file() {
    slipway_telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let release = release_service(&dir.path().join("release")).await;
    wait_for(release).await;
    let addr = gateway(&dir.path().join("gateway"), release).await;
    let ca = dir.path().join("gateway/tls/cert.pem");
    let url = format!(
        "https://convox:test-password-0123@127.0.0.1:{}",
        addr.port()
    );
    let trusted = TlsOptions {
        ca_file: Some(ca.clone()),
        insecure: false,
    };
    let client = Client::with_tls(&url, &trusted).unwrap();

    // A real handshake, then a call through to the token-checking release
    // service (so the gateway's hop carries a valid token).
    let mut ready = false;
    for _ in 0..200 {
        if client.system().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "the gateway answers over TLS");
    client.app_create("secure", None).await.unwrap();
    let apps = client.apps().await.unwrap();
    assert_eq!(
        apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["secure"]
    );

    // The certificate is valid for localhost too.
    let by_name = Client::with_tls(
        &format!(
            "https://convox:test-password-0123@localhost:{}",
            addr.port()
        ),
        &trusted,
    )
    .unwrap();
    assert_eq!(by_name.apps().await.unwrap().len(), 1);

    // Websockets upgrade over TLS: with a wrong password the rack reports
    // it inside the stream (as the real rack does), so the frame proves
    // the wss handshake and framing.
    let wrong = Client::with_tls(
        &format!("https://convox:nope@127.0.0.1:{}", addr.port()),
        &trusted,
    )
    .unwrap();
    let mut stream = wrong
        .app_logs("secure", &LogOptions::default())
        .await
        .unwrap();
    let chunk = stream.next().await.expect("a chunk").unwrap();
    assert_eq!(chunk, "ERROR: invalid authentication\n");

    // Plain HTTP on the TLS port gets no answer an HTTP client accepts.
    let plain = Client::new(&format!(
        "http://convox:test-password-0123@127.0.0.1:{}",
        addr.port()
    ))
    .unwrap();
    assert!(plain.apps().await.is_err());

    // The certificate is persisted: a restarted gateway serves the same one.
    let before = std::fs::read(&ca).unwrap();
    let again = gateway(&dir.path().join("gateway"), release).await;
    let client = Client::with_tls(
        &format!(
            "https://convox:test-password-0123@127.0.0.1:{}",
            again.port()
        ),
        &trusted,
    )
    .unwrap();
    assert_eq!(client.apps().await.unwrap().len(), 1);
    assert_eq!(std::fs::read(&ca).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_file_the_sdk_refuses_the_certificate_and_says_how_to_fix_it() {
    slipway_telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let release = release_service(&dir.path().join("release")).await;
    let addr = gateway(&dir.path().join("gateway"), release).await;
    let url = format!(
        "https://convox:test-password-0123@127.0.0.1:{}",
        addr.port()
    );
    let client = Client::new(&url).unwrap();
    let mut err = None;
    for _ in 0..200 {
        match client.apps().await {
            Err(e @ Error::Certificate { .. }) => {
                err = Some(e);
                break;
            }
            // Not listening yet.
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            Ok(_) => panic!("an untrusted self-signed certificate was accepted"),
        }
    }
    let text = err.expect("a certificate error").to_string();
    assert!(text.contains("not signed by a trusted authority"), "{text}");
    assert!(text.contains("SLIPWAY_CA_FILE"), "{text}");
    assert!(text.contains("SLIPWAY_INSECURE=1"), "{text}");
    assert!(
        !text.contains("test-password-0123@"),
        "no password in errors: {text}"
    );

    // Websockets too.
    let err = client
        .app_logs("any", &LogOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Certificate { .. }), "{err}");

    // Only an explicit opt-out skips verification.
    let insecure = Client::with_tls(
        &url,
        &TlsOptions {
            ca_file: None,
            insecure: true,
        },
    )
    .unwrap();
    insecure.system().await.unwrap();

    // A CA file that is not a certificate is a clear setup error.
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let err = Client::with_tls(
        &url,
        &TlsOptions {
            ca_file: Some(bogus),
            insecure: false,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("CA file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_need_a_valid_service_token_except_health_checks() {
    slipway_telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let release = release_service(dir.path()).await;
    wait_for(release).await;

    // Valid token (signed per call by the channel): OK.
    signed_client(release, KEY)
        .list_apps(rpb::ListAppsRequest {})
        .await
        .unwrap();

    // No token.
    let mut plain = ReleaseServiceClient::new(channel(release, None));
    let status = plain.list_apps(rpb::ListAppsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("missing service token"),
        "{status:?}"
    );

    // Signed with another key.
    let status = signed_client(release, OTHER_KEY)
        .list_apps(rpb::ListAppsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("signature"), "{status:?}");

    // Expired (beyond the tolerated skew), though correctly signed.
    let key = ServiceKey::new(&Secret::new(KEY)).unwrap();
    let expired = key.sign("test", SystemTime::now() - Duration::from_secs(120));
    let mut request = tonic::Request::new(rpb::ListAppsRequest {});
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {expired}").parse().unwrap(),
    );
    let status = plain.list_apps(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");

    // A hand-made, valid bearer token works (what grpcurl would send).
    let fresh = key.sign("grpcurl", SystemTime::now() + Duration::from_secs(60));
    let mut request = tonic::Request::new(rpb::ListAppsRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {fresh}").parse().unwrap());
    plain.list_apps(request).await.unwrap();

    // Health checks need none (probes carry no credentials).
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(release, None));
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[test]
fn plain_http_and_unauthenticated_grpc_are_refused_off_loopback() {
    use clap::Parser as _;
    let base = [
        "slipway-gateway",
        "--password",
        "test-password-0123",
        "--release-endpoint",
        "r:1",
        "--build-endpoint",
        "b:1",
        "--rollout-endpoint",
        "o:1",
    ];
    let parse =
        |extra: &[&str]| slipway_gateway::Config::try_parse_from(base.iter().chain(extra)).unwrap();
    let err = parse(&["--listen", "0.0.0.0:5443"]).validate().unwrap_err();
    assert!(
        err.starts_with("refusing plain HTTP on non-loopback 0.0.0.0:5443"),
        "{err}"
    );
    parse(&["--listen", "0.0.0.0:5443", "--insecure-http"])
        .validate()
        .unwrap();
    parse(&["--listen", "0.0.0.0:5443", "--tls-self-signed"])
        .validate()
        .unwrap();
    parse(&[]).validate().unwrap();

    let err = slipway_release::Config::try_parse_from([
        "slipway-release",
        "--dev",
        "--listen",
        "0.0.0.0:7101",
    ])
    .unwrap()
    .validate()
    .unwrap_err();
    assert!(
        err.starts_with("refusing unauthenticated gRPC on non-loopback"),
        "{err}"
    );
    slipway_release::Config::try_parse_from([
        "slipway-release",
        "--dev",
        "--listen",
        "0.0.0.0:7101",
        "--service-token-key",
        KEY,
    ])
    .unwrap()
    .validate()
    .unwrap();
}

#[test]
fn the_binary_exits_64_with_one_line_on_a_refused_setting() {
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_slipway-gateway"))
            .args([
                "--password",
                "test-password-0123",
                "--release-endpoint",
                "127.0.0.1:1",
                "--build-endpoint",
                "127.0.0.1:1",
                "--rollout-endpoint",
                "127.0.0.1:1",
            ])
            .args(extra)
            .env_clear()
            .output()
            .unwrap()
    };
    for (extra, expected) in [
        (
            &["--listen", "0.0.0.0:0"][..],
            "invalid config: refusing plain HTTP on non-loopback 0.0.0.0:0: pass --tls-cert/--tls-key, --tls-self-signed, or --insecure-http\n",
        ),
        (
            &["--service-token-key", "short"][..],
            "invalid config: --service-token-key must be at least 32 bytes (e.g. `openssl rand -base64 32`)\n",
        ),
    ] {
        let output = run(extra);
        assert_eq!(output.status.code(), Some(64), "{extra:?}");
        assert_eq!(String::from_utf8_lossy(&output.stderr), expected);
    }
}
