//! Typed faults: what each kind of fault of a region of class `C` can be
//! resolved with, page at a time or a window at a time.

use super::page_state::{PageState, check_len};
use super::rwp::{RwpFault, UnknownFault};
use super::{Class, ContinueOnly, CopyCapable, Region, Resolution, WindowFill};
use crate::backing::Backing;
use crate::error::{Error, Result};
use crate::uffd::{CopyMode, FaultKind, UnprotectMode, ZeropageMode};

/// The largest window a chunked resolution fills.
pub const MAX_WINDOW: usize = 2 << 20;

/// The part common to every typed fault: its region and page, and whether
/// it was consumed.
#[derive(Debug)]
pub(super) struct RawFault<'r, C: Class, B> {
    pub(super) region: &'r Region<C, B>,
    pub(super) page: usize,
    pub(super) done: bool,
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

impl<'r, C: Class, B> Fault<'r, C, B> {
    #[inline(always)]
    pub(super) fn new(region: &'r Region<C, B>, page: usize, kind: FaultKind) -> Self {
        let raw = RawFault {
            region,
            page,
            done: false,
        };
        match kind {
            FaultKind::Missing => Fault::Missing(MissingFault { raw }),
            FaultKind::Minor => Fault::Minor(MinorFault { raw }),
            FaultKind::WriteProtect => Fault::WriteProtect(WpFault { raw }),
            FaultKind::Rwp => Fault::Rwp(RwpFault { raw }),
            FaultKind::Unknown => Fault::Unknown(UnknownFault { raw }),
        }
    }
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
            /// The file offset of the faulting page, for a region with a
            /// backing file; `None` for one without (anonymous memory).
            pub fn backing_offset(&self) -> Option<u64> {
                self.raw.region.file_offset_of(self.raw.page)
            }
        }
    };
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
fault_accessors!(RwpFault);
fault_accessors!(UnknownFault);

impl<C: Class, B> MissingFault<'_, C, B> {
    #[inline]
    fn check_page(&self, op: &'static str, data: &[u8]) -> Result<()> {
        check_len(op, self.raw.region.page_size, data.len())
    }
}

impl<B: Backing> MissingFault<'_, ContinueOnly, B> {
    /// The file offset of the faulting page: where its data goes. A
    /// CONTINUE-only region always has a backing file.
    pub fn file_offset(&self) -> u64 {
        let region = self.raw.region;
        let (_, fp) = region.file_page(self.raw.page);
        fp * region.page_size as u64
    }
}

impl<B: Backing> MinorFault<'_, ContinueOnly, B> {
    /// The file offset of the faulting page. A CONTINUE-only region always
    /// has a backing file.
    pub fn file_offset(&self) -> u64 {
        let region = self.raw.region;
        let (_, fp) = region.file_page(self.raw.page);
        fp * region.page_size as u64
    }
}

impl<B> MissingFault<'_, CopyCapable, B> {
    /// `ioctl(uffd, UFFDIO_COPY, …)`: copies `data` (one page) into the
    /// faulting page and wakes the waiter; on `EEXIST` maps the cached page
    /// (`UFFDIO_CONTINUE`, where the range offers it) or wakes.
    ///
    /// On a file mapping the copy goes through the file's [`PageState`]: a
    /// page another path filled is only mapped, and a discarded page gets
    /// zeros ([`Resolution::Zeroed`]).
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
        if region.backing.is_some() {
            return region.copy_through_state(page, Some(data));
        }
        match region.uffd.copy_prechecked(page, data, CopyMode::empty()) {
            Ok(_) => Ok(Resolution::Filled),
            Err(e) => region.copy_failed(page, e),
        }
    }

    /// `ioctl(uffd, UFFDIO_ZEROPAGE, …)`: maps a zero page and wakes the
    /// waiter; on `EEXIST` wakes it. On a file mapping, a page of zeros is
    /// copied through the file's page state instead (a page another path
    /// filled is only mapped).
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
        if region.backing.is_some() {
            return region.copy_through_state(page, None);
        }
        match region
            .uffd
            .zeropage(&region.reg, page, region.page_size, ZeropageMode::empty())
        {
            Ok(_) => Ok(Resolution::Filled),
            Err(e) if e.is_exists() => region.settle_existing(page),
            Err(e) => Err(region.wake_after(page, e)),
        }
    }
}

impl<B: Backing> MissingFault<'_, ContinueOnly, B> {
    /// Fills the faulting page's place in the backing file with `data` (one
    /// page: `pwrite`, or the backing's fill) through the file's
    /// [`PageState`], then `ioctl(uffd, UFFDIO_CONTINUE, …)` to map it and
    /// wake the waiter.
    ///
    /// A page the state knows as filled (by this or any other path: another
    /// range of the file, a stage-2 resolver, a populator) is **not written
    /// again**, only mapped ([`Resolution::Mapped`]); a discarded page is
    /// filled with zeros, not `data` ([`Resolution::Zeroed`]). `EEXIST` from
    /// the continue ends in `UFFDIO_WAKE`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `data` is not one page (the fault stays
    /// unresolved and is woken on drop); the fill's errors (`Unsupported`
    /// for a guest_memfd on a kernel without guest_memfd `write()`); other
    /// errnos — every error wakes the waiter first.
    #[doc(alias = "UFFDIO_CONTINUE")]
    pub fn write_then_continue(mut self, data: &[u8]) -> Result<Resolution> {
        self.check_page("write_then_continue", data)?;
        let region = self.raw.region;
        let page = self.raw.page;
        // A panicking fill leaves `done` false: the fault's drop wakes.
        let r = region.fill_and_map(page, data);
        self.raw.done = true;
        r.map_err(|e| region.wake_after(page, e))
    }
}

/// The aligned window of pages around a fault that a chunked resolution
/// fills: `size` bytes (a power of two from the page size up to
/// [`MAX_WINDOW`]), aligned to `size` in the file and clipped to the
/// region. Made by [`MissingFault::window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start: usize,
    len: usize,
    file_offset: u64,
    fault: usize,
}

impl Window {
    /// First address of the window.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Length in bytes: the data a chunked resolution wants.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a window holds at least the faulting page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The file offset of the window's first byte: where its data comes
    /// from in a snapshot of the file.
    pub fn file_offset(&self) -> u64 {
        self.file_offset
    }
}

impl<B: Backing, C: Class> MissingFault<'_, C, B> {
    /// The window of `size` bytes around the fault for a chunked resolution
    /// ([`write_window_then_continue`](MissingFault::write_window_then_continue),
    /// [`copy_window`](MissingFault::copy_window)).
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `size` is not a power of two from the
    /// region's page size up to [`MAX_WINDOW`], or the region has no
    /// backing file.
    pub fn window(&self, size: usize) -> Result<Window> {
        let region = self.raw.region;
        if !size.is_power_of_two() || size < region.page_size || size > MAX_WINDOW {
            return Err(Error::invalid(
                "fault window",
                format!(
                    "the window must be a power of two from the page size {:#x} up to \
                     {MAX_WINDOW:#x} bytes, not {size:#x}",
                    region.page_size
                ),
            ));
        }
        let Some(offset) = region.file_offset_of(self.raw.page) else {
            return Err(Error::invalid(
                "fault window",
                "the region has no backing file",
            ));
        };
        // Aligned in the file (where snapshots and huge folios are), then
        // clipped to the region.
        let back = (offset & (size as u64 - 1)) as usize;
        let aligned = self.raw.page.saturating_sub(back);
        let start = aligned.max(region.reg.start());
        let end = aligned.saturating_add(size).min(region.reg.end());
        Ok(Window {
            start,
            len: end - start,
            file_offset: offset - (self.raw.page - start) as u64,
            fault: self.raw.page,
        })
    }

    fn check_window(&self, op: &'static str, window: &Window, data: &[u8]) -> Result<()> {
        if window.fault != self.raw.page {
            return Err(Error::invalid(op, "the window is another fault's"));
        }
        if data.len() != window.len {
            return Err(Error::invalid(
                op,
                format!(
                    "the window is {:#x} bytes, the data {:#x}",
                    window.len,
                    data.len()
                ),
            ));
        }
        Ok(())
    }
}

impl<B: Backing> MissingFault<'_, ContinueOnly, B> {
    /// Chunked [`write_then_continue`](Self::write_then_continue): fills the
    /// faulting page and every page of `window` that the file's page state
    /// does not know as filled (or being filled) with their part of `data`
    /// (the window's bytes of the snapshot), in one write per run of such
    /// pages — one for a window nobody touched yet — clears their bitmap
    /// bits a word at a time, and maps each run with one
    /// `UFFDIO_CONTINUE`. Every page is still filled at most once: pages
    /// filled by another path are skipped, and the faulting page, if
    /// another thread holds it, is waited for and only mapped.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `window` is not this fault's or `data` not
    /// its length; otherwise as [`write_then_continue`](Self::write_then_continue).
    #[doc(alias = "UFFDIO_CONTINUE")]
    pub fn write_window_then_continue(self, window: Window, data: &[u8]) -> Result<Resolution> {
        self.write_window_then_continue_counted(window, data)
            .and_then(|f| f.resolution)
    }

    /// `pwrite(2)` + `UFFDIO_CONTINUE`:
    /// [`write_window_then_continue`](Self::write_window_then_continue),
    /// also saying how many pages of the window this call wrote (for
    /// accounting: a page filled meanwhile by another path is that path's).
    ///
    /// # Errors
    ///
    /// As [`write_window_then_continue`](Self::write_window_then_continue):
    /// `Err` when nothing was written; an error after other pages of the
    /// window were written is [`WindowFill::resolution`], with those pages
    /// counted.
    #[doc(alias = "UFFDIO_CONTINUE")]
    pub fn write_window_then_continue_counted(
        mut self,
        window: Window,
        data: &[u8],
    ) -> Result<WindowFill> {
        self.check_window("write_window_then_continue", &window, data)?;
        let region = self.raw.region;
        let page = self.raw.page;
        let r = region.resolve_window(page, &window, data, Chunk::Write);
        self.raw.done = true;
        match r {
            Ok(mut fill) => {
                fill.resolution = fill.resolution.map_err(|e| region.wake_after(page, e));
                Ok(fill)
            }
            Err(e) => Err(region.wake_after(page, e)),
        }
    }
}

impl<B: Backing> MissingFault<'_, CopyCapable, B> {
    /// Chunked [`copy`](Self::copy) on a file mapping: `UFFDIO_COPY` of each
    /// run of pages of `window` that the file's page state does not know as
    /// filled, one ioctl per run, through the state as
    /// [`write_window_then_continue`](MissingFault::write_window_then_continue).
    ///
    /// # Errors
    ///
    /// As [`copy`](Self::copy) and [`window`](Self::window).
    #[doc(alias = "UFFDIO_COPY")]
    pub fn copy_window(self, window: Window, data: &[u8]) -> Result<Resolution> {
        self.copy_window_counted(window, data)
            .and_then(|f| f.resolution)
    }

    /// `UFFDIO_COPY`: [`copy_window`](Self::copy_window), also saying how
    /// many pages of the window this call wrote (for accounting: a page
    /// filled meanwhile by another path is that path's).
    ///
    /// # Errors
    ///
    /// As [`copy_window`](Self::copy_window): `Err` when nothing was
    /// written; an error after other pages of the window were written is
    /// [`WindowFill::resolution`], with those pages counted.
    #[doc(alias = "UFFDIO_COPY")]
    pub fn copy_window_counted(mut self, window: Window, data: &[u8]) -> Result<WindowFill> {
        self.check_window("copy_window", &window, data)?;
        let region = self.raw.region;
        let page = self.raw.page;
        let r = region.resolve_window(page, &window, data, Chunk::Copy);
        self.raw.done = true;
        match r {
            Ok(mut fill) => {
                fill.resolution = fill.resolution.map_err(|e| region.wake_after(page, e));
                Ok(fill)
            }
            Err(e) => Err(region.wake_after(page, e)),
        }
    }
}

/// How a chunked resolution fills its runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// `write()` into the file, then `UFFDIO_CONTINUE`.
    Write,
    /// `UFFDIO_COPY`.
    Copy,
}

/// The claims a chunked resolution holds: released as they were if it
/// stops early (an error or a panic), so no waiter waits forever.
pub(crate) struct HeldPages<'s, B> {
    state: &'s PageState<B>,
    first: u64,
    claimed: [u64; MAX_PAGES / 64],
    zeroed: [u64; MAX_PAGES / 64],
}

/// Pages in the largest window of base pages.
const MAX_PAGES: usize = MAX_WINDOW / 4096;

/// Runs of held pages in a window at most: every other page.
pub(crate) const MAX_RUNS: usize = MAX_PAGES.div_ceil(2);

impl<'s, B> HeldPages<'s, B> {
    /// Claims, without waiting, every claimable page of the `n` pages from
    /// file page `first` (at most a window's worth).
    pub(crate) fn claim(state: &'s PageState<B>, first: u64, n: u64) -> HeldPages<'s, B> {
        HeldPages::claim_with(state, first, n, true)
    }

    /// [`claim`](Self::claim), leaving discarded pages alone unless
    /// `discarded`.
    pub(crate) fn claim_with(
        state: &'s PageState<B>,
        first: u64,
        n: u64,
        discarded: bool,
    ) -> HeldPages<'s, B> {
        let mut held = HeldPages {
            state,
            first,
            claimed: [0; MAX_PAGES / 64],
            zeroed: [0; MAX_PAGES / 64],
        };
        for i in 0..n.min(MAX_PAGES as u64) {
            if let Some(claim) = state.try_claim(first + i) {
                if !discarded && claim.is_zero_fill() {
                    // Dropped: left discarded, waiters woken.
                    continue;
                }
                let word = (i / 64) as usize;
                held.claimed[word] |= 1 << (i % 64);
                if claim.hold() {
                    held.zeroed[word] |= 1 << (i % 64);
                }
            }
        }
        held
    }

    /// The runs `[a, b)` of held pages among the first `n`, written into
    /// `out` (room for every run there can be); returns them.
    pub(crate) fn runs_into<'o>(
        &self,
        n: u64,
        out: &'o mut [(u64, u64); MAX_RUNS],
    ) -> &'o [(u64, u64)] {
        let n = n.min(MAX_PAGES as u64);
        let mut count = 0;
        let mut i = 0;
        while i < n {
            if !self.has(i) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < n && self.has(j) {
                j += 1;
            }
            out[count] = (i, j);
            count += 1;
            i = j;
        }
        &out[..count]
    }

    pub(crate) fn has(&self, i: u64) -> bool {
        self.claimed[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    pub(crate) fn zero(&self, i: u64) -> bool {
        self.zeroed[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// How many of the held pages `[a, b)` are to be filled with zeros.
    pub(crate) fn zeros_in(&self, a: u64, b: u64) -> u64 {
        (a..b).filter(|&k| self.zero(k)).count() as u64
    }

    /// Marks `[a, b)` filled and no longer held.
    pub(crate) fn finish(&mut self, a: u64, b: u64) {
        self.state.finish_run(self.first + a, b - a);
        for i in a..b {
            self.claimed[(i / 64) as usize] &= !(1 << (i % 64));
        }
    }
}

impl<B> Drop for HeldPages<'_, B> {
    fn drop(&mut self) {
        for i in 0..MAX_PAGES as u64 {
            if self.has(i) {
                self.state.abandon(self.first + i, self.zero(i));
            }
        }
    }
}

impl<C: Class, B: Backing> Region<C, B> {
    /// The chunked resolutions: claim what is claimable without waiting,
    /// fill it run by run, finish (bits, states), map or wake run by run,
    /// then make sure of the faulting page.
    fn resolve_window(
        &self,
        page: usize,
        w: &Window,
        data: &[u8],
        how: Chunk,
    ) -> Result<WindowFill> {
        let ps = self.page_size;
        let n = (w.len / ps) as u64;
        let (state, first) = self.file_page(w.start);
        let mut held = HeldPages {
            state,
            first,
            claimed: [0; MAX_PAGES / 64],
            zeroed: [0; MAX_PAGES / 64],
        };
        for i in 0..n {
            if let Some(claim) = state.try_claim(first + i) {
                let word = (i / 64) as usize;
                held.claimed[word] |= 1 << (i % 64);
                if claim.hold() {
                    held.zeroed[word] |= 1 << (i % 64);
                }
            }
        }
        let fault_i = ((page - w.start) / ps) as u64;
        let fault_claimed = held.has(fault_i);
        let fault_zeroed = held.zero(fault_i);
        let dontwake = state.has_bitmaps();
        // Runs of claimed pages, in a fixed array: nothing here allocates
        // (see `zeros`).
        let mut runs = [(0u64, 0u64); MAX_RUNS];
        let runs = held.runs_into(n, &mut runs);
        let mut fault_mapped = false;
        // Pages this call wrote, and of them those it wrote zeros into.
        let (mut written, mut zeroed) = (0u64, 0u64);
        match how {
            Chunk::Write => {
                for &(a, b) in runs {
                    let bytes = &data[a as usize * ps..b as usize * ps];
                    state.fill_run(first + a, bytes, |k| held.zero(a + k))?;
                }
                for &(a, b) in runs {
                    written += b - a;
                    zeroed += held.zeros_in(a, b);
                }
                for &(a, b) in runs {
                    held.finish(a, b);
                }
                for &(a, b) in runs {
                    let start = w.start + a as usize * ps;
                    let len = (b - a) as usize * ps;
                    let ok = self
                        .uffd
                        .continue_prechecked(start, len, crate::uffd::ContinueMode::empty())
                        .is_ok();
                    if ok && (a..b).contains(&fault_i) {
                        fault_mapped = true;
                    }
                }
            }
            Chunk::Copy => {
                let mode = if dontwake {
                    CopyMode::DONTWAKE
                } else {
                    CopyMode::empty()
                };
                // Each run in pieces of one kind: the source's bytes, or
                // (discarded pages) zeros. At most one piece per page.
                let mut copied = [(0u64, 0u64, false); MAX_PAGES];
                let mut pieces = 0;
                for &(a, b) in runs {
                    let mut i = a;
                    while i < b {
                        let zero = held.zero(i);
                        let mut j = i + 1;
                        while j < b && held.zero(j) == zero {
                            j += 1;
                        }
                        let len = (j - i) as usize * ps;
                        let zeros;
                        let src = if zero {
                            zeros = super::zeros(len);
                            &zeros[..]
                        } else {
                            &data[i as usize * ps..j as usize * ps]
                        };
                        let start = w.start + i as usize * ps;
                        let done = match self.uffd.copy_prechecked(start, src, mode) {
                            Ok(_) => j - i,
                            // Copied up to a page that was there already:
                            // the copied part is filled (and not woken by
                            // the failing ioctl); the rest is released and
                            // its faults resolved one by one.
                            Err(Error::Partial { done, .. }) => done / ps as u64,
                            Err(_) => 0,
                        };
                        copied[pieces] = (i, i + done, done == j - i);
                        pieces += 1;
                        i = j;
                    }
                }
                for &(a, b, whole) in &copied[..pieces] {
                    if b == a {
                        continue;
                    }
                    written += b - a;
                    zeroed += held.zeros_in(a, b);
                    held.finish(a, b);
                    if dontwake || !whole {
                        let _ = self
                            .uffd
                            .wake_prechecked(w.start + a as usize * ps, (b - a) as usize * ps);
                    }
                    if (a..b).contains(&fault_i) {
                        fault_mapped = true;
                    }
                }
            }
        }
        drop(held);
        if fault_mapped {
            let resolution = if fault_zeroed {
                Resolution::Zeroed
            } else {
                Resolution::Filled
            };
            return Ok(WindowFill {
                resolution: Ok(resolution),
                written,
                zeroed,
            });
        }
        let at = fault_i as usize * ps;
        let slice = &data[at..at + ps];
        let r = match how {
            Chunk::Write => self.fill_and_map(page, slice),
            Chunk::Copy => self.copy_through_state(page, Some(slice)),
        };
        // An error here leaves the window's other pages written: they count.
        if let Ok(r) = r
            && r.wrote()
        {
            written += 1;
            zeroed += u64::from(r == Resolution::Zeroed);
        }
        let resolution = r.map(|r| match r {
            Resolution::Mapped | Resolution::AlreadyPresent if fault_claimed => {
                if fault_zeroed {
                    Resolution::Zeroed
                } else {
                    Resolution::Filled
                }
            }
            r => r,
        });
        Ok(WindowFill {
            resolution,
            written,
            zeroed,
        })
    }
}

impl<C: Class, B> MinorFault<'_, C, B> {
    /// `ioctl(uffd, UFFDIO_CONTINUE, …)`: maps the cached page and wakes the
    /// waiter; `EEXIST` → `UFFDIO_WAKE`; `EFAULT` (the page left the cache)
    /// → `UFFDIO_WAKE`, so the retry raises a MISSING fault.
    ///
    /// On a file mapping a fill under way is waited for first, and a page
    /// the state did not know as filled is counted as filled from now on.
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
            Ok(_) => Ok(Resolution::Mapped),
            Err(e) => Err(region.wake_after(page, e)),
        }
    }
}
