//! The `slipway` binary against an `https://` rack with a self-signed
//! certificate: trusted through SLIPWAY_CA_FILE (or `--ca-file`), HTTP and
//! both websocket streams of a deploy go over TLS; untrusted, the command
//! fails naming the certificate problem and the fix.

use std::process::Stdio;

use crate::fake::{BUILD_LOG, EVENTS_OK, Fake};
use crate::{BUILD_OUTPUT, Project, Run};

/// Runs `slipway args…` against `rack` with extra environment variables.
async fn slipway_with(project: &Project, rack: &str, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_slipway"));
    command
        .args(args)
        .current_dir(&project.dir)
        .env("RACK_URL", rack)
        .env_remove("SLIPWAY_CA_FILE")
        .env_remove("SLIPWAY_INSECURE")
        .env("SLIPWAY_CONFIG", &project.config)
        .env("HOME", &project.config)
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().await.unwrap();
    Run {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_over_https_and_wss_with_the_rack_ca_file() {
    let certs = tempfile::tempdir().unwrap();
    let fake = Fake::start_tls(certs.path()).await;
    assert!(fake.rack_url().starts_with("https://convox:"));
    let ca = certs.path().join("cert.pem");
    let project = Project::new();
    let run = slipway_with(
        &project,
        &fake.rack_url(),
        &[("SLIPWAY_CA_FILE", ca.to_str().unwrap())],
        &["deploy", "-a", "myapp", "-d", "x"],
    )
    .await;
    assert_eq!(run.stderr, "");
    // The build log and the promotion events both came over wss://.
    assert_eq!(
        run.stdout,
        format!(
            "{BUILD_OUTPUT}{BUILD_LOG}Build: BABCDEFGHI\nRelease: RBCDEFGHIJ\nPromoting RBCDEFGHIJ...\n{}OK\n",
            EVENTS_OK.concat()
        )
    );
    assert_eq!(run.status, 0);

    // The flag works like the variable.
    let run = slipway_with(
        &project,
        &fake.rack_url(),
        &[],
        &["--ca-file", ca.to_str().unwrap(), "rack"],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_certificate_fails_with_the_problem_and_the_fix() {
    let certs = tempfile::tempdir().unwrap();
    let fake = Fake::start_tls(certs.path()).await;
    let project = Project::new();
    let run = slipway_with(&project, &fake.rack_url(), &[], &["apps"]).await;
    assert_eq!(run.status, 1);
    assert_eq!(run.stdout, "");
    let port = fake.base.rsplit(':').next().unwrap();
    assert_eq!(
        run.stderr,
        format!(
            "ERROR: the rack at https://127.0.0.1:{port} presented a TLS certificate this client does not trust: it is not signed by a trusted authority (self-signed?). If the rack uses a self-signed certificate, trust it with SLIPWAY_CA_FILE=PATH (or --ca-file; slipway-rack prints the path), or skip verification with SLIPWAY_INSECURE=1 (or --insecure)\n"
        )
    );
    // Nothing was sent in the clear: the fake saw no request at all.
    assert!(fake.requests().is_empty());

    // Skipping verification has to be asked for.
    let run = slipway_with(
        &project,
        &fake.rack_url(),
        &[("SLIPWAY_INSECURE", "1")],
        &["apps"],
    )
    .await;
    assert_eq!(run.status, 0, "{}", run.stderr);
}
