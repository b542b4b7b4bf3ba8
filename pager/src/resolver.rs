//! Resolution: the one module that keeps per-page state and issues the
//! resolution ioctls.
//!
//! Everything else in the crate (handler threads, the populator, event
//! handling) calls the few methods of [`Resolver`]:
//! [`fault_direct`](Resolver::fault_direct),
//! [`fault_windowed`](Resolver::fault_windowed),
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
//! | `FILLED` | resolved from the source (copied, or a zero page mapped) |
//! | `ZERO` | dropped by a REMOVE event: the next fault maps zeros |
//! | `ZFILLED` | dropped by a REMOVE event, then mapped as zeros |
//! | `GONE` | unmapped: never resolved again |
//! | `CLAIMED` (a flag) | a thread is resolving it; the low bits keep the state it was claimed from (`PENDING`, or `ZERO` for a faulting page) |
//!
//! A page is claimed by compare-and-swap, so one thread resolves it; on
//! `EAGAIN` the claim is given back. On anonymous memory the kernel itself
//! never overwrites a present page (`EEXIST`), so a guest's writes survive
//! any race.
//!
//! # Events and resolutions never interleave
//!
//! The kernel fails resolutions with `EAGAIN` while a REMOVE, UNMAP, REMAP
//! or FORK event is queued, and lets them through again once a handler has
//! *read* it: the `madvise` that sent a REMOVE then drops the pages,
//! possibly while the handler is still applying the event. A resolution
//! that started before the event and lands after the drop would leave
//! snapshot data in a removed range. So every resolution ioctl runs under
//! the read side of one lock ([`Resolver::order`]) and handler threads
//! read events and apply the non-fault ones under its write side: an
//! ioctl either completes before the event is read (and the drop then
//! takes its pages) or starts after the event is applied. A REMOVE or
//! UNMAP that covers a claimed page does not wait for it (the claimer may
//! be waiting for the lock): it flags the claim (`REMOVED`, `UNMAPPED`),
//! and the claimer, checking under the lock, leaves that page out and
//! hands it to its new state. A REMAP bumps a generation, and a
//! resolution holding an address from before it starts again from the
//! page's index.
//!
//! One exception: a server with one handler thread resolves that thread's
//! one-page faults ([`Resolver::fault_direct`]) without the read side.
//! That thread is then the only one that reads and applies events, and it
//! does so only between its resolutions, never during one: its ioctl
//! either completes before its next read (and a drop after that read takes
//! the page) or, while a REMOVE is queued and unread, fails with `EAGAIN`.
//! The populator and the file ranges still take the read side, so the
//! reader's write side still waits for theirs.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use userfault::uffd::{CopyMode, Registration, Uffd, ZeropageMode};
use userfault::{Errno, Error as UffdError};

use crate::error::Error;
use crate::mapbuf::MapBuf;
use crate::source::{Mapped, PageSource, all_zero};
use crate::stats::Counters;
use crate::workingset::WorkingSet;

const PENDING: u8 = 0;
const FILLED: u8 = 1;
const ZERO: u8 = 2;
const ZFILLED: u8 = 3;
const GONE: u8 = 4;
/// Flag: a thread is resolving the page; `BASE` keeps the state it was
/// claimed from.
const CLAIMED: u8 = 0x10;
/// Flag on a claim: a REMOVE covered the page since it was claimed.
const REMOVED: u8 = 0x20;
/// Flag on a claim: an UNMAP covered the page since it was claimed.
const UNMAPPED: u8 = 0x40;
/// The state bits under the flags.
const BASE: u8 = 0x0f;

/// Attempts of one fault's resolution before it is deferred (each attempt
/// follows a remap or another thread's resolution of the page).
const MAX_ATTEMPTS: usize = 64;

/// Fork captures kept ready, so that following a FORK event usually makes
/// no system call: this many forks may be in flight before the fork thread
/// has set the earlier ones up. Past that a capture is mapped while the
/// event is applied: with `mmap`, never the allocator, whose locks a fork
/// of a process that serves its own memory holds until its event is read
/// (see `mapbuf`).
const FORK_SPARES: usize = 4;

/// Bytes one resolution ioctl maps at most: a handler thread waiting to
/// read events waits for one of them at the most.
const PLACE_MAX: usize = 64 << 10;

/// Spans reserved beyond the initial ranges, for remap splits.
const SPAN_ROOM: usize = 256;

/// The unit of working-set entries.
pub(crate) const RECORD_PAGE: u64 = 4096;

/// Where a resolution's bytes come from.
#[derive(Debug, Clone, Copy)]
enum Src<'a> {
    /// Zero pages (`UFFDIO_ZEROPAGE`).
    Zero,
    /// A buffer the source was read into.
    Bytes(&'a [u8]),
    /// The source's own mapping, and the source offset of its first byte.
    Mapped(Mapped<'a>, u64),
}

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
    /// A remap moved the range since its address was looked up: start
    /// again from the page's index (never returned by the public methods).
    Moved,
    /// The faulting page was not resolved by this pass (another thread
    /// holds it, or a REMOVE covered it): settle it on its own (never
    /// returned by the public methods).
    Unserved,
    /// The kernel says the range is not mapped (`ENOENT`) on a userfaultfd
    /// whose ranges can move: the claims were given back, and the REMAP or
    /// UNMAP event that explains it is still to be read. Retry later, and
    /// [`Resolver::retire_unmapped`] the pages if it lasts.
    NotMapped,
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
    /// The span this thread found last and the remap count then
    /// (`Resolver::moves`, advanced under the spans' write lock): the next
    /// fault in the same span looks it up without the lock.
    span: Option<(u64, Span)>,
    /// The source extent `[start, end)` this thread found to hold only data
    /// last ([`PageSource::data_extent`]).
    data: (u64, u64),
}

/// The order pages were first needed, from the fault stream: of the
/// anonymous ranges ([`Resolver`]) and the file ranges
/// ([`Backed`](crate::backed::Backed)) alike, as source pages of
/// [`RECORD_PAGE`] bytes.
#[derive(Debug)]
pub(crate) struct Recorder {
    seen: Box<[AtomicU64]>,
    order: Mutex<Vec<u64>>,
}

impl Recorder {
    /// A recorder for a source of `source_len` bytes: sized for every page,
    /// so that recording never allocates.
    fn new(source_len: u64) -> Recorder {
        Recorder {
            seen: (0..source_len.div_ceil(RECORD_PAGE * 64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            order: Mutex::new(Vec::with_capacity((source_len / RECORD_PAGE) as usize + 1)),
        }
    }

    /// Notes source page `file_page` (in [`RECORD_PAGE`] units) as needed,
    /// if it was not before.
    pub(crate) fn note(&self, file_page: u64) {
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
    spans: RwLock<Vec<Span>>,
    states: Box<[AtomicU8]>,
    remaining: AtomicUsize,
    chunk: usize,
    counters: Arc<Counters>,
    recorder: Option<Arc<Recorder>>,
    zeros: Arc<[u8]>,
    /// One bit per page of the state: in the working set being replayed
    /// ([`predict`](Self::predict)).
    predicted: Option<Arc<[u64]>>,
    /// The largest window in bytes a fault resolves when its chunk is
    /// chosen from its neighbours ([`adapt`](Self::adapt)).
    adaptive: Option<usize>,
    /// The working set's order, for faults in it to resolve ahead along it
    /// ([`replay_along`](Self::replay_along)).
    replay: Option<Replay>,
    /// Read side: a resolution ioctl in flight; write side: events being
    /// read and applied (see the module docs).
    order: OrderLock,
    /// Remaps applied so far: a resolution that looked its address up
    /// under another value starts again.
    moves: AtomicU64,
    /// Fork captures ready for the next FORK events.
    fork_spares: Arc<Mutex<Vec<ForkCapture>>>,
    /// The userfaultfd reports REMAP events, so a range can move: `ENOENT`
    /// may mean "moved, event not read yet".
    movable: bool,
    /// The address of the source's own mapping of its first byte, when it
    /// maps all of itself ([`PageSource::mapped`]).
    mapping: Option<usize>,
    /// Every fault resolves its page alone (chunks no larger than a page,
    /// no adaptive window, no replay): then
    /// [`fault_direct`](Self::fault_direct) may take faults.
    one_page: bool,
    /// One handler thread reads this userfaultfd's events, and it applies
    /// them itself between its resolutions: those never overlap a read,
    /// so [`fault_direct`](Self::fault_direct) takes no order lock.
    sole_reader: bool,
    /// The server is stopping ([`stop`](Self::stop)): a claim may be held
    /// by a thread that panicked, so nothing waits for one any more.
    stopping: AtomicBool,
}

/// What [`Resolver::fault_direct`] did with a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fast {
    /// Resolved, and its thread woken.
    Done,
    /// `EAGAIN`: retry once the pending events are read.
    Again,
    /// Not taken: resolve it with [`Resolver::fault_windowed`].
    Declined,
}

/// Where [`Resolver::fault_direct`] takes a page from.
#[derive(Clone, Copy)]
enum Direct<'a> {
    /// The source's mapping, at this address.
    Mapped(usize),
    /// The page as read into the thread's buffer.
    Bytes(&'a [u8]),
    /// A zero page: the bytes read are all zero.
    Zero,
}

/// A replayed working set as extents in its recorded order, for a fault in
/// it to resolve the pages the recording says come next.
#[derive(Debug, Clone)]
struct Replay {
    /// Extents `(first state index, pages)`, in the recorded order.
    order: Arc<[(usize, usize)]>,
    /// `(first state index, position in order)`, sorted by index.
    by_index: Arc<[(usize, usize)]>,
    /// Pages a fault resolves along the order, its own included.
    ahead: usize,
}

/// The order lock: resolution ioctls share it, reading and applying
/// events takes it alone (see the module docs).
///
/// A handler thread that wants to read events while another thread's
/// ioctl is in flight spins for it (an ioctl is at most [`PLACE_MAX`]
/// bytes: tens of microseconds) rather than sleeping on the lock, and
/// resolutions about to start let it go first: a sleeping handler is woken
/// only by the next unlock, through the scheduler, which on another CPU
/// of a virtual machine costs far more than the ioctl it waited for.
///
/// One word, taken and released with one atomic instruction each way
/// when nobody waits (it is on every fault's path, twice): the low bits
/// count the ioctls in flight, [`WRITER`](Self::WRITER) marks the write
/// side held, [`SLEEPERS`](Self::SLEEPERS) that a thread sleeps on the
/// word (`futex(2)`) and must be woken by the unlock that lets it in.
/// There is no poisoning: a panic releases the side it held.
#[derive(Debug, Default)]
struct OrderLock {
    state: std::sync::atomic::AtomicU32,
    /// Handler threads spinning or sleeping for the write side.
    writers_waiting: AtomicUsize,
}

/// How long a handler thread spins for the order lock before it sleeps on
/// it.
const ORDER_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// The read side of the [`OrderLock`], released on drop.
#[must_use]
pub(crate) struct OrderRead<'a>(&'a OrderLock);

/// The write side of the [`OrderLock`], released on drop.
#[must_use]
pub(crate) struct OrderWrite<'a>(&'a OrderLock);

impl OrderLock {
    const WRITER: u32 = 1 << 31;
    const SLEEPERS: u32 = 1 << 30;
    const READERS: u32 = Self::SLEEPERS - 1;

    #[inline]
    fn write(&self) -> OrderWrite<'_> {
        if self
            .state
            .compare_exchange(0, Self::WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.write_contended();
        }
        OrderWrite(self)
    }

    /// Takes the write side from another holder: spins for up to
    /// [`ORDER_SPIN`], then sleeps until an unlock lets it in.
    #[cold]
    #[inline(never)]
    fn write_contended(&self) {
        self.writers_waiting.fetch_add(1, Ordering::AcqRel);
        let start = std::time::Instant::now();
        let mut spinning = true;
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & (Self::WRITER | Self::READERS) == 0 {
                if self
                    .state
                    .compare_exchange_weak(
                        s,
                        s | Self::WRITER,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    break;
                }
                continue;
            }
            if spinning {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
                spinning = start.elapsed() < ORDER_SPIN;
                continue;
            }
            self.sleep(s);
        }
        self.writers_waiting.fetch_sub(1, Ordering::AcqRel);
    }

    #[inline]
    fn read(&self) -> OrderRead<'_> {
        let s = self.state.load(Ordering::Relaxed);
        if s & Self::WRITER != 0
            || self.writers_waiting.load(Ordering::Acquire) != 0
            || self
                .state
                .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            self.read_contended();
        }
        OrderRead(self)
    }

    /// Takes the read side while a handler wants or holds the write side:
    /// lets a waiting handler go first for up to [`ORDER_SPIN`] (it holds
    /// the lock for a read and its events), then waits only for a holder.
    #[cold]
    #[inline(never)]
    fn read_contended(&self) {
        let start = std::time::Instant::now();
        while self.writers_waiting.load(Ordering::Acquire) != 0 && start.elapsed() < ORDER_SPIN {
            std::hint::spin_loop();
        }
        loop {
            let s = self.state.load(Ordering::Relaxed);
            // The sleepers' flag with ioctls in flight: a writer sleeps
            // behind them (readers only ever sleep on a held write side).
            // Let it in first, or overlapping ioctls could keep it out
            // indefinitely; the last of them wakes it.
            let writer_asleep = s & Self::SLEEPERS != 0 && s & Self::READERS != 0;
            if s & Self::WRITER == 0 && !writer_asleep {
                if self
                    .state
                    .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            if start.elapsed() < ORDER_SPIN {
                std::hint::spin_loop();
                continue;
            }
            self.sleep(s);
        }
    }

    /// Sleeps while the word still reads `seen` (with the sleepers' flag
    /// set first, so that the unlock that changes it wakes this thread).
    fn sleep(&self, seen: u32) {
        let flagged = seen | Self::SLEEPERS;
        if seen & Self::SLEEPERS == 0
            && self
                .state
                .compare_exchange(seen, flagged, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        // Any change of the word in between (an unlock) makes it return at
        // once; EINTR and EAGAIN are both "look again".
        let _ = rustix::thread::futex::wait(
            &self.state,
            rustix::thread::futex::Flags::PRIVATE,
            flagged,
            None,
        );
    }

    /// Wakes every sleeper: each looks at the word again.
    #[cold]
    #[inline(never)]
    fn wake(&self) {
        let _ = rustix::thread::futex::wake(
            &self.state,
            rustix::thread::futex::Flags::PRIVATE,
            i32::MAX as u32,
        );
    }
}

impl Drop for OrderRead<'_> {
    #[inline]
    fn drop(&mut self) {
        let lock = self.0;
        let was = lock.state.fetch_sub(1, Ordering::Release);
        // The last ioctl out lets a sleeping writer in.
        if was == OrderLock::SLEEPERS | 1 {
            lock.state
                .fetch_and(!OrderLock::SLEEPERS, Ordering::Relaxed);
            lock.wake();
        }
    }
}

impl Drop for OrderWrite<'_> {
    #[inline]
    fn drop(&mut self) {
        let lock = self.0;
        // Nobody else changes the word while the write side is held, but
        // for the sleepers' flag.
        if lock.state.swap(0, Ordering::Release) & OrderLock::SLEEPERS != 0 {
            lock.wake();
        }
    }
}

/// What a child's state is built from, taken while the FORK event is
/// applied (in event order, before anything later in the batch), into
/// buffers of its own mappings ([`MapBuf`]): made beforehand, or with
/// `mmap` while the event is applied, never with the allocator.
#[derive(Debug)]
pub(crate) struct ForkCapture {
    spans: MapBuf<Span>,
    states: MapBuf<u8>,
    source: Option<Arc<dyn PageSource>>,
    zeros: Option<Arc<[u8]>>,
    predicted: Option<Arc<[u64]>>,
    adaptive: Option<usize>,
    replay: Option<Replay>,
    chunk: usize,
    counters: Option<Arc<Counters>>,
    spares: Option<Arc<Mutex<Vec<ForkCapture>>>>,
}

impl ForkCapture {
    /// Room for `pages` states and `spans` spans.
    ///
    /// # Errors
    ///
    /// The `mmap` errno.
    fn with_room(pages: usize, spans: usize) -> Result<ForkCapture, Error> {
        Ok(ForkCapture {
            spans: MapBuf::with_capacity(spans)?,
            states: MapBuf::zeroed(pages)?,
            source: None,
            zeros: None,
            predicted: None,
            adaptive: None,
            replay: None,
            chunk: 0,
            counters: None,
            spares: None,
        })
    }
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
        let recorder = record.then(|| Arc::new(Recorder::new(source.len())));
        // Room for the splits remaps make, so that following one does not
        // allocate.
        spans.reserve(SPAN_ROOM);
        let spares = fork_spares(&uffd, first, spans.capacity());
        let movable = uffd
            .features()
            .contains(userfault::uffd::Features::EVENT_REMAP);
        let mapping = direct_mapping(&*source);
        let mut r = Resolver {
            uffd,
            source,
            spans: RwLock::new(spans),
            states: (0..first).map(|_| AtomicU8::new(PENDING)).collect(),
            remaining: AtomicUsize::new(first),
            chunk: chunk.max(1),
            counters,
            recorder,
            zeros: vec![0; largest].into(),
            predicted: None,
            adaptive: None,
            replay: None,
            order: OrderLock::default(),
            moves: AtomicU64::new(0),
            fork_spares: spares,
            movable,
            mapping,
            one_page: false,
            sole_reader: false,
            stopping: AtomicBool::new(false),
        };
        r.choose_paths();
        Ok(r)
    }

    /// Decides whether faults may take [`fault_direct`](Self::fault_direct):
    /// after every change of how windows are chosen.
    fn choose_paths(&mut self) {
        let spans = self.spans.get_mut().unwrap_or_else(|e| e.into_inner());
        let one_page = self.adaptive.is_none()
            && self.replay.is_none()
            && self.predicted.is_none()
            && spans.iter().all(|s| self.chunk <= s.page);
        self.one_page = one_page;
    }

    /// Only one handler thread reads events (see `sole_reader`): it
    /// resolves its own faults without the order lock's read side, since
    /// it reads and applies every event itself, never while it resolves.
    pub fn set_sole_reader(&mut self) {
        self.sole_reader = true;
    }

    /// The server is stopping: threads waiting for another's claim to
    /// settle give up (the claimer may have panicked).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// The write side of the order lock: held while a handler thread reads
    /// events and applies the non-fault ones, so that no resolution ioctl
    /// runs meanwhile (see the module docs).
    pub fn order(&self) -> OrderWrite<'_> {
        self.order.write()
    }

    /// The read side of the order lock: held by a file range's resolution
    /// (see the module docs), so that no event is read while it is in
    /// flight.
    pub fn order_read(&self) -> OrderRead<'_> {
        self.order.read()
    }

    /// The recorder of first faults ([`Config::record`](crate::Config::record)),
    /// shared with the file ranges.
    pub fn recorder(&self) -> Option<Arc<Recorder>> {
        self.recorder.clone()
    }

    /// Buffers for one thread: the largest window a fault resolves.
    pub fn scratch(&self) -> Scratch {
        self.scratch_for(self.chunk.max(self.adaptive.unwrap_or(0)))
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
            data: (0, 0),
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

    /// The span holding `addr`: the one `cache` holds when no remap came
    /// since (`moves_seen`) and it holds `addr`, else looked up under the
    /// lock (and cached). A lookup is a snapshot either way: a remap can
    /// follow it at once, which `place` finds from `moves`.
    #[inline]
    fn span_of_addr<'c>(
        &self,
        addr: usize,
        moves_seen: u64,
        cache: &'c mut Option<(u64, Span)>,
    ) -> Option<&'c Span> {
        let hit =
            matches!(cache, Some((m, s)) if *m == moves_seen && s.addr <= addr && addr < s.end());
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
        // write lock, so this count is the one of what is read here.
        let moves = self.moves.load(Ordering::Acquire);
        let i = spans.partition_point(|s| s.end() <= addr);
        *cache = spans.get(i).filter(|s| s.addr <= addr).map(|&s| (moves, s));
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

    /// The common case of a fault that resolves its page alone: a data page
    /// of the span found last time, no remap since, pending.
    /// [`Fast::Done`] when it was resolved (and its thread woken);
    /// [`Fast::Again`] when the kernel asked for the pending events to be
    /// read first; otherwise, with nothing changed, [`Fast::Declined`] for
    /// [`fault_windowed`](Self::fault_windowed) to resolve it whatever it
    /// turns out to need. The same claim, lock, checks and accounting as
    /// [`place`](Self::place), without building windows, runs or stretches:
    /// a copy straight from the source's mapping, or a read of the page
    /// into the thread's buffer and a copy from it (a zero page where the
    /// bytes are all zero).
    #[inline(always)]
    pub fn fault_direct(&self, addr: usize, scratch: &mut Scratch) -> Fast {
        if !self.one_page {
            return Fast::Declined;
        }
        let moves_seen = self.moves.load(Ordering::Acquire);
        let Scratch {
            span: cached,
            buf,
            data,
            ..
        } = scratch;
        let Some((m, span)) = cached else {
            return Fast::Declined;
        };
        if *m != moves_seen || addr < span.addr || addr >= span.end() {
            return Fast::Declined;
        }
        let p = (addr - span.addr) >> span.shift;
        let offset = span.offset + ((p << span.shift) as u64);
        let end = offset + span.page as u64;
        if offset < data.0 || end > data.1 {
            match self.source.data_extent(offset) {
                Some(e) if e.0 <= offset && end <= e.1 => *data = e,
                _ => return Fast::Declined,
            }
        }
        let index = span.first + p;
        let state = &self.states[index];
        if state
            .compare_exchange(PENDING, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Fast::Declined;
        }
        if let Some(rec) = &self.recorder {
            rec.note(offset / RECORD_PAGE);
        }
        let src = match self.mapping {
            Some(base) => Direct::Mapped(base + offset as usize),
            None => {
                let page = &mut buf[..span.page];
                if self.source.read_at(offset, page).is_err() {
                    // The general path reads again and reports it.
                    self.release(span, &[(p, PENDING)]);
                    return Fast::Declined;
                }
                if span.zeropage && all_zero(page) {
                    Direct::Zero
                } else {
                    Direct::Bytes(page)
                }
            }
        };
        // A remap or REMOVE applied since the checks above lands only
        // between this thread's resolutions when it is the sole reader.
        let order = (!self.sole_reader).then(|| self.order.read());
        if order.is_some()
            && (self.moves.load(Ordering::Acquire) != moves_seen
                || state.load(Ordering::Acquire) & (REMOVED | UNMAPPED) != 0)
        {
            drop(order);
            self.release(span, &[(p, PENDING)]);
            return Fast::Declined;
        }
        let dst = span.addr + (p << span.shift);
        let r = match src {
            // SAFETY: `src` is in the source's own private file mapping
            // (`direct_mapping`: it maps every byte of the source, and
            // `offset + page` is within a data extent of it), which the
            // source never registers with a userfaultfd or hands out, so
            // the kernel's read of it never waits on this thread; the
            // resolver's reference to the source keeps it mapped.
            Direct::Mapped(src) => unsafe {
                self.uffd.copy_from_ptr(
                    &span.reg,
                    dst,
                    src as *const u8,
                    span.page,
                    CopyMode::empty(),
                )
            },
            Direct::Bytes(bytes) => self.uffd.copy(&span.reg, dst, bytes, CopyMode::empty()),
            Direct::Zero => self
                .uffd
                .zeropage(&span.reg, dst, span.page, ZeropageMode::empty()),
        };
        let again = match r {
            Ok(_) => {
                let c = &self.counters;
                Counters::add(&c.demand_pages, 1);
                if matches!(src, Direct::Zero) {
                    Counters::add(&c.zero_pages, 1);
                } else {
                    Counters::add(&c.copied_bytes, span.page as u64);
                }
                state.store(FILLED, Ordering::Release);
                self.remaining.fetch_sub(1, Ordering::AcqRel);
                return Fast::Done;
            }
            Err(e) => e.is_again(),
        };
        drop(order);
        self.release(span, &[(p, PENDING)]);
        if again {
            // An event is pending: the fault waits for it to be read, as
            // after any EAGAIN.
            Fast::Again
        } else {
            // Whatever else the kernel said (present already, not mapped,
            // the source unreadable), the general path finds out again and
            // does what it needs.
            Fast::Declined
        }
    }

    /// Resolves a demand fault at `addr` together with the unresolved pages
    /// of the window around it (its aligned chunk, the adaptive window or
    /// the replayed extent), and makes sure the faulting thread is woken: by
    /// the resolution, or with `UFFDIO_WAKE` when the page cannot be placed
    /// at `addr` (outside every range: [`Outcome::Gone`]; moved by a remap
    /// since the fault). For every fault that
    /// [`fault_direct`](Self::fault_direct) does not take.
    #[inline(never)]
    pub fn fault_windowed(&self, addr: usize, scratch: &mut Scratch) -> Result<Outcome, Error> {
        let mut moves_seen = self.moves.load(Ordering::Acquire);
        let Some(&span) = self.span_of_addr(addr, moves_seen, &mut scratch.span) else {
            return Ok(self.unserved(addr, rustix::param::page_size()));
        };
        let mut span = span;
        let page_addr = addr - ((addr - span.addr) & (span.page - 1));
        let index = span.first + ((addr - span.addr) >> span.shift);
        if let Some(rec) = &self.recorder {
            let p = index - span.first;
            rec.note((span.offset + (p * span.page) as u64) / RECORD_PAGE);
        }
        let unpredicted = self
            .predicted
            .as_ref()
            .is_some_and(|bits| bits[index / 64] & (1 << (index % 64)) == 0);
        let mut alone = unpredicted;
        for _ in 0..MAX_ATTEMPTS {
            let p = index - span.first;
            // A fault outside the working set being replayed is one the
            // recording did not foresee: its neighbours are no likelier to
            // be needed than any other page, so only the page itself is
            // resolved.
            let (lo, hi) = if alone {
                (p, p + 1)
            } else if let Some(r) = &self.replay {
                self.along_window(&span, p, r, scratch)
            } else if let Some(max) = self.adaptive {
                self.adaptive_window(&span, p, max)
            } else {
                self.window(&span, p)
            };
            let outcome = match self.resolve_window(&span, moves_seen, lo, hi, Some(p), scratch) {
                Ok(Outcome::Unserved) => self.settle_fault(&span, p),
                other => other,
            };
            match outcome {
                // Returned as it is: a new value would drop this one (an
                // out-of-line call, for a `Result` that holds an `Error`).
                Ok(Outcome::Done) if span.addr + p * span.page == page_addr => {
                    if !alone && let Some(r) = &self.replay {
                        self.resolve_ahead(r, index, span.first + hi, hi - p, scratch)?;
                    }
                    return outcome;
                }
                Ok(Outcome::Done) => {
                    // Resolved where a remap put it: the thread waits at
                    // the old address.
                    let _ = self.uffd.wake_range(page_addr, span.page);
                    return Ok(Outcome::Done);
                }
                Ok(Outcome::Unserved) => alone = true,
                Ok(Outcome::Moved) => {}
                // Not mapped at `addr` (any more): the thread retries its
                // access; a move's event, once read, places the page.
                Ok(Outcome::Gone | Outcome::NotMapped) => {
                    Counters::add(&self.counters.unserved_faults, 1);
                    let _ = self.uffd.wake_range(page_addr, span.page);
                    return Ok(Outcome::Gone);
                }
                other => return other,
            }
            moves_seen = self.moves.load(Ordering::Acquire);
            match self.span_of_index(index) {
                Some(s) => span = s,
                None => return Ok(self.unserved(page_addr, span.page)),
            }
        }
        Ok(Outcome::Again)
    }

    /// A fault the server cannot place: wakes its thread, which retries
    /// the access.
    fn unserved(&self, addr: usize, page: usize) -> Outcome {
        Counters::add(&self.counters.unserved_faults, 1);
        let _ = self.uffd.wake_range(addr - addr % page, page);
        Outcome::Gone
    }

    /// With the working set being replayed as `order` (extents of
    /// consecutive state indices, in the recorded order), a fault on one of
    /// its pages resolves `ahead` bytes along that order from it: the rest
    /// of its extent, then the extents recorded after it. The recording,
    /// not the address, says which pages come next. Zero leaves faults to
    /// their chunks.
    pub fn replay_along(&mut self, order: &[(usize, usize)], ahead: usize) {
        let pages = ahead / rustix::param::page_size();
        if pages == 0 || order.is_empty() {
            self.replay = None;
            self.choose_paths();
            return;
        }
        let mut by_index: Vec<(usize, usize)> =
            order.iter().enumerate().map(|(k, e)| (e.0, k)).collect();
        by_index.sort_unstable();
        self.replay = Some(Replay {
            order: order.into(),
            by_index: by_index.into(),
            ahead: pages,
        });
        self.choose_paths();
    }

    /// The position in the recorded order of the extent holding state
    /// index `index`.
    fn along_position(r: &Replay, index: usize) -> Option<usize> {
        let i = r.by_index.partition_point(|e| e.0 <= index);
        i.checked_sub(1)
            .map(|i| r.by_index[i].1)
            .filter(|&k| index < r.order[k].0 + r.order[k].1)
    }

    /// The window of a fault on page `p` of `span` in the replayed working
    /// set: from the page to the end of its recorded extent (at most the
    /// lookahead and what `scratch` holds); the aligned chunk for a page in
    /// no extent.
    fn along_window(&self, span: &Span, p: usize, r: &Replay, scratch: &Scratch) -> (usize, usize) {
        let Some(k) = Self::along_position(r, span.first + p) else {
            return self.window(span, p);
        };
        let room = (scratch.buf.len() / span.page).max(1);
        let (start, len) = r.order[k];
        let end = (start + len).saturating_sub(span.first).min(span.pages());
        (p, end.min(p + room).min(p + r.ahead).max(p + 1))
    }

    /// After a fault on state index `fault` in the replayed working set was
    /// served with `used` pages up to index `next`: what the recording says
    /// the guest needs next, up to the lookahead, as background work (in
    /// the populator's extents, counted as prefetched). Stops quietly when
    /// the kernel asks for events to be read first; the next fault or the
    /// populator finds the rest.
    fn resolve_ahead(
        &self,
        r: &Replay,
        fault: usize,
        next: usize,
        used: usize,
        scratch: &mut Scratch,
    ) -> Result<(), Error> {
        let Some(k) = Self::along_position(r, fault) else {
            return Ok(());
        };
        let mut budget = r.ahead.saturating_sub(used);
        let (start, len) = r.order[k];
        let (mut at, mut end, mut following) = (next, start + len, k + 1);
        while budget > 0 {
            if at >= end {
                let Some(&(s, l)) = r.order.get(following) else {
                    break;
                };
                (at, end, following) = (s, s + l, following + 1);
                continue;
            }
            let (res, covered) = self.prefetch_run(at, (end - at).min(budget), scratch);
            match res {
                Ok(Outcome::Done | Outcome::Gone) => {}
                Ok(_) => break,
                Err(e) => return Err(e),
            }
            at += covered;
            budget = budget.saturating_sub(covered);
        }
        Ok(())
    }

    /// Chooses each fault's window from what its neighbours turned out to
    /// be worth instead of the fixed aligned chunk: see
    /// [`adaptive_window`](Self::adaptive_window). `max` is the largest
    /// window in bytes (at least a chunk). Call before the first
    /// [`scratch`](Self::scratch), which is sized for it.
    pub fn adapt(&mut self, max: usize) {
        self.adaptive = Some(max.max(self.chunk));
        self.choose_paths();
    }

    /// The window a fault on local page `p` resolves when chunks adapt:
    /// after a run of resolved pages just before `p` (the guest walking on
    /// past what was resolved for it), the pages from `p` forward, as many
    /// as the run is long rounded up to a power of two, at least a chunk
    /// and at most `max` bytes; with nothing resolved just before it (a
    /// fault isolated so far), the page alone, since its neighbours have
    /// not shown they are needed.
    fn adaptive_window(&self, span: &Span, p: usize, max: usize) -> (usize, usize) {
        let per = (self.chunk / span.page).max(1);
        let most = (max / span.page).max(per);
        let resolved = |i: usize| {
            let v = self.states[span.first + i].load(Ordering::Relaxed);
            v & CLAIMED != 0 || matches!(v & BASE, FILLED | ZFILLED)
        };
        let mut run = 0;
        while run < most && run < p && resolved(p - run - 1) {
            run += 1;
        }
        if run == 0 {
            return (p, p + 1);
        }
        let w = run.next_power_of_two().clamp(per, most);
        (p, (p + w).min(span.pages()))
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
        self.predicted = Some(bits.into());
        self.choose_paths();
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
        for _ in 0..MAX_ATTEMPTS {
            let moves_seen = self.moves.load(Ordering::Acquire);
            let Some(span) = self.span_of_index(index) else {
                return (Ok(Outcome::Gone), 1);
            };
            let p = index - span.first;
            let room = (scratch.buf.len() / span.page).max(1);
            let hi = (p + pages.clamp(1, room)).min(span.pages());
            match self.resolve_window(&span, moves_seen, p, hi, None, scratch) {
                Ok(Outcome::Moved) => continue,
                outcome => return (outcome, hi - p),
            }
        }
        (Ok(Outcome::Again), 1)
    }

    /// Claims the unresolved pages of `[lo, hi)` of `span` and resolves
    /// them; with `fault`, that page goes first. Returns
    /// [`Outcome::Unserved`] when the faulting page was not resolved here.
    fn resolve_window(
        &self,
        span: &Span,
        moves_seen: u64,
        lo: usize,
        hi: usize,
        fault: Option<usize>,
        scratch: &mut Scratch,
    ) -> Result<Outcome, Error> {
        if let Some(f) = fault
            && lo == f
            && hi == f + 1
        {
            return self.resolve_one(span, moves_seen, f, scratch);
        }
        scratch.claimed.clear();
        for p in lo..hi {
            let state = &self.states[span.first + p];
            let mut v = state.load(Ordering::Acquire);
            // Neighbours are claimed only while pending; a removed page is
            // mapped (as zeros) only when it is the one faulting.
            while v == PENDING || (v == ZERO && fault == Some(p)) {
                match state.compare_exchange_weak(
                    v,
                    v | CLAIMED,
                    Ordering::Acquire,
                    Ordering::Acquire,
                ) {
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
        let mut served = false;
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
            let (done, r) = self.fill_run(
                span,
                moves_seen,
                &claimed[start..i],
                fault.is_some(),
                scratch,
            );
            if start == 0 && first.is_some() {
                served = done > 0;
            }
            match r {
                Ok(Outcome::Done) => {}
                other => {
                    // The run gave back its own claims; give back the rest.
                    self.release(span, &claimed[i..]);
                    outcome = other;
                    break;
                }
            }
        }
        claimed.clear();
        scratch.claimed = claimed;
        match outcome {
            Ok(Outcome::Done) if fault.is_some() && !served => Ok(Outcome::Unserved),
            outcome => outcome,
        }
    }

    /// [`resolve_window`](Self::resolve_window) of the faulting page `p`
    /// alone (per-page mode, and faults outside a replayed working set):
    /// the same claim and outcome, without building runs.
    #[inline]
    fn resolve_one(
        &self,
        span: &Span,
        moves_seen: u64,
        p: usize,
        scratch: &mut Scratch,
    ) -> Result<Outcome, Error> {
        let state = &self.states[span.first + p];
        let mut v = state.load(Ordering::Acquire);
        while v == PENDING || v == ZERO {
            match state.compare_exchange_weak(v, v | CLAIMED, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => {
                    return match self.fill_run(span, moves_seen, &[(p, v)], true, scratch) {
                        (0, Ok(Outcome::Done)) => Ok(Outcome::Unserved),
                        (_, outcome) => outcome,
                    };
                }
                Err(now) => v = now,
            }
        }
        Ok(Outcome::Unserved)
    }

    /// A fault on a page this thread did not resolve: waits for another
    /// thread's claim to settle, then wakes the faulting thread (or maps
    /// zeros if the page is absent). [`Outcome::Unserved`] when the page is
    /// unresolved again (its claim was given back, or a REMOVE dropped it):
    /// resolve it on its own.
    fn settle_fault(&self, span: &Span, p: usize) -> Result<Outcome, Error> {
        let state = &self.states[span.first + p];
        let addr = span.addr + p * span.page;
        let mut spins = 0u32;
        loop {
            let v = state.load(Ordering::Acquire);
            if v & CLAIMED != 0 {
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else if self.stopping.load(Ordering::Acquire) {
                    // The claimer may have panicked: its claim would never
                    // settle. (A live claimer's copy wakes the thread.)
                    return Ok(Outcome::Again);
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
            match v {
                PENDING | ZERO => return Ok(Outcome::Unserved),
                GONE => return Ok(Outcome::Gone),
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
    /// `UFFDIO_COPY` per stretch of data pages. Returns how many of its
    /// pages were resolved (from the first) and the outcome; every claim
    /// not resolved is given back.
    #[inline(always)]
    fn fill_run(
        &self,
        span: &Span,
        moves_seen: u64,
        run: &[(usize, u8)],
        demand: bool,
        scratch: &mut Scratch,
    ) -> (usize, Result<Outcome, Error>) {
        let ps = span.page;
        let n = run.len();
        let bytes = n * ps;
        let offset = span.offset + (run[0].0 * ps) as u64;
        let removed = run.iter().all(|c| c.1 == ZERO);
        let known_zero = removed || self.source.is_zero(offset, bytes as u64);
        if !known_zero
            && run.iter().all(|c| c.1 != ZERO)
            && let Some(m) = self.source.mapped(offset, bytes)
        {
            // Straight from the source's mapping; holes inside the run
            // still become zero pages: one `UFFDIO_COPY` per stretch of
            // data, one `UFFDIO_ZEROPAGE` per stretch of hole.
            let hole = |k: usize| {
                span.zeropage && self.source.is_zero(offset + (k * ps) as u64, ps as u64)
            };
            return self.place_stretches(span, moves_seen, run, demand, hole, |k, e| {
                Src::Mapped(m.slice(k * ps, (e - k) * ps), offset + (k * ps) as u64)
            });
        }
        let buf = &mut scratch.buf;
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
                return (0, Err(Error::Source(e)));
            }
            for (k, c) in run.iter().enumerate() {
                if c.1 == ZERO {
                    data[k * ps..(k + 1) * ps].fill(0);
                }
            }
        }
        let data = &*data;
        let is_zero =
            |k: usize| span.zeropage && (known_zero || all_zero(&data[k * ps..(k + 1) * ps]));
        self.place_stretches(span, moves_seen, run, demand, is_zero, |k, e| {
            Src::Bytes(&data[k * ps..e * ps])
        })
    }

    /// Places `run` in stretches: pages for which `zero(k)` holds as zero
    /// pages, the others from `bytes(k, e)` (the source of pages
    /// `[k, e)`). Returns how many of its pages were resolved (from the
    /// first) and the outcome; every claim not resolved is given back.
    fn place_stretches<'a>(
        &self,
        span: &Span,
        moves_seen: u64,
        run: &[(usize, u8)],
        demand: bool,
        zero: impl Fn(usize) -> bool,
        bytes: impl Fn(usize, usize) -> Src<'a>,
    ) -> (usize, Result<Outcome, Error>) {
        let n = run.len();
        let mut resolved = 0;
        let mut k = 0;
        while k < n {
            let z = zero(k);
            let mut e = k + 1;
            while e < n && zero(e) == z {
                e += 1;
            }
            let src = if z { Src::Zero } else { bytes(k, e) };
            let (done, outcome) = self.place(span, moves_seen, &run[k..e], src, demand);
            if k == 0 {
                resolved = done;
            }
            if !matches!(outcome, Ok(Outcome::Done)) {
                self.release(span, &run[e..]);
                return (resolved, outcome);
            }
            k = e;
        }
        (resolved, Ok(Outcome::Done))
    }

    /// True when a REMOVE or UNMAP covered claimed page `p` of `span`.
    fn flagged(&self, span: &Span, p: usize) -> bool {
        self.states[span.first + p].load(Ordering::Acquire) & (REMOVED | UNMAPPED) != 0
    }

    /// Maps `run` (consecutive claimed pages) with `UFFDIO_COPY` from `src`,
    /// or `UFFDIO_ZEROPAGE` for [`Src::Zero`], waking its faulting
    /// threads. Each ioctl (of at most [`PLACE_MAX`] bytes, so that a
    /// handler waiting to read events never waits long) runs under the read
    /// side of the order lock, after checking that no remap moved the range
    /// and leaving out pages a REMOVE or UNMAP covered since they were
    /// claimed. Returns how many pages from the first were resolved (a page
    /// left out ends that count) and the outcome; every claim it does not
    /// resolve is given back.
    #[inline(always)]
    fn place(
        &self,
        span: &Span,
        moves_seen: u64,
        run: &[(usize, u8)],
        src: Src<'_>,
        demand: bool,
    ) -> (usize, Result<Outcome, Error>) {
        let ps = span.page;
        let zero = matches!(src, Src::Zero);
        let most = (PLACE_MAX / ps).max(1);
        let mut resolved = 0;
        let mut contiguous = true;
        let mut at = 0;
        while at < run.len() {
            let _order = self.order.read();
            if self.moves.load(Ordering::Acquire) != moves_seen {
                self.release(span, &run[at..]);
                return (resolved, Ok(Outcome::Moved));
            }
            if self.flagged(span, run[at].0) {
                // Not from the source any more: it becomes ZERO (or GONE).
                self.release(span, &run[at..at + 1]);
                contiguous = false;
                at += 1;
                continue;
            }
            let mut end = at + 1;
            while end < run.len() && end - at < most && !self.flagged(span, run[end].0) {
                end += 1;
            }
            let addr = span.addr + run[at].0 * ps;
            let r = match src {
                Src::Bytes(src) => {
                    self.uffd
                        .copy(&span.reg, addr, &src[at * ps..end * ps], CopyMode::empty())
                }
                Src::Mapped(m, _) => {
                    let m = m.slice(at * ps, (end - at) * ps);
                    // SAFETY: `m` is a range of a `MappedSource`'s own
                    // private file mapping, which that source made and
                    // never registers with a userfaultfd or hands out, so
                    // the kernel's read of it never waits on this thread;
                    // the borrow of the source keeps it mapped.
                    unsafe {
                        self.uffd.copy_from_ptr(
                            &span.reg,
                            addr,
                            m.addr(),
                            m.len(),
                            CopyMode::empty(),
                        )
                    }
                }
                Src::Zero => {
                    self.uffd
                        .zeropage(&span.reg, addr, (end - at) * ps, ZeropageMode::empty())
                }
            };
            let settled = match r {
                Ok(_) => {
                    self.settle(span, &run[at..end], zero, demand);
                    end - at
                }
                Err(UffdError::Partial { done, .. }) => {
                    // The kernel stopped part-way (and woke what it did);
                    // the next call says why.
                    let d = ((done as usize) / ps).max(1).min(end - at);
                    self.settle(span, &run[at..at + d], zero, demand);
                    d
                }
                Err(e) if e.is_exists() => {
                    // Present already: never overwritten. Wake its waiters.
                    let _ = self.uffd.wake(&span.reg, addr, ps);
                    Counters::add(&self.counters.already_present, 1);
                    self.mark_resolved(span, &run[at..at + 1]);
                    1
                }
                Err(e) if e.errno() == Some(Errno::EFAULT) && matches!(src, Src::Mapped(..)) => {
                    let Src::Mapped(_, offset) = src else {
                        unreachable!()
                    };
                    self.release(span, &run[at..]);
                    let from = offset + (at * ps) as u64;
                    return (
                        resolved,
                        Err(Error::Source(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!(
                                "UFFDIO_COPY of {} bytes from the source's mapping at \
                                 {from:#x}: EFAULT (the file shrank while served)",
                                (end - at) * ps
                            ),
                        ))),
                    );
                }
                Err(e) => {
                    let outcome = classify(e);
                    if matches!(outcome, Ok(Outcome::Gone)) && !self.movable {
                        // Not registered any more, and ranges never move
                        // on this userfaultfd (no REMAP events: a moved
                        // range loses its registration): unmapped or
                        // unregistered, never to be resolved again.
                        self.retire(span, &run[at..]);
                        return (resolved, outcome);
                    }
                    self.release(span, &run[at..]);
                    if matches!(outcome, Ok(Outcome::Gone)) {
                        // The kernel may have moved or unmapped the range
                        // without its event read yet: it says ENOENT
                        // before it says EAGAIN. The event decides.
                        return (resolved, Ok(Outcome::NotMapped));
                    }
                    return (resolved, outcome);
                }
            };
            if contiguous {
                resolved += settled;
            }
            at += settled;
        }
        (resolved, Ok(Outcome::Done))
    }

    /// The remap generation: advanced by every remap applied.
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Acquire)
    }

    /// After a resolution from state index `index` found its range not
    /// mapped ([`Outcome::NotMapped`]) with the remap generation
    /// `moves_seen` read before it: `Some(true)` when the range is gone with
    /// no event to explain it (no remap applied since, and none being
    /// raised: [`Uffd::mapping_change_pending`]), so that its pending pages
    /// can be given up on at once; `Some(false)` when an event explains it
    /// or a remap was applied meanwhile (retry); `None` when the kernel
    /// cannot say (before Linux 5.7, or a range registered for write
    /// protection, which the probe would change).
    pub fn unmapped_without_event(&self, index: usize, moves_seen: u64) -> Option<bool> {
        let span = self.span_of_index(index)?;
        if span.reg.mode().contains(userfault::uffd::RegisterMode::WP) {
            return None;
        }
        // Under the read side: no event is read and not yet applied.
        let _order = self.order.read();
        if self.moves.load(Ordering::Acquire) != moves_seen {
            return Some(false);
        }
        match self.uffd.mapping_change_pending(&span.reg) {
            Ok(pending) => Some(!pending),
            Err(_) => None,
        }
    }

    /// True once the process whose memory this resolver serves has exited:
    /// the kernel answers [`Uffd::mapping_change_pending`] with `ESRCH`
    /// (it changes nothing otherwise; the answer comes before the range is
    /// looked up, so a range unmapped since does as well as any). False
    /// while it lives, where every range is registered for write protection
    /// (which the probe would remove), and on kernels that do not check for
    /// an exited process there (they answer `ENOENT`).
    pub fn process_exited(&self) -> bool {
        let spans = self.spans.read().unwrap_or_else(|e| e.into_inner());
        let Some(span) = spans
            .iter()
            .find(|s| !s.reg.mode().contains(userfault::uffd::RegisterMode::WP))
        else {
            return false;
        };
        matches!(
            self.uffd.mapping_change_pending(&span.reg),
            Err(e) if e.errno() == Some(Errno::ESRCH)
        )
    }

    /// Gives up on the pending pages of `[index, index + pages)`: after the
    /// kernel has said for long enough that they are not mapped (and no
    /// event explained it), they are `GONE`. Returns how many were.
    pub fn retire_unmapped(&self, index: usize, pages: usize) -> usize {
        let _order = self.order.read();
        let end = (index + pages).min(self.states.len());
        let mut n = 0;
        for state in &self.states[index.min(end)..end] {
            if state
                .compare_exchange(PENDING, GONE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.remaining.fetch_sub(1, Ordering::AcqRel);
                n += 1;
            }
        }
        Counters::add(&self.counters.unmapped_pages, n as u64);
        n
    }

    /// Marks resolved pages and counts them.
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
        self.mark_resolved(span, run);
    }

    /// Claims resolved: `FILLED`, or `ZFILLED` for a removed page.
    fn mark_resolved(&self, span: &Span, run: &[(usize, u8)]) {
        for &(p, was) in run {
            let to = if was == ZERO { ZFILLED } else { FILLED };
            self.states[span.first + p].store(to, Ordering::Release);
            if was == PENDING {
                self.remaining.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Claims on pages no longer registered: `GONE`.
    fn retire(&self, span: &Span, run: &[(usize, u8)]) {
        for &(p, was) in run {
            self.states[span.first + p].store(GONE, Ordering::Release);
            if was == PENDING {
                self.remaining.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Gives claims back: to the state they were taken from, or to what a
    /// REMOVE (`ZERO`) or UNMAP (`GONE`) that covered them meanwhile made
    /// of them.
    fn release(&self, span: &Span, run: &[(usize, u8)]) {
        for &(p, was) in run {
            let state = &self.states[span.first + p];
            // Flags are only added while claimed, so one swap settles it.
            let v = state.load(Ordering::Acquire);
            let to = if v & UNMAPPED != 0 {
                GONE
            } else if v & REMOVED != 0 {
                ZERO
            } else {
                was
            };
            state.store(to, Ordering::Release);
            if was == PENDING && to != PENDING {
                self.remaining.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Sets every page of `[start, end)` to `to` (`ZERO` or `GONE`), or
    /// flags it when claimed; returns how many pages changed. Called with
    /// the order lock's write side held, so no resolution is in flight.
    fn set_range(&self, start: usize, end: usize, to: u8) -> u64 {
        let flag = if to == GONE { UNMAPPED } else { REMOVED };
        let spans = self.spans.read().unwrap_or_else(|e| e.into_inner());
        let mut changed = 0;
        for s in spans.iter().filter(|s| s.addr < end && start < s.end()) {
            let lo = (start.max(s.addr) - s.addr) / s.page;
            let hi = (end.min(s.end()) - s.addr).div_ceil(s.page);
            for p in lo..hi {
                let state = &self.states[s.first + p];
                let mut v = state.load(Ordering::Acquire);
                loop {
                    let (next, counts) = if v & CLAIMED != 0 {
                        if v & flag != 0 {
                            break;
                        }
                        (v | flag, true)
                    } else if v == to || v == GONE || (to == ZERO && v == ZERO) {
                        break;
                    } else {
                        (to, true)
                    };
                    match state.compare_exchange(v, next, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => {
                            if v == PENDING {
                                self.remaining.fetch_sub(1, Ordering::AcqRel);
                            }
                            if counts {
                                changed += 1;
                            }
                            break;
                        }
                        Err(now) => v = now,
                    }
                }
            }
        }
        changed
    }

    /// `UFFD_EVENT_REMOVE`: the pages of `[start, end)` were dropped; the
    /// next fault on each maps zeros, and the populator leaves them
    /// unbacked. Called under [`order`](Self::order).
    pub fn remove(&self, start: usize, end: usize) {
        let n = self.set_range(start, end, ZERO);
        Counters::add(&self.counters.removed_pages, n);
    }

    /// `UFFD_EVENT_UNMAP`: the pages of `[start, end)` are gone. Called
    /// under [`order`](Self::order).
    pub fn unmap(&self, start: usize, end: usize) {
        let n = self.set_range(start, end, GONE);
        Counters::add(&self.counters.unmapped_pages, n);
    }

    /// `UFFD_EVENT_REMAP`: `[from, from + len)` now lives at `to`; its pages
    /// keep their state. Called under [`order`](Self::order); resolutions
    /// that looked an address up before it start again.
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
            // The kernel moved the registration with the pages; by now the
            // process may have moved the range again (its next REMAP event
            // follows), so no system call that needs it still there.
            let Some(reg) = s.reg.remapped(from, to, len) else {
                i += 1;
                continue;
            };
            moved.reg = reg;
            // The kernel moves one whole registered mapping, so every page
            // of it is live: one given up on as unmapped (the kernel said
            // ENOENT for long with this event unread) is pending again.
            for state in &self.states[moved.first..moved.first + moved.pages()] {
                if state
                    .compare_exchange(GONE, PENDING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.remaining.fetch_add(1, Ordering::AcqRel);
                }
            }
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
        self.moves.fetch_add(1, Ordering::AcqRel);
        Counters::add(&self.counters.remaps, 1);
        Ok(())
    }

    /// `UFFD_EVENT_FORK`, while it is applied (under [`order`](Self::order),
    /// in event order): what the child's state is built from, into a
    /// capture mapped beforehand (a new one, with `mmap`, only when more
    /// forks than [`FORK_SPARES`] wait to be set up).
    ///
    /// # Errors
    ///
    /// The `mmap` errno when a new capture was needed and could not be
    /// mapped.
    ///
    /// The child has what the parent had at the fork, and that is what the
    /// state says now: from the fork until its event is read the kernel
    /// fails every resolution with `EAGAIN`, a resolution in flight when the
    /// fork began finished before the address space was copied (the fork
    /// waits for it), and events before the FORK were applied before it. So
    /// the child's states are the parent's, with claims in flight given back
    /// to what they were claimed from (their ioctl will fail). A resolved
    /// page the child lacks (a `MADV_WIPEONFORK` range) reads as zeros, as
    /// the kernel would give it.
    pub fn capture_fork(&self) -> Result<ForkCapture, Error> {
        let spare = self
            .fork_spares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let spans = self.spans.read().unwrap_or_else(|e| e.into_inner());
        let mut cap = match spare {
            Some(cap) if cap.spans.capacity() >= spans.len() => cap,
            // More forks in flight than spares, or more spans than they
            // have room for: `mmap`, never the allocator (see `mapbuf`).
            _ => ForkCapture::with_room(self.states.len(), spans.capacity())?,
        };
        let fits = cap.spans.set(&spans);
        debug_assert!(fits, "a capture with room for every span");
        for (to, from) in cap.states.as_mut_slice().iter_mut().zip(self.states.iter()) {
            let v = from.load(Ordering::Acquire);
            *to = if v & UNMAPPED != 0 {
                GONE
            } else if v & REMOVED != 0 {
                ZERO
            } else {
                v & BASE
            };
        }
        cap.source = Some(self.source.clone());
        cap.zeros = Some(self.zeros.clone());
        cap.predicted = self.predicted.clone();
        cap.adaptive = self.adaptive;
        // Arc clones: nothing is allocated here.
        cap.replay = self.replay.clone();
        cap.chunk = self.chunk;
        cap.counters = Some(self.counters.clone());
        cap.spares = Some(self.fork_spares.clone());
        Counters::add(&self.counters.forks, 1);
        Ok(cap)
    }

    /// The child's resolver, serving the ranges registered with `child`
    /// from `cap` (taken by [`capture_fork`](Self::capture_fork) when its
    /// FORK event was applied). Allocates: not for a handler thread. Puts
    /// a fresh capture back among the parent's spares.
    pub fn for_child(child: Uffd, mut cap: ForkCapture) -> Result<Resolver, Error> {
        let mut spans = Vec::with_capacity(cap.spans.capacity());
        for s in cap.spans.as_slice() {
            spans.push(Span {
                reg: child.inherit(&s.reg)?,
                ..*s
            });
        }
        let captured = cap.states.as_slice();
        let states: Box<[AtomicU8]> = captured.iter().map(|&v| AtomicU8::new(v)).collect();
        let remaining = captured.iter().filter(|&&v| v == PENDING).count();
        let (Some(source), Some(zeros), Some(counters)) =
            (cap.source.take(), cap.zeros.take(), cap.counters.take())
        else {
            return Err(Error::Config("a fork capture that was never taken".into()));
        };
        if let Some(parent_spares) = cap.spares.take() {
            // A spare for the parent's next fork: this one, now copied.
            // Made outside the pool's lock, which a handler thread takes.
            let fresh = ForkCapture::with_room(cap.states.len(), cap.spans.capacity())?;
            let mut pool = parent_spares.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < FORK_SPARES {
                pool.push(fresh);
            }
        }
        let fork_spares = fork_spares(&child, states.len(), spans.capacity());
        let movable = child
            .features()
            .contains(userfault::uffd::Features::EVENT_REMAP);
        let mapping = direct_mapping(&*source);
        let mut r = Resolver {
            uffd: Arc::new(child),
            source,
            spans: RwLock::new(spans),
            states,
            remaining: AtomicUsize::new(remaining),
            chunk: cap.chunk,
            counters,
            recorder: None,
            zeros,
            predicted: cap.predicted.take(),
            adaptive: cap.adaptive,
            replay: cap.replay.take(),
            order: OrderLock::default(),
            moves: AtomicU64::new(0),
            fork_spares,
            movable,
            mapping,
            one_page: false,
            sole_reader: false,
            stopping: AtomicBool::new(false),
        };
        r.choose_paths();
        Ok(r)
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

/// The fork captures a resolver keeps ready: [`FORK_SPARES`] when its
/// userfaultfd reports forks, none otherwise.
fn fork_spares(uffd: &Uffd, pages: usize, spans: usize) -> Arc<Mutex<Vec<ForkCapture>>> {
    let n = if uffd
        .features()
        .contains(userfault::uffd::Features::EVENT_FORK)
    {
        FORK_SPARES
    } else {
        0
    };
    let mut pool = Vec::with_capacity(FORK_SPARES);
    // Best effort: a spare that cannot be mapped now is mapped when a
    // FORK needs it (and the error reported then).
    pool.extend((0..n).filter_map(|_| ForkCapture::with_room(pages, spans).ok()));
    Arc::new(Mutex::new(pool))
}

/// The address of `source`'s own mapping of its first byte, when one
/// mapping holds all of it.
fn direct_mapping(source: &dyn PageSource) -> Option<usize> {
    let len = usize::try_from(source.len()).ok()?;
    source.mapped(0, len).map(|m| m.addr() as usize)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32};
    use std::time::{Duration, Instant};

    /// Readers share the lock, a writer has it alone, and every thread gets
    /// through, with holds shorter and longer than the writers' spin.
    #[test]
    fn order_lock_excludes_and_lets_everyone_through() {
        const WRITER: u32 = 1 << 20;
        let lock = OrderLock::default();
        let inside = AtomicU32::new(0);
        std::thread::scope(|s| {
            for t in 0..6 {
                let (lock, inside) = (&lock, &inside);
                s.spawn(move || {
                    for i in 0..300 {
                        if (t + i) % 3 == 0 {
                            let _w = lock.write();
                            assert_eq!(inside.fetch_add(WRITER, Ordering::SeqCst), 0);
                            if i % 7 == 0 {
                                std::thread::sleep(Duration::from_micros(120));
                            }
                            inside.fetch_sub(WRITER, Ordering::SeqCst);
                        } else {
                            let _r = lock.read();
                            assert!(inside.fetch_add(1, Ordering::SeqCst) < WRITER);
                            if i % 5 == 0 {
                                std::thread::sleep(Duration::from_micros(100));
                            }
                            inside.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert_eq!(lock.state.load(Ordering::SeqCst), 0, "released");
        assert_eq!(lock.writers_waiting.load(Ordering::SeqCst), 0);
    }

    /// A writer behind readers whose holds overlap (so that the count of
    /// readers never drops to zero by itself) still gets in: new readers
    /// hold back once it sleeps.
    #[test]
    fn order_lock_writer_gets_in_behind_overlapping_readers() {
        let lock = OrderLock::default();
        let stop = AtomicBool::new(false);
        let got = AtomicBool::new(false);
        let waited = std::thread::scope(|s| {
            for _ in 0..3 {
                let (lock, stop) = (&lock, &stop);
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _r = lock.read();
                        std::thread::sleep(Duration::from_micros(300));
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(20));
            let t0 = Instant::now();
            s.spawn(|| {
                let _w = lock.write();
                got.store(true, Ordering::SeqCst);
            });
            while !got.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(1));
            }
            stop.store(true, Ordering::Relaxed);
            t0.elapsed()
        });
        assert!(got.load(Ordering::SeqCst), "the writer never got in");
        eprintln!("order lock: the writer got in after {waited:?}");
    }
}
