//! The shared page state of one backing file: what each page is, for every
//! path that fills it.
//!
//! One [`PageState`] exists per backing file (a second one for the same
//! file is refused). Every registered range that maps the file
//! ([`BackedMapping`](crate::backing::BackedMapping)s made from the state),
//! every stage-2 resolver ([`Stage2Resolver`](crate::kvm::Stage2Resolver))
//! and every populator fill pages through it, so a page is filled exactly
//! once from the snapshot and a page that was written after its fill is
//! never filled again.
//!
//! # What a page is
//!
//! Two bits per page, indexed by the page's offset in the file:
//!
//! | state | meaning | the next fill writes |
//! |---|---|---|
//! | unfilled | never filled (or discarded with [`Discard::Restore`]) | the caller's data (the snapshot) |
//! | discarded | discarded with [`Discard::Zero`] | zeros, whatever data the caller gives |
//! | filled | in the file; every path only maps it | nothing |
//! | busy | one thread holds the page's claim (a fill, a discard, a re-check) | others wait (parked) |
//!
//! A fill is claim → fill the file → clear the page's bit in every attached
//! KVM userfault bitmap (store-release) → mark the page filled → map it
//! (`UFFDIO_CONTINUE`) or wake its waiter. A thread that needs a busy page
//! spins briefly and then parks on a futex until the claim holder is done;
//! a claim is released (and waiters woken) when its holder finishes, fails
//! or panics.
//!
//! There is no per-page generation counter: nothing is ever decided on a
//! state observed before a claim was taken. A path that finds a filled
//! page missing from the page cache (`UFFDIO_CONTINUE` answers `EFAULT`)
//! claims it and checks again under the claim; only a page still missing
//! then — discarded behind the state's back — is filled, with zeros. Two
//! threads that saw the same `EFAULT` therefore fill it at most once,
//! which is what a generation would buy. Every discard through the state
//! ([`PageState::discard`]) claims the pages it resets, so it is ordered
//! with every fill.
//!
//! # Memory
//!
//! Two bits per page of the file ([`PageState::state_bytes`]): 64 KiB per
//! GiB of 4 KiB pages, plus one counter of parked threads. Attached
//! bitmaps are the caller's (they are KVM's, one bit per page).

use std::fmt;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::backing::{Backing, Claimed};
use crate::error::{Error, Result};
use crate::kvm::UserfaultBitmap;

/// Page state: never filled; the next fill writes the caller's data.
pub(crate) const UNFILLED: u32 = 0;
/// Page state: discarded; the next fill writes zeros.
pub(crate) const DISCARDED: u32 = 1;
/// Page state: filled; only mapped from now on.
pub(crate) const FILLED: u32 = 2;
/// Page state: claimed by one thread.
const BUSY: u32 = 3;

/// Pages per state word (two bits each).
const PER_WORD: u64 = 16;

/// How many KVM userfault bitmaps (memslots) one file can have attached.
const MAX_SLOTS: usize = 16;

/// What a discard leaves a page as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// The page reads as zeros from now on: its next fill writes zeros
    /// whatever data is given (what a balloon's `MADV_REMOVE` means).
    Zero,
    /// The page is restored from the snapshot again: its next fill writes
    /// the data the resolver is given.
    Restore,
}

/// A KVM userfault bitmap attached to the state: bit `i` stands for file
/// page `first_page + i`.
struct Slot {
    bitmap: Arc<UserfaultBitmap>,
    first_page: u64,
}

/// The shared page state of one backing file `B`. See the
/// [module documentation](self).
pub struct PageState<B> {
    backing: Arc<B>,
    page_size: usize,
    pages: u64,
    words: Box<[AtomicU32]>,
    /// Threads parked on some state word.
    parked: AtomicU32,
    slots: [OnceLock<Slot>; MAX_SLOTS],
    nslots: AtomicUsize,
    attach: Mutex<()>,
    key: FileKey,
}

/// The identity of a file: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
}

/// The files that have a page state now.
static FILES: Mutex<Vec<FileKey>> = Mutex::new(Vec::new());

impl<B: Backing> PageState<B> {
    /// The page state of `backing`, every page unfilled: the one object
    /// through which every range mapping the file, every stage-2 resolver
    /// and every populator fill its pages.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when the file already has a page state in this
    /// process (share that one: two states of one file would each fill its
    /// pages) or its size is not whole pages; the `fstat` errno.
    pub fn new(backing: Arc<B>) -> Result<Arc<PageState<B>>> {
        let stat = rustix::fs::fstat(backing.as_fd())
            .map_err(|e| Error::os("fstat", crate::error::rustix_errno(e)))?;
        let key = FileKey {
            dev: stat.st_dev,
            ino: stat.st_ino,
        };
        super::prepare_zeros();
        let page_size = backing.page_size();
        let size = backing.size();
        if page_size == 0 || !size.is_multiple_of(page_size as u64) {
            return Err(Error::invalid(
                "page state",
                format!("the file's size {size:#x} is not whole pages of {page_size:#x} bytes"),
            ));
        }
        let pages = size / page_size as u64;
        let nwords = usize::try_from(pages.div_ceil(PER_WORD))
            .map_err(|_| Error::invalid("page state", "the file is too large"))?;
        {
            let mut files = FILES.lock().unwrap_or_else(|p| p.into_inner());
            if files.contains(&key) {
                return Err(Error::invalid(
                    "page state",
                    "this file already has a page state; share it (one per file, so that no \
                     page is filled twice)",
                ));
            }
            files.push(key);
        }
        Ok(Arc::new(PageState {
            backing,
            page_size,
            pages,
            words: (0..nwords).map(|_| AtomicU32::new(0)).collect(),
            parked: AtomicU32::new(0),
            slots: std::array::from_fn(|_| OnceLock::new()),
            nslots: AtomicUsize::new(0),
            attach: Mutex::new(()),
            key,
        }))
    }
}

impl<B> Drop for PageState<B> {
    fn drop(&mut self) {
        let mut files = FILES.lock().unwrap_or_else(|p| p.into_inner());
        files.retain(|k| *k != self.key);
    }
}

impl<B> PageState<B> {
    /// The backing file.
    pub fn backing(&self) -> &Arc<B> {
        &self.backing
    }

    /// The size of the file's pages.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Number of pages of the file.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Bytes of resident state: two bits per page, rounded up to words.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.words)
    }

    /// True when page `page` (a file page index) is filled.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a page outside the file.
    pub fn is_filled(&self, page: u64) -> Result<bool> {
        self.check_pages("is_filled", page, 1)?;
        Ok(self.get(page) == FILLED)
    }

    /// Number of pages of `[offset, offset + len)` that are neither filled
    /// nor discarded: what a populator still has to write there (a
    /// snapshot; busy pages count as unfilled).
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for an unaligned, empty or out-of-range span.
    pub fn count_unfilled(&self, offset: u64, len: u64) -> Result<u64> {
        let (first, n) = self.span("count_unfilled", offset, len)?;
        Ok((first..first + n)
            .filter(|&p| !matches!(self.get(p), FILLED | DISCARDED))
            .count() as u64)
    }

    /// Number of filled pages (a snapshot; pages change while it counts).
    pub fn count_filled(&self) -> u64 {
        (0..self.pages).filter(|&p| self.get(p) == FILLED).count() as u64
    }

    fn word(&self, page: u64) -> (&AtomicU32, u32) {
        (
            &self.words[(page / PER_WORD) as usize],
            ((page % PER_WORD) * 2) as u32,
        )
    }

    fn get(&self, page: u64) -> u32 {
        let (w, shift) = self.word(page);
        (w.load(Ordering::Acquire) >> shift) & 3
    }

    pub(crate) fn check_pages(&self, op: &'static str, first: u64, n: u64) -> Result<()> {
        if first.checked_add(n).is_none_or(|end| end > self.pages) {
            return Err(Error::invalid(
                op,
                format!(
                    "pages {first}+{n} lie outside the file's {} pages",
                    self.pages
                ),
            ));
        }
        Ok(())
    }

    /// The page span of `[offset, offset + len)`.
    fn span(&self, op: &'static str, offset: u64, len: u64) -> Result<(u64, u64)> {
        let page = self.page_size as u64;
        if !offset.is_multiple_of(page) || !len.is_multiple_of(page) || len == 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "offset {offset:#x} and length {len:#x} must be non-empty multiples of the \
                     page size {page:#x}"
                ),
            ));
        }
        let (first, n) = (offset / page, len / page);
        self.check_pages(op, first, n)?;
        Ok((first, n))
    }

    /// Claims `page` if it is not filled and not busy; never waits.
    pub(crate) fn try_claim(&self, page: u64) -> Option<PageClaim<'_, B>> {
        let (w, shift) = self.word(page);
        let mut v = w.load(Ordering::Acquire);
        loop {
            let s = (v >> shift) & 3;
            if s == FILLED || s == BUSY {
                return None;
            }
            match self.mark_busy(w, v, shift, page) {
                Ok(claim) => return Some(claim),
                Err(now) => v = now,
            }
        }
    }

    /// Sets `page`'s state in word `w` (last seen as `v`) to busy, keeping
    /// what it was in the claim; `Err` with the word's new value when it
    /// changed meanwhile.
    #[inline(always)]
    fn mark_busy(
        &self,
        w: &AtomicU32,
        v: u32,
        shift: u32,
        page: u64,
    ) -> Result<PageClaim<'_, B>, u32> {
        w.compare_exchange_weak(v, v | (BUSY << shift), Ordering::AcqRel, Ordering::Acquire)
            .map(|_| PageClaim {
                state: self,
                page,
                prev: (v >> shift) & 3,
                done: false,
            })
    }

    /// Claims `page` unless it is filled, waiting while it is busy.
    pub(crate) fn claim_unfilled(&self, page: u64) -> Option<PageClaim<'_, B>> {
        self.claim(page, false)
    }

    /// Claims `page` whatever its state, waiting while it is busy.
    pub(crate) fn claim_any(&self, page: u64) -> PageClaim<'_, B> {
        match self.claim(page, true) {
            Some(c) => c,
            None => unreachable!("a claim of any state always succeeds"),
        }
    }

    fn claim(&self, page: u64, any: bool) -> Option<PageClaim<'_, B>> {
        let (w, shift) = self.word(page);
        let mut spins = 0u32;
        let mut v = w.load(Ordering::Acquire);
        loop {
            let s = (v >> shift) & 3;
            if s == BUSY {
                self.wait(w, v, &mut spins);
                v = w.load(Ordering::Acquire);
                continue;
            }
            if s == FILLED && !any {
                return None;
            }
            match self.mark_busy(w, v, shift, page) {
                Ok(claim) => return Some(claim),
                Err(now) => v = now,
            }
        }
    }

    /// Waits until `page` is not busy; returns its state then.
    pub(crate) fn wait_settled(&self, page: u64) -> u32 {
        let (w, shift) = self.word(page);
        let mut spins = 0u32;
        loop {
            let v = w.load(Ordering::Acquire);
            let s = (v >> shift) & 3;
            if s != BUSY {
                return s;
            }
            self.wait(w, v, &mut spins);
        }
    }

    /// One wait for word `w` to change from `seen`: a few spins, then a
    /// futex wait. The claim holder wakes parked threads when it releases.
    #[cold]
    fn wait(&self, w: &AtomicU32, seen: u32, spins: &mut u32) {
        if *spins < 32 {
            *spins += 1;
            std::hint::spin_loop();
            return;
        }
        self.parked.fetch_add(1, Ordering::SeqCst);
        if w.load(Ordering::SeqCst) == seen {
            // EAGAIN (the word changed), EINTR and spurious wake-ups all
            // end in a fresh look at the word.
            let _ =
                rustix::thread::futex::wait(w, rustix::thread::futex::Flags::PRIVATE, seen, None);
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }

    /// Ends a claim on `page`, leaving it as `to`, and wakes parked threads.
    fn release(&self, page: u64, to: u32) {
        let (w, shift) = self.word(page);
        // From BUSY (0b11) every state is reached by clearing bits.
        w.fetch_and(!((BUSY & !to) << shift), Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) != 0 {
            // FUTEX_WAKE's count is an `int`: `u32::MAX` would be -1 and
            // wake only one waiter.
            let _ = rustix::thread::futex::wake(
                w,
                rustix::thread::futex::Flags::PRIVATE,
                i32::MAX as u32,
            );
        }
    }

    /// The attached bitmaps.
    fn slots(&self) -> impl Iterator<Item = &Slot> {
        let n = self.nslots.load(Ordering::Acquire);
        self.slots[..n].iter().filter_map(OnceLock::get)
    }

    /// True when a KVM userfault bitmap is attached.
    pub(crate) fn has_bitmaps(&self) -> bool {
        self.nslots.load(Ordering::Acquire) != 0
    }

    /// Clears the bits of file pages `[first, first + n)` in every attached
    /// bitmap, a word at a time, with store-release.
    fn clear_bits(&self, first: u64, n: u64) {
        for slot in self.slots() {
            if let Some((bit, count)) = overlap(slot, first, n) {
                slot.bitmap.clear_range(bit, count);
            }
        }
    }

    /// Sets the bits of file pages `[first, first + n)` in every attached
    /// bitmap.
    fn set_bits(&self, first: u64, n: u64) {
        for slot in self.slots() {
            if let Some((bit, count)) = overlap(slot, first, n) {
                slot.bitmap.set_range(bit, count);
            }
        }
    }

    /// Clears the bits of file page `page` if, under a claim, it is
    /// filled: for a bit left set by an attach that raced with a fill.
    pub(crate) fn clear_bit_if_filled(&self, page: u64) {
        let claim = self.claim_any(page);
        if claim.prev == FILLED {
            self.clear_bits(page, 1);
        }
    }
}

/// The bits of `slot` that file pages `[first, first + n)` cover.
fn overlap(slot: &Slot, first: u64, n: u64) -> Option<(u64, u64)> {
    let lo = first.max(slot.first_page);
    let hi = (first + n).min(slot.first_page + slot.bitmap.pages());
    (lo < hi).then(|| (lo - slot.first_page, hi - lo))
}

impl<B: Backing> PageState<B> {
    /// Attaches the userfault bitmap of a memslot whose first page is at
    /// `file_offset` in the file; returns its slot number. Attaching the
    /// same bitmap at the same offset again returns the same slot.
    ///
    /// From then on every fill clears the page's bit (after the data is in
    /// the file, before the page is mapped or its waiter woken) and every
    /// discard sets it. On attaching, the bits are made to agree with the
    /// state: set for every page not filled, clear for every filled one.
    /// Attach before the vCPUs run.
    pub(crate) fn attach(&self, bitmap: &Arc<UserfaultBitmap>, file_offset: u64) -> Result<usize> {
        const OP: &str = "attach a userfault bitmap";
        if bitmap.page_size() != self.page_size as u64 {
            return Err(Error::invalid(
                OP,
                format!(
                    "the file's pages are {:#x} bytes, KVM userfault's {:#x}",
                    self.page_size,
                    bitmap.page_size()
                ),
            ));
        }
        let (first, n) = self.span(OP, file_offset, bitmap.memory_size())?;
        let _guard = self.attach.lock().unwrap_or_else(|p| p.into_inner());
        let n_now = self.nslots.load(Ordering::Acquire);
        for (i, s) in self.slots[..n_now].iter().enumerate() {
            if let Some(s) = s.get()
                && Arc::ptr_eq(&s.bitmap, bitmap)
            {
                if s.first_page == first {
                    return Ok(i);
                }
                return Err(Error::invalid(
                    OP,
                    "this bitmap is already attached at another offset",
                ));
            }
        }
        if n_now == MAX_SLOTS {
            return Err(Error::invalid(
                OP,
                format!("a file can have at most {MAX_SLOTS} userfault bitmaps"),
            ));
        }
        let slot = Slot {
            bitmap: bitmap.clone(),
            first_page: first,
        };
        if self.slots[n_now].set(slot).is_err() {
            unreachable!("slots are filled in order under the attach lock");
        }
        self.nslots.store(n_now + 1, Ordering::Release);
        for i in 0..n {
            if self.get(first + i) == FILLED {
                bitmap.clear(i);
            } else {
                bitmap.set(i);
            }
        }
        Ok(n_now)
    }

    /// True when `bitmap` is attached at `file_offset`: a look at the
    /// attached slots without the attach lock (slots are only ever added,
    /// each published with a store-release of the count).
    pub(crate) fn is_attached(&self, bitmap: &Arc<UserfaultBitmap>, file_offset: u64) -> bool {
        let ps = self.page_size as u64;
        file_offset.is_multiple_of(ps)
            && self
                .slots()
                .any(|s| Arc::ptr_eq(&s.bitmap, bitmap) && s.first_page == file_offset / ps)
    }

    /// Fills file page `page` with `data` (one page) unless it is filled —
    /// the populator's and the stage-2 resolver's path: the file only, no
    /// mapping. Waits while another thread holds the page.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a page outside the file or data that is not
    /// one page; the fill's errors (the page is left as it was).
    pub fn populate_page(&self, page: u64, data: &[u8]) -> Result<Resolution> {
        self.check_pages("populate", page, 1)?;
        check_len("populate", self.page_size, data.len())?;
        match self.claim_unfilled(page) {
            None => Ok(Resolution::AlreadyPresent),
            Some(claim) => claim.fill_and_finish(data),
        }
    }

    /// [`populate_page`](Self::populate_page) for the page at file offset
    /// `offset`.
    ///
    /// # Errors
    ///
    /// As [`populate_page`](Self::populate_page); `InvalidArgument` for an
    /// unaligned offset.
    pub fn populate(&self, offset: u64, data: &[u8]) -> Result<Resolution> {
        let (page, _) = self.span("populate", offset, self.page_size as u64)?;
        self.populate_page(page, data)
    }

    /// `pwrite(2)` of the unfilled pages of `[offset, offset + data.len())`:
    /// the chunked populate, a populator's background step. Claims every
    /// page of the span that is unfilled and not busy (never waiting),
    /// writes each run of claimed pages with one fill, clears their bits in
    /// every attached KVM userfault bitmap a word at a time and marks them
    /// filled. Pages filled or being filled by another path are skipped, so
    /// no page is written twice and a page written since its fill keeps
    /// what was written. Pages discarded with [`Discard::Zero`] are left
    /// discarded: they read zeros whenever they are next needed, and until
    /// then a balloon's pages stay free.
    ///
    /// Returns the runs this call wrote, as file byte ranges in ascending
    /// order: the pages a caller may now map (`UFFDIO_CONTINUE`) ahead of
    /// their faults.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for an unaligned, empty or out-of-range span, or
    /// one longer than [`MAX_WINDOW`](crate::resolve::MAX_WINDOW); the
    /// fill's errors (for a guest_memfd without `write()`: `Unsupported`),
    /// after which the pages not written yet are left as they were.
    pub fn populate_run(&self, offset: u64, data: &[u8]) -> Result<Vec<std::ops::Range<u64>>> {
        const OP: &str = "populate_run";
        let (first, n) = self.span(OP, offset, data.len() as u64)?;
        if data.len() > crate::resolve::MAX_WINDOW {
            return Err(Error::invalid(
                OP,
                format!(
                    "{:#x} bytes is more than a window of {:#x}",
                    data.len(),
                    crate::resolve::MAX_WINDOW
                ),
            ));
        }
        let ps = self.page_size;
        // Allocated before any claim is taken: a thread waiting for one of
        // these claims may hold what a fork of this process needs to
        // finish, while the fork holds the allocator's locks.
        let mut written = Vec::with_capacity(crate::resolve::MAX_RUNS.min(n as usize));
        let mut held = crate::resolve::HeldPages::claim_with(self, first, n, false);
        let mut runs = [(0, 0); crate::resolve::MAX_RUNS];
        let runs = held.runs_into(n, &mut runs);
        for &(a, b) in runs {
            let bytes = &data[a as usize * ps..b as usize * ps];
            self.fill_run(first + a, bytes, |k| held.zero(a + k))?;
            held.finish(a, b);
            written.push((first + a) * ps as u64..(first + b) * ps as u64);
        }
        Ok(written)
    }

    /// Declares `[offset, offset + len)` already in the file (an eagerly
    /// restored file): its pages become filled without being written, so
    /// every path only maps them, and their bitmap bits are cleared.
    /// Filled pages are left as they are; busy ones are waited for.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for an unaligned or out-of-range span.
    pub fn mark_filled(&self, offset: u64, len: u64) -> Result<()> {
        let (first, n) = self.span("mark_filled", offset, len)?;
        for page in first..first + n {
            if let Some(claim) = self.claim_unfilled(page) {
                claim.finish();
            }
        }
        Ok(())
    }

    /// Discards `[offset, offset + len)`: claims its pages (waiting for
    /// fills under way), punches them out of the file
    /// (`fallocate(PUNCH_HOLE | KEEP_SIZE)`), sets their bits in every
    /// attached bitmap, and leaves them as `mode` says — zeros on their
    /// next fault ([`Discard::Zero`]), or the snapshot again
    /// ([`Discard::Restore`]).
    ///
    /// Call it for a `UFFD_EVENT_REMOVE` (a balloon's `MADV_REMOVE` already
    /// punched the file; punching again is harmless) and instead of
    /// punching the file directly. A guest_memfd page whose bit stayed
    /// clear after a punch would take the MINOR path and fail `EFAULT`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for an unaligned or out-of-range span; the
    /// `fallocate` errno (the pages are then left as they were).
    pub fn discard(&self, offset: u64, len: u64, mode: Discard) -> Result<()> {
        let (first, n) = self.span("discard", offset, len)?;
        // Ascending order: no other path waits for a page while it holds
        // another, so claims taken this way cannot deadlock.
        let claims: Vec<PageClaim<'_, B>> = (first..first + n).map(|p| self.claim_any(p)).collect();
        self.backing.punch_hole(offset, len, Claimed::new())?;
        self.set_bits(first, n);
        let to = match mode {
            Discard::Zero => DISCARDED,
            Discard::Restore => UNFILLED,
        };
        for mut c in claims {
            c.done = true;
            self.release(c.page, to);
        }
        Ok(())
    }

    /// Fills pages `[first, first + n)`, which the caller has claimed, from
    /// `data` (`n` pages; zeros for the pages `is_zero(i)` names, `i` from
    /// 0), in as few writes as the runs of equal kinds allow.
    pub(crate) fn fill_run(
        &self,
        first: u64,
        data: &[u8],
        is_zero: impl Fn(u64) -> bool,
    ) -> Result<()> {
        let page = self.page_size;
        let n = (data.len() / page) as u64;
        let mut i = 0;
        while i < n {
            let z = is_zero(i);
            let mut j = i + 1;
            while j < n && is_zero(j) == z {
                j += 1;
            }
            let offset = (first + i) * page as u64;
            let bytes = &data[i as usize * page..j as usize * page];
            let result = if z {
                let zeros = super::zeros(bytes.len());
                self.backing.fill(offset, &zeros, Claimed::new())
            } else {
                self.backing.fill(offset, bytes, Claimed::new())
            };
            match result {
                Ok(()) => {}
                // A backing that refuses to overwrite a page (guest_memfd
                // without a direct map) already has it.
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(e),
            }
            i = j;
        }
        Ok(())
    }
}

impl<B> PageState<B> {
    /// Marks claimed pages `[first, first + n)` filled: clears their bits
    /// (a word at a time), then their states, waking parked threads.
    pub(crate) fn finish_run(&self, first: u64, n: u64) {
        self.clear_bits(first, n);
        for p in first..first + n {
            self.release(p, FILLED);
        }
    }

    /// Leaves claimed page `page` as it was (`zeroed`: discarded).
    pub(crate) fn abandon(&self, page: u64, zeroed: bool) {
        self.release(page, if zeroed { DISCARDED } else { UNFILLED });
    }
}

/// Data that is not one page. On every resolution's path: the test is
/// inlined, the error built out of line.
#[inline(always)]
pub(crate) fn check_len(op: &'static str, page: usize, len: usize) -> Result<()> {
    if len != page {
        return Err(wrong_len(op, page, len));
    }
    Ok(())
}

#[cold]
#[inline(never)]
fn wrong_len(op: &'static str, page: usize, len: usize) -> Error {
    Error::invalid(
        op,
        format!("the page is {page:#x} bytes, the data {len:#x}"),
    )
}

/// One thread's claim on one page. Dropped without
/// [`finish`](PageClaim::finish), it leaves the page as it was and wakes
/// parked threads — also when the fill panicked.
pub(crate) struct PageClaim<'s, B> {
    state: &'s PageState<B>,
    page: u64,
    prev: u32,
    done: bool,
}

impl<B> PageClaim<'_, B> {
    /// Keeps the claim past this value: the caller releases it with
    /// [`PageState::finish_run`] or [`PageState::abandon`]. Returns whether
    /// the page was discarded.
    pub(crate) fn hold(mut self) -> bool {
        self.done = true;
        self.prev == DISCARDED
    }

    /// The state the page had when it was claimed.
    pub(crate) fn prev(&self) -> u32 {
        self.prev
    }

    /// The data this claim's fill writes: zeros for a discarded page.
    pub(crate) fn is_zero_fill(&self) -> bool {
        self.prev == DISCARDED
    }

    /// The page is in the file: clear its bits, mark it filled, wake.
    pub(crate) fn finish(mut self) {
        self.done = true;
        self.state.clear_bits(self.page, 1);
        self.state.release(self.page, FILLED);
    }
}

impl<B: Backing> PageClaim<'_, B> {
    /// Fills the page (zeros when it was discarded).
    pub(crate) fn fill(&self, data: &[u8]) -> Result<()> {
        let zero = self.is_zero_fill();
        self.state.fill_run(self.page, data, |_| zero)
    }

    /// Fills the page with zeros.
    pub(crate) fn fill_zeros(&self) -> Result<()> {
        let zeros = super::zeros(self.state.page_size);
        self.state.fill_run(self.page, &zeros, |_| false)
    }

    /// Fills the page and finishes the claim.
    fn fill_and_finish(self, data: &[u8]) -> Result<Resolution> {
        self.fill(data)?;
        let zero = self.is_zero_fill();
        self.finish();
        Ok(if zero {
            Resolution::Zeroed
        } else {
            Resolution::Filled
        })
    }
}

impl<B> Drop for PageClaim<'_, B> {
    fn drop(&mut self) {
        if !self.done {
            self.state.release(self.page, self.prev);
        }
    }
}

impl<B> fmt::Debug for PageState<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageState")
            .field("pages", &self.pages)
            .field("page_size", &self.page_size)
            .field("bitmaps", &self.nslots.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

use super::Resolution;
