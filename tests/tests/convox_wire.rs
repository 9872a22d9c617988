//! The gateway as the `convox` CLI sees it: request targets ending in `?`,
//! form bodies, Basic auth, plain-text errors and their status codes.

use std::time::Duration;

use slipway_e2e::{TestRack, eventually};

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
    // A streamed (chunked) body over the cap fails mid-stream: 413, and no
    // truncated object (nor a staging file) is left behind.
    let (status, body) =
        chunked_upload(&rack, "/apps/myapp/objects/tmp/chunked-big.tgz?", &big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("too large"), "{body}");
    // The build service sees the cancelled stream and removes its staging
    // file (at once, but on its own task).
    eventually(
        Duration::from_secs(5),
        "the refused upload's files to go",
        || async {
            files_named(rack.dir(), "chunked-big")
                .is_empty()
                .then_some(())
        },
    )
    .await;
    // One under the cap streams through whole.
    let small = vec![b'y'; 3 * 1024 * 1024 + 17];
    let (status, body) =
        chunked_upload(&rack, "/apps/myapp/objects/tmp/chunked-ok.tgz?", &small).await;
    assert_eq!(status, 200, "{body}");
    let stored = files_named(rack.dir(), "chunked-ok");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(std::fs::read(&stored[0]).unwrap(), small);
    let (status, body) = rack
        .raw("POST", "/apps/myapp/objects/tmp/../x.tgz?", none, b"x", &pw)
        .await;
    assert_eq!(
        (status, body.as_str()),
        (
            400,
            "invalid object key \"tmp/../x.tgz\": '.' and '..' segments are not allowed\n"
        )
    );
    // The build service's rule, now the gateway's too: a backslash (sent
    // percent-encoded) was let through to the build service before.
    let (status, body) = rack
        .raw(
            "POST",
            "/apps/myapp/objects/tmp/a%5Cb.tgz?",
            none,
            b"x",
            &pw,
        )
        .await;
    assert_eq!(
        (status, body.as_str()),
        (
            400,
            "invalid object key \"tmp/a\\\\b.tgz\": control characters and backslashes are not allowed\n"
        )
    );
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

/// Sends `body` as a chunked HTTP/1.1 upload (no Content-Length, as a
/// client streaming from a pipe does) in 64 KiB chunks.
async fn chunked_upload(rack: &TestRack, target: &str, body: &[u8]) -> (u16, String) {
    use base64::Engine as _;
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(rack.addr).await.unwrap();
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("convox:{}", rack.password));
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        rack.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(64 * 1024) {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer 413 and close before the body is all sent.
        if stream.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    slipway_e2e::read_answer(&mut stream).await
}

/// Files below `dir` whose name starts with `prefix`.
fn files_named(dir: &std::path::Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if entry.file_name().to_string_lossy().starts_with(prefix) {
                found.push(path);
            }
        }
    }
    found
}
