//! The web console's handler tests, without a browser: a whole rack
//! in-process (the e2e harness), requests shaped as a browser sends them.
//! Every log line of the process is kept (see [`logs`]) so the canary
//! tests can show that no secret reaches one.

#![allow(unreachable_pub)]

mod http;
mod live;
mod replicas;
mod rules;
mod streams;
mod tokens;

use std::sync::{Arc, Mutex, OnceLock};

use slipway_e2e::{TestRack, ok_stdout};

/// Everything the process has logged so far (installed on first use, at
/// debug level for Slipway's crates).
pub fn logs() -> String {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let buffer = BUFFER.get_or_init(|| {
        let buffer: Arc<Mutex<Vec<u8>>> = Arc::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,h2=info,hyper=info,hyper_util=info,tower=info,sqlx=info",
            ))
            .with_ansi(false)
            .with_writer(move || Capture(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buffer
    });
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A rack with `myapp` deployed from the example; its release id.
pub async fn rack_with_app(cwd: &std::path::Path) -> (TestRack, String) {
    logs();
    let rack = TestRack::start().await;
    ok_stdout(
        &rack.slipway(cwd, &["apps", "create", "myapp"]).await,
        "apps create",
    );
    let example = slipway_e2e::example("myapp");
    let out = ok_stdout(
        &rack
            .slipway(cwd, &["deploy", example.to_str().unwrap(), "-a", "myapp"])
            .await,
        "deploy",
    );
    let release = out
        .lines()
        .find_map(|l| l.strip_prefix("Promoting "))
        .and_then(|r| r.strip_suffix("..."))
        .expect("deploy promotes a release")
        .to_owned();
    (rack, release)
}

/// `slipway env set KEY=VALUE -a myapp` (a staged release); its id.
pub async fn env_set(rack: &TestRack, cwd: &std::path::Path, pair: &str) -> String {
    let out = ok_stdout(
        &rack
            .slipway(cwd, &["env", "set", pair, "-a", "myapp"])
            .await,
        "env set",
    );
    out.lines()
        .find_map(|l| l.strip_prefix("Release: "))
        .expect("env set reports its release")
        .trim()
        .to_owned()
}

/// The ledger as the Convox API shows it: every release, and the active
/// one.
pub async fn ledger(rack: &TestRack) -> (String, String) {
    let (status, releases) = rack
        .raw(
            "GET",
            "/apps/myapp/releases?limit=1000",
            "",
            b"",
            &rack.password,
        )
        .await;
    assert_eq!(status, 200, "{releases}");
    let (status, app) = rack
        .raw("GET", "/apps/myapp", "", b"", &rack.password)
        .await;
    assert_eq!(status, 200, "{app}");
    let app: serde_json::Value = serde_json::from_str(&app).unwrap();
    (
        releases,
        app["release"].as_str().unwrap_or_default().to_owned(),
    )
}
