//! Idempotency keys (`idempotency-key` metadata) on the mutating calls: the
//! same key answers the first result and changes nothing more, a different
//! request with a used key is refused, copies of one call racing on two
//! replicas apply once, and keys lapse after a day.

use std::collections::HashSet;

use slipway_api::release::v1 as pb;
use tonic::{Code, Request};

use crate::helpers::{Backend, MANIFEST, TestApp, assert_status};

slipway_storage::both_backends!(
    a_repeated_env_change_answers_its_first_release,
    racing_copies_of_a_keyed_call_apply_once,
    promotions_rollbacks_and_cancels_are_answered_again,
    a_key_lapses_after_a_day,
);

fn keyed<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    slipway_rpc::idempotency::set_key(&mut request, key);
    request
}

fn env_change(app: &str, key: &str, value: &str) -> pb::ChangeEnvRequest {
    pb::ChangeEnvRequest {
        app: app.into(),
        set: [(key.to_owned(), value.to_owned())].into(),
        unset: vec![],
        parent_release: None,
        expected_newest_release: None,
    }
}

async fn change(
    t: &TestApp,
    key: &str,
    message: pb::ChangeEnvRequest,
) -> Result<String, tonic::Status> {
    t.client
        .clone()
        .change_env(keyed(key, message))
        .await
        .map(|r| r.into_inner().release.unwrap().id)
}

async fn a_repeated_env_change_answers_its_first_release(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("myapp").await;
    t.build_release("myapp", MANIFEST).await;
    let before = t.count("releases").await;

    let first = change(&t, "k-1", env_change("myapp", "FOO", "1"))
        .await
        .unwrap();
    let again = change(&t, "k-1", env_change("myapp", "FOO", "1"))
        .await
        .unwrap();
    assert_eq!(first, again, "the retry answered another release");
    assert_eq!(
        t.count("releases").await,
        before + 1,
        "the retry appended again"
    );

    // The same key with another body is refused, naming the key.
    assert_status(
        change(&t, "k-1", env_change("myapp", "FOO", "2")).await,
        Code::AlreadyExists,
        "idempotency key k-1 was already used for a different ChangeEnv request",
    );
    // A new key is a new change; no key at all too.
    let second = change(&t, "k-2", env_change("myapp", "FOO", "1"))
        .await
        .unwrap();
    assert_ne!(second, first);
    t.env_set("myapp", &[("FOO", "1")]).await.unwrap();
    assert_eq!(t.count("releases").await, before + 3);
    // A malformed key is refused before anything happens.
    assert_status(
        change(&t, "a key", env_change("myapp", "FOO", "3")).await,
        Code::InvalidArgument,
        "idempotency key",
    );
    assert_eq!(t.count("releases").await, before + 3);
}

async fn racing_copies_of_a_keyed_call_apply_once(backend: Backend) {
    let a = TestApp::spawn(backend).await;
    let b = a.replica().await;
    a.create_app("myapp").await;
    a.build_release("myapp", MANIFEST).await;
    let before = a.count("releases").await;
    for round in 0..5 {
        let key = format!("race-{round}");
        let answers = futures::future::join_all((0..6).map(|i| {
            let t = if i % 2 == 0 { &a } else { &b };
            let key = key.clone();
            async move { change(t, &key, env_change("myapp", "N", &round.to_string())).await }
        }))
        .await;
        let ids: HashSet<String> = answers
            .into_iter()
            .map(|r| r.expect("every copy is answered"))
            .collect();
        assert_eq!(
            ids.len(),
            1,
            "copies of one call answered different releases: {ids:?}"
        );
    }
    assert_eq!(
        a.count("releases").await,
        before + 5,
        "a keyed call applied twice"
    );
}

async fn promotions_rollbacks_and_cancels_are_answered_again(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("myapp").await;
    let r1 = t.build_release("myapp", MANIFEST).await;
    t.activate("myapp", &r1.id).await;
    let r2 = t.build_release("myapp", MANIFEST).await;
    let promote = || pb::PromoteReleaseRequest {
        app: "myapp".into(),
        release: r2.id.clone(),
        force: false,
        deadline_seconds: 0,
    };
    let first = t
        .client
        .clone()
        .promote_release(keyed("p-1", promote()))
        .await
        .unwrap()
        .into_inner();
    // Without the key the retry would be refused: the app is updating.
    let again = t
        .client
        .clone()
        .promote_release(keyed("p-1", promote()))
        .await
        .expect("a retried promote answers its promotion")
        .into_inner();
    assert_eq!(
        first.promotion.as_ref().unwrap().id,
        again.promotion.unwrap().id
    );

    let cancel = || pb::CancelPromotionRequest {
        app: "myapp".into(),
    };
    let cancelled = t
        .client
        .clone()
        .cancel_promotion(keyed("c-1", cancel()))
        .await
        .unwrap()
        .into_inner()
        .promotion
        .unwrap();
    let again = t
        .client
        .clone()
        .cancel_promotion(keyed("c-1", cancel()))
        .await
        .expect("a retried cancel answers its promotion")
        .into_inner()
        .promotion
        .unwrap();
    assert_eq!(cancelled.id, again.id);
    assert_eq!(cancelled.id, first.promotion.unwrap().id);

    let before = t.count("releases").await;
    let rollback = || pb::RollbackReleaseRequest {
        app: "myapp".into(),
        release: r1.id.clone(),
        deadline_seconds: 0,
    };
    let first = t
        .client
        .clone()
        .rollback_release(keyed("r-1", rollback()))
        .await
        .unwrap()
        .into_inner();
    let again = t
        .client
        .clone()
        .rollback_release(keyed("r-1", rollback()))
        .await
        .expect("a retried rollback answers its copy and promotion")
        .into_inner();
    assert_eq!(first.release.unwrap().id, again.release.unwrap().id);
    assert_eq!(first.promotion.map(|p| p.id), again.promotion.map(|p| p.id));
    assert_eq!(
        t.count("releases").await,
        before + 1,
        "the rollback copied twice"
    );
}

async fn a_key_lapses_after_a_day(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("myapp").await;
    t.build_release("myapp", MANIFEST).await;
    let first = change(&t, "old", env_change("myapp", "FOO", "1"))
        .await
        .unwrap();
    let day_and_more = 25 * 3600 * 1_000_000_i64;
    sqlx::query("UPDATE idempotency_keys SET created_at = created_at - $1")
        .bind(day_and_more)
        .execute(&t.db.db.pool)
        .await
        .unwrap();
    // A day later the key is free again, for any request.
    let later = change(&t, "old", env_change("myapp", "FOO", "2"))
        .await
        .unwrap();
    assert_ne!(first, later);
    let again = change(&t, "old", env_change("myapp", "FOO", "2"))
        .await
        .unwrap();
    assert_eq!(later, again);
}
