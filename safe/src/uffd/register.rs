//! `UFFDIO_REGISTER` / `UFFDIO_UNREGISTER` and the [`Registration`] value.

use std::borrow::Cow;

use uffd_sys as sys;

use super::{Ioctls, RegisterMode, Uffd};
use crate::error::{Errno, Error, Result};

/// A range registered with a [`Uffd`]: where, in which modes, and which
/// resolution ioctls the kernel offers on it.
///
/// A plain value: copying it registers nothing, and it stays valid only as
/// long as the registration does. The resolution methods of [`Uffd`] take
/// it to check, before any system call, that a range lies inside it, that
/// its ioctl mask offers the operation, and that it belongs to that
/// userfaultfd. The kernel checks the same things again, so a stale value
/// can only produce errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Registration {
    pub(super) uffd_id: u64,
    pub(super) start: usize,
    pub(super) len: usize,
    pub(super) mode: RegisterMode,
    pub(super) ioctls: Ioctls,
}

impl Registration {
    /// The same registration with only the ioctls in `keep` left in its
    /// mask: the resolutions then refuse the others before the system call.
    /// Used by CONTINUE-only regions, which must not be resolved by COPY
    /// even through the untyped API.
    pub(crate) fn restricted_to(mut self, keep: Ioctls) -> Registration {
        self.ioctls &= keep;
        self
    }

    /// The registration of the part of this one that `mremap(2)` moved,
    /// as a `UFFD_EVENT_REMAP` event reports it
    /// ([`Event::Remap`](super::Event::Remap): `[from, from + len)` now
    /// lives at `to`), computed without a system call: the kernel moves the
    /// registration with the pages, in the same mode and with the same
    /// ioctls. `None` when the move does not overlap this registration or
    /// an address would wrap.
    ///
    /// Registering the new range again would return the same, but only
    /// while it is still there: the event lets `mremap` return once it is
    /// read, and the process may move or unmap the range again before the
    /// handler gets to it. A stale registration only makes the kernel
    /// refuse the resolutions (`ENOENT`), as the type's docs say.
    pub fn remapped(&self, from: usize, to: usize, len: usize) -> Option<Registration> {
        let end = from.checked_add(len)?;
        let lo = self.start.max(from);
        let hi = self.end().min(end);
        if lo >= hi {
            return None;
        }
        let start = (lo - from).checked_add(to)?;
        start.checked_add(hi - lo)?;
        Some(Registration {
            start,
            len: hi - lo,
            ..*self
        })
    }

    /// The first address.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a registration is never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the last address.
    pub fn end(&self) -> usize {
        self.start + self.len
    }

    /// The modes the [`Uffd::register`] call that returned this value asked
    /// for — not necessarily the modes in effect. Registering a range again
    /// with a subset of the modes it already has leaves all of them armed
    /// (see [`Uffd::register`]), so faults of a mode missing here can still
    /// arrive; nor does an earlier value learn of a later registration
    /// that changed the modes.
    pub fn mode(&self) -> RegisterMode {
        self.mode
    }

    /// The resolution ioctls the kernel offers on the range (an upper
    /// bound: see [`Ioctls`]).
    pub fn ioctls(&self) -> Ioctls {
        self.ioctls
    }

    /// The [`Uffd::id`] of the userfaultfd the range is registered with.
    pub fn uffd_id(&self) -> u64 {
        self.uffd_id
    }

    /// True when `[addr, addr + len)` lies inside the range.
    #[inline]
    pub fn contains(&self, addr: usize, len: usize) -> bool {
        // An address below the start wraps to an offset past any length.
        let off = addr.wrapping_sub(self.start);
        off <= self.len && len <= self.len - off
    }
}

/// The base page size of the process.
#[inline]
pub(super) fn page_size() -> usize {
    crate::sys::page_size()
}

/// Checks that `[start, start + len)` is non-empty, page-aligned and does
/// not wrap around.
#[inline]
pub(super) fn check_range(op: &'static str, start: usize, len: usize) -> Result<()> {
    // The page size is a power of two, so a mask tests both alignments.
    let mask = page_size() - 1;
    if len == 0 || (start | len) & mask != 0 || start.checked_add(len).is_none() {
        return Err(range_error(op, start, len));
    }
    Ok(())
}

/// The error for a range [`check_range`] refuses (kept out of the
/// resolution path, which only ever checks).
#[cold]
#[inline(never)]
fn range_error(op: &'static str, start: usize, len: usize) -> Error {
    let page = page_size();
    if len == 0 {
        return Error::invalid(op, "the length is zero");
    }
    if !start.is_multiple_of(page) || !len.is_multiple_of(page) {
        return Error::invalid(
            op,
            format!(
                "range {start:#x}+{len:#x}: start and length must be multiples of the page \
                 size {page:#x}"
            ),
        );
    }
    Error::invalid(
        op,
        format!("range {start:#x}+{len:#x} wraps around the address space"),
    )
}

impl Uffd {
    /// `ioctl(uffd, UFFDIO_REGISTER, {range, mode})`—makes faults in
    /// `[start, start + len)` of the kinds in `mode` wait for this
    /// userfaultfd's handler; returns the range's [`Registration`] with the
    /// ioctls the kernel offers on it.
    ///
    /// `start` and `len` must be multiples of the page size (of the huge
    /// page size for hugetlbfs). Which modes a memory type accepts: MISSING
    /// and WP everywhere userfaultfd works; MINOR only on shmem and
    /// hugetlbfs (not private anonymous memory); RWP (Linux 7.3, with
    /// [`Features::RWP`](super::Features::RWP) enabled) on anonymous, shmem
    /// and hugetlbfs memory, never together with WP.
    ///
    /// # Holes
    ///
    /// The range need not be mapped throughout: the kernel registers the
    /// mappings inside it and skips the holes between them, and refuses
    /// only a range with no mapping at all (`EINVAL`). The returned
    /// [`Registration`] spans the whole range, holes included. An access to
    /// a hole is a `SIGSEGV` as ever, a mapping created in a hole later is
    /// not registered, and a resolution into a hole fails with `ENOENT`.
    /// Every mapping in the range must accept `mode`, or nothing is
    /// registered.
    ///
    /// # Registering a range again
    ///
    /// The kernel does not simply replace the modes of a range already
    /// registered with this userfaultfd. Where `mode` is a subset of the
    /// modes a mapping already has, the kernel leaves that mapping as it
    /// is: every mode stays armed, including those `mode` leaves out
    /// (registering `MISSING | WP`, then `MISSING`, still traps
    /// write-protect faults). Where `mode` adds a mode, the mapping's modes
    /// become exactly `mode` (registering `MISSING`, then `WP`, leaves only
    /// `WP`). To drop a mode, [`unregister`](Self::unregister) the range
    /// first. The returned [`Registration::mode`] is `mode`, the request,
    /// in either case; `/proc/<pid>/smaps` shows the modes in effect
    /// (`VmFlags`: `um` missing, `uw` write-protect, `ui` minor).
    ///
    /// # Safety
    ///
    /// From the moment this returns, an access to a page of the range that
    /// faults in a registered mode blocks the accessing thread until a
    /// handler resolves it (or the userfaultfd is closed), and the
    /// resolution ioctls of this userfaultfd, which are safe functions, may
    /// put data into the range at any time. The caller must ensure that no
    /// Rust reference (`&T`, `&mut T`, slices) points into the range while
    /// it is registered — it must be memory handed to a guest or reached
    /// only through raw pointers — and that no code the handler itself
    /// depends on touches it (a handler that faults on its own range
    /// deadlocks).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an empty, unaligned or wrapping range,
    /// for `WP | RWP`, and for `RWP` on a userfaultfd without
    /// [`Features::RWP`](super::Features::RWP) (checked before the system
    /// call); [`Error::Os`] from the kernel:
    /// `EINVAL` (no part of the range is mapped, a mapping's memory type
    /// does not support `mode`, a hugetlbfs range is not huge-page
    /// aligned), `EBUSY` (registered with another userfaultfd, or WP added
    /// to a range registered RWP or the reverse), `EPERM` (a read-only
    /// mapping of a file opened without write access), `ENOMEM`.
    ///
    /// # References
    ///
    /// - [`UFFDIO_REGISTER(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_REGISTER.2const.html),
    ///   [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html)
    /// - [Documentation/admin-guide/mm/userfaultfd.rst](https://docs.kernel.org/admin-guide/mm/userfaultfd.html)
    #[doc(alias = "UFFDIO_REGISTER")]
    pub unsafe fn register(
        &self,
        start: usize,
        len: usize,
        mode: RegisterMode,
    ) -> Result<Registration> {
        const OP: &str = "UFFDIO_REGISTER";
        check_range(OP, start, len)?;
        if mode.is_empty() {
            return Err(Error::invalid(OP, "the register mode is empty"));
        }
        if mode.contains(RegisterMode::WP | RegisterMode::RWP) {
            return Err(Error::invalid(
                OP,
                "WP and RWP cannot be combined on one range (the kernel refuses the pair with \
                 EINVAL: both use the page tables' userfaultfd bit)",
            ));
        }
        if mode.contains(RegisterMode::RWP) && !self.features().contains(super::Features::RWP) {
            return Err(Error::invalid(
                OP,
                "RWP registration needs Features::RWP enabled on this userfaultfd (request it \
                 when creating the userfaultfd; the kernel refuses with EINVAL otherwise)",
            ));
        }
        let mut arg = sys::uffdio_register {
            range: sys::uffdio_range {
                start: start as u64,
                len: len as u64,
            },
            mode: mode.bits(),
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `uffdio_register`,
        // which `arg` is. Its effect on the range's memory is the caller's
        // promise above.
        unsafe { crate::sys::ioctl_mut(self.as_fd_ref(), sys::UFFDIO_REGISTER, &mut arg) }
            .map_err(|e| Error::os_hint(OP, e, register_hint(e, mode)))?;
        Ok(Registration {
            uffd_id: self.id(),
            start,
            len,
            mode,
            ioctls: Ioctls::from_bits_retain(arg.ioctls),
        })
    }

    /// `ioctl(uffd, UFFDIO_UNREGISTER, {reg.start, reg.len})`—ends a
    /// registration: faults in the range are handled by the kernel again,
    /// threads waiting on MISSING faults in it are woken, and write
    /// protection set through this userfaultfd is removed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `reg` belongs to another userfaultfd;
    /// [`Error::Os`] (`EINVAL`: no part of the range is mapped any more).
    ///
    /// # References
    ///
    /// - [`UFFDIO_UNREGISTER(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_UNREGISTER.2const.html)
    #[doc(alias = "UFFDIO_UNREGISTER")]
    pub fn unregister(&self, reg: &Registration) -> Result<()> {
        self.check_owner("UFFDIO_UNREGISTER", reg)?;
        self.unregister_range(reg.start, reg.len)
    }

    /// `ioctl(uffd, UFFDIO_UNREGISTER, {start, len})`—unregisters any part
    /// of the address space registered with this userfaultfd, such as part
    /// of a registration, or a range after a remap event.
    ///
    /// Unregistering only returns memory to the kernel's normal fault
    /// handling, so it is safe.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an empty, unaligned or wrapping
    /// range; [`Error::Os`] otherwise.
    ///
    /// # References
    ///
    /// - [`UFFDIO_UNREGISTER(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_UNREGISTER.2const.html)
    #[doc(alias = "UFFDIO_UNREGISTER")]
    pub fn unregister_range(&self, start: usize, len: usize) -> Result<()> {
        const OP: &str = "UFFDIO_UNREGISTER";
        check_range(OP, start, len)?;
        let mut arg = sys::uffdio_range {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_UNREGISTER reads one `uffdio_range`, which `arg`
        // is; it only returns the range to the kernel's own fault handling.
        unsafe { crate::sys::ioctl_mut(self.as_fd_ref(), sys::UFFDIO_UNREGISTER, &mut arg) }
            .map_err(|e| {
                if e == Errno::EINVAL {
                    Error::os_hint(
                        OP,
                        e,
                        "no part of the range is mapped, or a hugetlbfs range is not \
                         huge-page aligned",
                    )
                } else {
                    Error::os(OP, e)
                }
            })?;
        Ok(())
    }

    /// The registration of the same range in this userfaultfd, for a
    /// userfaultfd delivered by a fork event ([`Origin::Fork`](super::Origin)):
    /// the child process inherits every range its parent had registered
    /// with the parent's userfaultfd, in the same modes.
    ///
    /// This registers nothing; the kernel still refuses resolutions of
    /// ranges the child has since unmapped.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] unless this userfaultfd came from a fork
    /// event of the userfaultfd `parent` belongs to.
    pub fn inherit(&self, parent: &Registration) -> Result<Registration> {
        if self.parent_id() != Some(parent.uffd_id) {
            return Err(Error::invalid(
                "inherit",
                "this userfaultfd was not delivered by a fork event of the registration's \
                 userfaultfd",
            ));
        }
        Ok(Registration {
            uffd_id: self.id(),
            ..*parent
        })
    }

    /// Refuses a registration of another userfaultfd.
    #[inline]
    pub(super) fn check_owner(&self, op: &'static str, reg: &Registration) -> Result<()> {
        if reg.uffd_id != self.id() {
            return Err(self.owner_error(op, reg));
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn owner_error(&self, op: &'static str, reg: &Registration) -> Error {
        Error::invalid(
            op,
            format!(
                "the registration {:#x}+{:#x} belongs to userfaultfd #{}, not to #{}",
                reg.start,
                reg.len,
                reg.uffd_id,
                self.id()
            ),
        )
    }
}

fn register_hint(errno: Errno, mode: RegisterMode) -> Cow<'static, str> {
    match errno {
        Errno::EINVAL => {
            let mut text = String::from(
                "no part of the range is mapped (holes between mappings are skipped), or the \
                 memory type of a mapping in it does not support ",
            );
            text.push_str(&super::flags::flag_names(mode));
            if mode.contains(RegisterMode::RWP) {
                text.push_str(
                    " (RWP needs Linux 7.3 and UFFD_FEATURE_RWP enabled on the userfaultfd, and \
                     cannot join WP on one mapping)",
                );
            }
            if mode.contains(RegisterMode::MINOR) {
                text.push_str(
                    " (MINOR needs shmem or hugetlbfs; private anonymous memory has no page \
                     cache)",
                );
            }
            text.push_str(
                ", or a hugetlbfs range is not huge-page aligned (guest_memfd mappings need a \
                 kernel with guest_memfd userfaultfd support)",
            );
            text.into()
        }
        Errno::EBUSY if mode.intersects(RegisterMode::WP | RegisterMode::RWP) => {
            "the range is registered with another userfaultfd, or registered RWP and WP is \
             added (or the reverse), which the kernel refuses on one mapping"
                .into()
        }
        Errno::EBUSY => "the range is registered with another userfaultfd".into(),
        Errno::EPERM => "the mapping is of a file opened without write access (userfaultfd needs \
             VM_MAYWRITE)"
            .into(),
        Errno::ENOMEM => "no part of the range is mapped (it lies past every mapping)".into(),
        _ => "registration failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `remapped` keeps the part a move covered, at its new place, with the
    /// same userfaultfd, mode and ioctls; nothing for a move elsewhere or
    /// one that would wrap.
    #[test]
    fn remapped_follows_the_moved_part() {
        let reg = Registration {
            uffd_id: 7,
            start: 0x10_000,
            len: 0x8_000,
            mode: RegisterMode::MISSING,
            ioctls: Ioctls::COPY | Ioctls::WAKE,
        };
        // The upper half moves to 0x40_000.
        let moved = reg.remapped(0x14_000, 0x40_000, 0x4_000).unwrap();
        assert_eq!((moved.start(), moved.len()), (0x40_000, 0x4_000));
        assert_eq!(
            (moved.uffd_id(), moved.mode(), moved.ioctls()),
            (7, reg.mode(), reg.ioctls())
        );
        // A move of a larger range that holds all of it.
        let moved = reg.remapped(0x8_000, 0x80_000, 0x20_000).unwrap();
        assert_eq!((moved.start(), moved.len()), (0x88_000, 0x8_000));
        // Elsewhere, touching only at the edges, or wrapping.
        assert_eq!(reg.remapped(0x18_000, 0x40_000, 0x1_000), None);
        assert_eq!(reg.remapped(0x8_000, 0x40_000, 0x8_000), None);
        assert_eq!(reg.remapped(usize::MAX - 0xfff, 0, 0x2000), None);
        assert_eq!(reg.remapped(0x10_000, usize::MAX - 0xfff, 0x8_000), None);
    }

    /// `contains` agrees with its definition, `start <= addr` and
    /// `addr + len <= start + len` without overflow, at every edge.
    #[test]
    fn contains_matches_its_definition() {
        let top = usize::MAX - 0xfff;
        for (start, rlen) in [(0x1000, 0x4000), (0, 0x2000), (top - 0x3000, 0x3000)] {
            let reg = Registration {
                uffd_id: 1,
                start,
                len: rlen,
                mode: RegisterMode::MISSING,
                ioctls: Ioctls::empty(),
            };
            let edges = [0, 1, 0xfff, 0x1000, 0x1001, rlen - 1, rlen, rlen + 1];
            let addrs = edges
                .iter()
                .flat_map(|&d| [start.wrapping_add(d), start.wrapping_sub(d)])
                .chain([0, usize::MAX]);
            for addr in addrs {
                for len in edges.iter().copied().chain([usize::MAX, usize::MAX - addr]) {
                    let want = addr >= start
                        && addr.checked_add(len).is_some_and(|end| end <= start + rlen);
                    assert_eq!(
                        reg.contains(addr, len),
                        want,
                        "{start:#x}+{rlen:#x}: {addr:#x}+{len:#x}"
                    );
                }
            }
        }
    }
}
