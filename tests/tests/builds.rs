//! `slipway builds`, `builds info`, `builds logs` and the routes behind
//! them, shaped as the `convox` CLI sends and prints them (reference part 2
//! §5).

use slipway_e2e::{TestRack, example, ok_stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn builds_list_info_and_logs_like_convox() {
    let rack = TestRack::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    rack.slipway_ok(dir, &["apps", "create", "myapp"]).await;
    let source = example("myapp");
    let source = source.to_str().unwrap();
    let release = rack
        .slipway_ok(
            dir,
            &["build", source, "-a", "myapp", "-d", "first one", "--id"],
        )
        .await;
    assert!(release.starts_with('R'), "{release:?}");

    // The list: newest first, with the release it made and how long it took.
    let out = rack.slipway_ok(dir, &["builds", "-a", "myapp"]).await;
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
    rack.slipway_ok(
        dir,
        &["build", source, "-a", "myapp", "-d", "second", "--id"],
    )
    .await;
    let out = rack
        .slipway_ok(dir, &["builds", "-a", "myapp", "-l", "1"])
        .await;
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.lines().nth(1).unwrap().ends_with("  second"), "{out}");

    // info: every line padded, an empty value still followed by two spaces.
    let out = rack
        .slipway_ok(dir, &["builds", "info", &build, "-a", "myapp"])
        .await;
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
    let out = rack
        .slipway_ok(dir, &["builds", "logs", &build, "-a", "myapp"])
        .await;
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

/// A gzip'd tar of `entries` (name, body), names written raw into the
/// header so hostile ones (`../x`) get through.
fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, body) in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append(&header, *body).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn release_of(out: &str) -> String {
    out.trim()
        .strip_prefix("Importing build... OK, ")
        .unwrap_or_else(|| panic!("{out:?}"))
        .to_owned()
}

async fn serves(rack: &TestRack, dir: &std::path::Path, app: &str) {
    let services = rack.slipway_ok(dir, &["services", "-a", app]).await;
    let addr = services
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    let (status, body) = slipway_e2e::http_get(&addr, "/")
        .await
        .expect("the app answers");
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn builds_export_and_import_into_another_app_and_rack() {
    let rack = TestRack::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    for app in ["myapp", "copy"] {
        rack.slipway_ok(dir, &["apps", "create", app]).await;
    }
    let source = example("myapp");
    let out = rack
        .slipway_ok(
            dir,
            &[
                "deploy",
                source.to_str().unwrap(),
                "-a",
                "myapp",
                "-d",
                "exported",
            ],
        )
        .await;
    let build = out
        .lines()
        .find_map(|l| l.strip_prefix("Build: "))
        .unwrap()
        .trim()
        .to_owned();

    // Export to a file.
    let file = dir.join("build.tgz");
    let out = rack
        .slipway_ok(
            dir,
            &[
                "builds",
                "export",
                &build,
                "-a",
                "myapp",
                "-f",
                file.to_str().unwrap(),
            ],
        )
        .await;
    assert_eq!(out, "Exporting build... OK\n");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "a gzip'd tar");
    // The convox CLI's request: raw bytes, not gzip-encoded.
    let (status, body) = rack
        .raw(
            "GET",
            &format!("/apps/myapp/builds/{build}.tgz?"),
            "",
            b"",
            &rack.password,
        )
        .await;
    assert_eq!(status, 200);
    assert!(!body.is_empty());

    // Into a second app on the same rack, then promoted: it serves, and the
    // build kept its description.
    let out = rack
        .slipway_ok(
            dir,
            &[
                "builds",
                "import",
                "-a",
                "copy",
                "-f",
                file.to_str().unwrap(),
            ],
        )
        .await;
    let release = release_of(&out);
    let (_, body) = rack
        .raw("GET", "/apps/copy/builds?", "", b"", &rack.password)
        .await;
    let builds: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(builds[0]["description"], "exported", "{body}");
    assert_eq!(builds[0]["release"], release.as_str(), "{body}");
    assert_ne!(builds[0]["id"], build.as_str(), "a new build id");
    rack.slipway_ok(dir, &["releases", "promote", &release, "-a", "copy"])
        .await;
    serves(&rack, dir, "copy").await;

    // Into a second rack, from stdin, with --id.
    let other = TestRack::start().await;
    ok_stdout(
        &other.slipway(dir, &["apps", "create", "myapp"]).await,
        "apps create",
    );
    let output = {
        let mut command = tokio::process::Command::new(slipway_e2e::slipway_binary());
        command
            .args(["builds", "import", "-a", "myapp", "--id"])
            .current_dir(dir)
            .env("RACK_URL", &other.url)
            .stdin(std::fs::File::open(&file).unwrap());
        command.output().await.unwrap()
    };
    let id = ok_stdout(&output, "import --id");
    assert!(id.starts_with('R') && !id.contains('\n'), "{id:?}");
    ok_stdout(
        &other
            .slipway(dir, &["releases", "promote", &id, "-a", "myapp"])
            .await,
        "promote on the second rack",
    );
    serves(&other, dir, "myapp").await;

    // Hostile and wrong archives: refused with the reason, nothing written
    // outside, no build or release made.
    let record = br#"{"description":"evil","manifest-path":"convox.yml"}"#;
    let manifest = std::fs::read(source.join("convox.yml")).unwrap();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            archive(&[
                ("slipway-build.json", record),
                ("convox.yml", &manifest),
                ("../escaped.txt", b"owned"),
            ]),
            400,
            "path leaves the source directory",
        ),
        (
            archive(&[("convox.yml", &manifest)]),
            400,
            "not a build export",
        ),
        (
            b"plainly not an archive".to_vec(),
            400,
            "not a build export",
        ),
        (
            archive(&[("slipway-build.json", b"[1,2]"), ("convox.yml", &manifest)]),
            400,
            "not a JSON object",
        ),
        (
            archive(&[
                ("slipway-build.json", record),
                ("convox.yml", b"services: ["),
            ]),
            400,
            "import failed: convox.yml line",
        ),
        (vec![0u8; 9 * 1024 * 1024], 413, ""),
    ];
    let (_, before) = rack
        .raw("GET", "/apps/copy/releases?", "", b"", &rack.password)
        .await;
    for (body, status, why) in cases {
        let (got, answer) = rack
            .raw(
                "POST",
                "/apps/copy/builds/import?",
                "application/octet-stream",
                &body,
                &rack.password,
            )
            .await;
        assert_eq!(got, status, "{why}: {answer}");
        assert!(answer.contains(why), "{why}: {answer}");
    }
    let (_, after) = rack
        .raw("GET", "/apps/copy/releases?", "", b"", &rack.password)
        .await;
    assert_eq!(before, after, "no release from a refused import");
    let escaped: Vec<_> = walk(rack.dir())
        .into_iter()
        .filter(|p| p.ends_with("escaped.txt"))
        .collect();
    assert!(escaped.is_empty(), "{escaped:?}");

    // A keyed import (issue 17): sent again with its key (the answer was
    // lost), it answers the first build instead of making another; another
    // archive under the used key is refused with 409 and makes nothing.
    let builds_of_copy = || async {
        let (_, body) = rack
            .raw("GET", "/apps/copy/builds?", "", b"", &rack.password)
            .await;
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let before = builds_of_copy().await.as_array().unwrap().len();
    let keyed = "application/octet-stream\r\nIdempotency-Key: import-once";
    let mut answers = Vec::new();
    for _ in 0..2 {
        let (status, answer) = rack
            .raw(
                "POST",
                "/apps/copy/builds/import?",
                keyed,
                &bytes,
                &rack.password,
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        let build: serde_json::Value = serde_json::from_str(&answer).unwrap();
        answers.push((build["id"].clone(), build["release"].clone()));
    }
    assert_eq!(
        answers[0], answers[1],
        "a retried import made another build"
    );
    assert_eq!(builds_of_copy().await.as_array().unwrap().len(), before + 1);
    let other = archive(&[("slipway-build.json", record), ("convox.yml", &manifest)]);
    let (status, answer) = rack
        .raw(
            "POST",
            "/apps/copy/builds/import?",
            keyed,
            &other,
            &rack.password,
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer.contains("import-once"), "{answer}");
    assert_eq!(builds_of_copy().await.as_array().unwrap().len(), before + 1);

    // Unknown build: 404, not an empty archive.
    let (status, _) = rack
        .raw(
            "GET",
            "/apps/myapp/builds/BNOSUCHBLDX.tgz?",
            "",
            b"",
            &rack.password,
        )
        .await;
    assert_eq!(status, 404);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
    }
    found
}
