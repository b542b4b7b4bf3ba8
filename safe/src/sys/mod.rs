//! The one place that issues raw ioctls.
//!
//! Every ioctl of the crate goes through [`ioctl_mut`] or [`ioctl_val`];
//! each call site states in a `// SAFETY:` comment why its request number,
//! argument type and kernel side effects are sound. Nothing here interprets
//! results: callers turn the errno into an [`Error`](crate::Error) that
//! names their operation.

pub(crate) mod kvm;

use std::os::fd::BorrowedFd;

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
    unsafe { raw_ioctl(fd, request, arg.cast()) }
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
    // SAFETY: forwarded to the caller's contract above (the kernel takes
    // the integer in the pointer-sized argument register).
    unsafe { raw_ioctl(fd, request, arg as usize as *mut std::ffi::c_void) }
}

/// The system call itself, entered directly (rustix's `ioctl`), not through
/// libc's wrapper and its `errno` round trip: the resolution ioctls sit on
/// every fault's path.
///
/// # Safety
///
/// As [`ioctl_mut`] for a pointer `arg`, [`ioctl_val`] for an integer one.
#[inline]
unsafe fn raw_ioctl(
    fd: BorrowedFd<'_>,
    request: u32,
    arg: *mut std::ffi::c_void,
) -> Result<i32, Errno> {
    /// One request with its argument, as rustix's `ioctl` takes it.
    struct Request {
        opcode: u32,
        arg: *mut std::ffi::c_void,
    }
    // SAFETY: `ioctl` below is called only with the request and argument a
    // caller of `raw_ioctl` vouched for; the kernel may write through the
    // argument (`IS_MUTATING`), and the output is the return value alone.
    unsafe impl rustix::ioctl::Ioctl for Request {
        type Output = i32;
        const IS_MUTATING: bool = true;
        fn opcode(&self) -> rustix::ioctl::Opcode {
            self.opcode as rustix::ioctl::Opcode
        }
        fn as_ptr(&mut self) -> *mut std::ffi::c_void {
            self.arg
        }
        unsafe fn output_from_ptr(
            out: rustix::ioctl::IoctlOutput,
            _arg: *mut std::ffi::c_void,
        ) -> rustix::io::Result<i32> {
            Ok(out)
        }
    }
    // SAFETY: forwarded to the caller's contract above.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            Request {
                opcode: request,
                arg,
            },
        )
    }
    .map_err(crate::error::rustix_errno)
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
