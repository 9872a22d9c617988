//! Webhooks against a real HTTP receiver in the test: signatures verify
//! with an HMAC computed here, a rolled-back promotion yields exactly one
//! `app:promote:errored` with its reason, a receiver down and then up gets
//! every delivery (duplicates only under one id), a hanging receiver slows
//! neither a promotion nor the other receivers, two replicas never deliver
//! one delivery twice at once, URLs and keys are sealed at rest, and
//! non-public addresses are refused without `--webhook-allow-private`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use base64::Engine as _;
use slipway_api::release::v1 as pb;
use tonic::Code;

use crate::helpers::Backend;

mod harness;

pub(crate) use harness::{Mode, Receiver, Service, eventually};
use harness::{Received, verifying};

slipway_storage::both_backends!(
    deliveries_are_signed_with_every_active_key,
    a_rolled_back_promotion_yields_exactly_one_errored_event,
    a_receiver_down_then_up_receives_everything_once_per_id,
    a_hanging_receiver_slows_neither_a_promotion_nor_other_receivers,
    two_replicas_never_deliver_one_delivery_twice,
    urls_and_keys_are_sealed_and_lists_hide_secrets,
    non_public_addresses_and_other_schemes_are_refused,
    client_errors_are_not_retried_and_server_errors_are,
    published_events_are_recorded_once,
);

async fn deliveries_are_signed_with_every_active_key(backend: Backend) {
    let s = Service::spawn(backend, |_| {}).await;
    let r = Receiver::start(Mode::Ok).await;
    let first = s.add_key().await;
    let second = s.add_key().await;
    let created = s.add_webhook(&r.url("/hook"), &[], "").await;
    assert!(created.generated_key.is_none(), "keys existed already");
    s.create_app("web").await;
    let got = eventually("app:create", || async {
        r.got().into_iter().find(|g| g.action() == "app:create")
    })
    .await;
    assert_eq!(verifying(&got, &first), 1, "first key verifies");
    assert_eq!(verifying(&got, &second), 1, "second key verifies");
    assert_eq!(verifying(&got, "not-the-key"), 0);
    let sigs = got.headers["convox-signature"].to_str().unwrap();
    assert_eq!(sigs.matches("v1=").count(), 2, "{sigs}");
    assert_eq!(got.headers["content-type"], "application/json");
    let body = got.json();
    assert_eq!(body["status"], "success");
    assert_eq!(body["data"]["app"], "web");
    assert_eq!(body["data"]["rack"], "test-rack");
    assert_eq!(body["data"]["actor"], "token:ci-web");
    assert_eq!(body["delivery_id"], got.delivery());
    chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).unwrap();

    // A removed key signs no more; the body is unchanged, so the remaining
    // key verifies it.
    let keys = s
        .webhooks
        .clone()
        .list_webhook_keys(pb::ListWebhookKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 2);
    s.webhooks
        .clone()
        .delete_webhook_key(pb::DeleteWebhookKeyRequest {
            id: keys[0].id.clone(),
        })
        .await
        .unwrap();
    let release = s.release("web").await;
    let got = eventually("release:create", || async {
        r.got().into_iter().find(|g| g.action() == "release:create")
    })
    .await;
    assert_eq!(got.json()["data"]["id"], release.id);
    assert_eq!(got.json()["data"]["message"], "build 0a1b2c3 fix the thing");
    assert_eq!(verifying(&got, &first), 0, "removed key");
    assert_eq!(verifying(&got, &second), 1);

    // The last key stays while a receiver does.
    let last = s
        .webhooks
        .clone()
        .list_webhook_keys(pb::ListWebhookKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(last.len(), 1);
    let err = s
        .webhooks
        .clone()
        .delete_webhook_key(pb::DeleteWebhookKeyRequest {
            id: last[0].id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("last signing key"), "{err:?}");

    // At most four keys at once.
    s.add_key().await;
    s.add_key().await;
    s.add_key().await;
    let err = s
        .webhooks
        .clone()
        .create_webhook_key(pb::CreateWebhookKeyRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}

async fn a_rolled_back_promotion_yields_exactly_one_errored_event(backend: Backend) {
    let s = Service::spawn(backend, |_| {}).await;
    let r = Receiver::start(Mode::Ok).await;
    s.create_app("web").await;
    let created = s
        .add_webhook(
            &r.url("/promotions"),
            &[
                "release:promote",
                "app:promote:completed",
                "app:promote:errored",
                "app:promote:cancelled",
            ],
            "web",
        )
        .await;
    let key = created
        .generated_secret
        .expect("the first webhook makes a key")
        .value;
    let release = s.release("web").await;
    let promotion = s.promote("web", &release.id).await;
    let reason = "web: health check failed 3 times (GET / answered 500)";
    s.complete(&promotion.id, pb::PromotionOutcome::RolledBack, reason)
        .await
        .unwrap();
    // A repeated report, and a conflicting one: neither announces anything.
    s.complete(&promotion.id, pb::PromotionOutcome::RolledBack, reason)
        .await
        .unwrap();
    let conflicting = s
        .complete(&promotion.id, pb::PromotionOutcome::Succeeded, "")
        .await;
    assert!(conflicting.is_err(), "{conflicting:?}");

    let settled = s.settled().await;
    assert!(
        settled.iter().all(|d| d.state == "delivered"),
        "{settled:?}"
    );
    let got = r.got();
    let errored: Vec<&Received> = got
        .iter()
        .filter(|g| g.action() == "app:promote:errored")
        .collect();
    assert_eq!(errored.len(), 1, "exactly one errored event: {got:?}");
    let body = errored[0].json();
    assert_eq!(body["status"], "error");
    assert_eq!(body["data"]["message"], reason);
    assert_eq!(body["data"]["id"], release.id);
    assert_eq!(body["data"]["actor"], "token:ci-web", "who promoted");
    assert_eq!(verifying(errored[0], &key), 1);
    // A receiver takes up to `--webhook-concurrency` deliveries at once,
    // so they may arrive in either order.
    let mut actions: Vec<String> = got.iter().map(Received::action).collect();
    actions.sort();
    assert_eq!(
        actions,
        ["app:promote:errored", "release:promote"],
        "release:create is filtered out, nothing else announced"
    );
    // The app filter: another app's events do not reach this receiver.
    s.create_app("other").await;
    let other = s.release("other").await;
    s.promote("other", &other.id).await;
    let all = eventually("the other app's deliveries", || async {
        let all = s.deliveries().await;
        (all.len() == settled.len()).then_some(all)
    })
    .await;
    assert_eq!(all.len(), 2, "{all:?}");
}

async fn a_receiver_down_then_up_receives_everything_once_per_id(backend: Backend) {
    let s = Service::spawn(backend, |_| {}).await;
    let mut r = Receiver::start(Mode::Ok).await;
    s.add_webhook(&r.url("/"), &[], "").await;
    r.down().await;
    s.create_app("web").await;
    for _ in 0..5 {
        s.release("web").await;
    }
    // Every delivery failed at least twice while the receiver was down.
    let failing = eventually("two failed attempts of every delivery", || async {
        let all = s.deliveries().await;
        (all.len() == 6 && all.iter().all(|d| d.attempts >= 2 && d.state == "pending"))
            .then_some(all)
    })
    .await;
    assert!(
        failing
            .iter()
            .all(|d| d.last_error.contains("connection failed")),
        "{failing:?}"
    );
    assert!(r.got().is_empty());
    r.up().await;
    let settled = s.settled().await;
    assert!(
        settled.iter().all(|d| d.state == "delivered"),
        "{settled:?}"
    );
    let got = r.got();
    let mut by_id: HashMap<String, Vec<&Received>> = HashMap::new();
    for g in &got {
        by_id.entry(g.delivery()).or_default().push(g);
    }
    let delivered: std::collections::BTreeSet<String> =
        settled.iter().map(|d| d.id.clone()).collect();
    let received: std::collections::BTreeSet<String> = by_id.keys().cloned().collect();
    assert_eq!(received, delivered, "every delivery arrived");
    for (id, copies) in &by_id {
        // Duplicates only as the same delivery: same id, same body.
        assert!(
            copies.iter().all(|c| c.body == copies[0].body),
            "{id}: copies differ"
        );
        assert_eq!(copies[0].json()["delivery_id"], id.as_str());
    }
    let actions: BTreeMap<String, usize> = got.iter().fold(BTreeMap::new(), |mut m, g| {
        *m.entry(g.action()).or_default() += 1;
        m
    });
    assert_eq!(
        actions.keys().cloned().collect::<Vec<_>>(),
        ["app:create", "release:create"]
    );
}

async fn a_hanging_receiver_slows_neither_a_promotion_nor_other_receivers(backend: Backend) {
    let s = Service::spawn(backend, |c| {
        c.webhooks.webhook_timeout = Duration::from_secs(60);
    })
    .await;
    let hung = Receiver::start(Mode::Hang).await;
    let healthy = Receiver::start(Mode::Ok).await;
    s.add_webhook(&hung.url("/"), &[], "").await;
    s.add_webhook(&healthy.url("/"), &[], "").await;
    s.create_app("web").await;
    eventually("the hanging receiver to hold a request", || async {
        (*hung.state.hanging.lock().unwrap() > 0).then_some(())
    })
    .await;
    let started = Instant::now();
    let release = s.release("web").await;
    let promotion = s.promote("web", &release.id).await;
    s.complete(&promotion.id, pb::PromotionOutcome::Succeeded, "")
        .await
        .unwrap();
    let took = started.elapsed();
    // Far below the 60 s a wait on the hanging receiver would take.
    assert!(
        took < Duration::from_secs(10),
        "the promotion took {took:?}"
    );
    let completed = eventually("app:promote:completed at the healthy receiver", || async {
        healthy
            .got()
            .into_iter()
            .find(|g| g.action() == "app:promote:completed")
    })
    .await;
    assert_eq!(completed.json()["data"]["id"], release.id);
    // The hanging receiver still holds its requests: nothing of it was
    // answered, and the other receiver did not wait for it.
    assert!(*hung.state.hanging.lock().unwrap() >= 1);
    let pending_for_hung = s
        .deliveries()
        .await
        .into_iter()
        .filter(|d| d.state == "pending")
        .count();
    assert!(pending_for_hung >= 1);
}

async fn two_replicas_never_deliver_one_delivery_twice(backend: Backend) {
    let a = Service::spawn(backend, |_| {}).await;
    let b = a.replica().await;
    let r = Receiver::start(Mode::Ok).await;
    a.add_webhook(&r.url("/1"), &[], "").await;
    a.add_webhook(&r.url("/2"), &[], "").await;
    a.create_app("web").await;
    for i in 0..10 {
        let s = if i % 2 == 0 { &a } else { &b };
        s.release("web").await;
    }
    let settled = a.settled().await;
    assert_eq!(settled.len(), 22, "11 events to 2 receivers");
    assert!(
        settled
            .iter()
            .all(|d| d.state == "delivered" && d.attempts == 1)
    );
    let got = r.got();
    let mut ids: Vec<String> = got.iter().map(Received::delivery).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "a delivery arrived twice");
    assert_eq!(ids.len(), 22);
}

async fn urls_and_keys_are_sealed_and_lists_hide_secrets(backend: Backend) {
    use sqlx::Row as _;
    let s = Service::spawn(backend, |_| {}).await;
    let r = Receiver::start(Mode::Ok).await;
    let url = format!(
        "http://hook:pa55w0rd-canary@{}/in?token=s3cr3t-canary",
        r.addr
    );
    let created = s.add_webhook(&url, &["app:create"], "").await;
    let key = created.generated_secret.unwrap().value;
    assert!(key.starts_with("slwhk_") && key.len() > 40, "{key}");
    let shown = created.webhook.unwrap().url;
    assert!(!shown.contains("canary"), "{shown}");
    assert!(shown.contains("***"), "{shown}");
    let listed = s
        .webhooks
        .clone()
        .list_webhooks(pb::ListWebhooksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!format!("{listed:?}").contains("canary"));
    s.create_app("web").await;
    let got = eventually("app:create", || async { r.got().into_iter().next() }).await;
    // The receiver gets the URL's credentials as Basic auth, and its query.
    let auth = got.headers["authorization"].to_str().unwrap().to_owned();
    let expected = base64::engine::general_purpose::STANDARD.encode("hook:pa55w0rd-canary");
    assert_eq!(auth, format!("Basic {expected}"));
    assert_eq!(verifying(&got, &key), 1);
    // Nothing in the database holds a secret in the clear.
    let key_prefix = &key[..20];
    for table in [
        "webhooks",
        "webhook_keys",
        "webhook_deliveries",
        "webhook_events",
        "audit_events",
    ] {
        let rows = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(&s.app.db.db.pool)
            .await
            .unwrap();
        for row in rows {
            for i in 0..row.len() {
                let text = row
                    .try_get::<String, _>(i)
                    .ok()
                    .or_else(|| {
                        row.try_get::<Vec<u8>, _>(i)
                            .ok()
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                    })
                    .unwrap_or_default();
                assert!(
                    !text.contains("canary") && !text.contains(key_prefix),
                    "{table} holds a secret: {text}"
                );
            }
        }
    }
}

async fn non_public_addresses_and_other_schemes_are_refused(backend: Backend) {
    let s = Service::spawn(backend, |c| c.webhooks.webhook_allow_private = false).await;
    let r = Receiver::start(Mode::Ok).await;
    for (url, needle) in [
        ("ftp://example.com/x", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("http://169.254.169.254/latest/meta-data", "not public"),
        ("http://[::1]:8080/", "not public"),
        ("http://10.0.0.1/", "not public"),
        ("not a url", "not a valid URL"),
    ] {
        let err = s
            .webhooks
            .clone()
            .create_webhook(pb::CreateWebhookRequest {
                url: Some(pb::WebhookSecret { value: url.into() }),
                app: String::new(),
                events: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{url}: {err:?}");
        assert!(err.message().contains(needle), "{url}: {}", err.message());
    }
    let err = s
        .webhooks
        .clone()
        .create_webhook(pb::CreateWebhookRequest {
            url: Some(pb::WebhookSecret {
                value: "https://example.com/x".into(),
            }),
            app: String::new(),
            events: vec!["app:explode".into()],
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("unknown event"), "{err:?}");
    // A name resolving to loopback is refused at connection time.
    s.add_webhook(&format!("http://localhost:{}/", r.addr.port()), &[], "")
        .await;
    s.create_app("web").await;
    let refused = eventually("a refused attempt", || async {
        s.deliveries().await.into_iter().find(|d| d.attempts >= 1)
    })
    .await;
    assert!(refused.last_error.contains("not public"), "{refused:?}");
    assert_eq!(refused.state, "pending", "retried: DNS may change");
    assert!(r.got().is_empty(), "nothing reached the loopback receiver");
}

async fn client_errors_are_not_retried_and_server_errors_are(backend: Backend) {
    let s = Service::spawn(backend, |_| {}).await;
    let gone = Receiver::start(Mode::Status(410)).await;
    let busy = Receiver::start(Mode::Status(503)).await;
    let limited = Receiver::start(Mode::Status(429)).await;
    s.add_webhook(&gone.url("/"), &[], "").await;
    s.add_webhook(&busy.url("/"), &[], "").await;
    s.add_webhook(&limited.url("/"), &[], "").await;
    s.create_app("web").await;
    let all = eventually("the 503 and 429 receivers to be retried", || async {
        let all = s.deliveries().await;
        (busy.got().len() >= 3 && limited.got().len() >= 3).then_some(all)
    })
    .await;
    assert_eq!(gone.got().len(), 1, "a 410 is not retried");
    let failed: Vec<_> = all.iter().filter(|d| d.state == "failed").collect();
    assert_eq!(failed.len(), 1, "{all:?}");
    assert_eq!(failed[0].last_status, 410);
    // Same id, same body on every retry.
    let copies = busy.got();
    assert!(
        copies
            .iter()
            .all(|c| c.delivery() == copies[0].delivery() && c.body == copies[0].body)
    );
    busy.set(Mode::Ok);
    limited.set(Mode::Ok);
    let settled = s.settled().await;
    assert_eq!(
        settled.iter().filter(|d| d.state == "delivered").count(),
        2,
        "{settled:?}"
    );
}

async fn published_events_are_recorded_once(backend: Backend) {
    let s = Service::spawn(backend, |_| {}).await;
    let r = Receiver::start(Mode::Ok).await;
    s.add_webhook(&r.url("/"), &["build:create"], "").await;
    let event = pb::PublishWebhookEventRequest {
        id: format!("E{:032x}", rand::random::<u128>()),
        action: "build:create".into(),
        status: "error".into(),
        app: "web".into(),
        actor: "password".into(),
        subject: "BABCDEFGHIJ".into(),
        message: "build failed: no convox.yml".into(),
        timestamp: Some(slipway_api::timestamp(chrono::Utc::now())),
    };
    for _ in 0..3 {
        s.webhooks
            .clone()
            .publish_webhook_event(event.clone())
            .await
            .unwrap();
    }
    let settled = s.settled().await;
    assert_eq!(settled.len(), 1, "{settled:?}");
    let got = r.got();
    assert_eq!(got.len(), 1);
    let body = got[0].json();
    assert_eq!(body["action"], "build:create");
    assert_eq!(body["status"], "error");
    assert_eq!(body["data"]["message"], "build failed: no convox.yml");
    assert_eq!(body["event_id"], event.id.as_str());
    let bad = s
        .webhooks
        .clone()
        .publish_webhook_event(pb::PublishWebhookEventRequest {
            id: "nope".into(),
            ..event
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}
