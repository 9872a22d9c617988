//! The embedded rack's transport security: HTTPS with its persisted
//! self-signed certificate when asked, service tokens on its internal gRPC
//! hops always (the key is generated into the data dir), and the refusals
//! of `slipway-rack` itself.

use std::path::PathBuf;
use std::time::Duration;

use slipway_api::release::v1 as rpb;
use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_gateway::tls::TlsArgs;
use slipway_rack::{Config, Rack};

fn config(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.join("rack"),
        listen: "127.0.0.1:0".parse().unwrap(),
        password: Some("tls-secret-0123456".to_owned().into()),
        name: "tls".into(),
        default_deadline: Duration::from_secs(120),
        max_upload_bytes: 1 << 20,
        port_range: None,
        insecure_no_auth: false,
        quickstart: false,
        quickstart_app: PathBuf::new(),
        stop_apps: false,
        webhook_allow_private: false,
        apps: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_rack_serves_https_and_authenticates_its_own_hops() {
    slipway_telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsArgs {
        tls_self_signed: true,
        ..Default::default()
    };
    let rack = Rack::start_with(&config(dir.path()), &tls).await.unwrap();
    assert!(
        rack.rack_url
            .starts_with("https://convox:tls-secret-0123456@127.0.0.1:")
    );
    let ca = rack
        .ca_file
        .clone()
        .expect("a self-signed rack names its CA file");
    assert!(
        ca.ends_with("rack/gateway/tls/cert.pem"),
        "{}",
        ca.display()
    );

    // Through the gateway over TLS, to the release service with a token.
    let client = slipway_client::Client::with_tls(
        &rack.rack_url,
        &slipway_client::TlsOptions {
            ca_file: Some(ca),
            insecure: false,
        },
    )
    .unwrap();
    client.app_create("hops", None).await.unwrap();
    assert_eq!(client.apps().await.unwrap()[0].name, "hops");

    // The services refuse callers without the rack's key...
    let release = format!("http://{}", rack.services[0]);
    let plain = slipway_rpc::channel(
        "release",
        std::slice::from_ref(&release),
        &Default::default(),
    )
    .unwrap();
    let status = ReleaseServiceClient::new(plain)
        .list_apps(rpb::ListAppsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    // ...and answer those that have it.
    let signed = slipway_rpc::channel("release", &[release], &rack.channel_options()).unwrap();
    let apps = ReleaseServiceClient::new(signed)
        .list_apps(rpb::ListAppsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(apps.apps.len(), 1);
    rack.shutdown().await;

    // The key is kept, owner-only, so restarts keep their processes' trust.
    let key = dir.path().join("rack/service-token-key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0);
    }
    assert!(std::fs::read_to_string(&key).unwrap().len() >= 32);
}

#[test]
fn the_binary_refuses_plain_http_off_loopback_with_exit_64() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_slipway-rack"))
        .args([
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            "/nonexistent/never-created",
        ])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "invalid config: refusing plain HTTP on non-loopback 0.0.0.0:0: pass --tls-cert/--tls-key, --tls-self-signed, or --insecure-http\n"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_slipway-rack"))
        .args(["--tls-cert", "/tmp/c.pem"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--tls-cert and --tls-key"), "{stderr}");
}
