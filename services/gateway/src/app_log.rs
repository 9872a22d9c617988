//! An app's log through the gateway (`GET /apps/{app}/logs`), kept alive
//! across restarts of the rollout service behind it. Each message of
//! `StreamAppLogs` carries the stream's cursor after it; when the stream
//! breaks (the replica died, froze past its keepalive, or is draining for a
//! restart and said so), or a follow stream ends (only a replica going away
//! ends one), the log is asked for again on the next rollout replica after
//! the cursor of the last line passed on, so the client sees each line once,
//! none lost and none twice. It gives up, with an `ERROR:` line, when no
//! replica took the stream for [`RESUME_FOR`]. The lines are the same
//! `<time> <source> <message>` bytes either way.

use futures::StreamExt as _;
use futures::stream::BoxStream;
use slipway_api::rollout::v1 as opb;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::stream::{RESUME_BACKOFF, RESUME_FOR, RESUME_MAX, resumable};
use crate::{AppState, convert};

/// The log's lines as bytes, or the error that ended it.
pub(crate) type Lines = BoxStream<'static, Result<Vec<u8>, String>>;

/// The log `request` asks for, resumed across rollout replicas.
pub(crate) async fn lines(
    state: &AppState,
    request: opb::StreamAppLogsRequest,
) -> Result<Lines, String> {
    let replicas = state.reads.rollout.clone();
    let open = move |request: opb::StreamAppLogsRequest| {
        let mut client = replicas.next_client();
        async move {
            client
                .stream_app_logs(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    // The first call's refusal (an invalid query) is the answer as is; a
    // replica that is away is tried again on the next one.
    let mut tries = 0;
    let mut stream = loop {
        match open(request.clone()).await {
            Ok(stream) => break stream,
            Err(status) if resumable(status.code()) && tries < 3 => {
                tries += 1;
                tokio::time::sleep(RESUME_BACKOFF * tries).await;
            }
            Err(status) => return Err(status.message().to_owned()),
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(
        async move {
            let follow = request.follow;
            // The cursor after the last message passed on; none until the
            // first (a stream that broke before it is asked for afresh:
            // nothing of it reached the client).
            let mut cursor = String::new();
            let mut backoff = RESUME_BACKOFF;
            loop {
                let broke = match stream.message().await {
                    Ok(Some(message)) => {
                        if let Some(event) = message.event
                            && tx
                                .send(Ok(convert::event_line(&event).into_bytes()))
                                .await
                                .is_err()
                        {
                            return;
                        }
                        if !message.cursor.is_empty() {
                            cursor = message.cursor;
                        }
                        backoff = RESUME_BACKOFF;
                        continue;
                    }
                    Ok(None) if !follow => return,
                    Ok(None) => tonic::Status::unavailable("the log stream ended early"),
                    Err(status) if resumable(status.code()) => status,
                    Err(status) => {
                        let _ = tx.send(Err(status.message().to_owned())).await;
                        return;
                    }
                };
                let since = Instant::now();
                loop {
                    if tx.is_closed() {
                        return;
                    }
                    if since.elapsed() >= RESUME_FOR {
                        let _ = tx
                            .send(Err(format!(
                                "lost the app's log and no rollout replica resumed it within \
                                 {RESUME_FOR:?}: {}; run `logs` again",
                                broke.message()
                            )))
                            .await;
                        return;
                    }
                    tracing::warn!(app = %request.app, "app log stream broke, resuming on the next rollout replica: {}", broke.message());
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = tx.closed() => return,
                    }
                    backoff = (backoff * 2).min(RESUME_MAX);
                    let mut again = request.clone();
                    again.after_cursor.clone_from(&cursor);
                    match open(again).await {
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
        .in_current_span(),
    );
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}
