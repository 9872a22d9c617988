//! An app's log through the gateway (`GET /apps/{app}/logs`), kept alive
//! across restarts of the rollout service behind it. Each message of
//! `StreamAppLogs` carries the stream's cursor after it; when the stream
//! breaks (the replica died, froze past its keepalive, or is draining for a
//! restart and said so), or a follow stream ends (only a replica going away
//! ends one), the log is asked for again on the next rollout replica after
//! the cursor of the last line passed on (`resume.rs`), so the client sees
//! each line once, none lost and none twice. It gives up, with an `ERROR:`
//! line, when no replica took the stream for [`RESUME_FOR`]. The lines are
//! the same `<time> <source> <message>` bytes either way.

use futures::stream::BoxStream;
use slipway_api::rollout::v1 as opb;

use crate::resume::{RESUME_FOR, Resumed, Taken};
use crate::{AppState, convert};

/// The log's lines as bytes, or the error that ended it.
pub(crate) type Lines = BoxStream<'static, Result<Vec<u8>, String>>;

/// The log `request` asks for, resumed across rollout replicas.
pub(crate) async fn lines(
    state: &AppState,
    request: opb::StreamAppLogsRequest,
) -> Result<Lines, String> {
    let replicas = state.reads.rollout.clone();
    let follow = request.follow;
    // The position is the cursor after the last message passed on; none
    // until the first (a stream that broke before it is asked for afresh:
    // nothing of it reached the client).
    let open = move |cursor: String| {
        let mut client = replicas.next_client();
        let mut request = request.clone();
        if !cursor.is_empty() {
            request.after_cursor = cursor;
        }
        async move {
            client
                .stream_app_logs(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    Resumed {
        open,
        take: |message: opb::StreamAppLogsResponse| Taken {
            items: message
                .event
                .map(|event| convert::event_line(&event).into_bytes())
                .into_iter()
                .collect(),
            position: Some(message.cursor).filter(|c| !c.is_empty()),
            last: false,
        },
        // Only a replica going away ends a follow stream.
        end_is_normal: !follow,
        lost: |_: &str, reason: &str| {
            format!(
                "lost the app's log and no rollout replica resumed it within {RESUME_FOR:?}: \
                 {reason}; run `logs` again"
            )
        },
        what: "app log stream",
    }
    .start(String::new())
    .await
}
