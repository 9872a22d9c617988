//! `slipway builds`, `builds info`, `builds logs` and the routes behind
//! them, shaped as the `convox` CLI sends and prints them (reference part 2
//! §5).

use slipway_e2e::{TestRack, example, ok_stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn builds_list_info_and_logs_like_convox() {
    let rack = TestRack::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    ok_stdout(
        &rack.slipway(dir, &["apps", "create", "myapp"]).await,
        "apps create",
    );
    let source = example("myapp");
    let source = source.to_str().unwrap();
    let release = ok_stdout(
        &rack
            .slipway(
                dir,
                &["build", source, "-a", "myapp", "-d", "first one", "--id"],
            )
            .await,
        "build",
    );
    assert!(release.starts_with('R'), "{release:?}");

    // The list: newest first, with the release it made and how long it took.
    let out = ok_stdout(
        &rack.slipway(dir, &["builds", "-a", "myapp"]).await,
        "builds",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let header = lines[0];
    for (column, at) in [("ID", 0), ("STATUS", 13), ("RELEASE", 23), ("STARTED", 36)] {
        assert_eq!(header.find(column), Some(at), "{out}");
    }
    assert!(header.contains("  ELAPSED  DESCRIPTION"), "{out}");
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    let build = cells[0].to_owned();
    assert!(build.starts_with('B') && build.len() == 11, "{out}");
    assert_eq!(cells[1], "complete", "{out}");
    assert_eq!(cells[2], release, "{out}");
    assert!(lines[1].ends_with("  first one"), "{out}");
    let elapsed = cells[cells.len() - 3];
    assert!(
        elapsed.ends_with('s')
            && elapsed[..elapsed.len() - 1]
                .chars()
                .all(|c| c.is_ascii_digit() || c == 'm'),
        "{out}"
    );

    // `-l 0` is the server default; `-l 1` keeps one of two.
    ok_stdout(
        &rack
            .slipway(
                dir,
                &["build", source, "-a", "myapp", "-d", "second", "--id"],
            )
            .await,
        "second build",
    );
    let out = ok_stdout(
        &rack
            .slipway(dir, &["builds", "-a", "myapp", "-l", "1"])
            .await,
        "builds -l 1",
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.lines().nth(1).unwrap().ends_with("  second"), "{out}");

    // info: every line padded, an empty value still followed by two spaces.
    let out = ok_stdout(
        &rack
            .slipway(dir, &["builds", "info", &build, "-a", "myapp"])
            .await,
        "builds info",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("Id           {build}"), "{out}");
    assert_eq!(lines[1], "Status       complete", "{out}");
    assert_eq!(lines[2], format!("Release      {release}"), "{out}");
    assert_eq!(lines[3], "Description  first one", "{out}");
    assert!(
        lines[4] == "Started      now"
            || (lines[4].starts_with("Started      ") && lines[4].ends_with(" ago")),
        "{out}"
    );
    assert!(
        lines[5].starts_with("Elapsed      ") && lines[5].ends_with('s'),
        "{out}"
    );
    assert_eq!(lines.len(), 6, "{out}");

    // logs: the stored log, replayed in full.
    let out = ok_stdout(
        &rack
            .slipway(dir, &["builds", "logs", &build, "-a", "myapp"])
            .await,
        "builds logs",
    );
    assert!(!out.is_empty(), "the build logged something");

    // An unknown build: the rack's words, exit 1, for info and logs alike.
    for args in [
        ["builds", "info", "BNOSUCHBLDX"],
        ["builds", "logs", "BNOSUCHBLDX"],
    ] {
        let output = rack
            .slipway(dir, &[args[0], args[1], args[2], "-a", "myapp"])
            .await;
        assert!(!output.status.success(), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("ERROR: build not found: BNOSUCHBLDX"),
            "{args:?}: {stderr}"
        );
    }

    // The routes as the convox CLI calls them.
    let (status, body) = rack
        .raw("GET", "/apps/myapp/builds?limit=1", "", b"", &rack.password)
        .await;
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{body}");
    let (status, body) = rack
        .raw(
            "GET",
            &format!("/apps/myapp/builds/{build}?"),
            "",
            b"",
            &rack.password,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let found: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(found["id"], build.as_str());
    assert_eq!(found["release"], release.as_str());
    let (status, body) = rack
        .raw(
            "GET",
            "/apps/myapp/builds/BNOSUCHBLDX?",
            "",
            b"",
            &rack.password,
        )
        .await;
    assert_eq!(
        (status, body.as_str()),
        (404, "build not found: BNOSUCHBLDX\n")
    );
    // Not an id at all: the build service says why.
    let (status, body) = rack
        .raw("GET", "/apps/myapp/builds/BXX?", "", b"", &rack.password)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid build id"), "{body}");
}
