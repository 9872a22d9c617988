//! The one-off part of the conformance suite: run, attach, exec, stop,
//! timeout and exit statuses, through the trait only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway_domain::Env;

use super::{Behaviour, Fixture};
use crate::runtime::{
    OneOffStatus, RunRequest, Runtime, RuntimeError, Session, SessionKind, SessionOutput,
};

/// Upper bound for a one-off to reach a state in the suite.
const WAIT: Duration = Duration::from_secs(30);

/// Sends `stdin` (then closes it) and reads the session to its end.
pub async fn drain(mut session: Session, stdin: &[u8]) -> (Vec<u8>, i32) {
    if !stdin.is_empty() {
        session
            .stdin
            .send(bytes::Bytes::copy_from_slice(stdin))
            .await
            .expect("stdin open");
    }
    drop(session.stdin);
    let mut output = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, session.output.recv()).await {
            Ok(Some(SessionOutput::Data(bytes))) => output.extend_from_slice(&bytes),
            Ok(Some(SessionOutput::Exit(code))) => return (output, code),
            Ok(None) => panic!("session ended without an exit status: {output:?}"),
            Err(_) => panic!("session still running after {WAIT:?}: {output:?}"),
        }
    }
}

fn request(command: &str, attach: bool) -> RunRequest {
    RunRequest {
        service: "web".into(),
        command: Some(command.into()),
        timeout: Duration::from_secs(60),
        attach,
    }
}

/// Waits until `id` of `app` reports `status`.
pub async fn wait_status<R: Runtime + ?Sized>(
    runtime: &R,
    app: &str,
    id: &str,
    status: OneOffStatus,
) {
    let start = Instant::now();
    loop {
        let info = runtime.process(app, id).await.expect("process");
        if info.status == status {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "{id} is {:?}, not {status:?}",
            info.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs every one-off check against `runtime`. `app` must be unique to
/// this run; nothing is applied to it, and nothing must be afterwards.
pub async fn run<R: Runtime + ?Sized>(runtime: &R, fixture: &dyn Fixture, app: &str) {
    let mut spec = fixture.spec(app, "RONEOFFAAAA", Behaviour::Healthy, 1);
    spec.env = Env::from_map(BTreeMap::from([("GREETING".into(), "staged value".into())]))
        .expect("a valid env");
    let spec = Arc::new(spec);

    // Attached: the release's env, stdin to the end, the exit status.
    let started = runtime
        .run(
            spec.clone(),
            request("cat; echo \"$GREETING\"; exit 42", true),
        )
        .await
        .expect("run");
    assert_eq!(started.release, "RONEOFFAAAA");
    assert_eq!(started.service, "web");
    let listed = runtime.processes(app).await.expect("processes");
    assert!(
        listed
            .iter()
            .any(|p| p.id == started.id && p.command.contains("GREETING")),
        "{listed:?}"
    );
    let session = runtime
        .session(app, &started.id, SessionKind::Attach)
        .await
        .expect("attach");
    let (output, code) = drain(session, b"from stdin\n").await;
    assert_eq!(
        String::from_utf8_lossy(&output),
        "from stdin\nstaged value\n"
    );
    assert_eq!(code, 42);
    wait_status(runtime, app, &started.id, OneOffStatus::Failed).await;
    assert_eq!(
        runtime.process(app, &started.id).await.unwrap().exit_code,
        Some(42)
    );
    // One session per attached one-off, and none once it ended.
    assert!(
        runtime
            .session(app, &started.id, SessionKind::Attach)
            .await
            .is_err()
    );

    for (command, want) in [("true", 0), ("exit 1", 1)] {
        let p = runtime
            .run(spec.clone(), request(command, true))
            .await
            .unwrap();
        let session = runtime
            .session(app, &p.id, SessionKind::Attach)
            .await
            .unwrap();
        assert_eq!(drain(session, b"").await.1, want, "{command}");
    }

    // A holder, and commands exec'd into it, with stdin closed at its end.
    let holder = runtime
        .run(spec.clone(), request("sleep 600", false))
        .await
        .unwrap();
    wait_status(runtime, app, &holder.id, OneOffStatus::Running).await;
    let exec = runtime
        .session(
            app,
            &holder.id,
            SessionKind::Exec("cat; echo \"$GREETING\" >&2; exit 7".into()),
        )
        .await
        .unwrap();
    let (output, code) = drain(exec, b"line1\nline2\n").await;
    // Stdout in its order, stderr beside it: on Kubernetes they are two
    // channels with no order between them.
    let text = String::from_utf8_lossy(&output);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["line1", "line2", "staged value"], "{text:?}");
    assert!(text.contains("line1\nline2\n"), "{text:?}");
    assert_eq!(code, 7);
    // Stopping the holder ends a long exec in it too.
    let mut long = runtime
        .session(app, &holder.id, SessionKind::Exec("sleep 600".into()))
        .await
        .unwrap();
    runtime.stop(app, &holder.id).await.unwrap();
    wait_status(runtime, app, &holder.id, OneOffStatus::Failed).await;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match long.output.recv().await {
                Some(SessionOutput::Exit(code)) => return code,
                Some(SessionOutput::Data(_)) => {}
                None => return -1,
            }
        }
    })
    .await
    .expect("the exec ends with its process");
    assert_ne!(ended, 0);
    assert!(
        runtime
            .processes(app)
            .await
            .unwrap()
            .iter()
            .all(|p| p.id != holder.id),
        "an ended one-off is no longer listed"
    );

    // The timeout stops it.
    let mut short = request("sleep 600", true);
    short.timeout = Duration::from_secs(1);
    let p = runtime.run(spec.clone(), short).await.unwrap();
    let session = runtime
        .session(app, &p.id, SessionKind::Attach)
        .await
        .unwrap();
    let (_, code) = drain(session, b"").await;
    assert_ne!(code, 0);
    // A backend may report the end a moment after the session's (on
    // Kubernetes the pod is still being stopped).
    wait_status(runtime, app, &p.id, OneOffStatus::Failed).await;

    // Bad input starts nothing.
    let mut unknown = request("true", false);
    unknown.service = "nosuch".into();
    match runtime.run(spec.clone(), unknown).await {
        Err(RuntimeError::Refused(message)) => {
            assert!(message.contains("nosuch"), "{message}")
        }
        other => panic!("an unknown service must be refused: {other:?}"),
    }
    let mut forever = request("true", false);
    forever.timeout = Duration::ZERO;
    assert!(matches!(
        runtime.run(spec.clone(), forever).await,
        Err(RuntimeError::Refused(_))
    ));
    assert!(matches!(
        runtime.process(app, "web-nope0").await,
        Err(RuntimeError::NotFound(_))
    ));
    assert!(runtime.stop(app, "web-nope0").await.is_err());

    // None of it touched the app: no desired release, no service process.
    assert!(
        runtime
            .progress(app, "RONEOFFAAAA", Duration::ZERO)
            .await
            .is_err()
    );
    let start = Instant::now();
    while !runtime.processes(app).await.unwrap().is_empty() {
        assert!(start.elapsed() < WAIT, "one-offs left running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
