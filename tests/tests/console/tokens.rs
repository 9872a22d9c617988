//! The console under scoped tokens: a read token logs in and sees no
//! action buttons, and every console POST is refused with the ledger
//! unchanged; a deploy token sees them for its app; a token out of scope
//! cannot open the app; a revoked token's session ends; the login is on
//! the audit trail.

use std::time::Duration;

use slipway_e2e::{TestRack, eventually};

use crate::http::Browser;
use crate::{env_set, ledger, rack_with_app};

async fn token(rack: &TestRack, name: &str, role: &str, apps: &str) -> String {
    let body = format!("name={name}&role={role}&apps={apps}");
    let (status, answer) = rack
        .raw(
            "POST",
            "/tokens",
            "application/x-www-form-urlencoded",
            body.as_bytes(),
            &rack.password,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let created: serde_json::Value = serde_json::from_str(&answer).unwrap();
    created["value"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_token_sees_no_actions_and_every_post_is_refused() {
    let cwd = tempfile::tempdir().unwrap();
    let (rack, active) = rack_with_app(cwd.path()).await;
    let staged = env_set(&rack, cwd.path(), "STAGED=1").await;
    let viewer = token(&rack, "viewer", "read", "").await;
    let deployer = token(&rack, "deployer", "deploy", "myapp").await;
    let elsewhere = token(&rack, "elsewhere", "deploy", "other-*").await;

    let mut reader = Browser::new(rack.addr);
    let csrf = reader.login(&viewer, "ignored").await;
    let page = reader.get("/console/apps/myapp").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains(&staged), "the page lists the releases");
    for action in ["/promote\"", "/rollback\"", ">Promote<", ">Rollback<"] {
        assert!(
            !page.body.contains(action),
            "{action} shown to a read token"
        );
    }
    let confirm = reader
        .get(&format!("/console/apps/myapp/releases/{staged}/promote"))
        .await;
    assert!(
        !confirm.body.contains(&format!(
            "action=\"/console/apps/myapp/releases/{staged}/promote\""
        )),
        "{}",
        confirm.body
    );
    let before = ledger(&rack).await;
    for (path, fields) in [
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
    ] {
        let mut fields = fields;
        fields.push(("csrf", csrf.as_str()));
        let answer = reader.post(&path, &fields).await;
        assert_eq!(answer.status, 403, "{path}: {answer:?}");
        assert_eq!(ledger(&rack).await, before, "{path} changed the ledger");
    }

    // A deploy token on the app sees the buttons.
    let mut deploying = Browser::new(rack.addr);
    deploying.login(&deployer, "").await;
    let page = deploying.get("/console/apps/myapp").await;
    assert!(page.body.contains(">Promote<"), "{}", page.body);
    // A token of other apps cannot open this one, nor list it.
    let mut outsider = Browser::new(rack.addr);
    outsider.login(&elsewhere, "").await;
    assert_eq!(outsider.get("/console/apps/myapp").await.status, 403);
    let list = outsider.get("/console/").await;
    assert!(
        !list.body.contains("/console/apps/myapp\""),
        "{}",
        list.body
    );

    // The login is on the trail under the token's name.
    eventually(
        Duration::from_secs(10),
        "the console login audited",
        || async {
            let (_, trail) = rack
                .raw("GET", "/audit?limit=1000", "", b"", &rack.password)
                .await;
            trail.contains("\"actor\":\"token:viewer\"").then_some(())
        },
    )
    .await;

    // Revoked: the session ends at its next request.
    let (status, _) = rack
        .raw("DELETE", "/tokens/viewer", "", b"", &rack.password)
        .await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(15), "the session ended", || {
        let mut reader = reader.clone();
        async move {
            let page = reader.get("/console/apps/myapp").await;
            page.location().starts_with("/console/login").then_some(())
        }
    })
    .await;
}
