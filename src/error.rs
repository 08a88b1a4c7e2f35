//! Typed errors, for callers that branch on what went wrong.

use std::path::PathBuf;

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A network's custom properties or attributes cannot be honoured.
    #[error("network {network}: {reason}")]
    Policy {
        /// The oVirt network name.
        network: String,
        /// Why it was rejected.
        reason: String,
    },
    /// VDSM's payload could not be read or understood.
    #[error("payload: {0}")]
    Payload(String),
    /// The state file is unreadable, unwritable or malformed.
    #[error("state {}: {reason}", path.display())]
    State {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The configuration file or an override is invalid.
    #[error("config: {0}")]
    Config(String),
    /// The kernel refused or did not apply a change.
    #[error("kernel: {0}")]
    Kernel(String),
    /// The privileged helper could not be reached or failed.
    #[error("helper: {0}")]
    Helper(String),
    /// Other I/O.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
