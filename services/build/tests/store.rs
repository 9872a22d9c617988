//! The build store's conformance suite, run against SQLite and PostgreSQL.

use std::collections::BTreeMap;

use slipway_build::model::{Build, BuildStatus, Outcome};
use slipway_build::store::Store;
use slipway_domain::{AppName, BuildId};

use crate::helpers::Backend;

fn new_build(app: &str, n: i64) -> Build {
    Build {
        id: BuildId::generate(),
        app: AppName::parse(app).unwrap(),
        status: BuildStatus::Created,
        reason: String::new(),
        description: format!("build {n}"),
        git_sha: "37ea8cd80ed61ff9b4bb81d11cc6af0fa61cd23e".into(),
        source_url: format!("object://{app}/tmp/{n}.tgz"),
        manifest_path: "convox.yml".into(),
        manifest: String::new(),
        release: None,
        artifacts: BTreeMap::new(),
        started: chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000 + n).unwrap(),
        ended: None,
    }
}

async fn conformance(backend: Backend) {
    let db = backend.db().await;
    let store = Store::new(db.db.clone());
    store.migrate().await.unwrap();
    store.migrate().await.unwrap(); // idempotent

    let builds: Vec<Build> = (0..3).map(|n| new_build("myapp", n)).collect();
    for b in &builds {
        store.insert(b, "runner-a").await.unwrap();
    }
    store
        .insert(&new_build("other", 9), "runner-a")
        .await
        .unwrap();
    let app = AppName::parse("myapp").unwrap();

    // Round trip and newest-first listing, per app.
    assert_eq!(store.get(&app, &builds[0].id).await.unwrap(), builds[0]);
    let listed: Vec<BuildId> = store
        .list(&app, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(
        listed,
        [
            builds[2].id.clone(),
            builds[1].id.clone(),
            builds[0].id.clone()
        ]
    );
    assert_eq!(store.list(&app, 1).await.unwrap().len(), 1);
    let other = AppName::parse("other").unwrap();
    assert!(matches!(
        store.get(&other, &builds[0].id).await,
        Err(slipway_build::error::Error::NotFound(_))
    ));

    // created -> running once; the first ending wins.
    assert!(store.start(&builds[0].id).await.unwrap());
    assert!(!store.start(&builds[0].id).await.unwrap());
    let mut artifacts = BTreeMap::new();
    artifacts.insert("web".to_owned(), "file:///a/sha256-x".to_owned());
    let done = Outcome {
        status: BuildStatus::Complete,
        reason: String::new(),
        manifest: "services: {}".into(),
        release: Some("RABCDEFGHIJ".into()),
        artifacts: artifacts.clone(),
    };
    assert!(store.finish(&builds[0].id, &done).await.unwrap());
    let cancel = Outcome::stopped(BuildStatus::Cancelled, "cancelled", String::new());
    assert!(!store.finish(&builds[0].id, &cancel).await.unwrap());
    let got = store.get(&app, &builds[0].id).await.unwrap();
    assert_eq!(got.status, BuildStatus::Complete);
    assert_eq!(got.release.as_deref(), Some("RABCDEFGHIJ"));
    assert_eq!(got.artifacts, artifacts);
    assert_eq!(got.manifest, "services: {}");
    assert!(got.ended.is_some());
    assert_eq!(
        store.status(&builds[0].id).await.unwrap(),
        Some(BuildStatus::Complete)
    );
    assert_eq!(store.status(&BuildId::generate()).await.unwrap(), None);

    // A cancelled created build can no longer start.
    assert!(store.finish(&builds[1].id, &cancel).await.unwrap());
    assert!(!store.start(&builds[1].id).await.unwrap());

    // Abandoned builds: only open ones whose runner fell silent.
    store
        .insert(&new_build("myapp", 5), "runner-b")
        .await
        .unwrap();
    let future = chrono::Utc::now() + chrono::Duration::seconds(5);
    store.heartbeat("runner-b").await.unwrap();
    let failed = store
        .fail_abandoned(future, "replica stopped")
        .await
        .unwrap();
    assert_eq!(failed.len(), 3, "{failed:?}"); // builds[2], other's, and runner-b's
    let b2 = store.get(&app, &builds[2].id).await.unwrap();
    assert_eq!(
        (b2.status, b2.reason.as_str()),
        (BuildStatus::Failed, "replica stopped")
    );
    assert!(
        store
            .fail_abandoned(future, "again")
            .await
            .unwrap()
            .is_empty()
    );
    let past = chrono::Utc::now() - chrono::Duration::seconds(60);
    store
        .insert(&new_build("myapp", 6), "runner-c")
        .await
        .unwrap();
    assert!(
        store
            .fail_abandoned(past, "too early")
            .await
            .unwrap()
            .is_empty()
    );
}

slipway_storage::both_backends!(conformance);

/// A forwarder standing in for the release service: refuses while `down`,
/// records every id it accepted (a repeat is the receiver's to drop).
#[derive(Clone, Default)]
struct Receiver {
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    got:
        std::sync::Arc<std::sync::Mutex<Vec<(String, slipway_storage::outbox::audit::AuditEntry)>>>,
}

impl slipway_storage::outbox::Forward for Receiver {
    type Item = slipway_storage::outbox::audit::AuditEntry;

    fn decode(&self, row: &sqlx::any::AnyRow) -> Result<Self::Item, sqlx::Error> {
        slipway_storage::outbox::audit::AuditEntry::from_row(row)
    }

    async fn forward(&self, id: &str, item: &Self::Item) -> Result<(), String> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("UNAVAILABLE: release service down".into());
        }
        self.got.lock().unwrap().push((id.to_owned(), item.clone()));
        Ok(())
    }
}

/// Every build started leaves one `build.create` audit row, written with
/// the build (a store that is dropped right after, as a killed service,
/// loses nothing); a relay that cannot reach the release service keeps
/// the rows and retries; each row is relayed once acknowledged, and
/// published rows are pruned after the retention, unpublished never.
async fn builds_are_audited_through_the_outbox(backend: Backend) {
    use slipway_storage::outbox::relay_once;

    let db = backend.db().await;
    let store = Store::new(db.db.clone());
    store.migrate().await.unwrap();
    let builds: Vec<Build> = (0..3).map(|n| new_build("myapp", n)).collect();
    for b in &builds {
        store
            .insert_by(b, "runner-a", "token:ci-web", None)
            .await
            .unwrap();
    }
    // The service "dies" here: a new store on the same database relays.
    drop(store);
    let store = Store::new(db.db.clone());
    let outbox = store.audit_outbox();
    assert_eq!(outbox.unpublished().await.unwrap(), 3);

    let receiver = Receiver::default();
    receiver
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = relay_once(&outbox, &receiver).await;
    assert!(failed.unwrap_err().contains("release service down"));
    assert_eq!(outbox.unpublished().await.unwrap(), 3, "nothing dropped");
    // Not due again before the backoff (at least half a second).
    assert_eq!(relay_once(&outbox, &receiver).await, Ok(0));

    receiver
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // Each row falls due after its own backoff (a second at most here).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut relayed = 0;
    while outbox.unpublished().await.unwrap() > 0 {
        assert!(std::time::Instant::now() < deadline, "rows not relayed");
        relayed += relay_once(&outbox, &receiver).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(relayed, 3);
    assert_eq!(relay_once(&outbox, &receiver).await, Ok(0), "relayed once");
    let got = receiver.got.lock().unwrap().clone();
    let mut ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "{got:?}");
    for (id, entry) in &got {
        assert!(id.starts_with('A') && id.len() == 33, "{id}");
        assert_eq!(
            (
                entry.action.as_str(),
                entry.app.as_str(),
                entry.actor.as_str()
            ),
            ("build.create", "myapp", "token:ci-web")
        );
        assert!(builds.iter().any(|b| b.id.as_str() == entry.target));
    }
    // Published rows go after the retention; a failed build is no audit row.
    assert_eq!(
        outbox
            .prune(slipway_storage::now_micros() - 60_000_000)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        outbox
            .prune(slipway_storage::now_micros() + 1)
            .await
            .unwrap(),
        3
    );
    let webhooks = store.webhook_outbox();
    assert_eq!(
        webhooks.unpublished().await.unwrap(),
        3,
        "build:create events wait apart"
    );
}

slipway_storage::both_backends!(builds_are_audited_through_the_outbox);

/// A cancel is audited in the transaction that ends the build cancelled
/// (the path of a build running on another replica): one `build.cancel`
/// row with the canceller's actor and address; a build that had already
/// ended, or an end that is no cancel, records nothing.
async fn cancels_are_audited_with_the_build_end(backend: Backend) {
    use slipway_storage::outbox::audit::AuditEntry;

    let db = backend.db().await;
    let store = Store::new(db.db.clone());
    store.migrate().await.unwrap();
    let builds: Vec<Build> = (0..3).map(|n| new_build("myapp", n)).collect();
    for b in &builds {
        store.insert(b, "runner-a").await.unwrap();
    }
    let by = slipway_rpc::actor::Actor::console("alice", "198.51.100.4");
    let cancel = Outcome::stopped(BuildStatus::Cancelled, "cancelled", String::new());
    let failed = Outcome::stopped(BuildStatus::Failed, "boom", String::new());
    assert!(
        store
            .finish_by(&builds[0].id, &cancel, Some(&by))
            .await
            .unwrap()
    );
    // Already ended: the cancel changes nothing and is not recorded.
    assert!(
        !store
            .finish_by(&builds[0].id, &cancel, Some(&by))
            .await
            .unwrap()
    );
    // A failure is no cancel, whoever asked.
    assert!(
        store
            .finish_by(&builds[1].id, &failed, Some(&by))
            .await
            .unwrap()
    );
    // A cancel nobody asked for here (another replica's, seen by its
    // heartbeat) is that replica's record.
    assert!(store.finish_by(&builds[2].id, &cancel, None).await.unwrap());

    let rows = sqlx::query(
        "SELECT id, actor, source, action, app, target, outcome, detail, created_at \
         FROM build_audit_outbox WHERE action = 'build.cancel'",
    )
    .fetch_all(&db.db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    let entry = AuditEntry::from_row(&rows[0]).unwrap();
    assert_eq!(
        (
            entry.actor.as_str(),
            entry.source.as_str(),
            entry.app.as_str(),
            entry.target.as_str(),
            entry.outcome.as_str()
        ),
        (
            "console:alice",
            "198.51.100.4",
            "myapp",
            builds[0].id.as_str(),
            "ok"
        )
    );
    assert!(entry.detail.contains(builds[0].id.as_str()), "{entry:?}");
    // Relayed with the build.create rows of the same outbox.
    assert_eq!(store.audit_outbox().unpublished().await.unwrap(), 4);
}

slipway_storage::both_backends!(cancels_are_audited_with_the_build_end);
