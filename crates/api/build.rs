//! Compiles the protos under the workspace's `proto/` with protox (a pure-Rust
//! protobuf compiler, so no `protoc` is needed) and writes a descriptor set
//! that every server exposes through gRPC reflection.

use prost::Message as _;

const PROTOS: &[&str] = &[
    "slipway/release/v1/release.proto",
    "slipway/release/v1/webhooks.proto",
    "slipway/release/v1/access.proto",
    "slipway/rollout/v1/rollout.proto",
    "slipway/rollout/v1/processes.proto",
    "slipway/rollout/v1/scale.proto",
    "slipway/build/v1/build.proto",
    "slipway/build/v1/archive.proto",
];

// Messages that carry env values get a hand-written, redacting Debug.
const REDACTED: &[&str] = &[
    "slipway.release.v1.Release",
    "slipway.release.v1.CreateReleaseRequest",
    "slipway.release.v1.EnvVars",
    "slipway.release.v1.ChangeEnvRequest",
    "slipway.rollout.v1.ReleaseSpec",
    "slipway.release.v1.WebhookSecret",
    "slipway.release.v1.TokenSecret",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(PROTOS, [&root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("slipway_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .skip_debug(REDACTED)
        // Upload chunks and log chunks pass through without copies.
        .bytes(".slipway.build.v1")
        .bytes(".slipway.rollout.v1.ExecProcessRequest")
        .bytes(".slipway.rollout.v1.ExecProcessResponse")
        .compile_fds(fds)?;
    Ok(())
}
