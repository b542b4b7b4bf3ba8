//! Read-write protection (Linux 7.3): `UFFDIO_RWPROTECT` and
//! `UFFDIO_SET_MODE`.
//!
//! A range registered [`RegisterMode::RWP`](super::RegisterMode::RWP) on a
//! userfaultfd that enabled [`Features::RWP`] can be made inaccessible with
//! [`Uffd::rwprotect`]: the next read *or* write of a protected page raises
//! a fault of kind [`FaultKind::Rwp`](super::FaultKind::Rwp), which the
//! handler resolves by un-protecting the page (the page keeps its data; it
//! is never copied or continued). With [`Features::RWP_ASYNC`] the kernel
//! resolves such faults itself, without an event, and `PAGEMAP_SCAN`
//! ([`crate::pagemap`]) reports the pages touched since they were protected:
//! working-set tracking ([`crate::workingset`]). [`Uffd::set_mode`] switches
//! between the two at run time.

use std::sync::atomic::Ordering;

use uffd_sys as sys;

use super::resolve::decode;
use super::{Features, Ioctls, Registration, RwprotectMode, Uffd};
use crate::error::{Errno, Error, Result};

impl Uffd {
    /// `ioctl(uffd, UFFDIO_RWPROTECT, {range, mode})`—read-write protects
    /// `[start, start + len)` (`mode` has [`RwprotectMode::RWP`]) or
    /// un-protects it (`mode` without `RWP`), which wakes the threads
    /// waiting on RWP faults in it unless [`RwprotectMode::DONTWAKE`].
    /// Returns the bytes done (the whole range; the kernel reports no
    /// partial progress for this ioctl). Linux 7.3.
    ///
    /// Offered only on ranges registered [`RegisterMode::RWP`](super::RegisterMode::RWP)
    /// ([`Ioctls::RWPROTECT`] in the registration's mask). Protecting makes
    /// no data move: the pages stay in memory (shmem pages lose the
    /// protection if they are reclaimed).
    ///
    /// # Errors
    ///
    /// Before the system call: [`Error::InvalidArgument`] (empty or
    /// unaligned range, outside `reg`, `reg` of another userfaultfd, `RWP`
    /// together with `DONTWAKE`, which the kernel refuses as it does
    /// `UFFDIO_WRITEPROTECT_MODE_WP | DONTWAKE`: protecting wakes nobody),
    /// [`Error::Unsupported`] (the range's mask lacks `UFFDIO_RWPROTECT`).
    /// From the kernel: `EAGAIN` (read events first), `ENOENT`, `EINVAL`,
    /// `ESRCH`.
    ///
    /// # References
    ///
    /// - `UFFDIO_RWPROTECT(2const)` (man-pages 6.19)
    /// - [Documentation/admin-guide/mm/userfaultfd.rst](https://docs.kernel.org/admin-guide/mm/userfaultfd.html)
    #[doc(alias = "UFFDIO_RWPROTECT")]
    pub fn rwprotect(
        &self,
        reg: &Registration,
        start: usize,
        len: usize,
        mode: RwprotectMode,
    ) -> Result<usize> {
        const OP: &str = "UFFDIO_RWPROTECT";
        self.check_resolve(OP, Ioctls::RWPROTECT, reg, start, len)?;
        if mode.contains(RwprotectMode::RWP | RwprotectMode::DONTWAKE) {
            return Err(Error::invalid(
                OP,
                "DONTWAKE applies only when removing protection (the kernel refuses RWP with \
                 DONTWAKE)",
            ));
        }
        self.rwprotect_prechecked(start, len, mode)
    }

    /// `UFFDIO_RWPROTECT` of a range already checked against its
    /// registration and a mode without `RWP | DONTWAKE`.
    #[inline]
    pub(crate) fn rwprotect_prechecked(
        &self,
        start: usize,
        len: usize,
        mode: RwprotectMode,
    ) -> Result<usize> {
        const OP: &str = "UFFDIO_RWPROTECT";
        let mut arg = sys::uffdio_rwprotect {
            range: sys::uffdio_range {
                start: start as u64,
                len: len as u64,
            },
            mode: mode.bits(),
        };
        // SAFETY: UFFDIO_RWPROTECT reads one `uffdio_rwprotect` (`arg`); it
        // changes only the access protection of a range registered RWP with
        // this userfaultfd (never its data) and wakes waiting threads.
        let r = unsafe { crate::sys::ioctl_mut(self.as_fd_ref(), sys::UFFDIO_RWPROTECT, &mut arg) };
        decode(OP, len, r, 0)
    }

    /// `ioctl(uffd, UFFDIO_SET_MODE, {enable, disable})`—turns async
    /// features on or off on this live userfaultfd; Linux 7.3 accepts only
    /// [`Features::RWP_ASYNC`]. Afterwards [`features`](Self::features)
    /// shows the change.
    ///
    /// Turning `RWP_ASYNC` on makes the kernel resolve RWP faults itself
    /// from then on (faults already reported stay the handler's to
    /// resolve); turning it off makes later accesses to protected pages
    /// report events again.
    ///
    /// # Errors
    ///
    /// Before the system call: [`Error::InvalidArgument`] when a feature is
    /// both in `enable` and `disable`, when both are empty, and when
    /// `enable` has `RWP_ASYNC` but this userfaultfd did not enable
    /// [`Features::RWP`] (which the kernel refuses with `EINVAL`);
    /// [`Error::Unsupported`] when the kernel's `UFFDIO_API` answer did not
    /// offer `UFFDIO_SET_MODE` (kernels before 7.3). From the kernel:
    /// `EINVAL` (a feature that cannot be switched at run time).
    ///
    /// # References
    ///
    /// - `ioctl_userfaultfd(2)`, `UFFDIO_SET_MODE` (man-pages 6.19)
    #[doc(alias = "UFFDIO_SET_MODE")]
    pub fn set_mode(&self, enable: Features, disable: Features) -> Result<()> {
        const OP: &str = "UFFDIO_SET_MODE";
        if enable.intersects(disable) {
            return Err(Error::invalid(
                OP,
                format!(
                    "{:?} is both enabled and disabled",
                    enable.intersection(disable)
                ),
            ));
        }
        if enable.is_empty() && disable.is_empty() {
            return Err(Error::invalid(OP, "nothing to enable or disable"));
        }
        if !self.kernel_api().ioctls().contains(Ioctls::SET_MODE) {
            return Err(Error::unsupported(
                OP,
                None,
                format!(
                    "the kernel's UFFDIO_API answer offers {:?} (UFFDIO_SET_MODE needs Linux 7.3)",
                    self.kernel_api().ioctls()
                ),
            ));
        }
        if enable.contains(Features::RWP_ASYNC) && !self.features().contains(Features::RWP) {
            return Err(Error::invalid(
                OP,
                "RWP_ASYNC can only be switched on a userfaultfd that enabled Features::RWP (the \
                 kernel refuses it with EINVAL otherwise)",
            ));
        }
        let mut arg = sys::uffdio_set_mode {
            enable: enable.bits(),
            disable: disable.bits(),
        };
        // SAFETY: UFFDIO_SET_MODE reads one `uffdio_set_mode` (`arg`); it
        // changes how this userfaultfd resolves faults, never memory.
        unsafe { crate::sys::ioctl_mut(self.as_fd_ref(), sys::UFFDIO_SET_MODE, &mut arg) }
            .map_err(|e| {
                if e == Errno::EINVAL {
                    Error::os_hint(
                        OP,
                        e,
                        format!(
                            "the kernel cannot switch {:?} at run time (Linux 7.3 switches only \
                             RWP_ASYNC)",
                            enable | disable
                        ),
                    )
                } else {
                    Error::os(OP, e)
                }
            })?;
        // The stored set follows what the kernel accepted.
        self.features.fetch_or(enable.bits(), Ordering::Relaxed);
        self.features.fetch_and(!disable.bits(), Ordering::Relaxed);
        Ok(())
    }
}
