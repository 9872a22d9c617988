//! Balanced channels (`slipway_rpc::channel` with several endpoints) keep
//! calls off replicas that are gone or draining, and send a call that no
//! server read to another replica, exactly once each: the failures the
//! scale setup showed (`tcp connect error` for as long as a killed replica
//! stayed in the list) cannot happen.
//!
//! Replicas here are servers built with `slipway_rpc::serve`; a "killed" one
//! sits behind a TCP relay the test cuts (every connection dropped, the
//! port closed) and restores on the same port.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tower::ServiceExt as _;

/// A gRPC service that counts its calls and answers OK.
#[derive(Clone)]
struct Count(Arc<AtomicUsize>);

impl tonic::server::NamedService for Count {
    const NAME: &'static str = "test.Count";
}

impl tower::Service<http::Request<Body>> for Count {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: http::Request<Body>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(tonic::Status::ok("counted").into_http()) })
    }
}

/// One replica: its address, call count and health.
struct Server {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    health: slipway_rpc::Health,
    stop: CancellationToken,
}

async fn server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (routes, health) = slipway_rpc::standard_routes(&["test.Count"]).await;
    let routes = routes.add_service(Count(calls.clone()));
    health.serving().await;
    let stop = CancellationToken::new();
    let (h, s) = (health.clone(), stop.clone());
    tokio::spawn(async move {
        let options = slipway_rpc::ServerOptions::default();
        let shutdown = async move { s.cancelled().await };
        slipway_rpc::serve(
            routes,
            listener,
            &options,
            h,
            CancellationToken::new(),
            shutdown,
        )
        .await
        .unwrap();
    });
    Server {
        addr,
        calls,
        health,
        stop,
    }
}

/// A TCP relay in front of a server: cut, it drops every connection and
/// closes its port, as a killed process would.
struct Relay {
    addr: SocketAddr,
    upstream: SocketAddr,
    task: Mutex<Option<JoinHandle<()>>>,
    /// While set, connections are accepted and dropped at once (counted
    /// in `dropped`).
    refuse: Arc<std::sync::atomic::AtomicBool>,
    dropped: Arc<AtomicUsize>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Self {
            addr: listener.local_addr().unwrap(),
            upstream,
            task: Mutex::new(None),
            refuse: Arc::default(),
            dropped: Arc::default(),
        };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: TcpListener) {
        let upstream = self.upstream;
        let (refuse, dropped) = (self.refuse.clone(), self.dropped.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                if refuse.load(Ordering::SeqCst) {
                    dropped.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Every connection dropped, the port closed.
    async fn cut(&self) {
        let task = self.task.lock().unwrap().take().expect("relay running");
        task.abort();
        let _ = task.await;
    }

    /// Listening again on the same port.
    async fn restore(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn channel(endpoints: &[SocketAddr]) -> slipway_rpc::Channel {
    let endpoints: Vec<String> = endpoints.iter().map(|a| format!("http://{a}")).collect();
    slipway_rpc::channel("test", &endpoints, &Default::default()).unwrap()
}

/// One call; its `grpc-status` (a transport failure panics with the error).
async fn call(channel: &slipway_rpc::Channel) -> Result<String, String> {
    let request = http::Request::builder()
        .uri("http://test/test.Count/Call")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        // One empty message, so the request has a body to send.
        .body(Body::new(String::from("\0\0\0\0\0")))
        .unwrap();
    match channel.clone().oneshot(request).await {
        Ok(response) => Ok(response.headers()["grpc-status"]
            .to_str()
            .unwrap()
            .to_owned()),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// Polls `cond` every 10 ms for up to 10 s.
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_dead_endpoint_costs_no_call_and_nothing_runs_twice() {
    let live = server().await;
    let channel = channel(&[closed_port().await, live.addr]);
    for i in 0..40 {
        assert_eq!(call(&channel).await, Ok("0".to_owned()), "call {i}");
    }
    assert_eq!(live.calls.load(Ordering::SeqCst), 40);
}

#[tokio::test]
async fn a_killed_replica_leaves_the_set_and_is_probed_back_in() {
    let (a, b) = (server().await, server().await);
    let relay = Relay::start(a.addr).await;
    let channel = channel(&[relay.addr, b.addr]);
    eventually("both replicas get calls", async || {
        assert_eq!(call(&channel).await, Ok("0".to_owned()));
        a.calls.load(Ordering::SeqCst) > 0 && b.calls.load(Ordering::SeqCst) > 0
    })
    .await;

    relay.cut().await;
    let (before_a, before_b) = (
        a.calls.load(Ordering::SeqCst),
        b.calls.load(Ordering::SeqCst),
    );
    for i in 0..40 {
        assert_eq!(
            call(&channel).await,
            Ok("0".to_owned()),
            "call {i} after the kill"
        );
    }
    assert_eq!(
        a.calls.load(Ordering::SeqCst),
        before_a,
        "calls reached a cut replica"
    );
    assert_eq!(
        b.calls.load(Ordering::SeqCst),
        before_b + 40,
        "a call ran twice or not at all"
    );

    relay.restore().await;
    eventually("the restored replica gets calls again", async || {
        assert_eq!(call(&channel).await, Ok("0".to_owned()));
        a.calls.load(Ordering::SeqCst) > before_a
    })
    .await;
}

#[tokio::test]
async fn a_draining_replica_gets_no_new_calls() {
    let (a, b) = (server().await, server().await);
    let channel = channel(&[a.addr, b.addr]);
    eventually("both replicas get calls", async || {
        assert_eq!(call(&channel).await, Ok("0".to_owned()));
        a.calls.load(Ordering::SeqCst) > 0 && b.calls.load(Ordering::SeqCst) > 0
    })
    .await;
    a.health.not_serving().await;
    // The watcher hears NOT_SERVING within moments; from then on no call
    // goes to A.
    eventually("the draining replica leaves the set", async || {
        let before = a.calls.load(Ordering::SeqCst);
        for _ in 0..10 {
            assert_eq!(call(&channel).await, Ok("0".to_owned()));
        }
        a.calls.load(Ordering::SeqCst) == before
    })
    .await;
    a.stop.cancel();
    b.stop.cancel();
}

#[tokio::test]
async fn a_call_waits_for_the_only_replica_to_come_back() {
    let a = server().await;
    let relay = Relay::start(a.addr).await;
    let channel = channel(&[relay.addr]);
    assert_eq!(call(&channel).await, Ok("0".to_owned()));
    // Every connection dropped and new ones refused, as while a process
    // restarts.
    relay.refuse.store(true, Ordering::SeqCst);
    relay.cut().await;
    relay.restore().await;
    let pending = tokio::spawn({
        let channel = channel.clone();
        async move { call(&channel).await }
    });
    eventually("the call tried the replica twice", async || {
        relay.dropped.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(!pending.is_finished(), "the call gave up while retrying");
    relay.refuse.store(false, Ordering::SeqCst);
    assert_eq!(pending.await.unwrap(), Ok("0".to_owned()));
    assert_eq!(a.calls.load(Ordering::SeqCst), 2);
}

/// A release service stand-in whose calls reach it and never answer.
#[derive(Clone)]
struct Hang(Arc<AtomicUsize>);

impl tonic::server::NamedService for Hang {
    const NAME: &'static str = "slipway.release.v1.ReleaseService";
}

impl tower::Service<http::Request<Body>> for Hang {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: http::Request<Body>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::pending())
    }
}

/// The same stand-in answering OK.
#[derive(Clone)]
struct Answer(Arc<AtomicUsize>);

impl tonic::server::NamedService for Answer {
    const NAME: &'static str = "slipway.release.v1.ReleaseService";
}

impl tower::Service<http::Request<Body>> for Answer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: http::Request<Body>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(tonic::Status::ok("answered").into_http()) })
    }
}

async fn release_standin(hang: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (routes, health) = slipway_rpc::standard_routes(&[]).await;
    let routes = if hang {
        routes.add_service(Hang(calls.clone()))
    } else {
        routes.add_service(Answer(calls.clone()))
    };
    health.serving().await;
    tokio::spawn(async move {
        let options = slipway_rpc::ServerOptions::default();
        slipway_rpc::serve(
            routes,
            listener,
            &options,
            health,
            CancellationToken::new(),
            std::future::pending(),
        )
        .await
        .unwrap();
    });
    (addr, calls)
}

/// A `ChangeEnv` whose answer is lost (the replica it reached is cut off
/// mid-call): with an idempotency key it is sent to the other replica; without
/// one it fails, since it may have been applied.
#[tokio::test]
async fn a_keyed_call_that_lost_its_answer_is_sent_again() {
    for keyed in [true, false] {
        let (hanging, hung) = release_standin(true).await;
        let (answering, answered) = release_standin(false).await;
        let relay = Relay::start(hanging).await;
        // The first call of a fresh channel goes to its first endpoint.
        let channel = channel(&[relay.addr, answering]);
        let mut request = http::Request::builder()
            .uri("http://test/slipway.release.v1.ReleaseService/ChangeEnv")
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if keyed {
            request = request.header(slipway_rpc::idempotency::KEY, "k-1");
        }
        let request = request.body(Body::new(String::from("\0\0\0\0\0"))).unwrap();
        let pending = tokio::spawn(channel.clone().oneshot(request));
        eventually("the call reached the first replica", async || {
            hung.load(Ordering::SeqCst) == 1
        })
        .await;
        relay.cut().await;
        let answer = pending.await.unwrap();
        if keyed {
            let response = answer.expect("the keyed call was sent again");
            assert_eq!(response.headers()["grpc-status"], "0");
            assert_eq!(answered.load(Ordering::SeqCst), 1);
        } else {
            assert!(answer.is_err(), "an unkeyed write was sent twice");
            assert_eq!(answered.load(Ordering::SeqCst), 0);
        }
    }
}

/// A keyed write to the only replica while it restarts (connections
/// refused for longer than three quick attempts take): each refused attempt
/// was never read, so it is no resend; the call waits within its budget and
/// is answered once the replica is back, once.
#[tokio::test]
async fn a_keyed_call_waits_for_the_only_replica_to_come_back() {
    let (answering, answered) = release_standin(false).await;
    let relay = Relay::start(answering).await;
    let channel = channel(&[relay.addr]);
    relay.refuse.store(true, Ordering::SeqCst);
    relay.cut().await;
    relay.restore().await;
    let request = http::Request::builder()
        .uri("http://test/slipway.release.v1.ReleaseService/ChangeEnv")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(slipway_rpc::idempotency::KEY, "k-restart")
        .body(Body::new(String::from("\0\0\0\0\0")))
        .unwrap();
    let pending = tokio::spawn(channel.clone().oneshot(request));
    eventually("the call was refused more than three times", async || {
        relay.dropped.load(Ordering::SeqCst) >= 5
    })
    .await;
    if pending.is_finished() {
        panic!(
            "the keyed call gave up while the replica restarted: {:?}",
            pending.await.unwrap().map(|r| r.headers().clone())
        );
    }
    relay.refuse.store(false, Ordering::SeqCst);
    let response = pending.await.unwrap().expect("answered once back");
    assert_eq!(response.headers()["grpc-status"], "0");
    assert_eq!(answered.load(Ordering::SeqCst), 1);
}

/// A replica shut down the way SIGTERM does it (NOT_SERVING, the drain
/// delay, in-flight calls finished, port closed) under a steady stream of
/// calls costs none of them: callers stop sending before the port closes,
/// and a call that still finds it closed was never read and goes to the
/// other replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_shut_down_under_load_costs_no_call() {
    let (a, b) = (server().await, server().await);
    let channel = channel(&[a.addr, b.addr]);
    eventually("both replicas get calls", async || {
        assert_eq!(call(&channel).await, Ok("0".to_owned()));
        a.calls.load(Ordering::SeqCst) > 0 && b.calls.load(Ordering::SeqCst) > 0
    })
    .await;
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (channel, closed) = (channel.clone(), closed.clone());
            tokio::spawn(async move {
                let (mut failed, mut after) = (Vec::new(), 0);
                // Calls until the replica's port is closed, and 50 more.
                while after < 50 {
                    if let Err(e) = call(&channel).await {
                        failed.push(e);
                    }
                    if closed.load(Ordering::SeqCst) {
                        after += 1;
                    }
                }
                failed
            })
        })
        .collect();
    a.stop.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(a.addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica never shut down"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    closed.store(true, Ordering::SeqCst);
    for worker in load {
        let failed = worker.await.unwrap();
        assert!(
            failed.is_empty(),
            "calls failed across a shutdown: {failed:?}"
        );
    }
}
