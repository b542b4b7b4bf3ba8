//! The crate's one error type: the operation, the errno, and where it helps,
//! what to do about it.
//!
//! ```
//! use userfault::error::{Errno, Error};
//!
//! let e = Error::os("UFFDIO_COPY", Errno::EEXIST);
//! assert_eq!(e.to_string(), "UFFDIO_COPY failed: EEXIST (File exists)");
//! assert_eq!(e.errno(), Some(Errno::EEXIST));
//! ```

use std::borrow::Cow;
use std::fmt;

/// A result whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An `errno` value, displayed as its name and description
/// (`EEXIST (File exists)`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(i32);

macro_rules! errnos {
    ($($name:ident),* $(,)?) => {
        impl Errno {
            $(
                #[doc = concat!("`", stringify!($name), "`.")]
                pub const $name: Errno = Errno(libc::$name);
            )*

            /// The symbolic name (`"EEXIST"`), if this is an errno the crate knows.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $(libc::$name => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

errnos!(
    EPERM, ENOENT, ESRCH, EINTR, EIO, ENXIO, E2BIG, EBADF, ECHILD, EAGAIN, ENOMEM, EACCES, EFAULT,
    EBUSY, EEXIST, ENODEV, ENOTDIR, EISDIR, EINVAL, ENFILE, EMFILE, ENOTTY, EFBIG, ENOSPC, ESPIPE,
    EROFS, ERANGE, ENOSYS, EOPNOTSUPP, EOVERFLOW, EHWPOISON, ENOEXEC,
);

/// The crate's [`Errno`] of a rustix error (the same raw value).
#[inline]
pub(crate) fn rustix_errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

impl Errno {
    /// Wraps a raw errno value.
    pub const fn from_raw(raw: i32) -> Errno {
        Errno(raw)
    }

    /// The raw errno value.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// The calling thread's `errno` after a failed system call.
    pub fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }

    /// The errno of an I/O error, if it came from the OS.
    pub fn from_io(e: &std::io::Error) -> Option<Errno> {
        e.raw_os_error().map(Errno)
    }

    /// The C library's description (`"File exists"`).
    pub fn description(self) -> String {
        let text = std::io::Error::from_raw_os_error(self.0).to_string();
        // std appends " (os error N)"; the name shown beside it says as much.
        match text.rfind(" (os error") {
            Some(at) => text[..at].to_string(),
            None => text,
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.description()),
            None => write!(f, "errno {} ({})", self.0, self.description()),
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> Self {
        std::io::Error::from_raw_os_error(e.0)
    }
}

/// Everything that can go wrong, with the operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call or ioctl failed.
    #[error("{op} failed: {errno}{}", hint_suffix(.hint))]
    Os {
        /// The system call or ioctl, as the kernel names it (`"UFFDIO_COPY"`).
        op: &'static str,
        /// What the kernel returned.
        errno: Errno,
        /// What the errno means here, or what to do about it.
        hint: Option<Cow<'static, str>>,
    },

    /// An operation on a range stopped part-way: `done` bytes from the start
    /// were processed, the rest were not.
    #[error("{op} stopped after {done} of {requested} bytes: {errno}")]
    Partial {
        /// The ioctl.
        op: &'static str,
        /// Bytes processed from the start of the range.
        done: u64,
        /// Bytes asked for.
        requested: u64,
        /// Why it stopped.
        errno: Errno,
    },

    /// The running kernel, or the object at hand, does not offer something
    /// the caller asked for.
    #[error("{what} is not supported: {reason}{}", errno_suffix(.errno))]
    Unsupported {
        /// What was asked for (`"UFFDIO_CONTINUE on this range"`).
        what: Cow<'static, str>,
        /// The errno the kernel gave when it was tried, if it was tried.
        errno: Option<Errno>,
        /// Why, in words an operator can act on.
        reason: Cow<'static, str>,
    },

    /// The arguments were refused before any system call was made.
    #[error("{op}: {reason}")]
    InvalidArgument {
        /// The operation that was about to run.
        op: &'static str,
        /// What is wrong with the arguments.
        reason: Cow<'static, str>,
    },
}

fn hint_suffix(hint: &Option<Cow<'static, str>>) -> String {
    hint.as_ref().map(|h| format!(": {h}")).unwrap_or_default()
}

fn errno_suffix(errno: &Option<Errno>) -> String {
    errno
        .map(|e| format!(" (the kernel said {e})"))
        .unwrap_or_default()
}

impl Error {
    /// `op` failed with `errno`.
    pub fn os(op: &'static str, errno: Errno) -> Error {
        Error::Os {
            op,
            errno,
            hint: None,
        }
    }

    /// `op` failed with `errno`, which here means `hint`.
    pub fn os_hint(op: &'static str, errno: Errno, hint: impl Into<Cow<'static, str>>) -> Error {
        Error::Os {
            op,
            errno,
            hint: Some(hint.into()),
        }
    }

    /// `op` failed with the calling thread's current `errno`.
    pub fn last_os(op: &'static str) -> Error {
        Error::os(op, Errno::last())
    }

    /// The arguments of `op` were refused before the system call.
    pub fn invalid(op: &'static str, reason: impl Into<Cow<'static, str>>) -> Error {
        Error::InvalidArgument {
            op,
            reason: reason.into(),
        }
    }

    /// `what` is unsupported because of `reason` (the kernel said `errno`).
    pub fn unsupported(
        what: impl Into<Cow<'static, str>>,
        errno: Option<Errno>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Error {
        Error::Unsupported {
            what: what.into(),
            errno,
            reason: reason.into(),
        }
    }

    /// The errno the kernel returned, if the error came from the kernel.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Os { errno, .. } | Error::Partial { errno, .. } => Some(*errno),
            Error::Unsupported { errno, .. } => *errno,
            Error::InvalidArgument { .. } => None,
        }
    }

    /// True when the kernel answered `EEXIST`: the page is already there.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::EEXIST)
    }

    /// True when the kernel answered `EAGAIN`: try again (for userfaultfd:
    /// the mapping is changing or an event such as REMOVE must be read first).
    pub fn is_again(&self) -> bool {
        self.errno() == Some(Errno::EAGAIN)
    }

    /// True for [`Error::Unsupported`].
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported { .. })
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e.errno() {
            Some(errno) => std::io::Error::new(std::io::Error::from(errno).kind(), e),
            None => std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_operation_and_errno() {
        let e = Error::os_hint(
            "userfaultfd",
            Errno::EPERM,
            "set vm.unprivileged_userfaultfd=1",
        );
        assert_eq!(
            e.to_string(),
            "userfaultfd failed: EPERM (Operation not permitted): set vm.unprivileged_userfaultfd=1"
        );
        let p = Error::Partial {
            op: "UFFDIO_COPY",
            done: 4096,
            requested: 8192,
            errno: Errno::EAGAIN,
        };
        assert_eq!(
            p.to_string(),
            "UFFDIO_COPY stopped after 4096 of 8192 bytes: EAGAIN (Resource temporarily unavailable)"
        );
        assert!(p.is_again());
        let u = Error::unsupported(
            "guest_memfd write()",
            Some(Errno::ESPIPE),
            "the kernel lacks it",
        );
        assert_eq!(
            u.to_string(),
            "guest_memfd write() is not supported: the kernel lacks it (the kernel said ESPIPE (Illegal seek))"
        );
        assert_eq!(format!("{:?}", Errno::from_raw(4095)), "Errno(4095)");
    }
}
