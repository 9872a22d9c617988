//! Size bounds: an oversize env, value or manifest is refused with
//! INVALID_ARGUMENT naming the key or part and the limit, whatever call
//! brings it, and nothing is created; an app at the largest env and manifest
//! still lists all its releases, in pages that fit one message.

use std::collections::HashSet;

use crate::helpers::{Backend, MANIFEST, TestApp, assert_status, env_vars};
use slipway_api::release::v1 as pb;
use slipway_domain::env::{MAX_ENV_BYTES, MAX_VAR_BYTES};
use slipway_domain::manifest::MAX_MANIFEST_BYTES;
use tonic::Code;

slipway_storage::both_backends!(
    oversize_env_or_manifest_is_refused_and_nothing_is_created,
    an_app_at_the_largest_env_and_manifest_still_lists,
);

/// A value that makes `KEY=VALUE` exactly `len` bytes, starting with a
/// marker that must never show in an error.
fn value_for(key: &str, len: usize) -> String {
    let mut value = "hunter2".to_owned();
    value.push_str(&"v".repeat(len - key.len() - 1 - value.len()));
    value
}

/// A valid manifest padded with a comment to exactly `len` bytes.
fn manifest_of_len(len: usize) -> String {
    let mut text = MANIFEST.to_owned();
    text.push('#');
    text.push_str(&"x".repeat(len - text.len() - 1));
    text.push('\n');
    text
}

/// An env of two variables at the per-variable limit: exactly the env limit.
fn largest_env(flip: bool) -> String {
    let mut b = value_for("B", MAX_VAR_BYTES);
    if flip {
        b.replace_range(b.len() - 1.., "w");
    }
    let text = format!("A={}\nB={b}", value_for("A", MAX_VAR_BYTES));
    assert_eq!(text.len() + 1, MAX_ENV_BYTES);
    text
}

async fn oversize_env_or_manifest_is_refused_and_nothing_is_created(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("bounded").await;
    let first = t.build_release("bounded", MANIFEST).await;
    let counts = || async { (t.count("releases").await, t.count("audit_events").await) };
    let before = counts().await;
    let no_secret = |result: Result<pb::Release, tonic::Status>, needle: &str| {
        if let Err(status) = &result {
            assert!(!status.message().contains("hunter2"), "{status:?}");
        }
        assert_status(result, Code::InvalidArgument, needle);
    };

    // ChangeEnv: one value over, a NUL, and a whole env over.
    let over = value_for("BIG", MAX_VAR_BYTES + 1);
    no_secret(
        t.env_set("bounded", &[("BIG", &over)]).await,
        "env BIG is too large: BIG=VALUE is 131072 bytes, the limit is 131071 bytes",
    );
    no_secret(
        t.env_set("bounded", &[("TOKEN", "hunter2\0x")]).await,
        "env TOKEN: the value contains a NUL byte",
    );
    let at = value_for("A", MAX_VAR_BYTES);
    no_secret(
        t.env_set("bounded", &[("A", &at), ("B", &at), ("C", &at)])
            .await,
        "the env is too large: 393216 bytes (KEY=VALUE plus one byte per variable), \
         the limit is 262144 bytes (256 KiB); the largest variable is",
    );

    // CreateRelease with Convox env text: the same bounds.
    let create = |env: String| {
        let mut c = t.client.clone();
        async move {
            c.create_release(pb::CreateReleaseRequest {
                app: "bounded".into(),
                env_vars: env_vars(&env),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().release.unwrap())
        }
    };
    no_secret(
        create(format!("OK=1\nBIG={over}")).await,
        "env BIG is too large",
    );
    no_secret(
        create("TOKEN=hunter2\0x".into()).await,
        "env TOKEN: the value contains a NUL",
    );
    no_secret(
        create(format!("{}\nC=", largest_env(false))).await,
        "the env is too large: 262147 bytes",
    );

    // A manifest over its limit, with a new build.
    let mut c = t.client.clone();
    let result = c
        .create_release(pb::CreateReleaseRequest {
            app: "bounded".into(),
            build: Some(slipway_domain::BuildId::generate().to_string()),
            manifest: Some(manifest_of_len(MAX_MANIFEST_BYTES + 1)),
            ..Default::default()
        })
        .await;
    assert_status(
        result,
        Code::InvalidArgument,
        "manifest is too large: 524289 bytes, the limit is 524288 bytes (512 KiB)",
    );

    assert_eq!(counts().await, before, "nothing was created");
    let newest = c
        .get_release(pb::GetReleaseRequest {
            app: "bounded".into(),
            id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    assert_eq!(newest.id, first.id);

    // Exactly at the limits is accepted.
    t.env_set("bounded", &[("BIG", &value_for("BIG", MAX_VAR_BYTES))])
        .await
        .unwrap();
    create(largest_env(false)).await.unwrap();
    assert_eq!(counts().await.0, before.0 + 2);
}

async fn an_app_at_the_largest_env_and_manifest_still_lists(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    t.create_app("full").await;
    t.build_release("full", &manifest_of_len(MAX_MANIFEST_BYTES))
        .await;
    let mut c = t.client.clone();
    const RELEASES: usize = 13;
    for i in 1..RELEASES {
        c.create_release(pb::CreateReleaseRequest {
            app: "full".into(),
            env_vars: env_vars(&largest_env(i % 2 == 1)),
            ..Default::default()
        })
        .await
        .unwrap();
    }

    for limit in [0, 10, 1000] {
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            // The test's client keeps tonic's default limits, as any caller may.
            let page = c
                .list_releases(pb::ListReleasesRequest {
                    app: "full".into(),
                    limit,
                    page_token: token.clone(),
                })
                .await
                .unwrap_or_else(|s| panic!("a page of limit {limit} must list: {s:?}"))
                .into_inner();
            pages += 1;
            assert!(!page.releases.is_empty());
            assert!(
                prost::Message::encoded_len(&page) <= slipway_rpc::MAX_MESSAGE_BYTES,
                "page fits one message"
            );
            seen.extend(page.releases.into_iter().map(|r| r.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen.len(), RELEASES, "limit {limit}: every release, once");
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), RELEASES);
        assert!(pages > 1, "releases this large take more than one page");
    }
}
