//! The release service: apps, the append-only release ledger, env snapshots
//! sealed at rest, promotions and the audit log, served over gRPC.
//!
//! `run` is the whole service; `main.rs` only parses config and binds.

pub mod access;
pub mod config;
pub mod crypto;
pub mod error;
pub mod grpc;
pub mod model;
pub mod rollout;
pub mod service;
pub mod store;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use slipway_api::release::v1::audit_service_server::{
    AuditServiceServer, SERVICE_NAME as AUDIT_SERVICE_NAME,
};
use slipway_api::release::v1::release_service_server::{ReleaseServiceServer, SERVICE_NAME};
use slipway_api::release::v1::token_service_server::{
    SERVICE_NAME as TOKEN_SERVICE_NAME, TokenServiceServer,
};
use slipway_api::release::v1::webhook_service_server::{
    SERVICE_NAME as WEBHOOK_SERVICE_NAME, WebhookServiceServer,
};
use slipway_api::rollout::v1::rollout_service_client::RolloutServiceClient;
use slipway_rpc::MessageLimits as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::crypto::EnvCipher;
use crate::rollout::Rollouts;
use crate::service::ReleaseService;
use crate::store::Store;

/// Opens the store the configuration names: connects, migrates, loads the key.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    // The dir is made owner-only before the key is generated into it.
    let db = slipway_storage::open(
        &config.database_url(),
        &config.store.data_dir,
        config.env_key.is_none(),
    )
    .await?;
    let key_file = config.store.data_dir.join("env.key");
    if config.env_key.is_none() && key_file.exists() {
        slipway_storage::files::tighten(&key_file, 0o600)
            .with_context(|| format!("tighten {}", key_file.display()))?;
    }
    let cipher = match &config.env_key {
        Some(key) => EnvCipher::from_base64(key.expose())?,
        None => EnvCipher::load_or_create(&key_file)?,
    };
    let store = Store::new(db, cipher);
    store.migrate().await?;
    Ok(store)
}

/// Runs the service on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (routes, health) = slipway_rpc::standard_routes(&[
        SERVICE_NAME,
        TOKEN_SERVICE_NAME,
        AUDIT_SERVICE_NAME,
        WEBHOOK_SERVICE_NAME,
    ])
    .await;
    let store = open_store(&config)
        .await
        .context("open the release store")?;
    let rollouts = if config.rollout_endpoints.is_empty() {
        tracing::warn!(
            "no rollout endpoint configured: promotions stay pending until a rollout driver completes them"
        );
        Rollouts::Detached
    } else {
        let channel = slipway_rpc::channel(
            "rollout",
            &config.rollout_endpoints,
            &slipway_rpc::ChannelOptions {
                request_timeout: config.request_timeout,
                service_token: config.security.client_token("release"),
                ..Default::default()
            },
        )?;
        Rollouts::Grpc(RolloutServiceClient::new(channel).with_message_limits())
    };
    let deadline = config.default_deadline.as_secs() as u32;
    let service = Arc::new(ReleaseService::new(store, rollouts, deadline));
    let background = CancellationToken::new();
    tokio::spawn(
        service
            .clone()
            .redispatch_loop(config.redispatch_every, background.clone()),
    );
    let webhook_args = config.webhooks.clone();
    let dispatcher = Arc::new(
        webhooks::deliver::Dispatcher::new(service.store().clone(), webhook_args.clone())
            .context("set up webhook delivery")?,
    );
    tokio::spawn(dispatcher.run(background.clone()));
    let webhook_rpc =
        webhooks::grpc::Grpc::new(service.store().clone(), webhook_args.webhook_allow_private);
    // Tokens and the audit trail (see access.rs).
    let access = access::Access::new(
        service.store().clone(),
        match &config.token_key {
            Some(key) => access::TokenKey::from_base64(key.expose())
                .map_err(|e| anyhow::anyhow!("--token-key: {e}"))?,
            None => access::TokenKey::new(service.store().derived_token_key()),
        },
    );
    let routes = routes
        .add_service(TokenServiceServer::new(access.clone()).with_message_limits())
        .add_service(AuditServiceServer::new(access).with_message_limits())
        .add_service(ReleaseServiceServer::new(grpc::Grpc::new(service)).with_message_limits())
        // Webhook messages are small: tonic's defaults (the same 4 MiB) hold.
        .add_service(WebhookServiceServer::new(webhook_rpc));
    health.serving().await;
    tracing::info!(addr = %listener.local_addr()?, "release service serving");
    let options = slipway_rpc::ServerOptions {
        request_timeout: config.request_timeout,
        shutdown_grace: config.shutdown_grace,
        service_auth: config.security.server_auth(),
        ..Default::default()
    };
    slipway_rpc::serve(routes, listener, &options, health, background, shutdown).await?;
    Ok(())
}
