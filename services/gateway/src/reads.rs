//! Idempotent reads with retries. A GET handler's call may be sent again
//! when it failed UNAVAILABLE (a replica refused or reset the connection, or
//! is shutting down), because reading twice changes nothing; writes never come
//! here, since a write that reached the service before the connection broke
//! must not be applied twice.
//!
//! Reads go round-robin over one channel per replica, and a retry goes to
//! the next replica: a dead replica costs a read one failed attempt, never
//! all of them (the balanced channel writes use picks replicas at random, so
//! retrying through it may land on the same dead one again).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use slipway_rpc::Channel;
use tonic::{Code, Response, Status};

/// Attempts per read, the first included.
pub(crate) const ATTEMPTS: usize = 3;
/// Wait before the first retry; doubled before each further one.
const BACKOFF: Duration = Duration::from_millis(25);

/// A client per replica of one service, for reads.
#[derive(Clone)]
pub struct Replicas<C> {
    clients: Arc<[C]>,
    next: Arc<AtomicUsize>,
}

impl<C: Clone> Replicas<C> {
    /// One lazily connected client per endpoint, built by `client`.
    pub fn connect(
        peer: &'static str,
        endpoints: &[String],
        options: &slipway_rpc::ChannelOptions,
        client: impl Fn(Channel) -> C,
    ) -> Result<Self, slipway_rpc::ChannelError> {
        if endpoints.is_empty() {
            return Err(slipway_rpc::ChannelError::NoEndpoints(peer));
        }
        // One try per call on its replica: `read` moves on to the next
        // replica itself instead of waiting for this one to come back.
        let options = slipway_rpc::ChannelOptions {
            unsent_retry: Duration::ZERO,
            ..options.clone()
        };
        let clients = endpoints
            .iter()
            .map(|e| slipway_rpc::channel(peer, std::slice::from_ref(e), &options).map(&client))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(clients))
    }

    /// Over ready-made clients (one per replica; at least one).
    pub(crate) fn new(clients: Vec<C>) -> Self {
        assert!(!clients.is_empty(), "a service has at least one replica");
        Self {
            clients: clients.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The next replica's client, round-robin (for streams, which are
    /// resumed rather than retried).
    pub(crate) fn next_client(&self) -> C {
        let next = self.next.fetch_add(1, Ordering::Relaxed);
        self.clients[next % self.clients.len()].clone()
    }

    /// Sends `message` through `call` on the next replica; on UNAVAILABLE,
    /// again on the following one after a short backoff, up to [`ATTEMPTS`]
    /// times in all. Only for idempotent reads.
    pub(crate) async fn read<M, T, F, Fut>(&self, message: M, mut call: F) -> Result<T, Status>
    where
        M: Clone,
        F: FnMut(C, M) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut backoff = BACKOFF;
        for attempt in 0..ATTEMPTS {
            let client = self.clients[(first + attempt) % self.clients.len()].clone();
            match call(client, message.clone()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if status.code() == Code::Unavailable && attempt + 1 < ATTEMPTS => {
                    tracing::debug!(attempt, "read failed UNAVAILABLE, retrying: {status}");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(status) => return Err(status),
            }
        }
        unreachable!("the last attempt returns")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A fake client: its replica number, and a log of calls per replica.
    #[derive(Clone)]
    struct Fake {
        replica: usize,
        calls: Arc<Mutex<Vec<usize>>>,
    }

    fn replicas(n: usize) -> (Replicas<Fake>, Arc<Mutex<Vec<usize>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..n)
            .map(|replica| Fake {
                replica,
                calls: calls.clone(),
            })
            .collect();
        (Replicas::new(clients), calls)
    }

    #[tokio::test]
    async fn unavailable_reads_move_on_to_the_next_replica() {
        let (replicas, calls) = replicas(2);
        for _ in 0..4 {
            let answer = replicas
                .read((), |c: Fake, ()| async move {
                    c.calls.lock().unwrap().push(c.replica);
                    if c.replica == 0 {
                        Err(Status::unavailable("connection refused"))
                    } else {
                        Ok(Response::new(c.replica))
                    }
                })
                .await;
            assert_eq!(answer.unwrap(), 1);
        }
        // Round-robin: replica 0 is tried first every other read, and the
        // retry goes to replica 1.
        assert_eq!(*calls.lock().unwrap(), [0, 1, 1, 0, 1, 1]);
    }

    #[tokio::test]
    async fn other_failures_and_the_last_attempt_are_final() {
        let (replicas, calls) = replicas(1);
        let answer: Result<(), _> = replicas
            .read((), |c: Fake, ()| async move {
                c.calls.lock().unwrap().push(c.replica);
                Err(Status::not_found("app not found"))
            })
            .await;
        assert_eq!(answer.unwrap_err().code(), Code::NotFound);
        assert_eq!(calls.lock().unwrap().len(), 1);

        calls.lock().unwrap().clear();
        let answer: Result<(), _> = replicas
            .read((), |c: Fake, ()| async move {
                c.calls.lock().unwrap().push(c.replica);
                Err(Status::unavailable("down"))
            })
            .await;
        assert_eq!(answer.unwrap_err().code(), Code::Unavailable);
        assert_eq!(calls.lock().unwrap().len(), ATTEMPTS);
    }
}
