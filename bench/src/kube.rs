//! `kube`: promote -> running on the Kubernetes runtime against the fake
//! API server and cluster (`slipway-kube-fake`, in-process), whose pods
//! become ready a fixed delay after they are created, for a service of 1
//! and of 20 replicas.
//!
//! - measured: the runtime's `apply` of a new release, then `progress`
//!   until `Complete` (every new pod Ready, every old pod gone), as the
//!   rollout driver calls them; the fake's controllers act every `--tick`
//!   and old pods stop at once (`pod_stop` 0), so what is left beside the
//!   delay is the runtime's reading and the fake's steps.
//! - baseline: the pods' fixed delay (`slow-<delay>ms`), and one watch
//!   round trip on the same fake (an Event created through the API to its
//!   arrival on an open watch).
//!
//! Goal (issue 18): overhead (measured - delay) p50 <= 200 ms + one watch
//! round trip p50. The driver's own work (database writes, events) is not
//! in this figure: see the `rollout` benchmark for the local runtime's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use slipway_kube_fake::{FakeKube, Options};
use slipway_rollout::model::SpecRecord;
use slipway_rollout::runtime::kubernetes::{KubernetesConfig, KubernetesRuntime};
use slipway_rollout::runtime::{EventSink, Progress, Runtime, Spec};

use crate::stats::{Spread, paired_overheads};

/// Options of the `kube` benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Promotions per service size.
    #[arg(long, default_value = "10")]
    runs: usize,
    /// How long after creation the fake's pods become ready.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// How often the fake's controllers act.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    tick: Duration,
}

struct Discard;

impl EventSink for Discard {
    fn emit(&self, _: slipway_events::NewEvent) {}
}

fn spec(release: &str, count: u32, delay: Duration) -> anyhow::Result<Arc<Spec>> {
    // Surge 100%, nothing unavailable: every new pod at once, old ones
    // stopped once the new ones are ready (the default rolling update).
    let manifest = format!(
        "services:\n  web:\n    build: .\n    port: 3000\n    health:\n      path: /\n      grace: 60\n      interval: 5\n    scale:\n      count: {count}\n    deployment:\n      minimum: 100\n      maximum: 200\n"
    );
    Ok(Arc::new(Spec::from_record(SpecRecord {
        app: "bench".to_owned(),
        release: release.to_owned(),
        build: "BBENCHAAAAA".to_owned(),
        manifest,
        env: Default::default(),
        artifacts: [(
            "web".to_owned(),
            format!("bench.test/web:slow-{}ms", delay.as_millis()),
        )]
        .into_iter()
        .collect(),
    })?))
}

/// Release ids `RBENCH` + five letters, one per promotion.
fn release(n: usize) -> String {
    let mut letters = String::new();
    let mut n = n;
    for _ in 0..5 {
        letters.insert(0, char::from(b'A' + (n % 26) as u8));
        n /= 26;
    }
    format!("RBENCH{letters}")
}

/// One watch round trip: an Event created through the API, to its arrival
/// on a watch opened before.
async fn watch_round_trip(fake: &FakeKube, n: usize) -> anyhow::Result<Duration> {
    let api: Api<Event> = Api::namespaced(fake.client(), "kube-bench");
    let name = format!("probe-{n}");
    let stream = api
        .watch(&WatchParams::default().timeout(10), "0")
        .await?
        .boxed();
    let event: Event = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "kube-bench"},
        "involvedObject": {"kind": "Pod", "name": "probe", "namespace": "kube-bench"},
        "reason": "Probe", "message": "round trip", "type": "Normal",
    }))?;
    let start = Instant::now();
    api.create(&PostParams::default(), &event).await?;
    let mut stream = stream;
    while let Some(item) = stream.try_next().await? {
        if let WatchEvent::Added(e) = item
            && e.metadata.name.as_deref() == Some(name.as_str())
        {
            return Ok(start.elapsed());
        }
    }
    anyhow::bail!("the watch ended before the event arrived")
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let fake = FakeKube::serve(
        listener,
        Options {
            tick: args.tick,
            pod_stop: Duration::ZERO,
        },
    );
    fake.run_controller();
    let runtime = KubernetesRuntime::new(
        fake.client(),
        Arc::new(Discard),
        KubernetesConfig {
            rack: "kube".to_owned(),
            restart_limit: 3,
        },
    );
    // The namespace of the round-trip probes.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(fake.client());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "kube-bench"}}))?,
        )
        .await?;

    let mut round_trips = Vec::new();
    for n in 0..args.runs.max(5) * 2 {
        round_trips.push(watch_round_trip(&fake, n).await?);
    }
    let rtt = Spread::of(&mut round_trips);

    let mut summary = serde_json::Map::new();
    Spread::header();
    rtt.row("watch round trip");
    let mut n = 0;
    for count in [1u32, 20] {
        // A first release to roll from.
        let first = spec(&release(n), count, args.delay)?;
        n += 1;
        runtime
            .apply("PBENCH", first.clone(), Duration::from_secs(120))
            .await?;
        settle(&runtime, &first.release).await?;
        let mut measured = Vec::new();
        for _ in 0..args.runs {
            let next = spec(&release(n), count, args.delay)?;
            n += 1;
            let start = Instant::now();
            runtime
                .apply("PBENCH", next.clone(), Duration::from_secs(120))
                .await?;
            settle(&runtime, &next.release).await?;
            measured.push(start.elapsed());
        }
        let delays = vec![args.delay; measured.len()];
        let mut overheads = paired_overheads(&measured, &delays);
        let total = Spread::of(&mut measured.clone());
        let over = Spread::of(&mut overheads);
        total.row(&format!("promote -> running, {count} replicas"));
        over.row(&format!(
            "  overhead beside the {}ms delay",
            args.delay.as_millis()
        ));
        let goal = 200.0 + rtt.p50;
        println!(
            "  goal p50 <= {goal:.1} ms (200 ms + watch round trip): {}",
            if over.p50 <= goal { "met" } else { "NOT met" }
        );
        summary.insert(
            format!("replicas_{count}"),
            serde_json::json!({"promote_to_running_ms": total.json(), "overhead_ms": over.json(),
                               "goal_p50_ms": goal, "met": over.p50 <= goal}),
        );
    }
    summary.insert("watch_round_trip_ms".to_owned(), rtt.json());
    summary.insert(
        "delay_ms".to_owned(),
        serde_json::json!(args.delay.as_millis()),
    );
    summary.insert(
        "tick_ms".to_owned(),
        serde_json::json!(args.tick.as_millis()),
    );
    println!("{}", serde_json::Value::Object(summary));
    Ok(())
}

async fn settle(runtime: &KubernetesRuntime, release: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        match runtime
            .progress("bench", release, Duration::from_secs(1))
            .await?
        {
            Progress::Complete => return Ok(()),
            Progress::Failed { reason } => anyhow::bail!("rollout of {release} failed: {reason}"),
            Progress::Progressing { .. } => {}
        }
        if start.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("rollout of {release} still progressing after 120 s");
        }
    }
}
