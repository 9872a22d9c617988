//! The browser scenarios of CONSOLE.md §4.2. Each asserts the page and,
//! through the API, the ledger.

use anyhow::{Context as _, bail, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::World;
use crate::driver::Browser;

/// The accessibility smoke run on every page a scenario visits with
/// JavaScript: one `h1`, no unlabelled control, no unnamed button, no
/// duplicate id.
async fn accessible(browser: &Browser) -> anyhow::Result<()> {
    let problems = browser
        .client
        .execute(
            r#"
            const problems = [];
            if (document.querySelectorAll("h1").length !== 1) problems.push("not exactly one h1");
            const ids = new Set();
            for (const el of document.querySelectorAll("[id]")) {
              if (ids.has(el.id)) problems.push("duplicate id " + el.id);
              ids.add(el.id);
            }
            for (const el of document.querySelectorAll("input:not([type=hidden]), textarea, select")) {
              const labelled = (el.id && document.querySelector(`label[for="${el.id}"]`))
                || el.getAttribute("aria-label") || el.closest("label");
              if (!labelled) problems.push("unlabelled " + (el.name || el.id));
            }
            for (const b of document.querySelectorAll("button, a.button")) {
              if (!b.textContent.trim() && !b.getAttribute("aria-label")) problems.push("unnamed button");
            }
            if (document.documentElement.lang !== "en") problems.push("no lang");
            return problems;
            "#,
            vec![],
        )
        .await?;
    let problems: Vec<String> = serde_json::from_value(problems)?;
    ensure!(problems.is_empty(), "accessibility: {problems:?}");
    Ok(())
}

/// Wrong password, right password, logout; the back button then shows
/// the login page, and the old session is gone.
pub async fn login(world: &World) -> Option<String> {
    let browser = world.driver.session("login", true).await;
    let outcome = async {
        browser.goto(&world.url("/console/")).await?;
        browser.wait_for_text("Log in to Slipway").await?;
        accessible(&browser).await?;
        world.shot(&browser, "login").await?;
        browser.fill("#password", "wrong-password-00000").await?;
        browser.click("main form button[type=submit]").await?;
        browser.wait_for_text("Wrong password.").await?;
        ensure!(
            browser
                .client
                .get_named_cookie("slipway_session")
                .await
                .is_err(),
            "a wrong password made a session"
        );
        browser.fill("#password", &world.rack.password).await?;
        browser.fill("#name", "ann").await?;
        browser.click("main form button[type=submit]").await?;
        browser.wait_for_text("Signed in as").await?;
        ensure!(browser.text("h1").await? == "Apps");
        accessible(&browser).await?;
        world.shot(&browser, "apps").await?;
        browser.click("header form button[type=submit]").await?;
        browser.wait_for_text("Log in to Slipway").await?;
        browser.client.back().await?;
        browser.wait_for_text("Log in to Slipway").await?;
        Ok(())
    }
    .await;
    let failure = match outcome {
        Ok(()) => None,
        Err(e) => {
            let kept = browser.keep_failure("login").await;
            Some(format!("login: {e:#} (page kept at {}.*)", kept.display()))
        }
    };
    browser.close().await;
    failure
}

/// Promote a staged release: the confirm page shows the change, the
/// promotion page its events and outcome, the table's active marker moves.
pub async fn promote(world: &World, browser: &Browser) -> anyhow::Result<()> {
    let before = world.deployed("shop").await;
    let staged = world
        .release_from(&["env", "set", "FEATURE_FLAG=on", "-a", "shop"])
        .await;
    browser.goto(&world.url("/console/apps/shop")).await?;
    let page = browser.wait_for_text(&format!("release-{staged}")).await?;
    ensure!(page.contains("staged"), "the new release reads staged");
    accessible(browser).await?;
    world.shot(browser, "app-releases").await?;
    browser
        .click(&format!("a[href$=\"/releases/{staged}/promote\"]"))
        .await?;
    let confirm = browser.wait_for_text("What changes").await?;
    ensure!(
        confirm.contains("adds <code>FEATURE_FLAG</code>"),
        "the diff names the key"
    );
    ensure!(!confirm.contains(">on<"), "no value on the confirm page");
    accessible(browser).await?;
    world.shot(browser, "confirm-promote").await?;
    browser.click("main form button[type=submit]").await?;
    let page = browser.wait_for_text("Succeeded — ").await?;
    ensure!(page.contains(&format!("{staged} is active")));
    let log = browser.text("#events").await?;
    ensure!(log.lines().count() >= 3, "the log has the rollout: {log}");
    ensure!(
        log.contains(&format!("Deploying release {staged}")),
        "{log}"
    );
    accessible(browser).await?;
    world.shot(browser, "promotion-succeeded").await?;
    ensure!(world.active("shop").await == staged);
    browser.goto(&world.url("/console/apps/shop")).await?;
    let row = browser.text(&format!("#release-{staged}")).await?;
    ensure!(row.contains("active"), "{row}");
    let old = browser.text(&format!("#release-{before}")).await?;
    ensure!(
        old.contains("last known good") && old.contains("Rollback"),
        "{old}"
    );
    Ok(())
}

/// A release that crashes at start: "Rolled back" with the reason, and
/// the old release still active.
pub async fn failure(world: &World, browser: &Browser) -> anyhow::Result<()> {
    let active = world.active("shop").await;
    let broken = slipway_e2e::example("broken");
    let bad = world
        .release_from(&["build", broken.to_str().unwrap(), "-a", "shop"])
        .await;
    browser
        .goto(&world.url(&format!("/console/apps/shop/releases/{bad}/promote")))
        .await?;
    browser.wait_for_text("What changes").await?;
    browser.click("main form button[type=submit]").await?;
    let page = browser.wait_for_text("Rolled back — ").await?;
    ensure!(
        page.contains(&format!("{active} is active again")),
        "names the old release"
    );
    let reason = browser.text("pre.reason").await?;
    ensure!(
        reason.contains("status 3"),
        "the reason has the exit status: {reason}"
    );
    ensure!(
        reason.contains("failed to connect to the database"),
        "the reason has the last output: {reason}"
    );
    ensure!(page.contains("role=\"alert\""), "a failure is an alert");
    world.shot(browser, "promotion-rolled-back").await?;
    ensure!(
        world.active("shop").await == active,
        "the old release stays active"
    );
    browser.goto(&world.url("/console/apps/shop")).await?;
    let row = browser.text(&format!("#release-{bad}")).await?;
    ensure!(row.contains("rolled back"), "{row}");
    Ok(())
}

/// A rollout that never becomes healthy, followed live, then cancelled.
pub async fn cancel(world: &World, browser: &Browser) -> anyhow::Result<()> {
    let active = world.active("shop").await;
    let source = tempfile::tempdir()?;
    std::fs::write(
        source.path().join("convox.yml"),
        "services:\n  web:\n    build: .\n    command: sleep 600\n    port: 5000\n    \
         health:\n      path: /health\n      grace: 100\n      interval: 30\n",
    )?;
    let slow = world
        .release_from(&["build", source.path().to_str().unwrap(), "-a", "shop"])
        .await;
    browser
        .goto(&world.url(&format!("/console/apps/shop/releases/{slow}/promote")))
        .await?;
    browser.wait_for_text("What changes").await?;
    browser.click("main form button[type=submit]").await?;
    browser.wait_for_text("Rolling out").await?;
    // The log grows live (server-sent events) while the state is running.
    browser
        .wait_for_source("the process start streamed in", |s| {
            s.contains(&format!("of {slow}")) && s.contains("Rolling out")
        })
        .await?;
    world.shot(browser, "promotion-live").await?;
    browser.click("a.button.danger").await?;
    browser
        .wait_for_text("is running. Cancelling reverts")
        .await?;
    accessible(browser).await?;
    browser.click("main form button[type=submit]").await?;
    browser
        .wait_for_source("the cancelled outcome", |s| {
            s.contains("Rolled back — ") || s.contains(">Cancelled<")
        })
        .await?;
    ensure!(
        world.active("shop").await == active,
        "the old release stays active"
    );
    Ok(())
}

/// The Environment page: hidden values, reveal, save vs Apply Changes,
/// a concurrent edit refused.
pub async fn env(world: &World, browser: &Browser) -> anyhow::Result<()> {
    let canary = "browser-canary-31b7";
    world.deployed("envapp").await;
    world
        .release_from(&["env", "set", &format!("SECRET={canary}"), "-a", "envapp"])
        .await;
    let active = world.active("envapp").await;
    browser.goto(&world.url("/console/apps/envapp/env")).await?;
    let page = browser.wait_for_text("Variables of").await?;
    ensure!(!page.contains(canary), "a value in the page before Reveal");
    accessible(browser).await?;
    world.shot(browser, "environment").await?;
    browser.click("a[aria-label=\"Reveal SECRET\"]").await?;
    browser.wait_for_text(canary).await?;

    // Save: a release described by its keys, not promoted.
    browser.goto(&world.url("/console/apps/envapp/env")).await?;
    browser.fill("#new-key-0", "FOO").await?;
    browser.fill("#new-value-0", "bar-value-77").await?;
    browser.click("button[value=save]").await?;
    browser.wait_for_text("env add:FOO").await?;
    ensure!(
        world.active("envapp").await == active,
        "save does not promote"
    );

    // A change made elsewhere after the page was rendered: refused.
    browser.goto(&world.url("/console/apps/envapp/env")).await?;
    browser.find("#set-FOO").await?;
    world
        .release_from(&["env", "set", "OTHER=1", "-a", "envapp"])
        .await;
    let before = world.releases("envapp").await;
    browser.fill("#set-FOO", "late-value-5e").await?;
    browser.click("button[value=apply]").await?;
    let page = browser
        .wait_for_text("changed since you opened this page")
        .await?;
    ensure!(
        !page.contains("late-value-5e"),
        "the typed value is not echoed"
    );
    ensure!(
        world.releases("envapp").await == before,
        "nothing was created"
    );

    // Apply Changes: created and promoted, the promotion page follows.
    browser.fill("#set-FOO", "baz-value-21").await?;
    browser.click("button[value=apply]").await?;
    browser.wait_for_text("Succeeded — ").await?;
    ensure!(
        world.active("envapp").await != active,
        "Apply Changes promotes"
    );
    Ok(())
}

/// Serves one page that auto-submits a form to `target`.
async fn attacker(target: String) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let html = format!(
        "<!doctype html><html><body><form id=f method=post action=\"{target}\">\
         <input name=csrf value=guess></form>\
         <script>document.getElementById('f').submit()</script></body></html>"
    );
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    Ok(port)
}

/// An auto-submitting form on another site (localhost: cross-site, the
/// Strict cookie withheld) and on another origin of this site
/// (127.0.0.1 on another port: the cookie sent): the Fetch-Metadata and
/// Origin check refuses both before the session or the token is looked
/// at, and nothing is promoted either way.
pub async fn cross_site(world: &World, browser: &Browser) -> anyhow::Result<()> {
    let staged = world
        .release_from(&["env", "set", "CSRF_PROBE=1", "-a", "shop"])
        .await;
    let active = world.active("shop").await;
    let before = world.releases("shop").await;
    let port =
        attacker(world.url(&format!("/console/apps/shop/releases/{staged}/promote"))).await?;
    for host in ["localhost", "127.0.0.1"] {
        browser.goto(&format!("http://{host}:{port}/")).await?;
        let page = browser
            .wait_for_source("the console's refusal", |s| s.contains("refused"))
            .await
            .with_context(|| format!("from {host}"))?;
        ensure!(page.contains("cross-site"), "from {host}: {page}");
    }
    ensure!(world.active("shop").await == active, "nothing was promoted");
    ensure!(
        world.releases("shop").await == before,
        "nothing was created"
    );
    Ok(())
}

/// The same flows with JavaScript off: promote (the page refreshes itself
/// to its outcome), reveal, Apply Changes.
pub async fn no_javascript(world: &World, browser: &Browser) -> anyhow::Result<()> {
    world.deployed("plain").await;
    let staged = world
        .release_from(&["env", "set", "NOJS=yes-value-4c", "-a", "plain"])
        .await;
    browser
        .goto(&world.url(&format!("/console/apps/plain/releases/{staged}/promote")))
        .await?;
    browser.wait_for_text("What changes").await?;
    browser.click("main form button[type=submit]").await?;
    browser.wait_for_text("Succeeded — ").await?;
    if world.active("plain").await != staged {
        bail!("the promotion did not make {staged} active");
    }
    browser.goto(&world.url("/console/apps/plain/env")).await?;
    let page = browser.wait_for_text("Variables of").await?;
    ensure!(!page.contains("yes-value-4c"));
    browser.click("a[aria-label=\"Reveal NOJS\"]").await?;
    browser.wait_for_text("yes-value-4c").await?;
    browser.goto(&world.url("/console/apps/plain/env")).await?;
    browser.fill("#set-NOJS", "changed-value-9d").await?;
    browser.click("button[value=apply]").await?;
    browser.wait_for_text("Succeeded — ").await?;
    ensure!(
        world.active("plain").await != staged,
        "Apply Changes promoted"
    );
    Ok(())
}

/// The live pages: the app page renders itself again when a release is
/// made elsewhere (its status stream, no reload by the test), the logs
/// page appends a promotion's lines as they happen (the same document: a
/// marker set before is still there), the processes page follows the
/// promotion to the new release, and a build's page shows its log.
pub async fn live(world: &World, browser: &Browser) -> anyhow::Result<()> {
    world.deployed("live").await;
    browser.goto(&world.url("/console/apps/live")).await?;
    browser.wait_for_text("Releases of live").await?;
    let staged = world
        .release_from(&["env", "set", "LIVE_FLAG=on", "-a", "live"])
        .await;
    browser
        .wait_for_text(&format!("release-{staged}"))
        .await
        .context("the app page follows its status stream")?;

    browser.goto(&world.url("/console/apps/live/logs")).await?;
    browser.wait_for_text("Logs of live").await?;
    accessible(browser).await?;
    browser
        .client
        .execute("window.slipwayMarker = 'same page'; return null;", vec![])
        .await?;
    world
        .slipway(&["releases", "promote", &staged, "-a", "live"])
        .await;
    let log = browser
        .wait_for_text(&format!("Deploying release {staged}"))
        .await
        .context("the logs page appends the promotion's lines")?;
    ensure!(log.contains("system/local/"), "{log}");
    let marker = browser
        .client
        .execute("return window.slipwayMarker || null;", vec![])
        .await?;
    ensure!(
        marker.as_str() == Some("same page"),
        "the lines came without a reload"
    );
    world.shot(browser, "logs").await?;

    browser
        .goto(&world.url("/console/apps/live/processes"))
        .await?;
    browser
        .wait_for_text(&format!("<code>{staged}</code> (active)"))
        .await?;
    accessible(browser).await?;
    world.shot(browser, "processes").await?;

    browser
        .goto(&world.url("/console/apps/live/builds"))
        .await?;
    browser.wait_for_text("Builds of live").await?;
    browser.click("tbody th a").await?;
    let page = browser.wait_for_text("complete").await?;
    ensure!(page.contains("role=\"log\""), "{page}");
    ensure!(
        !browser.text("#events").await?.is_empty(),
        "the build's log"
    );
    accessible(browser).await?;
    world.shot(browser, "build-log").await?;
    Ok(())
}
