//! `PAGEMAP_SCAN` (Linux 6.7): which pages of a range are in which
//! categories, as an iterator of typed [`PageRegion`]s.
//!
//! The categories that matter with userfaultfd are maintained by its async
//! modes: [`PageCategories::WRITTEN`] is clear on a page write-protected
//! through a `WP_ASYNC` userfaultfd until the page is written,
//! [`PageCategories::ACCESSED`] (Linux 7.3) is clear on a page read-write
//! protected through an `RWP_ASYNC` userfaultfd until the page is read or
//! written. Scanning a protected range for them is working-set tracking
//! ([`crate::workingset`] does it for you).
//!
//! # Example
//!
//! ```no_run
//! use userfault::mem::{Mapping, Sharing};
//! use userfault::pagemap::{PageCategories, Pagemap, Scan};
//!
//! # fn main() -> userfault::Result<()> {
//! let mem = Mapping::anonymous(16 * 4096, Sharing::Private)?;
//! let pagemap = Pagemap::open()?;
//! let scan = Scan::new(mem.addr(), mem.addr() + mem.len())
//!     .require(PageCategories::PRESENT)
//!     .report(PageCategories::PRESENT | PageCategories::HUGE);
//! for region in pagemap.scan(&scan)? {
//!     let region = region?;
//!     println!("{:#x}..{:#x} {:?}", region.start, region.end, region.categories);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # References
//!
//! - [Documentation/admin-guide/mm/pagemap.rst](https://docs.kernel.org/admin-guide/mm/pagemap.html),
//!   section "PAGEMAP_SCAN IOCTL"

use std::fs::File;
use std::os::fd::AsFd;

use bitflags::bitflags;
use uffd_sys::pagemap as sys;

use crate::error::{Errno, Error, Result};

bitflags! {
    /// `PAGE_IS_*`: the categories `PAGEMAP_SCAN` selects by and reports.
    /// Unknown bits are kept and shown in hex.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct PageCategories: u64 {
        /// Registered for async write protection (`PAGE_IS_WPALLOWED`).
        const WPALLOWED = sys::PAGE_IS_WPALLOWED;
        /// Not write-protected by userfaultfd: written since protected
        /// (`PAGE_IS_WRITTEN`).
        const WRITTEN = sys::PAGE_IS_WRITTEN;
        /// Backed by a file, shmem included (`PAGE_IS_FILE`).
        const FILE = sys::PAGE_IS_FILE;
        /// Present in memory (`PAGE_IS_PRESENT`).
        const PRESENT = sys::PAGE_IS_PRESENT;
        /// Swapped out (`PAGE_IS_SWAPPED`).
        const SWAPPED = sys::PAGE_IS_SWAPPED;
        /// Mapped to the shared zero page (`PAGE_IS_PFNZERO`).
        const PFNZERO = sys::PAGE_IS_PFNZERO;
        /// Part of a huge page (`PAGE_IS_HUGE`).
        const HUGE = sys::PAGE_IS_HUGE;
        /// Soft-dirty (`PAGE_IS_SOFT_DIRTY`).
        const SOFT_DIRTY = sys::PAGE_IS_SOFT_DIRTY;
        /// Part of a guard region installed with `MADV_GUARD_INSTALL` (`PAGE_IS_GUARD`).
        const GUARD = sys::PAGE_IS_GUARD;
        /// Not read-write protected by userfaultfd: accessed since protected
        /// (`PAGE_IS_ACCESSED`, Linux 7.3).
        const ACCESSED = sys::PAGE_IS_ACCESSED;
        const _ = !0;
    }
}

bitflags! {
    /// `PM_SCAN_*`: what a scan does besides reporting.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ScanFlags: u64 {
        /// Write-protect the reported pages again, in the same walk
        /// (`PM_SCAN_WP_MATCHING`; the range must be registered WP on a
        /// `WP_ASYNC` userfaultfd).
        const WP_MATCHING = sys::PM_SCAN_WP_MATCHING;
        /// Fail with `EPERM` at the first page not registered for async
        /// write protection (`PM_SCAN_CHECK_WPASYNC`).
        const CHECK_WPASYNC = sys::PM_SCAN_CHECK_WPASYNC;
        const _ = !0;
    }
}

/// One run of pages `[start, end)` with the same reported categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageRegion {
    /// First address.
    pub start: usize,
    /// End (exclusive).
    pub end: usize,
    /// The categories of the run, limited to the scan's
    /// [`report`](Scan::report) set.
    pub categories: PageCategories,
}

impl PageRegion {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True for an empty run (the kernel never reports one).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// What to scan: a range, which pages match, which categories to report.
///
/// A page matches when, for every category in [`require`](Self::require),
/// it is in the category (out of it, for the categories also in
/// [`inverted`](Self::inverted)), and, if [`any_of`](Self::any_of) is not
/// empty, it matches at least one of those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    start: usize,
    end: usize,
    flags: ScanFlags,
    max_pages: u64,
    inverted: PageCategories,
    require: PageCategories,
    any_of: PageCategories,
    report: PageCategories,
}

impl Scan {
    /// Scans `[start, end)`, matching every page and reporting no
    /// categories until told otherwise.
    pub fn new(start: usize, end: usize) -> Scan {
        Scan {
            start,
            end,
            flags: ScanFlags::empty(),
            max_pages: 0,
            inverted: PageCategories::empty(),
            require: PageCategories::empty(),
            any_of: PageCategories::empty(),
            report: PageCategories::empty(),
        }
    }

    /// Only pages in every one of `categories` match (`category_mask`).
    pub fn require(mut self, categories: PageCategories) -> Scan {
        self.require |= categories;
        self
    }

    /// Only pages *not* in each of `categories` match: adds them to both
    /// `category_inverted` and `category_mask`.
    pub fn require_not(mut self, categories: PageCategories) -> Scan {
        self.require |= categories;
        self.inverted |= categories;
        self
    }

    /// `category_inverted`: these categories match when clear (in both
    /// [`require`](Self::require) and [`any_of`](Self::any_of)).
    pub fn inverted(mut self, categories: PageCategories) -> Scan {
        self.inverted |= categories;
        self
    }

    /// Pages in none of `categories` are skipped (`category_anyof_mask`).
    pub fn any_of(mut self, categories: PageCategories) -> Scan {
        self.any_of |= categories;
        self
    }

    /// The categories reported in each [`PageRegion`] (`return_mask`); runs
    /// are split where these differ.
    pub fn report(mut self, categories: PageCategories) -> Scan {
        self.report |= categories;
        self
    }

    /// Stop after this many matching pages (`max_pages`; 0: no limit).
    pub fn max_pages(mut self, pages: u64) -> Scan {
        self.max_pages = pages;
        self
    }

    /// `PM_SCAN_*` flags.
    pub fn flags(mut self, flags: ScanFlags) -> Scan {
        self.flags |= flags;
        self
    }
}

/// `/proc/self/pagemap`, open for `PAGEMAP_SCAN`.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
}

/// Regions asked of the kernel per `PAGEMAP_SCAN` call.
const BATCH: usize = 64;

impl Pagemap {
    /// `open("/proc/self/pagemap", O_RDONLY)`.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] from `open(2)` (`ENOENT` without procfs).
    pub fn open() -> Result<Pagemap> {
        let file = File::open("/proc/self/pagemap").map_err(|e| {
            Error::os_hint(
                "open /proc/self/pagemap",
                Errno::from_io(&e).unwrap_or(Errno::EIO),
                "PAGEMAP_SCAN needs procfs",
            )
        })?;
        Ok(Pagemap { file })
    }

    /// `ioctl(pagemap, PAGEMAP_SCAN, …)` over `scan`'s range, as an iterator
    /// of the matching runs in address order. The kernel fills up to 64
    /// runs per call; the iterator calls it again from where it stopped
    /// until the range is covered (or `max_pages` pages were reported), and
    /// joins a run split between two calls.
    ///
    /// Nothing is scanned before the first `next()`. A scan with
    /// [`ScanFlags::WP_MATCHING`] write-protects each batch as it is read.
    ///
    /// # Errors
    ///
    /// Here: [`Error::InvalidArgument`] for an unaligned start, an end
    /// before the start, or no categories to match or report with
    /// `WP_MATCHING`. From the iterator, the kernel's: `ENOTTY` (kernels
    /// before 6.7 have no `PAGEMAP_SCAN`), `EINVAL` (a category or flag the
    /// kernel does not know: `ACCESSED` before 7.3), `EPERM`
    /// (`CHECK_WPASYNC` found a page not registered for async WP), `EFAULT`.
    ///
    /// # References
    ///
    /// - [Documentation/admin-guide/mm/pagemap.rst](https://docs.kernel.org/admin-guide/mm/pagemap.html)
    #[doc(alias = "PAGEMAP_SCAN")]
    pub fn scan(&self, scan: &Scan) -> Result<Regions<'_>> {
        const OP: &str = "PAGEMAP_SCAN";
        let page = crate::sys::page_size();
        if !scan.start.is_multiple_of(page) {
            return Err(Error::invalid(
                OP,
                format!(
                    "the start {:#x} is not a multiple of the page size {page:#x}",
                    scan.start
                ),
            ));
        }
        if scan.end < scan.start {
            return Err(Error::invalid(
                OP,
                format!(
                    "the end {:#x} is before the start {:#x}",
                    scan.end, scan.start
                ),
            ));
        }
        Ok(Regions {
            pagemap: self,
            scan: *scan,
            next: scan.start,
            pages_left: scan.max_pages,
            buf: vec![sys::page_region::default(); BATCH],
            filled: 0,
            taken: 0,
            held: None,
            done: false,
        })
    }

    /// One `PAGEMAP_SCAN` call over `[start, scan.end)` into `buf`: the
    /// number of runs filled and where the walk stopped.
    fn scan_once(
        &self,
        scan: &Scan,
        start: usize,
        max_pages: u64,
        buf: &mut [sys::page_region],
    ) -> Result<(usize, usize)> {
        let mut arg = sys::pm_scan_arg {
            size: std::mem::size_of::<sys::pm_scan_arg>() as u64,
            flags: scan.flags.bits(),
            start: start as u64,
            end: scan.end as u64,
            walk_end: 0,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            max_pages,
            category_inverted: scan.inverted.bits(),
            category_mask: scan.require.bits(),
            category_anyof_mask: scan.any_of.bits(),
            return_mask: scan.report.bits(),
        };
        // SAFETY: PAGEMAP_SCAN reads and writes one `pm_scan_arg` (`arg`)
        // and writes at most `vec_len` `page_region`s at `vec`, which is
        // `buf`, exclusively borrowed for the call. Besides reporting it
        // only write-protects pages (WP_MATCHING) of ranges registered for
        // async write protection, which the kernel then resolves itself.
        let n = unsafe { crate::sys::ioctl_mut(self.file.as_fd(), sys::PAGEMAP_SCAN, &mut arg) }
            .map_err(|e| scan_error(e, scan))?;
        let n = (n as usize).min(buf.len());
        Ok((n, arg.walk_end as usize))
    }
}

#[cold]
fn scan_error(errno: Errno, scan: &Scan) -> Error {
    const OP: &str = "PAGEMAP_SCAN";
    match errno {
        Errno::ENOTTY => Error::unsupported(OP, Some(errno), "PAGEMAP_SCAN needs Linux 6.7"),
        Errno::EINVAL => Error::os_hint(
            OP,
            errno,
            format!(
                "the kernel refused the scan (categories {:?}, flags {:?}: ACCESSED needs Linux \
                 7.3, WP_MATCHING needs categories to match or report)",
                scan.require | scan.any_of | scan.report | scan.inverted,
                scan.flags
            ),
        ),
        Errno::EPERM => Error::os_hint(
            OP,
            errno,
            "CHECK_WPASYNC met a page not registered for async write protection",
        ),
        e => Error::os(OP, e),
    }
}

/// The runs of one [`Pagemap::scan`], in address order.
#[derive(Debug)]
pub struct Regions<'a> {
    pagemap: &'a Pagemap,
    scan: Scan,
    /// Where the next kernel call starts.
    next: usize,
    /// With `max_pages`: pages still to report (0 and `scan.max_pages` 0:
    /// no limit).
    pages_left: u64,
    buf: Vec<sys::page_region>,
    filled: usize,
    taken: usize,
    /// The last run read, held back in case the next batch continues it.
    held: Option<PageRegion>,
    done: bool,
}

impl Regions<'_> {
    /// The next run from the kernel's batches, unjoined.
    fn next_raw(&mut self) -> Option<Result<PageRegion>> {
        loop {
            if self.taken < self.filled {
                let r = self.buf[self.taken];
                self.taken += 1;
                return Some(Ok(PageRegion {
                    start: r.start as usize,
                    end: r.end as usize,
                    categories: PageCategories::from_bits_retain(r.categories),
                }));
            }
            if self.done || self.next >= self.scan.end {
                self.done = true;
                return None;
            }
            let limited = self.scan.max_pages != 0;
            if limited && self.pages_left == 0 {
                self.done = true;
                return None;
            }
            let max = if limited { self.pages_left } else { 0 };
            let (n, walk_end) =
                match self
                    .pagemap
                    .scan_once(&self.scan, self.next, max, &mut self.buf)
                {
                    Ok(v) => v,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                };
            self.filled = n;
            self.taken = 0;
            if limited {
                let page = crate::sys::page_size() as u64;
                let pages: u64 = self.buf[..n].iter().map(|r| (r.end - r.start) / page).sum();
                self.pages_left = self.pages_left.saturating_sub(pages);
            }
            // The walk ends at `end`, or where the buffer (or max_pages)
            // filled up; a walk that made no progress is over.
            if walk_end <= self.next || walk_end >= self.scan.end {
                self.done = true;
            }
            self.next = walk_end;
        }
    }
}

impl Iterator for Regions<'_> {
    type Item = Result<PageRegion>;

    fn next(&mut self) -> Option<Result<PageRegion>> {
        loop {
            match self.next_raw() {
                Some(Ok(r)) => match self.held {
                    Some(mut h) if h.end == r.start && h.categories == r.categories => {
                        h.end = r.end;
                        self.held = Some(h);
                    }
                    Some(h) => {
                        self.held = Some(r);
                        return Some(Ok(h));
                    }
                    None => self.held = Some(r),
                },
                Some(Err(e)) => return Some(Err(e)),
                None => return self.held.take().map(Ok),
            }
        }
    }
}
