//! File-backed ranges: guest memory in a file the VMM maps (a shmem memfd,
//! a guest_memfd), served through the file's shared page state
//! ([`PageState`]) by the handler threads, the populator and vCPU threads
//! taking KVM userfault exits ([`Stage2`]).
//!
//! Every fill of such a range goes through the state: the first path to
//! claim a page writes it, every other path only maps it (or, for a vCPU,
//! finds its userfault bit clear), so each page is written once and a page
//! the guest wrote after its fill is never written again.
//!
//! | path | fills with |
//! |---|---|
//! | MISSING fault, CONTINUE-only range | `pwrite` of the chunk around it, then `UFFDIO_CONTINUE` |
//! | MISSING fault, copy-capable range | `UFFDIO_COPY` of the chunk around it |
//! | MINOR fault | nothing: `UFFDIO_CONTINUE` of the cached page |
//! | a vCPU's KVM userfault exit | `pwrite` of the chunk around it, then its bitmap bits cleared |
//! | the populator | `pwrite` of up to 512 KiB, then `UFFDIO_CONTINUE` where the range has it |
//!
//! A `UFFD_EVENT_REMAP` moves a range's mapping, in part or whole: the
//! range keeps the parts of its region where they are now (each a
//! [`Region::remapped`] of the original) and serves each fault from the
//! part that holds it, so a page at its new address is filled from its
//! file offset as before. A `UFFD_EVENT_UNMAP` drops the parts it covers.
//! Resolutions at a range's addresses run under the read side of the
//! server's order lock, as the anonymous ranges' do, so none lands between
//! a REMAP or UNMAP being read and applied.
//!
//! A `UFFD_EVENT_REMOVE` (a balloon) discards its pages through the state
//! ([`Discard::Zero`]): the file's pages are punched, the slots' userfault
//! bits set again, and the next fault of each page on any path fills zeros,
//! never the snapshot; the populator leaves them unbacked. A hole the VMM
//! punches into the file itself (no event) reads zeros too: the state finds
//! the filled page missing and fills it with zeros.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use userfault::Errno;
use userfault::backing::Backing;
use userfault::kvm::{MemoryFault, Stage2Resolver, UserfaultBitmap};
use userfault::resolve::{
    Class, ContinueOnly, CopyCapable, Discard, Fault, MAX_WINDOW, MissingFault, PageState, Region,
    Resolution, Window, WindowFill,
};
use userfault::uffd::{ContinueMode, Event, FaultKind, Ioctls, Registration, TakenFault, Uffd};

use crate::error::Error;
use crate::resolver::{OrderRead, RECORD_PAGE, Recorder};
use crate::server::Exit;
use crate::source::PageSource;
use crate::stats::{Counters, Tick};
use crate::workingset::WorkingSet;

/// Bytes the populator writes per step at most.
const EXTENT: usize = 512 << 10;

/// `pwrite(2)` + `UFFDIO_CONTINUE` (or `UFFDIO_COPY`) through the file's
/// [`PageState`]: a part of a backing file to serve — the VMM's registered
/// mapping of it (CONTINUE-only or copy-capable), or no mapping at all (a
/// guest_memfd only vCPUs reach) — and the source offset its first byte is
/// restored from. Give it to the server with
/// [`Config::files`](crate::Config::files).
///
/// The server fills the range on demand (faults of the mapping, KVM
/// userfault exits of the slots added with
/// [`stage2_slot`](Self::stage2_slot)) in aligned chunks of
/// [`Config::chunk`](crate::Config::chunk) bytes (a power of two up to
/// 2 MiB), and with [`Config::prefetch`](crate::Config::prefetch) fills the
/// rest in the background; once every page is in it unregisters the
/// mapping.
///
/// The mapping may move and shrink while it is served. A REMAP (`mremap`
/// on a userfaultfd with `UFFD_FEATURE_EVENT_REMAP`, which moves the
/// registration with the mapping) is followed without registering again:
/// the moved part is served at its new address from the same file offsets
/// ([`Region::remapped`]). An UNMAP ends serving the part it covers; its
/// pages stay in the file, where the populator and vCPUs still fill them.
/// Every fault of the mapping and every KVM userfault exit is recorded
/// into the working set ([`Config::record`](crate::Config::record)) as the
/// source page it needed, and each page is counted once
/// ([`Stats`](crate::Stats)): as a demand page by the fault or exit that
/// wrote it, or as a prefetched page by the populator. Faults of a forked
/// child on the mapping are not served here.
pub struct FileRange {
    inner: Box<dyn Served>,
}

impl fmt::Debug for FileRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl FileRange {
    /// `pwrite(2)` + `UFFDIO_CONTINUE`: serves the faults of a
    /// CONTINUE-only `region` (registered `MISSING | MINOR` over a mapping
    /// of the file) from the source at `source_offset`: a MISSING fault's chunk is written into the file
    /// (`pwrite`) and mapped with `UFFDIO_CONTINUE` — never `UFFDIO_COPY`,
    /// which the region's faults do not offer — and a MINOR fault is only
    /// mapped.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the region has no file mapping.
    #[doc(alias = "UFFDIO_CONTINUE")]
    pub fn continue_only<B: Backing + 'static>(
        region: Region<ContinueOnly, B>,
        source_offset: u64,
    ) -> Result<FileRange, Error> {
        FileRange::mapped(region, source_offset)
    }

    /// `UFFDIO_COPY`: serves the faults of a copy-capable `region` over a
    /// mapping of the file (made with `Region::copy_capable_file`) from the
    /// source at `source_offset`: a MISSING fault's chunk is placed with one
    /// `UFFDIO_COPY` per run of unfilled pages, a MINOR fault (if
    /// registered) is mapped with `UFFDIO_CONTINUE`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the region has no file mapping.
    #[doc(alias = "UFFDIO_COPY")]
    pub fn copy_capable<B: Backing + 'static>(
        region: Region<CopyCapable, B>,
        source_offset: u64,
    ) -> Result<FileRange, Error> {
        FileRange::mapped(region, source_offset)
    }

    fn mapped<C: Serve<B>, B: Backing + 'static>(
        region: Region<C, B>,
        source_offset: u64,
    ) -> Result<FileRange, Error> {
        let Some(mapping) = region.mapping() else {
            return Err(Error::Config(format!(
                "the region at {:#x} maps no file: serve it as a Range",
                region.registration().start()
            )));
        };
        let (state, first, len) = (
            mapping.state().clone(),
            mapping.file_offset(),
            mapping.len() as u64,
        );
        Ok(FileRange {
            inner: Box::new(File {
                region: Some(region),
                state,
                first,
                len,
                source_offset,
                slots: Vec::new(),
                places: RwLock::new(Vec::with_capacity(PLACES_ROOM)),
                placed: AtomicBool::new(false),
                unmapped: AtomicBool::new(false),
                pid: rustix::process::getpid(),
                finished: AtomicBool::new(false),
            }),
        })
    }

    /// `pwrite(2)` only: serves `[file_offset, file_offset + len)` of the
    /// file of `state`, which no registered mapping covers, from the source at
    /// `source_offset`: only vCPUs reach it (through the slots added with
    /// [`stage2_slot`](Self::stage2_slot)), and the populator.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the span is empty, not whole pages of the
    /// file, or outside it.
    pub fn unmapped<B: Backing + 'static>(
        state: Arc<PageState<B>>,
        file_offset: u64,
        len: u64,
        source_offset: u64,
    ) -> Result<FileRange, Error> {
        let ps = state.page_size() as u64;
        let end = file_offset.checked_add(len);
        if len == 0
            || !file_offset.is_multiple_of(ps)
            || !len.is_multiple_of(ps)
            || end.is_none_or(|end| end > state.pages() * ps)
        {
            return Err(Error::Config(format!(
                "the file span {file_offset:#x}+{len:#x} is not whole pages of {ps:#x} bytes \
                 inside the file's {:#x}",
                state.pages() * ps
            )));
        }
        Ok(FileRange {
            inner: Box::new(File::<ContinueOnly, B> {
                region: None,
                state,
                first: file_offset,
                len,
                source_offset,
                slots: Vec::new(),
                places: RwLock::new(Vec::new()),
                placed: AtomicBool::new(false),
                unmapped: AtomicBool::new(true),
                pid: rustix::process::getpid(),
                finished: AtomicBool::new(false),
            }),
        })
    }

    /// `KVM_MEM_USERFAULT`: attaches the userfault bitmap of a memslot
    /// whose first page is at `backing_offset` in the file (its
    /// `guest_memfd_offset`) to the file's page state
    /// ([`Stage2Resolver::new`]): the bitmap's bits are made to agree with
    /// the state (set for every page not filled), every fill on any path
    /// clears them, every discard sets them again, and
    /// [`Stage2::resolve`] serves the slot's exits. Attach before the
    /// slot's vCPUs run.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the slot does not lie inside this range's
    /// part of the file; [`Error::Uffd`] from attaching (page sizes that
    /// differ, an unaligned offset, a bitmap attached elsewhere, more than
    /// 16 bitmaps on the file).
    #[doc(alias = "KVM_MEM_USERFAULT")]
    pub fn stage2_slot(
        mut self,
        bitmap: Arc<UserfaultBitmap>,
        backing_offset: u64,
    ) -> Result<FileRange, Error> {
        self.inner.add_slot(bitmap, backing_offset)?;
        Ok(self)
    }
}

/// What the server needs of a file range, whatever its class and backing.
trait Served: Send + Sync + fmt::Debug {
    /// The registration's userfaultfd id and span as registered, if it has
    /// a mapping.
    fn registration(&self) -> Option<(u64, usize, usize)>;
    /// True when a page fault at `addr` read from userfaultfd `uffd_id` is
    /// this range's: inside its mapping where it is now.
    fn owns(&self, uffd_id: u64, addr: usize) -> bool;
    /// Source offset and length of the span.
    fn source_span(&self) -> (u64, u64);
    fn page_size(&self) -> usize;
    fn fault(&self, addr: usize, kind: FaultKind, ctx: &Ctx, buf: &mut Vec<u8>) -> Answer;
    fn remove(&self, start: usize, end: usize, ctx: &Ctx);
    fn unmap(&self, start: usize, end: usize, ctx: &Ctx);
    fn remap(&self, from: usize, to: usize, len: usize);
    /// Populates `[at, at + len)` of the span (relative bytes), then maps
    /// what it wrote under `order`; returns pages written.
    fn populate(
        &self,
        at: u64,
        len: u64,
        ctx: &Ctx,
        buf: &mut Vec<u8>,
        order: &Order<'_>,
    ) -> Result<u64, Error>;
    fn unfilled(&self) -> u64;
    fn stage2(&self, exit: &MemoryFault, ctx: &Ctx, buf: &mut Vec<u8>) -> Option<Answer>;
    fn add_slot(&mut self, bitmap: Arc<UserfaultBitmap>, backing_offset: u64) -> Result<(), Error>;
    fn finish(&self) -> Result<(), Error>;
}

/// Takes the read side of the server's order lock: held around every
/// resolution ioctl at an address of a file range, so that none is in
/// flight while events (a REMAP, an UNMAP) are read and applied.
pub(crate) type Order<'r> = dyn Fn() -> OrderRead<'r> + 'r;

/// What one resolution on a file range achieved.
type Answer = Result<Resolution, Error>;

/// The class-specific part: how a MISSING fault's window is filled.
trait Serve<B>: Class + Sized {
    fn missing(
        f: MissingFault<'_, Self, B>,
        w: Window,
        data: &[u8],
    ) -> userfault::Result<WindowFill>;
}

impl<B: Backing> Serve<B> for ContinueOnly {
    fn missing(
        f: MissingFault<'_, ContinueOnly, B>,
        w: Window,
        data: &[u8],
    ) -> userfault::Result<WindowFill> {
        f.write_window_then_continue_counted(w, data)
    }
}

impl<B: Backing> Serve<B> for CopyCapable {
    fn missing(
        f: MissingFault<'_, CopyCapable, B>,
        w: Window,
        data: &[u8],
    ) -> userfault::Result<WindowFill> {
        f.copy_window_counted(w, data)
    }
}

/// Pieces of a file range's mapping kept ready for remap splits, so that
/// following a remap allocates nothing in the common case.
const PLACES_ROOM: usize = 16;

/// One file range.
struct File<C: Class, B> {
    region: Option<Region<C, B>>,
    state: Arc<PageState<B>>,
    /// File offset of the span's first byte.
    first: u64,
    len: u64,
    source_offset: u64,
    /// Attached userfault bitmaps and their slots' file offsets.
    slots: Vec<(Arc<UserfaultBitmap>, u64)>,
    /// Where the mapping is now, once a remap or an unmap changed it
    /// (`placed`): the parts of `region` still mapped, each a region at its
    /// current address ([`Region::remapped`]), sorted by address. Unused
    /// while `placed` is false: then the region's own addresses hold.
    places: RwLock<Vec<Region<C, B>>>,
    placed: AtomicBool,
    /// The mapping is gone (or there never was one).
    unmapped: AtomicBool,
    /// The process that made the range: only it unregisters.
    pid: rustix::process::Pid,
    /// [`finish`](Served::finish) unregistered what was left.
    finished: AtomicBool,
}

impl<C: Class, B> Drop for File<C, B> {
    /// Unregisters the parts of the mapping a remap moved, where they are
    /// now (the region unregisters its own, original range when dropped):
    /// a server dropped before it finished leaves no registration behind
    /// that nobody serves. (Once finished, there is none left to end.)
    fn drop(&mut self) {
        let Some(region) = &self.region else {
            return;
        };
        if !self.placed.load(Ordering::Acquire)
            || self.unmapped.load(Ordering::Acquire)
            || self.finished.load(Ordering::Acquire)
            || rustix::process::getpid() != self.pid
        {
            return;
        }
        let own = *region.registration();
        let places = self.places.read().unwrap_or_else(|e| e.into_inner());
        for place in places.iter() {
            let reg = place.registration();
            if !own.contains(reg.start(), reg.len()) {
                // Gone meanwhile, or the process exited: nothing to end.
                let _ = region.uffd().unregister_range(reg.start(), reg.len());
            }
        }
    }
}

impl<C: Class, B> fmt::Debug for File<C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileRange")
            .field("class", &C::NAME)
            .field(
                "registration",
                &self.region.as_ref().map(|r| *r.registration()),
            )
            .field("file_offset", &format_args!("{:#x}", self.first))
            .field("len", &format_args!("{:#x}", self.len))
            .field("source_offset", &format_args!("{:#x}", self.source_offset))
            .field("slots", &self.slots.len())
            .field("placed", &self.placed.load(Ordering::Relaxed))
            .finish()
    }
}

/// What every file range shares: the source, the counters, the chunk, the
/// recorder.
#[derive(Debug)]
struct Ctx {
    source: Arc<dyn PageSource>,
    counters: Arc<Counters>,
    /// Bytes of the window around a demand fault.
    window: usize,
    /// Where first faults are recorded ([`Config::record`](crate::Config::record)).
    recorder: Option<Arc<Recorder>>,
}

impl Ctx {
    /// Reads `buf.len()` bytes of the source at `offset` (zeros without a
    /// read where the source knows them to be zero).
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        if self.source.is_zero(offset, buf.len() as u64) {
            buf.fill(0);
            return Ok(());
        }
        self.source.read_at(offset, buf).map_err(Error::Source)
    }

    /// Records source byte `offset` as needed now.
    #[inline]
    fn note(&self, offset: u64) {
        if let Some(r) = &self.recorder {
            r.note(offset / RECORD_PAGE);
        }
    }

    /// Counts the pages a demand resolution (of a fault or a vCPU's exit)
    /// wrote: each written page is counted by the one path that wrote it.
    fn count_demand(&self, fill: &WindowFill, page_size: usize) {
        let c = &self.counters;
        Counters::add(&c.demand_pages, fill.written);
        Counters::add(&c.zero_pages, fill.zeroed);
        Counters::add(
            &c.copied_bytes,
            (fill.written - fill.zeroed) * page_size as u64,
        );
    }
}

fn sized(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

impl<C: Serve<B>, B: Backing + 'static> File<C, B> {
    /// The source offset of file offset `offset` (inside the span).
    fn source_of(&self, offset: u64) -> u64 {
        self.source_offset + (offset - self.first)
    }

    /// Pages of the file's span `[offset, offset + len)` not filled yet.
    fn count_unfilled(&self, offset: u64, len: u64) -> u64 {
        self.state.count_unfilled(offset, len).unwrap_or(0)
    }

    /// The places, made from the region (all of it, where it is) the first
    /// time they are needed. Called with the write lock held.
    fn places_mut<'g>(
        &self,
        region: &Region<C, B>,
        places: &'g mut Vec<Region<C, B>>,
    ) -> &'g mut Vec<Region<C, B>> {
        if !self.placed.load(Ordering::Acquire) {
            let reg = region.registration();
            places.clear();
            places.extend(region.remapped(reg.start(), reg.start(), reg.len()));
        }
        places
    }

    /// A fault at `addr` of `region` (the registered one, or a place).
    fn fault_in(
        &self,
        region: &Region<C, B>,
        addr: usize,
        kind: FaultKind,
        ctx: &Ctx,
        buf: &mut Vec<u8>,
    ) -> Answer {
        let Some(fault) = region.fault_at(addr, kind) else {
            return Ok(Resolution::AlreadyPresent);
        };
        if let Some(offset) = region.file_offset_at(addr & !(self.page_size() - 1)) {
            ctx.note(self.source_of(offset));
        }
        match fault {
            Fault::Missing(f) => {
                // An error from here on drops `f` unresolved, which wakes
                // the faulting thread (it faults again).
                let w = f.window(ctx.window)?;
                let data = sized(buf, w.len());
                ctx.read(self.source_of(w.file_offset()), data)?;
                let fill = C::missing(f, w, data)?;
                ctx.count_demand(&fill, self.page_size());
                Ok(fill.resolution?)
            }
            Fault::Minor(f) => Ok(f.map()?),
            // Not registered for these: woken.
            other => {
                drop(other);
                Ok(Resolution::AlreadyPresent)
            }
        }
    }

    /// A REMOVE of `[start, end)` as it touches `region`.
    fn remove_in(&self, region: &Region<C, B>, start: usize, end: usize, ctx: &Ctx) {
        let reg = region.registration();
        let (lo, hi) = (start.max(reg.start()), end.min(reg.end()));
        if lo >= hi {
            return;
        }
        let ps = self.page_size();
        // Whole pages only: a partial page keeps its contents.
        let (lo, hi) = (lo.next_multiple_of(ps), hi & !(ps - 1));
        if lo >= hi {
            return;
        }
        // Failing to punch leaves the pages as they were (filled): the
        // guest then reads the data it had, never the snapshot over it.
        if region.discard(lo, hi - lo, Discard::Zero).is_ok() {
            Counters::add(&ctx.counters.removed_pages, ((hi - lo) / ps) as u64);
        }
    }

    /// Maps the file's bytes `run` (just written) where `region` maps
    /// them, ahead of their faults. Best effort: a page mapped meanwhile
    /// (EEXIST), a mapping being changed (EAGAIN) or gone is left to its
    /// fault.
    fn map_ahead(region: &Region<C, B>, run: &std::ops::Range<u64>) {
        let reg = region.registration();
        if !reg.ioctls().contains(Ioctls::CONTINUE) {
            return;
        }
        let Some(lo) = region.file_offset_at(reg.start()) else {
            return;
        };
        let hi = lo + reg.len() as u64;
        let (a, b) = (run.start.max(lo), run.end.min(hi));
        if a >= b {
            return;
        }
        if let Some(addr) = region.addr_at(a) {
            let _ =
                region
                    .uffd()
                    .continue_range(reg, addr, (b - a) as usize, ContinueMode::empty());
        }
    }
}

impl<C: Serve<B>, B: Backing + 'static> Served for File<C, B> {
    fn registration(&self) -> Option<(u64, usize, usize)> {
        let reg = self.region.as_ref()?.registration();
        Some((reg.uffd_id(), reg.start(), reg.end()))
    }

    #[inline]
    fn owns(&self, uffd_id: u64, addr: usize) -> bool {
        let Some(region) = &self.region else {
            return false;
        };
        let reg = region.registration();
        if reg.uffd_id() != uffd_id {
            return false;
        }
        if !self.placed.load(Ordering::Acquire) {
            return reg.contains(addr, 1);
        }
        let places = self.places.read().unwrap_or_else(|e| e.into_inner());
        places.iter().any(|r| r.registration().contains(addr, 1))
    }

    fn source_span(&self) -> (u64, u64) {
        (self.source_offset, self.len)
    }

    fn page_size(&self) -> usize {
        self.state.page_size()
    }

    fn fault(&self, addr: usize, kind: FaultKind, ctx: &Ctx, buf: &mut Vec<u8>) -> Answer {
        let Some(region) = &self.region else {
            return Ok(Resolution::AlreadyPresent);
        };
        if !self.placed.load(Ordering::Acquire) {
            return self.fault_in(region, addr, kind, ctx, buf);
        }
        let places = self.places.read().unwrap_or_else(|e| e.into_inner());
        match places.iter().find(|r| r.registration().contains(addr, 1)) {
            Some(place) => self.fault_in(place, addr, kind, ctx, buf),
            None => {
                // Moved or unmapped since the fault was read: its thread
                // is woken and retries where the mapping is now.
                let ps = self.page_size();
                let _ = region.uffd().wake_range(addr & !(ps - 1), ps);
                Err(Error::Uffd(userfault::Error::os(
                    "UFFDIO_CONTINUE",
                    Errno::ENOENT,
                )))
            }
        }
    }

    fn remove(&self, start: usize, end: usize, ctx: &Ctx) {
        let Some(region) = &self.region else { return };
        if !self.placed.load(Ordering::Acquire) {
            return self.remove_in(region, start, end, ctx);
        }
        let places = self.places.read().unwrap_or_else(|e| e.into_inner());
        for place in places.iter() {
            self.remove_in(place, start, end, ctx);
        }
    }

    fn unmap(&self, start: usize, end: usize, ctx: &Ctx) {
        let Some(region) = &self.region else { return };
        if !self.placed.load(Ordering::Acquire) {
            let reg = region.registration();
            if !(start < reg.end() && reg.start() < end) {
                return;
            }
        }
        let mut guard = self.places.write().unwrap_or_else(|e| e.into_inner());
        let places = self.places_mut(region, &mut guard);
        let ps = self.page_size();
        let mut gone = 0;
        let mut i = 0;
        while i < places.len() {
            let reg = *places[i].registration();
            let (lo, hi) = (start.max(reg.start()), end.min(reg.end()));
            if lo >= hi {
                i += 1;
                continue;
            }
            gone += (hi - lo).div_ceil(ps) as u64;
            // What is left of it on either side, where it is.
            let left = (reg.start() < lo)
                .then(|| places[i].remapped(reg.start(), reg.start(), lo - reg.start()))
                .flatten();
            let right = (hi < reg.end())
                .then(|| places[i].remapped(hi, hi, reg.end() - hi))
                .flatten();
            places.remove(i);
            for piece in [left, right].into_iter().flatten() {
                places.insert(i, piece);
                i += 1;
            }
        }
        // Its pages stay in the file (and vCPUs still reach them); only
        // the mapping is gone.
        if places.is_empty() {
            self.unmapped.store(true, Ordering::Release);
        }
        self.placed.store(true, Ordering::Release);
        Counters::add(&ctx.counters.unmapped_pages, gone);
    }

    fn remap(&self, from: usize, to: usize, len: usize) {
        let Some(region) = &self.region else { return };
        if !self.placed.load(Ordering::Acquire)
            && region.registration().remapped(from, from, len).is_none()
        {
            return;
        }
        let mut guard = self.places.write().unwrap_or_else(|e| e.into_inner());
        let places = self.places_mut(region, &mut guard);
        let end = from.saturating_add(len);
        let mut i = 0;
        while i < places.len() {
            let reg = *places[i].registration();
            let (lo, hi) = (from.max(reg.start()), end.min(reg.end()));
            if lo >= hi {
                i += 1;
                continue;
            }
            // The kernel moved the registration with the pages: the part
            // moved is served at `to`, the rest where it was.
            let moved = places[i].remapped(from, to, len);
            let left = (reg.start() < lo)
                .then(|| places[i].remapped(reg.start(), reg.start(), lo - reg.start()))
                .flatten();
            let right = (hi < reg.end())
                .then(|| places[i].remapped(hi, hi, reg.end() - hi))
                .flatten();
            places.remove(i);
            for piece in [left, moved, right].into_iter().flatten() {
                places.insert(i, piece);
                i += 1;
            }
        }
        places.sort_unstable_by_key(|r| r.registration().start());
        self.placed.store(true, Ordering::Release);
    }

    fn populate(
        &self,
        at: u64,
        len: u64,
        ctx: &Ctx,
        buf: &mut Vec<u8>,
        order: &Order<'_>,
    ) -> Result<u64, Error> {
        let offset = self.first + at;
        if self.count_unfilled(offset, len) == 0 {
            return Ok(0);
        }
        let data = sized(buf, len as usize);
        ctx.read(self.source_of(offset), data)?;
        let runs = self.state.populate_run(offset, data)?;
        let mut pages = 0;
        let ps = self.page_size() as u64;
        for run in &runs {
            pages += (run.end - run.start) / ps;
        }
        Counters::add(&ctx.counters.prefetch_pages, pages);
        Counters::add(&ctx.counters.copied_bytes, pages * ps);
        // Map what was written into the VMM's mapping, where it is now,
        // ahead of its faults (a MINOR fault each otherwise).
        if let Some(region) = &self.region
            && !runs.is_empty()
            && !self.unmapped.load(Ordering::Acquire)
        {
            let _order = order();
            if self.placed.load(Ordering::Acquire) {
                let places = self.places.read().unwrap_or_else(|e| e.into_inner());
                for place in places.iter() {
                    for run in &runs {
                        Self::map_ahead(place, run);
                    }
                }
            } else {
                for run in &runs {
                    Self::map_ahead(region, run);
                }
            }
        }
        Ok(pages)
    }

    fn unfilled(&self) -> u64 {
        self.count_unfilled(self.first, self.len)
    }

    fn stage2(&self, exit: &MemoryFault, ctx: &Ctx, buf: &mut Vec<u8>) -> Option<Answer> {
        for (bitmap, offset) in &self.slots {
            // Attached when the slot was added: found again without the
            // state's attach lock.
            let resolver = match Stage2Resolver::attached(&self.state, bitmap, *offset) {
                Some(r) => r,
                None => match Stage2Resolver::new(&self.state, bitmap, *offset) {
                    Ok(r) => r,
                    Err(e) => return Some(Err(e.into())),
                },
            };
            let Some(fault) = resolver.fault(exit) else {
                continue;
            };
            return Some((|| {
                ctx.note(self.source_of(fault.backing_offset()));
                let w = fault.window(ctx.window.max(self.page_size()))?;
                let data = sized(buf, w.len());
                ctx.read(self.source_of(w.backing_offset()), data)?;
                let fill = fault.resolve_window_counted(w, data)?;
                ctx.count_demand(&fill, self.page_size());
                Ok(fill.resolution?)
            })());
        }
        None
    }

    fn add_slot(&mut self, bitmap: Arc<UserfaultBitmap>, backing_offset: u64) -> Result<(), Error> {
        let end = backing_offset.checked_add(bitmap.memory_size());
        if backing_offset < self.first || end.is_none_or(|end| end > self.first + self.len) {
            return Err(Error::Config(format!(
                "the slot at file offset {backing_offset:#x}+{:#x} does not lie inside the \
                 range's {:#x}+{:#x}",
                bitmap.memory_size(),
                self.first,
                self.len
            )));
        }
        Stage2Resolver::new(&self.state, &bitmap, backing_offset)?;
        self.slots.push((bitmap, backing_offset));
        Ok(())
    }

    fn finish(&self) -> Result<(), Error> {
        let Some(region) = &self.region else {
            return Ok(());
        };
        if self.unmapped.load(Ordering::Acquire) {
            return Ok(());
        }
        let unregister =
            |reg: &Registration| match region.uffd().unregister_range(reg.start(), reg.len()) {
                Ok(()) => Ok(()),
                Err(e)
                    if matches!(
                        e.errno(),
                        Some(Errno::EINVAL | Errno::ENOMEM | Errno::ESRCH)
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(e.into()),
            };
        if !self.placed.load(Ordering::Acquire) {
            return unregister(region.registration());
        }
        let places = self.places.read().unwrap_or_else(|e| e.into_inner());
        for place in places.iter() {
            unregister(place.registration())?;
        }
        self.finished.store(true, Ordering::Release);
        Ok(())
    }
}

/// A page fault of a file range, read and taken, to be resolved after the
/// batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileFault {
    file: usize,
    addr: usize,
    kind: FaultKind,
}

/// The server's file ranges.
#[derive(Debug)]
pub(crate) struct Backed {
    files: Vec<Box<dyn Served>>,
    ctx: Ctx,
    /// The replayed working set's pages in the file ranges, as extents
    /// (file range, relative offset, length), in its order.
    first: Vec<(usize, u64, u64)>,
}

thread_local! {
    /// Each thread's buffer for a window of source data.
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Backed {
    /// The file ranges of a server on `uffd`, served from `source`; the
    /// populator fills the pages of `working_set` first.
    pub fn new(
        uffd: &Uffd,
        files: Vec<FileRange>,
        source: Arc<dyn PageSource>,
        counters: Arc<Counters>,
        chunk: usize,
        working_set: Option<&WorkingSet>,
        recorder: Option<Arc<Recorder>>,
    ) -> Result<Backed, Error> {
        let mut out: Vec<Box<dyn Served>> = Vec::with_capacity(files.len());
        for f in files {
            let f = f.inner;
            if let Some((id, start, end)) = f.registration()
                && id != uffd.id()
            {
                return Err(Error::Config(format!(
                    "the file range at {start:#x}+{:#x} is registered with another userfaultfd",
                    end - start
                )));
            }
            if f.page_size() > MAX_WINDOW {
                return Err(Error::Config(format!(
                    "the file range's pages of {:#x} bytes are larger than a window of {:#x}",
                    f.page_size(),
                    MAX_WINDOW
                )));
            }
            let (offset, len) = f.source_span();
            if offset.checked_add(len).is_none_or(|end| end > source.len()) {
                return Err(Error::Config(format!(
                    "the file range at source offset {offset:#x}+{len:#x} extends past the \
                     source's {} bytes",
                    source.len()
                )));
            }
            out.push(f);
        }
        let window = chunk
            .clamp(1, MAX_WINDOW)
            .next_power_of_two()
            .min(MAX_WINDOW);
        let largest = out.iter().map(|f| f.page_size()).max().unwrap_or(1);
        let mut backed = Backed {
            files: out,
            ctx: Ctx {
                source,
                counters,
                window: window.max(largest),
                recorder,
            },
            first: Vec::new(),
        };
        if let Some(ws) = working_set {
            backed.first = backed.extents(ws);
        }
        Ok(backed)
    }

    /// Takes a page fault of a file range into `faults` (resolved after
    /// the batch by [`serve`](Self::serve)) and returns true; applies a
    /// REMOVE, UNMAP or REMAP to the file ranges it touches and returns
    /// false (the other ranges see it too). Called with the order lock's
    /// write side held, in event order. A forked `child`'s REMOVE, UNMAP
    /// or REMAP changes its own address space, not the mappings served
    /// here, and is left alone: its `MADV_DONTNEED` drops only its own view
    /// of the file, and a `MADV_REMOVE` that did punch the file is found by
    /// the state (the page is missing, and is filled with zeros).
    #[inline]
    pub fn take(&self, event: &Event<'_>, child: bool, faults: &mut Vec<FileFault>) -> bool {
        if self.files.is_empty() {
            return false;
        }
        match *event {
            Event::PageFault {
                address,
                kind,
                uffd_id,
                ..
            } => {
                let taken = self.take_at(address, kind, uffd_id, faults);
                if taken {
                    event.take();
                }
                taken
            }
            Event::Remove { start, end } if !child => {
                for f in &self.files {
                    f.remove(start, end, &self.ctx);
                }
                false
            }
            Event::Unmap { start, end } if !child => {
                for f in &self.files {
                    f.unmap(start, end, &self.ctx);
                }
                false
            }
            Event::Remap { from, to, len } if !child => {
                for f in &self.files {
                    f.remap(from, to, len);
                }
                false
            }
            _ => false,
        }
    }

    /// True when any file range is served.
    #[inline]
    pub fn has_files(&self) -> bool {
        !self.files.is_empty()
    }

    /// Takes a page fault of a file range into `faults` (as
    /// [`take`](Self::take) does for an [`Event::PageFault`]) and returns
    /// true; false for a fault outside every file range.
    #[inline]
    pub fn take_fault(
        &self,
        fault: &TakenFault,
        uffd_id: u64,
        faults: &mut Vec<FileFault>,
    ) -> bool {
        !self.files.is_empty() && self.take_at(fault.address, fault.kind(), uffd_id, faults)
    }

    /// Queues a fault at `address` of userfaultfd `uffd_id` for the file
    /// range that owns it; false when none does.
    fn take_at(
        &self,
        address: usize,
        kind: FaultKind,
        uffd_id: u64,
        faults: &mut Vec<FileFault>,
    ) -> bool {
        let Some(file) = self.files.iter().position(|f| f.owns(uffd_id, address)) else {
            return false;
        };
        faults.push(FileFault {
            file,
            addr: address,
            kind,
        });
        true
    }

    /// Resolves the faults [`take`](Self::take) collected, each under
    /// `order` (the order lock's read side); `Err` with why the server
    /// stops.
    pub fn serve(&self, faults: &mut Vec<FileFault>, order: &Order<'_>) -> Result<(), Exit> {
        let read_at = self.ctx.counters.now();
        BUF.with_borrow_mut(|buf| {
            // Sized for the largest window before the order lock is taken:
            // nothing allocates under it (a fork of a process serving its
            // own memory holds the allocator's locks until its FORK event
            // is read, which waits for the lock).
            sized(buf, self.ctx.window);
            for f in faults.drain(..) {
                let r = {
                    let _order = order();
                    self.files[f.file].fault(f.addr, f.kind, &self.ctx, buf)
                };
                self.outcome(r, read_at)?;
            }
            Ok(())
        })
    }

    /// Counts a demand resolution; `Err` with the server's exit when it
    /// must stop.
    fn outcome(&self, r: Answer, since: Tick) -> Result<(), Exit> {
        let c = &self.ctx.counters;
        match classify(r) {
            Ok(Outcome::Done) => {
                Counters::add(&c.demand_faults, 1);
                c.record_since(since);
                Ok(())
            }
            // The faulting thread was woken: it faults again.
            Ok(Outcome::Again) => {
                Counters::add(&c.retries, 1);
                Ok(())
            }
            Ok(Outcome::Gone) => {
                Counters::add(&c.other_events, 1);
                Ok(())
            }
            Ok(Outcome::PeerGone) => Err(Exit::PeerClosed {
                reason: "the process whose memory is served has exited".into(),
            }),
            Err(e) => Err(Exit::Failed(e)),
        }
    }

    /// The populator's work on the file ranges: the working set's pages
    /// (in its order) when `first`, otherwise everything left, in extents
    /// of up to 512 KiB, calling `pause` before each and stopping
    /// (`Ok(false)`) once `stopped` says so.
    pub fn populate(
        &self,
        first: bool,
        stopped: &dyn Fn() -> bool,
        pause: &dyn Fn(),
        order: &Order<'_>,
    ) -> Result<bool, Exit> {
        if self.files.is_empty() {
            return Ok(true);
        }
        let step = |file: usize, at: u64, len: u64, buf: &mut Vec<u8>| -> Result<bool, Exit> {
            if stopped() {
                return Ok(false);
            }
            pause();
            match self.files[file].populate(at, len, &self.ctx, buf, order) {
                Ok(_) => Ok(true),
                Err(Error::Uffd(e)) if e.is_again() => Ok(true),
                Err(e) => Err(Exit::Failed(e)),
            }
        };
        BUF.with_borrow_mut(|buf| {
            if first {
                for &(file, at, len) in &self.first {
                    if !step(file, at, len, buf)? {
                        return Ok(false);
                    }
                }
                return Ok(true);
            }
            // Passes until nothing is left (pages busy on another path are
            // found on the next pass).
            loop {
                for (i, f) in self.files.iter().enumerate() {
                    let (_, len) = f.source_span();
                    let ps = f.page_size() as u64;
                    let extent = (EXTENT as u64).max(ps).min(MAX_WINDOW as u64);
                    let mut at = 0;
                    while at < len {
                        let n = extent.min(len - at);
                        if !step(i, at, n, buf)? {
                            return Ok(false);
                        }
                        at += n;
                    }
                }
                if self.remaining() == 0 {
                    return Ok(true);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    }

    /// The working set's pages in the file ranges, as extents (file range,
    /// relative offset, length) of consecutive pages, in order.
    fn extents(&self, ws: &WorkingSet) -> Vec<(usize, u64, u64)> {
        let mut out: Vec<(usize, u64, u64)> = Vec::new();
        for &p in ws.pages() {
            let Some(src) = p.checked_mul(u64::from(ws.page_size())) else {
                continue;
            };
            let Some((file, rel)) = self.files.iter().enumerate().find_map(|(i, f)| {
                let (off, len) = f.source_span();
                let rel = src.checked_sub(off)?;
                (rel < len).then_some((i, rel))
            }) else {
                continue;
            };
            let ps = self.files[file].page_size() as u64;
            let at = rel - rel % ps;
            match out.last_mut() {
                Some((f, start, len))
                    if *f == file && *start + *len == at && *len + ps <= EXTENT as u64 =>
                {
                    *len += ps
                }
                Some((f, start, len)) if *f == file && (*start..*start + *len).contains(&at) => {}
                _ => out.push((file, at, ps)),
            }
        }
        out
    }

    /// Unregisters every file range's mapping (the populator found every
    /// page in).
    pub fn finish(&self) -> Result<(), Error> {
        for f in &self.files {
            f.finish()?;
        }
        Ok(())
    }

    /// Pages of the file ranges.
    pub fn total(&self) -> u64 {
        self.files
            .iter()
            .map(|f| f.source_span().1 / f.page_size() as u64)
            .sum()
    }

    /// Pages of the file ranges neither filled nor discarded.
    pub fn remaining(&self) -> u64 {
        self.files.iter().map(|f| f.unfilled()).sum()
    }
}

/// What became of a file range's resolution.
enum Outcome {
    /// Resolved.
    Done,
    /// `EAGAIN`: the faulting thread was woken and faults again.
    Again,
    /// Not (or no longer) registered.
    Gone,
    /// The process whose memory this is has exited (`ESRCH`).
    PeerGone,
}

/// What a file range's resolution means for the server.
fn classify(r: Answer) -> Result<Outcome, Error> {
    let e = match r {
        Ok(_) => return Ok(Outcome::Done),
        Err(Error::Uffd(e)) => e,
        Err(e) => return Err(e),
    };
    if e.is_again() {
        return Ok(Outcome::Again);
    }
    match e.errno() {
        Some(Errno::ESRCH) => Ok(Outcome::PeerGone),
        Some(Errno::ENOENT) => Ok(Outcome::Gone),
        _ => Err(e.into()),
    }
}

/// `KVM_EXIT_MEMORY_FAULT`: the stage-2 entry point of a
/// [`Server`](crate::Server). vCPU threads
/// that get `KVM_EXIT_MEMORY_FAULT` with `KVM_MEMORY_EXIT_FLAG_USERFAULT`
/// on a `KVM_MEM_USERFAULT` memslot (attached with
/// [`FileRange::stage2_slot`]) call [`resolve`](Self::resolve), then
/// re-enter `KVM_RUN`. Cheap to clone; one per vCPU thread. It fills
/// through the same page state as the server's handler threads and its
/// populator, so each page is written once whichever asks first, and
/// keeps working after the server stopped.
///
/// The exit path takes no lock of the page state: each slot's bitmap,
/// attached when the slot was added, is found without its attach lock
/// ([`Stage2Resolver::attached`](userfault::kvm::Stage2Resolver::attached)),
/// so a clone needs no cache of its own; a resolution waits only for
/// another path's claim on the same pages (and, with
/// [`Config::record`](crate::Config::record), the recording's lock for a
/// page needed for the first time).
#[derive(Debug, Clone)]
pub struct Stage2 {
    backed: Arc<Backed>,
}

impl Stage2 {
    pub(crate) fn new(backed: Arc<Backed>) -> Stage2 {
        Stage2 { backed }
    }

    /// `KVM_EXIT_MEMORY_FAULT` with `KVM_MEMORY_EXIT_FLAG_USERFAULT`:
    /// fills the faulting page and the unfilled pages of the aligned chunk
    /// around it ([`Config::chunk`](crate::Config::chunk)) into the file
    /// with `pwrite` — one per run of unfilled pages — from the source,
    /// then clears their bits in the slot's userfault bitmap, so that the
    /// vCPU finds the page when it re-enters `KVM_RUN`. A page filled
    /// already (by a fault of the VMM's mapping, the populator or another
    /// vCPU) is not written again: a guest's writes to it survive. A
    /// discarded page gets zeros.
    ///
    /// Returns `Ok(None)` when the exit is not a KVM userfault of any
    /// attached slot (another kind of memory fault: the VMM handles it);
    /// `Ok(Some(resolution))` otherwise — re-enter the vCPU.
    ///
    /// Build `exit` from the vCPU's `kvm_run`, for example with
    /// `MemoryFault::new(flags, gpa, size)` from kvm-ioctls'
    /// `VcpuExit::MemoryFault`.
    ///
    /// # Errors
    ///
    /// [`Error::Source`] when the source cannot be read; [`Error::Uffd`]
    /// from the write (for a guest_memfd on a kernel without guest_memfd
    /// `write()`: `Unsupported`). The page's bit stays set then: the vCPU
    /// exits again if re-entered.
    #[doc(alias = "KVM_EXIT_MEMORY_FAULT")]
    pub fn resolve(&self, exit: &MemoryFault) -> Result<Option<Resolution>, Error> {
        if !exit.is_userfault() {
            return Ok(None);
        }
        let b = &self.backed;
        BUF.with_borrow_mut(|buf| {
            for f in &b.files {
                if let Some(r) = f.stage2(exit, &b.ctx, buf) {
                    if r.is_ok() {
                        Counters::add(&b.ctx.counters.stage2_faults, 1);
                    }
                    return r.map(Some);
                }
            }
            Ok(None)
        })
    }
}
