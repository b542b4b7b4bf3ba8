//! Type-level resolution: **a MISSING fault on a CONTINUE-only range is
//! resolved by writing the page into the backing file and then
//! `UFFDIO_CONTINUE` — never by `UFFDIO_COPY`, which its fault type does not
//! offer.**
//!
//! A [`Region`] is a registered range that knows its class, `C`:
//!
//! | class | how a region gets it | MISSING fault offers | MINOR fault offers | WP fault offers | RWP fault offers |
//! |---|---|---|---|---|---|
//! | [`CopyCapable`] | the kernel's ioctl mask has `UFFDIO_COPY` and the caller did not ask for CONTINUE-only | [`copy`](MissingFault::copy), [`zero`](MissingFault::zero) | [`map`](MinorFault::map) (`UFFDIO_CONTINUE`) | [`unprotect`](WpFault::unprotect) | [`unprotect`](RwpFault::unprotect) (`UFFDIO_RWPROTECT`) |
//! | [`ContinueOnly`] | the mask has `UFFDIO_CONTINUE` but not `UFFDIO_COPY`, or the caller asked for it on a file-backed range | [`write_then_continue`](MissingFault::write_then_continue) only | [`map`](MinorFault::map) | — (registered without WP) | — (registered without RWP) |
//!
//! An RWP fault (Linux 7.3) is never resolved by COPY or CONTINUE: its page
//! is present, only protected. A fault of a mode this crate does not know
//! is an [`UnknownFault`], which can only be woken.
//!
//! A CONTINUE-only region can only be made from a [`BackedMapping`] — a
//! mapping of a file whose page cache can be filled — and is always
//! registered `MISSING | MINOR`. MINOR alone is never used: an access to a
//! page that is not in the page cache would then be satisfied by the
//! kernel with a fresh zero page, silently, and the snapshot's data for
//! that page would be lost (the reference's F12). MISSING makes that
//! access a fault the handler fills; MINOR additionally reports pages that
//! are in the cache but not mapped in this process (filled by `write()`,
//! by another process, or by KVM itself).
//!
//! A fault value is consumed by the method that resolves it, so a fault
//! cannot be resolved twice; a fault value dropped unresolved wakes its
//! waiting thread (`UFFDIO_WAKE`), which retries the access and faults
//! again — no thread is left blocked by a forgotten fault.
//!
//! What each resolution does, exactly:
//!
//! - `write_then_continue(data)`: a page the region has not filled yet is
//!   claimed, filled at its file offset (`pwrite`, or the backing's fill;
//!   `EEXIST` from a backing that will not overwrite means it is already
//!   there), then `UFFDIO_CONTINUE` maps it and wakes the waiter. A page the
//!   region has already filled is **not written again**: it is only mapped
//!   (`UFFDIO_CONTINUE`; `EEXIST` → `UFFDIO_WAKE`), and refilled only if it
//!   has left the page cache (`EFAULT`, e.g. a hole punch). So a duplicate
//!   MISSING fault, or a second handler thread, never overwrites what the
//!   guest wrote after the first mapping. A resolver that finds the page
//!   claimed by another waits for it.
//! - `copy(data)`: `UFFDIO_COPY`; `EEXIST` (the page reached the cache
//!   another way) → `UFFDIO_CONTINUE` where the range offers it (maps the
//!   cached page and wakes), else `UFFDIO_WAKE`. A failing COPY never wakes
//!   by itself.
//! - `map()`: `UFFDIO_CONTINUE`, after waiting for a fill of the page that
//!   is under way (a half-filled page can already be in the cache and raise
//!   MINOR faults); `EEXIST` → `UFFDIO_WAKE`; `EFAULT` (the page left the
//!   cache) → `UFFDIO_WAKE`, and the thread's retry raises a MISSING fault
//!   that brings the data.
//! - any other failure: the waiter is woken before the error is returned,
//!   so it retries and faults again rather than hanging.
//!
//! Fill guest memory ahead of faults through [`Region::populate`], not by
//! writing the backing file directly: only fills made through the region
//! take part in its per-page claim, so only they are safe while the guest
//! runs.
//!
//! # Example: a snapshot-restore handler
//!
//! Guest memory is a file (here a shmem memfd standing in for a
//! guest_memfd) restored from a snapshot on demand: every page the guest or
//! the VMM touches is read from the snapshot file when first needed.
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use userfault::backing::{BackedMapping, Backing, Memfd};
//! use userfault::resolve::{Fault, Region};
//! use userfault::uffd::{Event, EventBuffer, Uffd};
//!
//! # fn main() -> userfault::Result<()> {
//! let size = 1 << 30;
//! let snapshot = std::fs::File::open("/var/lib/vm/memory.snap").expect("snapshot");
//! let memory = Arc::new(Memfd::shmem(c"guest-ram", size)?);
//! let ram = Arc::new(BackedMapping::new(memory, 0, size as usize)?);
//!
//! let uffd = Arc::new(Uffd::builder().non_blocking(true).create()?);
//! // SAFETY: guest memory is only accessed through raw pointers (by vCPUs
//! // and device emulation), never through Rust references.
//! let region = unsafe { Region::continue_only(uffd.clone(), ram.clone())? };
//!
//! let page = region.page_size();
//! let mut data = vec![0u8; page];
//! let mut events = EventBuffer::with_capacity(64);
//! loop {
//!     for event in uffd.wait_events(&mut events, Some(Duration::from_millis(100)))? {
//!         let Event::PageFault { address, kind, .. } = event else { continue };
//!         let Some(fault) = region.fault(address, kind) else { continue };
//!         match fault {
//!             // Not in the page cache: read it from the snapshot, write it
//!             // into the file, map it. `copy` does not exist here.
//!             Fault::Missing(f) => {
//!                 let offset = f.file_offset().expect("a file-backed region");
//!                 rustix::io::pread(snapshot.as_fd(), &mut data, offset).expect("snapshot read");
//!                 f.write_then_continue(&data)?;
//!             }
//!             // Already in the cache (written earlier, or by KVM): map it.
//!             Fault::Minor(f) => {
//!                 f.map()?;
//!             }
//!             // Never raised: a CONTINUE-only region is registered
//!             // neither WP nor RWP.
//!             Fault::WriteProtect(f) => f.wake()?,
//!             Fault::Rwp(f) => f.wake()?,
//!             Fault::Unknown(f) => f.wake()?,
//!         }
//!     }
//! }
//! # }
//! ```
//!
//! # Misuse does not compile
//!
//! `UFFDIO_COPY` on a CONTINUE-only missing fault:
//!
//! ```compile_fail
//! # use userfault::resolve::*;
//! fn handle<B: userfault::backing::Backing>(f: MissingFault<'_, ContinueOnly, B>, page: &[u8]) {
//!     let _ = f.copy(page);
//! }
//! ```
//!
//! Resolving one fault twice:
//!
//! ```compile_fail
//! # use userfault::resolve::*;
//! fn handle<B: userfault::backing::Backing>(f: MissingFault<'_, ContinueOnly, B>, page: &[u8]) {
//!     let _ = f.write_then_continue(page);
//!     let _ = f.write_then_continue(page);
//! }
//! ```
//!
//! A CONTINUE-only region on anonymous memory:
//!
//! ```compile_fail
//! # use std::sync::Arc;
//! # use userfault::{mem::{Mapping, Sharing}, resolve::*, uffd::Uffd};
//! fn build(uffd: Arc<Uffd>, anon: Mapping) {
//!     let _ = unsafe { Region::continue_only(uffd, anon) };
//! }
//! ```
//!
//! The same shapes with the right types compile:
//!
//! ```
//! # use userfault::resolve::*;
//! fn handle<B: userfault::backing::Backing>(f: MissingFault<'_, ContinueOnly, B>, page: &[u8]) {
//!     let _ = f.write_then_continue(page);
//! }
//! fn handle_copy<B>(f: MissingFault<'_, CopyCapable, B>, page: &[u8]) {
//!     let _ = f.copy(page);
//! }
//! # use std::sync::Arc;
//! # use userfault::{backing::{Backing, BackedMapping}, uffd::Uffd};
//! fn build<B: Backing>(uffd: Arc<Uffd>, file: Arc<BackedMapping<B>>) {
//!     let _ = unsafe { Region::continue_only(uffd, file) };
//! }
//! ```
//!
//! The registration a CONTINUE-only region hands out
//! ([`Region::registration`]) offers only WAKE, CONTINUE and WRITEPROTECT,
//! so the raw [`Uffd`] resolutions refuse COPY, ZEROPAGE, MOVE and POISON on
//! it at run time as well.
//!
//! For callers that cannot carry the class in a type (a table of mixed
//! regions, a plugin interface), [`AnyRegion`] and [`AnyFault`] check the
//! same rules at run time and return errors instead.
//!
//! # References
//! - [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html)
//! - [Documentation/admin-guide/mm/userfaultfd.rst](https://docs.kernel.org/admin-guide/mm/userfaultfd.html)

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

mod rwp;

pub use rwp::{RwpFault, UnknownFault};

use crate::backing::{BackedMapping, Backing};
use crate::error::{Errno, Error, Result};
use crate::uffd::{
    ContinueMode, CopyMode, FaultKind, Ioctls, RegisterMode, Registration, Uffd, UnprotectMode,
    ZeropageMode,
};

mod sealed {
    pub trait Sealed {}
}

/// The class of a registered range: which resolutions its MISSING faults
/// allow. Sealed: implemented by [`CopyCapable`] and [`ContinueOnly`] only.
pub trait Class: sealed::Sealed + Send + Sync + 'static {
    /// The class's name, for messages.
    const NAME: &'static str;
    /// True for [`ContinueOnly`].
    const CONTINUE_ONLY: bool;
}

/// Type state: MISSING faults may be resolved with `UFFDIO_COPY` or
/// `UFFDIO_ZEROPAGE`.
#[derive(Debug)]
pub enum CopyCapable {}

/// Type state: MISSING faults may only be resolved by filling the backing
/// file and `UFFDIO_CONTINUE`.
#[derive(Debug)]
pub enum ContinueOnly {}

impl sealed::Sealed for CopyCapable {}
impl sealed::Sealed for ContinueOnly {}

impl Class for CopyCapable {
    const NAME: &'static str = "copy-capable";
    const CONTINUE_ONLY: bool = false;
}

impl Class for ContinueOnly {
    const NAME: &'static str = "CONTINUE-only";
    const CONTINUE_ONLY: bool = true;
}

/// How many times a write is repeated when the page keeps vanishing from
/// the page cache before `UFFDIO_CONTINUE` maps it.
const VANISHED_RETRIES: usize = 16;

/// A registered range of class `C`, backed by `B` (`()` for a copy-capable
/// region with no fillable backing, such as anonymous memory).
///
/// Registered on creation, unregistered on drop. `Sync`: any number of
/// handler threads may resolve its faults concurrently.
#[derive(Debug)]
pub struct Region<C: Class, B = ()> {
    uffd: Arc<Uffd>,
    reg: Registration,
    page_size: usize,
    backing: Option<Arc<BackedMapping<B>>>,
    /// CONTINUE-only regions: one [`UNFILLED`] / [`CLAIMED`] / [`FILLED`]
    /// state per page, so that a page is filled by one resolver at a time,
    /// is never filled again while it is in the page cache, and is not
    /// mapped while a fill is under way. Empty for copy-capable regions.
    fills: Box<[AtomicU8]>,
    _class: PhantomData<fn() -> C>,
}

/// Page state: this region has not filled the page.
const UNFILLED: u8 = 0;
/// Page state: one resolver is filling the page; others wait.
const CLAIMED: u8 = 1;
/// Page state: this region filled the page; it is filled again only if it
/// has left the page cache (`UFFDIO_CONTINUE` answers `EFAULT`).
const FILLED: u8 = 2;

/// Per-page fill states for a region of class `C`.
fn fill_states<C: Class>(len: usize, page_size: usize) -> Box<[AtomicU8]> {
    let pages = if C::CONTINUE_ONLY { len / page_size } else { 0 };
    (0..pages).map(|_| AtomicU8::new(UNFILLED)).collect()
}

impl Region<CopyCapable, ()> {
    /// `ioctl(uffd, UFFDIO_REGISTER, …)`: registers `[start, start + len)`
    /// with `mode` as a copy-capable region with `page_size` pages.
    ///
    /// # Safety
    ///
    /// As for [`Uffd::register`]: no Rust reference may point into the range
    /// while it is registered, and accesses to it may block until a handler
    /// resolves them.
    ///
    /// # Errors
    ///
    /// The registration's errors; `Unsupported` when the kernel's mask for
    /// the range has no `UFFDIO_COPY` (register it CONTINUE-only instead).
    pub unsafe fn copy_capable(
        uffd: Arc<Uffd>,
        start: usize,
        len: usize,
        mode: RegisterMode,
        page_size: usize,
    ) -> Result<Self> {
        // SAFETY: forwarded to this function's contract.
        unsafe { Region::register(uffd, start, len, mode, page_size, None) }
    }
}

impl<B: Backing> Region<CopyCapable, B> {
    /// `ioctl(uffd, UFFDIO_REGISTER, …)`: registers the whole of a file
    /// mapping as a copy-capable region (MINOR faults then map cached pages).
    ///
    /// # Safety
    ///
    /// As for [`Uffd::register`].
    ///
    /// # Errors
    ///
    /// As for [`Region::copy_capable`].
    pub unsafe fn copy_capable_file(
        uffd: Arc<Uffd>,
        mapping: Arc<BackedMapping<B>>,
        mode: RegisterMode,
    ) -> Result<Self> {
        let (start, len, page_size) =
            (mapping.addr(), mapping.len(), mapping.backing().page_size());
        // SAFETY: forwarded to this function's contract.
        unsafe { Region::register(uffd, start, len, mode, page_size, Some(mapping)) }
    }
}

impl<B: Backing> Region<ContinueOnly, B> {
    /// `ioctl(uffd, UFFDIO_REGISTER, MISSING | MINOR)`: registers a file
    /// mapping as a CONTINUE-only region, whatever else the kernel's mask
    /// offers (for guest_memfd, filling by `write()` is the faster path even
    /// where `UFFDIO_COPY` works).
    ///
    /// # Safety
    ///
    /// As for [`Uffd::register`].
    ///
    /// # Errors
    ///
    /// The registration's errors (`EINVAL` where the kernel cannot register
    /// this kind of file, e.g. guest_memfd without the posted uffd series);
    /// `Unsupported` when the kernel's mask for the range has no
    /// `UFFDIO_CONTINUE`.
    pub unsafe fn continue_only(uffd: Arc<Uffd>, mapping: Arc<BackedMapping<B>>) -> Result<Self> {
        let (start, len, page_size) =
            (mapping.addr(), mapping.len(), mapping.backing().page_size());
        let mode = RegisterMode::MISSING | RegisterMode::MINOR;
        // SAFETY: forwarded to this function's contract.
        unsafe { Region::register(uffd, start, len, mode, page_size, Some(mapping)) }
    }
}

impl<B: Backing> Region<ContinueOnly, B> {
    /// Fills the page at `page` (an address in the region) with `data` and
    /// maps it with `UFFDIO_CONTINUE`, ahead of any fault: pre-population.
    /// A page that is already mapped (`EEXIST`) is left as it is and wakes
    /// any waiter.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for an address outside the region, not
    /// page-aligned, or data that is not one page; the fill's and
    /// `UFFDIO_CONTINUE`'s errors otherwise.
    #[doc(alias = "UFFDIO_CONTINUE")]
    pub fn populate(&self, page: usize, data: &[u8]) -> Result<Resolution> {
        if !page.is_multiple_of(self.page_size) || !self.reg.contains(page, self.page_size) {
            return Err(Error::invalid(
                "populate",
                format!("{page:#x} is not the start of a page of the region"),
            ));
        }
        if data.len() != self.page_size {
            return Err(Error::invalid(
                "populate",
                format!(
                    "the page is {:#x} bytes, the data {:#x}",
                    self.page_size,
                    data.len()
                ),
            ));
        }
        self.fill_and_map(page, data)
    }

    /// Brings `page` into the page cache with `data` and maps it, filling
    /// it at most once while it stays in the cache.
    ///
    /// The page's state decides: a page this region has not filled is
    /// claimed, filled and mapped; a page it has filled is only mapped
    /// (`UFFDIO_CONTINUE`), and filled again only if it left the cache
    /// (`EFAULT`, e.g. a hole punch) — so a duplicate fault or a second
    /// resolver never overwrites what the guest wrote after the first
    /// mapping. A page being filled by another resolver is waited for.
    /// `EEXIST` from the continue ends in `UFFDIO_WAKE`.
    fn fill_and_map(&self, page: usize, data: &[u8]) -> Result<Resolution> {
        let Some(mapping) = self.backing.as_ref() else {
            return Err(Error::invalid("fill", "region has no backing"));
        };
        let offset = mapping.offset_of(page)?;
        let state = self.fill_state(page);
        let mut waits = 0u32;
        loop {
            match state.load(Ordering::Acquire) {
                UNFILLED => {
                    if state
                        .compare_exchange(UNFILLED, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        return self.fill_claimed(state, UNFILLED, mapping, page, offset, data);
                    }
                }
                FILLED => {
                    match self
                        .uffd
                        .continue_prechecked(page, self.page_size, ContinueMode::empty())
                    {
                        Ok(_) => return Ok(Resolution::Resolved),
                        Err(e) if e.is_exists() => {
                            return self.wake(page).map(|()| Resolution::AlreadyPresent);
                        }
                        Err(e) if e.errno() == Some(Errno::EFAULT) => {
                            if state
                                .compare_exchange(
                                    FILLED,
                                    CLAIMED,
                                    Ordering::Acquire,
                                    Ordering::Relaxed,
                                )
                                .is_ok()
                            {
                                return self
                                    .fill_claimed(state, FILLED, mapping, page, offset, data);
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => wait_a_little(&mut waits),
            }
        }
    }

    /// The fill and `UFFDIO_CONTINUE` of a page this resolver has claimed;
    /// the claim is released as FILLED once the data is in the cache, or
    /// back to `before` if it never got there.
    fn fill_claimed(
        &self,
        state: &AtomicU8,
        before: u8,
        mapping: &BackedMapping<B>,
        page: usize,
        offset: u64,
        data: &[u8],
    ) -> Result<Resolution> {
        let mut filled = false;
        let mut result = Err(Error::os_hint(
            "UFFDIO_CONTINUE",
            Errno::EFAULT,
            format!("the page kept leaving the page cache after {VANISHED_RETRIES} writes"),
        ));
        for _ in 0..VANISHED_RETRIES {
            match mapping.backing().fill(offset, data) {
                Ok(()) => filled = true,
                // A backing that refuses to overwrite a populated page
                // (guest_memfd without a direct map) already has it.
                Err(e) if e.is_exists() => filled = true,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            match self
                .uffd
                .continue_prechecked(page, self.page_size, ContinueMode::empty())
            {
                Ok(_) => {
                    result = Ok(Resolution::Resolved);
                    break;
                }
                Err(e) if e.is_exists() => {
                    result = self.wake(page).map(|()| Resolution::AlreadyPresent);
                    break;
                }
                Err(e) if e.errno() == Some(Errno::EFAULT) => continue,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        state.store(if filled { FILLED } else { before }, Ordering::Release);
        result
    }
}

impl<C: Class, B> Region<C, B> {
    /// The fill state of `page` (CONTINUE-only regions).
    fn fill_state(&self, page: usize) -> &AtomicU8 {
        &self.fills[(page - self.reg.start()) / self.page_size]
    }

    /// For a CONTINUE-only region, waits while another resolver is filling
    /// `page`, so that a MINOR fault raised by the half-filled page is not
    /// mapped before the fill completes.
    fn wait_for_fill(&self, page: usize) {
        if self.fills.is_empty() {
            return;
        }
        let state = self.fill_state(page);
        let mut waits = 0u32;
        while state.load(Ordering::Acquire) == CLAIMED {
            wait_a_little(&mut waits);
        }
    }
}

/// Backs off while another thread holds a page's claim: spins briefly,
/// then yields the CPU (a fill takes microseconds; a hugetlb fill longer).
fn wait_a_little(waits: &mut u32) {
    *waits = waits.saturating_add(1);
    if *waits < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

impl<C: Class, B> Drop for Region<C, B> {
    fn drop(&mut self) {
        // The range may already be gone (unmapped); nothing to report then.
        let _ = self.uffd.unregister(&self.reg);
    }
}

impl<C: Class, B> Region<C, B> {
    /// Registers the range and checks that the kernel's mask offers what
    /// class `C` resolves MISSING faults with (CONTINUE for CONTINUE-only,
    /// COPY otherwise); unregisters again (on drop) when it does not.
    ///
    /// # Safety
    ///
    /// As for [`Uffd::register`].
    unsafe fn register(
        uffd: Arc<Uffd>,
        start: usize,
        len: usize,
        mode: RegisterMode,
        page_size: usize,
        backing: Option<Arc<BackedMapping<B>>>,
    ) -> Result<Self> {
        // Faults are resolved a whole page at a time and the resolutions
        // skip the range checks, so every page of the region must lie
        // inside the registration.
        if !page_size.is_power_of_two()
            || page_size < rustix::param::page_size()
            || !start.is_multiple_of(page_size)
            || !len.is_multiple_of(page_size)
        {
            return Err(Error::invalid(
                "UFFDIO_REGISTER",
                format!(
                    "the range {start:#x}+{len:#x} is not whole pages of {page_size:#x} bytes, or \
                     that is not a power of two of at least the base page size"
                ),
            ));
        }
        // SAFETY: forwarded to this function's contract.
        let mut reg = unsafe { uffd.register(start, len, mode)? };
        if C::CONTINUE_ONLY {
            // The class is a promise about the whole range: the raw API must
            // not resolve it by COPY, ZEROPAGE, MOVE or POISON either.
            reg = reg.restricted_to(Ioctls::WAKE | Ioctls::CONTINUE | Ioctls::WRITEPROTECT);
        }
        let region = Region {
            uffd,
            reg,
            page_size,
            backing,
            fills: fill_states::<C>(len, page_size),
            _class: PhantomData,
        };
        let (needed, name) = if C::CONTINUE_ONLY {
            (Ioctls::CONTINUE, "UFFDIO_CONTINUE")
        } else {
            (Ioctls::COPY, "UFFDIO_COPY")
        };
        if !reg.ioctls().contains(needed) {
            return Err(Error::unsupported(
                format!("a {} region", C::NAME),
                None,
                format!(
                    "the kernel's ioctl mask for this range is {:?}, without {name}",
                    reg.ioctls()
                ),
            ));
        }
        Ok(region)
    }
}

impl<C: Class, B> Region<C, B> {
    /// The registration (range, mode, the kernel's ioctl mask).
    pub fn registration(&self) -> &Registration {
        &self.reg
    }

    /// The userfaultfd the region is registered with.
    pub fn uffd(&self) -> &Arc<Uffd> {
        &self.uffd
    }

    /// The size of the region's pages: the unit of every resolution.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The file mapping behind the region, if it has one.
    pub fn mapping(&self) -> Option<&Arc<BackedMapping<B>>> {
        self.backing.as_ref()
    }

    /// Turns a page-fault event at `address` of `kind` into a typed fault of
    /// this region; `None` when the address is not in the region.
    #[inline(always)]
    pub fn fault(&self, address: usize, kind: FaultKind) -> Option<Fault<'_, C, B>> {
        if !self.reg.contains(address, 1) {
            return None;
        }
        let page = address & !(self.page_size - 1);
        let raw = RawFault {
            region: self,
            page,
            done: false,
        };
        Some(match kind {
            FaultKind::Missing => Fault::Missing(MissingFault { raw }),
            FaultKind::Minor => Fault::Minor(MinorFault { raw }),
            FaultKind::WriteProtect => Fault::WriteProtect(WpFault { raw }),
            FaultKind::Rwp => Fault::Rwp(RwpFault { raw }),
            FaultKind::Unknown => Fault::Unknown(UnknownFault { raw }),
        })
    }

    fn wake(&self, page: usize) -> Result<()> {
        self.uffd.wake_prechecked(page, self.page_size).map(|_| ())
    }

    /// `UFFDIO_CONTINUE` of one page, waking the waiter on `EEXIST`
    /// (someone else mapped it) and on `EFAULT` (the page is not in the
    /// cache: the waiter's retry raises a MISSING fault).
    fn map_page(&self, page: usize) -> Result<Resolution> {
        self.wait_for_fill(page);
        if !self.reg.ioctls().contains(Ioctls::CONTINUE) {
            let e = Error::unsupported(
                "UFFDIO_CONTINUE on this range",
                None,
                format!("the kernel's ioctl mask for it is {:?}", self.reg.ioctls()),
            );
            return Err(self.wake_after(page, e));
        }
        match self
            .uffd
            .continue_prechecked(page, self.page_size, ContinueMode::empty())
        {
            Ok(_) => Ok(Resolution::Resolved),
            Err(e) => self.map_failed(page, e),
        }
    }

    /// After `UFFDIO_CONTINUE` of `page` failed with `e`.
    #[cold]
    #[inline(never)]
    fn map_failed(&self, page: usize, e: Error) -> Result<Resolution> {
        match e {
            e if e.is_exists() => self.wake(page).map(|()| Resolution::AlreadyPresent),
            e if e.errno() == Some(Errno::EFAULT) => self.wake(page).map(|()| Resolution::Refault),
            e => Err(self.wake_after(page, e)),
        }
    }

    /// After `EEXIST` from COPY or ZEROPAGE the page reached the page cache
    /// another way. Where the range offers CONTINUE, map it (which wakes the
    /// waiter without the round trip of a MINOR fault); otherwise wake.
    fn settle_existing(&self, page: usize) -> Result<Resolution> {
        if self.reg.ioctls().contains(Ioctls::CONTINUE) {
            match self.map_page(page)? {
                Resolution::Refault => Ok(Resolution::Refault),
                _ => Ok(Resolution::AlreadyPresent),
            }
        } else {
            self.wake(page).map(|()| Resolution::AlreadyPresent)
        }
    }

    /// After `UFFDIO_COPY` of `page` failed with `e`: settles `EEXIST`,
    /// explains `EINVAL`, and wakes the waiter on any other error.
    #[cold]
    #[inline(never)]
    fn copy_failed(&self, page: usize, e: Error) -> Result<Resolution> {
        match e {
            e if e.is_exists() => self.settle_existing(page),
            e if e.errno() == Some(Errno::EINVAL) => Err(self.wake_after(
                page,
                Error::unsupported(
                    "UFFDIO_COPY on this range",
                    Some(Errno::EINVAL),
                    "the kernel listed UFFDIO_COPY in the range's ioctl mask but refused it (the mask is \
                     only an upper bound); register the range CONTINUE-only and resolve by write() + \
                     UFFDIO_CONTINUE",
                ),
            )),
            e => Err(self.wake_after(page, e)),
        }
    }

    /// Wakes the waiter of `page` after a failed resolution, so it retries
    /// instead of hanging; returns the original error.
    fn wake_after(&self, page: usize, e: Error) -> Error {
        let _ = self.wake(page);
        e
    }
}

/// What a resolution achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The page was filled and/or mapped, and the waiter woken.
    Resolved,
    /// The page was already there (`EEXIST`): the waiter was woken.
    AlreadyPresent,
    /// The page was not in the cache when it was to be mapped: the waiter
    /// was woken and its retry raises a MISSING fault.
    Refault,
}

/// The part common to every typed fault: its region and page, and whether
/// it was consumed.
#[derive(Debug)]
struct RawFault<'r, C: Class, B> {
    region: &'r Region<C, B>,
    page: usize,
    done: bool,
}

impl<C: Class, B> Drop for RawFault<'_, C, B> {
    #[inline]
    fn drop(&mut self) {
        if !self.done {
            // An unresolved fault wakes its waiter: it retries and faults
            // again instead of blocking forever.
            let _ = self.region.wake(self.page);
        }
    }
}

/// A page fault of a region, by kind.
#[derive(Debug)]
pub enum Fault<'r, C: Class, B> {
    /// The page is not in the page cache (or, for anonymous memory, not
    /// present).
    Missing(MissingFault<'r, C, B>),
    /// The page is in the page cache but not mapped here.
    Minor(MinorFault<'r, C, B>),
    /// A write to a write-protected page.
    WriteProtect(WpFault<'r, C, B>),
    /// A read or write of a read-write-protected page (Linux 7.3).
    Rwp(RwpFault<'r, C, B>),
    /// A fault of a mode this crate does not know.
    Unknown(UnknownFault<'r, C, B>),
}

macro_rules! fault_accessors {
    ($ty:ident) => {
        impl<'r, C: Class, B> $ty<'r, C, B> {
            /// The faulting page's first address.
            pub fn page(&self) -> usize {
                self.raw.page
            }

            /// The region the fault belongs to.
            pub fn region(&self) -> &'r Region<C, B> {
                self.raw.region
            }

            /// Leaves the fault unresolved and wakes its waiter, which
            /// retries the access (and faults again if nothing changed).
            ///
            /// # Errors
            ///
            /// The `UFFDIO_WAKE` errno.
            #[doc(alias = "UFFDIO_WAKE")]
            pub fn wake(mut self) -> Result<()> {
                self.raw.done = true;
                self.raw.region.wake(self.raw.page)
            }
        }

        impl<'r, C: Class, B: Backing> $ty<'r, C, B> {
            /// The file offset of the faulting page.
            pub fn file_offset(&self) -> Option<u64> {
                let mapping = self.raw.region.backing.as_ref()?;
                mapping.offset_of(self.raw.page).ok()
            }
        }
    };
}

/// Data that is not one page of the region.
#[cold]
#[inline(never)]
fn page_size_error(op: &'static str, page: usize, len: usize) -> Error {
    Error::invalid(
        op,
        format!("the page is {page:#x} bytes, the data {len:#x}"),
    )
}

/// A MISSING fault of a region of class `C`.
#[derive(Debug)]
pub struct MissingFault<'r, C: Class, B> {
    raw: RawFault<'r, C, B>,
}

/// A MINOR fault: the page is in the page cache but not mapped here.
#[derive(Debug)]
pub struct MinorFault<'r, C: Class, B> {
    raw: RawFault<'r, C, B>,
}

/// A write-protect fault.
#[derive(Debug)]
pub struct WpFault<'r, C: Class, B> {
    raw: RawFault<'r, C, B>,
}

fault_accessors!(MissingFault);
fault_accessors!(MinorFault);
fault_accessors!(WpFault);

impl<C: Class, B> MissingFault<'_, C, B> {
    #[inline]
    fn check_page(&self, op: &'static str, data: &[u8]) -> Result<()> {
        let page = self.raw.region.page_size;
        if data.len() != page {
            return Err(page_size_error(op, page, data.len()));
        }
        Ok(())
    }
}

impl<B> MissingFault<'_, CopyCapable, B> {
    /// `ioctl(uffd, UFFDIO_COPY, …)`: copies `data` (one page) into the
    /// faulting page and wakes the waiter; on `EEXIST` wakes it with
    /// `UFFDIO_WAKE`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `data` is not one page (the fault stays
    /// unresolved and is woken on drop); `Unsupported` when the kernel
    /// refuses `UFFDIO_COPY` with `EINVAL` although the range's mask offered
    /// it; other errnos after the waiter was woken.
    #[doc(alias = "UFFDIO_COPY")]
    #[inline(always)]
    pub fn copy(mut self, data: &[u8]) -> Result<Resolution> {
        self.check_page("UFFDIO_COPY", data)?;
        self.raw.done = true;
        let region = self.raw.region;
        let page = self.raw.page;
        match region.uffd.copy_prechecked(page, data, CopyMode::empty()) {
            Ok(_) => Ok(Resolution::Resolved),
            Err(e) => region.copy_failed(page, e),
        }
    }

    /// `ioctl(uffd, UFFDIO_ZEROPAGE, …)`: maps a zero page and wakes the
    /// waiter; on `EEXIST` wakes it with `UFFDIO_WAKE`.
    ///
    /// # Errors
    ///
    /// `Unsupported` when the range's mask has no `UFFDIO_ZEROPAGE` (hugetlb);
    /// other errnos after the waiter was woken.
    #[doc(alias = "UFFDIO_ZEROPAGE")]
    pub fn zero(mut self) -> Result<Resolution> {
        self.raw.done = true;
        let region = self.raw.region;
        let page = self.raw.page;
        match region
            .uffd
            .zeropage(&region.reg, page, region.page_size, ZeropageMode::empty())
        {
            Ok(_) => Ok(Resolution::Resolved),
            Err(e) if e.is_exists() => region.settle_existing(page),
            Err(e) => Err(region.wake_after(page, e)),
        }
    }
}

impl<B: Backing> MissingFault<'_, ContinueOnly, B> {
    /// Fills the faulting page's place in the backing file with `data` (one
    /// page: `pwrite`, or the backing's fill), then `ioctl(uffd,
    /// UFFDIO_CONTINUE, …)` to map it and wake the waiter. `EEXIST` from the
    /// continue ends in `UFFDIO_WAKE`; `EFAULT` (the page vanished from the
    /// cache in between) repeats the write.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `data` is not one page (the fault stays
    /// unresolved and is woken on drop); the fill's errors (`Unsupported`
    /// for a guest_memfd on a kernel without guest_memfd `write()`); other
    /// errnos — every error after the write wakes the waiter first.
    #[doc(alias = "UFFDIO_CONTINUE")]
    pub fn write_then_continue(mut self, data: &[u8]) -> Result<Resolution> {
        self.check_page("write_then_continue", data)?;
        self.raw.done = true;
        let region = self.raw.region;
        let page = self.raw.page;
        region
            .fill_and_map(page, data)
            .map_err(|e| region.wake_after(page, e))
    }
}

impl<C: Class, B> MinorFault<'_, C, B> {
    /// `ioctl(uffd, UFFDIO_CONTINUE, …)`: maps the cached page and wakes the
    /// waiter; `EEXIST` → `UFFDIO_WAKE`; `EFAULT` (the page left the cache)
    /// → `UFFDIO_WAKE`, so the retry raises a MISSING fault.
    ///
    /// # Errors
    ///
    /// Other errnos, after the waiter was woken.
    #[doc(alias = "UFFDIO_CONTINUE")]
    pub fn map(mut self) -> Result<Resolution> {
        self.raw.done = true;
        self.raw.region.map_page(self.raw.page)
    }
}

impl<B> WpFault<'_, CopyCapable, B> {
    /// `ioctl(uffd, UFFDIO_WRITEPROTECT, …)` with mode 0: removes write
    /// protection from the page and wakes the waiter.
    ///
    /// # Errors
    ///
    /// The errno, after the waiter was woken.
    #[doc(alias = "UFFDIO_WRITEPROTECT")]
    pub fn unprotect(mut self) -> Result<Resolution> {
        self.raw.done = true;
        let region = self.raw.region;
        let page = self.raw.page;
        match region.uffd.write_unprotect(
            &region.reg,
            page,
            region.page_size,
            UnprotectMode::empty(),
        ) {
            Ok(_) => Ok(Resolution::Resolved),
            Err(e) => Err(region.wake_after(page, e)),
        }
    }
}

/// A region whose class is known only at run time.
#[derive(Debug)]
pub enum AnyRegion<B = ()> {
    /// A copy-capable region.
    CopyCapable(Region<CopyCapable, B>),
    /// A CONTINUE-only region.
    ContinueOnly(Region<ContinueOnly, B>),
}

impl<B: Backing> AnyRegion<B> {
    /// `ioctl(uffd, UFFDIO_REGISTER, MISSING | MINOR)` on a file mapping,
    /// with the class taken from the kernel's ioctl mask: CONTINUE without
    /// COPY makes it CONTINUE-only, COPY makes it copy-capable.
    ///
    /// # Safety
    ///
    /// As for [`Uffd::register`].
    ///
    /// # Errors
    ///
    /// The registration's errors; `Unsupported` when the mask has neither.
    pub unsafe fn register(uffd: Arc<Uffd>, mapping: Arc<BackedMapping<B>>) -> Result<Self> {
        let mode = RegisterMode::MISSING | RegisterMode::MINOR;
        // SAFETY: forwarded to this function's contract.
        let copy = unsafe { Region::copy_capable_file(uffd.clone(), mapping.clone(), mode) };
        match copy {
            Ok(region) => Ok(AnyRegion::CopyCapable(region)),
            // No COPY in the mask (the region unregistered itself): try the
            // class that needs only CONTINUE.
            Err(Error::Unsupported { .. }) => {
                // SAFETY: forwarded to this function's contract.
                let region = unsafe { Region::continue_only(uffd, mapping) }.map_err(|e| match e {
                    Error::Unsupported { .. } => Error::unsupported(
                        "fault resolution on this range",
                        None,
                        "the kernel's ioctl mask offers neither UFFDIO_COPY nor UFFDIO_CONTINUE",
                    ),
                    e => e,
                })?;
                Ok(AnyRegion::ContinueOnly(region))
            }
            Err(e) => Err(e),
        }
    }
}

impl<B> AnyRegion<B> {
    /// The class's name (`"copy-capable"` or `"CONTINUE-only"`).
    pub fn class_name(&self) -> &'static str {
        match self {
            AnyRegion::CopyCapable(_) => CopyCapable::NAME,
            AnyRegion::ContinueOnly(_) => ContinueOnly::NAME,
        }
    }

    /// The registration.
    pub fn registration(&self) -> &Registration {
        match self {
            AnyRegion::CopyCapable(r) => r.registration(),
            AnyRegion::ContinueOnly(r) => r.registration(),
        }
    }

    /// A fault of this region, typed at run time; `None` when the address is
    /// outside the region.
    pub fn fault(&self, address: usize, kind: FaultKind) -> Option<AnyFault<'_, B>> {
        Some(match self {
            AnyRegion::CopyCapable(r) => AnyFault::CopyCapable(r.fault(address, kind)?),
            AnyRegion::ContinueOnly(r) => AnyFault::ContinueOnly(r.fault(address, kind)?),
        })
    }
}

/// A fault whose region's class is known only at run time: the escape
/// hatch. Each method checks what the typed API enforces at compile time
/// and returns an error for a resolution the class does not allow (the
/// fault is then woken, not lost).
#[derive(Debug)]
pub enum AnyFault<'r, B> {
    /// A fault of a copy-capable region.
    CopyCapable(Fault<'r, CopyCapable, B>),
    /// A fault of a CONTINUE-only region.
    ContinueOnly(Fault<'r, ContinueOnly, B>),
}

fn not_allowed(op: &'static str, what: &str) -> Error {
    Error::invalid(
        op,
        format!("{what}; the fault was woken and will be raised again"),
    )
}

impl<B: Backing> AnyFault<'_, B> {
    /// Resolves a MISSING fault with `UFFDIO_COPY`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when the fault is not MISSING or its region is
    /// CONTINUE-only; otherwise as [`MissingFault::copy`].
    pub fn copy(self, data: &[u8]) -> Result<Resolution> {
        match self {
            AnyFault::CopyCapable(Fault::Missing(f)) => f.copy(data),
            AnyFault::ContinueOnly(Fault::Missing(_)) => Err(not_allowed(
                "UFFDIO_COPY",
                "a MISSING fault on a CONTINUE-only range is resolved by write_then_continue, never UFFDIO_COPY",
            )),
            _ => Err(not_allowed(
                "UFFDIO_COPY",
                "only MISSING faults are resolved by copying",
            )),
        }
    }

    /// Resolves a MISSING fault by filling the backing and `UFFDIO_CONTINUE`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when the fault is not MISSING or its region is
    /// copy-capable; otherwise as [`MissingFault::write_then_continue`].
    pub fn write_then_continue(self, data: &[u8]) -> Result<Resolution> {
        match self {
            AnyFault::ContinueOnly(Fault::Missing(f)) => f.write_then_continue(data),
            AnyFault::CopyCapable(Fault::Missing(_)) => Err(not_allowed(
                "write_then_continue",
                "the region is copy-capable; resolve its MISSING faults with copy",
            )),
            _ => Err(not_allowed(
                "write_then_continue",
                "only MISSING faults are resolved by writing",
            )),
        }
    }

    /// Resolves a MINOR fault with `UFFDIO_CONTINUE`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when the fault is not MINOR; otherwise as
    /// [`MinorFault::map`].
    pub fn map(self) -> Result<Resolution> {
        match self {
            AnyFault::CopyCapable(Fault::Minor(f)) => f.map(),
            AnyFault::ContinueOnly(Fault::Minor(f)) => f.map(),
            _ => Err(not_allowed(
                "UFFDIO_CONTINUE",
                "only MINOR faults are resolved by mapping",
            )),
        }
    }

    /// True for a MISSING fault.
    pub fn is_missing(&self) -> bool {
        matches!(
            self,
            AnyFault::CopyCapable(Fault::Missing(_)) | AnyFault::ContinueOnly(Fault::Missing(_))
        )
    }
}
