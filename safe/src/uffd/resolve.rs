//! The resolution ioctls: COPY, ZEROPAGE, CONTINUE, WRITEPROTECT, POISON,
//! MOVE and WAKE, with exact partial-progress decoding.

use std::borrow::Cow;

use uffd_sys as sys;

use super::register::check_range;
use super::{
    ContinueMode, CopyMode, Ioctls, MoveMode, PoisonMode, RegisterMode, Registration, Uffd,
    UnprotectMode, ZeropageMode,
};
use crate::error::{Errno, Error, Result};

/// What a `*_or_wake` method did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolved {
    /// The whole range was resolved: this many bytes (the range's length).
    Done(usize),
    /// The kernel answered `EEXIST`: a page of the range was already
    /// present (resolved by another thread, or filled through the backing
    /// file). `done` bytes from the start were resolved by this call; the
    /// range from the present page on was not, and `UFFDIO_WAKE` was issued
    /// for the whole range (unless the mode asked not to wake), so waiting
    /// threads retry their access and fault again if their page is still
    /// missing.
    AlreadyPresent {
        /// Bytes from the start resolved before the present page.
        done: usize,
    },
}

impl Resolved {
    /// True for [`Resolved::AlreadyPresent`].
    pub fn was_present(&self) -> bool {
        matches!(self, Resolved::AlreadyPresent { .. })
    }
}

/// Turns the result of a resolution ioctl and its output field (bytes done,
/// or a negated errno) into bytes done or an error.
///
/// The kernel fails a partially done range with `EAGAIN` whatever stopped
/// it, and stores the count done; a negative count is the errno of a range
/// that made no progress.
#[inline]
pub(super) fn decode(
    op: &'static str,
    len: usize,
    result: Result<i32, Errno>,
    out: i64,
) -> Result<usize> {
    match result {
        // The kernel returns success only when the whole range was done.
        Ok(_) => Ok(len),
        Err(errno) => Err(failure(op, len, errno, out)),
    }
}

/// The error of a resolution ioctl that failed with `errno` after storing
/// `out` (kept out of the resolution path).
#[cold]
#[inline(never)]
fn failure(op: &'static str, len: usize, errno: Errno, out: i64) -> Error {
    if out > 0 && (out as u64) < len as u64 {
        return Error::Partial {
            op,
            done: out as u64,
            requested: len as u64,
            errno,
        };
    }
    let errno = match out.checked_neg().and_then(|e| i32::try_from(e).ok()) {
        Some(e) if (1..4096).contains(&e) => Errno::from_raw(e),
        _ => errno,
    };
    Error::os_hint(op, errno, hint(op, errno))
}

fn hint(op: &'static str, errno: Errno) -> Cow<'static, str> {
    match (op, errno) {
        ("UFFDIO_POISON", Errno::EEXIST) => {
            "a page of the range is already present or poisoned; waiting threads were not woken \
             (issue UFFDIO_WAKE)"
                .into()
        }
        (_, Errno::EEXIST) => {
            "a page of the range is already present; waiting threads were not woken: issue \
             UFFDIO_WAKE for the range (the *_or_wake methods do)"
                .into()
        }
        (_, Errno::EAGAIN) => {
            "the address space is changing: read the pending events (REMOVE, UNMAP, REMAP, \
             FORK) first, then retry"
                .into()
        }
        ("UFFDIO_CONTINUE", Errno::EFAULT) => {
            "no page in the page cache at this offset: fill the backing file first (or it was \
             removed, e.g. by a punch-hole)"
                .into()
        }
        ("UFFDIO_MOVE", Errno::EINVAL) => {
            "UFFDIO_MOVE needs private anonymous memory at both ends, in this process's \
             address space, without overlap"
                .into()
        }
        ("UFFDIO_MOVE", Errno::ENOENT) => {
            "a source page is not present (MoveMode::ALLOW_SRC_HOLES skips holes)".into()
        }
        ("UFFDIO_MOVE", Errno::EBUSY) => {
            "a source page is shared with another mapping or process (a fork shares them: \
             madvise(MADV_DONTFORK) on the source prevents that), or pinned"
                .into()
        }
        (_, Errno::EINVAL) => format!(
            "the kernel does not offer {op} on this memory (the registration's ioctl mask is an \
             upper bound), a hugetlbfs range is not huge-page aligned, or the range is no longer \
             registered"
        )
        .into(),
        (_, Errno::ENOENT) => "no mapping registered with this userfaultfd is there: the range \
             was unmapped or remapped, or lies in a hole the registration spanned"
            .into(),
        (_, Errno::ESRCH) => "the process whose memory the range is has exited".into(),
        (_, Errno::ENOMEM) => "the kernel ran out of memory".into(),
        _ => format!("{op} failed").into(),
    }
}

/// `EINVAL` from `UFFDIO_CONTINUE` with `UFFDIO_CONTINUE_MODE_WP`.
#[cold]
#[inline(never)]
fn continue_wp_error() -> Error {
    Error::os_hint(
        "UFFDIO_CONTINUE",
        Errno::EINVAL,
        "kernels before Linux 6.4 have no UFFDIO_CONTINUE_MODE_WP and refuse the mode with \
         EINVAL (retry without ContinueMode::WP, then write-protect with UFFDIO_WRITEPROTECT); \
         on newer kernels: the memory does not support CONTINUE, a hugetlbfs range is not \
         huge-page aligned, or the range is no longer registered",
    )
}

/// A range outside the registration it is resolved through.
#[cold]
#[inline(never)]
fn outside_error(op: &'static str, reg: &Registration, start: usize, len: usize) -> Error {
    Error::invalid(
        op,
        format!(
            "range {start:#x}+{len:#x} lies outside the registration {:#x}+{:#x}",
            reg.start, reg.len
        ),
    )
}

/// A resolution the registration's ioctl mask does not offer.
#[cold]
#[inline(never)]
fn unoffered_error(op: &'static str, reg: &Registration) -> Error {
    Error::unsupported(
        format!("{op} on the range {:#x}+{:#x}", reg.start, reg.len),
        None,
        format!(
            "the kernel's ioctl mask for the registration is {} ({:#x})",
            super::flags::flag_names(reg.ioctls),
            reg.ioctls.bits()
        ),
    )
}

/// The argument of a resolution ioctl: its request, its name in errors,
/// and the field where the kernel stores the bytes done (or a negated
/// errno).
trait ResolveArg {
    const OP: &'static str;
    const REQUEST: u32;
    fn done(&self) -> i64;
}

macro_rules! resolve_arg {
    ($($ty:ident => $request:ident, $done:expr;)*) => {$(
        impl ResolveArg for sys::$ty {
            const OP: &'static str = stringify!($request);
            const REQUEST: u32 = sys::$request;
            #[inline]
            fn done(&self) -> i64 {
                let done: fn(&Self) -> i64 = $done;
                done(self)
            }
        }
    )*};
}

resolve_arg! {
    uffdio_copy => UFFDIO_COPY, |a| a.copy;
    uffdio_zeropage => UFFDIO_ZEROPAGE, |a| a.zeropage;
    uffdio_continue => UFFDIO_CONTINUE, |a| a.mapped;
    uffdio_poison => UFFDIO_POISON, |a| a.updated;
    uffdio_move => UFFDIO_MOVE, |a| a.move_;
    // No partial progress is reported for these two.
    uffdio_writeprotect => UFFDIO_WRITEPROTECT, |_| 0;
    uffdio_range => UFFDIO_WAKE, |_| 0;
}

impl Uffd {
    /// Issues the resolution ioctl of `arg` on this userfaultfd and decodes
    /// its result for a range of `len` bytes: the one body every
    /// resolution shares.
    ///
    /// # Safety
    ///
    /// The pointers in `arg` (COPY's and MOVE's `src`) must be valid for
    /// `len` bytes, and what the ioctl does to the memory of its range (and,
    /// for MOVE, of its source) must not break a Rust reference.
    #[inline(always)]
    unsafe fn issue<A: ResolveArg>(&self, mut arg: A, len: usize) -> Result<usize> {
        // SAFETY: `A::REQUEST` is the request whose argument is an `A`
        // (`ResolveArg` is implemented for exactly those pairs), `arg` is a
        // live local the kernel reads and writes, and the request's effect
        // on memory is the caller's promise above.
        let r = unsafe { crate::sys::ioctl_mut(self.as_fd_ref(), A::REQUEST, &raw mut arg) };
        decode(A::OP, len, r, arg.done())
    }

    /// The checks every resolution makes before its system call: the
    /// registration is this userfaultfd's, the range is non-empty,
    /// page-aligned, does not wrap and lies inside it, and its ioctl mask
    /// offers `bit`.
    #[inline(always)]
    pub(super) fn check_resolve(
        &self,
        op: &'static str,
        bit: Ioctls,
        reg: &Registration,
        start: usize,
        len: usize,
    ) -> Result<()> {
        // One branch on the resolution path; which check failed is worked
        // out again, in the order below, only when one did.
        let mask = super::register::page_size() - 1;
        // `contains` also rules out a range that wraps.
        let ok = reg.uffd_id == self.id()
            && len != 0
            && (start | len) & mask == 0
            && reg.contains(start, len)
            && reg.ioctls.contains(bit);
        if ok {
            Ok(())
        } else {
            Err(self.resolve_error(op, bit, reg, start, len))
        }
    }

    /// The error [`check_resolve`](Self::check_resolve) reports: the first
    /// check that fails, in order.
    #[cold]
    #[inline(never)]
    fn resolve_error(
        &self,
        op: &'static str,
        bit: Ioctls,
        reg: &Registration,
        start: usize,
        len: usize,
    ) -> Error {
        if let Err(e) = self.check_owner(op, reg) {
            return e;
        }
        if let Err(e) = check_range(op, start, len) {
            return e;
        }
        if !reg.contains(start, len) {
            return outside_error(op, reg, start, len);
        }
        debug_assert!(!reg.ioctls.contains(bit));
        unoffered_error(op, reg)
    }

    /// `ioctl(uffd, UFFDIO_COPY, {dst, src, len, mode})`—copies `src` into
    /// the missing pages at `dst` and wakes the threads waiting on them;
    /// returns the bytes copied (`src.len()`).
    ///
    /// The kernel never overwrites a present page: if one is found the
    /// copy stops there. **A failed copy does not wake waiting threads**:
    /// after `EEXIST` (the page was filled by another thread or through the
    /// backing file while the fault was pending) issue [`wake`](Self::wake),
    /// or use [`copy_or_wake`](Self::copy_or_wake).
    ///
    /// # Errors
    ///
    /// Before the system call: [`Error::InvalidArgument`] (empty or
    /// unaligned range, outside `reg`, `reg` of another userfaultfd,
    /// [`CopyMode::WP`] on a range not registered WP), [`Error::Unsupported`]
    /// (the range's mask lacks `UFFDIO_COPY`). From the kernel:
    /// [`Error::Partial`] when part of the range was copied (and woken);
    /// `EEXIST` ([`Error::is_exists`]); `EAGAIN` ([`Error::is_again`]: read
    /// events first); `ENOENT`/`EINVAL` (the range is no longer registered);
    /// `ESRCH`, `ENOMEM`.
    ///
    /// # References
    ///
    /// - [`UFFDIO_COPY(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_COPY.2const.html),
    ///   [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html)
    /// - [Documentation/admin-guide/mm/userfaultfd.rst](https://docs.kernel.org/admin-guide/mm/userfaultfd.html)
    #[doc(alias = "UFFDIO_COPY")]
    #[inline(always)]
    pub fn copy(
        &self,
        reg: &Registration,
        dst: usize,
        src: &[u8],
        mode: CopyMode,
    ) -> Result<usize> {
        const OP: &str = "UFFDIO_COPY";
        self.check_resolve(OP, Ioctls::COPY, reg, dst, src.len())?;
        if mode.contains(CopyMode::WP) && !reg.mode.contains(RegisterMode::WP) {
            return Err(Error::invalid(
                OP,
                "CopyMode::WP needs a range registered with RegisterMode::WP",
            ));
        }
        self.copy_prechecked(dst, src, mode)
    }

    /// The `UFFDIO_COPY` of [`copy`](Self::copy) without its checks, for the
    /// typed regions of [`crate::resolve`], which hold the same guarantees
    /// by construction: `dst` is a whole page of the caller's registration
    /// with this userfaultfd, page-aligned, and the mask offers COPY.
    #[inline]
    pub(crate) fn copy_prechecked(&self, dst: usize, src: &[u8], mode: CopyMode) -> Result<usize> {
        let arg = sys::uffdio_copy {
            dst: dst as u64,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode: mode.bits(),
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads `len` bytes at `src`, a live slice. It
        // writes only into pages of a range registered with this
        // userfaultfd that are not present, which the registration's
        // contract leaves to the handler.
        unsafe { self.issue(arg, src.len()) }
    }

    /// `ioctl(uffd, UFFDIO_COPY, {dst, src, len, mode})` from `len` bytes
    /// at a raw address that only the kernel reads: as [`copy`](Self::copy),
    /// for a source Rust code never holds a reference to (a file mapping
    /// whose file may change or shrink underneath it).
    ///
    /// The kernel reads the source with `copy_from_user`: a page it cannot
    /// read (unmapped, or past the end of a truncated file) fails the copy
    /// with `EFAULT` (or [`Error::Partial`] up to it) instead of raising a
    /// signal.
    ///
    /// # Errors
    ///
    /// As [`copy`](Self::copy), and `EFAULT` for an unreadable source.
    ///
    /// # Safety
    ///
    /// A source page the kernel must fault in may not wait on the calling
    /// thread: `[src, src + len)` must not lie in a range registered with a
    /// userfaultfd (or on a `KVM_MEM_USERFAULT` slot) whose faults this
    /// thread serves, or the copy can wait for itself. Memory safety does
    /// not depend on `src`: the kernel only reads it.
    ///
    /// # References
    ///
    /// - [`UFFDIO_COPY(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_COPY.2const.html)
    #[doc(alias = "UFFDIO_COPY")]
    #[inline(always)]
    pub unsafe fn copy_from_ptr(
        &self,
        reg: &Registration,
        dst: usize,
        src: *const u8,
        len: usize,
        mode: CopyMode,
    ) -> Result<usize> {
        const OP: &str = "UFFDIO_COPY";
        self.check_resolve(OP, Ioctls::COPY, reg, dst, len)?;
        if mode.contains(CopyMode::WP) && !reg.mode.contains(RegisterMode::WP) {
            return Err(Error::invalid(
                OP,
                "CopyMode::WP needs a range registered with RegisterMode::WP",
            ));
        }
        let arg = sys::uffdio_copy {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: mode.bits(),
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY only reads `[src, src + len)`, through
        // `copy_from_user`, which reports unreadable pages as EFAULT; the
        // caller promises that reading it does not wait on this thread. It
        // writes only into missing pages of a range registered with this
        // userfaultfd (checked above), which the registration's contract
        // leaves to the handler.
        unsafe { self.issue(arg, len) }
    }

    /// `ioctl(uffd, UFFDIO_ZEROPAGE, {range, mode})`—maps zero pages at the
    /// missing pages of `[dst, dst + len)` and, unless
    /// [`ZeropageMode::DONTWAKE`], wakes the threads waiting on them;
    /// returns the bytes done.
    ///
    /// Not offered on hugetlbfs. Like [`copy`](Self::copy), a failure wakes
    /// nobody; see [`zeropage_or_wake`](Self::zeropage_or_wake).
    ///
    /// # Errors
    ///
    /// As [`copy`](Self::copy).
    ///
    /// # References
    ///
    /// - [`UFFDIO_ZEROPAGE(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_ZEROPAGE.2const.html)
    #[doc(alias = "UFFDIO_ZEROPAGE")]
    pub fn zeropage(
        &self,
        reg: &Registration,
        dst: usize,
        len: usize,
        mode: ZeropageMode,
    ) -> Result<usize> {
        self.check_resolve("UFFDIO_ZEROPAGE", Ioctls::ZEROPAGE, reg, dst, len)?;
        let arg = sys::uffdio_zeropage {
            range: range(dst, len),
            mode: mode.bits(),
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE has no pointer but its range; it maps zero
        // pages only where a range registered with this userfaultfd has
        // none.
        unsafe { self.issue(arg, len) }
    }

    /// `ioctl(uffd, UFFDIO_CONTINUE, {range, mode})`—maps the pages the
    /// page cache already holds for `[start, start + len)` (a MINOR
    /// fault's resolution, or a MISSING one after filling the backing file)
    /// and, unless [`ContinueMode::DONTWAKE`], wakes the waiting threads;
    /// returns the bytes mapped.
    ///
    /// Offered only on ranges registered [`RegisterMode::MINOR`]. A failure
    /// wakes nobody; see [`continue_or_wake`](Self::continue_or_wake).
    ///
    /// # Errors
    ///
    /// As [`copy`](Self::copy), and `EFAULT` when the page cache has no page
    /// at an offset of the range. `EINVAL` with [`ContinueMode::WP`] says
    /// that kernels before Linux 6.4 lack `UFFDIO_CONTINUE_MODE_WP`.
    ///
    /// # References
    ///
    /// - [`UFFDIO_CONTINUE(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_CONTINUE.2const.html)
    #[doc(alias = "UFFDIO_CONTINUE")]
    #[inline]
    pub fn continue_range(
        &self,
        reg: &Registration,
        start: usize,
        len: usize,
        mode: ContinueMode,
    ) -> Result<usize> {
        const OP: &str = "UFFDIO_CONTINUE";
        self.check_resolve(OP, Ioctls::CONTINUE, reg, start, len)?;
        if mode.contains(ContinueMode::WP) && !reg.mode.contains(RegisterMode::WP) {
            return Err(Error::invalid(
                OP,
                "ContinueMode::WP needs a range registered with RegisterMode::WP",
            ));
        }
        let mapped = self.continue_prechecked(start, len, mode);
        if mode.contains(ContinueMode::WP)
            && let Err(e) = &mapped
            && e.errno() == Some(Errno::EINVAL)
        {
            return Err(continue_wp_error());
        }
        mapped
    }

    /// The `UFFDIO_CONTINUE` of [`continue_range`](Self::continue_range)
    /// without its checks, for the typed regions of [`crate::resolve`]: the
    /// range is whole pages of the caller's registration with this
    /// userfaultfd, and the caller has checked that the mask offers
    /// CONTINUE.
    #[inline]
    pub(crate) fn continue_prechecked(
        &self,
        start: usize,
        len: usize,
        mode: ContinueMode,
    ) -> Result<usize> {
        let arg = sys::uffdio_continue {
            range: range(start, len),
            mode: mode.bits(),
            mapped: 0,
        };
        // SAFETY: UFFDIO_CONTINUE has no pointer but its range; it maps
        // existing page-cache pages only where a range registered with this
        // userfaultfd has no page mapped.
        unsafe { self.issue(arg, len) }
    }

    /// `ioctl(uffd, UFFDIO_WRITEPROTECT, {range, UFFDIO_WRITEPROTECT_MODE_WP})`—write-protects
    /// `[start, start + len)`: a later write to it raises a write-protect
    /// fault that waits for [`write_unprotect`](Self::write_unprotect).
    /// Wakes nobody. Returns the bytes done (the whole range; the kernel
    /// reports no partial progress for this ioctl).
    ///
    /// Offered only on ranges registered [`RegisterMode::WP`].
    ///
    /// # Errors
    ///
    /// Before the system call as [`copy`](Self::copy). From the kernel:
    /// `EAGAIN`, `ENOENT`, `EINVAL`, `ESRCH`.
    ///
    /// # References
    ///
    /// - [`UFFDIO_WRITEPROTECT(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_WRITEPROTECT.2const.html)
    #[doc(alias = "UFFDIO_WRITEPROTECT")]
    pub fn write_protect(&self, reg: &Registration, start: usize, len: usize) -> Result<usize> {
        self.writeprotect(reg, start, len, sys::UFFDIO_WRITEPROTECT_MODE_WP)
    }

    /// `ioctl(uffd, UFFDIO_WRITEPROTECT, {range, mode})` without
    /// `UFFDIO_WRITEPROTECT_MODE_WP`—removes write protection from
    /// `[start, start + len)` and, unless [`UnprotectMode::DONTWAKE`],
    /// wakes the threads waiting on write-protect faults in it. Returns the
    /// bytes done (the whole range).
    ///
    /// Offered only on ranges registered [`RegisterMode::WP`].
    ///
    /// # Errors
    ///
    /// As [`write_protect`](Self::write_protect).
    ///
    /// # References
    ///
    /// - [`UFFDIO_WRITEPROTECT(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_WRITEPROTECT.2const.html)
    #[doc(alias = "UFFDIO_WRITEPROTECT")]
    pub fn write_unprotect(
        &self,
        reg: &Registration,
        start: usize,
        len: usize,
        mode: UnprotectMode,
    ) -> Result<usize> {
        // Only DONTWAKE is a mode of unprotecting; WP would protect.
        let bits = mode.bits() & !sys::UFFDIO_WRITEPROTECT_MODE_WP;
        self.writeprotect(reg, start, len, bits)
    }

    fn writeprotect(
        &self,
        reg: &Registration,
        start: usize,
        len: usize,
        mode: u64,
    ) -> Result<usize> {
        self.check_resolve("UFFDIO_WRITEPROTECT", Ioctls::WRITEPROTECT, reg, start, len)?;
        let arg = sys::uffdio_writeprotect {
            range: range(start, len),
            mode,
        };
        // SAFETY: UFFDIO_WRITEPROTECT has no pointer but its range; it
        // changes only the protection of a range registered WP with this
        // userfaultfd.
        unsafe { self.issue(arg, len) }
    }

    /// `ioctl(uffd, UFFDIO_POISON, {range, mode})`—marks the missing pages
    /// of `[start, start + len)` as poisoned, so that accessing them raises
    /// `SIGBUS` (as for a hardware memory error), and unless
    /// [`PoisonMode::DONTWAKE`] wakes the waiting threads; returns the bytes
    /// done. Linux 6.6+.
    ///
    /// # Errors
    ///
    /// As [`copy`](Self::copy); `EEXIST` when a page is present or poisoned.
    ///
    /// # References
    ///
    /// - [`UFFDIO_POISON(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_POISON.2const.html)
    #[doc(alias = "UFFDIO_POISON")]
    pub fn poison(
        &self,
        reg: &Registration,
        start: usize,
        len: usize,
        mode: PoisonMode,
    ) -> Result<usize> {
        self.check_resolve("UFFDIO_POISON", Ioctls::POISON, reg, start, len)?;
        let arg = sys::uffdio_poison {
            range: range(start, len),
            mode: mode.bits(),
            updated: 0,
        };
        // SAFETY: UFFDIO_POISON has no pointer but its range; it installs
        // poison markers only where a range registered with this
        // userfaultfd has no page.
        unsafe { self.issue(arg, len) }
    }

    /// `ioctl(uffd, UFFDIO_MOVE, {dst, src, len, mode})`—moves the pages at
    /// `[src, src + len)` of this process to the missing pages at `dst`
    /// (without copying) and, unless [`MoveMode::DONTWAKE`], wakes the
    /// waiting threads; returns the bytes moved. Linux 6.8+.
    ///
    /// Both ends must be private anonymous memory of this process; the
    /// kernel refuses file mappings (even where the mask offers MOVE),
    /// pages shared with another process — which includes every page a
    /// `fork(2)` by any thread has shared with the child, so mark a staging
    /// mapping `MADV_DONTFORK` — and overlapping ranges. Pages missing at
    /// the source fail with `ENOENT` unless [`MoveMode::ALLOW_SRC_HOLES`]
    /// (which counts them as moved).
    ///
    /// # Safety
    ///
    /// Unlike the other resolutions this takes pages *away* from memory
    /// the handler does not own through a registration: afterwards
    /// `[src, src + len)` is unmapped (reading it yields zeros, or faults
    /// to a userfaultfd handler if registered). The caller must ensure no
    /// Rust reference points into the source range, and that nothing
    /// relies on its contents afterwards; a dedicated staging mapping
    /// ([`Mapping`](crate::mem::Mapping)) that is only accessed through raw
    /// pointers satisfies this.
    ///
    /// # Errors
    ///
    /// As [`copy`](Self::copy), plus [`Error::InvalidArgument`] for an
    /// unaligned or wrapping source, and from the kernel `EINVAL` (not
    /// private anonymous memory, overlap, or another process's userfaultfd),
    /// `ENOENT` (source hole), `EBUSY` (source page shared, e.g. after a
    /// fork, or pinned),
    /// `EEXIST`.
    ///
    /// # References
    ///
    /// - [`UFFDIO_MOVE(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_MOVE.2const.html)
    #[doc(alias = "UFFDIO_MOVE")]
    pub unsafe fn move_pages(
        &self,
        reg: &Registration,
        dst: usize,
        src: usize,
        len: usize,
        mode: MoveMode,
    ) -> Result<usize> {
        const OP: &str = "UFFDIO_MOVE";
        self.check_resolve(OP, Ioctls::MOVE, reg, dst, len)?;
        check_range(OP, src, len)?;
        let arg = sys::uffdio_move {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: mode.bits(),
            move_: 0,
        };
        // SAFETY: UFFDIO_MOVE fills only missing pages of a range registered
        // with this userfaultfd, and unmaps the source pages, which the
        // caller promised no Rust reference points into; the kernel checks
        // that the source is mapped (ENOENT otherwise).
        unsafe { self.issue(arg, len) }
    }

    /// `ioctl(uffd, UFFDIO_WAKE, {start, len})`—wakes the threads waiting
    /// on faults in `[start, start + len)` without resolving anything; they
    /// retry their access. Returns `len`.
    ///
    /// Needed after a resolution with a `DONTWAKE` mode, and after a
    /// resolution failed with `EEXIST` (failures wake nobody).
    ///
    /// # Errors
    ///
    /// Before the system call as [`copy`](Self::copy); from the kernel
    /// `EINVAL`, `ENOMEM`.
    ///
    /// # References
    ///
    /// - [`UFFDIO_WAKE(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_WAKE.2const.html)
    #[doc(alias = "UFFDIO_WAKE")]
    pub fn wake(&self, reg: &Registration, start: usize, len: usize) -> Result<usize> {
        const OP: &str = "UFFDIO_WAKE";
        self.check_resolve(OP, Ioctls::WAKE, reg, start, len)?;
        self.wake_prechecked(start, len)
    }

    /// `ioctl(uffd, UFFDIO_WAKE, {start, len})` for a range no
    /// [`Registration`] is at hand for—wakes the threads of this
    /// userfaultfd's address space waiting on faults in
    /// `[start, start + len)`; they retry their access. Returns `len`.
    ///
    /// For a handler that read a fault it cannot place: an address outside
    /// every range it knows (its registrations went stale, or the process
    /// grew a registered mapping), or one whose range was unmapped or moved
    /// meanwhile. Waking resolves nothing and touches no memory, so it needs
    /// no registration; a thread whose page is still missing faults again.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an empty, unaligned or wrapping range
    /// (before the system call); from the kernel `EINVAL`.
    ///
    /// # References
    ///
    /// - [`UFFDIO_WAKE(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_WAKE.2const.html)
    #[doc(alias = "UFFDIO_WAKE")]
    pub fn wake_range(&self, start: usize, len: usize) -> Result<usize> {
        super::register::check_range("UFFDIO_WAKE", start, len)?;
        self.wake_prechecked(start, len)
    }

    /// `ioctl(uffd, UFFDIO_WRITEPROTECT, {first page of reg, mode 0})` on a
    /// registration without write protection: true while the address space
    /// is changing under a non-cooperative event of this userfaultfd that
    /// is not read yet (an `mremap`, `munmap`, `fork` or `madvise` waiting
    /// for its event to be read: the kernel answers `EAGAIN`), false when
    /// none is (`ENOENT`: the range is not write-protect registered, so the
    /// call changed nothing).
    ///
    /// For a handler that got `ENOENT` from a resolution on a userfaultfd
    /// with `UFFD_FEATURE_EVENT_REMAP`: the kernel checks whether the range
    /// is mapped before it checks for a pending event (Linux 6.9 on), so
    /// `ENOENT` alone does not say whether a move's event is on its way.
    /// With no change pending, and no event read since the failing call, the
    /// range really is gone.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a registration of another userfaultfd
    /// or one registered with [`RegisterMode::WP`] (the call would remove
    /// write protection from its first page). From the kernel: `ESRCH` (the
    /// process has exited; checked before the range is looked up, on the
    /// kernels tested from 5.10 on — a kernel without that check answers
    /// `ENOENT`, so `Ok(false)`), `EINVAL`/`ENOTTY` before Linux 5.7 (no
    /// `UFFDIO_WRITEPROTECT`).
    ///
    /// # References
    ///
    /// - [`UFFDIO_WRITEPROTECT(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_WRITEPROTECT.2const.html)
    /// - [Documentation/admin-guide/mm/userfaultfd.rst](https://docs.kernel.org/admin-guide/mm/userfaultfd.html)
    #[doc(alias = "UFFDIO_WRITEPROTECT")]
    pub fn mapping_change_pending(&self, reg: &Registration) -> Result<bool> {
        const OP: &str = "UFFDIO_WRITEPROTECT";
        self.check_owner(OP, reg)?;
        if reg.mode.contains(RegisterMode::WP) {
            return Err(Error::invalid(
                OP,
                "the registration is write-protect registered: probing it would remove write \
                 protection",
            ));
        }
        let page = super::register::page_size();
        let arg = sys::uffdio_writeprotect {
            range: sys::uffdio_range {
                start: reg.start() as u64,
                len: page as u64,
            },
            mode: 0,
        };
        // SAFETY: UFFDIO_WRITEPROTECT has no pointer but its range, a page
        // of a registration of this userfaultfd without WP mode, whose
        // protection the kernel cannot change (it answers ENOENT): it
        // touches no memory.
        match unsafe { self.issue(arg, page) } {
            // Only a WP-registered range succeeds; refused above.
            Ok(_) => Ok(false),
            Err(e) if e.is_again() => Ok(true),
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The `UFFDIO_WAKE` of [`wake`](Self::wake) without its checks, for the
    /// typed regions of [`crate::resolve`]: the range is whole pages of the
    /// caller's registration with this userfaultfd (every registration
    /// offers WAKE).
    #[inline]
    pub(crate) fn wake_prechecked(&self, start: usize, len: usize) -> Result<usize> {
        // SAFETY: UFFDIO_WAKE has no pointer but its range; it only wakes
        // threads of this userfaultfd's address space.
        unsafe { self.issue(range(start, len), len) }
    }

    /// [`copy`](Self::copy), and when the kernel answers `EEXIST`,
    /// [`wake`](Self::wake) for the range, so that no waiting thread is left
    /// asleep. Partial progress is continued from where it stopped.
    ///
    /// With [`CopyMode::DONTWAKE`] the caller wakes the range itself and no
    /// wake is issued here.
    ///
    /// # Errors
    ///
    /// As [`copy`](Self::copy) except `EEXIST`; [`Error::Partial`] counts
    /// all bytes this call resolved.
    #[doc(alias = "UFFDIO_COPY")]
    pub fn copy_or_wake(
        &self,
        reg: &Registration,
        dst: usize,
        src: &[u8],
        mode: CopyMode,
    ) -> Result<Resolved> {
        let dontwake = mode.contains(CopyMode::DONTWAKE);
        self.or_wake("UFFDIO_COPY", reg, dst, src.len(), dontwake, |off| {
            self.copy(reg, dst + off, &src[off..], mode)
        })
    }

    /// [`zeropage`](Self::zeropage), waking the range after `EEXIST` (unless
    /// [`ZeropageMode::DONTWAKE`]), as [`copy_or_wake`](Self::copy_or_wake).
    ///
    /// # Errors
    ///
    /// As [`zeropage`](Self::zeropage) except `EEXIST`.
    #[doc(alias = "UFFDIO_ZEROPAGE")]
    pub fn zeropage_or_wake(
        &self,
        reg: &Registration,
        dst: usize,
        len: usize,
        mode: ZeropageMode,
    ) -> Result<Resolved> {
        let dontwake = mode.contains(ZeropageMode::DONTWAKE);
        self.or_wake("UFFDIO_ZEROPAGE", reg, dst, len, dontwake, |off| {
            self.zeropage(reg, dst + off, len - off, mode)
        })
    }

    /// [`continue_range`](Self::continue_range), waking the range after
    /// `EEXIST` (the page is already mapped; unless
    /// [`ContinueMode::DONTWAKE`]), as [`copy_or_wake`](Self::copy_or_wake).
    ///
    /// # Errors
    ///
    /// As [`continue_range`](Self::continue_range) except `EEXIST`.
    #[doc(alias = "UFFDIO_CONTINUE")]
    pub fn continue_or_wake(
        &self,
        reg: &Registration,
        start: usize,
        len: usize,
        mode: ContinueMode,
    ) -> Result<Resolved> {
        let dontwake = mode.contains(ContinueMode::DONTWAKE);
        self.or_wake("UFFDIO_CONTINUE", reg, start, len, dontwake, |off| {
            self.continue_range(reg, start + off, len - off, mode)
        })
    }

    fn or_wake(
        &self,
        op: &'static str,
        reg: &Registration,
        start: usize,
        len: usize,
        dontwake: bool,
        mut resolve: impl FnMut(usize) -> Result<usize>,
    ) -> Result<Resolved> {
        let mut done = 0;
        loop {
            match resolve(done) {
                Ok(n) => return Ok(Resolved::Done(done + n)),
                // The kernel woke the part it did; carry on with the rest to
                // learn what stopped it.
                Err(Error::Partial { done: part, .. }) if part > 0 => done += part as usize,
                Err(e) if e.is_exists() => {
                    if !dontwake {
                        self.wake(reg, start, len)?;
                    }
                    return Ok(Resolved::AlreadyPresent { done });
                }
                Err(e) if done == 0 => return Err(e),
                Err(e) => {
                    return Err(Error::Partial {
                        op,
                        done: done as u64,
                        requested: len as u64,
                        errno: e.errno().unwrap_or(Errno::EAGAIN),
                    });
                }
            }
        }
    }
}

fn range(start: usize, len: usize) -> sys::uffdio_range {
    sys::uffdio_range {
        start: start as u64,
        len: len as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reports that `test` cannot run for want of `capability`, as the
    /// integration tests do: fails the test when `USERFAULT_TEST_REQUIRE`
    /// (comma separated) names the capability or `all`, and otherwise
    /// prints `SKIP <test>: <reason>` straight to stderr, past the
    /// harness's capture.
    fn skip(test: &str, capability: &str, reason: &str) {
        use std::io::Write as _;
        let required = std::env::var("USERFAULT_TEST_REQUIRE").is_ok_and(|list| {
            list.split(',')
                .map(str::trim)
                .any(|c| c == capability || c == "all")
        });
        if required {
            panic!("{test}: required capability {capability} is unavailable: {reason}");
        }
        let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
    }

    #[test]
    fn refusals_before_the_system_call_come_in_order() {
        const TEST: &str = "refusals_before_the_system_call_come_in_order";
        let uffd = match Uffd::new() {
            Ok(u) => u,
            Err(e) => return skip(TEST, "uffd", &e.to_string()),
        };
        let page = page_size_for_tests();
        let reg = Registration {
            uffd_id: uffd.id(),
            start: 16 * page,
            len: 4 * page,
            mode: RegisterMode::MISSING,
            ioctls: Ioctls::WAKE | Ioctls::COPY,
        };
        let data = vec![0u8; page];
        let text = |r: Result<usize>| r.unwrap_err().to_string();
        // Another userfaultfd's registration is refused first, whatever else
        // is wrong.
        let other = Registration {
            uffd_id: uffd.id() + 1_000_000,
            ..reg
        };
        let e = text(uffd.copy(&other, reg.start + 1, &data[..1], CopyMode::empty()));
        assert!(e.contains("belongs to userfaultfd"), "{e}");
        let e = text(uffd.zeropage(&reg, reg.start + 1, 0, ZeropageMode::empty()));
        assert!(e.contains("the length is zero"), "{e}");
        let e = text(uffd.copy(&reg, reg.start + 1, &data, CopyMode::empty()));
        assert!(e.contains("must be multiples of the page size"), "{e}");
        let e = text(uffd.wake(&reg, usize::MAX - (page - 1), page));
        assert!(e.contains("wraps around"), "{e}");
        let e = text(uffd.copy(&reg, reg.end(), &data, CopyMode::empty()));
        assert!(e.contains("lies outside the registration"), "{e}");
        let e = uffd
            .continue_range(&reg, reg.start, page, ContinueMode::empty())
            .unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        assert!(
            e.to_string().contains("UFFDIO_CONTINUE on the range"),
            "{e}"
        );
    }

    fn page_size_for_tests() -> usize {
        crate::uffd::register::page_size()
    }

    #[test]
    fn decode_reads_counts_and_negated_errnos() {
        assert_eq!(decode("UFFDIO_COPY", 8192, Ok(0), 8192).ok(), Some(8192));
        let partial = decode("UFFDIO_COPY", 8192, Err(Errno::EAGAIN), 4096).unwrap_err();
        assert!(matches!(
            partial,
            Error::Partial {
                done: 4096,
                requested: 8192,
                ..
            }
        ));
        assert!(partial.is_again());
        let exists = decode("UFFDIO_COPY", 4096, Err(Errno::EEXIST), -17).unwrap_err();
        assert!(exists.is_exists());
        assert!(matches!(exists, Error::Os { .. }));
        // The field names the errno when it disagrees with the return.
        let fault = decode("UFFDIO_CONTINUE", 4096, Err(Errno::EAGAIN), -14).unwrap_err();
        assert_eq!(fault.errno(), Some(Errno::EFAULT));
        // Untouched field: the ioctl's errno.
        let again = decode("UFFDIO_COPY", 4096, Err(Errno::EAGAIN), 0).unwrap_err();
        assert!(again.is_again());
        assert!(again.to_string().contains("read the pending events"));
        // Nonsense counts never become a size.
        let odd = decode("UFFDIO_COPY", 4096, Err(Errno::EINVAL), i64::MIN).unwrap_err();
        assert_eq!(odd.errno(), Some(Errno::EINVAL));
        let over = decode("UFFDIO_COPY", 4096, Err(Errno::EAGAIN), 8192).unwrap_err();
        assert!(matches!(over, Error::Os { .. }));
    }
}
