//! Promotion refusals through the real gRPC hop: the release service names
//! each refusal's kind in the status metadata and the gateway answers the
//! Convox rack's status from it (403 for an app mid-promotion, 400 for the
//! rest), with the rack's words as the body.

use std::net::SocketAddr;
use std::time::Duration;

use slipway_api::release::v1 as rpb;
use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_domain::Secret;
use tokio::net::TcpListener;

const MANIFEST: &str = "services:\n  web:\n    build: .\n    port: 5000\n";

/// The release service in-process on SQLite, with no rollout service (a
/// promotion stays pending); its address.
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

/// The gateway in front of `release`; build and rollout on a closed port.
async fn gateway(release: SocketAddr) -> SocketAddr {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = slipway_gateway::Config {
        password: Some(Secret::new("test-password-0123")),
        rack_name: "test".into(),
        ..slipway_gateway::Config::with_peers(
            addr,
            vec![release.to_string()],
            vec![closed.to_string()],
            vec![closed.to_string()],
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

fn api_error<T: std::fmt::Debug>(result: Result<T, slipway_client::Error>) -> (u16, String) {
    match result {
        Err(slipway_client::Error::Api { status, message }) => (status, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_answer_the_racks_status_from_their_kind() {
    slipway_telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let release = release_service(dir.path()).await;
    let channel =
        slipway_rpc::channel("release", &[release.to_string()], &Default::default()).unwrap();
    let mut grpc = ReleaseServiceClient::new(channel);
    let created = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let request = rpb::CreateAppRequest {
                name: "myapp".into(),
                deadline_seconds: 0,
            };
            match grpc.create_app(request).await {
                Ok(_) => return,
                // Not serving yet.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert!(created.is_ok(), "the release service did not come up");
    let built = grpc
        .create_release(rpb::CreateReleaseRequest {
            app: "myapp".into(),
            build: Some("BAAAAAAAAAA".into()),
            manifest: Some(MANIFEST.into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    // Pending for good: no rollout service takes it.
    grpc.promote_release(rpb::PromoteReleaseRequest {
        app: "myapp".into(),
        release: built.id.clone(),
        force: false,
        deadline_seconds: 0,
    })
    .await
    .unwrap();

    let addr = gateway(release).await;
    let client =
        slipway_client::Client::new(&format!("http://convox:test-password-0123@{addr}")).unwrap();
    assert_eq!(
        api_error(client.release_promote("myapp", &built.id, false).await),
        (403, "app is currently updating".to_owned())
    );
    assert_eq!(
        api_error(client.app_delete("myapp").await),
        (403, "app is currently updating".to_owned())
    );

    // An env-only release of an app never built: the rack's 400.
    grpc.create_app(rpb::CreateAppRequest {
        name: "bare".into(),
        deadline_seconds: 0,
    })
    .await
    .unwrap();
    let bare = grpc
        .change_env(rpb::ChangeEnvRequest {
            app: "bare".into(),
            set: [("A".to_owned(), "1".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    assert_eq!(
        api_error(client.release_promote("bare", &bare.id, false).await),
        (
            400,
            "can not promote a release with an empty manifest".to_owned()
        )
    );
}
