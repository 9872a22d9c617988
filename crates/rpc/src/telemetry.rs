//! The telemetry pieces of the gRPC stacks: the server layer that records
//! every call's latency by method and status code, and the client
//! [`Channel`] that carries the caller's trace context (W3C `traceparent`)
//! on every outgoing call, so that a trace crosses every hop. The request
//! span itself (with its parent taken from the caller's `traceparent`) is
//! `tower_http`'s `TraceLayer` with [`slipway_telemetry::RequestSpan`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::body::Body;

/// Records `rpc.server.duration` for every call below it; sits right under
/// the request span and above the deadline and load shedding, so timed-out
/// and shed calls are counted (with CANCELLED and RESOURCE_EXHAUSTED).
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerMetricsLayer;

impl<S> tower::Layer<S> for ServerMetricsLayer {
    type Service = ServerMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerMetrics { inner }
    }
}

/// The service of [`ServerMetricsLayer`].
#[derive(Clone, Debug)]
pub struct ServerMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for ServerMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let start = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            // Errors from handlers come back trailers-only (grpc-status in
            // the headers); a response without one is OK until its trailers.
            let code = match &response {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                Err(_) => tonic::Code::Internal as i32,
            };
            slipway_telemetry::metrics::grpc_server_call(&method, code, start.elapsed());
            response
        })
    }
}

/// A channel to a peer that injects the current span's trace context
/// (`traceparent`) into every request; what [`crate::channel`] returns and
/// every generated client runs over. It is also the one place for any other
/// per-call client metadata.
#[derive(Clone)]
pub struct Channel {
    /// Where calls go.
    peer: Peer,
    /// Signs the caller's service token onto every call (crate::auth).
    service_token: Option<crate::auth::TokenSigner>,
    /// The deadline of every call but the untimed methods (crate::deadline).
    deadline: Option<(Duration, &'static [&'static str])>,
}

/// Where a channel's calls go.
#[derive(Clone)]
enum Peer {
    /// Over the network, to the peer's live endpoints (crate::balance).
    Balanced(std::sync::Arc<crate::balance::Balanced>),
    /// To the server on this address in this process (crate::in_process),
    /// waiting up to the duration for it to start.
    InProcess(std::net::SocketAddr, Duration),
}

impl Channel {
    /// Wraps balanced endpoints.
    pub(crate) fn new(inner: crate::balance::Balanced) -> Self {
        Self::to(Peer::Balanced(std::sync::Arc::new(inner)))
    }

    /// Calls the server listening on `addr` in this process, waiting up to
    /// `unsent_retry` for it to start.
    pub(crate) fn in_process(addr: std::net::SocketAddr, unsent_retry: Duration) -> Self {
        Self::to(Peer::InProcess(addr, unsent_retry))
    }

    fn to(peer: Peer) -> Self {
        Self {
            peer,
            service_token: None,
            deadline: None,
        }
    }

    /// Signs a service token onto every call (see [`crate::auth`]).
    pub(crate) fn with_service_token(mut self, signer: Option<crate::auth::TokenSigner>) -> Self {
        self.service_token = signer;
        self
    }

    /// Bounds every call by `timeout` except the `untimed` methods.
    pub(crate) fn with_deadline(
        mut self,
        timeout: Duration,
        untimed: &'static [&'static str],
    ) -> Self {
        self.deadline = Some((timeout, untimed));
        self
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("service_token", &self.service_token)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl tower::Service<http::Request<Body>> for Channel {
    type Response = http::Response<Body>;
    type Error = crate::balance::BoxError;
    type Future = crate::balance::ResponseFuture;

    /// Always ready: each call waits for the endpoint it picks.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // Called from within the caller's future, so the current span is
        // the one that makes the call.
        slipway_telemetry::propagation::inject(&tracing::Span::current(), request.headers_mut());
        crate::idempotency::attach(request.headers_mut());
        if let Some(signer) = &self.service_token {
            signer.attach(request.headers_mut());
        }
        // The actor this task serves, unless the call names its own.
        crate::actor::inject_current(request.headers_mut());
        if let Some((timeout, untimed)) = self.deadline {
            crate::deadline::set_deadline(&mut request, timeout, untimed);
        }
        match &self.peer {
            Peer::Balanced(balanced) => balanced.call(request),
            Peer::InProcess(addr, unsent_retry) => {
                let timeout = crate::deadline::timeout_of(&request);
                crate::in_process::call(*addr, request, timeout, *unsent_retry)
            }
        }
    }
}
