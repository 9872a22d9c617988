//! The store against both databases: the same checks on SQLite and PostgreSQL.

use std::time::Duration;

use chrono::Utc;
use slipway_rollout::crypto::SpecCipher;
use slipway_rollout::model::Phase;
use slipway_rollout::runtime::local::{LocalRecords, ProcessRecord};
use slipway_rollout::store::{NewRollout, Store};

use slipway_domain::PromotionId;
use slipway_storage::testing::{Backend, TestDb};

use crate::helpers::{App, domain_spec};

const P1: &str = "P00000000000000000000000000000001";
const P2: &str = "P00000000000000000000000000000002";
const PSEALED: &str = "P5ea1ed00000000000000000000000000";

async fn rollouts_are_created_once_and_fenced_by_their_lease(backend: Backend) {
    let (_db, store) = open(backend).await;
    let ttl = Duration::from_secs(30);
    let new = NewRollout {
        id: PromotionId::parse(P1).unwrap(),
        target: domain_spec("app1", "RBBBBBBBBBB", &App::healthy(1)),
        fallback: Some(domain_spec("app1", "RAAAAAAAAAA", &App::healthy(1))),
        deadline_secs: 60,
    };
    // Created once; a second create returns the same rollout.
    let (plan, created) = store.create(&new, "a", ttl).await.unwrap();
    assert!(created);
    assert_eq!(
        (plan.rollout.phase, plan.rollout.epoch),
        (Phase::Pending, 1)
    );
    assert_eq!(plan.fallback.as_ref().unwrap().release, "RAAAAAAAAAA");
    assert_eq!(plan.target.env.get("TESTAPP_MODE"), Some("healthy"));
    let (again, created) = store.create(&new, "b", ttl).await.unwrap();
    assert!(!created);
    assert_eq!(again.rollout.created, plan.rollout.created);
    // A second rollout of the same app is refused while one is open.
    let other = NewRollout {
        id: PromotionId::parse(P2).unwrap(),
        ..new.clone()
    };
    let err = store
        .create(&other, "a", ttl)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is updating"), "{err}");

    // The lease: held, so nobody takes it; renewals report cancels.
    assert_eq!(store.acquire(P1, "b", ttl).await.unwrap(), None);
    assert_eq!(store.renew(P1, "a", 1, ttl).await.unwrap(), Some(false));
    store.request_cancel(P1).await.unwrap().unwrap();
    assert_eq!(store.renew(P1, "a", 1, ttl).await.unwrap(), Some(true));
    assert!(store.orphaned().await.unwrap().is_empty());
    // Released (or expired): taken over with a higher epoch; the old owner is fenced.
    store.release_lease(P1, 1).await.unwrap();
    assert_eq!(store.orphaned().await.unwrap(), [P1]);
    assert_eq!(store.acquire(P1, "b", ttl).await.unwrap(), Some(2));
    assert_eq!(store.renew(P1, "a", 1, ttl).await.unwrap(), None);
    assert!(
        !store
            .set_phase(P1, 1, Phase::Updating, "", None)
            .await
            .unwrap()
    );
    assert!(
        store
            .set_phase(P1, 2, Phase::Updating, "", None)
            .await
            .unwrap()
    );
    let fresh = Utc::now() + Duration::from_secs(60);
    assert!(
        store
            .set_phase(P1, 2, Phase::Reverting, "why", Some(fresh))
            .await
            .unwrap()
    );
    assert!(
        store
            .set_phase(P1, 2, Phase::Reverted, "why", None)
            .await
            .unwrap()
    );
    let done = store.get(P1).await.unwrap().unwrap();
    assert_eq!(
        (done.phase, done.reason.as_str(), done.reported),
        (Phase::Reverted, "why", false)
    );
    assert!(done.finished.is_some());
    assert_eq!(done.deadline_at.timestamp(), fresh.timestamp());
    // Finished: the app may roll out again; reported rollouts need no driver.
    store.create(&other, "a", ttl).await.unwrap();
    assert!(store.mark_reported(P1, 2).await.unwrap());
    assert_eq!(store.acquire(P1, "c", Duration::ZERO).await.unwrap(), None);
}

async fn events_are_numbered_per_rollout_and_fenced(backend: Backend) {
    let (_db, store) = open(backend).await;
    let ttl = Duration::from_secs(30);
    for (id, app) in [(P1, "app1"), (P2, "app2")] {
        let new = NewRollout {
            id: PromotionId::parse(id).unwrap(),
            target: domain_spec(app, "RBBBBBBBBBB", &App::healthy(1)),
            fallback: None,
            deadline_secs: 60,
        };
        store.create(&new, "a", ttl).await.unwrap();
    }
    // P1 taken over: its first owner (epoch 1) is fenced off.
    store.release_lease(P1, 1).await.unwrap();
    assert_eq!(store.acquire(P1, "b", ttl).await.unwrap(), Some(2));

    // Events: numbered from 1 per rollout, read back after an id.
    for i in 0..5 {
        let seq = store
            .append_event(P1, Utc::now(), "system/local/web", &format!("e{i}"))
            .await
            .unwrap();
        assert_eq!(seq, i + 1);
    }
    assert_eq!(
        store
            .append_event(P2, Utc::now(), "system/local/web", "x")
            .await
            .unwrap(),
        1
    );
    let after = store.events_after(P1, 2, 100).await.unwrap();
    assert_eq!(
        after.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        ["e2", "e3", "e4"]
    );
    assert_eq!(store.events_after(P1, 0, 2).await.unwrap().len(), 2);
    // Events of the old epoch are fenced off too; the new owner's go in.
    assert_eq!(
        store
            .append_event_fenced(P1, Some(1), Utc::now(), "system/local/web", "stale")
            .await
            .unwrap(),
        None,
        "a fenced-off owner records no event"
    );
    assert_eq!(
        store
            .append_event_fenced(P1, Some(2), Utc::now(), "system/local/web", "fresh")
            .await
            .unwrap(),
        Some(6)
    );
}

async fn the_local_runtimes_records_are_kept(backend: Backend) {
    let (_db, store) = open(backend).await;
    let local = LocalRecords::new(&store);
    assert_eq!(local.port("app1", "web").await.unwrap(), None);
    assert!(local.assign_port("app1", "web", 20001).await.unwrap());
    assert!(
        !local.assign_port("app2", "web", 20001).await.unwrap(),
        "a port belongs to one service"
    );
    assert_eq!(local.port("app1", "web").await.unwrap(), Some(20001));
    assert_eq!(local.ports().await.unwrap(), [20001]);
    assert_eq!(local.app_user("app1").await.unwrap(), None);
    assert!(local.assign_app_user("app1", 1_900_000_001).await.unwrap());
    assert!(
        !local.assign_app_user("app2", 1_900_000_001).await.unwrap(),
        "a uid belongs to one app"
    );
    assert!(
        !local.assign_app_user("app1", 1_900_000_002).await.unwrap(),
        "an app keeps its uid"
    );
    assert_eq!(local.app_user("app1").await.unwrap(), Some(1_900_000_001));
    assert_eq!(local.app_users().await.unwrap(), [1_900_000_001]);
    let record = ProcessRecord {
        id: "web-1".into(),
        app: "app1".into(),
        service: "web".into(),
        release: "RAAAAAAAAAA".into(),
        pid: None,
        port: 41000,
        started: chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap(),
    };
    // A width is recorded in one write, then its pids in another.
    let second = ProcessRecord {
        id: "web-2".into(),
        port: 41001,
        ..record.clone()
    };
    local
        .insert_processes(&[record.clone(), second.clone()])
        .await
        .unwrap();
    local
        .set_pids(&[("web-1".into(), 4242), ("web-2".into(), 4243)])
        .await
        .unwrap();
    let mut found = local.processes().await.unwrap();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        found,
        [
            ProcessRecord {
                pid: Some(4242),
                ..record.clone()
            },
            ProcessRecord {
                pid: Some(4243),
                ..second
            }
        ]
    );
    // One record whose id is taken fails the whole width: none is written.
    let third = ProcessRecord {
        id: "web-3".into(),
        ..record.clone()
    };
    assert!(
        local
            .insert_processes(&[third, record.clone()])
            .await
            .is_err()
    );
    assert_eq!(local.processes().await.unwrap().len(), 2);
    local.set_pid("web-1", 4244).await.unwrap();
    local.delete_process("web-1").await.unwrap();
    local.delete_processes(&["web-2".into()]).await.unwrap();
    assert!(local.processes().await.unwrap().is_empty());
    local.set_app("app1", "{}", P1).await.unwrap();
    local.set_app("app1", "{\"x\":1}", P2).await.unwrap();
    assert_eq!(
        local.apps().await.unwrap(),
        [("app1".to_owned(), "{\"x\":1}".to_owned(), P2.to_owned())]
    );
    local.remove_app("app1").await.unwrap();
    assert!(local.apps().await.unwrap().is_empty());
}

/// A migrated store on a fresh database of `backend` (kept alive by the
/// returned handle).
async fn open(backend: Backend) -> (TestDb, Store) {
    let db = backend.db().await;
    let store = Store::new(db.db.clone(), SpecCipher::generate());
    store.migrate().await.unwrap();
    (db, store)
}

slipway_storage::both_backends!(
    rollouts_are_created_once_and_fenced_by_their_lease,
    events_are_numbered_per_rollout_and_fenced,
    the_local_runtimes_records_are_kept,
);

#[tokio::test]
async fn specs_are_sealed_at_rest() {
    let db = slipway_storage::testing::sqlite().await;
    let store = Store::new(db.db.clone(), SpecCipher::generate());
    store.migrate().await.unwrap();
    let mut target = domain_spec("sealed", "RBBBBBBBBBB", &App::healthy(1));
    target.env.insert("DB_PASSWORD", "hunter2-secret").unwrap();
    let new = NewRollout {
        id: PromotionId::parse(PSEALED).unwrap(),
        target: target.clone(),
        fallback: Some(target.clone()),
        deadline_secs: 60,
    };
    store
        .create(&new, "a", Duration::from_secs(30))
        .await
        .unwrap();
    let local = LocalRecords::new(&store);
    local
        .set_app("sealed", &target.to_json(), PSEALED)
        .await
        .unwrap();
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT target_spec, fallback_spec FROM rollouts")
            .fetch_all(&db.db.pool)
            .await
            .unwrap();
    let (spec,): (String,) = sqlx::query_as("SELECT spec FROM local_apps")
        .fetch_one(&db.db.pool)
        .await
        .unwrap();
    for text in [rows[0].0.clone(), rows[0].1.clone().unwrap(), spec] {
        assert!(
            !text.contains("hunter2")
                && !text.contains("DB_PASSWORD")
                && !text.contains("TESTAPP_MODE"),
            "plaintext at rest: {text}"
        );
    }
    // And they still read back.
    let plan = store.plan(PSEALED).await.unwrap().unwrap();
    assert_eq!(plan.target.env.get("DB_PASSWORD"), Some("hunter2-secret"));
    assert!(local.apps().await.unwrap()[0].1.contains("hunter2-secret"));
}
