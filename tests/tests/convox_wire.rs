//! The gateway as the `convox` CLI sees it: request targets ending in `?`,
//! form bodies, Basic auth, plain-text errors and their status codes.

use slipway_e2e::TestRack;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rack_api_answers_like_a_convox_rack() {
    let rack = TestRack::start().await;
    let pw = rack.password.clone();
    let form = "application/x-www-form-urlencoded";
    let none = "application/octet-stream";

    let (status, body) = rack.raw("GET", "/system?", none, b"", &pw).await;
    assert_eq!(status, 200, "{body}");
    let system: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        system["version"].as_str().unwrap() > "20180708231844",
        "the CLI must not take legacy routes"
    );
    assert_eq!(system["name"], "e2e");

    // Bad credentials: 401 and nothing else.
    let (status, body) = rack.raw("GET", "/apps?", none, b"", "wrong").await;
    assert_eq!((status, body.as_str()), (401, "invalid authentication\n"));
    let (status, _) = rack
        .raw("POST", "/apps?", form, b"name=sneaky", "wrong")
        .await;
    assert_eq!(status, 401);
    let (_, body) = rack.raw("GET", "/apps?", none, b"", &pw).await;
    assert_eq!(body.trim(), "[]", "the refused create changed nothing");

    let (status, body) = rack.raw("POST", "/apps?", form, b"name=myapp", &pw).await;
    assert_eq!(status, 200, "{body}");
    let app: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (app["name"].as_str(), app["status"].as_str()),
        (Some("myapp"), Some("running"))
    );
    let (status, body) = rack.raw("POST", "/apps?", form, b"name=myapp", &pw).await;
    assert_eq!(
        (status, body.as_str()),
        (409, "app already exists: myapp\n")
    );
    let (status, body) = rack
        .raw("POST", "/apps?", form, b"name=Bad_Name", &pw)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid app name"), "{body}");

    // Unknown app: 404 with the rack's wording.
    let (status, body) = rack.raw("GET", "/apps/nope?", none, b"", &pw).await;
    assert_eq!((status, body.as_str()), (404, "app not found: nope\n"));
    // A double slash (RACK_URL with a trailing slash) still routes.
    let (status, _) = rack.raw("GET", "//apps/myapp?", none, b"", &pw).await;
    assert_eq!(status, 200);

    // The env path of `convox env set`: the whole env in a form field.
    let (status, body) = rack
        .raw(
            "POST",
            "/apps/myapp/releases?",
            form,
            b"env=FOO%3Dbar%0ABAZ%3D1",
            &pw,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let release: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(release["description"], "env add:BAZ add:FOO");
    assert_eq!(release["env"], "BAZ=1\nFOO=bar");
    let (_, body) = rack
        .raw("GET", "/apps/myapp/releases?limit=1", none, b"", &pw)
        .await;
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["id"], release["id"]);
    let (status, body) = rack
        .raw("POST", "/apps/myapp/releases?", form, b"env=1BAD%3Dx", &pw)
        .await;
    assert_eq!(status, 400);
    assert!(body.contains("1BAD"), "{body}");

    // A promote of a release without a build: the rack's 400.
    let target = format!(
        "/apps/myapp/releases/{}/promote?",
        release["id"].as_str().unwrap()
    );
    let (status, body) = rack.raw("POST", &target, form, b"force=false", &pw).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "can not promote a release with an empty manifest\n")
    );

    // Body limits: 413 over the cap, and the object key is checked.
    let big = vec![b'x'; 9 * 1024 * 1024];
    let (status, _) = rack
        .raw("POST", "/apps/myapp/objects/tmp/big.tgz?", none, &big, &pw)
        .await;
    assert_eq!(status, 413);
    let (status, body) = rack
        .raw("POST", "/apps/myapp/objects/tmp/../x.tgz?", none, b"x", &pw)
        .await;
    assert_eq!((status, body.as_str()), (400, "invalid object key\n"));
    let (status, _) = rack
        .raw("POST", "/apps?", form, &vec![b'a'; 2 * 1024 * 1024], &pw)
        .await;
    assert_eq!(status, 413);

    // Helper routes the CLI calls on its own.
    let (status, body) = rack.raw("GET", "/apps/myapp/budget?", none, b"", &pw).await;
    assert_eq!(
        (status, body.trim()),
        (200, r#"{"config":null,"state":null}"#)
    );
    let (status, body) = rack
        .raw("GET", "/apps/myapp/configs/cli-env-mask?", none, b"", &pw)
        .await;
    assert_eq!(
        (status, body.as_str()),
        (404, "app config not found: cli-env-mask\n")
    );
    let (status, body) = rack
        .raw("GET", "/apps/myapp/processes?", none, b"", &pw)
        .await;
    assert_eq!((status, body.trim()), (200, "[]"));
}
