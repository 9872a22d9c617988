//! The rollout service: carries promotions out on a runtime (local
//! processes or Kubernetes, by `--runtime`), watches health and deadlines, rolls back
//! on its own, records every event, and reports outcomes to the release
//! service. Rollouts survive crashes: state and leases live in the
//! database, and the local runtime re-adopts the processes it started.
//!
//! `run` is the whole service; `main.rs` only parses config and binds.

pub mod audit;
pub mod config;
pub mod crypto;
pub mod driver;
pub mod error;
pub mod grpc;
pub mod log_cursor;
pub mod logs;
pub mod model;
pub mod oneoff_ends;
pub mod overrides;
pub mod processes;
pub mod recorder;
pub mod report;
pub mod runtime;
pub mod scale;
pub mod scale_grpc;
pub mod service;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use slipway_api::rollout::v1::process_service_server::{
    ProcessServiceServer, SERVICE_NAME as PROCESS_SERVICE_NAME,
};
use slipway_api::rollout::v1::rollout_service_server::{RolloutServiceServer, SERVICE_NAME};
use slipway_api::rollout::v1::scale_service_server::{
    SERVICE_NAME as SCALE_SERVICE_NAME, ScaleServiceServer,
};
use slipway_events::{EventBus, InProcessBus, RedisBus};
use slipway_rpc::MessageLimits as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::config::RuntimeKind;
use crate::driver::Drivers;
use crate::recorder::Recorder;
use crate::report::Reporter;
use crate::runtime::kubernetes::{ClientSettings, KubernetesConfig, KubernetesRuntime};
use crate::runtime::local::{LocalConfig, LocalRuntime};
use crate::runtime::{DynRuntime, EventSink};
use crate::service::Rollouts;
use crate::store::Store;

/// Opens the store the configuration names: connects and migrates.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let db = slipway_storage::open(
        &config.database_url(),
        &config.store.data_dir,
        config.spec_key.is_none(),
    )
    .await?;
    let key_file = config.store.data_dir.join("spec.key");
    if config.spec_key.is_none() && key_file.exists() {
        slipway_storage::files::tighten(&key_file, 0o600)
            .with_context(|| format!("tighten {}", key_file.display()))?;
    }
    let cipher = match &config.spec_key {
        Some(key) => crypto::SpecCipher::from_base64(key.expose())?,
        None => crypto::SpecCipher::load_or_create(&key_file)?,
    };
    let store = Store::new(db, cipher);
    store.migrate().await?;
    Ok(store)
}

/// Starts the runtime the configuration names; it reports how one-offs
/// ended into `store` (see [`oneoff_ends`]).
pub async fn start_runtime(
    config: &Config,
    store: Store,
    events: Arc<dyn EventSink>,
) -> anyhow::Result<DynRuntime> {
    let ends = Arc::new(oneoff_ends::Ledger::new(store.clone()));
    Ok(match config.runtime {
        RuntimeKind::Local => Arc::new(
            LocalRuntime::start_with_ends(
                store,
                events,
                ends,
                LocalConfig {
                    data_dir: config.store.data_dir.clone(),
                    ports: config.port_range.0,
                    restart_limit: config.restart_limit,
                    apps_dir: config.isolation.apps_dir(&config.store.data_dir),
                    app_uids: config.isolation.app_uid_range,
                },
            )
            .await
            .context("start the local runtime")?,
        ),
        RuntimeKind::Kubernetes => {
            let client = ClientSettings {
                kubeconfig: config.kubeconfig.clone(),
                context: config.kube_context.clone(),
                in_cluster: config.kube_in_cluster,
            }
            .client()
            .await
            .context("connect to kubernetes")?;
            Arc::new(
                KubernetesRuntime::new(
                    client,
                    events,
                    KubernetesConfig {
                        rack: config.rack.clone(),
                        restart_limit: config.restart_limit,
                    },
                )
                .with_image_pull_secret(config.kube_image_pull_secret.clone())
                .with_pod_user(config.kube_pod_user)
                .with_oneoff_ends(ends),
            )
        }
    })
}

/// The event bus the configuration names: Redis Streams with
/// `--redis-url` (shared by every replica), else in-process. Does no I/O:
/// a Redis that is down degrades events, it does not stop the service.
pub fn event_bus(config: &Config) -> anyhow::Result<Arc<dyn EventBus>> {
    Ok(match config.redis() {
        Some(redis) => {
            let prefix = redis.prefix.clone();
            let bus = RedisBus::new(redis).context("set up the redis event bus")?;
            tracing::info!(%prefix, "event bus on Redis Streams");
            Arc::new(bus)
        }
        None => Arc::new(InProcessBus::default()),
    })
}

/// Runs the service on `listener` with the event bus its configuration
/// names (see [`event_bus`]) until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let bus = event_bus(&config)?;
    run_with_bus(config, bus, listener, shutdown).await
}

/// Runs the service publishing to `bus` (the embedded rack shares one).
pub async fn run_with_bus(
    config: Config,
    bus: Arc<dyn EventBus>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (routes, health) =
        slipway_rpc::standard_routes(&[SERVICE_NAME, PROCESS_SERVICE_NAME, SCALE_SERVICE_NAME])
            .await;
    let store = open_store(&config)
        .await
        .context("open the rollout store")?;
    let recorder = Recorder::start(store.clone(), bus.clone());
    let runtime = start_runtime(&config, store.clone(), Arc::new(recorder.clone())).await?;
    let background = CancellationToken::new();
    let reporter = if config.release_endpoints.is_empty() {
        tracing::warn!(
            "no release endpoint configured: rollout outcomes and audit records are not reported"
        );
        Reporter::new(None)
    } else {
        let channel = slipway_rpc::channel(
            "release",
            &config.release_endpoints,
            &slipway_rpc::ChannelOptions {
                request_timeout: config.request_timeout,
                service_token: config.security.client_token("rollout"),
                ..Default::default()
            },
        )?;
        tokio::spawn(audit::relay_loop(
            store.clone(),
            channel.clone(),
            background.clone(),
        ));
        Reporter::new(Some(channel))
    };
    let replica = config
        .replica_id
        .clone()
        .unwrap_or_else(|| format!("rollout-{}", uuid::Uuid::new_v4().simple()));
    let scales = scale::Scales::new(store.clone(), runtime.clone(), recorder.clone());
    let drivers = Drivers::new(
        store.clone(),
        runtime.clone(),
        recorder,
        reporter,
        replica.clone(),
        config.lease_ttl,
        background.clone(),
    );
    tokio::spawn(drivers.clone().takeover_loop());
    let processes = Arc::new(processes::Processes::new(runtime.clone(), store.clone()));
    // A gateway in this process opens exec sessions without encoding them
    // (`slipway_api::exec`); withdrawn when the service ends.
    let _exec_plane = slipway_rpc::in_process::offer::<Arc<dyn slipway_api::exec::ExecPlane>>(
        listener.local_addr()?,
        processes.clone(),
    );
    let held = runtime.clone();
    let service = Arc::new(Rollouts::new(
        store,
        runtime,
        bus,
        drivers.clone(),
        config.default_deadline.as_secs() as u32,
    ));
    let routes = routes
        .add_service(RolloutServiceServer::new(grpc::Grpc::new(service)).with_message_limits())
        .add_service(ProcessServiceServer::from_arc(processes).with_message_limits())
        .add_service(
            ScaleServiceServer::new(scale_grpc::ScaleGrpc::new(scales)).with_message_limits(),
        );
    health.serving().await;
    tracing::info!(addr = %listener.local_addr()?, replica, "rollout service serving");
    let options = slipway_rpc::ServerOptions {
        request_timeout: config.request_timeout,
        shutdown_grace: config.shutdown_grace,
        service_auth: config.security.server_auth(),
        ..Default::default()
    };
    slipway_rpc::serve(routes, listener, &options, health, background, shutdown).await?;
    // Hand leases back so a restarted replica takes over without waiting.
    drivers.wait_idle(Duration::from_secs(2)).await;
    // Control loops and listeners end with the service; the apps run on.
    held.shutdown().await;
    Ok(())
}
