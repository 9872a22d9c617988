//! Source uploads: the request body is streamed to the build service's
//! `UploadSource` in bounded chunks, never held whole in memory.

use axum::body::Bytes;
use slipway_api::build::v1 as bpb;

use slipway_api::build::v1::build_service_client::BuildServiceClient;
use slipway_rpc::Channel;

use crate::error::ApiResult;

/// Largest chunk sent in one gRPC message.
const CHUNK: usize = 1 << 20;

/// Stores `body` as object `key` of `app`; returns its `object://` URL.
pub(crate) async fn upload(
    mut client: BuildServiceClient<Channel>,
    app: String,
    key: String,
    body: Bytes,
) -> ApiResult<String> {
    let first = bpb::UploadSourceRequest {
        app,
        key,
        chunk: Bytes::new(),
    };
    let chunks: Vec<bpb::UploadSourceRequest> = body
        .chunks(CHUNK)
        .map(|c| bpb::UploadSourceRequest {
            chunk: body.slice_ref(c),
            ..Default::default()
        })
        .collect();
    let messages = futures::stream::iter(std::iter::once(first).chain(chunks));
    let answer = client.upload_source(messages).await?.into_inner();
    Ok(answer.url)
}
