//! Typed errors, for callers that branch on what went wrong.
//!
//! Every error has a [`Kind`] ([`Error::kind`]): what callers branch on. Where a failure
//! has an error underneath (an OS error, a parser's, one of ours re-wrapped with what we
//! were doing), the error keeps it as its [`std::error::Error::source`], and its `Display`
//! still reads as the whole story on one line (`"kernel: netlink bind: Permission denied"`),
//! the line a hook logs and VDSM shows.

use std::path::PathBuf;

/// An error underneath one of ours.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    /// A failure of `kind` while doing `context`, caused by `source`: an OS error, a
    /// parser's, or one of ours. Reads `"{kind}: {context}: {source}"`, as the flat
    /// variants of the same kind do.
    #[error("{kind}: {context}: {source}")]
    Caused {
        /// What went wrong, as the flat variants say it ([`Kind::Payload`],
        /// [`Kind::Config`], [`Kind::Kernel`] or [`Kind::Helper`]).
        kind: Kind,
        /// What we were doing.
        context: String,
        /// The error underneath.
        #[source]
        source: Source,
    },
    /// The state file could not be read or written, caused by `source` (an I/O error,
    /// or the JSON parser's for a malformed file).
    #[error("state {}: {context}: {source}", path.display())]
    StateCaused {
        /// The file concerned.
        path: PathBuf,
        /// What we were doing.
        context: String,
        /// The error underneath.
        #[source]
        source: Source,
    },
}

/// What kind of failure an [`Error`] is, whether or not it keeps a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// [`Error::Policy`].
    Policy,
    /// [`Error::Payload`]: VDSM's payload could not be read or understood.
    Payload,
    /// [`Error::State`]: the state file.
    State,
    /// [`Error::Config`]: the configuration, or a backend that cannot run here.
    Config,
    /// [`Error::Kernel`]: the kernel, or a tool changing it.
    Kernel,
    /// [`Error::Helper`]: the privileged helper.
    Helper,
    /// [`Error::Io`]: other I/O.
    Io,
}

impl std::fmt::Display for Kind {
    /// The prefix the flat variants of this kind start with.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Policy => "policy",
            Kind::Payload => "payload",
            Kind::State => "state",
            Kind::Config => "config",
            Kind::Kernel => "kernel",
            Kind::Helper => "helper",
            Kind::Io => "io",
        })
    }
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

    /// A failure of `kind` while doing `context`, keeping `source` (an OS error, a
    /// parser's, or one of ours re-wrapped).
    pub fn caused(kind: Kind, context: impl Into<String>, source: impl Into<Source>) -> Self {
        Error::Caused {
            kind,
            context: context.into(),
            source: source.into(),
        }
    }

    /// A [`Kind::Payload`] error caused by `source`, e.g. the JSON or XML parser's.
    pub fn payload(context: impl Into<String>, source: impl Into<Source>) -> Self {
        Error::caused(Kind::Payload, context, source)
    }

    /// A [`Kind::Kernel`] error caused by `source`, e.g. a netlink socket's OS error.
    pub fn kernel(context: impl Into<String>, source: impl Into<Source>) -> Self {
        Error::caused(Kind::Kernel, context, source)
    }

    /// A [`Kind::Helper`] error caused by `source`.
    pub fn helper(context: impl Into<String>, source: impl Into<Source>) -> Self {
        Error::caused(Kind::Helper, context, source)
    }

    /// A [`Kind::Config`] error caused by `source`.
    pub fn config(context: impl Into<String>, source: impl Into<Source>) -> Self {
        Error::caused(Kind::Config, context, source)
    }

    /// A state file error at `path` while doing `context`, caused by `source`.
    pub fn state(path: impl Into<PathBuf>, context: impl Into<String>, source: impl Into<Source>) -> Self {
        Error::StateCaused {
            path: path.into(),
            context: context.into(),
            source: source.into(),
        }
    }

    /// What kind of failure this is: what callers branch on.
    pub fn kind(&self) -> Kind {
        match self {
            Error::Policy { .. } => Kind::Policy,
            Error::Payload(_) => Kind::Payload,
            Error::State { .. } | Error::StateCaused { .. } => Kind::State,
            Error::Config(_) => Kind::Config,
            Error::Kernel(_) => Kind::Kernel,
            Error::Helper(_) => Kind::Helper,
            Error::Io { .. } => Kind::Io,
            Error::Caused { kind, .. } => *kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_wrapped_error_keeps_its_source_and_the_whole_story() {
        let os = std::io::Error::from_raw_os_error(libc::EPERM);
        let text = os.to_string();
        let e = Error::kernel("netlink bind", os);
        assert_eq!(e.to_string(), format!("kernel: netlink bind: {text}"));
        assert_eq!(e.kind(), Kind::Kernel);
        let source = e.source().expect("a source");
        let io = source.downcast_ref::<std::io::Error>().expect("the OS error");
        assert_eq!(io.raw_os_error(), Some(libc::EPERM));

        // One of ours re-wrapped: its kind, text and source survive under the new kind.
        let outer = Error::config("isolation cannot be enforced on this host", e);
        assert_eq!(outer.kind(), Kind::Config);
        assert_eq!(
            outer.to_string(),
            format!("config: isolation cannot be enforced on this host: kernel: netlink bind: {text}")
        );
        let inner = outer.source().and_then(|s| s.downcast_ref::<Error>()).expect("ours");
        assert_eq!(inner.kind(), Kind::Kernel);
        let bottom = inner.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(bottom.and_then(std::io::Error::raw_os_error), Some(libc::EPERM));
    }

    #[test]
    fn a_parse_error_is_a_payload_error_with_the_parser_s_error() {
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let text = json.to_string();
        let e = Error::payload("invalid setupNetworks JSON", json);
        assert_eq!(e.kind(), Kind::Payload);
        assert_eq!(e.to_string(), format!("payload: invalid setupNetworks JSON: {text}"));
        assert!(e.source().is_some_and(|s| s.is::<serde_json::Error>()));

        let state = Error::state(
            "/run/x/state.json",
            "malformed",
            serde_json::from_str::<u8>("x").unwrap_err(),
        );
        assert_eq!(state.kind(), Kind::State);
        assert!(
            state.to_string().starts_with("state /run/x/state.json: malformed: "),
            "{state}"
        );
        assert!(state.source().is_some_and(|s| s.is::<serde_json::Error>()));
    }

    #[test]
    fn flat_errors_have_no_source_and_a_kind() {
        for (e, kind) in [
            (Error::Payload("x".into()), Kind::Payload),
            (Error::Kernel("x".into()), Kind::Kernel),
            (Error::Config("x".into()), Kind::Config),
            (Error::Helper("x".into()), Kind::Helper),
        ] {
            assert_eq!(e.kind(), kind);
            assert!(e.source().is_none());
            assert_eq!(e.to_string(), format!("{kind}: x"));
        }
    }
}
