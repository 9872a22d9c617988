//! `slipway-bench console`: what the web console costs, each figure beside
//! its baseline from the same run.
//!
//! - The app page (`GET /console/apps/{app}`, rendered on the server) for
//!   an app with `--releases` releases, beside the `ListReleases` call of
//!   20 releases it makes (goal: page p99 ≤ 2 × the call's p99 + 5 ms).
//! - A promotion's events as the browser's SSE stream delivers them,
//!   beside the CLI's typed websocket for the same promotion, opened at
//!   the same moment: per event, SSE arrival minus websocket arrival
//!   (goal: within 1 ms at p50).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use slipway_api::release::v1 as rpb;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::rack::BenchRack;
use crate::stats::percentile_ms;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Releases in the ledger of the measured app.
    #[arg(long, default_value_t = 10_000)]
    releases: u32,
    /// Page loads (and as many `ListReleases` calls) measured.
    #[arg(long, default_value_t = 300)]
    calls: u32,
    /// Promotions whose events are compared, SSE against websocket.
    #[arg(long, default_value_t = 5)]
    promotions: u32,
}

const APP: &str = "bench";
const LIVE: &str = "live";

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.calls > 0 && args.promotions > 0,
        "--calls and --promotions must be positive"
    );
    let rack = BenchRack::start(8 << 20).await?;
    let result = measure(&args, &rack).await;
    rack.stop().await;
    result
}

async fn measure(args: &Args, rack: &BenchRack) -> anyhow::Result<()> {
    let addr: SocketAddr = rack
        .url
        .rsplit_once('@')
        .map(|(_, host)| host)
        .unwrap_or_default()
        .parse()?;
    let password = rack
        .url
        .split_once("convox:")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(p, _)| p.to_owned())
        .unwrap_or_default();
    let mut grpc = rack.release()?;
    grpc.create_app(rpb::CreateAppRequest {
        name: APP.into(),
        deadline_seconds: 0,
    })
    .await?;
    let manifest = "services:\n  web:\n    command: sleep 1000\n    port: 3000\n";
    for i in 0..args.releases {
        grpc.create_release(rpb::CreateReleaseRequest {
            app: APP.into(),
            build: Some("BBENCHCONSO".into()),
            manifest: Some(manifest.into()),
            env_vars: Some(rpb::EnvVars {
                vars: [("N".to_owned(), i.to_string())].into(),
            }),
            description: Some(format!("release {i}")),
            artifacts: [("web".to_owned(), "file:///tmp".to_owned())].into(),
            ..Default::default()
        })
        .await?;
    }
    let cookie = login(addr, &password).await?;

    eprintln!(
        "console: {} page loads of an app with {} releases, beside ListReleases (20)",
        args.calls, args.releases
    );
    let (mut page, mut call) = (Vec::new(), Vec::new());
    let path = format!("/console/apps/{APP}");
    // Warm both paths first.
    get(addr, &path, &cookie).await?;
    for _ in 0..args.calls {
        let start = Instant::now();
        let (status, body) = get(addr, &path, &cookie).await?;
        page.push(start.elapsed());
        anyhow::ensure!(
            status == 200 && body.contains("Releases of"),
            "page: {status}"
        );
        let start = Instant::now();
        grpc.list_releases(rpb::ListReleasesRequest {
            app: APP.into(),
            limit: 20,
            page_token: String::new(),
        })
        .await?;
        call.push(start.elapsed());
    }
    let (page50, page99) = (
        percentile_ms(&mut page, 50.0),
        percentile_ms(&mut page, 99.0),
    );
    let (call50, call99) = (
        percentile_ms(&mut call, 50.0),
        percentile_ms(&mut call, 99.0),
    );
    println!("app page:      p50 {page50:.2} ms  p99 {page99:.2} ms");
    println!("ListReleases:  p50 {call50:.2} ms  p99 {call99:.2} ms");
    println!(
        "page / call:   p50 {:.2}x  p99 {:.2}x  (goal: page p99 <= 2 x call p99 + 5 ms = {:.2} ms: {})",
        page50 / call50,
        page99 / call99,
        2.0 * call99 + 5.0,
        if page99 <= 2.0 * call99 + 5.0 {
            "met"
        } else {
            "missed"
        }
    );

    sse_against_websocket(args, rack, addr, &cookie).await
}

/// Promotes a fresh release `--promotions` times and compares, event by
/// event, when the SSE stream and the websocket delivered it.
async fn sse_against_websocket(
    args: &Args,
    rack: &BenchRack,
    addr: SocketAddr,
    cookie: &str,
) -> anyhow::Result<()> {
    let mut grpc = rack.release()?;
    let cwd = rack.dir();
    let slipway = slipway_e2e::slipway_binary();
    let example = slipway_e2e::example("myapp");
    for args in [
        vec!["apps", "create", LIVE],
        vec!["deploy", example.to_str().unwrap_or_default(), "-a", LIVE],
    ] {
        let out = tokio::process::Command::new(&slipway)
            .args(&args)
            .current_dir(cwd)
            .env("RACK_URL", &rack.url)
            .output()
            .await?;
        anyhow::ensure!(out.status.success(), "slipway {args:?} failed");
    }
    let client = slipway_client::Client::new(&rack.url)?;
    let mut differences = Vec::new();
    for round in 0..args.promotions {
        let changed = grpc
            .change_env(rpb::ChangeEnvRequest {
                app: LIVE.into(),
                set: [("ROUND".to_owned(), round.to_string())].into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .release
            .ok_or_else(|| anyhow::anyhow!("no release"))?;
        let promotion = grpc
            .promote_release(rpb::PromoteReleaseRequest {
                app: LIVE.into(),
                release: changed.id,
                ..Default::default()
            })
            .await?
            .into_inner()
            .promotion
            .ok_or_else(|| anyhow::anyhow!("no promotion"))?;
        let path = format!("/console/apps/{LIVE}/promotions/{}/stream", promotion.id);
        let sse = tokio::spawn(sse_arrivals(addr, path, cookie.to_owned()));
        let mut ws = client.promotion_follow(LIVE, &promotion.id, "").await?;
        let mut ws_at = HashMap::new();
        while let Some(frame) = ws.next().await {
            match frame? {
                slipway_client::PromotionFrame::Event { id, .. } => {
                    ws_at.insert(id, Instant::now());
                }
                slipway_client::PromotionFrame::Result(_) => break,
            }
        }
        for (id, at) in sse.await?? {
            if let Some(ws) = ws_at.get(&id) {
                differences.push(
                    at.saturating_duration_since(*ws).as_secs_f64() * 1000.0
                        - ws.saturating_duration_since(at).as_secs_f64() * 1000.0,
                );
            }
        }
    }
    differences.sort_by(f64::total_cmp);
    let at = |p: f64| differences[((p / 100.0) * (differences.len() - 1) as f64).round() as usize];
    println!(
        "SSE - websocket arrival, {} events of {} promotions: p50 {:+.3} ms  p99 {:+.3} ms  (goal: |p50| <= 1 ms: {})",
        differences.len(),
        args.promotions,
        at(50.0),
        at(99.0),
        if at(50.0).abs() <= 1.0 {
            "met"
        } else {
            "missed"
        }
    );
    Ok(())
}

/// Logs in through the form; the session cookie.
async fn login(addr: SocketAddr, password: &str) -> anyhow::Result<String> {
    let (_, head, body) = request(addr, "GET", "/console/login", "", None).await?;
    let login_cookie = set_cookie(&head, "slipway_login")?;
    let token = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or_else(|| anyhow::anyhow!("no login token"))?;
    let form = format!("csrf={token}&password={password}");
    let (status, head, _) = request(
        addr,
        "POST",
        "/console/login",
        &format!("slipway_login={login_cookie}"),
        Some(&form),
    )
    .await?;
    anyhow::ensure!(status == 303, "login answered {status}");
    Ok(format!(
        "slipway_session={}",
        set_cookie(&head, "slipway_session")?
    ))
}

fn set_cookie(head: &str, name: &str) -> anyhow::Result<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.trim().split(';').next()?.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .ok_or_else(|| anyhow::anyhow!("no {name} cookie"))
}

async fn get(addr: SocketAddr, path: &str, cookie: &str) -> anyhow::Result<(u16, String)> {
    let (status, _, body) = request(addr, "GET", path, cookie, None).await?;
    Ok((status, body))
}

/// One HTTP/1.1 request on its own connection: status, head, body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: &str,
    form: Option<&str>,
) -> anyhow::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nCookie: {cookie}\r\n"
    );
    if let Some(form) = form {
        head.push_str(&format!(
            "Origin: http://{addr}\r\nSec-Fetch-Site: same-origin\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            form.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(form.unwrap_or_default());
    stream.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_owned(), body.to_owned()))
}

/// When each event id arrived on the console's SSE stream, until its
/// outcome.
async fn sse_arrivals(
    addr: SocketAddr,
    path: String,
    cookie: String,
) -> anyhow::Result<Vec<(String, Instant)>> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nCookie: {cookie}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut lines = BufReader::new(stream).lines();
    let mut arrivals = Vec::new();
    let deadline = Duration::from_secs(120);
    while let Some(line) = tokio::time::timeout(deadline, lines.next_line()).await?? {
        if let Some(id) = line.strip_prefix("id: ") {
            arrivals.push((id.to_owned(), Instant::now()));
        } else if line.starts_with("event: outcome") {
            break;
        }
    }
    Ok(arrivals)
}
