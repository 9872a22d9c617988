//! The promotion stream: the same lines as `slipway releases promote`
//! prints for the same promotion, resumable by `Last-Event-ID` without a
//! gap or a duplicate, and a hundred open streams leave the API
//! answering (then a console cancel ends the rollout they watch).

use std::time::Duration;

use slipway_e2e::{eventually, ok_stdout};

use crate::http::{Browser, EventStream};
use crate::{env_set, ledger, rack_with_app};

/// The apps list links each app's last promotion.
async fn last_promotion(browser: &mut Browser) -> String {
    let page = browser.get("/console/").await;
    let at = page
        .body
        .find("/console/apps/myapp/promotions/")
        .expect("a last promotion link");
    let rest = &page.body[at..];
    rest[..rest.find('"').unwrap()].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stream_is_the_clis_lines_and_resumes() {
    let cwd = tempfile::tempdir().unwrap();
    let (rack, _) = rack_with_app(cwd.path()).await;
    let staged = env_set(&rack, cwd.path(), "STREAMED=1").await;
    let printed = ok_stdout(
        &rack
            .slipway(cwd.path(), &["releases", "promote", &staged, "-a", "myapp"])
            .await,
        "releases promote",
    );
    let mut browser = Browser::new(rack.addr);
    browser.login(&rack.password, "").await;
    let promotion = last_promotion(&mut browser).await;

    // After the fact: every event, then the outcome, which ends the stream.
    let stream = EventStream::open(&browser, &format!("{promotion}/stream"), &[]).await;
    assert_eq!(stream.status, 200);
    let content_type = stream
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.clone());
    assert_eq!(content_type.as_deref(), Some("text/event-stream"));
    let events = stream.collect().await;
    let (outcome, lines) = events.split_last().expect("events");
    assert_eq!(outcome.event.as_deref(), Some("outcome"));
    assert!(outcome.data.contains("\"succeeded\""));
    let text: String = lines.iter().map(|e| format!("{}\n", e.data)).collect();
    assert!(lines.len() >= 3, "{text}");
    assert_eq!(printed, format!("Promoting {staged}...\n{text}OK\n"));
    // The page shows the same text (HTML-escaped).
    let page = browser.get(&promotion).await;
    let escaped = text.replace('>', "&#62;");
    assert!(page.body.contains(&escaped), "{}", page.body);

    // A reconnect after any event gets exactly the rest.
    for k in [0, lines.len() / 2, lines.len() - 1] {
        let last = lines[k].id.clone().expect("events have ids");
        let resumed = EventStream::open(
            &browser,
            &format!("{promotion}/stream"),
            &[("last-event-id", &last)],
        )
        .await
        .collect()
        .await;
        assert_eq!(resumed, events[k + 1..].to_vec(), "after event {last}");
        // The page's own first connection says `?after=`.
        let query = EventStream::open(&browser, &format!("{promotion}/stream?after={last}"), &[])
            .await
            .collect()
            .await;
        assert_eq!(query, events[k + 1..].to_vec());
    }

    // Without a session: no stream.
    let stranger = Browser::new(rack.addr);
    let refused = EventStream::open(&stranger, &format!("{promotion}/stream"), &[]).await;
    assert_eq!(refused.status, 303);
}

/// An app whose new release never becomes healthy: its rollout runs
/// until cancelled (or its deadline).
fn never_healthy(dir: &std::path::Path) {
    std::fs::write(
        dir.join("convox.yml"),
        "services:\n  web:\n    build: .\n    command: sleep 600\n    port: 5000\n    \
         health:\n      path: /health\n      grace: 100\n      interval: 30\n",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_streams_leave_the_api_answering_and_cancel_ends_them() {
    let cwd = tempfile::tempdir().unwrap();
    let (rack, active) = rack_with_app(cwd.path()).await;
    let source = tempfile::tempdir().unwrap();
    never_healthy(source.path());
    let out = ok_stdout(
        &rack
            .slipway(
                cwd.path(),
                &["build", source.path().to_str().unwrap(), "-a", "myapp"],
            )
            .await,
        "build",
    );
    let slow = out
        .lines()
        .find_map(|l| l.strip_prefix("Release: "))
        .unwrap()
        .trim()
        .to_owned();
    let mut browser = Browser::new(rack.addr);
    let csrf = browser.login(&rack.password, "oncall").await;
    let answer = browser
        .post(
            &format!("/console/apps/myapp/releases/{slow}/promote"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let promotion = answer.location().to_owned();

    // A hundred streams, from as many sessions as that takes (one session
    // may hold 16 on a gateway; live.rs tests that cap).
    let mut streams = Vec::new();
    let mut sessions = vec![browser.clone()];
    for i in 0..100 {
        if i > 0 && i % 16 == 0 {
            let mut another = Browser::new(rack.addr);
            another.login(&rack.password, &format!("watcher{i}")).await;
            sessions.push(another);
        }
        let watcher = sessions.last().unwrap();
        let stream = EventStream::open(watcher, &format!("{promotion}/stream"), &[]).await;
        assert_eq!(stream.status, 200);
        streams.push(stream);
    }
    // The API and the console still answer, promptly.
    let started = std::time::Instant::now();
    let (status, _) = rack.raw("GET", "/apps", "", b"", &rack.password).await;
    assert_eq!(status, 200);
    assert_eq!(browser.get("/console/apps/myapp").await.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // While it runs, the app page offers Cancel and no Promote.
    let page = browser.get("/console/apps/myapp").await;
    assert!(page.body.contains("Promotion in progress"), "{}", page.body);
    assert!(page.body.contains("Wait or cancel"));

    // Wait until the rollout is under way (its first events streamed).
    let first = streams[0].next().await.expect("an event");
    assert!(first.id.is_some());
    let confirm = browser.get("/console/apps/myapp/cancel").await;
    assert!(confirm.body.contains("Cancel deployment"));
    let answer = browser
        .post("/console/apps/myapp/cancel", &[("csrf", &confirm.csrf())])
        .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(answer.location(), promotion);

    // Every stream ends with the outcome; the old release is active.
    for stream in streams.iter_mut().take(3) {
        let outcome = loop {
            let event = stream
                .next()
                .await
                .expect("the stream ends with its outcome");
            if event.event.is_some() {
                break event;
            }
        };
        assert!(
            outcome.data.contains("rolled_back") || outcome.data.contains("cancelled"),
            "{outcome:?}"
        );
    }
    let (_, now_active) = ledger(&rack).await;
    assert_eq!(now_active, active);
    eventually(
        Duration::from_secs(30),
        "the promotion page shows the end",
        || {
            let mut browser = browser.clone();
            let promotion = promotion.clone();
            async move {
                let page = browser.get(&promotion).await;
                (page.body.contains("Rolled back") || page.body.contains("Cancelled")).then_some(())
            }
        },
    )
    .await;
}
