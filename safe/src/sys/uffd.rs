//! The userfaultfd system calls that are not ioctls on a uffd: creating
//! one with `userfaultfd(2)` or through `/dev/userfaultfd`.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::error::Errno;

/// `userfaultfd(flags)`: a new userfaultfd owned by the caller.
pub(crate) fn userfaultfd(flags: libc::c_int) -> Result<OwnedFd, Errno> {
    // SAFETY: userfaultfd(2) takes one integer and touches no memory of
    // ours; a non-negative result is a new descriptor nobody else owns.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if r < 0 {
        return Err(Errno::last());
    }
    let fd = RawFd::try_from(r).map_err(|_| Errno::EBADF)?;
    // SAFETY: `fd` was just created by the kernel for this call only.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Checks that `dev` is the userfaultfd misc device: a character device
/// of the misc major (10) whose minor, assigned at boot, is the one
/// `/sys/dev/char/10:<minor>` (or, without sysfs, `/proc/misc`) names
/// `userfaultfd`. Only then is a non-negative `USERFAULTFD_IOC_NEW` result
/// a new descriptor.
///
/// `ENODEV` when it is another file, or neither sysfs nor `/proc` can tell.
pub(crate) fn check_userfaultfd_device(dev: BorrowedFd<'_>) -> Result<(), Errno> {
    let st = rustix::fs::fstat(dev).map_err(crate::error::rustix_errno)?;
    let chr =
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice;
    let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    if !chr || major != 10 {
        return Err(Errno::ENODEV);
    }
    if let Ok(link) = rustix::fs::readlink(format!("/sys/dev/char/{major}:{minor}"), Vec::new()) {
        let named = link.to_bytes().rsplit(|&b| b == b'/').next() == Some(b"userfaultfd");
        return if named { Ok(()) } else { Err(Errno::ENODEV) };
    }
    let misc = std::fs::read_to_string("/proc/misc").map_err(|_| Errno::ENODEV)?;
    if misc_lists_userfaultfd(&misc, minor) {
        Ok(())
    } else {
        Err(Errno::ENODEV)
    }
}

/// True when `/proc/misc` text (`<minor> <name>` lines) names `minor`
/// `userfaultfd`.
pub(crate) fn misc_lists_userfaultfd(misc: &str, minor: u32) -> bool {
    misc.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.next().and_then(|m| m.parse::<u32>().ok()) == Some(minor)
            && words.next() == Some("userfaultfd")
    })
}

/// `ioctl(dev, USERFAULTFD_IOC_NEW, flags)` on an open `/dev/userfaultfd`:
/// a new userfaultfd owned by the caller.
///
/// # Safety
///
/// `dev` must be the userfaultfd device ([`check_userfaultfd_device`]):
/// another file's driver may answer the request number with a
/// non-negative value that is not a new descriptor.
pub(crate) unsafe fn userfaultfd_from_device(
    dev: BorrowedFd<'_>,
    flags: libc::c_int,
) -> Result<OwnedFd, Errno> {
    let flags = libc::c_ulong::try_from(flags).map_err(|_| Errno::EINVAL)?;
    // SAFETY: USERFAULTFD_IOC_NEW takes the flags as an integer argument
    // and touches no memory of ours; on the userfaultfd device (the
    // caller's contract) it returns a new descriptor, which is wrapped in an
    // OwnedFd right below.
    let fd = unsafe { super::ioctl_val(dev, uffd_sys::USERFAULTFD_IOC_NEW, flags) }?;
    // SAFETY: `fd` was just created by the kernel for this call only.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of a descriptor the kernel installed in this process's
/// table while delivering a fork event.
///
/// # Safety
///
/// `fd` must be the `ufd` of a `UFFD_EVENT_FORK` message that this process
/// just read, and nothing else may take ownership of it.
pub(crate) unsafe fn owned_from_fork_event(fd: u32) -> Option<OwnedFd> {
    let fd = RawFd::try_from(fd).ok()?;
    if fd < 0 {
        return None;
    }
    // SAFETY: forwarded to the caller's contract: the kernel created this
    // descriptor for the read that returned the message, and ownership is
    // taken exactly once.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
