//! `TestApp`: one release service on a fresh database, with domain-level
//! helpers; `slipway_storage::both_backends!` runs a test on each backend.

use std::collections::HashMap;

use base64::Engine as _;
use slipway_api::release::v1 as pb;
use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_release::Config;
use slipway_rpc::Channel;
use slipway_storage::testing::TestDb;
use tokio::sync::oneshot;

/// The database a test runs on.
pub use slipway_storage::testing::Backend;

pub const MANIFEST: &str =
    "services:\n  web:\n    build: .\n    command: bin/web\n    port: 5000\n";

pub struct TestApp {
    pub client: ReleaseServiceClient<Channel>,
    /// `http://addr` of the running server (for the other services' clients).
    pub endpoint: String,
    pub db: TestDb,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        slipway_telemetry::init_for_tests();
        let db = backend.db().await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::dev(dir.path().to_path_buf());
        config.store.database_url = Some(db.url.clone().into());
        let key: [u8; 32] = rand::random();
        config.env_key = Some(base64::engine::general_purpose::STANDARD.encode(key).into());
        tweak(&mut config);
        let mut app = Self {
            client: placeholder_client(),
            endpoint: String::new(),
            db,
            config,
            stop: None,
            server: None,
            _dir: dir,
        };
        app.start().await;
        app
    }

    /// Starts (or restarts) the server with the current config.
    pub async fn start(&mut self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let config = self.config.clone();
        self.server = Some(tokio::spawn(slipway_release::run(
            config,
            listener,
            async {
                let _ = rx.await;
            },
        )));
        self.stop = Some(tx);
        self.endpoint = format!("http://{addr}");
        self.client = ReleaseServiceClient::new(
            slipway_rpc::channel("release", &[format!("http://{addr}")], &Default::default())
                .unwrap(),
        );
    }

    /// A second replica on the same database and key, started once this
    /// one has migrated (SQLite migrations take no lock; one process at a
    /// time migrates an embedded rack).
    pub async fn replica(&self) -> TestApp {
        self.client
            .clone()
            .list_apps(pb::ListAppsRequest {})
            .await
            .expect("first replica is up");
        let dir = tempfile::tempdir().unwrap();
        let mut config = self.config.clone();
        config.store.data_dir = dir.path().to_path_buf();
        let db = self.db.share();
        let mut app = Self {
            client: placeholder_client(),
            endpoint: String::new(),
            db,
            config,
            stop: None,
            server: None,
            _dir: dir,
        };
        app.start().await;
        app
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    pub async fn create_app(&self, name: &str) -> pb::App {
        self.client
            .clone()
            .create_app(pb::CreateAppRequest {
                name: name.into(),
                deadline_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .app
            .unwrap()
    }

    /// A release of a new build carrying `manifest`.
    pub async fn build_release(&self, app: &str, manifest: &str) -> pb::Release {
        let build = slipway_domain::BuildId::generate().to_string();
        self.client
            .clone()
            .create_release(pb::CreateReleaseRequest {
                app: app.into(),
                build: Some(build),
                manifest: Some(manifest.into()),
                description: Some("build 0a1b2c3d4e my commit message".into()),
                artifacts: [("web".to_owned(), "file:///srv/artifact".to_owned())].into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .release
            .unwrap()
    }

    pub async fn env_set(
        &self,
        app: &str,
        pairs: &[(&str, &str)],
    ) -> Result<pb::Release, tonic::Status> {
        self.change_env(app, pairs, &[]).await
    }

    pub async fn change_env(
        &self,
        app: &str,
        set: &[(&str, &str)],
        unset: &[&str],
    ) -> Result<pb::Release, tonic::Status> {
        let set: HashMap<String, String> = set
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.client
            .clone()
            .change_env(pb::ChangeEnvRequest {
                app: app.into(),
                set,
                unset: unset.iter().map(|k| k.to_string()).collect(),
                parent_release: None,
                expected_newest_release: None,
            })
            .await
            .map(|r| r.into_inner().release.unwrap())
    }

    pub async fn promote(
        &self,
        app: &str,
        release: &str,
    ) -> Result<pb::PromoteReleaseResponse, tonic::Status> {
        self.client
            .clone()
            .promote_release(pb::PromoteReleaseRequest {
                app: app.into(),
                release: release.into(),
                force: false,
                deadline_seconds: 0,
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn complete(
        &self,
        promotion: &str,
        outcome: pb::PromotionOutcome,
        reason: &str,
    ) -> Result<pb::Promotion, tonic::Status> {
        self.client
            .clone()
            .complete_promotion(pb::CompletePromotionRequest {
                promotion: promotion.into(),
                outcome: outcome as i32,
                reason: reason.into(),
                lease_epoch: 1,
                cancelled: None,
            })
            .await
            .map(|r| r.into_inner().promotion.unwrap())
    }

    /// Promotes and reports success, making `release` active.
    pub async fn activate(&self, app: &str, release: &str) {
        let promotion = self.promote(app, release).await.unwrap().promotion.unwrap();
        self.complete(&promotion.id, pb::PromotionOutcome::Succeeded, "")
            .await
            .unwrap();
    }

    pub async fn app(&self, name: &str) -> pb::App {
        self.client
            .clone()
            .get_app(pb::GetAppRequest { name: name.into() })
            .await
            .unwrap()
            .into_inner()
            .app
            .unwrap()
    }

    pub async fn releases(&self, app: &str, limit: u32) -> Vec<pb::Release> {
        self.client
            .clone()
            .list_releases(pb::ListReleasesRequest {
                app: app.into(),
                limit,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .releases
    }

    pub async fn newest(&self, app: &str) -> pb::Release {
        self.client
            .clone()
            .get_release(pb::GetReleaseRequest {
                app: app.into(),
                id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .release
            .unwrap()
    }

    /// Counts rows of a table straight from the database.
    pub async fn count(&self, table: &str) -> i64 {
        use sqlx::Row as _;
        sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(&self.db.db.pool)
            .await
            .unwrap()
            .try_get("n")
            .unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn placeholder_client() -> ReleaseServiceClient<Channel> {
    ReleaseServiceClient::new(
        slipway_rpc::channel(
            "release",
            &["http://127.0.0.1:9".into()],
            &Default::default(),
        )
        .expect("a valid endpoint"),
    )
}

/// Asserts a call failed with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) {
    match result {
        Ok(v) => panic!("expected {code:?} containing {needle:?}, got Ok({v:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(needle),
                "expected {needle:?} in {:?}",
                status.message()
            );
        }
    }
}

/// A release's env as Convox text (sorted `K=V` lines), for short assertions.
pub fn env_text(release: &pb::Release) -> String {
    slipway_domain::env::wire_text(&release.env_vars.clone().into_iter().collect())
}

/// `K=V` lines as the `env_vars` of a `CreateRelease`, split at the first `=`
/// and not checked here, so the service's own checks are what a test sees.
pub fn env_vars(text: &str) -> Option<pb::EnvVars> {
    Some(pb::EnvVars {
        vars: text
            .split('\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("K=V");
                (k.to_owned(), v.to_owned())
            })
            .collect(),
    })
}
