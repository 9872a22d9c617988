//! One gRPC message limit for every Slipway server and client, and the page
//! budget list calls cut their answers to.
//!
//! tonic sets message limits per generated client and server, not per channel,
//! so each construction site calls [`MessageLimits::with_message_limits`]; the
//! limit itself lives only here. It is tonic's own decoding default, so a
//! plain tonic or grpcurl client reads every answer a Slipway service sends.
//! What a single message may carry is bounded where it enters: an env by
//! `slipway_domain::env::MAX_ENV_BYTES`, a manifest by
//! `slipway_domain::manifest::MAX_MANIFEST_BYTES`, a whole release by the
//! release service's `MAX_RELEASE_BYTES` (asserted there to fit twice, as a
//! rollout start carries a target and a fallback); lists are cut by
//! [`PAGE_BYTES`].

use slipway_api::build::v1::build_archive_service_client::BuildArchiveServiceClient;
use slipway_api::build::v1::build_archive_service_server::{
    BuildArchiveService, BuildArchiveServiceServer,
};
use slipway_api::build::v1::build_service_client::BuildServiceClient;
use slipway_api::build::v1::build_service_server::{BuildService, BuildServiceServer};
use slipway_api::release::v1::audit_service_client::AuditServiceClient;
use slipway_api::release::v1::audit_service_server::{AuditService, AuditServiceServer};
use slipway_api::release::v1::release_service_client::ReleaseServiceClient;
use slipway_api::release::v1::release_service_server::{ReleaseService, ReleaseServiceServer};
use slipway_api::release::v1::token_service_client::TokenServiceClient;
use slipway_api::release::v1::token_service_server::{TokenService, TokenServiceServer};
use slipway_api::rollout::v1::process_service_client::ProcessServiceClient;
use slipway_api::rollout::v1::process_service_server::{ProcessService, ProcessServiceServer};
use slipway_api::rollout::v1::rollout_service_client::RolloutServiceClient;
use slipway_api::rollout::v1::rollout_service_server::{RolloutService, RolloutServiceServer};
use slipway_api::rollout::v1::scale_service_client::ScaleServiceClient;
use slipway_api::rollout::v1::scale_service_server::{ScaleService, ScaleServiceServer};

use crate::Channel;

/// Largest gRPC message any Slipway server or client sends or accepts: 4 MiB.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// What the repeated field of one list answer may take; the rest of the
/// message limit is room for the other fields and the framing.
pub const PAGE_BYTES: usize = MAX_MESSAGE_BYTES - (64 << 10);

/// Applies [`MAX_MESSAGE_BYTES`] to both directions of a generated gRPC
/// client or server.
pub trait MessageLimits: Sized {
    /// The same client or server, sending and accepting messages up to
    /// [`MAX_MESSAGE_BYTES`].
    #[must_use]
    fn with_message_limits(self) -> Self;
}

macro_rules! message_limits {
    (clients: $($client:ident),*; servers: $($server:ident: $service:ident),*) => {
        $(
            impl MessageLimits for $client<Channel> {
                fn with_message_limits(self) -> Self {
                    self.max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES)
                }
            }
        )*
        $(
            impl<T: $service> MessageLimits for $server<T> {
                fn with_message_limits(self) -> Self {
                    self.max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES)
                }
            }
        )*
    };
}

message_limits!(
    clients: BuildServiceClient, ReleaseServiceClient, RolloutServiceClient, ProcessServiceClient,
        ScaleServiceClient, BuildArchiveServiceClient, TokenServiceClient, AuditServiceClient;
    servers: BuildServiceServer: BuildService,
        ReleaseServiceServer: ReleaseService,
        RolloutServiceServer: RolloutService,
        ProcessServiceServer: ProcessService,
        ScaleServiceServer: ScaleService,
        BuildArchiveServiceServer: BuildArchiveService,
        TokenServiceServer: TokenService,
        AuditServiceServer: AuditService
);

/// What one element of a repeated message field adds to the encoding: its
/// tag, its length prefix and its body (`body` bytes).
pub fn element_bytes(body: usize) -> usize {
    // Field numbers up to 2047 take at most two bytes of tag.
    2 + prost::length_delimiter_len(body) + body
}

/// How many of `items`, from the first, fit in one page of [`PAGE_BYTES`]:
/// always at least one when there is one (a single element is bounded where
/// it enters, and an answer that must be cut should still make progress).
pub fn page_len<M: prost::Message>(items: &[M]) -> usize {
    let mut used = 0;
    for (i, item) in items.iter().enumerate() {
        used += element_bytes(item.encoded_len());
        if used > PAGE_BYTES && i > 0 {
            return i;
        }
    }
    items.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_api::release::v1 as pb;

    fn release(manifest_bytes: usize) -> pb::Release {
        pb::Release {
            id: "RAAAAAAAAAA".into(),
            manifest: "m".repeat(manifest_bytes),
            ..Default::default()
        }
    }

    #[test]
    fn small_pages_are_whole() {
        let items: Vec<_> = (0..100).map(|_| release(100)).collect();
        assert_eq!(page_len(&items), 100);
        assert_eq!(page_len::<pb::Release>(&[]), 0);
    }

    #[test]
    fn a_page_is_cut_where_the_next_element_would_not_fit() {
        let items: Vec<_> = (0..10).map(|_| release(1 << 20)).collect();
        let n = page_len(&items);
        assert_eq!(
            n, 3,
            "three 1 MiB releases fit in {PAGE_BYTES} bytes, four do not"
        );
        let answer = pb::ListReleasesResponse {
            releases: items[..n].to_vec(),
            next_page_token: "12345678901234567890".into(),
        };
        assert!(prost::Message::encoded_len(&answer) <= MAX_MESSAGE_BYTES);
        let over = pb::ListReleasesResponse {
            releases: items[..n + 1].to_vec(),
            next_page_token: String::new(),
        };
        assert!(prost::Message::encoded_len(&over) > PAGE_BYTES);
    }

    #[test]
    fn element_bytes_matches_prost() {
        for body in [0, 1, 127, 128, 16_383, 16_384, 1 << 20] {
            let item = release(body);
            let one = pb::ListReleasesResponse {
                releases: vec![item.clone()],
                next_page_token: String::new(),
            };
            let len = prost::Message::encoded_len(&item);
            assert!(element_bytes(len) >= prost::Message::encoded_len(&one));
            assert!(element_bytes(len) <= prost::Message::encoded_len(&one) + 1);
        }
    }
}
