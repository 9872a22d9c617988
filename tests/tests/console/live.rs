//! The live pages besides the promotion's: a build's log (the CLI's text,
//! replayed and resumed by byte offset), the status streams of the apps
//! list, the app page and the processes page (each first says the version
//! the page was rendered with, then a new one when something changes), the
//! app's logs (a live tail that resumes without a gap or a duplicate), and
//! the per-session cap on open streams.

use std::time::Duration;

use slipway_e2e::{eventually, ok_stdout};

use crate::http::{Browser, EventStream, SseEvent};
use crate::{env_set, rack_with_app};

/// The text of `<pre id="ID" …>…</pre>`, unescaped.
fn pre_text(html: &str, id: &str) -> String {
    let start = html
        .find(&format!("<pre id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {html}"));
    let rest = &html[start..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest.find("</pre>").unwrap();
    unescape(&rest[open..close])
}

fn unescape(text: &str) -> String {
    text.replace("&#60;", "<")
        .replace("&lt;", "<")
        .replace("&#62;", ">")
        .replace("&gt;", ">")
        .replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&#38;", "&")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in the first tag that has it.
fn attribute(html: &str, name: &str) -> String {
    let needle = format!(" {name}=\"");
    let at = html
        .find(&needle)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + needle.len();
    let rest = &html[at..];
    unescape(&rest[..rest.find('"').unwrap()])
}

/// The time in a log cursor (`<micros>.<digest>`).
fn micros(cursor: &str) -> i64 {
    cursor.split('.').next().unwrap().parse().unwrap()
}

/// The text a JSON-string event carries.
fn text(event: &SseEvent) -> String {
    serde_json::from_str(&event.data).unwrap_or_else(|e| panic!("{event:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_builds_log_is_the_clis_and_resumes_by_offset() {
    let cwd = tempfile::tempdir().unwrap();
    let (rack, _) = rack_with_app(cwd.path()).await;
    let mut browser = Browser::new(rack.addr);
    browser.login(&rack.password, "").await;
    let builds = browser.get("/console/apps/myapp/builds").await;
    let at = builds
        .body
        .find("/console/apps/myapp/builds/B")
        .expect("a build links its page");
    let rest = &builds.body[at..];
    let page_path = rest[..rest.find('"').unwrap()].to_owned();
    let build = page_path.rsplit('/').next().unwrap().to_owned();
    let printed = ok_stdout(
        &rack
            .slipway(cwd.path(), &["builds", "logs", &build, "-a", "myapp"])
            .await,
        "builds logs",
    );
    assert!(printed.lines().count() >= 2, "{printed}");

    // The page shows the whole log of a finished build, and does not stream.
    let page = browser.get(&page_path).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("complete"), "{}", page.body);
    assert_eq!(pre_text(&page.body, "events"), printed);
    assert_eq!(attribute(&page.body, "data-stream"), "");
    assert_eq!(
        attribute(&page.body, "data-last-event"),
        printed.len().to_string()
    );

    // The stream replays it (ids are byte offsets), then the outcome.
    let stream = format!("{page_path}/stream");
    let events = EventStream::open(&browser, &stream, &[])
        .await
        .collect()
        .await;
    let (outcome, chunks) = events.split_last().expect("events");
    assert_eq!(outcome.event.as_deref(), Some("outcome"));
    assert!(outcome.data.contains("\"complete\""), "{outcome:?}");
    assert_eq!(chunks.iter().map(text).collect::<String>(), printed);
    assert_eq!(
        chunks.last().unwrap().id.as_deref(),
        Some(printed.len().to_string().as_str())
    );

    // From any offset (a reconnect, or the page's own), exactly the rest.
    for from in [1, printed.find('\n').unwrap() + 1, printed.len()] {
        for headers in [vec![("last-event-id", from.to_string())], vec![]] {
            let path = if headers.is_empty() {
                format!("{stream}?after={from}")
            } else {
                stream.clone()
            };
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let resumed = EventStream::open(&browser, &path, &headers)
                .await
                .collect()
                .await;
            let (outcome, rest) = resumed.split_last().unwrap();
            assert_eq!(outcome.event.as_deref(), Some("outcome"));
            assert_eq!(rest.iter().map(text).collect::<String>(), printed[from..]);
        }
    }
    // Another app's build is not shown under this app.
    let other = browser
        .get(&format!("/console/apps/nosuchapp/builds/{build}"))
        .await;
    assert_eq!(other.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_streams_start_at_the_pages_version_and_move_with_the_app() {
    let cwd = tempfile::tempdir().unwrap();
    let (rack, active) = rack_with_app(cwd.path()).await;
    let mut browser = Browser::new(rack.addr);
    browser.login(&rack.password, "").await;

    // Each page's stream first says the version the page was rendered
    // with (else the script would render it again at once, forever).
    let mut streams = Vec::new();
    for page in [
        "/console/",
        "/console/apps/myapp",
        "/console/apps/myapp/processes",
    ] {
        let answer = browser.get(page).await;
        assert_eq!(answer.status, 200, "{page}");
        let (live, version) = (
            attribute(&answer.body, "data-live"),
            attribute(&answer.body, "data-version"),
        );
        let mut stream = EventStream::open(&browser, &live, &[]).await;
        assert_eq!(stream.status, 200, "{live}");
        let first = stream.next().await.expect("a first version");
        assert_eq!(first.event.as_deref(), Some("version"));
        assert_eq!(
            first.data, version,
            "{page}: the stream starts where the page is"
        );
        streams.push((page, stream));
    }

    // The processes page lists what `slipway ps` lists.
    let ps = ok_stdout(
        &rack.slipway(cwd.path(), &["ps", "-a", "myapp"]).await,
        "ps",
    );
    let processes = browser.get("/console/apps/myapp/processes").await;
    assert!(
        processes.body.contains("<th scope=\"row\">web</th>"),
        "{}",
        processes.body
    );
    for id in ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
    {
        assert!(
            processes.body.contains(&format!("process-{id}")),
            "{id}: {}",
            processes.body
        );
    }
    assert!(
        processes
            .body
            .contains(&format!("<code>{active}</code> (active)"))
    );

    // A new release made elsewhere moves the app page's version (not the
    // apps list's: it shows no staged release).
    let staged = env_set(&rack, cwd.path(), "LIVE=1").await;
    let (_, app_stream) = &mut streams[1];
    let moved = app_stream.next().await.expect("a new version");
    assert_eq!(moved.event.as_deref(), Some("version"));
    let page = browser.get("/console/apps/myapp").await;
    assert!(page.body.contains(&format!("release-{staged}")));
    assert_eq!(attribute(&page.body, "data-version"), moved.data);

    // A promotion moves the apps list's version, and the processes'.
    ok_stdout(
        &rack
            .slipway(cwd.path(), &["releases", "promote", &staged, "-a", "myapp"])
            .await,
        "releases promote",
    );
    let (_, rack_stream) = &mut streams[0];
    let moved = rack_stream.next().await.expect("a new version");
    assert_eq!(moved.event.as_deref(), Some("version"));
    let (_, processes_stream) = &mut streams[2];
    assert!(processes_stream.next().await.is_some());
    eventually(
        Duration::from_secs(30),
        "the processes page shows the new release",
        || {
            let mut browser = browser.clone();
            let staged = staged.clone();
            async move {
                let page = browser.get("/console/apps/myapp/processes").await;
                page.body
                    .contains(&format!("<code>{staged}</code> (active)"))
                    .then_some(())
            }
        },
    )
    .await;

    // Without a session: no stream.
    let stranger = Browser::new(rack.addr);
    let refused = EventStream::open(&stranger, "/console/apps/myapp/stream", &[]).await;
    assert_eq!(refused.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_logs_tail_follows_the_app_and_resumes_without_gap_or_duplicate() {
    let cwd = tempfile::tempdir().unwrap();
    let (rack, _) = rack_with_app(cwd.path()).await;
    let mut browser = Browser::new(rack.addr);
    browser.login(&rack.password, "").await;
    let page = browser.get("/console/apps/myapp/logs").await;
    assert_eq!(page.status, 200);
    let backlog = pre_text(&page.body, "events");
    assert!(
        backlog.contains(" system/"),
        "the deploy's events: {backlog}"
    );
    let service = browser.get("/console/apps/myapp/logs?service=web").await;
    assert!(service.body.contains("<option value=\"web\" selected>"));

    // Live: a promotion's lines arrive, after what the page showed.
    let stream = attribute(&page.body, "data-stream");
    let after = attribute(&page.body, "data-last-event");
    let mut tail = EventStream::open(&browser, &format!("{stream}?after={after}"), &[]).await;
    assert_eq!(tail.status, 200);
    let staged = env_set(&rack, cwd.path(), "TAILED=1").await;
    let printed = ok_stdout(
        &rack
            .slipway(cwd.path(), &["releases", "promote", &staged, "-a", "myapp"])
            .await,
        "releases promote",
    );
    let wanted: Vec<&str> = printed
        .lines()
        .filter(|l| !l.starts_with("Promoting ") && *l != "OK")
        .collect();
    assert!(wanted.len() >= 3, "{printed}");
    let mut seen: Vec<SseEvent> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    while !wanted.iter().all(|w| lines.iter().any(|l| l == w)) {
        let event = tail.next().await.expect("the tail goes on");
        // Nothing from before the page's last line, nor that line again.
        let id = event.id.clone().expect("ids");
        assert_ne!(id, after, "the page's last line came again");
        assert!(micros(&id) >= micros(&after), "{id} is older than {after}");
        lines.push(text(&event));
        seen.push(event);
    }
    // In the order the CLI printed them.
    let positions: Vec<usize> = wanted
        .iter()
        .map(|w| lines.iter().position(|l| l == w).unwrap())
        .collect();
    assert!(positions.windows(2).all(|p| p[0] < p[1]), "{lines:?}");

    // A reconnect after any of them gets the next ones, none twice.
    for k in [0, seen.len() / 2, seen.len() - 2] {
        let last = seen[k].id.clone().expect("ids");
        let mut resumed = EventStream::open(&browser, &stream, &[("last-event-id", &last)]).await;
        for expected in &seen[k + 1..] {
            let got = resumed.next().await.expect("the rest");
            assert_eq!(&got, expected, "after {last}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_may_hold_only_so_many_streams() {
    let cwd = tempfile::tempdir().unwrap();
    let (rack, _) = rack_with_app(cwd.path()).await;
    let mut browser = Browser::new(rack.addr);
    browser.login(&rack.password, "").await;
    // slipway_console::MAX_STREAMS_PER_SESSION
    let cap = 16;
    let mut open = Vec::new();
    for _ in 0..cap {
        let stream = EventStream::open(&browser, "/console/apps/myapp/stream", &[]).await;
        assert_eq!(stream.status, 200);
        open.push(stream);
    }
    // One more, of any kind, is refused, saying why.
    for path in [
        "/console/apps/myapp/stream",
        "/console/stream",
        "/console/apps/myapp/logs/stream",
    ] {
        let refused = crate::http::request(
            rack.addr,
            "GET",
            path,
            Some(
                browser
                    .cookies
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            &[],
            None,
        )
        .await;
        assert_eq!(refused.status, 429, "{path}");
        assert!(
            refused
                .body
                .contains(&format!("already has {cap} live streams open")),
            "{}",
            refused.body
        );
    }
    // Pages still render, and another session is not affected.
    assert_eq!(browser.get("/console/apps/myapp").await.status, 200);
    let mut other = Browser::new(rack.addr);
    other.login(&rack.password, "other").await;
    let stream = EventStream::open(&other, "/console/apps/myapp/stream", &[]).await;
    assert_eq!(stream.status, 200);

    // A stream that ends frees its place.
    drop(open.pop());
    eventually(Duration::from_secs(30), "a freed place", || {
        let browser = browser.clone();
        async move {
            let stream = EventStream::open(&browser, "/console/apps/myapp/stream", &[]).await;
            (stream.status == 200).then_some(stream)
        }
    })
    .await;
}
