//! The crate's error type.

use std::io;

/// What can stop the server or its setup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A userfaultfd operation failed (the operation and errno are in it).
    #[error(transparent)]
    Uffd(#[from] userfault::Error),
    /// Reading the page source failed.
    #[error("reading the page source: {0}")]
    Source(io::Error),
    /// The ranges, source or options do not fit together.
    #[error("configuration: {0}")]
    Config(String),
    /// The VMM's handshake was malformed or incomplete.
    #[error("handshake: {0}")]
    Handshake(String),
    /// A socket or file operation failed.
    #[error("{op}: {source}")]
    Io {
        /// The operation (`"accept"`, `"recvmsg"`, …).
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, source: impl Into<io::Error>) -> Error {
        Error::Io {
            op,
            source: source.into(),
        }
    }
}
