//! Reads through the gateway survive a dead replica: with two release
//! service endpoints, one of them a closed port, every GET still answers
//! (reads go round-robin over the replicas and an UNAVAILABLE one is retried
//! on the next).

use std::net::SocketAddr;
use std::time::Duration;

use slipway_api::release::v1 as rpb;
use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_domain::Secret;
use tokio::net::TcpListener;

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// The release service in-process on SQLite; its address.
async fn release_service(dir: &std::path::Path) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = slipway_release::Config::dev(dir.to_owned());
    tokio::spawn(async move {
        slipway_release::run(config, listener, std::future::pending())
            .await
            .unwrap();
    });
    addr
}

async fn gateway(release_endpoints: Vec<String>, dead: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = slipway_gateway::Config {
        password: Some(Secret::new("test-password-0123")),
        rack_name: "test".into(),
        max_upload_bytes: 1 << 20,
        request_timeout: Duration::from_secs(10),
        concurrency_limit: 64,
        ..slipway_gateway::Config::with_peers(
            addr,
            release_endpoints,
            vec![dead.to_string()],
            vec![dead.to_string()],
            std::env::temp_dir(),
        )
    };
    tokio::spawn(async move {
        slipway_gateway::run(config, listener, std::future::pending())
            .await
            .unwrap();
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_answered_while_one_release_replica_is_down() {
    slipway_telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let live = release_service(dir.path()).await;
    let dead = closed_port().await;

    // The app to read, created on the live replica directly.
    let channel =
        slipway_rpc::channel("release", &[live.to_string()], &Default::default()).unwrap();
    let mut release = ReleaseServiceClient::new(channel);
    let created = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let request = rpb::CreateAppRequest {
                name: "myapp".into(),
                deadline_seconds: 0,
            };
            match release.create_app(request).await {
                Ok(_) => return,
                // Not serving yet.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert!(created.is_ok(), "the release service did not come up");

    let addr = gateway(vec![dead.to_string(), live.to_string()], dead).await;
    let client =
        slipway_client::Client::new(&format!("http://convox:test-password-0123@{addr}")).unwrap();
    // Enough reads that, without retries, round-robin would send half of
    // them to the dead replica.
    for _ in 0..10 {
        let apps = client.apps().await.expect("GET /apps");
        assert_eq!(
            apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            ["myapp"]
        );
        let app = client.app("myapp").await.expect("GET /apps/myapp");
        assert_eq!(app.name, "myapp");
        let releases = client
            .releases("myapp", None)
            .await
            .expect("GET /apps/myapp/releases");
        assert!(releases.is_empty());
    }
    // A read the service answers with an error is not retried into success.
    let missing = client.app("nope").await.unwrap_err();
    assert!(missing.to_string().contains("not found"), "{missing}");
}
