//! How one-offs ended, answered by any replica (issue 14): on Kubernetes
//! (the fake cluster) an attached one-off exiting 3 and a detached one
//! exiting 0, whose pods are deleted once they end, are answered by a
//! second rollout service on the same PostgreSQL and cluster; on the local
//! runtime the same across a restart of the service, and a detached
//! one-off that ended while the service was down is answered by the next;
//! and the ledger itself on SQLite and PostgreSQL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use slipway_api::rollout::v1 as pb;
use slipway_api::rollout::v1::process_service_client::ProcessServiceClient;
use slipway_rollout::config::RuntimeKind;
use slipway_rollout::crypto::SpecCipher;
use slipway_rollout::oneoff_ends::{Ledger, RETENTION};
use slipway_rollout::runtime::OneOffInfo;
use slipway_rollout::store::Store;
use slipway_rpc::Channel;
use slipway_storage::testing::Backend;
use sqlx::Row as _;
use tokio_stream::StreamExt as _;

use crate::helpers::{App, AppGuard, app_name, eventually, serve, spec};

const LIMIT: Duration = Duration::from_secs(60);

type Processes = ProcessServiceClient<Channel>;

/// A process client of the rollout service at `addr`, once it answers.
async fn processes(addr: SocketAddr) -> Processes {
    let channel =
        slipway_rpc::channel("rollout", &[addr.to_string()], &Default::default()).unwrap();
    let client = ProcessServiceClient::new(channel);
    eventually(LIMIT, "the rollout service to answer", || {
        let mut client = client.clone();
        async move {
            let answer = client
                .get_process(pb::GetProcessRequest {
                    app: "nothing".into(),
                    id: "web-zzzzz".into(),
                })
                .await;
            matches!(answer, Err(s) if s.code() == tonic::Code::NotFound)
        }
    })
    .await;
    client
}

async fn get(
    client: &mut Processes,
    app: &str,
    id: &str,
) -> Result<pb::OneOffProcess, tonic::Status> {
    client
        .get_process(pb::GetProcessRequest {
            app: app.into(),
            id: id.into(),
        })
        .await
        .map(|r| r.into_inner().process.unwrap())
}

async fn run(
    client: &mut Processes,
    release: pb::ReleaseSpec,
    command: &str,
    attach: bool,
) -> pb::OneOffProcess {
    client
        .run_process(pb::RunProcessRequest {
            release: Some(release),
            service: "web".into(),
            command: command.into(),
            timeout_seconds: 120,
            attach,
        })
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap()
}

/// Attaches to one-off `id` with an empty stdin: its output and exit code.
async fn attach(client: &mut Processes, app: &str, id: &str) -> (String, i32) {
    use pb::exec_process_request::Input;
    let input = tokio_stream::iter(vec![
        pb::ExecProcessRequest {
            input: Some(Input::Start(pb::ExecStart {
                app: app.into(),
                process: id.into(),
                command: String::new(),
                attach: true,
            })),
        },
        pb::ExecProcessRequest {
            input: Some(Input::StdinEnd(true)),
        },
    ]);
    let mut output = client.exec_process(input).await.unwrap().into_inner();
    let mut text = Vec::new();
    while let Some(item) = output.next().await {
        match item.unwrap().output {
            Some(pb::exec_process_response::Output::Data(bytes)) => text.extend_from_slice(&bytes),
            Some(pb::exec_process_response::Output::ExitCode(code)) => {
                return (String::from_utf8_lossy(&text).into_owned(), code);
            }
            None => {}
        }
    }
    panic!("the session ended without an exit code");
}

/// Waits until one-off `id` has ended as the service at `client` sees it.
async fn wait_over(client: &Processes, app: &str, id: &str) {
    eventually(LIMIT, &format!("{id} to end"), || {
        let mut client = client.clone();
        async move {
            get(&mut client, app, id)
                .await
                .is_ok_and(|p| p.status == "complete" || p.status == "failed")
        }
    })
    .await;
}

/// Checks what `client` answers for the two ended one-offs.
async fn assert_ended(
    client: &mut Processes,
    app: &str,
    release: &str,
    failed: &str,
    complete: &str,
) {
    let p = get(client, app, failed).await.unwrap();
    assert_eq!(
        (
            p.status.as_str(),
            p.exit_code,
            p.service.as_str(),
            p.release.as_str()
        ),
        ("failed", Some(3), "web", release),
        "{p:?}"
    );
    assert_eq!(p.command, "echo attached; exit 3");
    assert!(p.deadline.is_none(), "{p:?}");
    let p = get(client, app, complete).await.unwrap();
    assert_eq!(
        (p.status.as_str(), p.exit_code, p.command.as_str()),
        ("complete", Some(0), "echo detached; exit 0"),
        "{p:?}"
    );
    // Another id is still not found, and nothing ended can be exec'd into.
    let missing = get(client, app, "web-zzzzz").await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
}

/// Nothing of the release's env is in the recorded ends.
async fn assert_no_env(db: &slipway_storage::testing::TestDb, value: &str) {
    let rows = sqlx::query("SELECT app, id, service, release_id, command, status FROM oneoff_ends")
        .fetch_all(&db.db.pool)
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        for column in 0..6 {
            let text: String = row.try_get(column).unwrap();
            assert!(!text.contains(value), "an env value in oneoff_ends: {text}");
        }
    }
}

fn kube_release(app: &str, release: &str) -> pb::ReleaseSpec {
    pb::ReleaseSpec {
        app: app.to_owned(),
        release: release.to_owned(),
        build: "BABCDEFGHIJ".to_owned(),
        manifest: "services:\n  web:\n    build: .\n    port: 3000\n    scale:\n      count: 1\n"
            .to_owned(),
        env: [("FOO".to_owned(), "secret-env-value".to_owned())]
            .into_iter()
            .collect(),
        artifacts: [("web".to_owned(), "registry.test/shop/web:1".to_owned())]
            .into_iter()
            .collect(),
    }
}

/// A rollout service on the fake cluster and `url`'s database.
async fn kube_replica(
    kubeconfig: &Path,
    url: &str,
) -> (
    Processes,
    tokio::sync::oneshot::Sender<()>,
    tempfile::TempDir,
) {
    let (kubeconfig, url) = (kubeconfig.to_owned(), url.to_owned());
    let (addr, _release, stop, dir) = serve(move |config| {
        config.runtime = RuntimeKind::Kubernetes;
        config.kubeconfig = Some(kubeconfig);
        config.rack = "test".to_owned();
        config.store.database_url = Some(url.into());
    })
    .await;
    (processes(addr).await, stop, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneoff_ends_are_answered_by_another_replica_on_kubernetes() {
    let db = slipway_storage::testing::postgres().await;
    let (fake, _dir, kubeconfig) = crate::kube_oneoff::cluster().await;
    let (mut first, _stop_first, _data_first) = kube_replica(&kubeconfig, &db.url).await;

    let release = kube_release("shop", "RAAAAAAAAAA");
    let attached = run(&mut first, release.clone(), "echo attached; exit 3", true).await;
    assert_eq!(
        attach(&mut first, "shop", &attached.id).await,
        ("attached\n".to_owned(), 3)
    );
    let detached = run(&mut first, release, "echo detached; exit 0", false).await;
    wait_over(&first, "shop", &attached.id).await;
    wait_over(&first, "shop", &detached.id).await;
    // Both pods are deleted once their end is seen.
    eventually(LIMIT, "the one-offs' pods to go", || async {
        !fake
            .objects("pods", "test-shop")
            .iter()
            .any(|p| p["metadata"]["labels"]["type"] == "run")
    })
    .await;

    // A second replica, which never saw either, answers from the database.
    let (mut second, _stop_second, _data_second) = kube_replica(&kubeconfig, &db.url).await;
    assert_ended(
        &mut second,
        "shop",
        "RAAAAAAAAAA",
        &attached.id,
        &detached.id,
    )
    .await;
    // Stopping an ended one-off there changes nothing and is no error.
    second
        .stop_process(pb::StopProcessRequest {
            app: "shop".into(),
            id: detached.id.clone(),
        })
        .await
        .unwrap();
    assert_ended(
        &mut second,
        "shop",
        "RAAAAAAAAAA",
        &attached.id,
        &detached.id,
    )
    .await;
    assert_no_env(&db, "secret-env-value").await;
}

/// A rollout service on the local runtime, with its data in `data` (kept
/// across restarts) and its database at `url`.
async fn local_replica(
    data: &Path,
    url: &str,
) -> (
    SocketAddr,
    Processes,
    tokio::sync::oneshot::Sender<()>,
    tempfile::TempDir,
) {
    let (data, url) = (data.to_owned(), url.to_owned());
    let (addr, _release, stop, dir) = serve(move |config| {
        config.store.data_dir = data.join("data");
        config.isolation.apps_dir = Some(data.join("apps"));
        config.store.database_url = Some(url.into());
    })
    .await;
    (addr, processes(addr).await, stop, dir)
}

/// Stops the service at `addr` and waits until it no longer listens.
async fn stop_service(addr: SocketAddr, stop: tokio::sync::oneshot::Sender<()>) {
    let _ = stop.send(());
    eventually(LIMIT, "the rollout service to stop", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
}

/// A directory every app user can write to and search.
fn shared_dir(parent: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = parent.join(name);
    std::fs::create_dir_all(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneoff_ends_survive_a_restart_on_the_local_runtime() {
    let app = app_name("oneoffends");
    let _guard = AppGuard(app.clone());
    let db = slipway_storage::testing::postgres().await;
    let dir = crate::helpers::private_and_apps_dirs();
    let gate = shared_dir(dir.path(), "gate");
    let (addr, mut first, stop, _first_dir) = local_replica(dir.path(), &db.url).await;

    let release = spec(&app, "RAAAAAAAAAA", &App::healthy(1));
    let attached = run(&mut first, release.clone(), "echo attached; exit 3", true).await;
    assert_eq!(
        attach(&mut first, &app, &attached.id).await,
        ("attached\n".to_owned(), 3)
    );
    let detached = run(&mut first, release.clone(), "echo detached; exit 0", false).await;
    wait_over(&first, &app, &attached.id).await;
    wait_over(&first, &app, &detached.id).await;
    // One more, still running when the service stops, ending (exit 4)
    // while it is down.
    let go = gate.join("go");
    let waiting = run(
        &mut first,
        release,
        &format!(
            "while [ ! -e {} ]; do sleep 0.05; done; exit 4",
            go.display()
        ),
        false,
    )
    .await;
    assert_eq!(
        get(&mut first, &app, &waiting.id).await.unwrap().status,
        "running"
    );
    drop(first);
    stop_service(addr, stop).await;
    std::fs::write(&go, b"").unwrap();
    let exit_file = dir
        .path()
        .join("data/logs")
        .join(&app)
        .join(format!("{}.exit", waiting.id));
    eventually(
        LIMIT,
        "the one-off to end while the service is down",
        || async { std::fs::read_to_string(&exit_file).is_ok_and(|s| s.trim() == "4") },
    )
    .await;

    // The restarted service answers for all three.
    let (_addr, mut second, _stop, _second_dir) = local_replica(dir.path(), &db.url).await;
    assert_ended(&mut second, &app, "RAAAAAAAAAA", &attached.id, &detached.id).await;
    let p = get(&mut second, &app, &waiting.id).await.unwrap();
    assert_eq!(
        (p.status.as_str(), p.exit_code),
        ("failed", Some(4)),
        "{p:?}"
    );
    // Its files went once its end was recorded.
    assert!(!exit_file.exists());
    assert_no_env(&db, "healthy").await;
}

fn ended(
    id: &str,
    status: slipway_rollout::runtime::OneOffStatus,
    code: Option<i32>,
) -> OneOffInfo {
    OneOffInfo {
        id: id.to_owned(),
        app: "shop".to_owned(),
        service: "web".to_owned(),
        release: "RAAAAAAAAAA".to_owned(),
        command: "bin/migrate".to_owned(),
        status,
        started: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        deadline: None,
        exit_code: code,
    }
}

async fn oneoff_ends_ledger_keeps_the_first_end_for_a_day(backend: Backend) {
    use slipway_rollout::runtime::OneOffStatus::{Complete, Failed, Running};
    let db = backend.db().await;
    let store = Store::new(db.db.clone(), SpecCipher::generate());
    store.migrate().await.unwrap();
    let ledger = Ledger::new(store);
    let now = chrono::Utc::now();
    let at = chrono::DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap();

    // The first end is kept; a second report of it changes nothing.
    let first = ended("web-aaaaa", Failed, Some(3));
    assert!(ledger.record(&first, at).await.unwrap());
    let again = ended("web-aaaaa", Complete, Some(0));
    assert!(!ledger.record(&again, at).await.unwrap());
    assert_eq!(
        ledger.get("shop", "web-aaaaa").await.unwrap(),
        Some((first, at))
    );
    // Unknown status: failed; unknown ids and other apps: nothing.
    let unknown = ended("web-bbbbb", Failed, None);
    ledger.record(&unknown, at).await.unwrap();
    assert_eq!(
        ledger.get("shop", "web-bbbbb").await.unwrap().unwrap().0,
        unknown
    );
    assert_eq!(ledger.get("shop", "web-zzzzz").await.unwrap(), None);
    assert_eq!(ledger.get("other", "web-aaaaa").await.unwrap(), None);
    // A one-off that has not ended is refused and nothing is written.
    let running = ended("web-ccccc", Running, None);
    let refused = ledger.record(&running, at).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        "process web-ccccc has not ended (it is running)"
    );
    assert_eq!(ledger.get("shop", "web-ccccc").await.unwrap(), None);

    // Past the retention an end is not read, and the next write prunes it.
    let old = ended("web-ddddd", Complete, Some(0));
    let long_ago =
        now - chrono::Duration::from_std(RETENTION).unwrap() - chrono::Duration::minutes(1);
    ledger.record(&old, long_ago).await.unwrap();
    assert_eq!(ledger.get("shop", "web-ddddd").await.unwrap(), None);
    ledger
        .record(&ended("web-eeeee", Complete, Some(0)), at)
        .await
        .unwrap();
    let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM oneoff_ends WHERE id = 'web-ddddd'")
        .fetch_one(&db.db.pool)
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    assert_eq!(left, 0);
}

slipway_storage::both_backends!(oneoff_ends_ledger_keeps_the_first_end_for_a_day);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_oneoff_left_by_a_killed_replica_is_recorded_and_deleted_by_another_replicas_listing() {
    let db = slipway_storage::testing::postgres().await;
    let (fake, dir, kubeconfig) = crate::kube_oneoff::cluster().await;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let release_service = crate::helpers::FakeRelease::default();
    let release_addr = release_service.spawn().await.to_string();
    let args: Vec<&std::ffi::OsStr> = vec![
        "--runtime".as_ref(),
        "kubernetes".as_ref(),
        "--rack".as_ref(),
        "test".as_ref(),
        "--kubeconfig".as_ref(),
        kubeconfig.as_os_str(),
    ];

    // A detached one-off started on a replica that is then killed: its
    // reaper dies with it, and its pod ends with nobody watching.
    let (mut child, addr) =
        crate::crash::spawn_binary_with(&data, &db.url, &release_addr, &args).await;
    let mut first = processes(addr).await;
    let p = run(
        &mut first,
        kube_release("shop", "RAAAAAAAAAA"),
        "sleep 1; exit 5",
        false,
    )
    .await;
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    eventually(LIMIT, "the orphaned one-off's pod to end", || async {
        fake.object("pods", "test-shop", &p.id)
            .is_some_and(|pod| pod["status"]["phase"] == "Failed")
    })
    .await;

    // Another replica's `ps` records its end and deletes the pod.
    let url = db.url.clone();
    let kube = kubeconfig.clone();
    let (addr, _release, _stop, _data) = serve(move |config| {
        config.runtime = RuntimeKind::Kubernetes;
        config.kubeconfig = Some(kube);
        config.rack = "test".to_owned();
        config.store.database_url = Some(url.into());
    })
    .await;
    let listed = crate::helpers::connect(addr)
        .await
        .list_processes(pb::ListProcessesRequest { app: "shop".into() })
        .await
        .unwrap()
        .into_inner()
        .processes;
    assert!(
        listed.iter().all(|l| l.id != p.id),
        "an ended one-off is not listed: {listed:?}"
    );
    eventually(
        LIMIT,
        "the orphaned one-off's pod to be deleted",
        || async { fake.object("pods", "test-shop", &p.id).is_none() },
    )
    .await;
    let row = sqlx::query("SELECT status, exit_code FROM oneoff_ends WHERE id = $1")
        .bind(&p.id)
        .fetch_one(&db.db.pool)
        .await
        .unwrap();
    assert_eq!(
        (
            row.try_get::<String, _>("status").unwrap(),
            row.try_get::<Option<i64>, _>("exit_code").unwrap()
        ),
        ("failed".to_owned(), Some(5))
    );
}
