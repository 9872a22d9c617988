//! `StreamAppLogs`: process output and runtime events of an app, backlog
//! (durable rollout log merged with the bus, each event once), `since`,
//! `follow`, `tail` and the service and text filters.

use std::time::Duration;

use slipway_api::rollout::v1 as pb;
use slipway_api::rollout::v1::rollout_service_client::RolloutServiceClient;
use slipway_rpc::Channel;
use tokio_stream::StreamExt as _;

use crate::helpers::*;

const LIMIT: Duration = Duration::from_secs(60);

fn request(app: &str, since_seconds: u32, follow: bool) -> pb::StreamAppLogsRequest {
    pb::StreamAppLogsRequest {
        app: app.to_owned(),
        since_seconds,
        follow,
        ..Default::default()
    }
}

/// The whole answer of a non-following request.
async fn backlog(
    client: &mut RolloutServiceClient<Channel>,
    request: pb::StreamAppLogsRequest,
) -> Vec<pb::Event> {
    assert!(!request.follow);
    let read = async {
        let mut stream = client.stream_app_logs(request).await.unwrap().into_inner();
        let mut events = Vec::new();
        while let Some(item) = stream.next().await {
            // A message with only a cursor carries no line.
            events.extend(item.unwrap().event);
        }
        events
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a non-following log stream ends after its backlog")
}

/// The lines of a non-following request (`time source message`), each
/// with the cursor after it.
async fn with_cursors(
    client: &mut RolloutServiceClient<Channel>,
    request: pb::StreamAppLogsRequest,
) -> Vec<(String, String)> {
    let read = async {
        let mut stream = client.stream_app_logs(request).await.unwrap().into_inner();
        let mut lines = Vec::new();
        let mut cursors = 0;
        while let Some(item) = stream.next().await {
            let item = item.unwrap();
            assert!(!item.cursor.is_empty(), "every message has a cursor");
            cursors += 1;
            if let Some(e) = item.event {
                let time = slipway_api::from_timestamp(e.time.as_ref().unwrap());
                lines.push((format!("{time:?} {} {}", e.source, e.message), item.cursor));
            }
        }
        assert_eq!(
            cursors,
            lines.len() + 1,
            "one cursor-only message ends the backlog"
        );
        lines
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a non-following log stream ends after its backlog")
}

fn show(events: &[pb::Event]) -> String {
    events
        .iter()
        .map(|e| format!("{} {}\n", e.source, e.message))
        .collect()
}

#[tokio::test]
async fn process_output_and_runtime_events_stream_with_since_follow_and_tail() {
    let app = app_name("logs");
    let _guard = AppGuard(app.clone());
    let mut service = TestService::spawn().await;
    let r1 = spec(&app, "RAAAAAAAAAA", &App::healthy(1));
    let p1 = promotion_id(&app, 1);
    start(&mut service.client, &p1, r1.clone(), None, 0).await;
    let (done, _) = finish(&mut service.client, &p1, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Running, "{done:?}");

    // The process's output shows up with its source, beside the rollout's
    // runtime events, oldest first.
    let mut client = service.client.clone();
    let started = std::time::Instant::now();
    let events = loop {
        let events = backlog(&mut client, request(&app, 300, false)).await;
        if events.iter().any(|e| e.message.contains("listening on")) {
            break events;
        }
        assert!(
            started.elapsed() < LIMIT,
            "no process output in the app log:\n{}",
            show(&events)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = events
        .iter()
        .find(|e| e.message.contains("testapp RAAAAAAAAAA listening on"))
        .unwrap_or_else(|| panic!("no output line in:\n{}", show(&events)));
    assert!(
        output.source.starts_with("service/web/web-"),
        "{}",
        output.source
    );
    assert_eq!(output.app, app);
    let status: Vec<_> = events
        .iter()
        .filter(|e| {
            e.source == "system/local/atom/app" && e.message == "Status: Running => Pending"
        })
        .collect();
    assert_eq!(
        status.len(),
        1,
        "a rollout event is in the durable log and on the bus, and is sent once:\n{}",
        show(&events)
    );
    assert!(
        events.iter().any(|e| e.source == "system/local/web"),
        "{}",
        show(&events)
    );
    let times: Vec<_> = events
        .iter()
        .map(|e| slipway_api::from_timestamp(e.time.as_ref().unwrap()))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first:\n{}",
        show(&events)
    );

    // Tail: the last lines of the same backlog.
    let mut tail = request(&app, 300, false);
    tail.tail = 2;
    let last = backlog(&mut client, tail).await;
    assert_eq!(last.len(), 2, "{}", show(&last));
    assert_eq!(show(&last), show(&events[events.len() - 2..]));

    // Resume: after the cursor of any line, the rest of the same backlog,
    // each line once (rollout events are both in the durable log and on
    // the bus; the resumed stream sends neither copy of one sent before).
    let full = with_cursors(&mut client, request(&app, 300, false)).await;
    assert!(full.len() >= 4, "{full:#?}");
    let lines: Vec<String> = full.iter().map(|(line, _)| line.clone()).collect();
    for (k, (_, cursor)) in full.iter().enumerate() {
        let mut again = request(&app, 300, false);
        again.after_cursor = cursor.clone();
        let rest: Vec<String> = with_cursors(&mut client, again)
            .await
            .into_iter()
            .map(|(line, _)| line)
            .collect();
        // Process output may have come since: only after the rest.
        assert!(
            rest.starts_with(&lines[k + 1..]),
            "resumed after line {k}:\n{rest:#?}\nthe whole backlog:\n{lines:#?}"
        );
    }
    let mut bad = request(&app, 300, false);
    bad.after_cursor = "yesterday".into();
    let status = client
        .stream_app_logs(bad)
        .await
        .expect_err("a malformed cursor");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("after_cursor"), "{status:?}");

    // Filters: by service, by text.
    let mut other = request(&app, 300, false);
    other.service = Some("worker".into());
    assert!(backlog(&mut client, other).await.is_empty());
    let mut web = request(&app, 300, false);
    web.service = Some("web".into());
    let web = backlog(&mut client, web).await;
    assert!(
        web.iter().any(|e| e.source.starts_with("service/web/")),
        "{}",
        show(&web)
    );
    assert!(
        web.iter().all(|e| e.source != "system/local/atom/app"),
        "{}",
        show(&web)
    );
    let mut text = request(&app, 300, false);
    text.filter = "listening on".into();
    let text = backlog(&mut client, text).await;
    assert!(!text.is_empty());
    assert!(
        text.iter().all(|e| e.message.contains("listening on")),
        "{}",
        show(&text)
    );

    // Since: nothing is older than it; zero means no backlog at all.
    assert!(
        backlog(&mut client, request(&app, 0, false))
            .await
            .is_empty()
    );

    // Follow: live events after the backlog, until the caller goes away.
    let mut live = client
        .stream_app_logs(request(&app, 0, true))
        .await
        .unwrap()
        .into_inner();
    let r2 = spec(&app, "RBBBBBBBBBB", &App::healthy(1));
    let p2 = promotion_id(&app, 2);
    start(&mut service.client, &p2, r2, Some(r1), 0).await;
    let mut seen = Vec::new();
    let found = tokio::time::timeout(LIMIT, async {
        while let Some(item) = live.next().await {
            let Some(event) = item.unwrap().event else {
                continue;
            };
            let done = event.source.starts_with("service/web/")
                && event.message.contains("testapp RBBBBBBBBBB listening on");
            seen.push(event);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "the new release's output did not arrive live:\n{}",
        show(&seen)
    );
    assert!(
        seen.iter()
            .any(|e| e.source == "system/local/atom/app" && e.message.contains("Pending")),
        "the new rollout's events arrive live too:\n{}",
        show(&seen)
    );
    let pending_count = seen
        .iter()
        .filter(|e| e.message == "Status: Running => Pending")
        .count();
    assert_eq!(pending_count, 1, "{}", show(&seen));
    let (done, _) = finish(&mut service.client, &p2, LIMIT).await;
    assert_eq!(done.phase(), pb::RolloutPhase::Running, "{done:?}");
}

#[tokio::test]
async fn an_app_without_events_has_an_empty_log() {
    let mut service = TestService::spawn().await;
    let app = app_name("quiet");
    assert!(
        backlog(&mut service.client, request(&app, 120, false))
            .await
            .is_empty()
    );
    let error = service
        .client
        .stream_app_logs(request("", 120, false))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
}
