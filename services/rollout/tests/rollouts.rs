//! Rollouts end to end through gRPC, on real processes: success with zero
//! failed requests, fail-fast rollbacks, deadline, cancel, first deploys,
//! idempotent starts, and the outcome the release service receives.

use std::time::{Duration, Instant};

use slipway_api::release::v1::PromotionOutcome;
use slipway_api::rollout::v1 as pb;

use crate::helpers::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Deploys a first healthy release and returns its spec.
async fn first_deploy(service: &mut TestService, app: &str, count: u32) -> pb::ReleaseSpec {
    let r1 = spec(app, "RAAAAAAAAAA", &App::healthy(count));
    start(
        &mut service.client,
        &promotion_id(app, 1),
        r1.clone(),
        None,
        0,
    )
    .await;
    let (done, _) = finish(&mut service.client, &promotion_id(app, 1), LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Running, "{done:?}");
    r1
}

#[tokio::test]
async fn a_good_release_rolls_out_without_a_failed_request() {
    let app = app_name("good");
    let _guard = AppGuard(app.clone());
    let mut service = TestService::spawn().await;
    let r1 = first_deploy(&mut service, &app, 2).await;
    let address = web_address(&mut service.client, &app).await;
    assert_eq!(get(&address).await.unwrap(), "release=RAAAAAAAAAA\n");
    let old: Vec<u32> = processes(&mut service.client, &app)
        .await
        .iter()
        .map(|p| p.pid)
        .collect();

    let load = Load::start(address.clone());
    // The loop is under way before the rollout starts.
    load.until_answered(5).await;
    let r2 = spec(&app, "RBBBBBBBBBB", &App::healthy(2));
    let promotion = promotion_id(&app, 2);
    let started = start(&mut service.client, &promotion, r2, Some(r1), 0).await;
    assert_eq!(started.id, promotion);
    let (done, events) = finish(&mut service.client, &promotion, LIMIT).await;
    // A fast rollout can end within a few requests: keep the load on the
    // new processes until it has made enough to mean something.
    load.until_answered(25).await;
    let (ok, failures) = load.stop().await;

    assert_eq!(done.phase(), pb::RolloutPhase::Running, "{done:?}");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 20, "the load loop made only {ok} requests");
    assert_eq!(get(&address).await.unwrap(), "release=RBBBBBBBBBB\n");
    assert_eq!(
        web_address(&mut service.client, &app).await,
        address,
        "the stable port moved"
    );

    let procs = processes(&mut service.client, &app).await;
    assert_eq!(procs.len(), 2, "{procs:?}");
    assert!(
        procs
            .iter()
            .all(|p| p.release == "RBBBBBBBBBB" && p.status == "running"),
        "{procs:?}"
    );
    for pid in old {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || count_app_processes(&app) == 2,
            "old process {pid} still runs"
        );
    }
    assert_eq!(count_app_processes(&app), 2);

    let lines: Vec<String> = events
        .iter()
        .map(|e| format!("{} {}", e.source, e.message))
        .collect();
    assert!(
        lines.contains(&"system/local/atom/app Status: Running => Pending".to_owned()),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"system/local/atom/app Status: Pending => Updating".to_owned()),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"system/local/atom/app Status: Updating => Running".to_owned()),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("system/local/web Started process web-")),
        "{lines:#?}"
    );
    let ids: Vec<u64> = events.iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "event ids must increase: {ids:?}"
    );

    // Resuming after an event id replays only what came after it.
    let after = events[2].id.clone();
    let mut stream = service
        .client
        .watch_rollout(pb::WatchRolloutRequest {
            id: promotion.clone(),
            after_event_id: after,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap().event.unwrap();
    assert_eq!(first.id, events[3].id);

    let outcome = service.release.wait_for(&promotion).await;
    assert_eq!(outcome.outcome, PromotionOutcome::Succeeded);
    assert_eq!(outcome.lease_epoch, 1);
    assert_eq!(service.release.outcomes(&promotion).len(), 1);
}

#[tokio::test]
async fn a_release_that_exits_at_start_rolls_back_within_seconds() {
    let app = app_name("exit");
    let _guard = AppGuard(app.clone());
    let mut service = TestService::spawn().await;
    let r1 = first_deploy(&mut service, &app, 1).await;
    let address = web_address(&mut service.client, &app).await;
    let promotion = promotion_id(&app, 2);
    let began = Instant::now();
    start(
        &mut service.client,
        &promotion,
        spec(&app, "RBBBBBBBBBB", &App::mode("exit")),
        Some(r1),
        600,
    )
    .await;
    let (done, _) = finish(&mut service.client, &promotion, LIMIT).await;
    let took = began.elapsed();
    assert_eq!(done.phase(), pb::RolloutPhase::Reverted, "{done:?}");
    assert!(took < Duration::from_secs(15), "rollback took {took:?}");
    assert!(
        done.reason
            .starts_with("service web: process exited with status 1 during start"),
        "{}",
        done.reason
    );
    assert!(
        done.reason.contains("boom: cannot start"),
        "the reason must carry the last output: {}",
        done.reason
    );
    assert_eq!(get(&address).await.unwrap(), "release=RAAAAAAAAAA\n");
    let procs = processes(&mut service.client, &app).await;
    assert!(
        procs.len() == 1 && procs[0].release == "RAAAAAAAAAA",
        "{procs:?}"
    );
    let outcome = service.release.wait_for(&promotion).await;
    assert_eq!(outcome.outcome, PromotionOutcome::RolledBack);
    assert_eq!(outcome.reason, done.reason);
}

#[tokio::test]
async fn a_release_that_never_gets_healthy_rolls_back_within_seconds() {
    let app = app_name("sick");
    let _guard = AppGuard(app.clone());
    let mut service = TestService::spawn().await;
    let r1 = first_deploy(&mut service, &app, 1).await;
    let address = web_address(&mut service.client, &app).await;
    let promotion = promotion_id(&app, 2);
    let began = Instant::now();
    start(
        &mut service.client,
        &promotion,
        spec(&app, "RBBBBBBBBBB", &App::mode("never-healthy")),
        Some(r1),
        600,
    )
    .await;
    let (done, _) = finish(&mut service.client, &promotion, LIMIT).await;
    let took = began.elapsed();
    assert_eq!(done.phase(), pb::RolloutPhase::Reverted, "{done:?}");
    // grace 1s + 2 more intervals of 1s, plus the rollback.
    assert!(took < Duration::from_secs(15), "rollback took {took:?}");
    assert!(
        done.reason
            .starts_with("service web: health check GET / failed 3 times (connection refused)"),
        "{}",
        done.reason
    );
    assert_eq!(get(&address).await.unwrap(), "release=RAAAAAAAAAA\n");
    assert_eq!(count_app_processes(&app), 1);
}

#[tokio::test]
async fn a_passed_deadline_rolls_back() {
    let app = app_name("late");
    let _guard = AppGuard(app.clone());
    let mut service = TestService::spawn().await;
    let r1 = first_deploy(&mut service, &app, 1).await;
    let promotion = promotion_id(&app, 2);
    let began = Instant::now();
    // Listens after 120 s, with a grace long enough that only the deadline can end it.
    start(
        &mut service.client,
        &promotion,
        spec(&app, "RBBBBBBBBBB", &App::slow(120_000, 300)),
        Some(r1),
        30,
    )
    .await;
    let (done, _) = finish(&mut service.client, &promotion, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Reverted, "{done:?}");
    assert!(
        began.elapsed() >= Duration::from_secs(29),
        "rolled back before the deadline"
    );
    assert_eq!(
        done.reason,
        "deadline exceeded after 30s: service web has 0/1 healthy"
    );
    let address = web_address(&mut service.client, &app).await;
    assert_eq!(get(&address).await.unwrap(), "release=RAAAAAAAAAA\n");
    assert_eq!(
        service.release.wait_for(&promotion).await.outcome,
        PromotionOutcome::RolledBack
    );
}

#[tokio::test]
async fn cancel_mid_rollout_rolls_back() {
    let app = app_name("cancel");
    let _guard = AppGuard(app.clone());
    let mut service = TestService::spawn().await;
    let r1 = first_deploy(&mut service, &app, 1).await;
    let promotion = promotion_id(&app, 2);
    start(
        &mut service.client,
        &promotion,
        spec(&app, "RBBBBBBBBBB", &App::slow(120_000, 300)),
        Some(r1),
        600,
    )
    .await;
    let mut client = service.client.clone();
    eventually(LIMIT, "a process of the new release", || {
        let (mut client, app) = (client.clone(), app.clone());
        async move {
            processes(&mut client, &app)
                .await
                .iter()
                .any(|p| p.release == "RBBBBBBBBBB")
        }
    })
    .await;
    let began = Instant::now();
    client
        .cancel_rollout(pb::CancelRolloutRequest {
            id: promotion.clone(),
        })
        .await
        .unwrap();
    let (done, _) = finish(&mut service.client, &promotion, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Reverted, "{done:?}");
    assert_eq!(done.reason, "cancelled");
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        began.elapsed()
    );
    let procs = processes(&mut service.client, &app).await;
    assert!(
        procs.iter().all(|p| p.release == "RAAAAAAAAAA"),
        "{procs:?}"
    );
    // Cancelling a finished rollout changes nothing; an unknown one is NotFound.
    let again = client
        .cancel_rollout(pb::CancelRolloutRequest {
            id: promotion.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.rollout.unwrap().phase(), pb::RolloutPhase::Reverted);
    let missing = client
        .cancel_rollout(pb::CancelRolloutRequest {
            id: promotion_id(&app, 9),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // A malformed id is refused at the edge, naming the expected shape.
    let malformed = client
        .cancel_rollout(pb::CancelRolloutRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument);
    assert!(
        malformed
            .message()
            .contains("P followed by 32 hexadecimal digits"),
        "{malformed:?}"
    );
}

#[tokio::test]
async fn a_failed_first_deploy_stops_everything_and_fails() {
    let app = app_name("first");
    let _guard = AppGuard(app.clone());
    let mut service = TestService::spawn().await;
    let promotion = promotion_id(&app, 1);
    start(
        &mut service.client,
        &promotion,
        spec(&app, "RAAAAAAAAAA", &App::mode("exit")),
        None,
        0,
    )
    .await;
    let (done, events) = finish(&mut service.client, &promotion, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Failure, "{done:?}");
    assert!(
        done.reason
            .contains("service web: process exited with status 1"),
        "{}",
        done.reason
    );
    assert!(processes(&mut service.client, &app).await.is_empty());
    assert_eq!(count_app_processes(&app), 0);
    let lines: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    assert!(
        lines.contains(&"Status: Updating => Reverting")
            && lines.contains(&"Status: Reverting => Failure"),
        "{lines:#?}"
    );
    let outcome = service.release.wait_for(&promotion).await;
    assert_eq!(outcome.outcome, PromotionOutcome::Failed);
}

#[tokio::test]
async fn starting_twice_starts_once_and_outcomes_are_retried() {
    let app = app_name("twice");
    let _guard = AppGuard(app.clone());
    let mut service = TestService::spawn().await;
    service
        .release
        .fail_first
        .store(3, std::sync::atomic::Ordering::Release);
    let promotion = promotion_id(&app, 1);
    let target = spec(&app, "RAAAAAAAAAA", &App::healthy(2));
    let a = start(&mut service.client, &promotion, target.clone(), None, 0).await;
    let b = start(&mut service.client, &promotion, target.clone(), None, 0).await;
    assert_eq!((a.id.as_str(), a.created), (b.id.as_str(), b.created));
    let (done, _) = finish(&mut service.client, &promotion, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Running);
    let c = start(&mut service.client, &promotion, target.clone(), None, 0).await;
    assert_eq!(c.phase(), pb::RolloutPhase::Running);
    assert_eq!(processes(&mut service.client, &app).await.len(), 2);
    assert_eq!(count_app_processes(&app), 2);
    // Reported after the fake refused three times, and only once.
    let outcome = service.release.wait_for(&promotion).await;
    assert_eq!(outcome.outcome, PromotionOutcome::Succeeded);
    assert_eq!(service.release.outcomes(&promotion).len(), 1);

    // Bad input changes nothing.
    let mut bad = target.clone();
    bad.manifest = "services: [".into();
    let err = service
        .client
        .start_rollout(pb::StartRolloutRequest {
            promotion: promotion_id(&app, 2),
            target: Some(bad),
            fallback: None,
            deadline_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = service
        .client
        .start_rollout(pb::StartRolloutRequest {
            promotion: promotion_id(&app, 3),
            target: Some(target),
            fallback: None,
            deadline_seconds: 5,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("deadline_seconds"), "{err:?}");
}
