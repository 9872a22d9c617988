//! What can go wrong inside the local runtime, named for what failed. Each
//! message is the part after `service <name>: ` in a rollout's failure
//! reason, which users read in `slipway deploy`'s output; the runtime's
//! trait boundary turns these into [`RuntimeError`].

use std::io;
use std::path::PathBuf;

use super::isolation::UidRange;
use crate::runtime::RuntimeError;

/// A failure of the local runtime.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The local runtime's records could not be read or written.
    #[error(transparent)]
    Records(#[from] crate::error::Error),
    /// The spec asks to start a service its manifest does not have.
    #[error("not in the manifest")]
    NotInManifest,
    /// The service has no command, and the local runtime runs only commands.
    #[error("no command to run (the local runtime runs the manifest's command)")]
    NoCommand,
    /// The release names no artifact for the service.
    #[error("the release has no artifact for the service")]
    NoArtifact,
    /// The service's artifact is not a local directory.
    #[error("artifact {0} is not a directory")]
    ArtifactNotADirectory(String),
    /// No port was free for a new process.
    #[error("no free port: {0}")]
    NoFreePort(#[source] io::Error),
    /// The app's working copy or user could not be set up.
    #[error(transparent)]
    Isolation(#[from] IsolationError),
    /// The process could not be spawned.
    #[error("could not start `{command}`: {source}")]
    Spawn {
        /// The service's command.
        command: String,
        /// Why.
        source: io::Error,
    },
    /// A started process could not be put in its cpu cgroup.
    #[error("could not hold the process to its cpu (cgroup v2): {0}")]
    CpuLimit(#[source] io::Error),
    /// A service's recorded stable port cannot be bound again.
    #[error("cannot listen on its port 127.0.0.1:{port}: {source}")]
    StablePortBusy {
        /// The recorded port.
        port: u16,
        /// Why.
        source: io::Error,
    },
    /// A new stable port could not be bound.
    #[error("cannot listen: {0}")]
    Listen(#[source] io::Error),
    /// The port the OS gave us is recorded for another service.
    #[error("port {0} is assigned twice")]
    PortAssignedTwice(u16),
    /// Every port of the configured range is taken.
    #[error("no free port left in {lo}-{hi}")]
    PortsExhausted {
        /// First port of the range.
        lo: u16,
        /// Last port of the range.
        hi: u16,
    },
}

impl From<LocalError> for RuntimeError {
    fn from(err: LocalError) -> Self {
        match err {
            LocalError::Records(e) => RuntimeError::Store(e.to_string()),
            other => RuntimeError::Backend(other.to_string()),
        }
    }
}

/// A failure to isolate an app: its working copy, its user, the apps
/// directory they live in.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// The configured uid (or gid) range is not mapped in this user namespace.
    #[error(
        "--app-uid-range {uids}: those {what} do not exist in this user namespace \
         ({map}: {ids}); choose a range inside it"
    )]
    UidsNotMapped {
        /// The configured range.
        uids: UidRange,
        /// `uids` or `gids`.
        what: &'static str,
        /// The map file read.
        map: &'static str,
        /// What it maps.
        ids: String,
    },
    /// The apps directory could not be made.
    #[error("cannot create the apps directory {}: {source}", .dir.display())]
    AppsDir {
        /// The apps directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The apps directory exists but someone else could tamper with it.
    #[error(
        "refusing the apps directory {}: it must be a directory owned by uid {euid} \
         that no one else can write to",
        .dir.display()
    )]
    AppsDirUnsafe {
        /// The apps directory.
        dir: PathBuf,
        /// Who must own it.
        euid: u32,
    },
    /// App users cannot pass through a directory above the apps directory.
    #[error(
        "app users cannot reach the apps directory {}: {} is mode {mode:04o}, not searchable \
         by other users (let them pass with chmod o+x, or choose another --apps-dir)",
        .dir.display(),
        .ancestor.display()
    )]
    Unreachable {
        /// The apps directory.
        dir: PathBuf,
        /// The directory in the way.
        ancestor: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// An app name or release id that cannot be a directory name.
    #[error("{what} {name:?} cannot name a working directory")]
    BadName {
        /// `app` or `release`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// The release's working directory could not be made.
    #[error("cannot make the working directory of {release}: {source}")]
    WorkingDir {
        /// The release.
        release: String,
        /// Why.
        source: io::Error,
    },
    /// The artifact could not be copied into the working copy.
    #[error("cannot copy the artifact {} for {release}: {source}", .artifact.display())]
    Copy {
        /// The artifact directory.
        artifact: PathBuf,
        /// The release.
        release: String,
        /// Why.
        source: io::Error,
    },
    /// The app's user could not be read or recorded.
    #[error("cannot assign a user to app {app}: {source}")]
    AssignUser {
        /// The app.
        app: String,
        /// Why.
        source: crate::error::Error,
    },
    /// Every uid of the range is taken.
    #[error("cannot assign a user to app {app}: no free uid left in --app-uid-range {uids}")]
    NoFreeUid {
        /// The app.
        app: String,
        /// The configured range.
        uids: UidRange,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These texts end up in rollout failure reasons that users read (and
    /// tests match); they are the ones the runtime wrote before it had
    /// typed errors.
    #[test]
    fn messages_are_the_failure_reasons_users_know() {
        let cases: [(LocalError, &str); 6] = [
            (
                LocalError::NoCommand,
                "no command to run (the local runtime runs the manifest's command)",
            ),
            (
                LocalError::ArtifactNotADirectory("file:///x".into()),
                "artifact file:///x is not a directory",
            ),
            (
                LocalError::NoArtifact,
                "the release has no artifact for the service",
            ),
            (
                LocalError::Spawn {
                    command: "./run".into(),
                    source: io::Error::other("denied"),
                },
                "could not start `./run`: denied",
            ),
            (
                LocalError::PortsExhausted { lo: 1, hi: 2 },
                "no free port left in 1-2",
            ),
            (
                IsolationError::BadName {
                    what: "app",
                    name: "../x".into(),
                }
                .into(),
                "app \"../x\" cannot name a working directory",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
        let runtime: RuntimeError = LocalError::NoCommand.into();
        assert!(matches!(runtime, RuntimeError::Backend(_)));
    }
}
