//! The build record: what a build is, which states it passes through, and
//! what it produced. Plain data shared by the store, the pipeline and the
//! gRPC translation.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use slipway_domain::{AppName, BuildId};

/// Where a build is in its life: created → running → complete | failed |
/// cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuildStatus {
    /// Accepted, waiting for a builder slot.
    Created,
    /// Unpacking, building or releasing.
    Running,
    /// Built and released.
    Complete,
    /// Stopped by an error; the reason says which.
    Failed,
    /// Stopped by a cancel request.
    Cancelled,
}

impl BuildStatus {
    /// The name stored and shown (`created`, `running`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Complete => "complete",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "created" => Self::Created,
            "running" => Self::Running,
            "complete" => Self::Complete,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Whether the build has ended (its log is final and stored).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Complete | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A build as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Build {
    /// `B` + ten letters.
    pub id: BuildId,
    /// The app it builds.
    pub app: AppName,
    /// Where it is.
    pub status: BuildStatus,
    /// Why it failed or was cancelled; empty otherwise.
    pub reason: String,
    /// `--description`, or the CLI's `build <sha10> <subject>`; becomes the
    /// release's description.
    pub description: String,
    /// The commit the source came from, when known.
    pub git_sha: String,
    /// `object://<app>/<key>` of the source tarball.
    pub source_url: String,
    /// Path of the manifest inside the source.
    pub manifest_path: String,
    /// The manifest text, once read from the source.
    pub manifest: String,
    /// The release created from the build, once complete.
    pub release: Option<String>,
    /// Artifact reference per service, once built.
    pub artifacts: BTreeMap<String, String>,
    /// When the build was created.
    pub started: DateTime<Utc>,
    /// When it ended.
    pub ended: Option<DateTime<Utc>>,
}

/// How a build ended, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The terminal status.
    pub status: BuildStatus,
    /// Why, for failed and cancelled builds.
    pub reason: String,
    /// The manifest text, if it was read.
    pub manifest: String,
    /// The release created, for complete builds.
    pub release: Option<String>,
    /// The artifacts built.
    pub artifacts: BTreeMap<String, String>,
}

impl Outcome {
    /// A failure (or cancellation) with `reason`.
    pub fn stopped(status: BuildStatus, reason: impl Into<String>, manifest: String) -> Self {
        Self {
            status,
            reason: reason.into(),
            manifest,
            release: None,
            artifacts: BTreeMap::new(),
        }
    }
}
