//! A fake of the Kubernetes API server and of the controllers behind it,
//! for tests (no API server can run on the development machines). It
//! follows the real API where Slipway's Kubernetes runtime, and `kubectl`,
//! depend on it:
//!
//! - **API**: a global resourceVersion, `metadata.generation` bumped on spec
//!   changes, the status subresource, server-side apply (with
//!   `managedFields` times), 409 on a stale resourceVersion, 422 on an
//!   immutable or invalid field, and every write checked against the
//!   `apps/v1` / `core/v1` schemas by a round trip through k8s-openapi: an
//!   unknown or mistyped field is a 400, as with field validation `Strict`
//!   ([`schema`]). Watches stream JSON lines, with 410 for compacted
//!   versions; lists and watches take label selectors (equality and set
//!   based) and field selectors (`metadata.name=…`); `deletecollection`;
//!   discovery (`/api`, `/apis`, …) so the real `kubectl` reads it.
//! - **Controllers** ([`FakeKube::run_controller`]): the Deployment
//!   controller with ReplicaSets (`<deployment>-<template hash>`), the
//!   surge/unavailable arithmetic of a rolling update, conditions with
//!   reasons and timestamps that persist as the real ones do (a
//!   `ProgressDeadlineExceeded` outlives a rollback until progress shows),
//!   `ReplicaFailure`, `paused`, garbage collection of old ReplicaSets
//!   beyond `revisionHistoryLimit` and of dependents; the ReplicaSet
//!   controller; a kubelet whose pods terminate over their grace period
//!   (bounded by `pod_stop`) and behave as their image's tag says:
//!
//!   | tag | the pod |
//!   | --- | --- |
//!   | `crash` | exits at start, over and over: `CrashLoopBackOff`, `restartCount` growing, `BackOff` events |
//!   | `unready` | runs, never passes its readiness probe: `Unhealthy` events every probe period |
//!   | `slow-N`, `slow-Nms` | runs, becomes ready N seconds (milliseconds) after it was created (probe failures until then) |
//!   | `pull-error` | cannot be pulled: `ErrImagePull` (manifest not found), then `ImagePullBackOff` |
//!   | `unschedulable` | stays `Pending`: `PodScheduled=False/Unschedulable`, `FailedScheduling` events |
//!   | `forbidden` | is never created: the ReplicaSet reports `FailedCreate` (quota), the Deployment `ReplicaFailure` |
//!   | anything else | becomes ready at once |
//!
//!   The tag is the part after the last `:` of the image's last path
//!   segment (`registry.test/shop/web:slow-5`); an image pinned by digest
//!   only is "anything else".
//!
//! - **Real processes** (`exec.rs`): a pod with `restartPolicy: Never` (a
//!   one-off process) runs its container's command as a real local process
//!   with the pod's env (its `envFrom` Secrets and `env`), is `Running`
//!   while it runs, then `Succeeded` or `Failed` with the exit code;
//!   `activeDeadlineSeconds` kills it (`DeadlineExceeded`), and deleting it
//!   kills its processes. The `exec` subresource is served over a websocket
//!   with the Kubernetes channel framing (`v5.channel.k8s.io` or
//!   `v4.channel.k8s.io`: stdin, stdout, stderr, the error channel's exit
//!   `Status`, stdin close), running the command as a real local process
//!   with the pod's env, in any running pod.
//!
//! Tests script it as well: deny a verb (RBAC), fail the next calls, drop
//! or hold watches, compact history, and play the controllers by hand
//! ([`script`]). The binary `slipway-kube-fake` serves it on an address
//! and writes a kubeconfig, so that services and `kubectl` can be pointed
//! at it by hand.

mod controller;
mod exec;
pub mod schema;
mod script;
mod server;
mod store;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

pub use self::script::{PodFate, template_hash};
pub use self::server::Recorded;
use self::store::Store;

/// How the fake's cluster behaves in time.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// How often the controllers and the kubelet act.
    pub tick: Duration,
    /// How long a pod takes to stop once deleted (its process exiting on
    /// SIGTERM), at most its `terminationGracePeriodSeconds`.
    pub pod_stop: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(50),
            pod_stop: Duration::from_millis(500),
        }
    }
}

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
    /// While true, the controllers leave Deployments where they are.
    paused: AtomicBool,
    options: Options,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake API server.
#[derive(Clone)]
pub struct FakeKube {
    pub(crate) shared: Arc<Shared>,
    /// Where it serves.
    pub addr: SocketAddr,
}

impl FakeKube {
    /// Serves on 127.0.0.1:0 with default [`Options`]. The controllers do
    /// not run until [`FakeKube::run_controller`]; terminating namespaces
    /// are finalised in the background, as the namespace controller does.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        Self::serve(listener, Options::default())
    }

    /// Serves on `listener`.
    pub fn serve(listener: tokio::net::TcpListener, options: Options) -> Self {
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
            paused: AtomicBool::new(false),
            options,
        });
        let addr = listener.local_addr().expect("a bound listener");
        let app = axum::Router::new()
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}/exec",
                axum::routing::get(exec::handle).post(exec::handle),
            )
            .fallback(server::handle)
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            while let Some(shared) = weak.upgrade() {
                shared.lock().store.finalize_namespaces();
                drop(shared);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { shared, addr }
    }

    /// A kube client pointed at the fake (plain HTTP, no auth).
    pub fn client(&self) -> kube::Client {
        let url: http::Uri = format!("http://{}", self.addr)
            .parse()
            .expect("a socket address makes a URI");
        kube::Client::try_from(kube::Config::new(url)).expect("a client for plain HTTP")
    }

    /// A kubeconfig for the fake (context `fake`).
    pub fn kubeconfig(&self) -> String {
        kubeconfig(self.addr)
    }

    /// Writes [`FakeKube::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// An object, if it exists.
    pub fn object(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let key = (resource.to_owned(), ns.to_owned(), name.to_owned());
        self.shared.lock().store.objects.get(&key).cloned()
    }

    /// Objects of a resource in a namespace ("" = all).
    pub fn objects(&self, resource: &str, ns: &str) -> Vec<Value> {
        self.shared.lock().store.list(resource, ns, "")
    }

    /// RBAC: refuse `verb` on `resource` from now on.
    pub fn deny(&self, verb: &str, resource: &str) {
        self.shared
            .lock()
            .denied
            .push((verb.to_owned(), resource.to_owned()));
    }

    /// Answers the next `n` non-watch requests with `code`.
    pub fn fail_next(&self, code: u16, n: usize) {
        self.shared
            .lock()
            .faults
            .extend(std::iter::repeat_n(code, n));
    }

    /// Ends every open watch, as a dropped connection or a restarted API
    /// server would.
    pub fn drop_watches(&self) {
        self.shared.drops.send_modify(|n| *n += 1);
    }

    /// Holds new watch requests back (true) or lets them through (false).
    pub fn hold_watches(&self, hold: bool) {
        self.shared.hold.send_replace(hold);
    }

    /// Compacts history: watches from any earlier version get 410 Gone.
    pub fn compact(&self) {
        self.shared.lock().store.compact();
    }

    /// Watches streaming now.
    pub fn open_watches(&self) -> usize {
        self.shared.lock().open_watches
    }

    /// Holds every Deployment where it is (true): the controllers leave
    /// them alone, while pods keep living; or lets them move on (false).
    pub fn pause_controller(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::SeqCst);
    }
}

/// A kubeconfig pointing at `addr` over plain HTTP, context `fake`.
pub fn kubeconfig(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
         current-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
    )
}
