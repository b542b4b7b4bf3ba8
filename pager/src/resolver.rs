//! Resolution: the one module that keeps per-page state and issues the
//! resolution ioctls.
//!
//! Everything else in the crate (handler threads, the populator, event
//! handling) calls the few methods of [`Resolver`]: [`fault`](Resolver::fault),
//! [`prefetch_run`](Resolver::prefetch_run), [`remove`](Resolver::remove),
//! [`unmap`](Resolver::unmap), [`remap`](Resolver::remap),
//! [`fork`](Resolver::fork) and [`finish`](Resolver::finish). Replacing the
//! state kept here by another implementation of the same contract changes
//! nothing outside this file.
//!
//! # Per-page state
//!
//! One byte per page, indexed by the page's position in the concatenated
//! ranges (stable across remaps, which only move addresses):
//!
//! | state | meaning |
//! |---|---|
//! | `PENDING` | never resolved: its contents come from the source |
//! | `CLAIMED` | a thread is resolving it right now |
//! | `FILLED` | resolved (copied, or a zero page mapped) |
//! | `ZERO` | dropped by a REMOVE event: the next fault maps zeros |
//! | `GONE` | unmapped: never resolved again |
//!
//! A page moves `PENDING`/`ZERO` → `CLAIMED` by compare-and-swap, so one
//! thread resolves it; on `EAGAIN` the claim is given back. A REMOVE waits
//! for claimed pages to settle before it marks them `ZERO`, so no fill from
//! the source lands after the removal was handled. On anonymous memory the
//! kernel itself never overwrites a present page (`EEXIST`), so a guest's
//! writes survive any race; the state keeps removed pages zero and the
//! populator from working twice.
//!
//! One race is beyond what a handler can see: a fault read *before* a
//! REMOVE (by another handler thread) whose `UFFDIO_COPY` lands after the
//! kernel dropped the pages leaves that one page holding snapshot data
//! inside the removed range. The kernel reports no order between the two,
//! and a handler cannot drop pages in the VMM's address space.

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LockResult, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use userfault::uffd::{CopyMode, Registration, Uffd, ZeropageMode};
use userfault::{Errno, Error as UffdError};

use crate::error::Error;
use crate::source::{PageSource, all_zero};
use crate::stats::Counters;
use crate::workingset::WorkingSet;

const PENDING: u8 = 0;
const CLAIMED: u8 = 1;
const FILLED: u8 = 2;
const ZERO: u8 = 3;
const GONE: u8 = 4;

/// Spans reserved beyond the initial ranges, for remap splits.
const SPAN_ROOM: usize = 256;

/// The unit of working-set entries.
pub(crate) const RECORD_PAGE: u64 = 4096;

/// What became of a resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Resolved (or found resolved, and woken).
    Done,
    /// The kernel answered `EAGAIN`: read the pending events, then retry.
    Again,
    /// The address is not (or no longer) in a served range.
    Gone,
    /// The process whose memory this is has exited (`ESRCH`).
    PeerGone,
}

/// A registered range as served: where it is now and which pages of the
/// state and of the source it covers.
#[derive(Debug, Clone, Copy)]
struct Span {
    addr: usize,
    len: usize,
    page: usize,
    reg: Registration,
    /// Index of the span's first page in the state.
    first: usize,
    /// Source offset of the span's first byte.
    offset: u64,
    /// `UFFDIO_ZEROPAGE` is offered (not on hugetlbfs).
    zeropage: bool,
    /// `page.trailing_zeros()` (the page size is a power of two).
    shift: u32,
}

impl Span {
    fn pages(&self) -> usize {
        self.len / self.page
    }
    fn end(&self) -> usize {
        self.addr + self.len
    }
}

/// Per-thread buffers, sized up front so that resolving allocates nothing.
///
/// A handler must not allocate while a fork of the served process may be
/// waiting for its FORK event to be read: glibc's `fork()` holds the malloc
/// locks meanwhile, so in a process that serves its own memory an
/// allocation there would deadlock.
#[derive(Debug)]
pub(crate) struct Scratch {
    buf: Vec<u8>,
    claimed: Vec<(usize, u8)>,
    /// The span this thread found last, and the spans' generation then
    /// ([`Spans`]): the next lookup in the same span takes no lock.
    span: Option<(u64, Span)>,
}

/// The spans, behind a lock that only remaps take for writing, and a
/// generation that every write advances: a thread that cached a span at
/// the current generation may use it without the lock (a lookup is a
/// snapshot either way: a remap can follow it at once).
#[derive(Debug)]
struct Spans {
    lock: RwLock<Vec<Span>>,
    generation: AtomicU64,
}

impl Spans {
    fn new(spans: Vec<Span>) -> Spans {
        Spans {
            lock: RwLock::new(spans),
            generation: AtomicU64::new(0),
        }
    }

    fn read(&self) -> LockResult<RwLockReadGuard<'_, Vec<Span>>> {
        self.lock.read()
    }

    /// The spans for writing; the generation advances when the guard is
    /// dropped, before the lock is released.
    fn write(&self) -> LockResult<SpansWrite<'_>> {
        let wrap = |guard| SpansWrite {
            guard,
            generation: &self.generation,
        };
        self.lock
            .write()
            .map(wrap)
            .map_err(|e| std::sync::PoisonError::new(wrap(e.into_inner())))
    }
}

/// Write access to the spans ([`Spans::write`]).
struct SpansWrite<'a> {
    guard: RwLockWriteGuard<'a, Vec<Span>>,
    generation: &'a AtomicU64,
}

impl std::ops::Deref for SpansWrite<'_> {
    type Target = Vec<Span>;
    fn deref(&self) -> &Vec<Span> {
        &self.guard
    }
}

impl std::ops::DerefMut for SpansWrite<'_> {
    fn deref_mut(&mut self) -> &mut Vec<Span> {
        &mut self.guard
    }
}

impl Drop for SpansWrite<'_> {
    fn drop(&mut self) {
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// The order pages were first needed, from the fault stream.
#[derive(Debug)]
struct Recorder {
    seen: Box<[AtomicU64]>,
    order: Mutex<Vec<u64>>,
}

impl Recorder {
    fn note(&self, file_page: u64) {
        let (word, bit) = ((file_page / 64) as usize, 1u64 << (file_page % 64));
        let Some(w) = self.seen.get(word) else { return };
        if w.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            self.order
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(file_page);
        }
    }
}

/// A range to serve: a registration and the source offset of its first
/// byte.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    reg: Registration,
    offset: u64,
    page_size: usize,
}

impl Range {
    /// Serves `reg` from the source at `offset`, in base pages.
    pub fn new(reg: Registration, offset: u64) -> Range {
        Range {
            reg,
            offset,
            page_size: rustix::param::page_size(),
        }
    }

    /// Serves `reg` in pages of `page_size` bytes: the huge page size of a
    /// hugetlbfs range, which must be resolved a whole huge page at a time.
    pub fn with_page_size(reg: Registration, offset: u64, page_size: usize) -> Range {
        Range {
            reg,
            offset,
            page_size,
        }
    }

    /// The registration.
    pub fn registration(&self) -> &Registration {
        &self.reg
    }

    /// The source offset of the range's first byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The page size it is served in.
    pub fn page_size(&self) -> usize {
        self.page_size
    }
}

/// Per-page state over a set of ranges of one userfaultfd, and the
/// resolution ioctls that change it.
#[derive(Debug)]
pub(crate) struct Resolver {
    uffd: Arc<Uffd>,
    source: Arc<dyn PageSource>,
    spans: Spans,
    states: Box<[AtomicU8]>,
    remaining: AtomicUsize,
    chunk: usize,
    counters: Arc<Counters>,
    recorder: Option<Recorder>,
    zeros: Vec<u8>,
    /// One bit per page of the state: in the working set being replayed
    /// ([`predict`](Self::predict)).
    predicted: Option<Box<[u64]>>,
}

impl Resolver {
    /// State for `ranges`, all `PENDING`.
    pub fn new(
        uffd: Arc<Uffd>,
        ranges: &[Range],
        source: Arc<dyn PageSource>,
        chunk: usize,
        record: bool,
        counters: Arc<Counters>,
    ) -> Result<Resolver, Error> {
        let mut spans = Vec::with_capacity(ranges.len());
        let mut first = 0;
        let mut largest = 0;
        for r in ranges {
            let reg = r.reg;
            if r.page_size == 0 || !r.page_size.is_power_of_two() {
                return Err(Error::Config(format!(
                    "page size {} is not a power of two",
                    r.page_size
                )));
            }
            if reg.uffd_id() != uffd.id() {
                return Err(Error::Config(format!(
                    "the range {:#x}+{:#x} is registered with another userfaultfd",
                    reg.start(),
                    reg.len()
                )));
            }
            if reg.start() % r.page_size != 0 || reg.len() % r.page_size != 0 {
                return Err(Error::Config(format!(
                    "the range {:#x}+{:#x} is not aligned to its page size {:#x}",
                    reg.start(),
                    reg.len(),
                    r.page_size
                )));
            }
            let end = r.offset.checked_add(reg.len() as u64);
            if end.is_none_or(|end| end > source.len()) {
                return Err(Error::Config(format!(
                    "the range {:#x}+{:#x} at source offset {:#x} extends past the source's {} bytes",
                    reg.start(),
                    reg.len(),
                    r.offset,
                    source.len()
                )));
            }
            spans.push(Span {
                addr: reg.start(),
                len: reg.len(),
                page: r.page_size,
                reg,
                first,
                offset: r.offset,
                zeropage: reg.ioctls().contains(userfault::uffd::Ioctls::ZEROPAGE),
                shift: r.page_size.trailing_zeros(),
            });
            first += reg.len() / r.page_size;
            largest = largest.max(r.page_size);
        }
        spans.sort_by_key(|s| s.addr);
        for pair in spans.windows(2) {
            if pair[0].end() > pair[1].addr {
                return Err(Error::Config(format!(
                    "the ranges at {:#x} and {:#x} overlap",
                    pair[0].addr, pair[1].addr
                )));
            }
        }
        let recorder = record.then(|| Recorder {
            seen: (0..source.len().div_ceil(RECORD_PAGE * 64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            // Sized for every page, so that recording never allocates.
            order: Mutex::new(Vec::with_capacity(
                (source.len() / RECORD_PAGE) as usize + 1,
            )),
        });
        // Room for the splits remaps make, so that following one does not
        // allocate.
        spans.reserve(SPAN_ROOM);
        Ok(Resolver {
            uffd,
            source,
            spans: Spans::new(spans),
            states: (0..first).map(|_| AtomicU8::new(PENDING)).collect(),
            remaining: AtomicUsize::new(first),
            chunk: chunk.max(1),
            counters,
            recorder,
            zeros: vec![0; largest],
            predicted: None,
        })
    }

    /// Buffers for one thread: a chunk of the largest page size.
    pub fn scratch(&self) -> Scratch {
        self.scratch_for(self.chunk)
    }

    /// Buffers for one thread resolving up to `bytes` at once (at least a
    /// chunk; rounded up to the largest page size).
    pub fn scratch_for(&self, bytes: usize) -> Scratch {
        let largest = self.zeros.len().max(1);
        let bytes = bytes.max(self.chunk).max(largest).div_ceil(largest) * largest;
        Scratch {
            buf: vec![0; bytes],
            claimed: Vec::with_capacity(bytes / rustix::param::page_size() + 1),
            span: None,
        }
    }

    /// Pages served, over every range.
    pub fn total(&self) -> usize {
        self.states.len()
    }

    /// Pages never resolved yet.
    pub fn remaining(&self) -> usize {
        self.remaining.load(Ordering::Acquire)
    }

    /// The userfaultfd.
    pub fn uffd(&self) -> &Arc<Uffd> {
        &self.uffd
    }

    /// True when page `index` still needs its contents.
    pub fn is_pending(&self, index: usize) -> bool {
        self.states
            .get(index)
            .is_some_and(|s| s.load(Ordering::Relaxed) == PENDING)
    }

    /// The state index of the page holding source byte `offset`.
    pub fn index_of_offset(&self, offset: u64) -> Option<usize> {
        let spans = self.spans.read().unwrap_or_else(|e| e.into_inner());
        spans.iter().find_map(|s| {
            let rel = offset.checked_sub(s.offset)?;
            (rel < s.len as u64).then(|| s.first + (rel / s.page as u64) as usize)
        })
    }

    /// The pages recorded so far, in the order first needed.
    pub fn recorded(&self) -> Option<WorkingSet> {
        let r = self.recorder.as_ref()?;
        let order = r.order.lock().unwrap_or_else(|e| e.into_inner()).clone();
        WorkingSet::from_pages(RECORD_PAGE as u32, order).ok()
    }

    /// The span holding `addr`: the one `cache` holds when it is still
    /// current and holds `addr`, else looked up under the lock (and
    /// cached).
    #[inline]
    fn span_of_addr<'c>(
        &self,
        addr: usize,
        cache: &'c mut Option<(u64, Span)>,
    ) -> Option<&'c Span> {
        let generation = self.spans.generation.load(Ordering::Acquire);
        let hit =
            matches!(cache, Some((g, s)) if *g == generation && s.addr <= addr && addr < s.end());
        if !hit {
            self.span_of_addr_locked(addr, cache);
        }
        cache.as_ref().map(|(_, s)| s)
    }

    /// Looks `addr` up under the lock and caches its span (or nothing).
    #[inline(never)]
    fn span_of_addr_locked(&self, addr: usize, cache: &mut Option<(u64, Span)>) {
        let spans = self.spans.read().unwrap_or_else(|e| e.into_inner());
        // Read under the lock: a remap advances it before releasing its
        // write lock, so this generation is the one of what is read here.
        let generation = self.spans.generation.load(Ordering::Acquire);
        let i = spans.partition_point(|s| s.end() <= addr);
        *cache = spans
            .get(i)
            .filter(|s| s.addr <= addr)
            .map(|&s| (generation, s));
    }

    fn span_of_index(&self, index: usize) -> Option<Span> {
        let spans = self.spans.read().unwrap_or_else(|e| e.into_inner());
        spans
            .iter()
            .find(|s| (s.first..s.first + s.pages()).contains(&index))
            .copied()
    }

    /// The aligned chunk of `span`'s pages around local page `p`.
    #[inline]
    fn window(&self, span: &Span, p: usize) -> (usize, usize) {
        let per = (self.chunk >> span.shift).max(1);
        if per == 1 {
            return (p, p + 1);
        }
        let lo = p - p % per;
        (lo, (lo + per).min(span.pages()))
    }

    /// Resolves a demand fault at `addr` together with the unresolved pages
    /// of the aligned chunk around it, and makes sure the faulting thread is
    /// woken.
    pub fn fault(&self, addr: usize, scratch: &mut Scratch) -> Result<Outcome, Error> {
        let Some(&span) = self.span_of_addr(addr, &mut scratch.span) else {
            return Ok(Outcome::Gone);
        };
        let p = (addr - span.addr) >> span.shift;
        if let Some(rec) = &self.recorder {
            rec.note((span.offset + (p * span.page) as u64) / RECORD_PAGE);
        }
        let index = span.first + p;
        let unpredicted = self
            .predicted
            .as_ref()
            .is_some_and(|bits| bits[index / 64] & (1 << (index % 64)) == 0);
        // A fault outside the working set being replayed is one the
        // recording did not foresee: its neighbours are no likelier to be
        // needed than any other page, so only the page itself is resolved.
        let (lo, hi) = if unpredicted {
            (p, p + 1)
        } else {
            self.window(&span, p)
        };
        self.resolve_window(&span, lo, hi, Some(p), scratch)
    }

    /// Marks the pages of `ws` as the working set being replayed: a fault
    /// on any other page resolves that page alone, not its chunk.
    pub fn predict(&mut self, ws: &WorkingSet) {
        let mut bits = vec![0u64; self.states.len().div_ceil(64)].into_boxed_slice();
        for &p in ws.pages() {
            if let Some(i) = p
                .checked_mul(u64::from(ws.page_size()))
                .and_then(|off| self.index_of_offset(off))
            {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        self.predicted = Some(bits);
    }

    /// Resolves the unresolved pages among `pages` consecutive pages from
    /// `index` (clipped to its range and to `scratch`'s buffer) with one
    /// source read and one `UFFDIO_COPY` per stretch of data pages:
    /// background work, in extents larger than a chunk. Returns the
    /// outcome and how many pages the extent covered (at least 1), so
    /// that a caller walking an extent list can go on from there.
    pub fn prefetch_run(
        &self,
        index: usize,
        pages: usize,
        scratch: &mut Scratch,
    ) -> (Result<Outcome, Error>, usize) {
        let Some(span) = self.span_of_index(index) else {
            return (Ok(Outcome::Gone), 1);
        };
        let p = index - span.first;
        let room = (scratch.buf.len() / span.page).max(1);
        let hi = (p + pages.clamp(1, room)).min(span.pages());
        (self.resolve_window(&span, p, hi, None, scratch), hi - p)
    }

    fn resolve_window(
        &self,
        span: &Span,
        lo: usize,
        hi: usize,
        fault: Option<usize>,
        scratch: &mut Scratch,
    ) -> Result<Outcome, Error> {
        if let Some(f) = fault
            && lo == f
            && hi == f + 1
        {
            return self.resolve_one(span, f, scratch);
        }
        scratch.claimed.clear();
        for p in lo..hi {
            let state = &self.states[span.first + p];
            let mut v = state.load(Ordering::Acquire);
            // Neighbours are claimed only while pending; a removed page is
            // mapped (as zeros) only when it is the one faulting.
            while v == PENDING || (v == ZERO && fault == Some(p)) {
                match state.compare_exchange_weak(v, CLAIMED, Ordering::Acquire, Ordering::Acquire)
                {
                    Ok(_) => {
                        scratch.claimed.push((p, v));
                        break;
                    }
                    Err(now) => v = now,
                }
            }
        }
        let mut claimed = std::mem::take(&mut scratch.claimed);
        // The faulting page goes first, on its own: its copy wakes the
        // faulting thread, which runs on while the rest of the chunk is
        // filled (the pages after it first, where it most likely goes next).
        let first = fault.and_then(|f| claimed.iter().position(|c| c.0 == f));
        if let Some(k) = first.filter(|&k| k > 0) {
            claimed.rotate_left(k);
        }
        let mut outcome = Ok(Outcome::Done);
        let mut i = 0;
        while i < claimed.len() {
            let start = i;
            i += 1;
            while i < claimed.len()
                && !(start == 0 && first.is_some())
                && claimed[i].0 == claimed[i - 1].0 + 1
            {
                i += 1;
            }
            match self.fill_run(span, &claimed[start..i], fault.is_some(), &mut scratch.buf) {
                Ok(Outcome::Done) => {}
                other => {
                    // The run gave back its own claims; give back the rest.
                    self.release(span, &claimed[i..]);
                    outcome = other;
                    break;
                }
            }
        }
        let ours = first.is_some();
        claimed.clear();
        scratch.claimed = claimed;
        match (outcome, fault) {
            (Ok(Outcome::Done), Some(f)) if !ours => self.settle_fault(span, f, scratch),
            (outcome, _) => outcome,
        }
    }

    /// [`resolve_window`](Self::resolve_window) of the faulting page `p`
    /// alone (per-page mode, and faults outside a replayed working set):
    /// the same claim, without building runs.
    #[inline]
    fn resolve_one(&self, span: &Span, p: usize, scratch: &mut Scratch) -> Result<Outcome, Error> {
        let state = &self.states[span.first + p];
        let mut v = state.load(Ordering::Acquire);
        while v == PENDING || v == ZERO {
            match state.compare_exchange_weak(v, CLAIMED, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return self.fill_run(span, &[(p, v)], true, &mut scratch.buf),
                Err(now) => v = now,
            }
        }
        self.settle_fault(span, p, scratch)
    }

    /// A fault on a page this thread did not claim: wait for its resolver,
    /// then wake the faulting thread (or map zeros if the page is absent).
    fn settle_fault(&self, span: &Span, p: usize, scratch: &mut Scratch) -> Result<Outcome, Error> {
        let state = &self.states[span.first + p];
        let addr = span.addr + p * span.page;
        let mut spins = 0u32;
        loop {
            match state.load(Ordering::Acquire) {
                CLAIMED => {
                    spins += 1;
                    if spins < 64 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
                PENDING | ZERO => return self.resolve_window(span, p, p + 1, Some(p), scratch),
                GONE => {
                    let _ = self.uffd.wake(&span.reg, addr, span.page);
                    return Ok(Outcome::Done);
                }
                _ => {
                    // Normally present (another thread's resolution raced
                    // this fault): EEXIST, and the thread is woken. Absent
                    // means it was dropped without a REMOVE event: zeros.
                    let r = if span.zeropage {
                        self.uffd.zeropage_or_wake(
                            &span.reg,
                            addr,
                            span.page,
                            ZeropageMode::empty(),
                        )
                    } else {
                        self.uffd.copy_or_wake(
                            &span.reg,
                            addr,
                            &self.zeros[..span.page],
                            CopyMode::empty(),
                        )
                    };
                    return match r {
                        Ok(done) => {
                            if done.was_present() {
                                Counters::add(&self.counters.already_present, 1);
                            } else {
                                Counters::add(&self.counters.zero_pages, 1);
                            }
                            Ok(Outcome::Done)
                        }
                        Err(e) => classify(e),
                    };
                }
            }
        }
    }

    /// Resolves a run of consecutive claimed pages: reads the source once,
    /// then one `UFFDIO_ZEROPAGE` per stretch of zero pages and one
    /// `UFFDIO_COPY` per stretch of data pages.
    #[inline(always)]
    fn fill_run(
        &self,
        span: &Span,
        run: &[(usize, u8)],
        demand: bool,
        buf: &mut Vec<u8>,
    ) -> Result<Outcome, Error> {
        let ps = span.page;
        let n = run.len();
        let bytes = n * ps;
        let offset = span.offset + (run[0].0 * ps) as u64;
        let removed = run.iter().all(|c| c.1 == ZERO);
        let known_zero = removed || self.source.is_zero(offset, bytes as u64);
        if buf.len() < bytes {
            buf.resize(bytes, 0);
        }
        let data = &mut buf[..bytes];
        if known_zero {
            if !span.zeropage {
                data.fill(0);
            }
        } else {
            if let Err(e) = self.source.read_at(offset, data) {
                self.release(span, run);
                return Err(Error::Source(e));
            }
            for (k, c) in run.iter().enumerate() {
                if c.1 == ZERO {
                    data[k * ps..(k + 1) * ps].fill(0);
                }
            }
        }
        let is_zero = |k: usize| known_zero || all_zero(&data[k * ps..(k + 1) * ps]);
        let mut k = 0;
        while k < n {
            let zero = is_zero(k);
            let mut e = k + 1;
            while e < n && is_zero(e) == zero {
                e += 1;
            }
            let src = (!(zero && span.zeropage)).then(|| &data[k * ps..e * ps]);
            let (done, outcome) = self.place(span, &run[k..e], src, demand);
            if !matches!(outcome, Ok(Outcome::Done)) {
                self.release(span, &run[k + done..]);
                return outcome;
            }
            k = e;
        }
        Ok(Outcome::Done)
    }

    /// Maps `run` (consecutive claimed pages) with `UFFDIO_COPY` of `src`,
    /// or `UFFDIO_ZEROPAGE` when `src` is `None`, waking its faulting
    /// threads; returns how many pages were settled and the outcome.
    #[inline(always)]
    fn place(
        &self,
        span: &Span,
        run: &[(usize, u8)],
        src: Option<&[u8]>,
        demand: bool,
    ) -> (usize, Result<Outcome, Error>) {
        let ps = span.page;
        let mut at = 0;
        while at < run.len() {
            let addr = span.addr + run[at].0 * ps;
            let len = (run.len() - at) * ps;
            let r = match src {
                Some(src) => self
                    .uffd
                    .copy(&span.reg, addr, &src[at * ps..], CopyMode::empty()),
                None => self
                    .uffd
                    .zeropage(&span.reg, addr, len, ZeropageMode::empty()),
            };
            match r {
                Ok(_) => {
                    self.settle(span, &run[at..], src.is_none(), demand);
                    at = run.len();
                }
                Err(UffdError::Partial { done, .. }) => {
                    // The kernel stopped part-way (and woke what it did);
                    // the next call says why.
                    let d = ((done as usize) / ps).max(1).min(run.len() - at);
                    self.settle(span, &run[at..at + d], src.is_none(), demand);
                    at += d;
                }
                Err(e) if e.is_exists() => {
                    // Present already: never overwritten. Wake its waiters.
                    let _ = self.uffd.wake(&span.reg, addr, ps);
                    Counters::add(&self.counters.already_present, 1);
                    self.mark(span, &run[at..at + 1], FILLED);
                    at += 1;
                }
                Err(e) => {
                    let outcome = classify(e);
                    if matches!(outcome, Ok(Outcome::Gone)) {
                        // No longer registered (unmapped, or unregistered):
                        // never to be resolved again.
                        self.mark(span, &run[at..], GONE);
                        return (run.len(), outcome);
                    }
                    return (at, outcome);
                }
            }
        }
        (run.len(), Ok(Outcome::Done))
    }

    /// Marks resolved pages `FILLED` and counts them.
    fn settle(&self, span: &Span, run: &[(usize, u8)], zero: bool, demand: bool) {
        let n = run.len() as u64;
        let c = &self.counters;
        Counters::add(
            if demand {
                &c.demand_pages
            } else {
                &c.prefetch_pages
            },
            n,
        );
        if zero {
            Counters::add(&c.zero_pages, n);
        } else {
            Counters::add(&c.copied_bytes, n * span.page as u64);
        }
        self.mark(span, run, FILLED);
    }

    fn mark(&self, span: &Span, run: &[(usize, u8)], to: u8) {
        for &(p, was) in run {
            self.states[span.first + p].store(to, Ordering::Release);
            if was == PENDING {
                self.remaining.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Gives claims back to the state they were taken from.
    fn release(&self, span: &Span, run: &[(usize, u8)]) {
        for &(p, was) in run {
            self.states[span.first + p].store(was, Ordering::Release);
        }
    }

    /// Sets every page of `[start, end)` with `to`, waiting out claims;
    /// returns how many pages changed.
    fn set_range(&self, start: usize, end: usize, to: u8) -> u64 {
        let spans = self.spans.read().unwrap_or_else(|e| e.into_inner());
        let mut changed = 0;
        for s in spans.iter().filter(|s| s.addr < end && start < s.end()) {
            let lo = (start.max(s.addr) - s.addr) / s.page;
            let hi = (end.min(s.end()) - s.addr).div_ceil(s.page);
            for p in lo..hi {
                let state = &self.states[s.first + p];
                loop {
                    let v = state.load(Ordering::Acquire);
                    if v == CLAIMED {
                        std::thread::yield_now();
                        continue;
                    }
                    if v == to || v == GONE {
                        break;
                    }
                    if state
                        .compare_exchange(v, to, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        if v == PENDING {
                            self.remaining.fetch_sub(1, Ordering::AcqRel);
                        }
                        changed += 1;
                        break;
                    }
                }
            }
        }
        changed
    }

    /// `UFFD_EVENT_REMOVE`: the pages of `[start, end)` were dropped; the
    /// next fault on each maps zeros, and the populator leaves them unbacked.
    pub fn remove(&self, start: usize, end: usize) {
        let n = self.set_range(start, end, ZERO);
        Counters::add(&self.counters.removed_pages, n);
    }

    /// `UFFD_EVENT_UNMAP`: the pages of `[start, end)` are gone.
    pub fn unmap(&self, start: usize, end: usize) {
        let n = self.set_range(start, end, GONE);
        Counters::add(&self.counters.unmapped_pages, n);
    }

    /// `UFFD_EVENT_REMAP`: `[from, from + len)` now lives at `to`; its pages
    /// keep their state.
    pub fn remap(&self, from: usize, to: usize, len: usize) -> Result<(), Error> {
        let mut spans = self.spans.write().unwrap_or_else(|e| e.into_inner());
        let end = from + len;
        // In place, within the capacity reserved at construction (a span
        // splits into at most three pieces).
        let mut i = 0;
        while i < spans.len() {
            let s = spans[i];
            if s.end() <= from || end <= s.addr {
                i += 1;
                continue;
            }
            let lo = s.addr.max(from);
            let hi = s.end().min(end);
            let piece = |a: usize, b: usize| Span {
                addr: a,
                len: b - a,
                first: s.first + (a - s.addr) / s.page,
                offset: s.offset + (a - s.addr) as u64,
                ..s
            };
            let mut moved = piece(lo, hi);
            moved.addr = lo - from + to;
            // SAFETY: the kernel moved this registration with the pages:
            // the range at `moved.addr` is already registered with this
            // userfaultfd in the same mode, so registering it again changes
            // nothing in the kernel and only returns its Registration. The
            // pages are the same ones the caller registered, under the
            // same contract (no Rust references into them).
            moved.reg = unsafe { self.uffd.register(moved.addr, moved.len, s.reg.mode()) }?;
            spans[i] = moved;
            i += 1;
            if s.addr < lo {
                spans.insert(i, piece(s.addr, lo));
                i += 1;
            }
            if hi < s.end() {
                spans.insert(i, piece(hi, s.end()));
                i += 1;
            }
        }
        // Unstable sort: in place, no buffer.
        spans.sort_unstable_by_key(|s| s.addr);
        Counters::add(&self.counters.remaps, 1);
        Ok(())
    }

    /// `UFFD_EVENT_FORK`: state for the child's copy of the ranges,
    /// registered with `child`; the child sees what the parent had, so its
    /// pages start in the parent's states (claims in flight: pending).
    pub fn fork(&self, child: Uffd) -> Result<Resolver, Error> {
        let spans = self.spans.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut child_spans = Vec::with_capacity(spans.len());
        for s in &spans {
            child_spans.push(Span {
                reg: child.inherit(&s.reg)?,
                ..*s
            });
        }
        let states: Box<[AtomicU8]> = self
            .states
            .iter()
            .map(|s| match s.load(Ordering::Acquire) {
                CLAIMED => AtomicU8::new(PENDING),
                v => AtomicU8::new(v),
            })
            .collect();
        let remaining = states
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) == PENDING)
            .count();
        Counters::add(&self.counters.forks, 1);
        Ok(Resolver {
            uffd: Arc::new(child),
            source: self.source.clone(),
            spans: Spans::new(child_spans),
            states,
            remaining: AtomicUsize::new(remaining),
            chunk: self.chunk,
            counters: self.counters.clone(),
            recorder: None,
            zeros: self.zeros.clone(),
            predicted: self.predicted.clone(),
        })
    }

    /// Unregisters every range (`UFFDIO_UNREGISTER`), which wakes any
    /// thread still waiting in one: later accesses cost nothing.
    pub fn finish(&self) -> Result<(), Error> {
        let spans = self.spans.read().unwrap_or_else(|e| e.into_inner()).clone();
        for s in spans {
            let all_gone = (s.first..s.first + s.pages())
                .all(|i| self.states[i].load(Ordering::Acquire) == GONE);
            if all_gone {
                continue;
            }
            match self.uffd.unregister_range(s.addr, s.len) {
                Ok(()) => {}
                // Unmapped meanwhile, or the process has exited.
                Err(e)
                    if matches!(
                        e.errno(),
                        Some(Errno::EINVAL | Errno::ENOMEM | Errno::ESRCH)
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// What a resolution error means for the server.
fn classify(e: UffdError) -> Result<Outcome, Error> {
    if e.is_again() {
        return Ok(Outcome::Again);
    }
    match e.errno() {
        Some(Errno::ESRCH) => Ok(Outcome::PeerGone),
        Some(Errno::ENOENT | Errno::EINVAL) => Ok(Outcome::Gone),
        _ => Err(e.into()),
    }
}
