//! Calls spread over a peer's replicas, only to the ones that are up, and
//! sent again when they provably never reached a server.
//!
//! tonic's `balance_list` keeps an endpoint that refuses connections in its
//! set: every call picked for it fails with `tcp connect error` for as long
//! as the replica is gone. Here every endpoint has a health watcher (the
//! standard `grpc.health.v1.Health/Watch` stream on the channel calls use)
//! and a call-side penalty:
//!
//! - an endpoint whose health stream breaks (the process died, the
//!   connection was cut) or says NOT_SERVING (it is draining) leaves the set
//!   at once; its watcher probes it again with backoff (50 ms doubling to
//!   2 s) and it rejoins on SERVING. An endpoint without a health service
//!   stays in (calls decide for it).
//! - a call that fails without its request body ever being read leaves
//!   that endpoint out for a while (100 ms doubling to 2 s while it keeps
//!   failing) and is sent to the next endpoint in the set, at once. A gRPC
//!   request's message travels in the body, so a server that never read it
//!   cannot have acted on it: reads and writes alike are safe to resend.
//!   When no endpoint is left the call waits (25 ms doubling to 500 ms) and
//!   tries every endpoint again, until [`crate::ChannelOptions::unsent_retry`]
//!   or its own deadline runs out, so a restart of the only replica costs
//!   latency, not an error.
//! - a call whose body was read and then failed (sent, no answer) is
//!   returned as it failed: only an idempotency key makes that safe to
//!   repeat, and that is the caller's decision.
//!
//! With one endpoint (a single replica, or a Kubernetes Service name that
//! balances by itself) there is no watcher: the only choice is that endpoint.
//! Calls go round-robin over the live endpoints.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Body as _;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::body::Body;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceExt as _;

/// The error a balanced call fails with (the transport's own, boxed).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A call's answer.
pub(crate) type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

/// First wait before a watcher probes a lost endpoint again.
const PROBE_MIN: Duration = Duration::from_millis(50);
/// Longest wait between probes of a lost endpoint.
const PROBE_MAX: Duration = Duration::from_secs(2);
/// How long a call's failure first keeps an endpoint out.
const PENALTY_MIN: Duration = Duration::from_millis(100);
/// Longest a call's failure keeps an endpoint out.
const PENALTY_MAX: Duration = Duration::from_secs(2);
/// First wait when every endpoint failed a call.
const ROUND_MIN: Duration = Duration::from_millis(25);
/// Longest wait between rounds.
const ROUND_MAX: Duration = Duration::from_millis(500);

/// No word from the watcher yet, or no health service: calls decide.
const UNKNOWN: u8 = 0;
const SERVING: u8 = 1;
/// NOT_SERVING (starting, or draining before a shutdown).
const NOT_SERVING: u8 = 2;
/// The health stream could not be opened or broke.
const DOWN: u8 = 3;

/// One endpoint of a balanced channel.
struct Member {
    peer: &'static str,
    uri: String,
    channel: tonic::transport::Channel,
    /// What the watcher last learnt (`UNKNOWN`, `SERVING`, …).
    health: AtomicU8,
    /// Set when a call found the endpoint unreachable: out until the
    /// instant, and the next penalty if it fails again.
    penalty: Mutex<Option<(Instant, Duration)>>,
}

impl Member {
    fn eligible(&self, now: Instant) -> bool {
        matches!(self.health.load(Ordering::Relaxed), UNKNOWN | SERVING)
            && self
                .penalty
                .lock()
                .expect("penalty lock")
                .is_none_or(|(until, _)| until <= now)
    }

    fn set_health(&self, health: u8) {
        let before = self.health.swap(health, Ordering::Relaxed);
        let (was, is) = (
            matches!(before, UNKNOWN | SERVING),
            matches!(health, UNKNOWN | SERVING),
        );
        if was && !is {
            let why = if health == NOT_SERVING {
                "reports NOT_SERVING"
            } else {
                "is unreachable"
            };
            tracing::warn!(peer = self.peer, endpoint = %self.uri, "endpoint {why}: left the balance set");
        } else if !was && is {
            tracing::info!(peer = self.peer, endpoint = %self.uri, "endpoint serving again: back in the balance set");
        }
        if health == SERVING {
            *self.penalty.lock().expect("penalty lock") = None;
        }
    }

    /// A call found the endpoint unreachable.
    fn penalise(&self) {
        let mut penalty = self.penalty.lock().expect("penalty lock");
        let next = penalty.map_or(PENALTY_MIN, |(_, d)| (d * 2).min(PENALTY_MAX));
        *penalty = Some((Instant::now() + next, next));
        tracing::debug!(peer = self.peer, endpoint = %self.uri, "call could not reach endpoint; trying another");
    }

    /// A call went through.
    fn succeeded(&self) {
        let mut penalty = self.penalty.lock().expect("penalty lock");
        if penalty.is_some() {
            *penalty = None;
        }
    }
}

/// The endpoints of one peer and where the next call goes.
pub(crate) struct Balanced {
    members: Arc<[Arc<Member>]>,
    next: AtomicUsize,
    /// How long a call may keep trying endpoints that never read it.
    unsent_retry: Duration,
    /// Stops the watchers when the last handle goes.
    _watchers: DropGuard,
}

impl Balanced {
    /// Balances over `channels` (lazily connecting, one per endpoint
    /// `uris[i]`), watching their health when there are several.
    pub(crate) fn new(
        peer: &'static str,
        endpoints: Vec<(String, tonic::transport::Channel)>,
        unsent_retry: Duration,
    ) -> Self {
        let members: Arc<[Arc<Member>]> = endpoints
            .into_iter()
            .map(|(uri, channel)| {
                Arc::new(Member {
                    peer,
                    uri,
                    channel,
                    health: AtomicU8::new(UNKNOWN),
                    penalty: Mutex::new(None),
                })
            })
            .collect();
        let stop = CancellationToken::new();
        if members.len() > 1 {
            for member in members.iter() {
                tokio::spawn(watch(member.clone(), stop.clone()));
            }
        }
        Self {
            members,
            next: AtomicUsize::new(0),
            unsent_retry,
            _watchers: stop.drop_guard(),
        }
    }

    /// Sends `request`, on another endpoint whenever one never read it;
    /// a keyed call to a method that honours its key (see
    /// [`crate::idempotency::HONOURED`]) also when it was sent and its
    /// answer was lost.
    pub(crate) fn call(self: &Arc<Self>, request: http::Request<Body>) -> ResponseFuture {
        let this = self.clone();
        Box::pin(async move {
            let started = Instant::now();
            let budget = crate::deadline::timeout_of(&request)
                .map_or(this.unsent_retry, |d| d.min(this.unsent_retry));
            let keyed = crate::idempotency::honoured(&request);
            let (parts, body) = request.into_parts();
            let source = if keyed {
                // A unary request: its one message, kept for resending.
                Source::Whole(collect(body).await?)
            } else {
                Source::Slot(Arc::new(Mutex::new(Some(body))))
            };
            let mut resends = 0;
            let n = this.members.len();
            let mut wait = ROUND_MIN;
            loop {
                // One round: every eligible endpoint once, from the next in
                // turn; when none is eligible, every endpoint (the call
                // probes them itself).
                let first = this.next.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                let order: Vec<usize> = (0..n).map(|i| (first + i) % n).collect();
                let mut round: Vec<usize> = order
                    .iter()
                    .copied()
                    .filter(|&i| this.members[i].eligible(now))
                    .collect();
                if round.is_empty() {
                    round = order;
                }
                let mut last = None;
                for i in round {
                    let member = &this.members[i];
                    let (body, read) = source.body();
                    let request = http::Request::from_parts(parts.clone(), body);
                    let mut channel = member.channel.clone();
                    let answer = match channel.ready().await {
                        Ok(channel) => tower::Service::call(channel, request).await,
                        Err(e) => Err(e),
                    };
                    let error = match answer {
                        Ok(response) => {
                            member.succeeded();
                            return Ok(response);
                        }
                        Err(e) => e,
                    };
                    member.penalise();
                    match &source {
                        // The body is still in the slot: the server never
                        // read the message.
                        Source::Slot(slot) if slot.lock().expect("body slot").is_some() => {}
                        Source::Slot(_) => return Err(error.into()),
                        // Never read (refused, no stream): not a resend.
                        Source::Whole(_) if !read.load(Ordering::Relaxed) => {}
                        // Sent, no answer: the server dedupes by key.
                        Source::Whole(_) if resends < MAX_RESENDS => {
                            resends += 1;
                            tracing::info!(peer = member.peer, endpoint = %member.uri, path = parts.uri.path(), "keyed call lost its answer; sending it again: {error}");
                        }
                        Source::Whole(_) => return Err(error.into()),
                    }
                    last = Some(error);
                }
                let error = last.expect("a round tries at least one endpoint");
                if started.elapsed() + wait >= budget {
                    return Err(error.into());
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(ROUND_MAX);
            }
        })
    }
}

/// Where each attempt's request body comes from.
enum Source {
    /// The caller's body, until a transport reads it.
    Slot(Arc<Mutex<Option<Body>>>),
    /// A whole unary request, sent as often as needed.
    Whole(Bytes),
}

impl Source {
    /// An attempt's body, and a flag set once a transport read it.
    fn body(&self) -> (Body, Arc<AtomicBool>) {
        let read = Arc::new(AtomicBool::new(false));
        let body = match self {
            Self::Slot(slot) => Body::new(Unsent {
                slot: slot.clone(),
                taken: None,
            }),
            Self::Whole(bytes) => Body::new(Whole {
                bytes: Some(bytes.clone()),
                read: read.clone(),
            }),
        };
        (body, read)
    }
}

/// How often a keyed call is sent again after its answer was lost.
const MAX_RESENDS: u32 = 3;

/// Reads a unary request's body whole (at most the message limit and its
/// frame header).
async fn collect(mut body: Body) -> Result<Bytes, BoxError> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(data) = frame?.into_data() {
            out.extend_from_slice(&data);
            if out.len() > crate::MAX_MESSAGE_BYTES + 5 {
                return Err("request larger than the message limit".into());
            }
        }
    }
    Ok(out.freeze())
}

/// A body of one chunk that tells whether a transport read it (a keyed
/// call refused before anything was read is no resend).
struct Whole {
    bytes: Option<Bytes>,
    read: Arc<AtomicBool>,
}

impl http_body::Body for Whole {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.read.store(true, Ordering::Relaxed);
        Poll::Ready(self.bytes.take().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.bytes.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// Follows `member`'s health stream until `stop`, probing with backoff
/// while it is lost. A NOT_SERVING answer closes the stream (the server is
/// draining, and an open stream would hold its drain up).
async fn watch(member: Arc<Member>, stop: CancellationToken) {
    let mut backoff = PROBE_MIN;
    loop {
        let mut client = HealthClient::new(member.channel.clone());
        let request = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = client.watch(request) => opened,
        };
        match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    let message = tokio::select! {
                        () = stop.cancelled() => return,
                        message = stream.message() => message,
                    };
                    match message {
                        Ok(Some(m)) if m.status == ServingStatus::Serving as i32 => {
                            member.set_health(SERVING);
                            backoff = PROBE_MIN;
                        }
                        Ok(Some(_)) => {
                            member.set_health(NOT_SERVING);
                            break;
                        }
                        Ok(None) | Err(_) => {
                            member.set_health(DOWN);
                            break;
                        }
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                // No health service: the calls' own failures decide.
                member.set_health(UNKNOWN);
                return;
            }
            Err(_) => member.set_health(DOWN),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(PROBE_MAX);
    }
}

/// A request body that stays in a shared slot until the transport first
/// reads it. While it is still there after a failure, no server saw the
/// message, and the next attempt sends the same body.
struct Unsent {
    slot: Arc<Mutex<Option<Body>>>,
    taken: Option<Body>,
}

impl http_body::Body for Unsent {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if this.taken.is_none() {
            this.taken = this.slot.lock().expect("body slot").take();
        }
        match &mut this.taken {
            Some(body) => Pin::new(body).poll_frame(cx),
            // Another attempt has it (cannot happen: attempts run one at a
            // time and a read body ends the retries).
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(body) => body.is_end_stream(),
            None => self
                .slot
                .lock()
                .expect("body slot")
                .as_ref()
                .is_none_or(http_body::Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.taken {
            Some(body) => body.size_hint(),
            None => self
                .slot
                .lock()
                .expect("body slot")
                .as_ref()
                .map(http_body::Body::size_hint)
                .unwrap_or_default(),
        }
    }
}
