//! Server streams from the rollout service kept alive across its replicas:
//! a promotion's events and an app's log. Each message carries a position
//! (an event id, a log cursor); when the stream breaks (the replica died,
//! froze past its keepalive, or is draining for a restart and said so) or
//! ends where it should not, it is opened again on the next replica after
//! the position of the last item passed on, so the client sees each item
//! once, none lost and none twice. It gives up, with the caller's error,
//! when no replica took the stream for [`RESUME_FOR`] after a break (a
//! stream taken again starts a new budget: a quiet rollout may run long,
//! and the budget is for resuming, not for the stream).

use std::future::Future;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::time::Instant;
use tonic::{Status, Streaming};
use tracing::Instrument as _;

/// How long a broken stream keeps being resumed without a replica taking
/// it: long enough for every rollout replica to be restarted one after the
/// other (a rolling restart) or for a killed one's lease to pass to
/// another, short of the CLI's own patience.
pub(crate) const RESUME_FOR: Duration = Duration::from_secs(60);
/// Wait before resuming, doubled each time in a row up to [`RESUME_MAX`].
pub(crate) const RESUME_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two resumes.
pub(crate) const RESUME_MAX: Duration = Duration::from_secs(1);
/// Tries of the first call before its failure is the answer.
const FIRST_TRIES: u32 = 3;

/// Whether a broken stream is worth resuming elsewhere: the replica or the
/// connection failed, not the request.
pub(crate) fn resumable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}

/// What one message gives the client.
pub(crate) struct Taken<T> {
    /// Items to pass on, in order.
    pub(crate) items: Vec<T>,
    /// The position after them; `None` leaves it where it was.
    pub(crate) position: Option<String>,
    /// Whether the stream is complete after them.
    pub(crate) last: bool,
}

/// How one resumed stream behaves.
pub(crate) struct Resumed<O, F, L> {
    /// Opens the stream after a position (`""`: from its start, as first
    /// asked).
    pub(crate) open: O,
    /// Turns a message into what the client gets.
    pub(crate) take: F,
    /// Whether the server ending the stream is its normal end (a log that
    /// does not follow) or a replica going away.
    pub(crate) end_is_normal: bool,
    /// The error when no replica resumed it: given the position and the
    /// last failure.
    pub(crate) lost: L,
    /// What the stream is, for the log.
    pub(crate) what: &'static str,
}

impl<M, T, O, Fut, F, L> Resumed<O, F, L>
where
    M: Send + 'static,
    T: Send + 'static,
    O: Fn(String) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Streaming<M>, Status>> + Send + 'static,
    F: FnMut(M) -> Taken<T> + Send + 'static,
    L: Fn(&str, &str) -> String + Send + 'static,
{
    /// Opens the stream after `position`; the first call's refusal (an
    /// invalid request) is the answer as is, a replica that is away is
    /// tried again on the next one.
    pub(crate) async fn start(
        self,
        position: String,
    ) -> Result<BoxStream<'static, Result<T, String>>, String> {
        let mut tries = 0;
        let stream = loop {
            match (self.open)(position.clone()).await {
                Ok(stream) => break stream,
                Err(status) if resumable(status.code()) && tries < FIRST_TRIES => {
                    tries += 1;
                    tokio::time::sleep(RESUME_BACKOFF * tries).await;
                }
                Err(status) => return Err(status.message().to_owned()),
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(self.pump(stream, position, tx).in_current_span());
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    async fn pump(
        mut self,
        mut stream: Streaming<M>,
        mut position: String,
        tx: tokio::sync::mpsc::Sender<Result<T, String>>,
    ) {
        let mut backoff = RESUME_BACKOFF;
        loop {
            let broke = match stream.message().await {
                Ok(Some(message)) => {
                    let taken = (self.take)(message);
                    if let Some(next) = taken.position {
                        position = next;
                    }
                    if !taken.items.is_empty() {
                        backoff = RESUME_BACKOFF;
                    }
                    for item in taken.items {
                        if tx.send(Ok(item)).await.is_err() {
                            return;
                        }
                    }
                    if taken.last {
                        return;
                    }
                    continue;
                }
                Ok(None) if self.end_is_normal => return,
                Ok(None) => Status::unavailable(format!("the {} ended early", self.what)),
                Err(status) if resumable(status.code()) => status,
                Err(status) => {
                    let _ = tx.send(Err(status.message().to_owned())).await;
                    return;
                }
            };
            let since = Instant::now();
            loop {
                if since.elapsed() >= RESUME_FOR {
                    let _ = tx.send(Err((self.lost)(&position, broke.message()))).await;
                    return;
                }
                tracing::warn!(position = %position, "{} broke, resuming on the next rollout replica: {}", self.what, broke.message());
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = tx.closed() => return,
                }
                backoff = (backoff * 2).min(RESUME_MAX);
                match (self.open)(position.clone()).await {
                    Ok(next) => {
                        stream = next;
                        break;
                    }
                    Err(status) if resumable(status.code()) => {}
                    Err(status) => {
                        let _ = tx.send(Err(status.message().to_owned())).await;
                        return;
                    }
                }
            }
        }
    }
}
