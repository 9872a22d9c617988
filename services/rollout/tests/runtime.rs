//! The local runtime against the runtime conformance suite.

use std::sync::Arc;

use slipway_events::NewEvent;
use slipway_rollout::crypto::SpecCipher;
use slipway_rollout::runtime::EventSink;
use slipway_rollout::runtime::local::{LocalConfig, LocalRuntime};
use slipway_rollout::store::Store;

use crate::helpers::{AppGuard, TestAppFixture, app_name};

struct Discard;

impl EventSink for Discard {
    fn emit(&self, _: NewEvent) {}
}

#[tokio::test]
async fn the_local_runtime_passes_the_conformance_suite() {
    let db = slipway_storage::testing::sqlite().await;
    let store = Store::new(db.db.clone(), SpecCipher::generate());
    store.migrate().await.unwrap();
    let dir = crate::helpers::private_and_apps_dirs();
    let runtime = LocalRuntime::start(
        store,
        Arc::new(Discard),
        LocalConfig {
            data_dir: dir.path().join("data"),
            ports: None,
            restart_limit: 3,
            apps_dir: dir.path().join("apps"),
            app_uids: slipway_rollout::runtime::local::UidRange::DEFAULT,
        },
    )
    .await
    .unwrap();
    let app = app_name("conformance");
    let _guard = AppGuard(app.clone());
    slipway_rollout::runtime::conformance::run(&runtime, &TestAppFixture, &app).await;
    let app = app_name("oneoffs");
    let _guard = AppGuard(app.clone());
    slipway_rollout::runtime::conformance::oneoffs::run(&runtime, &TestAppFixture, &app).await;
}
