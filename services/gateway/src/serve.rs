//! The gateway's own serve loop (hyper's HTTP/1.1 connections, plain or
//! TLS), so that no client can hold the gateway by holding connections:
//!
//! - a request head must arrive within `--header-timeout` of the gateway
//!   starting to wait for it (a new connection, or the next request on a
//!   kept-alive one), so slowloris connections are closed;
//! - a connection with no request in progress that sends nothing for
//!   `--idle-timeout` is closed;
//! - a request body that sends nothing for `--body-idle-timeout` fails
//!   (an upload then stores nothing), however long the whole body takes;
//! - at most `--max-connections` are open (by default three quarters of
//!   the file-descriptor limit). When all are taken, the gateway closes the
//!   connections that have been idle longest to make room, and when none is
//!   idle, accepting waits: new connections queue in the kernel's backlog
//!   instead of failing;
//! - an accept that fails (out of file descriptors, say) is retried with
//!   a short back-off, so the gateway never stops accepting for good; out
//!   of descriptors, it first closes the longest idle connections;
//! - on shutdown, idle connections close at once and in-flight requests
//!   finish (for at most [`SHUTDOWN_GRACE`]).
//!
//! Websockets upgrade as usual; an upgraded connection keeps its place
//! under the cap until it closes. [`raise_fd_limit`] lifts the soft
//! file-descriptor limit to the hard one; the binaries call it at start.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight requests may run on after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The largest automatic `--max-connections`.
const MAX_AUTO_CONNECTIONS: u64 = 16_384;

/// Idle connections closed at once when the cap is reached: a burst of
/// new clients then costs the accept loop a wait every few connections,
/// not every one.
const EVICT_BATCH: usize = 16;

/// The longest pause between two tries of a failing accept.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How long connections, request bodies and streams may hold the gateway
/// (flattened into the gateway's `Config`).
#[derive(Clone, Debug, clap::Args)]
pub struct ConnectionArgs {
    /// How long a client may take to send a whole request head, counted
    /// from when the gateway starts waiting for it (at most 30 s).
    #[arg(long, env = "SLIPWAY_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// A connection with no request in progress that sends nothing for
    /// this long is closed.
    #[arg(long, env = "SLIPWAY_IDLE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// A request body (a source upload, say) that sends no bytes for this
    /// long fails; the whole body may take as long as it keeps moving.
    #[arg(long, env = "SLIPWAY_BODY_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_idle_timeout: Duration,

    /// Connections open at once (0: three quarters of the file-descriptor
    /// limit, at most 16384). When all are taken the longest idle one is
    /// closed for a new one; when none is idle, new ones wait.
    #[arg(long, env = "SLIPWAY_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Log and event streams (websockets) one credential may hold open at
    /// once; more are refused with 429.
    #[arg(long, env = "SLIPWAY_MAX_STREAMS_PER_CREDENTIAL", default_value_t = 64)]
    pub max_streams_per_credential: usize,
}

impl Default for ConnectionArgs {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(20),
            body_idle_timeout: Duration::from_secs(30),
            max_connections: 0,
            max_streams_per_credential: 64,
        }
    }
}

impl ConnectionArgs {
    /// Checks the values, without I/O.
    pub fn validate(&self) -> Result<(), String> {
        if self.header_timeout.is_zero() || self.header_timeout > Duration::from_secs(30) {
            return Err("--header-timeout must be more than 0 and at most 30s".into());
        }
        if self.idle_timeout.is_zero() || self.body_idle_timeout.is_zero() {
            return Err("--idle-timeout and --body-idle-timeout must be positive".into());
        }
        if self.max_streams_per_credential == 0 {
            return Err("--max-streams-per-credential must be at least 1".into());
        }
        Ok(())
    }

    /// The connection cap: the flag, or derived from the file-descriptor
    /// limit (leaving a quarter for the gateway's other files and sockets).
    pub fn connection_cap(&self) -> usize {
        if self.max_connections > 0 {
            return self.max_connections;
        }
        let fds = fd_limit().unwrap_or(1024);
        usize::try_from((fds / 4 * 3).clamp(64, MAX_AUTO_CONNECTIONS)).unwrap_or(64)
    }
}

/// Raises the soft limit on open files to the hard limit and returns the
/// limit now in force. Call it once, at start, before serving.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        if soft >= hard {
            return Some(soft);
        }
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => Some(hard),
            Err(e) => {
                tracing::warn!(soft, hard, "could not raise the open-file limit: {e}");
                Some(soft)
            }
        }
    }
    #[cfg(not(unix))]
    None
}

/// The soft limit on open files.
fn fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| soft)
    }
    #[cfg(not(unix))]
    None
}

/// What the loop serves: the gateway's router, or any infallible service
/// of axum requests.
pub trait App:
    tower::Service<
        axum::http::Request<Body>,
        Response = axum::http::Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<
            axum::http::Request<Body>,
            Response = axum::http::Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Serves `app` on `listener` (TLS when `tls` is given) until `shutdown`
/// completes, then lets in-flight requests finish.
pub async fn serve<S>(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    app: S,
    args: &ConnectionArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: App,
{
    let cap = args.connection_cap();
    tracing::info!(
        max_connections = cap,
        fd_limit = fd_limit(),
        "gateway connection limits"
    );
    let limits = Arc::new(Limits {
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        body_idle_timeout: args.body_idle_timeout,
        tls: tls.map(TlsAcceptor::from),
    });
    let registry = Arc::new(Registry::default());
    let permits = Arc::new(Semaphore::new(cap));
    let (stop_tx, stop_rx) = watch::channel(false);
    let connections = tokio_util::task::TaskTracker::new();
    let mut shutdown = pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = Duration::from_millis(5);
                    accepted
                }
                Err(e) => {
                    // Out of file descriptors and the like: close the
                    // longest idle connections to free some (they would
                    // time out anyway), and try again.
                    if is_out_of_descriptors(&e) {
                        registry.evict_idlest();
                    }
                    tracing::warn!(retry_in_ms = backoff.as_millis() as u64, "failed to accept a connection: {e}");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            },
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Full: make room by closing the longest idle connections;
                // with none idle, wait for one to end (later clients wait
                // in the backlog meanwhile).
                if !registry.evict_idlest() {
                    tracing::debug!("connection cap reached with every connection busy; waiting");
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        connections.spawn(connection(
            tcp,
            peer,
            permit,
            app.clone(),
            limits.clone(),
            registry.clone(),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "in-flight requests outlived the shutdown grace; closing"
        );
    }
    Ok(())
}

/// EMFILE or ENFILE: the process or the system has no descriptor left.
fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        use nix::errno::Errno;
        matches!(e.raw_os_error(), Some(n) if n == Errno::EMFILE as i32 || n == Errno::ENFILE as i32)
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// What every connection task needs.
struct Limits {
    header_timeout: Duration,
    idle_timeout: Duration,
    body_idle_timeout: Duration,
    tls: Option<TlsAcceptor>,
}

async fn connection<S>(
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    app: S,
    limits: Arc<Limits>,
    registry: Arc<Registry>,
    stop: watch::Receiver<bool>,
) where
    S: App,
{
    let state = Arc::new(ConnState::new());
    let id = registry.insert(state.clone());
    let io = Tracked {
        inner: tcp,
        state: state.clone(),
        _permit: permit,
    };
    match &limits.tls {
        None => http(io, peer, app, &limits, &state, stop).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io));
            tokio::select! {
                done = handshake => match done {
                    Ok(Ok(tls)) => http(tls, peer, app, &limits, &state, stop).await,
                    // A client that does not trust the certificate aborts
                    // here; that is its decision, not an error of ours.
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
                // A stalled handshake is as idle as a silent connection.
                () = state.evict.notified() => {
                    tracing::debug!(%peer, "closing a handshaking connection to make room");
                }
            }
        }
    }
    registry.remove(id);
}

/// Serves HTTP/1.1 on one connection until it ends, is upgraded, idles out,
/// is evicted, or shutdown completes it.
async fn http<I, S>(
    io: I,
    peer: SocketAddr,
    app: S,
    limits: &Limits,
    state: &Arc<ConnState>,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: App,
{
    let service = {
        let state = state.clone();
        let body_idle = limits.body_idle_timeout;
        hyper::service::service_fn(move |request: axum::http::Request<Incoming>| {
            let busy = Busy::start(&state);
            let mut request = request.map(|body| Body::new(IdleBody::new(body, body_idle)));
            request.extensions_mut().insert(ConnectInfo(peer));
            request
                .extensions_mut()
                .insert(ConnectionSlot(state.clone()));
            let response = app.clone().oneshot(request);
            async move {
                let response = response.await?;
                // The connection counts as busy until the answer is sent.
                Ok::<_, Infallible>(response.map(|body| Answer { body, _busy: busy }))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut conn = pin!(
        builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
    );
    let idle = limits.idle_timeout;
    let mut draining = *stop.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            changed = stop.changed(), if !draining => {
                if changed.is_err() || *stop.borrow() {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = state.evict.notified() => {
                if state.idle_for().is_some() {
                    tracing::debug!(%peer, "closing an idle connection to make room");
                    return;
                }
            }
            () = tokio::time::sleep(state.idle_check_in(idle)) => {
                if state.idle_for().is_some_and(|quiet| quiet >= idle) {
                    tracing::debug!(%peer, "closing an idle connection");
                    return;
                }
            }
        }
    }
}

/// A connection's activity, shared by its task, its I/O and its requests.
pub(crate) struct ConnState {
    /// Requests in progress (until their answer is sent).
    busy: AtomicUsize,
    /// When a byte last arrived or a request last finished (ms since
    /// `start`).
    last_active: AtomicU64,
    start: Instant,
    evict: tokio::sync::Notify,
    /// What must live as long as the connection (stream counts).
    held: Mutex<Vec<Box<dyn Send>>>,
}

impl ConnState {
    fn new() -> Self {
        Self {
            busy: AtomicUsize::new(0),
            last_active: AtomicU64::new(0),
            start: Instant::now(),
            evict: tokio::sync::Notify::new(),
            held: Mutex::new(Vec::new()),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_active.store(now, Ordering::Relaxed);
    }

    /// How long the connection has been idle, `None` while a request is in
    /// progress.
    fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_active.load(Ordering::Relaxed));
        Some(self.start.elapsed().saturating_sub(last))
    }

    /// When to look again whether the connection idled out.
    fn idle_check_in(&self, idle: Duration) -> Duration {
        match self.idle_for() {
            Some(quiet) => idle.saturating_sub(quiet).max(Duration::from_millis(10)),
            None => idle,
        }
    }
}

/// Marks a connection busy while a request is in progress.
struct Busy(Arc<ConnState>);

impl Busy {
    fn start(state: &Arc<ConnState>) -> Self {
        state.busy.fetch_add(1, Ordering::AcqRel);
        Self(state.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body, keeping its connection busy until it is sent (or
/// dropped); its length passes through, so `Content-Length` stays.
struct Answer {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.body)
    }
}

/// A request extension: keeps values alive as long as the request's
/// connection, which after a websocket upgrade is as long as the stream.
#[derive(Clone)]
pub(crate) struct ConnectionSlot(Arc<ConnState>);

impl ConnectionSlot {
    /// Keeps `value` until the connection closes.
    pub(crate) fn hold(&self, value: impl Send + 'static) {
        self.0
            .held
            .lock()
            .expect("the slot lock is never poisoned")
            .push(Box::new(value));
    }
}

/// The open connections, for eviction when the cap is reached.
#[derive(Default)]
struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Registry {
    fn insert(&self, state: Arc<ConnState>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, state);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Asks the (at most) [`EVICT_BATCH`] connections idle longest to
    /// close; false when none is idle.
    fn evict_idlest(&self) -> bool {
        let open = self.lock();
        let mut idle: Vec<_> = open
            .values()
            .filter_map(|state| Some((state.idle_for()?, state)))
            .collect();
        if idle.len() > EVICT_BATCH {
            idle.select_nth_unstable_by(EVICT_BATCH, |a, b| b.0.cmp(&a.0));
            idle.truncate(EVICT_BATCH);
        }
        for (_, state) in &idle {
            state.evict.notify_one();
        }
        !idle.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.open
            .lock()
            .expect("the registry lock is never poisoned")
    }
}

/// A connection's socket: records when bytes arrive, and holds the
/// connection's place under the cap (and what its slot holds) until it is
/// dropped, which for an upgraded connection is when the stream ends.
struct Tracked<I> {
    inner: I,
    state: Arc<ConnState>,
    _permit: OwnedSemaphorePermit,
}

impl<I> Drop for Tracked<I> {
    fn drop(&mut self) {
        if let Ok(mut held) = self.state.held.lock() {
            held.clear();
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request body that sent nothing for the body idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no request body data for {}", humantime::format_duration(*.0))]
pub struct BodyStalled(pub Duration);

/// A request body that fails with [`BodyStalled`] when the client sends
/// nothing for `idle` while the handler waits for it (time the handler
/// spends elsewhere does not count).
struct IdleBody {
    inner: Incoming,
    idle: Duration,
    /// Running while the handler waits for data.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl IdleBody {
    fn new(inner: Incoming, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            waiting: None,
        }
    }
}

impl hyper::body::Body for IdleBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.waiting = None;
                        Poll::Ready(Some(Err(Box::new(BodyStalled(idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_timeout_is_at_most_thirty_seconds() {
        let ok = ConnectionArgs::default();
        ok.validate().unwrap();
        let long = ConnectionArgs {
            header_timeout: Duration::from_secs(31),
            ..ConnectionArgs::default()
        };
        assert!(long.validate().unwrap_err().contains("at most 30s"));
        let explicit = ConnectionArgs {
            max_connections: 7,
            ..ConnectionArgs::default()
        };
        assert_eq!(explicit.connection_cap(), 7);
        assert!(ConnectionArgs::default().connection_cap() >= 64);
    }
}
