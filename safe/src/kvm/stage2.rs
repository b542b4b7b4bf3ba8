//! Stage-2 (KVM userfault) faults and their one resolution: write the page
//! into the backing, then clear the bitmap bit — through the file's shared
//! [`PageState`].

use std::fmt;
use std::sync::Arc;

use super::{MemoryFault, UserfaultBitmap};
use crate::backing::Backing;
use crate::error::{Error, Result};
use crate::resolve::{HeldPages, MAX_WINDOW, PageState, Resolution, WindowFill};

/// Turns the `KVM_EXIT_MEMORY_FAULT` exits of one KVM userfault slot into
/// [`Stage2Fault`]s: the slot's bitmap, attached to the page state of the
/// file that backs the slot, and where in that file the slot starts
/// (`guest_memfd_offset` for a guest_memfd slot; the mapping's file offset
/// for a memfd).
///
/// The bitmap becomes part of the page state: every fill of a page of the
/// slot's range — by this resolver, a userfaultfd resolution on any range
/// mapping the file, or a populator — clears its bit after the data is in
/// the file, and every discard sets it again.
pub struct Stage2Resolver<'a, B> {
    state: &'a PageState<B>,
    bitmap: &'a UserfaultBitmap,
    first_page: u64,
}

impl<'a, B: Backing> Stage2Resolver<'a, B> {
    /// A resolver for the slot of `bitmap`, whose first page is at
    /// `backing_offset` in the file of `state`. Attaches the bitmap to the
    /// state (again: the same slot) and makes its bits agree with the
    /// state — set for every page not filled yet, clear for the filled
    /// ones. Attach before the slot's vCPUs run.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when the file's page size is not the bitmap's (KVM
    /// userfault works in base pages; a hugetlb backing cannot be filled one
    /// base page at a time), when `backing_offset` is not page-aligned, when
    /// the slot does not fit in the file, when the bitmap is attached at
    /// another offset, or when the file has 16 bitmaps attached already.
    pub fn new(
        state: &'a PageState<B>,
        bitmap: &'a Arc<UserfaultBitmap>,
        backing_offset: u64,
    ) -> Result<Stage2Resolver<'a, B>> {
        state.attach(bitmap, backing_offset)?;
        Ok(Stage2Resolver {
            state,
            bitmap,
            first_page: backing_offset / state.page_size() as u64,
        })
    }

    /// The resolver of a slot whose bitmap is attached to `state` at
    /// `backing_offset` already (by [`new`](Self::new)), found without
    /// the state's attach lock: for a vCPU's exit path, which then takes no
    /// lock on the way to its fill. `None` when the bitmap is not attached
    /// there.
    pub fn attached(
        state: &'a PageState<B>,
        bitmap: &'a Arc<UserfaultBitmap>,
        backing_offset: u64,
    ) -> Option<Stage2Resolver<'a, B>> {
        state
            .is_attached(bitmap, backing_offset)
            .then(|| Stage2Resolver {
                state,
                bitmap,
                first_page: backing_offset / state.page_size() as u64,
            })
    }
}

impl<'a, B> Stage2Resolver<'a, B> {
    /// The stage-2 fault behind a memory-fault exit, if it is a KVM
    /// userfault (USERFAULT flag) inside this slot; `None` otherwise (an
    /// exit for another slot, or a memory fault of another kind). The fault
    /// is for the page that contains the exit's `gpa`; KVM reports one base
    /// page per exit.
    pub fn fault(&self, exit: &MemoryFault) -> Option<Stage2Fault<'a, B>> {
        if !exit.is_userfault() {
            return None;
        }
        let page = self.bitmap.page_of(exit.gpa())?;
        Some(Stage2Fault {
            state: self.state,
            bitmap: self.bitmap,
            page,
            file_page: self.first_page + page,
            exit: *exit,
        })
    }

    /// The slot's bitmap.
    pub fn bitmap(&self) -> &'a UserfaultBitmap {
        self.bitmap
    }

    /// The page state the slot's bitmap is part of.
    pub fn state(&self) -> &'a PageState<B> {
        self.state
    }
}

impl<B> fmt::Debug for Stage2Resolver<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stage2Resolver")
            .field("bitmap", self.bitmap)
            .field("first_page", &self.first_page)
            .finish_non_exhaustive()
    }
}

/// A vCPU (stage-2) access to a page whose userfault bit is set.
///
/// Its only resolution is [`resolve`](Stage2Fault::resolve), which
/// consumes it: write the page into the backing, then clear the bit with a
/// store-release. Never the other order: KVM maps whatever the backing
/// holds once it sees the bit clear (for guest_memfd, a new zero page if
/// nothing was written). After `resolve`, re-enter the vCPU (`KVM_RUN`).
pub struct Stage2Fault<'a, B> {
    state: &'a PageState<B>,
    bitmap: &'a UserfaultBitmap,
    page: u64,
    file_page: u64,
    exit: MemoryFault,
}

impl<B> Stage2Fault<'_, B> {
    /// The exit this fault came from.
    pub fn exit(&self) -> MemoryFault {
        self.exit
    }

    /// Guest physical address of the faulting page.
    pub fn page_gpa(&self) -> u64 {
        self.bitmap.guest_phys_addr() + self.page * self.bitmap.page_size()
    }

    /// Index of the page in the slot (its bit in the bitmap).
    pub fn page(&self) -> u64 {
        self.page
    }

    /// Offset of the page in the backing: where its data goes.
    pub fn backing_offset(&self) -> u64 {
        self.file_page * self.bitmap.page_size()
    }

    /// Size of the page: the length `resolve` wants.
    pub fn len(&self) -> usize {
        self.bitmap.page_size() as usize
    }

    /// Always false: a page has bytes.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl<B: Backing> Stage2Fault<'_, B> {
    /// Writes `data` (one page) into the backing at the page's offset
    /// ([`Backing::fill`]: `pwrite` for shmem and guest_memfd) unless the
    /// page state knows the page as filled, then clears the page's bit with
    /// a store-release.
    ///
    /// The page is claimed in the file's [`PageState`] first, so it is
    /// written once whatever else asks for it at the same time: concurrent
    /// resolvers (several vCPUs faulting on it), a userfaultfd handler of
    /// any range mapping the file, a populator. The first to claim it
    /// writes ([`Resolution::Filled`], or [`Resolution::Zeroed`] for a
    /// discarded page, which gets zeros); the others wait (parked) and
    /// return [`Resolution::AlreadyPresent`] without writing — also when
    /// the page was filled by a userfaultfd resolution and written by the
    /// guest since. A filled page whose bit is still set (it was attached
    /// while a fill was under way) gets its bit cleared. If the write
    /// fails, the bit stays set, the claim is released (a waiting resolver
    /// then tries itself) and the error is returned. All resolvers must
    /// pass the same data for the page — the snapshot's.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `data` is not one page; the error of
    /// [`Backing::fill`] otherwise (for a guest_memfd on a kernel without
    /// guest_memfd `write()`: `Unsupported`). An `EEXIST` from the backing
    /// (a guest_memfd without direct map refuses to overwrite a page) means
    /// the page is there: it counts as filled.
    pub fn resolve(self, data: &[u8]) -> Result<Resolution> {
        crate::resolve::page_state::check_len("stage-2 resolve", self.len(), data.len())?;
        match self.state.populate_page(self.file_page, data)? {
            Resolution::AlreadyPresent => {
                if self.bitmap.test(self.page) == Some(true) {
                    self.state.clear_bit_if_filled(self.file_page);
                }
                Ok(Resolution::AlreadyPresent)
            }
            r => Ok(r),
        }
    }
}

/// The aligned window of pages around a stage-2 fault that a chunked
/// resolution fills: `size` bytes (a power of two from the page size up to
/// [`MAX_WINDOW`]), aligned to `size` in the file and clipped to the slot.
/// Made by [`Stage2Fault::window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage2Window {
    /// File page of the window's first page.
    first: u64,
    pages: u64,
    page_size: u64,
    /// The slot page of the window's first page.
    slot_page: u64,
    /// The file page of the fault the window was made for.
    fault: u64,
}

impl Stage2Window {
    /// The file offset of the window's first byte: where its data comes
    /// from in a snapshot of the file.
    pub fn backing_offset(&self) -> u64 {
        self.first * self.page_size
    }

    /// The slot's page index of the window's first page (its bitmap bit).
    pub fn first_page(&self) -> u64 {
        self.slot_page
    }

    /// Length in bytes: the data a chunked resolution wants.
    pub fn len(&self) -> usize {
        (self.pages * self.page_size) as usize
    }

    /// Always false: a window holds at least the faulting page.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl<B: Backing> Stage2Fault<'_, B> {
    /// The window of `size` bytes around the fault for
    /// [`resolve_window`](Self::resolve_window): aligned to `size` in the
    /// file, clipped to the slot and the file.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `size` is not a power of two from the page
    /// size up to [`MAX_WINDOW`].
    pub fn window(&self, size: usize) -> Result<Stage2Window> {
        let ps = self.bitmap.page_size();
        if !size.is_power_of_two() || (size as u64) < ps || size > MAX_WINDOW {
            return Err(Error::invalid(
                "stage-2 window",
                format!(
                    "the window must be a power of two from the page size {ps:#x} up to \
                     {MAX_WINDOW:#x} bytes, not {size:#x}"
                ),
            ));
        }
        let per = size as u64 / ps;
        let aligned = self.file_page - self.file_page % per;
        // The slot's pages, as file pages.
        let slot_first = self.file_page - self.page;
        let slot_end = (slot_first + self.bitmap.pages()).min(self.state.pages());
        let first = aligned.max(slot_first);
        let end = (aligned + per).min(slot_end);
        Ok(Stage2Window {
            first,
            pages: end - first,
            page_size: ps,
            slot_page: first - slot_first,
            fault: self.file_page,
        })
    }

    /// Chunked [`resolve`](Self::resolve): fills the faulting page and
    /// every page of `window` that the file's page state does not know as
    /// filled (or being filled) with their part of `data` (the window's
    /// bytes of the snapshot), one write per run of such pages — one for a
    /// window nobody touched yet — then clears their bitmap bits a word at
    /// a time. Every page is still filled at most once: pages filled by
    /// another path are skipped, and the faulting page, if another thread
    /// holds it, is waited for. A discarded page of the window is filled
    /// with zeros.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `window` is not this fault's or `data` not its
    /// length; otherwise as [`resolve`](Self::resolve) (the pages of a
    /// failed write stay unfilled, their bits set).
    pub fn resolve_window(self, window: Stage2Window, data: &[u8]) -> Result<Resolution> {
        self.resolve_window_counted(window, data)
            .and_then(|f| f.resolution)
    }

    /// The KVM userfault bitmap's bits cleared after `pwrite(2)`:
    /// [`resolve_window`](Self::resolve_window), also saying how many pages
    /// of the window this call wrote (for accounting: a page filled
    /// meanwhile by another path is that path's).
    ///
    /// # Errors
    ///
    /// As [`resolve_window`](Self::resolve_window): `Err` when nothing was
    /// written; an error after other pages of the window were written is
    /// [`WindowFill::resolution`], with those pages counted.
    pub fn resolve_window_counted(self, window: Stage2Window, data: &[u8]) -> Result<WindowFill> {
        const OP: &str = "stage-2 resolve_window";
        if window.fault != self.file_page || window.page_size != self.bitmap.page_size() {
            return Err(Error::invalid(OP, "the window is another fault's"));
        }
        if data.len() != window.len() {
            return Err(Error::invalid(
                OP,
                format!(
                    "the window is {:#x} bytes, the data {:#x}",
                    window.len(),
                    data.len()
                ),
            ));
        }
        let ps = window.page_size as usize;
        let n = window.pages;
        let mut held = HeldPages::claim(self.state, window.first, n);
        let fault_i = self.file_page - window.first;
        let fault_claimed = held.has(fault_i);
        let fault_zeroed = held.zero(fault_i);
        let mut runs = [(0, 0); crate::resolve::MAX_RUNS];
        let runs = held.runs_into(n, &mut runs);
        for &(a, b) in runs {
            let bytes = &data[a as usize * ps..b as usize * ps];
            self.state
                .fill_run(window.first + a, bytes, |k| held.zero(a + k))?;
        }
        let mut written = 0;
        let mut zeroed = 0;
        for &(a, b) in runs {
            written += b - a;
            zeroed += held.zeros_in(a, b);
            held.finish(a, b);
        }
        drop(held);
        if fault_claimed {
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
        // An error here leaves the window's other pages written: they count.
        let resolution = self.resolve(&data[at..at + ps]);
        if let Ok(r) = resolution
            && r.wrote()
        {
            written += 1;
            zeroed += u64::from(r == Resolution::Zeroed);
        }
        Ok(WindowFill {
            resolution,
            written,
            zeroed,
        })
    }
}

impl<B> fmt::Debug for Stage2Fault<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stage2Fault")
            .field("exit", &self.exit)
            .field("page", &self.page)
            .field(
                "backing_offset",
                &format_args!("{:#x}", self.backing_offset()),
            )
            .finish_non_exhaustive()
    }
}
