//! Type-level resolution over one shared page state: **a MISSING fault on a
//! CONTINUE-only range is resolved by writing the page into the backing
//! file and then `UFFDIO_CONTINUE` — never by `UFFDIO_COPY`, which its fault
//! type does not offer — and every page of a file is filled exactly once,
//! whichever path asks for it first.**
//!
//! | file | what it holds |
//! |---|---|
//! | this module | [`Region`], its classes, [`Resolution`] |
//! | [`page_state`] | [`PageState`]: one per backing file, the claims every fill goes through, discard, eager restore |
//! | `typed_fault` | [`Fault`], [`MissingFault`], [`MinorFault`], [`WpFault`], [`Window`]: what each kind of fault can be resolved with |
//! | `any_class` | [`AnyRegion`], [`AnyFault`]: the escape hatch, the same rules checked at run time |
//!
//! A [`Region`] is a registered range that knows its class, `C`:
//!
//! | class | how a region gets it | MISSING fault offers | MINOR fault offers | WP fault offers | RWP fault offers |
//! |---|---|---|---|---|---|
//! | [`CopyCapable`] | the kernel's ioctl mask has `UFFDIO_COPY` and the caller did not ask for CONTINUE-only | [`copy`](MissingFault::copy), [`zero`](MissingFault::zero), [`copy_window`](MissingFault::copy_window) | [`map`](MinorFault::map) (`UFFDIO_CONTINUE`) | [`unprotect`](WpFault::unprotect) | [`unprotect`](RwpFault::unprotect) (`UFFDIO_RWPROTECT`) |
//! | [`ContinueOnly`] | the mask has `UFFDIO_CONTINUE` but not `UFFDIO_COPY`, or the caller asked for it on a file-backed range | [`write_then_continue`](MissingFault::write_then_continue), [`write_window_then_continue`](MissingFault::write_window_then_continue) | [`map`](MinorFault::map) | — (registered without WP) | — (registered without RWP) |
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
//! that page would be lost. MISSING makes that access a fault the handler
//! fills; MINOR additionally reports pages that are in the cache but not
//! mapped in this process (filled by another path, or by KVM itself).
//!
//! # One page state per file
//!
//! Every [`BackedMapping`] is made from its file's [`PageState`], and every
//! region on such a mapping, every
//! [`Stage2Resolver`](crate::kvm::Stage2Resolver) and every populator
//! ([`PageState::populate`], [`Region::populate`]) fills pages through that
//! one state. The three resolutions of a guest_memfd page —
//!
//! | fault | resolved by |
//! |---|---|
//! | MISSING on the VMM's mapping | `UFFDIO_COPY` on a copy-capable range; `write()` + `UFFDIO_CONTINUE` on a CONTINUE-only one |
//! | MINOR on the VMM's mapping | `UFFDIO_CONTINUE` |
//! | a vCPU's stage-2 fault (KVM userfault) | `write()`, then clear the bitmap bit |
//!
//! — all claim the page in the state first. The first to claim an unfilled
//! page fills it; every later resolution of the page, on any path, only
//! maps it (or, for stage-2, finds its bit clear). So a MISSING fault raised
//! before a vCPU's fill does not write the snapshot over what the vCPU
//! wrote, and a vCPU fault after the VMM's fill does not write it over what
//! the VMM wrote. The order is always: fill the file → clear the page's bit
//! in every attached KVM userfault bitmap (store-release) → mark the page
//! filled → `UFFDIO_CONTINUE` or `UFFDIO_WAKE`. No path maps a page whose
//! fill is under way.
//!
//! A fault value is consumed by the method that resolves it, so a fault
//! cannot be resolved twice; a fault value dropped unresolved wakes its
//! waiting thread (`UFFDIO_WAKE`), which retries the access and faults
//! again — no thread is left blocked by a forgotten fault. Every failure
//! after the fault was taken wakes the waiter before the error is returned.
//!
//! # Example: a snapshot-restore handler
//!
//! Guest memory is a file (here a shmem memfd standing in for a
//! guest_memfd) restored from a snapshot on demand. This runs: a thread
//! reads the guest memory while the handler serves its faults.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use userfault::backing::{BackedMapping, Memfd};
//! use userfault::resolve::{Fault, Region};
//! use userfault::uffd::{EventBuffer, Uffd};
//!
//! # fn main() -> userfault::Result<()> {
//! let size = 16 * 4096;
//! let snapshot: Vec<u8> = (0..size).map(|i| (i / 4096) as u8).collect();
//! let ram = BackedMapping::whole(Arc::new(Memfd::shmem(c"guest-ram", size as u64)?))?;
//! let uffd = Arc::new(Uffd::builder().non_blocking(true).create()?);
//! // SAFETY: guest memory is only accessed through raw pointers.
//! let region = unsafe { Region::continue_only(uffd.clone(), ram.clone())? };
//!
//! let guest = ram.clone();
//! let reader = std::thread::spawn(move || {
//!     // SAFETY: inside the live mapping; each read waits for its fault.
//!     (0..16).map(|p| unsafe { guest.mapping().as_ptr().add(p * 4096).read_volatile() }).sum::<u8>()
//! });
//! let mut events = EventBuffer::with_capacity(16);
//! while !reader.is_finished() {
//!     for event in uffd.wait_events(&mut events, Some(Duration::from_millis(10)))? {
//!         match region.fault(&event) {
//!             // Not in the page cache: write the snapshot's page, map it.
//!             // `copy` does not exist here.
//!             Some(Fault::Missing(f)) => {
//!                 let at = f.file_offset() as usize;
//!                 f.write_then_continue(&snapshot[at..at + 4096])?;
//!             }
//!             // In the cache already (filled by another path): map it.
//!             Some(Fault::Minor(f)) => {
//!                 f.map()?;
//!             }
//!             _ => {}
//!         }
//!     }
//! }
//! assert_eq!(reader.join().unwrap(), (0..16).sum::<u8>());
//! # Ok(())
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
//! A chunked `UFFDIO_COPY` on a CONTINUE-only missing fault:
//!
//! ```compile_fail
//! # use userfault::resolve::*;
//! fn handle<B: userfault::backing::Backing>(f: MissingFault<'_, ContinueOnly, B>, data: &[u8]) {
//!     let w = f.window(64 << 10).unwrap();
//!     let _ = f.copy_window(w, data);
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
//! Filling a backing file behind its page state's back (only the state
//! makes the [`Claimed`](crate::backing::Claimed) a fill needs):
//!
//! ```compile_fail
//! # use userfault::backing::{Backing, Claimed, Memfd};
//! fn fill(memfd: &Memfd, page: &[u8]) {
//!     let _ = memfd.fill(0, page, Claimed { _private: Default::default() });
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
//! fn handle_window<B: userfault::backing::Backing>(f: MissingFault<'_, ContinueOnly, B>, data: &[u8]) {
//!     let w = f.window(64 << 10).unwrap();
//!     let _ = f.write_window_then_continue(w, data);
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
//! # Registrations
//!
//! A region owns its registration: two live regions may not overlap on
//! one userfaultfd (the second is refused), a region only takes page-fault
//! events read from its own userfaultfd, and dropping a region unregisters
//! its range only in the process that registered it — a forked child that
//! drops its copy of a region leaves the parent's registration armed.
//!
//! # References
//! - [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html)
//! - [Documentation/admin-guide/mm/userfaultfd.rst](https://docs.kernel.org/admin-guide/mm/userfaultfd.html)

use std::marker::PhantomData;

use std::sync::{Arc, Mutex};

use crate::backing::{BackedMapping, Backing};
use crate::error::{Errno, Error, Result};
use crate::uffd::{
    ContinueMode, CopyMode, Event, FaultKind, Ioctls, RegisterMode, Registration, Uffd,
};

/// Zeros for resolutions that fill pages with them, allocated once
/// ([`zeros`]).
static ZEROS: std::sync::OnceLock<Box<[u8]>> = std::sync::OnceLock::new();

/// `len` zero bytes: a slice of one buffer of [`MAX_WINDOW`] bytes shared
/// by every resolution (its pages stay the kernel's zero page: it is only
/// ever read), or, for more than that (a page larger than a window), a
/// buffer of its own.
///
/// The shared buffer is allocated by [`prepare_zeros`] when a page state
/// is made, so that a resolution never allocates for it: a handler thread
/// may resolve while a `fork(2)` of its own process waits for its FORK
/// event to be read, and glibc's `fork` holds the allocator's locks
/// meanwhile.
pub(crate) fn zeros(len: usize) -> std::borrow::Cow<'static, [u8]> {
    match ZEROS.get_or_init(zero_buffer).get(..len) {
        Some(z) => std::borrow::Cow::Borrowed(z),
        None => std::borrow::Cow::Owned(vec![0; len]),
    }
}

/// Allocates [`zeros`]' shared buffer now, if it was not.
pub(crate) fn prepare_zeros() {
    ZEROS.get_or_init(zero_buffer);
}

fn zero_buffer() -> Box<[u8]> {
    vec![0; MAX_WINDOW].into_boxed_slice()
}

mod any_class;
pub mod page_state;
mod rwp;
mod typed_fault;

pub use any_class::{AnyFault, AnyRegion};
pub use page_state::{Discard, PageState};
pub use rwp::{RwpFault, UnknownFault};
pub use typed_fault::{Fault, MAX_WINDOW, MinorFault, MissingFault, Window, WpFault};
pub(crate) use typed_fault::{HeldPages, MAX_RUNS};

use typed_fault::RawFault;

use page_state::{FILLED, PageClaim};

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

/// How many times a resolution starts over when the page keeps vanishing
/// from the page cache behind the state's back.
const VANISHED_RETRIES: usize = 16;

/// What a resolution achieved — of a userfaultfd fault, a stage-2 fault or
/// a populate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// This call filled the page with the data given, then mapped it and
    /// woke its waiter (a userfaultfd fault) or cleared its bitmap bit (a
    /// stage-2 fault, a populate).
    Filled,
    /// This call filled the page with zeros, not the data given: the page
    /// had been discarded ([`Discard::Zero`]) or had left the file behind
    /// the state's back.
    Zeroed,
    /// The page was filled already (by another path); this call mapped it
    /// into the range and woke the waiter.
    Mapped,
    /// Nothing was left to do: the page was mapped already (`EEXIST`; the
    /// waiter was woken), or — for stage-2 and populate — filled already.
    AlreadyPresent,
    /// The page was not in the page cache when it was to be mapped: the
    /// waiter was woken, and its retry raises a MISSING fault that brings
    /// the data.
    Refault,
}

impl Resolution {
    /// True when this call wrote the page ([`Filled`](Self::Filled) or
    /// [`Zeroed`](Self::Zeroed)).
    pub fn wrote(self) -> bool {
        matches!(self, Resolution::Filled | Resolution::Zeroed)
    }
}

/// What a chunked resolution did: the faulting page's [`Resolution`] and
/// how many pages of the window this call wrote. Every page is written by
/// one path only, so adding up `written` over every path (faults, stage-2
/// resolutions, a populator) counts each filled page once.
#[derive(Debug)]
pub struct WindowFill {
    /// What became of the faulting page: its resolution, or the error that
    /// stopped it after other pages of the window were written (counted
    /// below all the same: they are filled, and no other path writes them).
    pub resolution: Result<Resolution>,
    /// Pages this call wrote (from the data given, or zeros).
    pub written: u64,
    /// Of those, the pages it wrote zeros into (discarded pages, or pages
    /// that had left the file behind the state's back).
    pub zeroed: u64,
}

/// A registered range of class `C`, backed by `B` (`()` for a copy-capable
/// region with no fillable backing, such as anonymous memory).
///
/// Registered on creation; its range unregistered on drop (a part a remap
/// moved elsewhere is not: see [`remapped`](Self::remapped)). `Sync`: any number of
/// handler threads may resolve its faults concurrently. A region the
/// process moved (`mremap(2)`) is followed with
/// [`remapped`](Self::remapped).
#[derive(Debug)]
pub struct Region<C: Class, B = ()> {
    uffd: Arc<Uffd>,
    reg: Registration,
    page_size: usize,
    backing: Option<Arc<BackedMapping<B>>>,
    /// File offset of the registration's first byte (with a backing).
    file_base: u64,
    /// The region registered its range (and unregisters it on drop); false
    /// for the part of a region a remap moved ([`Region::remapped`]).
    owner: bool,
    /// The process that registered the range: only it unregisters.
    pid: rustix::process::Pid,
    _class: PhantomData<fn() -> C>,
}

/// The ranges live regions have registered: (userfaultfd id, start, end).
static LIVE: Mutex<Vec<(u64, usize, usize)>> = Mutex::new(Vec::new());

impl Region<CopyCapable, ()> {
    /// `ioctl(uffd, UFFDIO_REGISTER, …)`: registers `[start, start + len)`
    /// with `mode` as a copy-capable region with `page_size` pages.
    ///
    /// # Safety
    ///
    /// As for [`Uffd::register`]: no Rust reference may point into the range
    /// while it is registered, and accesses to it may block until a handler
    /// resolves them. The range stays mapped while the region lives.
    ///
    /// # Errors
    ///
    /// The registration's errors; `Unsupported` when the kernel's mask for
    /// the range has no `UFFDIO_COPY` (register it CONTINUE-only instead);
    /// `InvalidArgument` when a live region overlaps the range on this
    /// userfaultfd.
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
    /// mapping as a copy-capable region (MINOR faults then map cached
    /// pages). Its fills go through the file's [`PageState`].
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
    /// `UFFDIO_CONTINUE`; `InvalidArgument` when a live region overlaps the
    /// range on this userfaultfd.
    pub unsafe fn continue_only(uffd: Arc<Uffd>, mapping: Arc<BackedMapping<B>>) -> Result<Self> {
        let (start, len, page_size) =
            (mapping.addr(), mapping.len(), mapping.backing().page_size());
        let mode = RegisterMode::MISSING | RegisterMode::MINOR;
        // SAFETY: forwarded to this function's contract.
        unsafe { Region::register(uffd, start, len, mode, page_size, Some(mapping)) }
    }

    /// Fills the page at `page` (an address in the region) with `data` and
    /// maps it with `UFFDIO_CONTINUE`, ahead of any fault: pre-population
    /// through the shared state. A page filled already (by any path) is only
    /// mapped; one mapped already (`EEXIST`) is left as it is and wakes any
    /// waiter.
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
        page_state::check_len("populate", self.page_size, data.len())?;
        self.fill_and_map(page, data)
    }
}

impl<C: Class, B: Backing> Region<C, B> {
    /// Brings `page` into the file with `data` unless the state says it is
    /// filled, and maps it. See the module documentation for the order.
    pub(crate) fn fill_and_map(&self, page: usize, data: &[u8]) -> Result<Resolution> {
        let (state, fp) = self.file_page(page);
        for _ in 0..VANISHED_RETRIES {
            if let Some(claim) = state.claim_unfilled(fp) {
                claim.fill(data)?;
                let done = if claim.is_zero_fill() {
                    Resolution::Zeroed
                } else {
                    Resolution::Filled
                };
                claim.finish();
                match self.continue_page(page) {
                    Ok(()) => return Ok(done),
                    Err(e) if e.is_exists() => return self.wake(page).map(|()| done),
                    // Gone again right after the fill: start over.
                    Err(e) if e.errno() == Some(Errno::EFAULT) => continue,
                    Err(e) => return Err(e),
                }
            }
            if let Some(done) = self.map_filled(page, fp, |claim| claim.fill_zeros())? {
                return Ok(done);
            }
        }
        Err(vanished())
    }
}

/// The error of a page that keeps leaving the page cache.
#[cold]
fn vanished() -> Error {
    Error::os_hint(
        "UFFDIO_CONTINUE",
        Errno::EFAULT,
        format!("the page kept leaving the page cache after {VANISHED_RETRIES} fills"),
    )
}

impl<C: Class, B> Drop for Region<C, B> {
    fn drop(&mut self) {
        // A forked child's copy of the region must not unregister: the
        // userfaultfd acts on the address space of the process that created
        // it, the parent's. (Checked first: the child takes no lock.)
        if !self.owner || rustix::process::getpid() != self.pid {
            return;
        }
        {
            let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
            let me = (self.reg.uffd_id(), self.reg.start(), self.reg.end());
            if let Some(i) = live.iter().position(|r| *r == me) {
                live.swap_remove(i);
            }
        }
        // The range may already be gone (unmapped, or moved away, taking its
        // registration with it); nothing to report then.
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
            || page_size < crate::sys::page_size()
            || !start.is_multiple_of(page_size)
            || !len.is_multiple_of(page_size)
            || len == 0
        {
            return Err(Error::invalid(
                "UFFDIO_REGISTER",
                format!(
                    "the range {start:#x}+{len:#x} is not whole pages of {page_size:#x} bytes, or \
                     that is not a power of two of at least the base page size"
                ),
            ));
        }
        let end = start
            .checked_add(len)
            .ok_or_else(|| Error::invalid("UFFDIO_REGISTER", "the range wraps"))?;
        {
            let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
            if live
                .iter()
                .any(|&(id, s, e)| id == uffd.id() && s < end && start < e)
            {
                return Err(Error::invalid(
                    "UFFDIO_REGISTER",
                    format!(
                        "{start:#x}+{len:#x} overlaps a live region on this userfaultfd; drop it \
                         first (re-registering would let either region's drop unregister the \
                         other's range)"
                    ),
                ));
            }
            live.push((uffd.id(), start, end));
        }
        // SAFETY: forwarded to this function's contract.
        let reg = unsafe { uffd.register(start, len, mode) };
        let mut reg = match reg {
            Ok(reg) => reg,
            Err(e) => {
                let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(i) = live.iter().position(|r| *r == (uffd.id(), start, end)) {
                    live.swap_remove(i);
                }
                return Err(e);
            }
        };
        if C::CONTINUE_ONLY {
            // The class is a promise about the whole range: the raw API must
            // not resolve it by COPY, ZEROPAGE, MOVE or POISON either.
            reg = reg.restricted_to(Ioctls::WAKE | Ioctls::CONTINUE | Ioctls::WRITEPROTECT);
        }
        let file_base = backing.as_ref().map_or(0, |m| m.file_offset());
        let region = Region {
            uffd,
            reg,
            page_size,
            backing,
            file_base,
            owner: true,
            pid: rustix::process::getpid(),
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

    /// The registration (range, mode, the kernel's ioctl mask).
    pub fn registration(&self) -> &Registration {
        &self.reg
    }

    /// `UFFD_EVENT_REMAP`: the part of this region that `mremap(2)` moved
    /// from `[from, from + len)` to `to`, as a region at its new address —
    /// the same class, page size and file pages (through the same page
    /// state), now at the addresses the event names. `None` when the move
    /// does not overlap the region, or the range at `to` would not be
    /// whole pages or would wrap. With `to == from`, the part of the region
    /// inside `[from, from + len)`, where it is.
    ///
    /// The kernel moves a registration with its mapping when the
    /// userfaultfd has `UFFD_FEATURE_EVENT_REMAP`, so nothing is registered
    /// again: the region returned does not own its range (dropping it
    /// unregisters nothing), and the region it came from still unregisters
    /// its own, original range when dropped — where the moved part no
    /// longer is. Unregister a moved part where it is now
    /// ([`Uffd::unregister_range`]), or close the userfaultfd, which ends
    /// every registration it has. Pass what the event says: resolutions of
    /// the returned region act at `to` (the kernel refuses them where no
    /// range of this userfaultfd is registered). The region a moved part
    /// came from keeps its page state and file, so keep it alive while its
    /// parts are served.
    ///
    /// # References
    ///
    /// - [`UFFD_EVENT_REMAP` in Documentation/admin-guide/mm/userfaultfd.rst](https://docs.kernel.org/admin-guide/mm/userfaultfd.html#non-cooperative-userfaultfd)
    pub fn remapped(&self, from: usize, to: usize, len: usize) -> Option<Region<C, B>> {
        let reg = self.reg.remapped(from, to, len)?;
        if !reg.start().is_multiple_of(self.page_size) || !reg.len().is_multiple_of(self.page_size)
        {
            return None;
        }
        // The first byte of the moved part, at its old address: whole pages
        // of the region, or the file offsets below would be wrong.
        let old = self.reg.start().max(from);
        if !(old - self.reg.start()).is_multiple_of(self.page_size) {
            return None;
        }
        Some(Region {
            uffd: self.uffd.clone(),
            reg,
            page_size: self.page_size,
            backing: self.backing.clone(),
            file_base: self.file_base + (old - self.reg.start()) as u64,
            owner: false,
            pid: self.pid,
            _class: PhantomData,
        })
    }

    /// The file offset that address `addr` of the region maps; `None` for
    /// an address outside the region or a region without a backing file.
    pub fn file_offset_at(&self, addr: usize) -> Option<u64> {
        self.backing.as_ref()?;
        self.reg
            .contains(addr, 1)
            .then(|| self.file_base + (addr - self.reg.start()) as u64)
    }

    /// The address of the region that maps file offset `offset`; `None`
    /// for an offset the region does not map.
    pub fn addr_at(&self, offset: u64) -> Option<usize> {
        self.backing.as_ref()?;
        let delta = offset.checked_sub(self.file_base)?;
        (delta < self.reg.len() as u64).then(|| self.reg.start() + delta as usize)
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

    /// The page state of the file behind the region, if it has one.
    pub fn state(&self) -> Option<&Arc<PageState<B>>> {
        self.backing.as_ref().map(|m| m.state())
    }

    /// Turns a page-fault event into a typed fault of this region, and
    /// [takes](Event::take) the event: the [`Fault`] answers for the
    /// faulting thread from then on. `None` (the event left untaken, so it
    /// wakes its page when dropped unless another region takes it) for
    /// another event, a fault read from another userfaultfd (a fork child's,
    /// at the same addresses), or an address outside the region.
    #[inline(always)]
    pub fn fault(&self, event: &Event<'_>) -> Option<Fault<'_, C, B>> {
        match *event {
            Event::PageFault {
                address,
                kind,
                uffd_id,
                ref pending,
                ..
            } if uffd_id == self.reg.uffd_id() => {
                let fault = self.fault_at(address, kind)?;
                pending.take();
                Some(fault)
            }
            _ => None,
        }
    }

    /// A typed fault of this region at `address` of `kind`, for a fault
    /// decoded elsewhere (prefer [`fault`](Self::fault), which also checks
    /// the event's userfaultfd and takes the event; a handler that passes
    /// an [`Event`]'s address here [takes](Event::take) the event itself);
    /// `None` when the address is not in the region.
    #[inline(always)]
    pub fn fault_at(&self, address: usize, kind: FaultKind) -> Option<Fault<'_, C, B>> {
        if !self.reg.contains(address, 1) {
            return None;
        }
        Some(Fault::new(self, address & !(self.page_size - 1), kind))
    }

    /// The page state and file page index of `page`, an address in a region
    /// with a backing.
    #[inline]
    fn file_page(&self, page: usize) -> (&PageState<B>, u64) {
        let mapping = self
            .backing
            .as_ref()
            .expect("only regions with a backing resolve through the page state");
        let offset = self.file_base + (page - self.reg.start()) as u64;
        (mapping.state(), offset / self.page_size as u64)
    }

    /// The file offset of `page`, an address in a region with a backing.
    fn file_offset_of(&self, page: usize) -> Option<u64> {
        self.backing.as_ref()?;
        Some(self.file_base + (page - self.reg.start()) as u64)
    }

    fn wake(&self, page: usize) -> Result<()> {
        self.uffd.wake_prechecked(page, self.page_size).map(|_| ())
    }

    fn continue_page(&self, page: usize) -> Result<()> {
        self.uffd
            .continue_prechecked(page, self.page_size, ContinueMode::empty())
            .map(|_| ())
    }

    /// A page the state says is filled: map it. `EFAULT` (not in the page
    /// cache) is checked again under a claim; a page still missing then left
    /// the file behind the state's back and is filled with zeros by
    /// `refill` (`UFFDIO_CONTINUE` follows). `None` when the state changed
    /// meanwhile (the caller starts over).
    fn map_filled(
        &self,
        page: usize,
        fp: u64,
        refill: impl FnOnce(&PageClaim<'_, B>) -> Result<()>,
    ) -> Result<Option<Resolution>> {
        match self.continue_page(page) {
            Ok(()) => return Ok(Some(Resolution::Mapped)),
            Err(e) if e.is_exists() => {
                return self.wake(page).map(|()| Some(Resolution::AlreadyPresent));
            }
            Err(e) if e.errno() == Some(Errno::EFAULT) => {}
            Err(e) => return Err(e),
        }
        let (state, _) = self.file_page(page);
        let claim = state.claim_any(fp);
        if claim.prev() != FILLED {
            return Ok(None);
        }
        match self.continue_page(page) {
            Ok(()) => {
                claim.finish();
                Ok(Some(Resolution::Mapped))
            }
            Err(e) if e.is_exists() => {
                claim.finish();
                self.wake(page).map(|()| Some(Resolution::AlreadyPresent))
            }
            Err(e) if e.errno() == Some(Errno::EFAULT) => {
                refill(&claim)?;
                claim.finish();
                match self.continue_page(page) {
                    Ok(()) => Ok(Some(Resolution::Zeroed)),
                    Err(e) if e.is_exists() => self.wake(page).map(|()| Some(Resolution::Zeroed)),
                    Err(e) if e.errno() == Some(Errno::EFAULT) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// `UFFDIO_CONTINUE` of one page for a MINOR fault. With a backing, a
    /// fill under way is waited for (a half-filled page can already be in
    /// the cache and raise MINOR faults), and a page the state does not
    /// know as filled — it reached the cache another way — is claimed,
    /// mapped and from then on counted as filled, so that no path writes
    /// the snapshot over it. `EEXIST` → `UFFDIO_WAKE`; `EFAULT` →
    /// `UFFDIO_WAKE` and [`Resolution::Refault`].
    fn map_page(&self, page: usize) -> Result<Resolution> {
        if !self.reg.ioctls().contains(Ioctls::CONTINUE) {
            let e = Error::unsupported(
                "UFFDIO_CONTINUE on this range",
                None,
                format!("the kernel's ioctl mask for it is {:?}", self.reg.ioctls()),
            );
            return Err(self.wake_after(page, e));
        }
        if self.backing.is_some() {
            let (state, fp) = self.file_page(page);
            if state.wait_settled(fp) != FILLED
                && let Some(claim) = state.claim_unfilled(fp)
            {
                let r = self
                    .uffd
                    .continue_prechecked(page, self.page_size, ContinueMode::DONTWAKE);
                return match r {
                    Ok(_) => {
                        claim.finish();
                        self.wake(page).map(|()| Resolution::Mapped)
                    }
                    Err(e) if e.is_exists() => {
                        claim.finish();
                        self.wake(page).map(|()| Resolution::AlreadyPresent)
                    }
                    Err(e) => {
                        drop(claim);
                        self.map_failed(page, e)
                    }
                };
            }
        }
        match self.continue_page(page) {
            Ok(()) => Ok(Resolution::Mapped),
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
            e if e.errno() == Some(Errno::EINVAL) => Err(self.wake_after(page, copy_refused())),
            e => Err(self.wake_after(page, e)),
        }
    }

    /// Wakes the waiter of `page` after a failed resolution, so it retries
    /// instead of hanging; returns the original error.
    fn wake_after(&self, page: usize, e: Error) -> Error {
        let _ = self.wake(page);
        e
    }

    /// `UFFDIO_COPY` of `data` (or zeros) into `page` of a region with a
    /// backing, through the page state: the first to claim the page copies
    /// it (zeros for a discarded page); a filled page is only mapped where
    /// the range offers CONTINUE, and otherwise checked under a claim with a
    /// COPY of zeros (`EEXIST`: it is there). With a KVM userfault bitmap
    /// attached, the copy does not wake; the bit is cleared first.
    fn copy_through_state(&self, page: usize, data: Option<&[u8]>) -> Result<Resolution> {
        let (state, fp) = self.file_page(page);
        let zeros;
        for _ in 0..VANISHED_RETRIES {
            if let Some(claim) = state.claim_unfilled(fp) {
                let zero = claim.is_zero_fill() || data.is_none();
                let src = match data {
                    Some(d) if !claim.is_zero_fill() => d,
                    _ => {
                        zeros = self::zeros(self.page_size);
                        &zeros[..]
                    }
                };
                let dontwake = state.has_bitmaps();
                let mode = if dontwake {
                    CopyMode::DONTWAKE
                } else {
                    CopyMode::empty()
                };
                return match self.uffd.copy_prechecked(page, src, mode) {
                    Ok(_) => {
                        claim.finish();
                        if dontwake {
                            self.wake(page)?;
                        }
                        Ok(if zero && data.is_some() {
                            Resolution::Zeroed
                        } else {
                            Resolution::Filled
                        })
                    }
                    Err(e) if e.is_exists() => {
                        claim.finish();
                        self.settle_existing(page)
                    }
                    Err(e) => {
                        drop(claim);
                        self.copy_failed(page, e)
                    }
                };
            }
            let done = if self.reg.ioctls().contains(Ioctls::CONTINUE) {
                self.map_filled(page, fp, |_| Ok(()))
            } else {
                self.check_filled_by_copy(page, fp)
            };
            match done {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => continue,
                Err(e) => return Err(self.wake_after(page, e)),
            }
        }
        Err(self.wake_after(page, vanished()))
    }

    /// A filled page on a range without CONTINUE: under a claim, a COPY of
    /// zeros either finds it there (`EEXIST`: wake) or fills the page that
    /// left the file behind the state's back.
    fn check_filled_by_copy(&self, page: usize, fp: u64) -> Result<Option<Resolution>> {
        let (state, _) = self.file_page(page);
        let claim = state.claim_any(fp);
        if claim.prev() != FILLED {
            return Ok(None);
        }
        let zeros = self::zeros(self.page_size);
        match self.uffd.copy_prechecked(page, &zeros, CopyMode::DONTWAKE) {
            Ok(_) => {
                claim.finish();
                self.wake(page).map(|()| Some(Resolution::Zeroed))
            }
            Err(e) if e.is_exists() => {
                claim.finish();
                self.wake(page).map(|()| Some(Resolution::AlreadyPresent))
            }
            Err(e) => Err(e),
        }
    }
}

/// `UFFDIO_COPY` refused with `EINVAL` on a range whose mask offered it.
#[cold]
fn copy_refused() -> Error {
    Error::unsupported(
        "UFFDIO_COPY on this range",
        Some(Errno::EINVAL),
        "the kernel listed UFFDIO_COPY in the range's ioctl mask but refused it (the mask is \
         only an upper bound); register the range CONTINUE-only and resolve by write() + \
         UFFDIO_CONTINUE",
    )
}

impl<C: Class, B: Backing> Region<C, B> {
    /// Removes `[start, start + len)` of the region (addresses) from its file
    /// through the page state: for a `UFFD_EVENT_REMOVE` (a balloon's
    /// `MADV_REMOVE`) or a discard the VMM decides. See
    /// [`PageState::discard`].
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a range outside the region, unaligned, or a
    /// region without a backing; the discard's errors.
    pub fn discard(&self, start: usize, len: usize, mode: Discard) -> Result<()> {
        let Some(mapping) = self.backing.as_ref() else {
            return Err(Error::invalid("discard", "the region has no backing file"));
        };
        if len == 0 || !self.reg.contains(start, len) {
            return Err(Error::invalid(
                "discard",
                format!("{start:#x}+{len:#x} is not a part of the region"),
            ));
        }
        let offset = self.file_base + (start - self.reg.start()) as u64;
        mapping.state().discard(offset, len as u64, mode)
    }
}
