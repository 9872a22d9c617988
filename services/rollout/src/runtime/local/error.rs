//! What can go wrong inside the local runtime, named for what failed. Each
//! message is the part after `service <name>: ` in a rollout's failure
//! reason, which users read in `slipway deploy`'s output; the runtime's
//! trait boundary turns these into [`RuntimeError`].

use std::io;

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
    #[error("{0}")]
    Isolation(String),
    /// The process could not be spawned.
    #[error("could not start `{command}`: {source}")]
    Spawn {
        /// The service's command.
        command: String,
        /// Why.
        source: io::Error,
    },
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
