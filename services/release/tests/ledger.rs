//! The ledger: forks, env diffs and their descriptions, ordering, and no lost
//! update under concurrency.

use std::collections::HashSet;

use crate::helpers::{Backend, MANIFEST, TestApp, env_text, env_vars};
use slipway_api::release::v1 as pb;

slipway_storage::both_backends!(
    concurrent_env_sets_lose_nothing,
    env_changes_are_described_like_convox,
    releases_list_newest_first_with_a_cursor,
    releases_fork_from_the_newest_release,
    a_build_without_manifest_reuses_its_earlier_release,
    two_replicas_interleaving_lose_nothing,
    an_expected_newest_release_is_a_compare_and_set,
);

fn guarded(app: &str, key: &str, expected: &str) -> pb::ChangeEnvRequest {
    pb::ChangeEnvRequest {
        app: app.into(),
        set: [(key.to_owned(), "secret-value".to_owned())].into(),
        unset: vec![],
        parent_release: None,
        expected_newest_release: Some(expected.into()),
    }
}

async fn an_expected_newest_release_is_a_compare_and_set(backend: Backend) {
    let a = TestApp::spawn(backend).await;
    let b = a.replica().await;
    a.create_app("guarded").await;
    let mut client = a.client.clone();
    // No release yet: "" is what the editor saw.
    let first = client
        .change_env(guarded("guarded", "K0", ""))
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    a.env_set("guarded", &[("K1", "1")]).await.unwrap();
    // b writes behind a's back: a's remembered head is stale, and the
    // comparison must still see b's release as the newest.
    let seen = b.env_set("guarded", &[("K2", "2")]).await.unwrap();
    let ok = client
        .change_env(guarded("guarded", "K3", &seen.id))
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    assert_eq!(ok.parent, seen.id);
    assert_eq!(env_text(&ok).lines().count(), 4);

    // An editor that saw an older release is refused, naming the newer.
    for stale in [first.id.as_str(), seen.id.as_str(), ""] {
        let refused = client
            .change_env(guarded("guarded", "LATE", stale))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::FailedPrecondition,
            "{refused:?}"
        );
        assert!(refused.message().contains(&ok.id), "{}", refused.message());
        assert!(!refused.message().contains("secret-value"));
    }
    assert_eq!(a.releases("guarded", 100).await.len(), 4, "nothing created");

    // Racing editors that all saw the same newest release: exactly one wins.
    let racers = futures::future::join_all((0..12).map(|i| {
        let (t, id) = (if i % 2 == 0 { &a } else { &b }, ok.id.clone());
        async move {
            t.client
                .clone()
                .change_env(guarded("guarded", &format!("R{i}"), &id))
                .await
        }
    }))
    .await;
    let won = racers.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{racers:?}");
    assert!(
        racers
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| e.code() == tonic::Code::FailedPrecondition)
    );
    assert_eq!(a.releases("guarded", 100).await.len(), 5);
    // A malformed expectation is refused as such.
    let bad = client
        .change_env(guarded("guarded", "X", "nope"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

async fn two_replicas_interleaving_lose_nothing(backend: Backend) {
    let a = TestApp::spawn(backend).await;
    let b = a.replica().await;
    a.create_app("shared").await;
    a.env_set("shared", &[("K1", "1")]).await.unwrap();
    // b writes behind a's back: a's remembered head is stale now.
    b.env_set("shared", &[("K2", "2")]).await.unwrap();
    let r = a.env_set("shared", &[("K3", "3")]).await.unwrap();
    assert_eq!(
        env_text(&r),
        "K1=1\nK2=2\nK3=3",
        "a forked from b's release, not its stale head"
    );
    assert_eq!(r.description, "env add:K3");
    let both = futures::future::join_all((0..20).map(|i| {
        let t = if i % 2 == 0 { &a } else { &b };
        async move {
            t.env_set("shared", &[(&format!("X{i}"), "x")])
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(both.len(), 20);
    assert_eq!(env_text(&a.newest("shared").await).lines().count(), 23);
    assert_eq!(a.releases("shared", 100).await.len(), 23);
}

async fn concurrent_env_sets_lose_nothing(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("busy").await;
    let calls = (0..64).map(|i| {
        let t = &t;
        async move {
            t.env_set("busy", &[(&format!("KEY_{i}"), &format!("value-{i}"))])
                .await
                .unwrap()
        }
    });
    let releases = futures::future::join_all(calls).await;
    let ids: HashSet<_> = releases.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 64, "64 distinct releases");
    let all = t.releases("busy", 100).await;
    assert_eq!(all.len(), 64);
    let newest = t.newest("busy").await;
    for i in 0..64 {
        assert!(
            env_text(&newest).contains(&format!("KEY_{i}=value-{i}")),
            "KEY_{i} lost: {}",
            env_text(&newest)
        );
    }
    assert_eq!(env_text(&newest).lines().count(), 64);
    // Each release added exactly one key to its parent: a chain, no forks.
    for r in &all {
        assert!(
            r.description.starts_with("env add:KEY_"),
            "{}",
            r.description
        );
    }
}

async fn env_changes_are_described_like_convox(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("myapp").await;
    let build = t.build_release("myapp", MANIFEST).await;
    assert_eq!(build.description, "build 0a1b2c3d4e my commit message");

    let r = t.env_set("myapp", &[("FOO", "bar")]).await.unwrap();
    assert_eq!(r.description, "env add:FOO");
    assert_eq!(r.build, build.build, "same build, new env");
    assert_eq!(r.manifest, MANIFEST);

    let r = t
        .env_set("myapp", &[("FOO", "baz"), ("BAR", "1")])
        .await
        .unwrap();
    assert_eq!(r.description, "env add:BAR change:FOO");
    assert_eq!(env_text(&r), "BAR=1\nFOO=baz");

    let r = t
        .change_env("myapp", &[("BAZ", "2")], &["BAR"])
        .await
        .unwrap();
    assert_eq!(r.description, "env add:BAZ remove:BAR");

    // The Convox path: the whole env in one field, diffed on the server.
    let r = t
        .client
        .clone()
        .create_release(pb::CreateReleaseRequest {
            app: "myapp".into(),
            env_vars: env_vars("BAR=9\nBAZ=2\nNEW=x"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    assert_eq!(r.description, "env add:BAR add:NEW remove:FOO");
    assert_eq!(env_text(&r), "BAR=9\nBAZ=2\nNEW=x");
}

async fn releases_list_newest_first_with_a_cursor(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("paged").await;
    let mut created = Vec::new();
    for i in 0..25 {
        created.push(
            t.env_set("paged", &[("N", &i.to_string())])
                .await
                .unwrap()
                .id,
        );
    }
    created.reverse();
    let default_page = t.releases("paged", 0).await;
    assert_eq!(default_page.len(), 10, "Convox's default limit");
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = t
            .client
            .clone()
            .list_releases(pb::ListReleasesRequest {
                app: "paged".into(),
                limit: 7,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.releases.into_iter().map(|r| r.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, created, "every release once, newest first");
}

async fn releases_fork_from_the_newest_release(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("forky").await;
    let first = t.build_release("forky", MANIFEST).await;
    t.activate("forky", &first.id).await;
    // Staged, not promoted: the next build must keep it.
    t.env_set("forky", &[("STAGED", "1")]).await.unwrap();
    let second = t.build_release("forky", MANIFEST).await;
    assert_eq!(env_text(&second), "STAGED=1");
    assert_eq!(
        t.app("forky").await.release,
        first.id,
        "creating releases does not promote"
    );

    // An explicit parent forks from that release instead.
    let forked = t
        .client
        .clone()
        .change_env(pb::ChangeEnvRequest {
            app: "forky".into(),
            set: [("OTHER".to_owned(), "2".to_owned())].into(),
            unset: vec![],
            parent_release: Some(first.id.clone()),
            expected_newest_release: None,
        })
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    assert_eq!(env_text(&forked), "OTHER=2");
    assert_eq!(forked.parent, first.id);
    assert_eq!(forked.build, first.build);
}

async fn a_build_without_manifest_reuses_its_earlier_release(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("copy").await;
    let old = t.build_release("copy", MANIFEST).await;
    let newer = t
        .build_release("copy", "services:\n  web:\n    build: .\n    port: 3000\n")
        .await;
    assert_ne!(old.build, newer.build);
    // What the convox CLI's client-side rollback sends: build + env only.
    let copy = t
        .client
        .clone()
        .create_release(pb::CreateReleaseRequest {
            app: "copy".into(),
            build: Some(old.build.clone()),
            env_vars: Some(pb::EnvVars {
                vars: old.env_vars.clone(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    assert_eq!(copy.manifest, MANIFEST);
    assert_eq!(copy.artifacts, old.artifacts);
    assert_eq!(copy.description, "build 0a1b2c3d4e my commit message");
}
