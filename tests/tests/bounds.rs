//! Env bounds through the gateway, as the `convox` CLI and `slipway env`
//! meet them: an oversize value, a NUL or an oversize env is refused with a
//! 400 naming the key and the limit (never the value) and creates nothing;
//! an app at the largest env still lists its releases.

use slipway_e2e::TestRack;

/// `slipway_domain::env::MAX_VAR_BYTES`: 128 KiB with the terminating NUL.
const MAX_VAR_BYTES: usize = 128 * 1024 - 1;
/// `slipway_domain::env::MAX_ENV_BYTES`.
const MAX_ENV_BYTES: usize = 256 * 1024;

/// A value that makes `KEY=VALUE` exactly `len` bytes, starting with a
/// marker that must never show in an answer.
fn value_for(key: &str, len: usize) -> String {
    let mut value = "hunter2".to_owned();
    value.push_str(&"v".repeat(len - key.len() - 1 - value.len()));
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversize_env_is_refused_with_a_clear_400_and_releases_still_list() {
    let rack = TestRack::start().await;
    let pw = rack.password.clone();
    let form = "application/x-www-form-urlencoded";
    let json = "application/json";
    let none = "application/octet-stream";
    let (status, body) = rack.raw("POST", "/apps?", form, b"name=bounded", &pw).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = rack
        .raw(
            "POST",
            "/apps/bounded/releases?",
            form,
            b"env=FOO%3Dbar",
            &pw,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let releases = || async {
        let (status, body) = rack
            .raw("GET", "/apps/bounded/releases?limit=100", none, b"", &pw)
            .await;
        assert_eq!(status, 200, "releases always list: {body}");
        serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap()
    };
    assert_eq!(releases().await.len(), 1);

    let refused = |(status, body): (u16, String), needle: &str| {
        assert_eq!(status, 400, "{body}");
        assert!(body.contains(needle), "expected {needle:?} in {body:?}");
        assert!(!body.contains("hunter2"), "a value leaked: {body:.200}");
    };

    // `slipway env set`: the atomic delta.
    let over = value_for("BIG", MAX_VAR_BYTES + 1);
    let change = serde_json::json!({ "set": { "BIG": over }, "unset": [] });
    refused(
        rack.raw(
            "POST",
            "/apps/bounded/env",
            json,
            change.to_string().as_bytes(),
            &pw,
        )
        .await,
        "env BIG is too large: BIG=VALUE is 131072 bytes, the limit is 131071 bytes",
    );
    let change = serde_json::json!({ "set": { "TOKEN": "hunter2\u{0}x" }, "unset": [] });
    refused(
        rack.raw(
            "POST",
            "/apps/bounded/env",
            json,
            change.to_string().as_bytes(),
            &pw,
        )
        .await,
        "env TOKEN: the value contains a NUL byte",
    );

    // `convox env set`: the whole env as Convox text in a form field.
    let body = format!("env=FOO%3Dbar%0ABIG%3D{over}");
    refused(
        rack.raw(
            "POST",
            "/apps/bounded/releases?",
            form,
            body.as_bytes(),
            &pw,
        )
        .await,
        "env BIG is too large",
    );
    let at = value_for("A", MAX_VAR_BYTES);
    let body = format!("env=A%3D{at}%0AB%3D{at}%0AC%3D{at}");
    refused(
        rack.raw(
            "POST",
            "/apps/bounded/releases?",
            form,
            body.as_bytes(),
            &pw,
        )
        .await,
        "the env is too large: 393216 bytes (KEY=VALUE plus one byte per variable), \
         the limit is 262144 bytes (256 KiB)",
    );
    refused(
        rack.raw(
            "POST",
            "/apps/bounded/releases?",
            form,
            b"env=TOKEN%3Da%00b",
            &pw,
        )
        .await,
        "env TOKEN: the value contains a NUL byte",
    );
    assert_eq!(releases().await.len(), 1, "nothing was created");

    // The largest env is accepted, and every release still lists.
    let b = value_for("B", MAX_VAR_BYTES);
    assert_eq!(2 * (MAX_VAR_BYTES + 1), MAX_ENV_BYTES);
    for i in 0..6 {
        let b = format!("{}{i}", &b[..b.len() - 1]);
        let change = serde_json::json!({ "set": { "A": at, "B": b }, "unset": ["FOO"] });
        let (status, body) = rack
            .raw(
                "POST",
                "/apps/bounded/env",
                json,
                change.to_string().as_bytes(),
                &pw,
            )
            .await;
        assert_eq!(status, 200, "{body:.300}");
    }
    let listed = releases().await;
    assert!(listed.len() > 1, "{}", listed.len());
    assert!(listed[0]["env"].as_str().unwrap().len() + 1 >= MAX_ENV_BYTES - 4);
}
