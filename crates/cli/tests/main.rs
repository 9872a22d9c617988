//! The `slipway` binary against a fake gateway (see `fake.rs`): exact
//! stdout/stderr of each command and the requests it makes.

mod fake;
mod tls;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use fake::{BUILD_LOG, EVENTS_FAILED, EVENTS_OK, FAILED_REASON, Fake};

/// What a run printed.
struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

/// A scratch "project": `<tmp>/myapp` with a convox.yml, plus a settings dir.
struct Project {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
}

impl Project {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("myapp");
        let config = tmp.path().join("config");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("convox.yml"),
            "services:\n  web:\n    build: .\n    port: 5000\n",
        )
        .unwrap();
        std::fs::write(dir.join(".dockerignore"), "secret.txt\n").unwrap();
        std::fs::write(dir.join("secret.txt"), "not for upload\n").unwrap();
        Self {
            _tmp: tmp,
            dir,
            config,
        }
    }
}

/// Runs `slipway args…` in the project with `RACK_URL=rack` (if any).
async fn slipway(project: &Project, rack: Option<&str>, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_slipway"));
    command
        .args(args)
        .current_dir(&project.dir)
        .env_remove("RACK_URL")
        .env("SLIPWAY_CONFIG", &project.config)
        .env("HOME", &project.config)
        .stdin(Stdio::null());
    if let Some(rack) = rack {
        command.env("RACK_URL", rack);
    }
    let output = command.output().await.unwrap();
    Run {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

const BUILD_OUTPUT: &str = "Packaging source... OK\nUploading source... OK\nStarting build... OK\n";

fn form(body: &[u8]) -> Vec<(String, String)> {
    url_decode(std::str::from_utf8(body).unwrap())
}

fn url_decode(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.replace('+', " ").into_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(
                u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap(), 16).unwrap(),
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn tar_names(tgz: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    archive
        .entries()
        .unwrap()
        .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn build_packages_uploads_streams_the_log_and_prints_the_ids() {
    let fake = Fake::start().await;
    let project = Project::new();
    let run = slipway(
        &project,
        Some(&fake.rack_url()),
        &["build", "-d", "first build", "--no-cache"],
    )
    .await;
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        format!("{BUILD_OUTPUT}{BUILD_LOG}Build: BABCDEFGHI\nRelease: RBCDEFGHIJ\n")
    );
    assert_eq!(run.status, 0);

    let uploads: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.contains("/objects/"))
        .collect();
    assert_eq!(uploads.len(), 1);
    let key = uploads[0]
        .path
        .strip_prefix("/apps/myapp/objects/tmp/")
        .unwrap()
        .strip_suffix(".tgz")
        .unwrap();
    assert_eq!(key.len(), 30);
    assert!(
        key.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{key}"
    );
    assert_eq!(tar_names(&uploads[0].body), [".dockerignore", "convox.yml"]);

    let builds = fake.requests_to("POST", "/apps/myapp/builds");
    assert_eq!(
        builds[0].content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let fields = form(&builds[0].body);
    let url = format!("object://myapp/tmp/{key}.tgz");
    assert_eq!(
        fields,
        [
            ("description".to_owned(), "first build".to_owned()),
            ("no-cache".to_owned(), "true".to_owned()),
            ("url".to_owned(), url),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn build_describes_a_clean_git_tree_by_its_commit() {
    let fake = Fake::start().await;
    let project = Project::new();
    let git = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(&project.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "initial commit of myapp"]);
    let sha = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(&project.dir)
        .output()
        .unwrap();
    let sha = String::from_utf8(sha.stdout).unwrap().trim().to_owned();

    let run = slipway(&project, Some(&fake.rack_url()), &["build"]).await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let fields = form(&fake.requests_to("POST", "/apps/myapp/builds")[0].body);
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get("description"),
        Some(format!("build {} initial commit of myapp", &sha[..10]))
    );
    assert_eq!(get("git-sha"), Some(sha));
    let names = tar_names(
        &fake
            .requests()
            .into_iter()
            .find(|r| r.path.contains("/objects/"))
            .unwrap()
            .body,
    );
    assert!(
        names.contains(&".git/".to_owned()) && names.contains(&".git/HEAD".to_owned()),
        "{names:?}"
    );

    // A dirty tree sends no description: the server then uses its own.
    std::fs::write(project.dir.join("convox.yml"), "services: {}\n").unwrap();
    let run = slipway(&project, Some(&fake.rack_url()), &["build"]).await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let fields = form(&fake.requests_to("POST", "/apps/myapp/builds")[1].body);
    assert!(
        !fields.iter().any(|(k, _)| k == "description"),
        "{fields:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_builds_then_follows_the_promotion_to_ok() {
    let fake = Fake::start().await;
    let project = Project::new();
    let run = slipway(
        &project,
        Some(&fake.rack_url()),
        &["deploy", "-a", "myapp", "-d", "x"],
    )
    .await;
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        format!(
            "{BUILD_OUTPUT}{BUILD_LOG}Build: BABCDEFGHI\nRelease: RBCDEFGHIJ\nPromoting RBCDEFGHIJ...\n{}OK\n",
            EVENTS_OK.concat()
        )
    );
    assert_eq!(run.status, 0);
    let promote = fake.requests_to("POST", "/apps/myapp/releases/RBCDEFGHIJ/promote");
    assert_eq!(
        form(&promote[0].body),
        [("force".to_owned(), "false".to_owned())]
    );
    // The stream's last frame told the result: one stream, no second look.
    assert_eq!(
        fake.requests_to("GET", "/apps/myapp/promotions/POK/events")
            .len(),
        1
    );
    assert!(
        fake.requests_to("GET", "/apps/myapp/promotions/POK")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_back_promotion_exits_non_zero_with_the_reason() {
    let fake = Fake::start().await;
    let project = Project::new();
    let run = slipway(
        &project,
        Some(&fake.rack_url()),
        &["releases", "promote", "RFAILFAILF"],
    )
    .await;
    assert_eq!(
        run.stdout,
        format!("Promoting RFAILFAILF...\n{}", EVENTS_FAILED.concat())
    );
    assert_eq!(run.stderr, format!("ERROR: rollback: {FAILED_REASON}\n"));
    assert_eq!(run.status, 1);
    // The reason came with the stream's result frame.
    assert!(
        fake.requests_to("GET", "/apps/myapp/promotions/PFAIL")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_promotion_stream_resumes_after_its_last_event() {
    let fake = Fake::start().await;
    let project = Project::new();
    let run = slipway(
        &project,
        Some(&fake.rack_url()),
        &["releases", "promote", "RDROPDROPD"],
    )
    .await;
    // Every event once, in order, then OK.
    assert_eq!(
        run.stdout,
        format!("Promoting RDROPDROPD...\n{}OK\n", EVENTS_OK.concat())
    );
    assert_eq!(run.stderr, "");
    assert_eq!(run.status, 0);
    let streams = fake.requests_to("GET", "/apps/myapp/promotions/PDROP/events");
    let resumed: Vec<_> = streams.iter().map(|r| r.query.as_deref()).collect();
    assert_eq!(resumed, [None, Some("after=2")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_and_noop_promotions() {
    let fake = Fake::start().await;
    let project = Project::new();
    let run = slipway(
        &project,
        Some(&fake.rack_url()),
        &["releases", "promote", "RBUSYBUSYX"],
    )
    .await;
    assert_eq!(
        (run.status, run.stdout.as_str()),
        (1, "Promoting RBUSYBUSYX...\n")
    );
    assert_eq!(run.stderr, "ERROR: app is currently updating\n");

    let run = slipway(
        &project,
        Some(&fake.rack_url()),
        &["releases", "promote", "RACTIVEXXX"],
    )
    .await;
    assert_eq!(
        run.stdout,
        "Promoting RACTIVEXXX...\nrelease RACTIVEXXX is already active\nOK\n"
    );
    assert_eq!(run.status, 0, "{}", run.stderr);

    // Without an id, the newest release is promoted.
    let run = slipway(&project, Some(&fake.rack_url()), &["releases", "promote"]).await;
    assert_eq!(
        run.stdout,
        format!("Promoting RCDEFGHIJK...\n{}OK\n", EVENTS_OK.concat())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn env_set_and_unset_send_only_the_change() {
    let fake = Fake::start().await;
    let project = Project::new();
    let run = slipway(
        &project,
        Some(&fake.rack_url()),
        &["env", "set", "FOO=bar", "BAZ=a=b"],
    )
    .await;
    assert_eq!(run.stderr, "");
    assert_eq!(run.stdout, "Setting BAZ, FOO... OK\nRelease: RCDEFGHIJK\n");
    assert_eq!(run.status, 0);

    let run = slipway(&project, Some(&fake.rack_url()), &["env", "unset", "OLD"]).await;
    assert_eq!(run.stdout, "Unsetting OLD... OK\nRelease: RCDEFGHIJK\n");
    assert_eq!(run.status, 0, "{}", run.stderr);

    let changes = fake.requests_to("POST", "/apps/myapp/env");
    let bodies: Vec<serde_json::Value> = changes
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(
        bodies[0],
        serde_json::json!({"set": {"FOO": "bar", "BAZ": "a=b"}, "unset": []})
    );
    assert_eq!(bodies[1], serde_json::json!({"set": {}, "unset": ["OLD"]}));
    assert_eq!(changes[0].content_type.as_deref(), Some("application/json"));
    // No read-modify-write: the env was neither read nor sent whole. The
    // only other requests are the reads that decide whether to warn about
    // the release being forked (the app, its newest release, its promotions).
    let others: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path != "/apps/myapp/env")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        others.iter().all(|r| [
            "GET /apps/myapp",
            "GET /apps/myapp/releases",
            "GET /apps/myapp/promotions"
        ]
        .contains(&r.as_str())),
        "{others:?}"
    );

    let run = slipway(
        &project,
        Some(&fake.rack_url()),
        &["env", "set", "NOEQUALS"],
    )
    .await;
    assert_eq!(run.status, 1);
    assert_eq!(
        run.stderr,
        "ERROR: invalid environment variable \"NOEQUALS\": expected KEY=VALUE\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn env_set_promote_and_id() {
    let fake = Fake::start().await;
    let project = Project::new();
    let run = slipway(
        &project,
        Some(&fake.rack_url()),
        &["env", "set", "FOO=bar", "--promote", "--id"],
    )
    .await;
    assert_eq!(run.stdout, "RCDEFGHIJK");
    assert_eq!(
        run.stderr,
        format!(
            "Setting FOO... OK\nRelease: RCDEFGHIJK\nPromoting RCDEFGHIJK...\n{}OK\n",
            EVENTS_OK.concat()
        )
    );
    assert_eq!(run.status, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn env_prints_and_gets_values() {
    let fake = Fake::start().await;
    let project = Project::new();
    let run = slipway(&project, Some(&fake.rack_url()), &["env"]).await;
    assert_eq!((run.status, run.stdout.as_str()), (0, "BAR=baz\nFOO=bar\n"));
    let run = slipway(&project, Some(&fake.rack_url()), &["env", "get", "FOO"]).await;
    assert_eq!((run.status, run.stdout.as_str()), (0, "bar\n"));
    let run = slipway(&project, Some(&fake.rack_url()), &["env", "get", "NOPE"]).await;
    assert_eq!(
        (run.status, run.stderr.as_str()),
        (1, "ERROR: env not found: NOPE\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn releases_list_newest_first_with_relative_times() {
    let fake = Fake::start().await;
    let project = Project::new();
    let run = slipway(&project, Some(&fake.rack_url()), &["releases", "-l", "2"]).await;
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "ID          STATUS  BUILD       CREATED        DESCRIPTION\n\
         RCDEFGHIJK          BABCDEFGHI  1 minute ago   env add:FOO\n\
         RBCDEFGHIJ  active  BABCDEFGHI  5 minutes ago  build 0a1b2c3d4e my commit message\n"
    );
    assert_eq!(
        fake.requests_to("GET", "/apps/myapp/releases")[0]
            .query
            .as_deref(),
        Some("limit=2")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn releases_info_and_manifest() {
    let fake = Fake::start().await;
    let project = Project::new();
    let run = slipway(
        &project,
        Some(&fake.rack_url()),
        &["releases", "info", "RCDEFGHIJK"],
    )
    .await;
    assert_eq!(
        run.stdout,
        "Id           RCDEFGHIJK\n\
         Build        BABCDEFGHI\n\
         Created      2026-11-23T06:22:44Z\n\
         Description  env add:FOO\n\
         Env          BAR=baz\n             FOO=bar\n"
    );
    let run = slipway(
        &project,
        Some(&fake.rack_url()),
        &["releases", "manifest", "RCDEFGHIJK"],
    )
    .await;
    assert_eq!(
        run.stdout,
        "services:\n  web:\n    build: .\n    command: bin/web\n    port: 5000\n"
    );
    let run = slipway(
        &project,
        Some(&fake.rack_url()),
        &["releases", "info", "RNOTFOUNDX"],
    )
    .await;
    assert_eq!(
        (run.status, run.stderr.as_str()),
        (1, "ERROR: release not found: RNOTFOUNDX\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_copies_and_follows_the_promotion() {
    let fake = Fake::start().await;
    let project = Project::new();
    let run = slipway(
        &project,
        Some(&fake.rack_url()),
        &["releases", "rollback", "RBCDEFGHIJ"],
    )
    .await;
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        format!(
            "Rolling back to RBCDEFGHIJ... OK, RDEFGHIJKL\n{}OK\n",
            EVENTS_OK.concat()
        )
    );
    assert_eq!(run.status, 0);
    assert_eq!(
        fake.requests_to("POST", "/apps/myapp/releases/RBCDEFGHIJ/rollback")
            .len(),
        1
    );

    let run = slipway(
        &project,
        Some(&fake.rack_url()),
        &["releases", "rollback", "RBCDEFGHIJ", "--id"],
    )
    .await;
    assert_eq!(run.stdout, "RDEFGHIJKL");
    assert!(
        run.stderr
            .starts_with("Rolling back to RBCDEFGHIJ... OK, RDEFGHIJKL\n"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn id_sends_everything_else_to_stderr() {
    let fake = Fake::start().await;
    let project = Project::new();
    let run = slipway(
        &project,
        Some(&fake.rack_url()),
        &["build", "--id", "-d", "x"],
    )
    .await;
    assert_eq!(run.stdout, "RBCDEFGHIJ");
    assert_eq!(
        run.stderr,
        format!("{BUILD_OUTPUT}{BUILD_LOG}Build: BABCDEFGHI\nRelease: RBCDEFGHIJ\n")
    );
    assert_eq!(run.status, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_are_reported() {
    let fake = Fake::start().await;
    let project = Project::new();
    let bad = fake.base.replacen("http://", "http://convox:wrong@", 1);
    let run = slipway(&project, Some(&bad), &["apps"]).await;
    assert_eq!(
        (run.status, run.stdout.as_str(), run.stderr.as_str()),
        (1, "", "ERROR: invalid authentication\n")
    );
    let run = slipway(&project, Some(&bad), &["build", "-d", "x"]).await;
    assert_eq!(run.status, 1);
    assert_eq!(run.stdout, "Packaging source... OK\nUploading source... ");
    assert_eq!(run.stderr, "ERROR: invalid authentication\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_sent_percent_escaped() {
    use base64::Engine as _;
    let fake = Fake::start().await;
    let project = Project::new();
    let rack = fake.base.replacen("http://", "http://convox:p%40ss@", 1);
    slipway(&project, Some(&rack), &["apps"]).await;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("convox:p%40ss")
    );
    assert_eq!(
        fake.requests()[0].authorization.as_deref(),
        Some(expected.as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_for_apps_ps_services_and_the_rack() {
    let fake = Fake::start().await;
    let project = Project::new();
    let rack = fake.rack_url();
    let run = slipway(&project, Some(&rack), &["apps"]).await;
    assert_eq!(
        run.stdout,
        "APP    STATUS   RELEASE\nmyapp  running  RBCDEFGHIJ\nnew    running  \n"
    );
    let run = slipway(&project, Some(&rack), &["ps"]).await;
    assert_eq!(
        run.stdout,
        "ID               SERVICE  STATUS   RELEASE     STARTED         COMMAND\n\
         web-tqfee-ztay3  web      running  RBCDEFGHIJ  34 seconds ago  \n"
    );
    let run = slipway(&project, Some(&rack), &["services"]).await;
    assert_eq!(
        run.stdout,
        "SERVICE  DOMAIN           PORTS\nweb      127.0.0.1:41000  41000\nworker                    \n"
    );
    let run = slipway(&project, Some(&rack), &["rack"]).await;
    assert_eq!(
        run.stdout,
        "Name      dev\nProvider  local\nStatus    running\nVersion   3.24.6\n"
    );
    let run = slipway(&project, Some(&rack), &["apps", "info"]).await;
    assert_eq!(
        run.stdout,
        "Name        myapp\nStatus      running\nGeneration  3\nLocked      false\nRelease     RBCDEFGHIJ\n"
    );
    let run = slipway(&project, Some(&rack), &["apps", "info", "missing"]).await;
    assert_eq!(
        (run.status, run.stderr.as_str()),
        (1, "ERROR: app not found: missing\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_rack_the_error_says_what_to_do_and_login_fixes_it() {
    let fake = Fake::start().await;
    let project = Project::new();
    let run = slipway(&project, None, &["apps"]).await;
    assert_eq!(run.status, 1);
    assert!(
        run.stderr
            .starts_with("ERROR: no rack configured: set RACK_URL"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("slipway login"), "{}", run.stderr);

    let bad = fake.base.replacen("http://", "http://convox:wrong@", 1);
    let run = slipway(&project, None, &["login", &bad]).await;
    assert_eq!(
        (run.status, run.stderr.as_str()),
        (1, "ERROR: invalid authentication\n")
    );
    assert!(!rack_file(&project.config).exists());

    let run = slipway(&project, None, &["login", &fake.rack_url()]).await;
    assert_eq!(
        run.stdout,
        format!("Authenticating with {}... OK\n", fake.base)
    );
    assert_eq!(run.status, 0, "{}", run.stderr);
    let run = slipway(&project, None, &["apps"]).await;
    assert_eq!(run.status, 0, "{}", run.stderr);
}

fn rack_file(config: &Path) -> PathBuf {
    config.join("rack")
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_racks_say_so() {
    let project = Project::new();
    // Bind and drop to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = slipway(
        &project,
        Some(&format!("http://convox:pw@127.0.0.1:{port}")),
        &["apps"],
    )
    .await;
    assert_eq!(run.status, 1);
    assert!(
        run.stderr.starts_with(&format!(
            "ERROR: could not connect to the rack at http://127.0.0.1:{port}"
        )),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("pw"), "{}", run.stderr);
}
