//! Promotions: one at a time per app, checks before anything starts,
//! completion, cancel, rollback-as-copy, and surviving a restart.

use crate::helpers::{Backend, MANIFEST, TestApp, assert_status, env_text};
use slipway_api::release::v1 as pb;
use tonic::Code;

slipway_storage::both_backends!(
    two_concurrent_promotions_start_exactly_one,
    a_release_missing_required_env_is_refused_before_anything_happens,
    promoting_the_active_release_is_a_noop,
    completion_moves_the_active_pointer_only_on_success,
    stale_or_conflicting_reports_are_refused,
    an_older_release_needs_force,
    cancel_ends_a_pending_promotion,
    rollback_copies_and_promotes,
    a_restart_loses_nothing,
    an_updating_app_cannot_be_deleted,
);

async fn two_concurrent_promotions_start_exactly_one(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("race").await;
    let a = t.build_release("race", MANIFEST).await;
    let b = t.env_set("race", &[("X", "1")]).await.unwrap();
    let (ra, rb) = tokio::join!(t.promote("race", &a.id), t.promote("race", &b.id));
    let results = [ra, rb];
    let started: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(started.len(), 1, "exactly one starts: {results:?}");
    let refused = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("one refused");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(refused.message(), "app is currently updating");
    assert_eq!(
        slipway_api::refusal::Refusal::of(refused),
        Some(slipway_api::refusal::Refusal::AppUpdating),
        "the kind travels beside the words: {refused:?}"
    );
    assert_eq!(t.app("race").await.status, "updating");

    let promotion = started[0].promotion.clone().unwrap();
    t.complete(&promotion.id, pb::PromotionOutcome::Succeeded, "")
        .await
        .unwrap();
    assert_eq!(t.app("race").await.status, "running");
    let next = t.env_set("race", &[("Y", "2")]).await.unwrap();
    t.promote("race", &next.id)
        .await
        .expect("accepted after completion");
}

async fn a_release_missing_required_env_is_refused_before_anything_happens(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("needy").await;
    let manifest = "services:\n  web:\n    build: .\n    port: 5000\n    environment:\n      - DATABASE_URL\n      - MODE=prod\n";
    let release = t.build_release("needy", manifest).await;
    assert_status(
        t.promote("needy", &release.id).await,
        Code::FailedPrecondition,
        "env DATABASE_URL is required by service web",
    );
    assert_eq!(t.count("promotions").await, 0, "nothing recorded");
    assert_eq!(t.app("needy").await.status, "running");
    let fixed = t
        .env_set("needy", &[("DATABASE_URL", "postgres://db")])
        .await
        .unwrap();
    t.promote("needy", &fixed.id)
        .await
        .expect("MODE has a default, DATABASE_URL is set now");
}

async fn promoting_the_active_release_is_a_noop(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("same").await;
    let release = t.build_release("same", MANIFEST).await;
    t.activate("same", &release.id).await;
    let before = t.count("promotions").await;
    let answer = t.promote("same", &release.id).await.unwrap();
    assert!(answer.noop);
    assert!(answer.promotion.is_none());
    assert_eq!(
        answer.message,
        format!("release {} is already active", release.id)
    );
    assert_eq!(t.count("promotions").await, before);
}

async fn completion_moves_the_active_pointer_only_on_success(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("ptr").await;
    let good = t.build_release("ptr", MANIFEST).await;
    t.activate("ptr", &good.id).await;
    let bad = t.env_set("ptr", &[("BROKEN", "1")]).await.unwrap();
    let promotion = t.promote("ptr", &bad.id).await.unwrap().promotion.unwrap();
    assert_eq!(
        promotion.fallback_release, good.id,
        "the last known good release"
    );
    let reason = "service web: health check GET / failed 3 times (connection refused)";
    let done = t
        .complete(&promotion.id, pb::PromotionOutcome::RolledBack, reason)
        .await
        .unwrap();
    assert_eq!(done.state, pb::PromotionState::RolledBack as i32);
    assert_eq!(done.reason, reason);
    assert!(done.finished.is_some());
    let app = t.app("ptr").await;
    assert_eq!(app.release, good.id, "the previous release stays active");
    assert_eq!(app.status, "running");
    let listed = t
        .client
        .clone()
        .list_promotions(pb::ListPromotionsRequest {
            app: "ptr".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .promotions;
    assert_eq!(listed[0].id, promotion.id, "newest first");
    assert_eq!(listed[0].reason, reason, "the reason is kept");
}

async fn stale_or_conflicting_reports_are_refused(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("fence").await;
    let release = t.build_release("fence", MANIFEST).await;
    let promotion = t
        .promote("fence", &release.id)
        .await
        .unwrap()
        .promotion
        .unwrap();
    let report = |outcome: pb::PromotionOutcome, epoch: u64| {
        let mut client = t.client.clone();
        let id = promotion.id.clone();
        async move {
            client
                .complete_promotion(pb::CompletePromotionRequest {
                    promotion: id,
                    outcome: outcome as i32,
                    reason: String::new(),
                    lease_epoch: epoch,
                    cancelled: None,
                })
                .await
        }
    };
    report(pb::PromotionOutcome::Succeeded, 5).await.unwrap();
    report(pb::PromotionOutcome::Succeeded, 5)
        .await
        .expect("a repeated report is idempotent");
    assert_status(
        report(pb::PromotionOutcome::Failed, 3).await,
        Code::FailedPrecondition,
        "stale report",
    );
    assert_status(
        report(pb::PromotionOutcome::Failed, 6).await,
        Code::FailedPrecondition,
        "cannot go from succeeded to failed",
    );
    assert_status(
        report(pb::PromotionOutcome::Unspecified, 6).await,
        Code::InvalidArgument,
        "outcome",
    );
    let unknown = "P0123456789abcdef0123456789abcdef";
    assert_status(
        t.complete(unknown, pb::PromotionOutcome::Succeeded, "")
            .await,
        Code::NotFound,
        &format!("promotion not found: {unknown}"),
    );
    assert_status(
        t.complete("Pnope", pb::PromotionOutcome::Succeeded, "")
            .await,
        Code::InvalidArgument,
        "invalid promotion id \"Pnope\": expected P followed by 32 hexadecimal digits",
    );
    assert_eq!(t.app("fence").await.release, release.id);
}

async fn an_older_release_needs_force(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("older").await;
    let old = t.build_release("older", MANIFEST).await;
    let new = t.build_release("older", MANIFEST).await;
    t.activate("older", &new.id).await;
    assert_status(
        t.promote("older", &old.id).await,
        Code::FailedPrecondition,
        "can not promote an older release, try rollback",
    );
    let forced = t
        .client
        .clone()
        .promote_release(pb::PromoteReleaseRequest {
            app: "older".into(),
            release: old.id.clone(),
            force: true,
            deadline_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(forced.promotion.is_some());
}

async fn cancel_ends_a_pending_promotion(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("cancel").await;
    assert_status(
        t.client
            .clone()
            .cancel_promotion(pb::CancelPromotionRequest {
                app: "cancel".into(),
            })
            .await,
        Code::FailedPrecondition,
        "no promotion in progress",
    );
    let release = t.build_release("cancel", MANIFEST).await;
    t.promote("cancel", &release.id).await.unwrap();
    let cancelled = t
        .client
        .clone()
        .cancel_promotion(pb::CancelPromotionRequest {
            app: "cancel".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .promotion
        .unwrap();
    assert_eq!(cancelled.state, pb::PromotionState::Cancelled as i32);
    assert!(
        cancelled.reason.contains("cancelled by"),
        "{}",
        cancelled.reason
    );
    let app = t.app("cancel").await;
    assert_eq!(app.status, "running");
    assert_eq!(app.release, "", "nothing became active");
}

async fn rollback_copies_and_promotes(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("back").await;
    let first = t.build_release("back", MANIFEST).await;
    let first = t
        .env_set("back", &[("V", "1")])
        .await
        .map(|_| first)
        .unwrap();
    let with_v = t.newest("back").await;
    t.activate("back", &with_v.id).await;
    let second = t.env_set("back", &[("V", "2")]).await.unwrap();
    t.activate("back", &second.id).await;

    let answer = t
        .client
        .clone()
        .rollback_release(pb::RollbackReleaseRequest {
            app: "back".into(),
            release: with_v.id.clone(),
            deadline_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let copy = answer.release.unwrap();
    assert_ne!(copy.id, with_v.id, "a new release");
    assert_eq!(copy.description, format!("rollback to {}", with_v.id));
    assert_eq!(copy.rollback_of, with_v.id);
    assert_eq!(env_text(&copy), "V=1");
    assert_eq!(copy.build, first.build);
    assert_eq!(
        t.newest("back").await.id,
        copy.id,
        "the copy is the newest release"
    );
    let promotion = answer.promotion.unwrap();
    assert_eq!(promotion.release, copy.id);
    assert_eq!(promotion.fallback_release, second.id);
    assert_status(
        t.client
            .clone()
            .rollback_release(pb::RollbackReleaseRequest {
                app: "back".into(),
                release: "RZZZZZZZZZZ".into(),
                deadline_seconds: 0,
            })
            .await,
        Code::NotFound,
        "release not found: RZZZZZZZZZZ",
    );
}

async fn a_restart_loses_nothing(backend: Backend) {
    let mut t = TestApp::spawn(backend).await;
    t.create_app("durable").await;
    let first = t.build_release("durable", MANIFEST).await;
    t.activate("durable", &first.id).await;
    let staged = t
        .env_set("durable", &[("SECRET", "s3cret"), ("A", "1")])
        .await
        .unwrap();
    let open = t
        .promote("durable", &staged.id)
        .await
        .unwrap()
        .promotion
        .unwrap();
    let before = t.releases("durable", 100).await;

    t.stop().await;
    t.start().await;

    let after = t.releases("durable", 100).await;
    assert_eq!(
        before
            .iter()
            .map(|r| (&r.id, env_text(r), &r.description))
            .collect::<Vec<_>>(),
        after
            .iter()
            .map(|r| (&r.id, env_text(r), &r.description))
            .collect::<Vec<_>>()
    );
    let app = t.app("durable").await;
    assert_eq!(app.release, first.id, "active pointer kept");
    assert_eq!(app.status, "updating");
    assert_eq!(
        app.open_promotion.unwrap().id,
        open.id,
        "the open promotion is still there"
    );
    t.complete(&open.id, pb::PromotionOutcome::Succeeded, "")
        .await
        .unwrap();
    assert_eq!(t.app("durable").await.release, staged.id);
}

async fn an_updating_app_cannot_be_deleted(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("gone").await;
    let release = t.build_release("gone", MANIFEST).await;
    let promotion = t
        .promote("gone", &release.id)
        .await
        .unwrap()
        .promotion
        .unwrap();
    let delete = || {
        let mut client = t.client.clone();
        async move {
            client
                .delete_app(pb::DeleteAppRequest {
                    name: "gone".into(),
                })
                .await
        }
    };
    let refused = delete().await.unwrap_err();
    assert_eq!(
        slipway_api::refusal::Refusal::of(&refused),
        Some(slipway_api::refusal::Refusal::AppUpdating),
        "{refused:?}"
    );
    assert_status(
        Err::<(), _>(refused),
        Code::FailedPrecondition,
        "app is currently updating",
    );
    t.complete(&promotion.id, pb::PromotionOutcome::Succeeded, "")
        .await
        .unwrap();
    delete().await.unwrap();
    assert_status(
        t.client
            .clone()
            .get_app(pb::GetAppRequest {
                name: "gone".into(),
            })
            .await,
        Code::NotFound,
        "app not found: gone",
    );
    // The name is free again; the old ledger stays in the database.
    let again = t.create_app("gone").await;
    assert_eq!(again.release, "");
    assert!(t.releases("gone", 10).await.is_empty());
    assert_eq!(t.count("releases").await, 1);
}
