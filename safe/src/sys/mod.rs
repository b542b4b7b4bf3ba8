//! The one place that issues raw ioctls.
//!
//! Every ioctl of the crate goes through [`ioctl_mut`] or [`ioctl_val`];
//! each call site states in a `// SAFETY:` comment why its request number,
//! argument type and kernel side effects are sound. Nothing here interprets
//! results: callers turn the errno into an [`Error`](crate::Error) that
//! names their operation.

pub(crate) mod kvm;

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::error::Errno;

/// `ioctl(fd, request, arg)` with a pointer argument; the non-negative
/// return value, or the errno.
///
/// # Safety
///
/// `request` must be a request whose argument is a `T` (the kernel reads
/// and/or writes at most `size_of::<T>()` bytes at `arg`), `arg` must be
/// valid for that access, and whatever the request does besides (such as
/// writing pages into a registered range) must not break the caller's
/// memory-safety invariants.
#[inline]
pub(crate) unsafe fn ioctl_mut<T>(
    fd: BorrowedFd<'_>,
    request: u32,
    arg: *mut T,
) -> Result<i32, Errno> {
    // SAFETY: forwarded to the caller's contract above.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::c_ulong, arg) };
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}

/// `ioctl(fd, request, arg)` with an integer argument; the non-negative
/// return value, or the errno.
///
/// # Safety
///
/// `request` must take an integer (or no) argument, and its effects (for
/// example creating a file descriptor the caller must take ownership of)
/// must be handled by the caller.
pub(crate) unsafe fn ioctl_val(
    fd: BorrowedFd<'_>,
    request: u32,
    arg: libc::c_ulong,
) -> Result<i32, Errno> {
    // SAFETY: forwarded to the caller's contract above.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::c_ulong, arg) };
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}
pub(crate) mod uffd;

/// The base page size of the process, read from the aux vector once.
///
/// rustix reads the aux vector through libc (`getauxval`) so that the crate
/// also runs under valgrind, whose processes see the host's `PR_GET_AUXV`
/// answer; `getauxval` searches the vector on every call, hence the cache.
#[inline]
pub(crate) fn page_size() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    match PAGE.load(Ordering::Relaxed) {
        0 => {
            let page = rustix::param::page_size();
            PAGE.store(page, Ordering::Relaxed);
            page
        }
        page => page,
    }
}
