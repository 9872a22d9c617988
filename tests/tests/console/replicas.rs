//! The console behind two gateway replicas (the scale setup): sessions are
//! in Redis, so a login on one gateway holds on the other, and a logout on
//! either ends it on both.

use slipway_e2e::cluster::{Cluster, ClusterOptions, PASSWORD};

use crate::http::Browser;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_console_login_holds_on_every_gateway_replica() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let mut on_a = Browser::new(cluster.addr("gateway-a"));
    let csrf = on_a.login(PASSWORD, "oncall").await;

    // The same cookie on the other gateway: logged in there too.
    let mut on_b = on_a.at(cluster.addr("gateway-b"));
    let page = on_b.get("/console/").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(page.csrf(), csrf, "one session, one token");

    // Logged out on B: A no longer knows the session either.
    let out = on_b.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303, "{out:?}");
    let page = on_a.get("/console/").await;
    assert_eq!(page.status, 303, "{page:?}");
    assert!(page.location().starts_with("/console/login"), "{page:?}");
}
