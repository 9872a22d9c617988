//! `env set/unset` fork the newest release, as Convox does; when that
//! release is not active because its promotion rolled back, the CLI says so
//! before creating anything, and `--from-active` forks the active release.

use slipway_e2e::{TestRack, example, ok_stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn env_changes_warn_when_the_newest_release_rolled_back() {
    let rack = TestRack::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    rack.slipway_ok(dir, &["apps", "create", "myapp"]).await;
    let good = example("myapp");
    let broken = example("broken");
    let release_of = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("Release: "))
            .unwrap()
            .trim()
            .to_owned()
    };
    let out = rack
        .slipway_ok(dir, &["deploy", good.to_str().unwrap(), "-a", "myapp"])
        .await;
    let active = release_of(&out);
    // A healthy app: no warning.
    let output = rack
        .slipway(dir, &["env", "set", "FIRST=1", "-a", "myapp", "--promote"])
        .await;
    ok_stdout(&output, "env set FIRST");
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("WARNING"),
        "{output:?}"
    );
    let active = {
        let (_, body) = rack
            .raw("GET", "/apps/myapp?", "", b"", &rack.password)
            .await;
        let app: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_ne!(app["release"], active.as_str());
        app["release"].as_str().unwrap().to_owned()
    };

    let deployed = rack
        .slipway(dir, &["deploy", broken.to_str().unwrap(), "-a", "myapp"])
        .await;
    assert!(!deployed.status.success(), "the broken release rolls back");
    let bad = release_of(&String::from_utf8_lossy(&deployed.stdout));
    let (_, body) = rack
        .raw(
            "GET",
            &format!("/apps/myapp/releases/{bad}?"),
            "",
            b"",
            &rack.password,
        )
        .await;
    let bad_release: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bad_build = bad_release["build"].as_str().unwrap().to_owned();

    // The newest release rolled back: said before anything is created, and
    // the change still forks it (Convox's rule).
    let output = rack
        .slipway(dir, &["env", "set", "SECOND=2", "-a", "myapp", "--id"])
        .await;
    let forked = ok_stdout(&output, "env set SECOND");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warning = format!(
        "WARNING: based on {bad} (build {bad_build}), whose promotion rolled back; the active release is {active}"
    );
    assert!(stderr.starts_with(&warning), "{stderr}");
    let (_, body) = rack
        .raw(
            "GET",
            &format!("/apps/myapp/releases/{forked}?"),
            "",
            b"",
            &rack.password,
        )
        .await;
    let release: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        release["build"],
        bad_build.as_str(),
        "forked from the newest"
    );

    // --from-active forks the active release: its build and env, no warning.
    let output = rack
        .slipway(
            dir,
            &[
                "env",
                "unset",
                "FIRST",
                "-a",
                "myapp",
                "--from-active",
                "--id",
            ],
        )
        .await;
    let fixed = ok_stdout(&output, "env unset --from-active");
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("WARNING"),
        "{output:?}"
    );
    let (_, body) = rack
        .raw(
            "GET",
            &format!("/apps/myapp/releases/{fixed}?"),
            "",
            b"",
            &rack.password,
        )
        .await;
    let release: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (_, body) = rack
        .raw(
            "GET",
            &format!("/apps/myapp/releases/{active}?"),
            "",
            b"",
            &rack.password,
        )
        .await;
    let active_release: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(release["build"], active_release["build"]);
    let env = release["env"].as_str().unwrap();
    assert!(!env.contains("FIRST=") && !env.contains("SECOND="), "{env}");
    rack.slipway_ok(dir, &["releases", "promote", &fixed, "-a", "myapp"])
        .await;
}
