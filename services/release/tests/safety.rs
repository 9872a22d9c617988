//! Bad input changes nothing and names the problem; secrets never reach the
//! database in plaintext; the ledger refuses edits; the audit log records
//! who did what without values.

use crate::helpers::{Backend, MANIFEST, TestApp, assert_status, env_text, env_vars};
use slipway_api::release::v1 as pb;
use tonic::Code;
use tonic::metadata::MetadataValue;

slipway_storage::both_backends!(
    bad_input_changes_nothing_and_names_the_problem,
    env_values_are_sealed_in_the_database,
    the_ledger_is_append_only,
    the_audit_log_names_the_actor_but_no_values,
);

async fn bad_input_changes_nothing_and_names_the_problem(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("good").await;
    t.create_app("other").await;
    let release = t.build_release("good", MANIFEST).await;
    let foreign = t.build_release("other", MANIFEST).await;
    let counts = || async {
        (
            t.count("apps").await,
            t.count("releases").await,
            t.count("promotions").await,
        )
    };
    let before = counts().await;
    let mut c = t.client.clone();

    for (name, needle) in [
        ("My_App", "invalid app name \"My_App\""),
        ("", "app"),
        ("rack", "reserved"),
        ("a-very-long-name-that-goes-past-thirty", "at most 30"),
    ] {
        assert_status(
            c.create_app(pb::CreateAppRequest {
                name: name.into(),
                deadline_seconds: 0,
            })
            .await,
            Code::InvalidArgument,
            needle,
        );
    }
    assert_status(
        c.create_app(pb::CreateAppRequest {
            name: "good".into(),
            deadline_seconds: 0,
        })
        .await,
        Code::AlreadyExists,
        "app already exists: good",
    );
    assert_status(
        c.create_app(pb::CreateAppRequest {
            name: "slow".into(),
            deadline_seconds: 5,
        })
        .await,
        Code::InvalidArgument,
        "between 30 and 21600",
    );
    for key in ["1FOO", "A-B", ""] {
        let result = t.env_set("good", &[(key, "x")]).await;
        assert_status(
            result,
            Code::InvalidArgument,
            if key.is_empty() { "empty env key" } else { key },
        );
    }
    assert_status(
        t.change_env("good", &[], &[]).await,
        Code::InvalidArgument,
        "nothing to change",
    );
    assert_status(
        t.change_env("good", &[("K", "1")], &["K"]).await,
        Code::InvalidArgument,
        "both set and unset",
    );
    assert_status(
        c.create_release(pb::CreateReleaseRequest {
            app: "good".into(),
            env_vars: env_vars("OK=1\n2BAD=x"),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "2BAD",
    );
    // The deprecated Convox text field is still read, strictly.
    #[allow(deprecated)]
    let old_text = pb::CreateReleaseRequest {
        app: "good".into(),
        env: Some("OK=1\n2BAD=x".into()),
        ..Default::default()
    };
    assert_status(
        c.create_release(old_text).await,
        Code::InvalidArgument,
        "line 2: invalid env key \"2BAD\"",
    );
    assert_status(
        t.env_set("nope", &[("A", "1")]).await,
        Code::NotFound,
        "app not found: nope",
    );
    assert_status(
        t.promote("nope", &release.id).await,
        Code::NotFound,
        "app not found: nope",
    );
    assert_status(
        t.promote("good", "RZZZZZZZZZZ").await,
        Code::NotFound,
        "release not found: RZZZZZZZZZZ",
    );
    assert_status(
        t.promote("good", "bogus").await,
        Code::InvalidArgument,
        "invalid release id \"bogus\"",
    );
    assert_status(
        t.promote("good", &foreign.id).await,
        Code::NotFound,
        &format!("release not found: {}", foreign.id),
    );
    assert_status(
        c.get_release(pb::GetReleaseRequest {
            app: "good".into(),
            id: foreign.id.clone(),
        })
        .await,
        Code::NotFound,
        "release not found",
    );
    assert_status(
        c.create_release(pb::CreateReleaseRequest {
            app: "good".into(),
            build: Some("BABCDEFGHIJ".into()),
            manifest: Some("services:\n  web:\n    port: [1, 2]\n".into()),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "line 3",
    );
    assert_status(
        c.create_release(pb::CreateReleaseRequest {
            app: "good".into(),
            build: Some("BNEVERSEENX".into()),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "pass its manifest",
    );
    assert_status(
        c.list_releases(pb::ListReleasesRequest {
            app: "good".into(),
            limit: 5000,
            page_token: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "at most 1000",
    );
    assert_status(
        c.list_releases(pb::ListReleasesRequest {
            app: "good".into(),
            limit: 5,
            page_token: "garbage".into(),
        })
        .await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        c.promote_release(pb::PromoteReleaseRequest {
            app: "good".into(),
            release: release.id.clone(),
            force: false,
            deadline_seconds: 99_999,
        })
        .await,
        Code::InvalidArgument,
        "deadline_seconds",
    );
    // An env-only release of a never-built app has no manifest to promote.
    t.create_app("bare").await;
    let bare = t.env_set("bare", &[("A", "1")]).await.unwrap();
    assert_status(
        t.promote("bare", &bare.id).await,
        Code::FailedPrecondition,
        "empty manifest",
    );
    let after = counts().await;
    assert_eq!(
        (after.0, after.1, after.2),
        (before.0 + 1, before.1 + 1, before.2),
        "only the `bare` app and its release were added"
    );
}

async fn env_values_are_sealed_in_the_database(backend: Backend) {
    use sqlx::Row as _;
    let t = TestApp::spawn(backend).await;
    t.create_app("secret").await;
    let value = "correct-horse-battery-staple";
    let r = t.env_set("secret", &[("PASSWORD", value)]).await.unwrap();
    assert_eq!(
        env_text(&r),
        format!("PASSWORD={value}"),
        "the API still returns it"
    );
    let rows = sqlx::query("SELECT * FROM releases")
        .fetch_all(&t.db.db.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let sealed: Vec<u8> = rows[0].try_get("env_sealed").unwrap();
    assert!(
        !sealed.windows(value.len()).any(|w| w == value.as_bytes()),
        "plaintext in env_sealed"
    );
    assert!(
        !sealed.windows(8).any(|w| w == b"PASSWORD"),
        "even keys are sealed"
    );
    for table in ["releases", "audit_events", "promotions", "apps"] {
        let dump: Vec<String> = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(&t.db.db.pool)
            .await
            .unwrap()
            .iter()
            .flat_map(|row| {
                use sqlx::Column as _;
                row.columns()
                    .iter()
                    .filter_map(|c| row.try_get::<Option<String>, _>(c.name()).ok().flatten())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            !dump.iter().any(|v| v.contains(value)),
            "plaintext value in {table}"
        );
    }
}

async fn the_ledger_is_append_only(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("ledger").await;
    let r = t.env_set("ledger", &[("A", "1")]).await.unwrap();
    let update = sqlx::query("UPDATE releases SET description = 'tampered' WHERE id = $1")
        .bind(&r.id)
        .execute(&t.db.db.pool)
        .await
        .unwrap_err();
    assert!(update.to_string().contains("append-only"), "{update}");
    let delete = sqlx::query("DELETE FROM releases")
        .execute(&t.db.db.pool)
        .await
        .unwrap_err();
    assert!(delete.to_string().contains("append-only"), "{delete}");
    assert_eq!(t.newest("ledger").await.description, "env add:A");
}

async fn the_audit_log_names_the_actor_but_no_values(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    let mut request = tonic::Request::new(pb::CreateAppRequest {
        name: "audited".into(),
        deadline_seconds: 120,
    });
    request.metadata_mut().insert(
        slipway_rpc::ACTOR_HEADER,
        MetadataValue::from_static("alice@example.com"),
    );
    t.client.clone().create_app(request).await.unwrap();
    let mut request = tonic::Request::new(pb::ChangeEnvRequest {
        app: "audited".into(),
        set: [("TOKEN".to_owned(), "tok-123456".to_owned())].into(),
        unset: vec![],
        parent_release: None,
        expected_newest_release: None,
    });
    request
        .metadata_mut()
        .insert(slipway_rpc::ACTOR_HEADER, MetadataValue::from_static("bob"));
    let release = t
        .client
        .clone()
        .change_env(request)
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    assert_eq!(release.actor, "bob");
    let events = t
        .client
        .clone()
        .list_audit_events(pb::ListAuditEventsRequest {
            app: "audited".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("bob", "release.create"),
            ("alice@example.com", "app.create")
        ]
    );
    assert!(events[0].detail.contains("TOKEN"), "{}", events[0].detail);
    assert!(events.iter().all(|e| !e.detail.contains("tok-123456")));
    assert_eq!(events[0].subject, release.id);
    assert_eq!(t.app("audited").await.deadline_seconds, 120);
}

#[test]
fn a_bad_setting_exits_64_with_one_line_before_binding() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_slipway-release"))
        .args([
            "--dev",
            "--default-deadline",
            "5s",
            "--listen",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("invalid config: --default-deadline"),
        "{stderr}"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_slipway-release"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64), "no --env-key outside --dev");
}
