//! The rollout service's audit outbox against the real audit service of
//! the release service (its `RecordAudit` and store, in-process behind a
//! TCP relay the tests cut and restore): a scale or restart writes its
//! record in the transaction of the change, the relay delivers it with the
//! actor and source of the call, a record is appended once per id however
//! often it is forwarded, a record written while the release service is
//! unreachable is delivered once it is back, and so is one whose service
//! was SIGKILLed before it could deliver it or while its forward was in
//! flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use slipway_api::release::v1 as rpb;
use slipway_api::release::v1::audit_service_client::AuditServiceClient;
use slipway_api::release::v1::audit_service_server::{AuditService, AuditServiceServer};
use slipway_api::release::v1::release_service_server::ReleaseServiceServer;
use slipway_api::rollout::v1 as pb;
use slipway_api::rollout::v1::scale_service_client::ScaleServiceClient;
use slipway_rpc::actor::Actor;
use slipway_storage::outbox::Forward as _;
use slipway_storage::outbox::audit::AuditEntry;
use slipway_storage::testing::relay::Relay;
use sqlx::Row as _;
use tokio::net::TcpListener;

use crate::crash::spawn_binary;
use crate::helpers::*;

/// How the audit service answers `RecordAudit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Records and answers.
    Ok,
    /// Answers UNAVAILABLE, records nothing.
    Down,
    /// Records, then never answers (the answer is lost with its caller).
    Hold,
}

/// The release service's real audit service, answering as `mode` says.
#[derive(Clone)]
struct Audit {
    inner: Arc<slipway_release::access::Access>,
    mode: Arc<std::sync::Mutex<Mode>>,
}

#[tonic::async_trait]
impl AuditService for Audit {
    async fn record_audit(
        &self,
        request: tonic::Request<rpb::RecordAuditRequest>,
    ) -> Result<tonic::Response<rpb::RecordAuditResponse>, tonic::Status> {
        let mode = *self.mode.lock().unwrap();
        if mode == Mode::Down {
            return Err(tonic::Status::unavailable("release service down"));
        }
        let answer = self.inner.record_audit(request).await;
        if mode == Mode::Hold {
            std::future::pending::<()>().await;
        }
        answer
    }

    async fn list_audit(
        &self,
        request: tonic::Request<rpb::ListAuditRequest>,
    ) -> Result<tonic::Response<rpb::ListAuditResponse>, tonic::Status> {
        self.inner.list_audit(request).await
    }
}

/// The release side: a fake release service (promotion outcomes) and the
/// real audit service on one port, reached by the rollout service through
/// `relay`.
struct AuditRelease {
    relay: Arc<Relay>,
    mode: Arc<std::sync::Mutex<Mode>>,
    audit: AuditServiceClient<tonic::transport::Channel>,
    _dir: tempfile::TempDir,
}

impl AuditRelease {
    async fn spawn() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = slipway_release::config::Config::dev(dir.path().join("release"));
        let store = slipway_release::open_store(&config).await.unwrap();
        let mode = Arc::new(std::sync::Mutex::new(Mode::Ok));
        let access = Audit {
            inner: Arc::new(slipway_release::access::Access::new(
                store,
                slipway_release::access::TokenKey::new([7; 32]),
            )),
            mode: mode.clone(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(ReleaseServiceServer::new(FakeRelease::default()))
                .add_service(AuditServiceServer::new(access))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        let relay = Relay::start(addr.to_string()).await;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        Self {
            relay,
            mode,
            audit: AuditServiceClient::new(channel),
            _dir: dir,
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Where the rollout service reaches it.
    fn endpoint(&self) -> String {
        self.relay.addr.to_string()
    }

    /// The records of `app` with `action`, read past the relay.
    async fn records(&self, app: &str, action: &str) -> Vec<rpb::AuditRecord> {
        self.audit
            .clone()
            .list_audit(rpb::ListAuditRequest {
                app: app.to_owned(),
                since: None,
                limit: 1000,
            })
            .await
            .unwrap()
            .into_inner()
            .records
            .into_iter()
            .filter(|r| r.action == action)
            .collect()
    }

    /// Waits until `app` has `n` records of `action`.
    async fn wait_for(&self, app: &str, action: &str, n: usize) -> Vec<rpb::AuditRecord> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let records = self.records(app, action).await;
            if records.len() >= n {
                return records;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{action} of {app}: {n} records expected, got {records:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The rollout service's database.
async fn rollout_db(data: &std::path::Path) -> slipway_storage::Database {
    let url = format!("sqlite:{}", data.join("rollout.db").display());
    slipway_storage::connect(&url, &Default::default())
        .await
        .unwrap()
}

/// The outbox rows of `app`: (id, entry, published, attempts).
async fn outbox_rows(
    db: &slipway_storage::Database,
    app: &str,
) -> Vec<(String, AuditEntry, bool, i64)> {
    let rows = sqlx::query(
        "SELECT id, actor, source, action, app, target, outcome, detail, created_at, \
         published_at, attempts FROM rollout_audit_outbox WHERE app = $1 ORDER BY created_at",
    )
    .bind(app)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.iter()
        .map(|row| {
            let published: Option<i64> = row.try_get("published_at").unwrap();
            (
                row.try_get("id").unwrap(),
                AuditEntry::from_row(row).unwrap(),
                published.is_some(),
                row.try_get("attempts").unwrap(),
            )
        })
        .collect()
}

/// Waits until every outbox row of `app` satisfies `done`: up to two
/// minutes, which covers a dead relay's claim (a minute) on a busy machine.
async fn wait_rows(
    db: &slipway_storage::Database,
    app: &str,
    what: &str,
    done: impl Fn(&(String, AuditEntry, bool, i64)) -> bool,
) -> Vec<(String, AuditEntry, bool, i64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let rows = outbox_rows(db, app).await;
        if !rows.is_empty() && rows.iter().all(&done) {
            return rows;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn scales(addr: SocketAddr) -> ScaleServiceClient<slipway_rpc::Channel> {
    let channel =
        slipway_rpc::channel("rollout", &[addr.to_string()], &Default::default()).unwrap();
    ScaleServiceClient::new(channel)
}

async fn scale(addr: SocketAddr, app: &str, count: u32, by: &Actor) {
    let request = pb::SetScaleRequest {
        app: app.to_owned(),
        service: "web".into(),
        count: Some(count),
        ..Default::default()
    };
    scales(addr).set_scale(by.request(request)).await.unwrap();
}

async fn restart(addr: SocketAddr, app: &str, by: &Actor) {
    let request = pb::RestartServiceRequest {
        app: app.to_owned(),
        service: "web".into(),
    };
    scales(addr)
        .restart_service(by.request(request))
        .await
        .unwrap();
}

/// Promotes release `RAAAAAAAAAA` of `app` and waits until it runs.
async fn promote(addr: SocketAddr, app: &str) {
    let mut client = connect(addr).await;
    let promotion = promotion_id(app, 1);
    start(
        &mut client,
        &promotion,
        spec(app, "RAAAAAAAAAA", &App::healthy(1)),
        None,
        0,
    )
    .await;
    let (done, _) = finish(&mut client, &promotion, Duration::from_secs(60)).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Running, "{done:?}");
}

#[tokio::test]
async fn scale_and_restart_are_relayed_once_per_id_and_wait_out_a_release_outage() {
    let app = app_name("audit");
    let _guard = AppGuard(app.clone());
    let release = AuditRelease::spawn().await;
    let endpoint = release.endpoint();
    let (addr, _, _stop, dir) = serve(|c| c.release_endpoints = vec![endpoint]).await;
    promote(addr, &app).await;
    let db = rollout_db(&dir.path().join("data")).await;

    // The record is in the outbox when the call answers: it committed with
    // the change.
    let ci = Actor::token("ci-web", "203.0.113.7:41000");
    scale(addr, &app, 2, &ci).await;
    let rows = outbox_rows(&db, &app).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (scale_id, entry, _, _) = rows[0].clone();
    assert_eq!(
        (
            entry.action.as_str(),
            entry.target.as_str(),
            entry.actor.as_str(),
            entry.source.as_str(),
            entry.outcome.as_str()
        ),
        (
            "service.scale",
            "web",
            "token:ci-web",
            "203.0.113.7:41000",
            "ok"
        )
    );
    let got = release.wait_for(&app, "service.scale", 1).await;
    assert_eq!(
        (
            got[0].actor.as_str(),
            got[0].source.as_str(),
            got[0].target.as_str()
        ),
        ("token:ci-web", "203.0.113.7:41000", "web")
    );
    wait_rows(&db, &app, "published", |r| r.2).await;

    // Forwarded twice: the relay forwards it again (as after losing the
    // answer), and a second forwarder sends it once more; one record.
    sqlx::query(
        "UPDATE rollout_audit_outbox SET published_at = NULL, next_attempt_at = 0 WHERE id = $1",
    )
    .bind(&scale_id)
    .execute(&db.pool)
    .await
    .unwrap();
    wait_rows(&db, &app, "published again", |r| r.2).await;
    let channel =
        slipway_rpc::channel("release", &[release.endpoint()], &Default::default()).unwrap();
    slipway_rpc::audit_relay::RecordAudit::new(channel)
        .forward(&scale_id, &entry)
        .await
        .unwrap();
    assert_eq!(release.records(&app, "service.scale").await.len(), 1);

    // The release service is unreachable: the restart's record waits (tried
    // and kept), and is delivered once it is back.
    release.relay.cut().await;
    let alice = Actor::console("alice", "198.51.100.4");
    restart(addr, &app, &alice).await;
    let rows = wait_rows(&db, &app, "a failed attempt", |r| {
        r.1.action != "service.restart" || (!r.2 && r.3 >= 1)
    })
    .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(release.records(&app, "service.restart").await.is_empty());
    release.relay.restore().await;
    let got = release.wait_for(&app, "service.restart", 1).await;
    assert_eq!(
        (got[0].actor.as_str(), got[0].source.as_str()),
        ("console:alice", "198.51.100.4")
    );
    wait_rows(&db, &app, "all published", |r| r.2).await;
    assert_eq!(release.records(&app, "service.restart").await.len(), 1);
    assert_eq!(release.records(&app, "service.scale").await.len(), 1);
}

/// `kill -9` of the rollout service while its audit records wait: two
/// refused by a release service that was down, and one in flight, already
/// recorded by the release service but not yet answered. The next process
/// on the same database delivers all three (the in-flight ones once the
/// dead process's claim has run out, a minute), each recorded exactly once.
#[tokio::test]
async fn records_pending_or_in_flight_at_a_kill_9_are_recorded_once_after_the_restart() {
    let app = app_name("audit-kill");
    let _guard = AppGuard(app.clone());
    let release = AuditRelease::spawn().await;
    let dir = private_and_apps_dirs();
    let data = dir.path().join("data");
    let url = format!("sqlite:{}", data.join("rollout.db").display());
    let (mut child, addr) = spawn_binary(&data, &url, &release.endpoint()).await;
    promote(addr, &app).await;
    let db = rollout_db(&data).await;

    release.set(Mode::Down);
    let ci = Actor::token("ci-web", "203.0.113.7:41000");
    scale(addr, &app, 2, &ci).await;
    restart(addr, &app, &ci).await;
    let refused = wait_rows(&db, &app, "refused attempts", |r| !r.2 && r.3 >= 1).await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(release.records(&app, "service.scale").await.is_empty());

    // In flight: the release service records the next forward and holds
    // its answer.
    release.set(Mode::Hold);
    scale(addr, &app, 1, &ci).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let recorded = release.records(&app, "service.scale").await.len()
            + release.records(&app, "service.restart").await.len();
        if recorded >= 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "nothing forwarded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pending = outbox_rows(&db, &app).await;
    assert_eq!(pending.len(), 3, "{pending:?}");
    assert!(pending.iter().all(|r| !r.2), "{pending:?}");
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();

    release.set(Mode::Ok);
    let (_child, _addr) = spawn_binary(&data, &url, &release.endpoint()).await;
    wait_rows(&db, &app, "published after the restart", |r| r.2).await;
    let scales = release.records(&app, "service.scale").await;
    let restarts = release.records(&app, "service.restart").await;
    assert_eq!(
        (scales.len(), restarts.len()),
        (2, 1),
        "{scales:?} {restarts:?}"
    );
    for record in scales.iter().chain(&restarts) {
        assert_eq!(
            (record.actor.as_str(), record.source.as_str()),
            ("token:ci-web", "203.0.113.7:41000")
        );
    }
    // Each at the time of its change, not of its delivery.
    for (id, entry, _, _) in &pending {
        let at = chrono::DateTime::from_timestamp_micros(entry.at_micros).unwrap();
        assert!(
            scales
                .iter()
                .chain(&restarts)
                .any(|r| r.time == Some(slipway_api::timestamp(at))),
            "{id} not recorded at its time"
        );
    }
}
