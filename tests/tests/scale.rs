//! The scale setup end to end (issue: run at scale): two gateways, two
//! release replicas, two rollout replicas and one build service, each its
//! own process, on PostgreSQL and Redis, driven by the real `slipway`
//! binary. A deploy started through gateway A streams through gateway B;
//! a rollout replica killed with SIGKILL mid-rollout is replaced by the
//! other within the lease time, and nothing is applied twice.

use std::time::{Duration, Instant};

use slipway_e2e::cluster::{Cluster, ClusterOptions, LEASE_TTL};
use slipway_e2e::{eventually, example, release_of};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// The line of the active release in `slipway releases` output.
fn active_line(list: &str) -> &str {
    list.lines()
        .find(|l| l.split_whitespace().nth(1) == Some("active"))
        .unwrap_or_else(|| panic!("no active release in:\n{list}"))
}

async fn query_one(url: &str, sql: &str, bind: &str) -> Option<(String, i64)> {
    let db = slipway_storage::connect(url, &Default::default())
        .await
        .expect("connect to the rollout database");
    let row: Option<(Option<String>, i64)> = sqlx::query_as(sql)
        .bind(bind)
        .fetch_optional(&db.pool)
        .await
        .expect("query the rollout database");
    db.pool.close().await;
    row.map(|(owner, epoch)| (owner.unwrap_or_default(), epoch))
}

/// The rollout (owner, epoch) of the newest rollout of `app`.
async fn newest_rollout(cluster: &Cluster, app: &str) -> Option<(String, String, i64)> {
    let db = slipway_storage::connect(&cluster.rollout_db, &Default::default())
        .await
        .expect("connect to the rollout database");
    let row: Option<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT id, owner, epoch FROM rollouts WHERE app = $1 ORDER BY created_at DESC LIMIT 1",
    )
    .bind(app)
    .fetch_optional(&db.pool)
    .await
    .expect("query rollouts");
    db.pool.close().await;
    row.map(|(id, owner, epoch)| (id, owner.unwrap_or_default(), epoch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_flow_runs_on_the_scale_setup_across_gateways() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();

    cluster
        .ok(
            "gateway-a",
            dir,
            &["apps", "create", "myapp"],
            "apps create through gateway A",
        )
        .await;

    // Follow the app's logs through gateway B while gateway A deploys.
    let mut follower = cluster
        .slipway_command("gateway-b", dir, &["logs", "-a", "myapp", "--since", "1m"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start slipway logs");
    let mut followed = BufReader::new(follower.stdout.take().unwrap()).lines();

    let good = example("myapp");
    let out = cluster
        .ok(
            "gateway-a",
            dir,
            &[
                "deploy",
                good.to_str().unwrap(),
                "-a",
                "myapp",
                "-d",
                "first deploy",
            ],
            "deploy through gateway A",
        )
        .await;
    for wanted in [
        "Packaging source... OK",
        "Uploading source... OK",
        "Starting build... OK",
        "Build: B",
        "Release: R",
        "Promoting R",
        "system/k8s/atom/app Status: Running => Pending",
        "Status: Updating => Running",
    ] {
        assert!(
            out.contains(wanted),
            "{wanted:?} missing in:\n{out}\n{}",
            cluster.logs()
        );
    }
    let first = release_of(&out);

    // kubectl, reading the fake cluster on its own, sees the same outcome:
    // the Deployment rolled out, running the release Slipway promoted.
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .env("KUBECONFIG", &cluster.kubeconfig)
            .args(["--namespace", "scale-myapp", "--request-timeout", "10s"])
            .args(args)
            .output()
            .expect("kubectl must be installed (it is on the development machines)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = kubectl(&["rollout", "status", "deployment/web", "--watch=false"]);
    assert!(
        ok && text.contains("successfully rolled out"),
        "kubectl: {text}"
    );
    let (ok, text) = kubectl(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.template.metadata.labels.release}",
    ]);
    assert!(ok && text == first, "kubectl: {text}, Slipway: {first}");

    // Gateway B streamed the rollout gateway A started.
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = followed.next_line().await {
            let done = line.contains("Status: Updating => Running");
            seen.push(line);
            if done {
                return seen;
            }
        }
        panic!("logs through gateway B ended early: {seen:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("gateway B did not stream the rollout\n{}", cluster.logs()));
    assert!(
        seen.iter()
            .any(|l| l.contains("system/k8s/atom/app Status: Running => Pending")),
        "gateway B's stream lacks the start of the rollout: {seen:?}"
    );
    let _ = follower.start_kill();

    // env set through B, visible through A; promote through B.
    let out = cluster
        .ok(
            "gateway-b",
            dir,
            &["env", "set", "FOO=bar", "-a", "myapp"],
            "env set through gateway B",
        )
        .await;
    let with_foo = release_of(&out);
    let list = cluster
        .ok(
            "gateway-a",
            dir,
            &["releases", "-a", "myapp"],
            "releases through gateway A",
        )
        .await;
    assert!(
        list.lines()
            .any(|l| l.starts_with(&with_foo) && l.contains("env add:FOO")),
        "{with_foo} missing from:\n{list}"
    );
    let out = cluster
        .ok(
            "gateway-b",
            dir,
            &["releases", "promote", &with_foo, "-a", "myapp"],
            "promote through gateway B",
        )
        .await;
    assert!(out.trim_end().ends_with("OK"), "{out}");

    // Roll back through A to the first release; the copy becomes active.
    let out = cluster
        .ok(
            "gateway-a",
            dir,
            &["releases", "rollback", &first, "-a", "myapp"],
            "rollback through gateway A",
        )
        .await;
    assert!(
        out.contains(&format!("Rolling back to {first}... OK, R")),
        "{out}"
    );
    let list = cluster
        .ok(
            "gateway-b",
            dir,
            &["releases", "-a", "myapp"],
            "releases through gateway B",
        )
        .await;
    let active = active_line(&list);
    assert!(active.contains(&format!("rollback to {first}")), "{list}");
    let info = cluster
        .ok(
            "gateway-b",
            dir,
            &["releases", "info", &with_foo, "-a", "myapp"],
            "releases info through gateway B",
        )
        .await;
    assert!(info.contains("FOO=bar"), "{info}");

    // A one-off through gateway B, whose exec session reaches a rollout
    // replica by gRPC (the embedded rack's gateway hands sessions over in
    // process instead): stdin through, output back, the exit status kept.
    let mut run = cluster
        .slipway_command("gateway-b", dir, &["run", "-a", "myapp", "web", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start slipway run");
    let input = b"through gateway B by gRPC\n".repeat(4096);
    let mut stdin = run.stdin.take().unwrap();
    let writer = tokio::spawn({
        let input = input.clone();
        async move {
            use tokio::io::AsyncWriteExt as _;
            stdin.write_all(&input).await.unwrap();
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(120), run.wait_with_output())
        .await
        .expect("run web cat ends")
        .unwrap();
    writer.await.unwrap();
    assert!(
        out.status.success(),
        "run web cat: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    assert!(
        out.stdout == input,
        "cat gave {} bytes of {}",
        out.stdout.len(),
        input.len()
    );
    let out = cluster
        .slipway("gateway-b", dir, &["run", "-a", "myapp", "web", "exit 42"])
        .await;
    assert_eq!(out.status.code(), Some(42), "{out:?}");
}

/// How the owning rollout replica goes away mid-rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loss {
    /// SIGKILL: it is gone.
    Killed,
    /// SIGSTOP until the other replica took over, then SIGCONT: a paused
    /// old owner that wakes up after losing its lease.
    Paused,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_rollout_replica_is_replaced_within_the_lease_and_nothing_runs_twice() {
    takeover(Loss::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_rollout_replica_cannot_act_after_losing_its_lease() {
    takeover(Loss::Paused).await;
}

/// The durable events of `rollout`, oldest first.
async fn rollout_events(cluster: &Cluster, rollout: &str) -> Vec<String> {
    let db = slipway_storage::connect(&cluster.rollout_db, &Default::default())
        .await
        .expect("connect to the rollout database");
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT seq, source, message FROM rollout_events WHERE rollout_id = $1 ORDER BY seq",
    )
    .bind(rollout)
    .fetch_all(&db.pool)
    .await
    .expect("read rollout events");
    db.pool.close().await;
    rows.into_iter()
        .map(|(seq, source, message)| format!("{seq} {source} {message}"))
        .collect()
}

async fn takeover(loss: Loss) {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    cluster
        .ok(
            "gateway-a",
            dir,
            &["apps", "create", "myapp"],
            "apps create",
        )
        .await;
    let good = example("myapp");
    cluster
        .ok(
            "gateway-a",
            dir,
            &["deploy", good.to_str().unwrap(), "-a", "myapp"],
            "first deploy",
        )
        .await;
    let namespace = "scale-myapp";
    let deployment = format!("/namespaces/{namespace}/deployments/web");
    let before = cluster
        .deployment(namespace, "web")
        .unwrap_or_else(|| panic!("no Deployment web in {namespace}\n{}", cluster.logs()));
    let generation_before = before["metadata"]["generation"].as_i64().unwrap();

    // A second release, rolled out while the cluster holds Deployments back.
    let (target, promote) = cluster.start_held_promotion(dir, "myapp").await;

    // Wait until the new template is applied and the rollout has an owner.
    let (rollout, owner, epoch) = eventually(
        Duration::from_secs(60),
        "the rollout to be applied",
        || async {
            let d = cluster.deployment(namespace, "web")?;
            let applied = d["metadata"]["generation"].as_i64()? > generation_before;
            let (id, owner, epoch) = newest_rollout(&cluster, "myapp").await?;
            (applied && !owner.is_empty()).then_some((id, owner, epoch))
        },
    )
    .await;

    match loss {
        Loss::Killed => cluster.kill(&owner).await,
        Loss::Paused => cluster.signal(&owner, nix::sys::signal::Signal::SIGSTOP),
    }
    let lost_at = Instant::now();
    let survivor = if owner == "rollout-a" {
        "rollout-b"
    } else {
        "rollout-a"
    };

    // The survivor takes the lease over (a higher epoch fences the old owner).
    let (new_owner, new_epoch) = eventually(
        Duration::from_secs(30),
        "the lease to be taken over",
        || async {
            let (owner, epoch) = query_one(
                &cluster.rollout_db,
                "SELECT owner, epoch FROM rollouts WHERE id = $1",
                &rollout,
            )
            .await?;
            (owner == survivor).then_some((owner, epoch))
        },
    )
    .await;
    let takeover = lost_at.elapsed();
    eprintln!("{loss:?}: {survivor} took {rollout} over after {takeover:?}");
    assert_eq!(new_owner, survivor);
    assert!(new_epoch > epoch, "takeover must bump the fencing epoch");
    // Expiry of the lease plus one takeover scan (every half lease), with
    // slack for a loaded machine.
    assert!(
        takeover <= LEASE_TTL * 2 + Duration::from_secs(2),
        "takeover took {takeover:?} with a {LEASE_TTL:?} lease"
    );

    // Let the cluster finish: the survivor completes the rollout.
    cluster.pause_deployments(false);
    let output = tokio::time::timeout(Duration::from_secs(120), promote.wait_with_output())
        .await
        .expect("promote finishes")
        .expect("promote output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "promote failed after takeover:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.logs()
    );
    assert_eq!(
        stdout.matches("Status: Updating => Running").count(),
        1,
        "the rollout must finish exactly once:\n{stdout}"
    );

    if loss == Loss::Paused {
        // The old owner wakes up holding a lease it lost: it must not write
        // to the cluster, the rollout or its events again.
        let writes = cluster.writes_to(&deployment);
        let events = rollout_events(&cluster, &rollout).await;
        cluster.signal(&owner, nix::sys::signal::Signal::SIGCONT);
        tokio::time::sleep(LEASE_TTL * 2).await;
        assert_eq!(
            cluster.writes_to(&deployment),
            writes,
            "the woken old owner wrote to the Deployment"
        );
        assert_eq!(
            rollout_events(&cluster, &rollout).await,
            events,
            "the woken old owner recorded rollout events"
        );
        let (owner_now, epoch_now) = query_one(
            &cluster.rollout_db,
            "SELECT owner, epoch FROM rollouts WHERE id = $1",
            &rollout,
        )
        .await
        .expect("the rollout row");
        assert!(
            owner_now != owner || epoch_now > new_epoch,
            "the old owner took its stale lease back: {owner_now}@{epoch_now}"
        );
    }

    // Nothing was applied twice: the template changed once (one new
    // generation); the survivor's re-apply was a no-op.
    let after = cluster.deployment(namespace, "web").unwrap();
    assert_eq!(
        after["metadata"]["generation"].as_i64().unwrap(),
        generation_before + 1,
        "the new release's template must be applied once"
    );
    let list = cluster
        .ok("gateway-a", dir, &["releases", "-a", "myapp"], "releases")
        .await;
    let active = active_line(&list);
    assert!(
        active.starts_with(&target),
        "{target} should be active:\n{list}"
    );
}
