//! Env values arrive exactly: `slipway env set` → `env get` → `env` → the
//! process's environment → `releases info`, values with newlines, `=`,
//! quotes, unicode, empty and 64 KiB among them; the `convox` CLI's
//! read-modify-write (`convox env set OTHER=1` posts back every line it read)
//! changes none of them (a line of 64 KiB or more it cannot read at all); and env text with a malformed line is refused with a
//! 400 naming the line, never its value, and creates nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use slipway_domain::Env;
use slipway_e2e::{TestRack, eventually, example, ok_stdout, slipway_binary};
use tokio::io::AsyncWriteExt as _;

const FORM: &str = "application/x-www-form-urlencoded";
const NONE: &str = "application/octet-stream";

/// Values a process can receive that a line-based text form could lose.
fn awkward() -> BTreeMap<String, String> {
    [
        (
            "PEM",
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nKZ+/w==\n-----END PRIVATE KEY-----\n"
                .to_owned(),
        ),
        ("CRLF", "first\r\nsecond\r\n".to_owned()),
        ("EQUALS", "a=b==c=".to_owned()),
        ("QUOTES", r#"'single' "double" \' \" $'x'"#.to_owned()),
        ("LOOKS_QUOTED", "$'not\\nquoted'".to_owned()),
        ("BACKSLASH", r"C:\new\table\\".to_owned()),
        ("UNICODE", "żółć 日本語 🦀".to_owned()),
        ("EMPTY", String::new()),
        ("SPACES", "  padded  ".to_owned()),
        // Just under the `convox` CLI's line limit (see `convox_env_set`).
        ("LARGE", "y".repeat(60 * 1024)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `application/x-www-form-urlencoded` for one value, as Go's `url.Values`
/// encodes it.
fn form_value(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the `convox` CLI does with `release.env` in `env set`/`unset`/`edit`
/// (`pkg/structs/environment.go`): read it line by line (a line reader drops a
/// `\r` before each line end), split each line at its first `=`, trim the key,
/// skip lines without `=` or with an empty key; apply the change; post the map
/// back as sorted `K=V` lines joined by `\n`, without a trailing newline.
fn convox_env_set(env_text: &str, set: &[(&str, &str)]) -> String {
    let mut vars = BTreeMap::new();
    for line in env_text.split('\n') {
        // Go's bufio.Scanner, which `Environment.Load` uses, fails on a line of
        // 64 KiB or more (`token too long`): the real CLI errors, losing nothing.
        assert!(
            line.len() < 64 * 1024,
            "the convox CLI cannot read this env"
        );
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some((key, value)) = line.split_once('=')
            && !key.trim().is_empty()
        {
            vars.insert(key.trim().to_owned(), value.to_owned());
        }
    }
    for (key, value) in set {
        vars.insert((*key).to_owned(), (*value).to_owned());
    }
    let mut lines: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
    lines.sort();
    lines.join("\n")
}

/// The newest release of `app` as the `convox` CLI fetches it: the list with
/// `limit=1`, then that release.
async fn newest_release(rack: &TestRack, app: &str) -> serde_json::Value {
    let pw = &rack.password;
    let (status, body) = rack
        .raw(
            "GET",
            &format!("/apps/{app}/releases?limit=1"),
            NONE,
            b"",
            pw,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = list[0]["id"].as_str().expect("a release").to_owned();
    let (status, body) = rack
        .raw("GET", &format!("/apps/{app}/releases/{id}?"), NONE, b"", pw)
        .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Checks `slipway env get` of every key, and `slipway env`, against `want`.
async fn assert_cli_shows(rack: &TestRack, cwd: &Path, app: &str, want: &BTreeMap<String, String>) {
    for (key, value) in want {
        let out = ok_stdout(
            &rack.slipway(cwd, &["env", "get", key, "-a", app]).await,
            "env get",
        );
        assert!(
            out == format!("{value}\n"),
            "env get {key}: {} bytes, want {} bytes",
            out.len(),
            value.len() + 1
        );
    }
    let out = ok_stdout(&rack.slipway(cwd, &["env", "-a", app]).await, "env");
    assert_eq!(out.lines().count(), want.len(), "one line per variable");
    let shown = Env::parse_wire(out.strip_suffix('\n').unwrap()).unwrap();
    assert!(
        shown.as_map() == want,
        "`slipway env` lost or changed a value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn env_values_survive_byte_for_byte_to_the_process_and_through_the_convox_cli() {
    let rack = TestRack::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let cwd = cwd.path();
    ok_stdout(
        &rack.slipway(cwd, &["apps", "create", "myapp"]).await,
        "apps create",
    );

    // `slipway env set "PEM=$(cat key.pem)" …`
    let mut want = awkward();
    let pairs: Vec<String> = want.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec!["env", "set"];
    args.extend(pairs.iter().map(String::as_str));
    args.extend(["-a", "myapp"]);
    ok_stdout(&rack.slipway(cwd, &args).await, "env set");
    assert_cli_shows(&rack, cwd, "myapp", &want).await;

    // `slipway env -a myapp | slipway env set -a copy` copies every value exactly.
    ok_stdout(
        &rack.slipway(cwd, &["apps", "create", "copy"]).await,
        "apps create",
    );
    let printed = ok_stdout(&rack.slipway(cwd, &["env", "-a", "myapp"]).await, "env");
    let mut piped = tokio::process::Command::new(slipway_binary())
        .args(["env", "set", "-a", "copy"])
        .current_dir(cwd)
        .env("RACK_URL", &rack.url)
        .env_remove("CONVOX_RACK")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = piped.stdin.take().unwrap();
    stdin.write_all(printed.as_bytes()).await.unwrap();
    drop(stdin);
    ok_stdout(&piped.wait_with_output().await.unwrap(), "env set < env");
    assert_cli_shows(&rack, cwd, "copy", &want).await;

    // The Convox wire: one line per variable, which decodes to the exact values.
    let release = newest_release(&rack, "myapp").await;
    let text = release["env"].as_str().unwrap().to_owned();
    assert_eq!(text.split('\n').count(), want.len(), "{:?}", &text[..200]);
    assert!(!text.contains('\r'));
    assert!(
        text.contains("PEM=$'-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\nKZ+/w==\\n-----END PRIVATE KEY-----\\n'\n"),
        "the documented $'…' form"
    );

    // `convox env set OTHER=1`: the CLI posts back the whole env it read.
    let posted = convox_env_set(&text, &[("OTHER", "1")]);
    let body = format!("env={}", form_value(&posted));
    let (status, answer) = rack
        .raw(
            "POST",
            "/apps/myapp/releases?",
            FORM,
            body.as_bytes(),
            &rack.password,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let created: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        created["description"], "env add:OTHER",
        "no other variable changed"
    );
    want.insert("OTHER".into(), "1".into());
    assert_cli_shows(&rack, cwd, "myapp", &want).await;
    // `convox env` read twice in a row, then `convox env unset OTHER`: the same.
    let again = newest_release(&rack, "myapp").await;
    let text = again["env"].as_str().unwrap();
    let read_back = convox_env_set(text, &[]);
    let mut vars = BTreeMap::new();
    for line in read_back.split('\n') {
        let (k, v) = line.split_once('=').unwrap();
        vars.insert(k, v);
    }
    vars.remove("OTHER");
    let posted: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let body = format!("env={}", form_value(&posted.join("\n")));
    let (status, answer) = rack
        .raw(
            "POST",
            "/apps/myapp/releases?",
            FORM,
            body.as_bytes(),
            &rack.password,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let created: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(created["description"], "env remove:OTHER");
    want.remove("OTHER");
    assert_cli_shows(&rack, cwd, "myapp", &want).await;

    // A 64 KiB value (longer than the `convox` CLI reads) through `slipway`.
    let big = format!("BIG={}", "x".repeat(64 * 1024));
    ok_stdout(
        &rack
            .slipway(cwd, &["env", "set", &big, "-a", "myapp"])
            .await,
        "env set BIG",
    );
    want.insert("BIG".into(), "x".repeat(64 * 1024));
    assert_cli_shows(&rack, cwd, "myapp", &want).await;

    // Deployed, each process gets every value byte for byte.
    let app = example("myapp");
    ok_stdout(
        &rack
            .slipway(cwd, &["deploy", app.to_str().unwrap(), "-a", "myapp"])
            .await,
        "deploy",
    );
    let apps = rack.dir().join("rack-apps").join("myapp");
    let environ = eventually(Duration::from_secs(30), "an app process", || {
        let apps = apps.clone();
        async move {
            let pid = std::fs::read_dir("/proc")
                .ok()?
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .find(|pid| {
                    std::fs::read_link(format!("/proc/{pid}/cwd"))
                        .is_ok_and(|cwd| cwd.starts_with(&apps))
                })?;
            std::fs::read(format!("/proc/{pid}/environ")).ok()
        }
    })
    .await;
    let got: BTreeMap<String, String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .filter_map(|v| {
            let v = String::from_utf8(v.to_vec()).ok()?;
            let (k, v) = v.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect();
    for (key, value) in &want {
        assert!(
            got.get(key) == Some(value),
            "the process's {key} differs from the value set ({:?} bytes, want {})",
            got.get(key).map(String::len),
            value.len()
        );
    }

    // `slipway releases info` shows the env in the same lossless form.
    let newest = newest_release(&rack, "myapp").await;
    let id = newest["id"].as_str().unwrap();
    let info = ok_stdout(
        &rack
            .slipway(cwd, &["releases", "info", id, "-a", "myapp"])
            .await,
        "releases info",
    );
    let wire = Env::from_map(want.clone()).unwrap().to_wire();
    for line in wire.lines() {
        assert!(info.contains(line), "releases info lacks a variable's line");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_env_text_is_refused_naming_the_line_and_nothing_is_created() {
    let rack = TestRack::start().await;
    let pw = rack.password.clone();
    let (status, body) = rack.raw("POST", "/apps?", FORM, b"name=myapp", &pw).await;
    assert_eq!(status, 200, "{body}");
    let env = "A=1\nB=2";
    let (status, body) = rack
        .raw(
            "POST",
            "/apps/myapp/releases?",
            FORM,
            format!("env={}", form_value(env)).as_bytes(),
            &pw,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let count = || async {
        let (_, body) = rack
            .raw("GET", "/apps/myapp/releases?limit=100", NONE, b"", &pw)
            .await;
        serde_json::from_str::<Vec<serde_json::Value>>(&body)
            .unwrap()
            .len()
    };
    assert_eq!(count().await, 1);

    let cases = [
        ("A=1\nhunter2", "invalid env: line 2: expected KEY=VALUE"),
        ("A=1\n\n=hunter2", "invalid env: line 3: empty env key"),
        (
            "1BAD=hunter2",
            "invalid env: line 1: invalid env key \"1BAD\"",
        ),
        (
            "A=1\nB=2\nA=hunter2",
            "invalid env: line 3: duplicate env key A (first set on line 1)",
        ),
        (
            "A=1\nPEM=$'hunter2",
            "invalid env: line 2: the value of PEM starts with $' but is not a valid $'…' quoted value",
        ),
    ];
    for (text, want) in cases {
        let (status, body) = rack
            .raw(
                "POST",
                "/apps/myapp/releases?",
                FORM,
                format!("env={}", form_value(text)).as_bytes(),
                &pw,
            )
            .await;
        assert_eq!(status, 400, "{text:?}: {body}");
        assert!(body.starts_with(want), "{text:?}: {body}");
        assert!(!body.contains("hunter2"), "a value was echoed: {body}");
    }
    assert_eq!(count().await, 1, "no refused text created a release");
    let newest = newest_release(&rack, "myapp").await;
    assert_eq!(newest["env"], env, "the env is unchanged");
}
