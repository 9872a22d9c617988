//! A chaos run (issue 17) on the scale setup as processes: while writers
//! change env through both gateways with Convox-shaped requests and the real
//! `slipway` CLI drives the seed workflow (env set, releases promote,
//! rollback) through both gateways, a schedule SIGKILLs or SIGTERMs a random
//! service every few seconds and starts it again. Afterwards the ledger must
//! hold: every acknowledged env change exactly once, every promotion
//! finished or rolled back exactly once, no release without its env.
//!
//! The schedule is random; its seed is printed, and `SLIPWAY_CHAOS_SEED`
//! replays one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use slipway_e2e::cluster::{Cluster, ClusterOptions, SERVICES};
use slipway_e2e::load::{self, Load};
use slipway_e2e::{eventually, example};

/// How long faults are injected.
const CHAOS_FOR: Duration = Duration::from_secs(30);
/// The pause between two faults (each fault is followed by a restart).
const FAULT_EVERY: Duration = Duration::from_millis(2500);

/// A small xorshift generator: the schedule needs no cryptography, only to
/// be replayable from its seed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % sides as u64) as usize
    }
}

/// What the CLI driver saw.
#[derive(Default)]
struct Seen {
    /// Variables the CLI's `env set` acknowledged, with their release.
    env: BTreeMap<String, String>,
    /// Promotions and rollbacks the CLI reported as done: (command, release).
    promoted: Vec<(String, String)>,
    /// CLI commands that failed, with their output (a gateway killed under
    /// them: the CLI does not retry a write whose answer it lost).
    failed: Vec<String>,
}

fn release_of(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("Release: "))
        .map(|r| r.trim().to_owned())
}

/// The seed workflow through the `slipway` CLI, alternating gateways:
/// `env set C_<n>`, every second round `releases promote` of that release,
/// every fourth `releases rollback` to the release promoted before.
async fn cli_driver(target: CliTarget, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let cwd = tempfile::tempdir().unwrap();
    let mut last_promoted: Option<String> = None;
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let gateway = ["gateway-a", "gateway-b"][n % 2];
        let run = |args: Vec<String>| {
            let target = target.clone();
            let dir = cwd.path().to_owned();
            async move {
                let output = tokio::time::timeout(
                    Duration::from_secs(90),
                    target.command(gateway, &dir, &args).output(),
                )
                .await
                .map_err(|_| format!("slipway {args:?} took over 90 s"))?
                .map_err(|e| format!("run slipway: {e}"))?;
                let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
                if output.status.success() {
                    Ok(stdout)
                } else {
                    Err(format!(
                        "slipway {args:?} via {gateway}: {stdout}{}",
                        String::from_utf8_lossy(&output.stderr)
                    ))
                }
            }
        };
        let var = format!("C_{n}");
        let set = run(vec![
            "env".into(),
            "set".into(),
            format!("{var}={n}"),
            "-a".into(),
            "myapp".into(),
        ])
        .await;
        match set.map(|out| release_of(&out)) {
            Ok(Some(release)) => {
                seen.env.insert(var, release.clone());
                if n % 2 == 1 {
                    match run(vec![
                        "releases".into(),
                        "promote".into(),
                        release.clone(),
                        "-a".into(),
                        "myapp".into(),
                    ])
                    .await
                    {
                        Ok(_) => {
                            seen.promoted.push(("promote".into(), release.clone()));
                            if n % 4 == 3
                                && let Some(back) = last_promoted.clone()
                            {
                                match run(vec![
                                    "releases".into(),
                                    "rollback".into(),
                                    back.clone(),
                                    "-a".into(),
                                    "myapp".into(),
                                ])
                                .await
                                {
                                    Ok(_) => seen.promoted.push(("rollback".into(), back)),
                                    Err(e) => seen.failed.push(e),
                                }
                            }
                            last_promoted = Some(release);
                        }
                        Err(e) => seen.failed.push(e),
                    }
                }
            }
            Ok(None) => seen
                .failed
                .push(format!("env set {var}: no release printed")),
            Err(e) => seen.failed.push(e),
        }
        n += 1;
    }
    seen
}

/// What the CLI driver needs of the cluster (the cluster itself is busy
/// being restarted): the `slipway` command against either gateway.
#[derive(Clone)]
struct CliTarget {
    urls: [String; 2],
}

impl CliTarget {
    fn command(
        &self,
        gateway: &str,
        cwd: &std::path::Path,
        args: &[String],
    ) -> tokio::process::Command {
        let url = if gateway == "gateway-a" {
            &self.urls[0]
        } else {
            &self.urls[1]
        };
        let mut command = tokio::process::Command::new(slipway_e2e::cluster::binary("slipway"));
        command
            .args(args)
            .current_dir(cwd)
            .env("RACK_URL", url)
            .env_remove("CONVOX_RACK")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }
}

/// Promotions of `app` in the release database: (id, release, state).
async fn promotions(cluster: &Cluster, app: &str) -> Vec<(String, String, String)> {
    load::release_rows(
        cluster,
        "SELECT p.id, p.release_id, p.state FROM promotions p JOIN apps a ON a.id = p.app_id \
         WHERE a.name = $1 ORDER BY p.created_at",
        app,
    )
    .await
}

/// The rollouts of `promotion` in the rollout database: (phase, reported),
/// and its recorded phase changes into a terminal phase.
async fn rollout_of(cluster: &Cluster, promotion: &str) -> (Vec<(String, i64)>, Vec<String>) {
    let db = slipway_storage::connect(&cluster.rollout_db, &Default::default())
        .await
        .expect("connect to the rollout database");
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT phase, reported FROM rollouts WHERE id = $1")
            .bind(promotion)
            .fetch_all(&db.pool)
            .await
            .expect("read rollouts");
    let ends: Vec<(String,)> = sqlx::query_as(
        "SELECT message FROM rollout_events WHERE rollout_id = $1 AND \
         (message LIKE 'Status: % => Running' OR message LIKE 'Status: % => Reverted' \
          OR message LIKE 'Status: % => Failure') ORDER BY seq",
    )
    .bind(promotion)
    .fetch_all(&db.pool)
    .await
    .expect("read rollout events");
    db.pool.close().await;
    (rows, ends.into_iter().map(|(m,)| m).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_under_the_seed_workflow_keeps_the_ledger_whole() {
    let seed = std::env::var("SLIPWAY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(uuid::Uuid::new_v4().as_fields().0) | 1);
    eprintln!("chaos seed {seed} (SLIPWAY_CHAOS_SEED={seed} replays this schedule)");
    let mut dice = Dice(seed);

    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let cwd = tempfile::tempdir().unwrap();
    cluster
        .ok(
            "gateway-a",
            cwd.path(),
            &["apps", "create", "myapp"],
            "apps create",
        )
        .await;
    let good = example("myapp");
    cluster
        .ok(
            "gateway-b",
            cwd.path(),
            &["deploy", good.to_str().unwrap(), "-a", "myapp"],
            "first deploy",
        )
        .await;

    let load = Load::start(&cluster, "myapp", 2, Duration::from_millis(50));
    let target = CliTarget {
        urls: [cluster.rack_url("gateway-a"), cluster.rack_url("gateway-b")],
    };
    let stop = Arc::new(AtomicBool::new(false));
    let driver = tokio::spawn(cli_driver(target, stop.clone()));

    let started = Instant::now();
    let mut faults = Vec::new();
    while started.elapsed() < CHAOS_FOR {
        tokio::time::sleep(FAULT_EVERY).await;
        let name = SERVICES[dice.roll(SERVICES.len())];
        let kill = dice.roll(2) == 0;
        let at = started.elapsed();
        if kill {
            cluster.kill_and_restart(name).await;
        } else {
            cluster.restart(name).await;
        }
        let what = format!(
            "{at:.1?} {} {name}",
            if kill { "SIGKILL" } else { "SIGTERM" }
        );
        eprintln!("chaos: {what}");
        faults.push(what);
    }

    stop.store(true, Ordering::SeqCst);
    let tally = load.finish().await;
    let seen = tokio::time::timeout(Duration::from_secs(120), driver)
        .await
        .expect("the CLI driver finishes")
        .expect("the CLI driver panicked");
    eprintln!(
        "chaos: {} faults; {} raw env writes acknowledged ({} failed, {} resent); CLI: {} env sets, \
         {} promotions/rollbacks, {} failed",
        faults.len(),
        tally.acked(),
        tally.failed().len(),
        tally.resent.load(Ordering::SeqCst),
        seen.env.len(),
        seen.promoted.len(),
        seen.failed.len()
    );
    for failure in tally.failed().iter().chain(&seen.failed) {
        eprintln!("chaos: failed: {failure}");
    }
    assert!(
        tally.acked() > 20 && !seen.env.is_empty(),
        "too little got through to judge: faults {faults:?}\n{}",
        cluster.logs()
    );

    // Every promotion settles (a rollout whose replica was killed is taken
    // over within its lease), into a terminal state.
    let settled = eventually(
        Duration::from_secs(90),
        "every promotion to finish",
        || async {
            let all = promotions(&cluster, "myapp").await;
            all.iter()
                .all(|(_, _, state)| state != "pending" && state != "rolling_out")
                .then_some(all)
        },
    )
    .await;

    // 1. Every acknowledged env change, raw or by the CLI, exactly once.
    let rows = load::check_env_writes(&cluster, "myapp", &tally, true, true).await;
    for (var, release) in &seen.env {
        let made: Vec<&String> = rows
            .iter()
            .filter(|(_, d)| d == &format!("env add:{var}"))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            made,
            [release],
            "CLI env set {var} applied {} times",
            made.len()
        );
    }

    // 2. Every promotion finished or rolled back exactly once: one rollout,
    // terminal and reported, with exactly one terminal phase change; what
    // the CLI saw succeed is recorded so.
    for (id, release, state) in &settled {
        let (rollouts, ends) = rollout_of(&cluster, id).await;
        if state == "failed" && rollouts.is_empty() {
            // Refused before a rollout started (never handed over).
            continue;
        }
        assert_eq!(rollouts.len(), 1, "promotion {id}: rollouts {rollouts:?}");
        let (phase, reported) = &rollouts[0];
        assert!(
            matches!(phase.as_str(), "running" | "reverted" | "failure") && *reported == 1,
            "promotion {id} ({state}): rollout {phase}, reported {reported}"
        );
        assert_eq!(
            ends.len(),
            1,
            "promotion {id} of {release} ({state}) ended {} times: {ends:?}",
            ends.len()
        );
    }
    for (command, release) in &seen.promoted {
        let done = settled
            .iter()
            .filter(|(_, r, s)| s == "succeeded" && (r == release || command == "rollback"))
            .count();
        assert!(
            done >= 1,
            "the CLI's {command} of {release} is not succeeded"
        );
    }

    // 3. No release without its env: every release an env change made
    // carries its variable.
    let gateways = [cluster.addr("gateway-a"), cluster.addr("gateway-b")];
    for (id, description) in &rows {
        let Some(var) = description.strip_prefix("env add:") else {
            continue;
        };
        let (answer, _) = load::send_keyed(
            gateways,
            0,
            "GET",
            &format!("/apps/myapp/releases/{id}"),
            "",
            None,
        )
        .await;
        let (status, body) = answer.expect("read a release");
        assert_eq!(status, 200, "{id}: {body}");
        assert!(
            body.contains(&format!("{var}=")),
            "release {id} ({description}) lacks its env: {body}"
        );
    }
    eprintln!("chaos: faults {faults:?}; the ledger holds");
}
