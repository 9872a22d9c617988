//! `ledger`: how fast the release service appends to the ledger and lists
//! it, against PostgreSQL, beside the raw rate of single-row INSERTs of the
//! same shape on the same database in the same run.
//!
//! - creation: `ChangeEnv` over gRPC (each call forks the newest release,
//!   seals the env and appends) at concurrency 1, 16 and 64, spread over
//!   many apps and all on one app; baseline: autocommit INSERTs into a table
//!   shaped like `releases`.
//! - listing: `ListReleases` (first page of 20) for an app with 10,000
//!   releases, p50 and p99.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;
use slipway_api::release::v1 as pb;
use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_rpc::Channel;

use crate::scratch::with_scratch_database;
use crate::stats::{percentile_ms, throughput};

/// Options of the `ledger` benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// PostgreSQL server (a scratch database is created on it).
    #[arg(
        long,
        env = "SLIPWAY_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// How long each throughput case runs.
    #[arg(long, default_value = "4")]
    seconds: u64,
    /// Releases in the app whose list latency is measured.
    #[arg(long, default_value = "10000")]
    list_releases: usize,
}

const CONCURRENCY: [usize; 3] = [1, 16, 64];

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let admin = args.database_url.clone();
    with_scratch_database(&admin, "", |url| async move { measure(&args, &url).await }).await
}

async fn measure(args: &Args, url: &str) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.seconds);
    eprintln!(
        "ledger: PostgreSQL scratch database, {}s per case",
        args.seconds
    );

    // Baseline: raw single-row INSERTs of the release shape.
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(64)
        .connect(url)
        .await?;
    sqlx::query(
        "CREATE TABLE raw_releases (id TEXT PRIMARY KEY, app_id BIGINT NOT NULL, seq BIGINT NOT NULL, \
         build TEXT NOT NULL, manifest TEXT NOT NULL, artifacts TEXT NOT NULL, build_description TEXT NOT NULL, \
         env_sealed BYTEA NOT NULL, description TEXT NOT NULL, parent TEXT, rollback_of TEXT, actor TEXT NOT NULL, \
         created_at BIGINT NOT NULL, UNIQUE (app_id, seq))",
    )
    .execute(&raw)
    .await?;
    let mut raw_rates = HashMap::new();
    for (case, c) in CONCURRENCY.iter().enumerate() {
        let pool = raw.clone();
        let rate = throughput(*c, duration, move |worker, n| {
            let pool = pool.clone();
            async move {
                let id = format!("{case}-{worker}-{n}");
                sqlx::query(
                    "INSERT INTO raw_releases (id, app_id, seq, build, manifest, artifacts, build_description, \
                     env_sealed, description, parent, rollback_of, actor, created_at) \
                     VALUES ($1, $2, $3, 'BABCDEFGHIJ', $4, '{}', 'build', $5, 'env add:K', 'RABCDEFGHIJ', NULL, 'bench', $6)",
                )
                .bind(&id)
                .bind((case * 1000 + worker) as i64)
                .bind(n as i64)
                .bind(MANIFEST)
                .bind(vec![7u8; 96])
                .bind(n as i64)
                .execute(&pool)
                .await?;
                Ok(())
            }
        })
        .await?;
        raw_rates.insert(*c, rate);
    }
    raw.close().await;

    // Slipway: the release service in-process, talking gRPC on loopback.
    let dir = tempfile::tempdir()?;
    let mut config = slipway_release::Config::dev(dir.path().to_path_buf());
    config.store.database_url = Some(url.to_owned().into());
    config.env_key = Some(
        base64::engine::general_purpose::STANDARD
            .encode(rand::random::<[u8; 32]>())
            .into(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(slipway_release::run(config, listener, async {
        let _ = stopped.await;
    }));
    let channel =
        slipway_rpc::channel("release", &[format!("http://{addr}")], &Default::default())?;
    let client = ReleaseServiceClient::new(channel);

    let apps: Vec<String> = (0..64).map(|i| format!("bench-{i}")).collect();
    for app in apps.iter().map(String::as_str).chain(["one", "listed"]) {
        client
            .clone()
            .create_app(pb::CreateAppRequest {
                name: app.to_owned(),
                deadline_seconds: 0,
            })
            .await?;
    }
    let apps = Arc::new(apps);
    let mut many = HashMap::new();
    let mut one = HashMap::new();
    for c in CONCURRENCY {
        let (client2, apps2) = (client.clone(), apps.clone());
        many.insert(
            c,
            throughput(c, duration, move |worker, n| {
                let (client, app) = (client2.clone(), apps2[worker % apps2.len()].clone());
                async move { env_set(client, app, worker, n).await }
            })
            .await?,
        );
        let client2 = client.clone();
        one.insert(
            c,
            throughput(c, duration, move |worker, n| {
                env_set(client2.clone(), "one".into(), worker, n)
            })
            .await?,
        );
    }

    // List latency on a long ledger.
    let filler = client.clone();
    throughput_fill(filler, args.list_releases).await?;
    let mut samples = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let started = Instant::now();
        let page = client
            .clone()
            .list_releases(pb::ListReleasesRequest {
                app: "listed".into(),
                limit: 20,
                page_token: String::new(),
            })
            .await?
            .into_inner();
        samples.push(started.elapsed());
        anyhow::ensure!(page.releases.len() == 20, "short page");
    }
    let list_p50 = percentile_ms(&mut samples, 50.0);
    let list_p99 = percentile_ms(&mut samples, 99.0);
    let _ = stop.send(());
    server.await??;

    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "case", "releases/s", "raw INSERT/s", "ratio"
    );
    let mut figures = serde_json::Map::new();
    for c in CONCURRENCY {
        let raw = raw_rates[&c];
        for (label, rates) in [("many apps", &many), ("one app", &one)] {
            let rate = rates[&c];
            println!(
                "{:<34} {:>12.0} {:>12.0} {:>7.0}%",
                format!("env set, {label}, concurrency {c}"),
                rate,
                raw,
                100.0 * rate / raw
            );
            let key = format!("env_set_{}_c{c}", label.replace(' ', "_"));
            figures.insert(
                key,
                json!({"releases_per_s": rate, "raw_insert_per_s": raw, "ratio": rate / raw}),
            );
        }
    }
    println!(
        "{:<34} {:>12.2} ms (p50) {:>8.2} ms (p99)",
        format!("list 20 of {}", args.list_releases),
        list_p50,
        list_p99
    );
    figures.insert(
        "list_releases".into(),
        json!({"releases_in_app": args.list_releases, "page": 20, "p50_ms": list_p50, "p99_ms": list_p99, "goal_p99_ms": 5.0}),
    );
    figures.insert("goal_multi_app_c16_ratio".into(), json!(0.5));
    println!("{}", serde_json::Value::Object(figures));
    Ok(())
}

async fn env_set(
    mut client: ReleaseServiceClient<Channel>,
    app: String,
    worker: usize,
    n: u64,
) -> anyhow::Result<()> {
    client
        .change_env(pb::ChangeEnvRequest {
            app,
            set: [(format!("K{worker}"), format!("v{n}"))].into(),
            unset: vec![],
            parent_release: None,
            expected_newest_release: None,
        })
        .await?;
    Ok(())
}

/// Appends `count` releases to the `listed` app with 16 callers.
async fn throughput_fill(
    client: ReleaseServiceClient<Channel>,
    count: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..16).map(|worker| {
        let (client, next) = (client.clone(), next.clone());
        tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                env_set(client.clone(), "listed".into(), worker, 0).await?;
            }
            anyhow::Ok(())
        })
    });
    for r in futures::future::join_all(workers).await {
        r??;
    }
    Ok(())
}

const MANIFEST: &str = "services:\n  web:\n    build: .\n    command: bin/web\n    port: 5000\n";
