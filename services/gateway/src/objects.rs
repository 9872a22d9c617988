//! Source uploads: the request body is streamed to the build service's
//! `UploadSource` as it arrives, in chunks of at most [`CHUNK`], never held
//! whole in memory (sources may be hundreds of megabytes).
//!
//! A body that fails half-way (over the size limit, the client went away,
//! or it sent nothing for `--body-idle-timeout`) must not become a
//! truncated object: the stream then ends without the message marked
//! `last`, which the build service takes for an abandoned upload, storing
//! nothing.
//!
//! An upload has no total deadline (the build service exempts
//! `UploadSource` from its request timeout, and the gateway's channel sends
//! it without one): it may take as long as it keeps moving. So that the
//! build service can tell a slow client from a dead gateway, a message goes
//! out at least every [`HEARTBEAT`] while the upload is open (what has
//! arrived by then, or an empty chunk).

use std::time::Duration;

use axum::body::{Body, Bytes};
use futures::StreamExt as _;
use slipway_api::build::v1 as bpb;
use slipway_api::build::v1::build_service_client::BuildServiceClient;
use slipway_rpc::Channel;
use tokio::sync::oneshot;

use crate::error::{ApiError, ApiResult};

/// The full name of `UploadSource`, called without a total deadline.
pub(crate) const UPLOAD_SOURCE: &str = "/slipway.build.v1.BuildService/UploadSource";

/// Largest chunk sent in one gRPC message.
const CHUNK: usize = 1 << 20;

/// Longest time between two messages to the build service (whose upload
/// idle timeout must be longer).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Stores the streamed `body` as object `key` of `app`; returns its
/// `object://` URL.
pub(crate) async fn upload(
    mut client: BuildServiceClient<Channel>,
    app: String,
    key: String,
    body: Body,
) -> ApiResult<String> {
    let first = bpb::UploadSourceRequest {
        app,
        key,
        chunk: Bytes::new(),
        last: false,
    };
    let (failed_tx, failed_rx) = oneshot::channel::<ApiError>();
    let mut failed_tx = Some(failed_tx);
    // Each chunk as it comes; after the whole body, an empty message marked
    // `last`. A failed body ends the stream without it: nothing is stored.
    let chunks = rechunk(body.into_data_stream(), HEARTBEAT)
        .map(Some)
        .chain(futures::stream::iter([None]))
        .scan(false, move |failed, item| {
            let message = match item {
                _ if *failed => return futures::future::ready(None),
                Some(Ok(chunk)) => bpb::UploadSourceRequest {
                    chunk,
                    ..Default::default()
                },
                Some(Err(e)) => {
                    *failed = true;
                    if let Some(tx) = failed_tx.take() {
                        let _ = tx.send(body_error(&e));
                    }
                    return futures::future::ready(None);
                }
                None => bpb::UploadSourceRequest {
                    last: true,
                    ..Default::default()
                },
            };
            futures::future::ready(Some(message))
        });
    let messages = futures::stream::iter([first]).chain(chunks);
    let answer = client.upload_source(messages).await;
    // The body's own failure is the answer (the build service only saw an
    // abandoned upload, which it answers after the failure was sent).
    let mut failed_rx = failed_rx;
    if let Ok(error) = failed_rx.try_recv() {
        return Err(error);
    }
    Ok(answer?.into_inner().url)
}

/// The client's part of a failed body: over the limit (413), or broken.
fn body_error(e: &axum::Error) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return ApiError {
                status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                message: "source too large for this rack (see --max-upload-bytes)".into(),
            };
        }
        if let Some(stalled) = err.downcast_ref::<crate::serve::BodyStalled>() {
            return ApiError {
                status: axum::http::StatusCode::REQUEST_TIMEOUT,
                message: format!("the upload stalled ({stalled}); nothing stored"),
            };
        }
        source = err.source();
    }
    ApiError::bad_request(format!("reading the upload failed: {e}"))
}

/// Joins small body frames (and splits big ones) into chunks of at most
/// [`CHUNK`] bytes, so each gRPC message carries a useful amount; when no
/// chunk went out for `heartbeat`, what has arrived goes out (maybe
/// nothing: an empty chunk says the upload is still alive).
fn rechunk<S>(
    frames: S,
    heartbeat: Duration,
) -> impl futures::Stream<Item = Result<Bytes, axum::Error>>
where
    S: futures::Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    futures::stream::unfold(
        (frames, bytes::BytesMut::new(), false),
        move |(mut frames, mut buf, mut done)| async move {
            // Counted from the last message out (this runs when the
            // next one is wanted).
            let due = tokio::time::Instant::now() + heartbeat;
            loop {
                if buf.len() >= CHUNK {
                    let chunk = buf.split_to(CHUNK).freeze();
                    return Some((Ok(chunk), (frames, buf, done)));
                }
                if done {
                    if buf.is_empty() {
                        return None;
                    }
                    let chunk = buf.split().freeze();
                    return Some((Ok(chunk), (frames, buf, done)));
                }
                match tokio::time::timeout_at(due, frames.next()).await {
                    Ok(Some(Ok(frame))) => buf.extend_from_slice(&frame),
                    Ok(Some(Err(e))) => return Some((Err(e), (frames, buf, true))),
                    Ok(None) => done = true,
                    Err(_) => return Some((Ok(buf.split().freeze()), (frames, buf, done))),
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_untimed_method_is_upload_source() {
        use slipway_api::build::v1::build_service_server::SERVICE_NAME;
        assert_eq!(UPLOAD_SOURCE, format!("/{SERVICE_NAME}/UploadSource"));
    }

    #[tokio::test]
    async fn frames_become_chunks_of_at_most_a_mebibyte_without_losing_a_byte() {
        let frames: Vec<Result<Bytes, axum::Error>> = vec![
            Ok(Bytes::from(vec![1u8; 10])),
            Ok(Bytes::from(vec![2u8; CHUNK + 5])),
            Ok(Bytes::from(vec![3u8; 7])),
        ];
        let chunks: Vec<Bytes> = rechunk(futures::stream::iter(frames), HEARTBEAT)
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert_eq!(
            chunks.iter().map(Bytes::len).collect::<Vec<_>>(),
            [CHUNK, 22]
        );
        let all: Vec<u8> = chunks.concat();
        assert_eq!(all.len(), 10 + CHUNK + 5 + 7);
        assert!(all[..10].iter().all(|b| *b == 1));
        assert!(all[10..10 + CHUNK + 5].iter().all(|b| *b == 2));
        assert!(all[10 + CHUNK + 5..].iter().all(|b| *b == 3));
    }
}
