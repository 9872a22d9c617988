//! A fake of the Kubernetes API at the HTTP level, for the Kubernetes
//! runtime's tests (no API server can run here). It follows the real
//! API's semantics for what the backend uses: a global resourceVersion,
//! `metadata.generation` bumped on spec changes, the status subresource,
//! server-side apply, 422 on an invalid or immutable field, 409 on a stale
//! resourceVersion, watches as JSON lines with 410 for compacted versions.
//!
//! Tests script it: deny a verb (RBAC), fail the next calls, drop or hold
//! watches, compact history, and play the cluster's controllers
//! ([`controller`]): by hand step by step, or automatically by image name.

pub(crate) mod controller;
mod server;
mod store;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::watch;

pub(crate) use self::server::Recorded;
use self::store::Store;

/// State behind the fake's lock.
pub(crate) struct FakeState {
    pub(crate) store: Store,
    pub(crate) requests: Vec<Recorded>,
    /// (verb, resource) pairs RBAC refuses.
    pub(crate) denied: Vec<(String, String)>,
    /// HTTP statuses for the next non-watch requests.
    pub(crate) faults: VecDeque<u16>,
    /// Watches streaming now.
    pub(crate) open_watches: usize,
}

/// What the server and the handle share.
pub(crate) struct Shared {
    state: Mutex<FakeState>,
    /// Bumped to end every open watch.
    drops: watch::Sender<u64>,
    /// While true, new watch requests wait.
    hold: watch::Sender<bool>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake API server.
#[derive(Clone)]
pub(crate) struct FakeKube {
    pub(crate) shared: Arc<Shared>,
    pub(crate) addr: SocketAddr,
}

impl FakeKube {
    /// Serves on 127.0.0.1:0. Terminating namespaces are finalised in the
    /// background, as the namespace controller does.
    pub(crate) async fn start() -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(FakeState {
                store: Store::new(),
                requests: Vec::new(),
                denied: Vec::new(),
                faults: VecDeque::new(),
                open_watches: 0,
            }),
            drops: watch::channel(0).0,
            hold: watch::channel(false).0,
        });
        let app = axum::Router::new()
            .fallback(server::handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            while let Some(shared) = weak.upgrade() {
                shared.lock().store.finalize_namespaces();
                drop(shared);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        Self { shared, addr }
    }

    /// A kube client pointed at the fake (plain HTTP, no auth).
    pub(crate) fn client(&self) -> kube::Client {
        let url: http::Uri = format!("http://{}", self.addr).parse().unwrap();
        let config = kube::Config::new(url);
        kube::Client::try_from(config).unwrap()
    }

    /// Every request so far.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// An object, if it exists.
    pub(crate) fn object(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let key = (resource.to_owned(), ns.to_owned(), name.to_owned());
        self.shared.lock().store.objects.get(&key).cloned()
    }

    /// Objects of a resource in a namespace.
    pub(crate) fn objects(&self, resource: &str, ns: &str) -> Vec<Value> {
        self.shared.lock().store.list(resource, ns, "")
    }

    /// RBAC: refuse `verb` on `resource` from now on.
    pub(crate) fn deny(&self, verb: &str, resource: &str) {
        self.shared
            .lock()
            .denied
            .push((verb.to_owned(), resource.to_owned()));
    }

    /// Answers the next `n` non-watch requests with `code`.
    pub(crate) fn fail_next(&self, code: u16, n: usize) {
        self.shared
            .lock()
            .faults
            .extend(std::iter::repeat_n(code, n));
    }

    /// Ends every open watch, as a dropped connection or a restarted API
    /// server would.
    pub(crate) fn drop_watches(&self) {
        self.shared.drops.send_modify(|n| *n += 1);
    }

    /// Holds new watch requests back (true) or lets them through (false).
    pub(crate) fn hold_watches(&self, hold: bool) {
        self.shared.hold.send_replace(hold);
    }

    /// Compacts history: watches from any earlier version get 410 Gone.
    pub(crate) fn compact(&self) {
        self.shared.lock().store.compact();
    }

    /// Watches streaming now.
    pub(crate) fn open_watches(&self) -> usize {
        self.shared.lock().open_watches
    }
}
