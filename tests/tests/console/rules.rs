//! The console's rules, each checked the way an attacker or a careless
//! browser would meet it: cookie attributes, logout, HTTP Basic ignored,
//! every POST refused (403, ledger unchanged) without its token, with a
//! wrong one, cross-site, or with Basic credentials only; env values in no
//! page, log line or trace until revealed; stale env edits refused.

use base64::Engine as _;
use slipway_e2e::TestRack;

use crate::http::{Browser, EventStream};
use crate::{env_set, ledger, logs, rack_with_app};

const HEADERS: [(&str, &str); 4] = [
    ("content-security-policy", "frame-ancestors 'none'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("cache-control", "no-store"),
];

fn assert_secure_headers(answer: &crate::http::Answer, what: &str) {
    for (name, needle) in HEADERS {
        let value = answer.header(name).unwrap_or_default();
        assert!(value.contains(needle), "{what}: {name}: {value:?}");
    }
    let csp = answer.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_cookie_logout_and_basic_credentials() {
    logs();
    let rack = TestRack::start().await;
    let mut browser = Browser::new(rack.addr);

    // The RACK_URL's Basic credentials do not log a browser in.
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("convox:{}", rack.password));
    let answer = browser
        .get_with("/console/", &[("authorization", &format!("Basic {basic}"))])
        .await;
    assert_eq!(answer.status, 303);
    assert_eq!(answer.location(), "/console/login?next=/console/");

    // The login form: its own pre-session token, the security headers.
    let page = browser.get("/console/login").await;
    assert_eq!(page.status, 200);
    assert_secure_headers(&page, "login page");
    assert!(
        page.body.contains("<label for=\"password\">"),
        "{}",
        page.body
    );
    let token = page.csrf();

    // A login posted without that cookie (another site's form) is refused.
    let mut stranger = Browser::new(rack.addr);
    let answer = stranger
        .post(
            "/console/login",
            &[("csrf", &token), ("password", &rack.password)],
        )
        .await;
    assert_eq!(answer.status, 403);
    assert!(answer.all("set-cookie").is_empty());
    // Cross-site, even with the cookie and the token.
    let answer = browser
        .post_with(
            "/console/login",
            &[("csrf", &token), ("password", &rack.password)],
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(answer.status, 403);

    // A wrong password: the form again, no session.
    let answer = browser
        .post(
            "/console/login",
            &[("csrf", &token), ("password", "wrong-password-000000")],
        )
        .await;
    assert_eq!(answer.status, 401);
    assert!(answer.body.contains("Wrong password."));
    assert!(!browser.cookies.contains_key("slipway_session"));

    // The right one: a session cookie with exactly these attributes, and
    // back to a console page only.
    let token = answer.csrf();
    let answer = browser
        .post(
            "/console/login",
            &[
                ("csrf", &token),
                ("password", &rack.password),
                ("name", "ann"),
                ("next", "https://evil.example/"),
            ],
        )
        .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(answer.location(), "/console/");
    let cookie = answer
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("slipway_session="))
        .expect("a session cookie")
        .to_owned();
    let (value, attributes) = cookie
        .strip_prefix("slipway_session=")
        .unwrap()
        .split_once(';')
        .unwrap();
    assert_eq!(value.len(), 43, "32 random bytes, base64url");
    assert_eq!(attributes, " Path=/console; HttpOnly; SameSite=Strict");

    let apps = browser.get("/console/").await;
    assert_eq!(apps.status, 200);
    assert_secure_headers(&apps, "apps page");
    assert!(apps.body.contains("console:ann"));
    let csrf = apps.csrf();

    // Logout needs the token too; then the old cookie is worthless.
    let stolen = browser.clone();
    let answer = browser.post("/console/logout", &[]).await;
    assert_eq!(answer.status, 403);
    assert_eq!(browser.get("/console/").await.status, 200);
    let answer = browser.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(answer.status, 303);
    assert!(!browser.cookies.contains_key("slipway_session"));
    let mut replay = stolen;
    let answer = replay.get("/console/").await;
    assert_eq!(answer.status, 303, "a logged-out session is gone");

    // Nothing of the password or the session reached the log.
    let logs = logs();
    assert!(!logs.contains(&rack.password), "the password was logged");
    assert!(!logs.contains(value), "the session id was logged");
    assert!(!logs.contains(&csrf), "the CSRF token was logged");
}

/// A refused POST: what is wrong with it, who sends it, its fields and
/// its headers.
type Case<'a> = (
    &'a str,
    Browser,
    Vec<(&'a str, &'a str)>,
    Vec<(&'a str, &'a str)>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_posts_leave_the_ledger_alone() {
    let cwd = tempfile::tempdir().unwrap();
    let (rack, active) = rack_with_app(cwd.path()).await;
    let canary = "canary-value-5d1e0f";
    let staged = env_set(&rack, cwd.path(), &format!("CANARY={canary}")).await;
    let mut browser = Browser::new(rack.addr);
    let csrf = browser.login(&rack.password, "tester").await;
    let before = ledger(&rack).await;

    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("convox:{}", rack.password));
    let basic = format!("Basic {basic}");
    let origin = format!("http://{}", rack.addr);
    let actions: Vec<(String, Vec<(&str, &str)>)> = vec![
        (
            format!("/console/apps/myapp/releases/{staged}/promote"),
            vec![],
        ),
        (
            format!("/console/apps/myapp/releases/{active}/rollback"),
            vec![],
        ),
        ("/console/apps/myapp/cancel".to_owned(), vec![]),
        (
            "/console/apps/myapp/env".to_owned(),
            vec![
                ("action", "apply"),
                ("parent", staged.as_str()),
                ("new_key", "INJECTED"),
                ("new_value", "1"),
            ],
        ),
    ];
    for (path, fields) in &actions {
        let with = |token: &'static str| {
            let mut f = fields.clone();
            f.push(("csrf", token));
            f
        };
        let mut right = fields.clone();
        right.push(("csrf", csrf.as_str()));
        let cases: Vec<Case<'_>> = vec![
            (
                "no token",
                browser.clone(),
                fields.clone(),
                vec![
                    ("origin", origin.as_str()),
                    ("sec-fetch-site", "same-origin"),
                ],
            ),
            (
                "a wrong token",
                browser.clone(),
                with("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
                vec![
                    ("origin", origin.as_str()),
                    ("sec-fetch-site", "same-origin"),
                ],
            ),
            (
                "cross-site",
                browser.clone(),
                right.clone(),
                vec![
                    ("origin", "http://evil.example"),
                    ("sec-fetch-site", "cross-site"),
                ],
            ),
            (
                "same-site, other origin",
                browser.clone(),
                right.clone(),
                vec![("sec-fetch-site", "same-site")],
            ),
            (
                "a foreign Origin",
                browser.clone(),
                right.clone(),
                vec![("origin", "http://127.0.0.1:1")],
            ),
            (
                "Basic credentials only",
                Browser::new(rack.addr),
                right.clone(),
                vec![("authorization", basic.as_str())],
            ),
        ];
        for (what, mut client, fields, headers) in cases {
            let answer = client.post_with(path, &fields, &headers).await;
            assert_eq!(answer.status, 403, "POST {path} with {what}: {answer:?}");
        }
    }
    assert_eq!(
        ledger(&rack).await,
        before,
        "a refused POST changed the ledger"
    );

    // No value in any page until revealed, and then only that one.
    for page in [
        "/console/".to_owned(),
        "/console/apps/myapp".to_owned(),
        format!("/console/apps/myapp/releases/{staged}/promote"),
        format!("/console/apps/myapp/releases/{active}/rollback"),
        "/console/apps/myapp/env".to_owned(),
    ] {
        let answer = browser.get(&page).await;
        assert_eq!(answer.status, 200, "{page}");
        assert!(!answer.body.contains(canary), "{page} shows a value");
        assert!(
            !answer.body.contains("Hello from Slipway"),
            "{page} shows a value"
        );
        assert_secure_headers(&answer, &page);
    }
    let confirm = browser
        .get(&format!("/console/apps/myapp/releases/{staged}/promote"))
        .await;
    assert!(
        confirm.body.contains("adds <code>CANARY</code>"),
        "{}",
        confirm.body
    );
    let revealed = browser.get("/console/apps/myapp/env?reveal=CANARY").await;
    assert!(revealed.body.contains(canary));
    assert!(
        !revealed.body.contains("Hello from Slipway"),
        "one key only"
    );
    assert_eq!(revealed.header("cache-control"), Some("no-store"));
    let all = browser.get("/console/apps/myapp/env?reveal=*").await;
    assert!(all.body.contains(canary));

    // An edit of an environment that moved on since the page was shown
    // is refused, and nothing is created.
    let page = browser.get("/console/apps/myapp/env").await;
    let parent = crate::http::hidden(&page.body, "parent").unwrap();
    assert_eq!(parent, staged);
    let moved = env_set(&rack, cwd.path(), "OTHER=1").await;
    let before = ledger(&rack).await;
    let answer = browser
        .post(
            "/console/apps/myapp/env",
            &[
                ("csrf", &csrf),
                ("parent", &parent),
                ("action", "save"),
                ("new_key", "LATE"),
                ("new_value", "late-value-8c2b"),
            ],
        )
        .await;
    assert_eq!(answer.status, 409, "{answer:?}");
    assert!(answer.body.contains("changed since you opened this page"));
    assert!(answer.body.contains(&moved), "names the newer release");
    assert!(
        !answer.body.contains("late-value-8c2b"),
        "the typed value is not echoed"
    );
    assert_eq!(
        ledger(&rack).await,
        before,
        "a stale edit changed the ledger"
    );

    // Bad input: a clear error, nothing created.
    let answer = browser
        .post(
            "/console/apps/myapp/env",
            &[
                ("csrf", &csrf),
                ("parent", &moved),
                ("action", "save"),
                ("new_key", "1BAD"),
                ("new_value", "bad-value-0a9f"),
            ],
        )
        .await;
    assert_eq!(answer.status, 400);
    assert!(answer.body.contains("1BAD") && !answer.body.contains("bad-value-0a9f"));
    assert_eq!(ledger(&rack).await, before);

    // Save: a new release described by its keys, not promoted.
    let answer = browser
        .post(
            "/console/apps/myapp/env",
            &[
                ("csrf", &csrf),
                ("parent", &moved),
                ("action", "save"),
                ("new_key", "FOO"),
                ("new_value", "foo-value-19d2"),
            ],
        )
        .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let saved = answer.location().rsplit('=').next().unwrap().to_owned();
    let app_page = browser.get("/console/apps/myapp").await;
    assert!(app_page.body.contains(&format!("release-{saved}")));
    assert!(app_page.body.contains("env add:FOO"));
    assert_eq!(ledger(&rack).await.1, active, "save does not promote");

    // Apply Changes: a new release, promoted; the promotion page follows it.
    let answer = browser
        .post(
            "/console/apps/myapp/env",
            &[
                ("csrf", &csrf),
                ("parent", &saved),
                ("action", "apply"),
                ("set:FOO", "foo-value-changed-77e1"),
            ],
        )
        .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let promotion = answer.location().to_owned();
    assert!(promotion.contains("/promotions/P"), "{promotion}");
    let events = EventStream::open(&browser, &format!("{promotion}/stream"), &[])
        .await
        .collect()
        .await;
    let outcome = events.last().expect("events");
    assert_eq!(outcome.event.as_deref(), Some("outcome"));
    assert!(outcome.data.contains("\"succeeded\""), "{outcome:?}");
    let (_, now_active) = ledger(&rack).await;
    assert_ne!(now_active, active);
    let page = browser.get(&promotion).await;
    assert!(
        page.body
            .contains(&format!("Succeeded — {now_active} is active"))
    );

    // The history pages: the builds, and the activity with who did what,
    // keys and no values.
    let builds = browser.get("/console/apps/myapp/builds").await;
    assert_eq!(builds.status, 200);
    assert!(builds.body.contains("complete"), "{}", builds.body);
    let activity = browser.get("/console/apps/myapp/activity").await;
    assert_eq!(activity.status, 200);
    assert!(
        activity.body.contains("release.promote"),
        "{}",
        activity.body
    );
    assert!(activity.body.contains("console:tester"));
    for value in [canary, "foo-value-19d2", "foo-value-changed-77e1"] {
        assert!(!activity.body.contains(value), "{value} in the activity");
    }

    // No value reached a log line or a trace.
    let logs = logs();
    for value in [
        canary,
        "late-value-8c2b",
        "foo-value-19d2",
        "foo-value-changed-77e1",
        "bad-value-0a9f",
    ] {
        assert!(!logs.contains(value), "{value} was logged");
    }
    assert!(logs.contains("env.reveal"), "reveals are audited");
}
