//! Adopting a userfaultfd that another process created and negotiated.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use super::{Features, Ioctls, KernelApi, Origin, Uffd};
use crate::error::{Error, Result};

/// `UFFD_FEATURE_INITIALIZED`: the kernel's internal "`UFFDIO_API` done"
/// bit, which newer kernels keep in the feature word `fdinfo` shows.
const INITIALIZED: u64 = 1 << 31;

impl Uffd {
    /// Adopts a userfaultfd received from another process (as `SCM_RIGHTS`
    /// ancillary data on a Unix socket): checks through
    /// `/proc/self/fd/<fd>` that it is one, and reads the features its
    /// creator enabled from `/proc/self/fdinfo/<fd>` (its `API:` line), since
    /// `UFFDIO_API` succeeds only once per userfaultfd.
    ///
    /// Its ranges were registered by the other process, in that process's
    /// address space: the resolution ioctls act on the address space the
    /// userfaultfd was created for, whichever process issues them. Obtain
    /// their [`Registration`](super::Registration)s by registering the same
    /// ranges again through this `Uffd` (a range already registered with a
    /// userfaultfd keeps its modes; see [`Uffd::register`]).
    ///
    /// The descriptor's file status flags (`O_NONBLOCK`) are shared with
    /// the sender's copy and kept as they are.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `fd` is not a userfaultfd, or its
    /// `UFFDIO_API` handshake was never made (detected on kernels that show
    /// `UFFD_FEATURE_INITIALIZED` in `fdinfo`; on older ones such a
    /// userfaultfd is adopted with no features, and registering fails
    /// later); [`Error::Os`] (`readlink`, `read`) when `/proc` cannot be
    /// read.
    pub fn from_received(fd: OwnedFd) -> Result<Uffd> {
        const OP: &str = "adopt userfaultfd";
        let raw = fd.as_raw_fd();
        // The calling thread's table first: after `unshare(CLONE_FILES)` the
        // process's table can hold another file under the same number.
        let link = std::fs::read_link(format!("/proc/thread-self/fd/{raw}"))
            .or_else(|_| std::fs::read_link(format!("/proc/self/fd/{raw}")))
            .map_err(|e| io_error("readlink", &e))?;
        if link.as_os_str() != "anon_inode:[userfaultfd]" {
            return Err(Error::invalid(
                OP,
                format!("descriptor {raw} is {}, not a userfaultfd", link.display()),
            ));
        }
        let info = std::fs::read_to_string(format!("/proc/thread-self/fdinfo/{raw}"))
            .or_else(|_| std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")))
            .map_err(|e| io_error("read", &e))?;
        let (features, ioctls) = parse_api_line(&info).ok_or_else(|| {
            Error::invalid(
                OP,
                format!("/proc/self/fdinfo/{raw} has no userfaultfd API line"),
            )
        })?;
        // The ioctls field is a constant; only the INITIALIZED bit of the
        // feature word tells a negotiated userfaultfd from a fresh one, on
        // kernels that keep that bit there (asked on a userfaultfd of our own).
        if features & INITIALIZED == 0 && kernel_marks_initialized() {
            return Err(Error::invalid(
                OP,
                "the userfaultfd's UFFDIO_API handshake was never made: its creator must \
                 negotiate features before sending it",
            ));
        }
        let features = Features::from_bits_retain(features & !INITIALIZED);
        // What the kernel offers, asked on a throw-away userfaultfd; a
        // process that may not create one (a jailed handler) still knows
        // the received userfaultfd's own features and ioctls.
        let api = super::query_kernel()
            .unwrap_or_else(|_| KernelApi::new(features, Ioctls::from_bits_retain(ioctls)));
        Ok(Uffd::from_parts(
            fd,
            Origin::Received,
            features,
            api,
            false,
            None,
            // Not known: asked with fcntl when it matters (the flag is
            // shared with the sender's copy, which may change it).
            false,
        ))
    }
}

/// True when this kernel shows `UFFD_FEATURE_INITIALIZED` in the `fdinfo`
/// of a userfaultfd whose `UFFDIO_API` handshake was made; false when it
/// does not, or when no userfaultfd can be created to ask.
fn kernel_marks_initialized() -> bool {
    let Ok(own) = Uffd::builder().create() else {
        return false;
    };
    let raw = own.as_fd().as_raw_fd();
    std::fs::read_to_string(format!("/proc/thread-self/fdinfo/{raw}"))
        .or_else(|_| std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")))
        .ok()
        .and_then(|info| parse_api_line(&info))
        .is_some_and(|(features, _)| features & INITIALIZED != 0)
}

fn io_error(op: &'static str, e: &std::io::Error) -> Error {
    match crate::error::Errno::from_io(e) {
        Some(errno) => Error::os(op, errno),
        None => Error::invalid(op, e.to_string()),
    }
}

/// The features and ioctls of the `API:\t<api>:<features>:<ioctls>` line
/// of a userfaultfd's `fdinfo` (hexadecimal, as `fs/userfaultfd.c` prints
/// them).
fn parse_api_line(info: &str) -> Option<(u64, u64)> {
    let line = info.lines().find_map(|l| l.strip_prefix("API:"))?;
    let mut fields = line.trim().split(':');
    let _api = fields.next()?;
    let features = u64::from_str_radix(fields.next()?, 16).ok()?;
    let ioctls = u64::from_str_radix(fields.next()?, 16).ok()?;
    Some((features, ioctls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fdinfo_api_line() {
        let info = "pos:\t0\nflags:\t02004002\nmnt_id:\t15\nino:\t1057\npending:\t0\ntotal:\t0\nAPI:\taa:80000008:c000000000000003\n";
        assert_eq!(
            parse_api_line(info),
            Some((0x8000_0008, 0xc000_0000_0000_0003))
        );
        assert_eq!(parse_api_line("pos:\t0\n"), None);
    }

    #[test]
    fn adopts_a_userfaultfd_with_its_features() {
        let uffd = match Uffd::builder()
            .request_features(Features::EVENT_REMOVE)
            .create()
        {
            Ok(u) => u,
            Err(e) => {
                let required = std::env::var("USERFAULT_TEST_REQUIRE")
                    .is_ok_and(|l| l.split(',').any(|c| matches!(c.trim(), "uffd" | "all")));
                assert!(!required, "required capability uffd is unavailable: {e}");
                eprintln!("SKIP adopts_a_userfaultfd_with_its_features: {e}");
                return;
            }
        };
        let enabled = uffd.features();
        let fd: OwnedFd = uffd.into();
        let adopted = Uffd::from_received(fd).unwrap();
        assert_eq!(adopted.origin(), Origin::Received);
        assert_eq!(adopted.features(), enabled);
        assert!(adopted.features().contains(Features::EVENT_REMOVE));
    }

    #[test]
    fn refuses_a_userfaultfd_without_its_handshake() {
        if !kernel_marks_initialized() {
            eprintln!(
                "SKIP refuses_a_userfaultfd_without_its_handshake: this kernel does not show \
                 UFFD_FEATURE_INITIALIZED in fdinfo (or no userfaultfd can be created)"
            );
            return;
        }
        // SAFETY: userfaultfd(2) takes only flags and returns a new descriptor or -1.
        let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        assert!(raw >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a descriptor this test just created and owns alone.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw as i32) };
        let err = Uffd::from_received(fd).unwrap_err();
        assert!(err.to_string().contains("never made"), "{err}");
    }

    #[test]
    fn refuses_what_is_not_a_userfaultfd() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let err = Uffd::from_received(file.into()).unwrap_err();
        assert!(err.to_string().contains("not a userfaultfd"), "{err}");
    }
}
