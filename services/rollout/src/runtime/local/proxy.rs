//! The stable per-service port: a TCP proxy that forwards each connection
//! to a healthy process of the service, round robin. A process leaving the
//! rotation gets no new connections while those in flight finish (the
//! runtime waits for them before SIGTERM). A connection that arrives while
//! no process is healthy, or whose backend refuses, waits briefly and tries
//! the next one, so clients see no failure during a rollout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How long a connection waits for a healthy process before it is dropped.
const WAIT_FOR_BACKEND: Duration = Duration::from_secs(10);
/// Upper bound of one connect to a process.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A process the proxy may forward to.
#[derive(Clone, Debug)]
pub(super) struct Backend {
    pub(super) port: u16,
    /// Connections in flight to it (shared with the process record).
    pub(super) conns: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct Shared {
    backends: RwLock<Vec<Backend>>,
    changed: Notify,
    next: AtomicUsize,
}

/// A listening stable port.
#[derive(Debug)]
pub(super) struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `127.0.0.1:port` (0: the OS picks).
    pub(super) async fn bind(port: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self { addr, shared, task })
    }

    /// The port clients connect to.
    pub(super) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Replaces the set of healthy processes.
    pub(super) fn set_backends(&self, backends: Vec<Backend>) {
        *self
            .shared
            .backends
            .write()
            .unwrap_or_else(|e| e.into_inner()) = backends;
        self.shared.changed.notify_waiters();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((inbound, _)) => {
                tokio::spawn(forward(inbound, shared.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!("proxy accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Counts a connection against a backend for as long as it lives.
struct ConnGuard(Arc<AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn forward(mut inbound: TcpStream, shared: Arc<Shared>) {
    let _ = inbound.set_nodelay(true);
    let give_up = tokio::time::Instant::now() + WAIT_FOR_BACKEND;
    loop {
        let changed = shared.changed.notified();
        let backends = shared
            .backends
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let start = shared.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..backends.len() {
            let backend = &backends[(start + i) % backends.len()];
            // Counted before connecting, so a drain that starts now waits for us.
            backend.conns.fetch_add(1, Ordering::AcqRel);
            let guard = ConnGuard(backend.conns.clone());
            let connect = TcpStream::connect(("127.0.0.1", backend.port));
            if let Ok(Ok(mut outbound)) = tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                drop(guard);
                return;
            }
        }
        if tokio::time::Instant::now() >= give_up {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
    }
}
