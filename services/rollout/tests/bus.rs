//! The rollout service on the Redis event bus (`--redis-url`): with Redis
//! unreachable, rollouts still complete and their events are served from
//! the durable log; with real Redis (127.0.0.1:6379, a unique key prefix per
//! test), a replica streams the events of a rollout another replica drove.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use slipway_api::rollout::v1 as pb;
use slipway_events::testing::{PrivateRedis, SHARED_REDIS, require_shared_redis};
use tokio_stream::StreamExt as _;

use crate::helpers::*;

const LIMIT: Duration = Duration::from_secs(60);

/// A rollout service of its own (SQLite in its own directory) on the bus
/// `redis_url` names, with a fake release service.
struct Replica {
    addr: SocketAddr,
    release: FakeRelease,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn spawn(redis_url: &str, prefix: &str) -> Self {
        let (addr, release, stop, dir) = serve(|config| {
            config.redis_url = Some(redis_url.parse().unwrap());
            config.redis_prefix = prefix.to_owned();
        })
        .await;
        Self {
            addr,
            release,
            _stop: stop,
            _dir: dir,
        }
    }
}

fn unique_prefix() -> String {
    format!(
        "test-rollout-{}-{:x}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap()
    )
}

/// An app's log backlog (a non-following StreamAppLogs) as `source message`
/// lines.
async fn app_log(addr: SocketAddr, app: &str) -> Vec<String> {
    let mut client = connect(addr).await;
    let read = async {
        let mut stream = client
            .stream_app_logs(pb::StreamAppLogsRequest {
                app: app.to_owned(),
                since_seconds: 300,
                follow: false,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut lines = Vec::new();
        while let Some(item) = stream.next().await {
            // A message with only a cursor carries no line.
            let Some(event) = item.unwrap().event else {
                continue;
            };
            lines.push(format!("{} {}", event.source, event.message));
        }
        lines
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("a non-following log stream ends after its backlog")
}

#[tokio::test]
async fn with_redis_unreachable_rollouts_complete_and_events_come_from_the_database() {
    let app = app_name("busdown");
    let _guard = AppGuard(app.clone());
    // Nothing listens on port 1: every publish fails at once.
    let replica = Replica::spawn("redis://127.0.0.1:1", &unique_prefix()).await;
    let mut client = connect(replica.addr).await;
    let promotion = promotion_id(&app, 1);
    start(
        &mut client,
        &promotion,
        spec(&app, "RAAAAAAAAAA", &App::healthy(1)),
        None,
        0,
    )
    .await;
    let (done, events) = finish(&mut client, &promotion, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Running, "{done:?}");
    let messages: Vec<_> = events.iter().map(|e| e.message.as_str()).collect();
    for status in ["Status: Running => Pending", "Status: Updating => Running"] {
        assert!(messages.contains(&status), "{status} in {messages:?}");
    }
    let outcome = replica.release.wait_for(&promotion).await;
    assert_eq!(outcome.promotion, promotion);

    // The app log: the rollout's history, from the database.
    let lines = app_log(replica.addr, &app).await;
    for status in ["Status: Running => Pending", "Status: Updating => Running"] {
        let line = format!("system/local/atom/app {status}");
        assert_eq!(
            lines.iter().filter(|l| **l == line).count(),
            1,
            "{line} once in {lines:#?}"
        );
    }
    // Watching again replays the durable log, bus or not.
    let (_, again) = finish(&mut client, &promotion, LIMIT).await;
    assert_eq!(again.len(), events.len());
}

/// Two replicas with databases of their own on one Redis: the log of a
/// rollout driven by A, read through B, comes from the bus alone.
#[tokio::test]
async fn a_replica_streams_a_rollout_another_replica_drove() {
    require_shared_redis().await;
    let app = app_name("busshared");
    let _guard = AppGuard(app.clone());
    let prefix = unique_prefix();
    let a = Replica::spawn(SHARED_REDIS, &prefix).await;
    let b = Replica::spawn(SHARED_REDIS, &prefix).await;

    // B follows the app's log before anything happens.
    let mut b_client = connect(b.addr).await;
    let mut follow = b_client
        .stream_app_logs(pb::StreamAppLogsRequest {
            app: app.clone(),
            since_seconds: 300,
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let mut a_client = connect(a.addr).await;
    let promotion = promotion_id(&app, 1);
    start(
        &mut a_client,
        &promotion,
        spec(&app, "RAAAAAAAAAA", &App::healthy(1)),
        None,
        0,
    )
    .await;
    let (done, _) = finish(&mut a_client, &promotion, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Running, "{done:?}");

    let want = "system/local/atom/app Status: Updating => Running";
    let mut seen = Vec::new();
    let started = Instant::now();
    while !seen.iter().any(|l| l == want) {
        let left = LIMIT.saturating_sub(started.elapsed());
        let item = tokio::time::timeout(left, follow.next())
            .await
            .unwrap_or_else(|_| panic!("B did not stream {want:?}; got {seen:#?}"));
        let Some(event) = item.expect("stream open").unwrap().event else {
            continue;
        };
        seen.push(format!("{} {}", event.source, event.message));
    }
    let pending = "system/local/atom/app Status: Running => Pending";
    assert_eq!(
        seen.iter().filter(|l| *l == pending).count(),
        1,
        "{seen:#?}"
    );

    // And the backlog through B, after the fact: B's own database has no
    // rollout of this app, so every line came through Redis.
    let lines = app_log(b.addr, &app).await;
    assert!(lines.iter().any(|l| l == want), "{lines:#?}");
    // Process output is forwarded as it is read: it may trail the rollout.
    let started = Instant::now();
    loop {
        let lines = app_log(b.addr, &app).await;
        if lines.iter().any(|l| l.starts_with("service/web/")) {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "no process output through B: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.release.outcomes(&promotion).is_empty(), "B drove nothing");
}

/// Reads `follow` until `want` is among the lines, adding them to `seen`.
async fn follow_until(
    follow: &mut tonic::Streaming<pb::StreamAppLogsResponse>,
    seen: &mut Vec<String>,
    want: &str,
) {
    let started = Instant::now();
    while !seen.iter().any(|l| l.contains(want)) {
        let left = LIMIT.saturating_sub(started.elapsed());
        let item = tokio::time::timeout(left, follow.next())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in the followed log: {seen:#?}"));
        let Some(event) = item.expect("stream open").unwrap().event else {
            continue;
        };
        seen.push(format!("{} {}", event.source, event.message));
    }
}

/// Redis killed and restarted (empty) under a following app log: the
/// rollout run while it is down is served from the durable log, the one
/// after the restart through the reconnected bus, every line once.
#[tokio::test]
async fn a_followed_app_log_goes_on_across_a_redis_restart() {
    let app = app_name("busrestart");
    let _guard = AppGuard(app.clone());
    let mut redis = PrivateRedis::start().await;
    let replica = Replica::spawn(&redis.url(), &unique_prefix()).await;
    let mut client = connect(replica.addr).await;
    let mut follow = client
        .stream_app_logs(pb::StreamAppLogsRequest {
            app: app.clone(),
            since_seconds: 300,
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let releases = ["RAAAAAAAAAA", "RBBBBBBBBBB", "RCCCCCCCCCC"];
    for (i, release) in releases.iter().enumerate() {
        match i {
            1 => redis.kill(),
            2 => redis.restart().await,
            _ => {}
        }
        let promotion = promotion_id(&app, i);
        start(
            &mut client,
            &promotion,
            spec(&app, release, &App::healthy(1)),
            None,
            0,
        )
        .await;
        let (done, _) = finish(&mut client, &promotion, LIMIT).await;
        assert_eq!(done.phase(), pb::RolloutPhase::Running, "{done:?}");
        follow_until(
            &mut follow,
            &mut seen,
            &format!("Release {release} is running"),
        )
        .await;
    }
    // Long enough for a durable re-read (every 2 s) to send a duplicate.
    let drain = tokio::time::sleep(Duration::from_secs(3));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            () = &mut drain => break,
            item = follow.next() => {
                let Some(event) = item.expect("stream open").unwrap().event else {
                    continue;
                };
                seen.push(format!("{} {}", event.source, event.message));
            }
        }
    }
    for release in releases {
        let line = format!("system/local/atom/app Release {release} is running");
        assert_eq!(
            seen.iter().filter(|l| **l == line).count(),
            1,
            "{line} once in {seen:#?}"
        );
    }
    let pending = "system/local/atom/app Status: Running => Pending";
    assert_eq!(
        seen.iter().filter(|l| *l == pending).count(),
        3,
        "{seen:#?}"
    );
}
