//! Calls from a client to a server in the same process, with no socket in
//! between: how the embedded rack's gateway reaches its services.
//!
//! A call goes through the server's whole stack, exactly as one from the
//! network does (request span, metrics, deadline, load shedding,
//! concurrency limit, service token check, actor scope, then the routes),
//! and through the client channel's own per-call work (trace context,
//! service token, actor, deadline); only HTTP/2 and the loopback connection
//! are left out. Messages are still encoded and decoded, so nothing on
//! either side can tell the difference but the missing peer address, which
//! no service reads. What it saves is two socket hops per message: a
//! streamed one-off session (`run web cat`) does half its copying in them.
//!
//! Every server [`crate::serve`] starts is registered under its listen
//! address for as long as it serves; a channel built on
//! `in-process://ADDR` ([`url`]) calls it. A call while nothing is
//! registered there waits for a server as a balanced call that no server
//! read keeps trying (the channel's `unsent_retry`, within the call's
//! deadline), then is UNAVAILABLE, as a refused connection is.
//!
//! A server may also [`offer`] typed handles under its address, for the
//! few calls whose encoding is most of their cost (an exec session's
//! stream of chunks, `slipway_api::exec`): a caller in this process that
//! finds one ([`handle`]) calls it directly, and the server's stack,
//! metrics included, does not see that call.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tonic::body::Body;
use tower::ServiceExt as _;
use tower::util::BoxCloneService;

use crate::balance::{BoxError, ResponseFuture};

/// The scheme of an in-process endpoint.
pub const SCHEME: &str = "in-process://";

/// A server's stack, ready to take a call.
pub(crate) type Stack = BoxCloneService<http::Request<Body>, http::Response<Body>, BoxError>;

/// The servers of this process, by listen address.
static SERVERS: LazyLock<Mutex<HashMap<SocketAddr, Stack>>> = LazyLock::new(Default::default);

/// The endpoint of the server listening on `addr` in this process.
pub fn url(addr: SocketAddr) -> String {
    format!("{SCHEME}{addr}")
}

/// The address an in-process endpoint names: `None` when `endpoint` is not
/// one, `Some(Err)` when it is one without a valid address.
pub(crate) fn parse(endpoint: &str) -> Option<Result<SocketAddr, String>> {
    let addr = endpoint.strip_prefix(SCHEME)?;
    Some(
        addr.parse()
            .map_err(|e| format!("{endpoint:?} does not name a socket address: {e}")),
    )
}

/// Keeps a server registered; unregisters it when dropped.
pub(crate) struct Registration(SocketAddr);

/// Registers `stack` as the server on `addr` until the registration drops.
pub(crate) fn register(addr: SocketAddr, stack: Stack) -> Registration {
    servers().insert(addr, stack);
    Registration(addr)
}

impl Drop for Registration {
    fn drop(&mut self) {
        servers().remove(&self.0);
    }
}

fn servers() -> std::sync::MutexGuard<'static, HashMap<SocketAddr, Stack>> {
    SERVERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The handles servers of this process offer, by listen address and type.
type Handles = HashMap<(SocketAddr, TypeId), Box<dyn Any + Send + Sync>>;
static HANDLES: LazyLock<Mutex<Handles>> = LazyLock::new(Default::default);

fn handles() -> std::sync::MutexGuard<'static, Handles> {
    HANDLES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The address an in-process endpoint names, if `endpoint` is a valid one.
pub fn address(endpoint: &str) -> Option<SocketAddr> {
    parse(endpoint)?.ok()
}

/// Keeps a handle offered; withdraws it when dropped.
#[must_use = "the handle is withdrawn when the offer drops"]
pub struct Offer(SocketAddr, TypeId);

/// Offers `handle` to callers in this process that reach the server on
/// `addr`, until the offer drops (one handle per type and address).
pub fn offer<T: Clone + Send + Sync + 'static>(addr: SocketAddr, handle: T) -> Offer {
    let key = (addr, TypeId::of::<T>());
    handles().insert(key, Box::new(handle));
    Offer(key.0, key.1)
}

/// The handle of type `T` the server on `addr` offers, if it does.
pub fn handle<T: Clone + Send + Sync + 'static>(addr: SocketAddr) -> Option<T> {
    handles()
        .get(&(addr, TypeId::of::<T>()))
        .and_then(|h| h.downcast_ref::<T>())
        .cloned()
}

impl Drop for Offer {
    fn drop(&mut self) {
        handles().remove(&(self.0, self.1));
    }
}

/// How often a call with no server looks again.
const LOOK_AGAIN: Duration = Duration::from_millis(10);

/// Calls the server on `addr` with `request`, bounded by `timeout` (the
/// call's `grpc-timeout`, which tonic's own channel enforces on the client
/// side too); waits up to `unsent_retry` for a server to be registered.
pub(crate) fn call(
    addr: SocketAddr,
    request: http::Request<Body>,
    timeout: Option<Duration>,
    unsent_retry: Duration,
) -> ResponseFuture {
    Box::pin(async move {
        let answer = async {
            let looking = tokio::time::Instant::now();
            let server = loop {
                if let Some(server) = servers().get(&addr).cloned() {
                    break server;
                }
                if looking.elapsed() >= unsent_retry {
                    return Err(Box::new(tonic::Status::unavailable(format!(
                        "no server is serving on {addr} in this process"
                    ))) as BoxError);
                }
                tokio::time::sleep(LOOK_AGAIN).await;
            };
            server.oneshot(request).await
        };
        match timeout {
            None => answer.await,
            Some(timeout) => match tokio::time::timeout(timeout, answer).await {
                Ok(answer) => answer,
                Err(_) => Ok(tonic::Status::cancelled("Timeout expired").into_http()),
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_an_address() {
        let addr: SocketAddr = "127.0.0.1:7102".parse().unwrap();
        assert_eq!(url(addr), "in-process://127.0.0.1:7102");
        assert_eq!(parse(&url(addr)), Some(Ok(addr)));
        assert_eq!(parse("http://127.0.0.1:7102"), None);
        let bad = parse("in-process://rollout").unwrap().unwrap_err();
        assert!(bad.contains("does not name a socket address"), "{bad}");
    }

    #[tokio::test]
    async fn a_call_with_no_server_is_unavailable_and_one_with_a_server_reaches_it() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let request = || http::Request::new(Body::empty());
        let error = call(addr, request(), None, Duration::ZERO)
            .await
            .unwrap_err();
        let status = error.downcast::<tonic::Status>().expect("a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);

        let stack = BoxCloneService::new(tower::service_fn(|_: http::Request<Body>| async {
            Ok::<_, BoxError>(tonic::Status::not_found("reached").into_http())
        }));
        let registration = register(addr, stack);
        let answer = call(
            addr,
            request(),
            Some(Duration::from_secs(5)),
            Duration::ZERO,
        )
        .await
        .unwrap();
        assert_eq!(answer.headers()["grpc-status"], "5");
        drop(registration);
        assert!(call(addr, request(), None, Duration::ZERO).await.is_err());
    }

    #[test]
    fn handles_are_found_by_address_and_type_while_offered() {
        let addr: SocketAddr = "127.0.0.1:4".parse().unwrap();
        assert_eq!(handle::<std::sync::Arc<str>>(addr), None);
        let offered = offer::<std::sync::Arc<str>>(addr, "plane".into());
        assert_eq!(
            handle::<std::sync::Arc<str>>(addr).as_deref(),
            Some("plane")
        );
        assert_eq!(handle::<String>(addr), None, "another type");
        let other: SocketAddr = "127.0.0.1:5".parse().unwrap();
        assert_eq!(
            handle::<std::sync::Arc<str>>(other),
            None,
            "another address"
        );
        drop(offered);
        assert_eq!(handle::<std::sync::Arc<str>>(addr), None, "withdrawn");
        assert_eq!(address("in-process://127.0.0.1:4"), Some(addr));
        assert_eq!(address("http://127.0.0.1:4"), None);
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_cancelled() {
        let addr: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let stack = BoxCloneService::new(tower::service_fn(|_: http::Request<Body>| async {
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(http::Response::new(Body::empty()))
        }));
        let _registration = register(addr, stack);
        let answer = call(
            addr,
            http::Request::new(Body::empty()),
            Some(Duration::from_millis(10)),
            Duration::ZERO,
        )
        .await
        .unwrap();
        assert_eq!(answer.headers()["grpc-status"], "1");
    }

    #[tokio::test]
    async fn a_call_waits_for_a_server_that_is_starting() {
        let addr: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let call = tokio::spawn(call(
            addr,
            http::Request::new(Body::empty()),
            None,
            Duration::from_secs(30),
        ));
        tokio::time::sleep(LOOK_AGAIN * 3).await;
        assert!(!call.is_finished(), "gave up with the server starting");
        let stack = BoxCloneService::new(tower::service_fn(|_: http::Request<Body>| async {
            Ok::<_, BoxError>(tonic::Status::not_found("reached").into_http())
        }));
        let _registration = register(addr, stack);
        let answer = call.await.unwrap().unwrap();
        assert_eq!(answer.headers()["grpc-status"], "5");
    }
}
