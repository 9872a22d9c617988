//! Refusals whose kind changes how a caller answers, sent beside the
//! human-readable message as a machine-readable detail: the status's
//! metadata key [`METADATA_KEY`] holds the kind's name. The gateway picks
//! the HTTP status from the kind, so rewording a message never changes it.

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// The status metadata key (a gRPC trailer) naming a refusal's kind.
pub const METADATA_KEY: &str = "x-slipway-refusal";

/// Why the release service refused a promotion (or an app deletion, which
/// an app mid-promotion refuses for the same reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A promotion of the app is in flight.
    AppUpdating,
    /// The release is older than the active one and the request was not
    /// forced.
    OlderRelease,
    /// The release has no manifest (an env-only release of an app never
    /// built).
    EmptyManifest,
    /// The release's manifest does not parse.
    InvalidManifest,
    /// An env var the manifest requires is not set.
    MissingEnv,
}

impl Refusal {
    /// Every kind, for tests and exhaustive tables.
    pub const ALL: [Refusal; 5] = [
        Refusal::AppUpdating,
        Refusal::OlderRelease,
        Refusal::EmptyManifest,
        Refusal::InvalidManifest,
        Refusal::MissingEnv,
    ];

    /// The kind's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::AppUpdating => "app-updating",
            Refusal::OlderRelease => "older-release",
            Refusal::EmptyManifest => "empty-manifest",
            Refusal::InvalidManifest => "invalid-manifest",
            Refusal::MissingEnv => "missing-env",
        }
    }

    /// The kind named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// A `FAILED_PRECONDITION` status with `message`, carrying this kind.
    pub fn status(self, message: impl Into<String>) -> Status {
        let mut metadata = MetadataMap::new();
        metadata.insert(METADATA_KEY, MetadataValue::from_static(self.as_str()));
        Status::with_metadata(Code::FailedPrecondition, message, metadata)
    }

    /// The kind a status carries, if it carries a known one.
    pub fn of(status: &Status) -> Option<Self> {
        let value = status.metadata().get(METADATA_KEY)?.to_str().ok()?;
        Self::parse(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_a_status() {
        for kind in Refusal::ALL {
            let status = kind.status("some words");
            assert_eq!(status.code(), Code::FailedPrecondition);
            assert_eq!(status.message(), "some words");
            assert_eq!(Refusal::of(&status), Some(kind));
        }
    }

    #[test]
    fn a_status_without_the_key_carries_no_kind() {
        assert_eq!(
            Refusal::of(&Status::failed_precondition("app is currently updating")),
            None
        );
        let mut metadata = MetadataMap::new();
        metadata.insert(METADATA_KEY, MetadataValue::from_static("unheard-of"));
        let status = Status::with_metadata(Code::FailedPrecondition, "x", metadata);
        assert_eq!(Refusal::of(&status), None);
    }
}
