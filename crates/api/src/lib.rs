//! The Slipway wire types: tonic/prost code generated from `proto/`, the
//! descriptor set for reflection, and small conversions shared by servers and
//! clients. Generated types stop at the RPC edge; services convert them into
//! `slipway-domain` types in their `grpc.rs`, with the promotion state and
//! outcome conversions in [`promotion`] (mapped once, for every service).

use std::fmt;

/// Encoded `FileDescriptorSet` of every Slipway proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/slipway_descriptor.bin"));

pub mod release {
    //! `slipway.release.v1`
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/slipway.release.v1.rs"));
    }
}

pub mod rollout {
    //! `slipway.rollout.v1`
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/slipway.rollout.v1.rs"));
    }
}

pub mod events;
pub mod exec;
pub mod promotion;
pub mod refusal;

pub mod build {
    //! `slipway.build.v1`
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/slipway.build.v1.rs"));
    }
}

/// Converts a UTC time into a protobuf timestamp.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Converts a protobuf timestamp into a UTC time (out-of-range values clamp to
/// the epoch, which the API treats as "unset").
pub fn from_timestamp(t: &prost_types::Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32).unwrap_or_default()
}

/// Lists the keys of an env (in wire form) without its values.
struct EnvKeys<'a>(&'a str);

impl fmt::Debug for EnvKeys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.0
                    .lines()
                    .filter_map(|l| l.split_once('=').map(|(k, _)| k)),
            )
            .finish()
    }
}

impl fmt::Debug for release::v1::Release {
    // Shows the deprecated text field's keys too, for callers that still send it.
    #[allow(deprecated)]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Release")
            .field("id", &self.id)
            .field("app", &self.app)
            .field("build", &self.build)
            .field("env_keys", &self.env_vars.keys().collect::<Vec<_>>())
            .field("deprecated_env_keys", &EnvKeys(&self.env))
            .field("description", &self.description)
            .field("created", &self.created)
            .field("parent", &self.parent)
            .field("rollback_of", &self.rollback_of)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for release::v1::CreateReleaseRequest {
    // Shows the deprecated text field's keys too, for callers that still send it.
    #[allow(deprecated)]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateReleaseRequest")
            .field("app", &self.app)
            .field("build", &self.build)
            .field("env_vars", &self.env_vars)
            .field("deprecated_env_keys", &self.env.as_deref().map(EnvKeys))
            .field("description", &self.description)
            .field("parent_release", &self.parent_release)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for release::v1::EnvVars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvVars")
            .field("keys", &self.vars.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl fmt::Debug for release::v1::ChangeEnvRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeEnvRequest")
            .field("app", &self.app)
            .field("set_keys", &self.set.keys().collect::<Vec<_>>())
            .field("unset", &self.unset)
            .field("parent_release", &self.parent_release)
            .field("expected_newest_release", &self.expected_newest_release)
            .finish()
    }
}

impl fmt::Debug for release::v1::WebhookSecret {
    // Receiver URLs and signing keys: never in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

impl fmt::Debug for release::v1::TokenSecret {
    // Access tokens and the key their hashes are made with: never in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(***)")
    }
}

impl fmt::Debug for rollout::v1::ReleaseSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleaseSpec")
            .field("app", &self.app)
            .field("release", &self.release)
            .field("build", &self.build)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("artifacts", &self.artifacts)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_env_carrying_messages_hides_values() {
        #[allow(deprecated)]
        let r = release::v1::Release {
            id: "RABCDEFGHIJ".into(),
            env: "SECRET=hunter2\nTOKEN=abc123".into(),
            ..Default::default()
        };
        let text = format!("{r:?}");
        assert!(text.contains("SECRET") && text.contains("TOKEN"), "{text}");
        assert!(
            !text.contains("hunter2") && !text.contains("abc123"),
            "{text}"
        );

        let mut spec = rollout::v1::ReleaseSpec::default();
        spec.env.insert("DB_PASSWORD".into(), "s3cret".into());
        let text = format!("{spec:?}");
        assert!(
            text.contains("DB_PASSWORD") && !text.contains("s3cret"),
            "{text}"
        );

        let mut r = release::v1::Release::default();
        r.env_vars
            .insert("PEM".into(), "-----BEGIN p3m\nb0dy".into());
        let text = format!("{r:?}");
        assert!(
            text.contains("PEM") && !text.contains("p3m") && !text.contains("b0dy"),
            "{text}"
        );

        let mut vars = release::v1::EnvVars::default();
        vars.vars.insert("API_KEY".into(), "k3y".into());
        #[allow(deprecated)]
        let create = release::v1::CreateReleaseRequest {
            env_vars: Some(vars),
            env: Some("OLD=0ld".into()),
            ..Default::default()
        };
        let text = format!("{create:?}");
        assert!(text.contains("API_KEY") && text.contains("OLD"), "{text}");
        assert!(!text.contains("k3y") && !text.contains("0ld"), "{text}");

        let mut change = release::v1::ChangeEnvRequest::default();
        change.set.insert("K".into(), "v4lue".into());
        assert!(!format!("{change:?}").contains("v4lue"));
    }

    #[test]
    fn descriptor_set_names_every_service() {
        let text = String::from_utf8_lossy(FILE_DESCRIPTOR_SET);
        for svc in ["ReleaseService", "RolloutService", "BuildService"] {
            assert!(text.contains(svc), "{svc} missing from descriptor set");
        }
    }

    #[test]
    fn timestamps_round_trip() {
        let now = chrono::Utc::now();
        assert_eq!(from_timestamp(&timestamp(now)), now);
    }
}
