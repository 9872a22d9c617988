//! The build service: source uploads, safe unpacking, manifest validation,
//! snapshot and OCI builders, and build logs that can be followed live and
//! replayed, served over gRPC. A finished build asks the release service for
//! its release.
//!
//! `run` is the whole service; `main.rs` only parses config and binds.
//!
//! The data directory holds, per replica: `objects/` (the default object
//! store), `work/<build>/` (a build's scratch space, removed when it ends),
//! `artifacts/sha256-*/` (snapshot artifacts) and `buildah/` (oci builder
//! storage).

pub mod archive_grpc;
pub mod builder;
pub mod config;
pub mod direct;
pub mod error;
pub mod grpc;
pub mod log;
pub mod model;
pub mod objects;
pub mod pipeline;
pub mod relay;
pub mod release;
pub mod service;
pub mod store;
pub mod unpack;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use slipway_api::build::v1::build_archive_service_server::{
    BuildArchiveServiceServer, SERVICE_NAME as ARCHIVE_SERVICE_NAME,
};
use slipway_api::build::v1::build_service_server::{BuildServiceServer, SERVICE_NAME};
use slipway_rpc::MessageLimits as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{BuilderKind, Config};

use crate::builder::Builder;
use crate::builder::oci::OciBuilder;
use crate::builder::snapshot::{SnapshotBuilder, remove_tree};
use crate::log::LogBus;
use crate::objects::{ObjectLocation, Objects, Swept};
use crate::pipeline::Pipeline;
use crate::release::Releases;
use crate::service::BuildService;
use crate::store::Store;

/// The data directory as an absolute path (artifact URLs must be absolute).
fn data_dir(config: &Config) -> anyhow::Result<PathBuf> {
    slipway_storage::files::create_private_dir(&config.store.data_dir)
        .with_context(|| format!("create data dir {}", config.store.data_dir.display()))?;
    std::path::absolute(&config.store.data_dir)
        .with_context(|| format!("resolve {}", config.store.data_dir.display()))
}

/// The builder the configuration names.
pub fn builder_from_config(config: &Config) -> anyhow::Result<Arc<dyn Builder>> {
    let data = data_dir(config)?;
    Ok(match config.builder {
        BuilderKind::Snapshot => Arc::new(SnapshotBuilder::new(data.join("artifacts"))),
        BuilderKind::Oci => {
            let registry = config
                .registry
                .as_deref()
                .context("--registry is required with --builder oci")?;
            Arc::new(OciBuilder::new(
                config.buildah.clone(),
                registry,
                config.registry_insecure,
                data.join("buildah"),
            ))
        }
    })
}

/// The bus build logs go to: Redis Streams with `--redis-url` (shared by
/// every replica), else none (a replica streams live only its own builds).
/// Does no I/O: a Redis that is down degrades live logs, not the service.
pub fn log_bus(config: &Config) -> anyhow::Result<Option<Arc<LogBus>>> {
    let Some(redis) = config.redis() else {
        return Ok(None);
    };
    let prefix = redis.prefix.clone();
    let bus = slipway_events::RedisBus::new(redis).context("set up the redis event bus")?;
    tracing::info!(%prefix, "build logs on Redis Streams");
    Ok(Some(LogBus::new(Arc::new(bus))))
}

/// Opens the build store the configuration names: connects and migrates.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let db = slipway_storage::open(&config.database_url(), &config.store.data_dir, false).await?;
    let store = Store::new(db);
    store.migrate().await?;
    Ok(store)
}

/// Runs the service with the configured builder on `listener` until
/// `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let builder = builder_from_config(&config)?;
    run_with_builder(config, listener, shutdown, builder).await
}

/// Runs the service with an explicit builder (tests use this to put a
/// builder of their own behind the same pipeline).
pub async fn run_with_builder(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    builder: Arc<dyn Builder>,
) -> anyhow::Result<()> {
    let (routes, health) =
        slipway_rpc::standard_routes(&[SERVICE_NAME, ARCHIVE_SERVICE_NAME]).await;
    let data = data_dir(&config)?;
    let store = open_store(&config).await.context("open the build store")?;
    let location = match &config.object_store {
        Some(url) => ObjectLocation::parse(url.expose())?,
        None => ObjectLocation::Local(data.join("objects")),
    };
    let objects = Objects::open(&location).context("open the object store")?;
    let channel = slipway_rpc::channel(
        "release",
        &config.release_endpoints,
        &slipway_rpc::ChannelOptions {
            request_timeout: config.request_timeout,
            service_token: config.security.client_token("build"),
            ..Default::default()
        },
    )?;
    // Work directories of a previous run belong to builds that are over.
    let work_root = data.join("work");
    let stale = work_root.clone();
    tokio::task::spawn_blocking(move || remove_tree(&stale))
        .await?
        .with_context(|| format!("clear {}", work_root.display()))?;
    let sweeper = objects.clone();
    let background = CancellationToken::new();
    tokio::spawn(relay::relay_loop(
        store.clone(),
        channel.clone(),
        background.clone(),
    ));
    let pipeline = Pipeline {
        store,
        objects,
        builder,
        releases: Releases::new(channel),
        limits: config.limits(),
        work_root,
    };
    let mut service = BuildService::new(
        pipeline,
        config.max_concurrent_builds,
        config.build_timeout,
        background.clone(),
    );
    if let Some(bus) = log_bus(&config)? {
        service = service.with_log_bus(bus);
    }
    let service = Arc::new(service);
    tokio::spawn(service.clone().heartbeat_loop(background.clone()));
    if !config.source_retention.is_zero() {
        tokio::spawn(sweep_loop(
            sweeper,
            config.source_retention,
            background.clone(),
        ));
    }
    // Upload chunks (1 MiB from the gateway) are far below the message limit.
    let server =
        BuildServiceServer::new(grpc::Grpc::new(service.clone(), config.upload_idle_timeout))
            .with_message_limits();
    let archives = BuildArchiveServiceServer::new(archive_grpc::ArchiveGrpc::new(service.clone()))
        .with_message_limits();
    let routes = routes.add_service(server).add_service(archives);
    health.serving().await;
    tracing::info!(addr = %listener.local_addr()?, "build service serving");
    let options = slipway_rpc::ServerOptions {
        request_timeout: config.request_timeout,
        // Uploads last as long as they progress (grpc.rs bounds their idling).
        untimed_methods: &[grpc::UPLOAD_SOURCE],
        shutdown_grace: config.shutdown_grace,
        service_auth: config.security.server_auth(),
        ..Default::default()
    };
    slipway_rpc::serve(routes, listener, &options, health, background, shutdown).await?;
    // Shutdown stopped the running builds; let them record how they ended.
    service.wait_idle(config.shutdown_grace).await;
    Ok(())
}

/// Deletes sources older than `retention` now and then, until `stop`: at
/// start, then every tenth of the retention (at most hourly). Every replica
/// sweeps; deleting what another already deleted is not an error. A failed
/// sweep is logged and tried again at the next turn.
async fn sweep_loop(objects: Objects, retention: Duration, stop: CancellationToken) {
    let Ok(age) = chrono::Duration::from_std(retention) else {
        tracing::warn!("--source-retention is too long to count; sources are kept");
        return;
    };
    let every = (retention / 10).min(Duration::from_secs(3600));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        match objects.sweep_sources(chrono::Utc::now() - age).await {
            Ok(swept) if swept == Swept::default() => {}
            Ok(swept) => tracing::info!(
                sources = swept.sources,
                bytes = swept.bytes,
                staging = swept.staging,
                "removed sources older than {}",
                humantime::format_duration(retention)
            ),
            Err(e) => tracing::warn!("failed to sweep old sources: {e}"),
        }
    }
}
