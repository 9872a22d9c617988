//! What the release service keeps of what others relay and of its own
//! deliveries: audit records relayed from another service's outbox are
//! appended once per id with the time of their change; every attempt of a
//! webhook delivery is kept (the deliveries view shows the recent ones);
//! finished deliveries are pruned after the retention and pending ones
//! stay; a promotion cancelled while rolling out is announced as
//! `app:promote:cancelled`, whether or not the rollout says so, and one
//! cancelled during its release command ends in the state `cancelled`.

use std::time::Duration;

use slipway_api::release::v1 as pb;
use slipway_api::release::v1::audit_service_client::AuditServiceClient;
use slipway_rpc::actor::Actor;

use crate::dispatch::{Recorder, rollout_server};
use crate::helpers::Backend;
use crate::webhooks::{Mode, Receiver, Service, eventually};

slipway_storage::both_backends!(
    relayed_audit_records_are_appended_once_per_id,
    every_attempt_of_a_delivery_is_kept_newest_first,
    finished_deliveries_are_pruned_after_the_retention_and_pending_ones_stay,
    a_cancel_while_rolling_out_is_announced_as_cancelled,
);

const DAY_MICROS: i64 = 24 * 3600 * 1_000_000;

async fn relayed_audit_records_are_appended_once_per_id(backend: Backend) {
    let s = Service::spawn(backend, |_| {}).await;
    let channel = slipway_rpc::channel(
        "release",
        std::slice::from_ref(&s.app.endpoint),
        &Default::default(),
    )
    .unwrap();
    let mut audit = AuditServiceClient::new(channel);
    let id = format!("A{:032x}", rand::random::<u128>());
    let when = chrono::Utc::now() - chrono::Duration::hours(1);
    let record = pb::RecordAuditRequest {
        action: "service.scale".into(),
        app: "web".into(),
        target: "worker".into(),
        outcome: "ok".into(),
        detail: "count 3".into(),
        id: id.clone(),
        time: Some(slipway_api::timestamp(when)),
    };
    // A relay that lost the answers sends the same row again.
    for _ in 0..3 {
        audit
            .record_audit(Actor::token("ci-web", "10.0.0.7:5000").request(record.clone()))
            .await
            .unwrap();
    }
    // Records without an id are appended every time.
    for _ in 0..2 {
        audit
            .record_audit(Actor::password("10.0.0.8").request(pb::RecordAuditRequest {
                action: "denied: deleting apps".into(),
                outcome: "denied".into(),
                ..Default::default()
            }))
            .await
            .unwrap();
    }
    let trail = audit
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    let scaled: Vec<_> = trail
        .iter()
        .filter(|r| r.action == "service.scale")
        .collect();
    assert_eq!(scaled.len(), 1, "{trail:?}");
    let r = scaled[0];
    assert_eq!(
        (r.actor.as_str(), r.source.as_str(), r.target.as_str()),
        ("token:ci-web", "10.0.0.7:5000", "worker")
    );
    let at = slipway_api::from_timestamp(r.time.as_ref().unwrap());
    assert!(
        (at - when).num_seconds().abs() <= 1,
        "the time of the change, not of the relay: {at} vs {when}"
    );
    let denied = trail.iter().filter(|r| r.outcome == "denied").count();
    assert_eq!(denied, 2, "{trail:?}");
}

async fn every_attempt_of_a_delivery_is_kept_newest_first(backend: Backend) {
    let s = Service::spawn(backend, |_| {}).await;
    let busy = Receiver::start(Mode::Status(503)).await;
    s.add_webhook(&busy.url("/"), &["app:create"], "").await;
    s.create_app("web").await;
    eventually("three failed attempts", || async {
        (busy.got().len() >= 3).then_some(())
    })
    .await;
    busy.set(Mode::Ok);
    let settled = s.settled().await;
    assert_eq!(settled.len(), 1, "{settled:?}");
    let delivery = &settled[0];
    assert_eq!(delivery.state, "delivered");
    let attempts = &delivery.recent_attempts;
    assert_eq!(
        attempts.len() as u32,
        delivery.attempts.min(10),
        "{delivery:?}"
    );
    assert_eq!(attempts[0].number, delivery.attempts);
    assert_eq!(attempts[0].status, 200);
    assert!(attempts[0].error.is_empty(), "{attempts:?}");
    assert!(
        attempts.windows(2).all(|w| w[0].number == w[1].number + 1),
        "newest first, one per attempt: {attempts:?}"
    );
    assert!(
        attempts[1..]
            .iter()
            .all(|a| a.status == 503 && a.error == "answered 503"),
        "{attempts:?}"
    );
    assert!(attempts.iter().all(|a| a.at.is_some()));
}

async fn finished_deliveries_are_pruned_after_the_retention_and_pending_ones_stay(
    backend: Backend,
) {
    let s = Service::spawn(backend, |c| {
        // The pending delivery stays pending through the shift below.
        c.webhooks.webhook_retry_for = Duration::from_secs(30 * 24 * 3600);
    })
    .await;
    let ok = Receiver::start(Mode::Ok).await;
    let mut down = Receiver::start(Mode::Ok).await;
    down.down().await;
    s.add_webhook(&ok.url("/"), &["app:create"], "").await;
    s.add_webhook(&down.url("/"), &["app:create"], "").await;
    s.create_app("web").await;
    eventually("one delivered, one retried", || async {
        let all = s.deliveries().await;
        (all.iter().any(|d| d.state == "delivered")
            && all.iter().any(|d| d.state == "pending" && d.attempts >= 1))
        .then_some(())
    })
    .await;
    // Eight days pass.
    let pool = &s.app.db.db.pool;
    for sql in [
        "UPDATE webhook_deliveries SET updated_at = updated_at - $1, created_at = created_at - $1",
        "UPDATE webhook_attempts SET at = at - $1",
        "UPDATE webhook_events SET created_at = created_at - $1",
    ] {
        sqlx::query(sql)
            .bind(8 * DAY_MICROS)
            .execute(pool)
            .await
            .unwrap();
    }
    // A replica prunes when it starts (then every ten minutes).
    let _replica = s.replica().await;
    let left = eventually("the delivered one pruned", || async {
        let all = s.deliveries().await;
        (all.len() == 1).then_some(all)
    })
    .await;
    assert_eq!(left[0].state, "pending", "{left:?}");
    assert_eq!(s.app.count("webhook_events").await, 1, "its event stays");
    // Its attempts went with it; the pending one's old attempts too.
    let old = sqlx::query("SELECT COUNT(*) AS n FROM webhook_attempts WHERE at < $1")
        .bind(slipway_storage::now_micros() - 7 * DAY_MICROS)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(sqlx::Row::try_get::<i64, _>(&old, "n").unwrap(), 0);
    // The pending delivery is still delivered once its receiver is back.
    down.up().await;
    let settled = s.settled().await;
    assert_eq!(settled[0].state, "delivered", "{settled:?}");
}

async fn a_cancel_while_rolling_out_is_announced_as_cancelled(backend: Backend) {
    let recorder = Recorder::default();
    let endpoint = rollout_server(recorder.clone()).await;
    let s = Service::spawn(backend, |c| c.rollout_endpoints = vec![endpoint]).await;
    let r = Receiver::start(Mode::Ok).await;
    s.create_app("web").await;
    s.add_webhook(
        &r.url("/"),
        &[
            "app:promote:completed",
            "app:promote:errored",
            "app:promote:cancelled",
        ],
        "web",
    )
    .await;
    let first = s.release("web").await;
    let p = s.promote("web", &first.id).await;
    s.complete(&p.id, pb::PromotionOutcome::Succeeded, "")
        .await
        .unwrap();

    let client = s.app.client.clone();
    let cancel = || async {
        client
            .clone()
            .cancel_promotion(
                Actor::console("alice", "192.0.2.1")
                    .request(pb::CancelPromotionRequest { app: "web".into() }),
            )
            .await
            .unwrap()
            .into_inner()
            .promotion
            .unwrap()
    };
    let end = |id: String, outcome: pb::PromotionOutcome, cancelled: Option<bool>, reason: &str| {
        let client = client.clone();
        let reason = reason.to_owned();
        async move {
            client
                .clone()
                .complete_promotion(pb::CompletePromotionRequest {
                    promotion: id,
                    outcome: outcome as i32,
                    reason,
                    lease_epoch: 1,
                    cancelled,
                })
                .await
                .unwrap()
                .into_inner()
                .promotion
                .unwrap()
        }
    };
    let complete = |id: String, cancelled: Option<bool>, reason: &str| {
        end(id, pb::PromotionOutcome::RolledBack, cancelled, reason)
    };

    // A cancel while rolling out, reported by a rollout that does not say.
    let second = s.release("web").await;
    let p2 = s.promote("web", &second.id).await;
    assert_eq!(p2.state, pb::PromotionState::RollingOut as i32);
    let asked = cancel().await;
    assert_eq!(asked.state, pb::PromotionState::RollingOut as i32);
    let ended = complete(p2.id.clone(), None, "cancelled").await;
    assert_eq!(
        ended.state,
        pb::PromotionState::RolledBack as i32,
        "the state is what the rollout did"
    );
    // A rollout that says its end was a cancel.
    let third = s.release("web").await;
    let p3 = s.promote("web", &third.id).await;
    cancel().await;
    complete(p3.id.clone(), Some(true), "cancelled").await;
    // A rollout already reverting for a failed check when the cancel came.
    let fourth = s.release("web").await;
    let p4 = s.promote("web", &fourth.id).await;
    cancel().await;
    complete(p4.id.clone(), Some(false), "web: health check failed").await;
    // A cancel during the release command, before anything of the release
    // started: the promotion itself ends cancelled, and a repeated report
    // answers the same.
    let fifth = s.release("web").await;
    let p5 = s.promote("web", &fifth.id).await;
    cancel().await;
    let reason = "cancelled during the release command";
    for _ in 0..2 {
        let ended = end(
            p5.id.clone(),
            pb::PromotionOutcome::Cancelled,
            Some(true),
            reason,
        )
        .await;
        assert_eq!(ended.state, pb::PromotionState::Cancelled as i32);
        assert_eq!(ended.reason, reason);
    }

    s.settled().await;
    let ends = |release: &str| {
        r.got()
            .into_iter()
            .filter(|g| g.json()["data"]["id"] == release)
            .map(|g| (g.action(), g.json()))
            .collect::<Vec<_>>()
    };
    for release in [&second.id, &third.id, &fifth.id] {
        let got = ends(release);
        assert_eq!(got.len(), 1, "exactly one end event: {got:?}");
        assert_eq!(got[0].0, "app:promote:cancelled", "{got:?}");
        assert_eq!(got[0].1["data"]["actor"], "console:alice", "who cancelled");
    }
    let got = ends(&fourth.id);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "app:promote:errored", "{got:?}");
    assert_eq!(got[0].1["data"]["message"], "web: health check failed");
    // The cancel requests are on the trail, once each.
    let n = sqlx::query("SELECT COUNT(*) AS n FROM audit_events WHERE action = 'promotion.cancel'")
        .fetch_one(&s.app.db.db.pool)
        .await
        .unwrap();
    assert_eq!(sqlx::Row::try_get::<i64, _>(&n, "n").unwrap(), 4);
}
