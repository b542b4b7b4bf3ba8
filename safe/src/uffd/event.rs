//! Reading events: `read(2)` of `uffd_msg` records into a caller-owned
//! buffer, decoded into typed [`Event`]s; readiness with `poll(2)`.

use std::cell::Cell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use uffd_sys as sys;

use super::open::{KernelApi, Origin};
use super::{FaultFlags, Features, Uffd};
use crate::error::rustix_errno;
use crate::error::{Errno, Error, Result};

/// Size of one `struct uffd_msg`.
const MSG: usize = std::mem::size_of::<sys::uffd_msg>();

/// Room for a batch of raw event records, reused across reads so reading
/// allocates nothing.
#[derive(Debug, Clone)]
pub struct EventBuffer {
    msgs: Box<[[u8; MSG]]>,
    filled: usize,
    /// What decoding needs of the userfaultfd last read into this buffer
    /// (rewritten only when a different one reads into it).
    source: Source,
}

impl EventBuffer {
    /// A buffer for up to `capacity` events per read (at least one).
    pub fn with_capacity(capacity: usize) -> EventBuffer {
        EventBuffer {
            msgs: vec![[0; MSG]; capacity.max(1)].into_boxed_slice(),
            filled: 0,
            source: Source {
                // Userfaultfd ids start at 1: the first read always sets it.
                id: 0,
                features: Features::empty(),
                api: KernelApi::new(Features::empty(), crate::uffd::Ioctls::empty()),
                user_mode_only: false,
            },
        }
    }

    /// How many events one read can return.
    pub fn capacity(&self) -> usize {
        self.msgs.len()
    }
}

/// Kind of a page fault: which registered mode raised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The page is not present (`UFFDIO_REGISTER_MODE_MISSING`): resolve
    /// with COPY, ZEROPAGE, MOVE, POISON, or fill the backing file and
    /// CONTINUE.
    Missing,
    /// The page is in the page cache but not mapped
    /// (`UFFD_PAGEFAULT_FLAG_MINOR`): resolve with CONTINUE.
    Minor,
    /// A write to a write-protected page (`UFFD_PAGEFAULT_FLAG_WP`):
    /// resolve by removing the protection.
    WriteProtect,
    /// A read or a write of a read-write-protected page
    /// (`UFFD_PAGEFAULT_FLAG_RWP`, Linux 7.3): resolve by un-protecting it
    /// ([`Uffd::rwprotect`] without [`RwprotectMode::RWP`](super::RwprotectMode::RWP)),
    /// never by COPY or CONTINUE — the page is present and holds its data.
    Rwp,
    /// A fault whose flags carry a bit this crate does not know and none it
    /// does (besides `WRITE`): a mode of a newer kernel. The raw bits are in
    /// the event's `flags`; such a fault can only be woken.
    Unknown,
}

impl FaultKind {
    /// The kind of a fault with these flags. The mode bits decide (WP,
    /// MINOR, RWP); without one, a fault is MISSING only when no unknown
    /// bit is set either.
    #[inline]
    pub fn from_flags(flags: FaultFlags) -> FaultKind {
        // MISSING (no bit but WRITE) first: the one test on the path of a
        // demand-paging handler.
        if flags.bits() & !FaultFlags::WRITE.bits() == 0 {
            FaultKind::Missing
        } else if flags.contains(FaultFlags::WP) {
            FaultKind::WriteProtect
        } else if flags.contains(FaultFlags::MINOR) {
            FaultKind::Minor
        } else if flags.contains(FaultFlags::RWP) {
            FaultKind::Rwp
        } else {
            FaultKind::Unknown
        }
    }
}

/// One event read from a userfaultfd.
///
/// # Page faults are woken unless taken
///
/// The `read(2)` that returned a page fault took it from the kernel, which
/// will not report it again while its thread waits. So a
/// [`PageFault`](Event::PageFault) is *taken* by whoever answers for it —
/// [`Region::fault`](crate::resolve::Region::fault) and
/// [`AnyRegion::fault`](crate::resolve::AnyRegion::fault) take the events
/// they match; a handler that resolves faults itself through [`Uffd`], or
/// hands them to other threads, calls [`take`](Event::take) — and an event
/// dropped untaken (matched to no range, an unexpected kind, a `continue`
/// or a panic in the handler loop) wakes its page (`UFFDIO_WAKE`): the
/// thread retries the access and, if the page is still missing, faults
/// again, a new event, instead of staying blocked. A wake of a page that
/// is already resolved changes nothing.
///
/// ```no_run
/// use userfault::uffd::{Event, EventBuffer, Uffd};
///
/// # fn f(uffd: &Uffd) -> userfault::Result<()> {
/// let mut buf = EventBuffer::with_capacity(16);
/// let mut later = Vec::new();
/// for event in uffd.read_events(&mut buf)? {
///     if let Event::PageFault { address, .. } = event {
///         // This handler resolves the fault after the batch (or on
///         // another thread): it answers for it now.
///         event.take();
///         later.push(address);
///     }
///     // Any other page fault would be woken here, when `event` drops.
/// }
/// # let _ = later;
/// # Ok(())
/// # }
/// ```
///
/// # Keeping the loop cheap
///
/// An event that never leaves the handler loop lives in registers. Taking
/// its address for something opaque — `panic!("{event:?}")` in an
/// "unexpected event" arm is the usual one — keeps every event in memory,
/// on the resolution path too (about 30 instructions per fault, a fifth of
/// a resolution's user-space work). Format it in a `#[cold]` function that
/// takes the event by value instead:
///
/// ```
/// use userfault::uffd::Event;
///
/// #[cold]
/// #[inline(never)]
/// fn unexpected(event: Event<'_>) -> ! {
///     panic!("unexpected event {event:?}")
/// }
/// # let _ = unexpected;
/// ```
#[derive(Debug)]
pub enum Event<'a> {
    /// `UFFD_EVENT_PAGEFAULT`: a thread is waiting on a fault in a
    /// registered range.
    PageFault {
        /// The faulting address: rounded down to the page unless
        /// [`Features::EXACT_ADDRESS`] was enabled.
        address: usize,
        /// Which mode the fault is for. A fault flag this crate does not
        /// know is kept in `flags`.
        kind: FaultKind,
        /// True for a write access.
        write: bool,
        /// The faulting thread's id (as `gettid(2)` in the faulting
        /// process's pid namespace), when [`Features::THREAD_ID`] was
        /// enabled; `None` otherwise.
        thread_id: Option<u32>,
        /// The raw `UFFD_PAGEFAULT_FLAG_*` bits.
        flags: FaultFlags,
        /// [`Uffd::id`] of the userfaultfd the event was read from: a typed
        /// region only takes faults of its own userfaultfd (a fork child's
        /// faults at the same addresses are not its own).
        uffd_id: u64,
        /// Whether the fault was taken; its page is woken when the event is
        /// dropped untaken (see [`Event`]).
        pending: Pending<'a>,
    },
    /// `UFFD_EVENT_FORK`: a process with registered ranges forked; the
    /// child's copies of them are registered with `uffd`, which receives
    /// the child's faults (resolve them with registrations from
    /// [`Uffd::inherit`]). Dropping `uffd` lets the child's faults be
    /// handled by the kernel (zero-filled).
    ///
    /// The forking thread waits inside `fork()` until this event is read —
    /// and glibc's `fork()` holds the malloc locks while it waits. The
    /// thread that reads events must therefore already be running, and
    /// must not allocate before it has read the event, whenever a
    /// registered process may fork. Reading with [`Uffd::read_events`] or
    /// [`Uffd::wait_events`] into an existing [`EventBuffer`] allocates
    /// nothing, and neither does decoding this event.
    Fork {
        /// The child's userfaultfd ([`Origin::Fork`]), owned. The kernel
        /// gives it the `O_CLOEXEC` and `O_NONBLOCK` the parent's
        /// userfaultfd was created with: it is close-on-exec when the
        /// parent's is (the default).
        uffd: Uffd,
    },
    /// `UFFD_EVENT_REMAP`: `mremap(2)` moved a registered range; the
    /// registration moved with it (register the new range again to get its
    /// [`Registration`](super::Registration); that changes nothing in the
    /// kernel). Until this event is read, `mremap` waits and resolution
    /// ioctls fail with `EAGAIN`.
    Remap {
        /// The old start address.
        from: usize,
        /// The new start address.
        to: usize,
        /// The length moved.
        len: usize,
    },
    /// `UFFD_EVENT_REMOVE`: `madvise(MADV_DONTNEED / MADV_REMOVE)` dropped
    /// pages of a registered range, which fault as missing again. Until
    /// this event is read, `madvise` waits and resolution ioctls fail with
    /// `EAGAIN`.
    Remove {
        /// First address.
        start: usize,
        /// End (exclusive).
        end: usize,
    },
    /// `UFFD_EVENT_UNMAP`: `munmap(2)` (or a mapping replaced over it)
    /// removed a registered range; one event per call, for the range the
    /// call named. Until it is read, `munmap` waits and resolution ioctls
    /// fail with `EAGAIN`.
    Unmap {
        /// First address.
        start: usize,
        /// End (exclusive).
        end: usize,
    },
    /// An event code this crate does not know, kept whole.
    Unknown {
        /// The `event` byte.
        event: u8,
        /// The whole `struct uffd_msg`.
        raw: [u8; MSG],
    },
}

/// A page fault's waiting thread, as part of its [`Event::PageFault`]:
/// woken (`UFFDIO_WAKE` of the fault's page) when the event is dropped
/// without having been [taken](Event::take).
#[derive(Debug)]
pub struct Pending<'a> {
    /// The userfaultfd the fault was read from; `None` once the event was
    /// detached from it ([`Event::into_taken`]).
    fd: Option<BorrowedFd<'a>>,
    /// The faulting address as reported.
    address: u64,
    taken: Cell<bool>,
}

impl Pending<'_> {
    /// True once the fault was taken.
    #[inline(always)]
    pub fn is_taken(&self) -> bool {
        self.taken.get()
    }

    #[inline(always)]
    pub(crate) fn take(&self) {
        self.taken.set(true);
    }
}

impl Drop for Pending<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        if !self.taken.get()
            && let Some(fd) = self.fd
        {
            wake_page(fd, self.address);
        }
    }
}

/// `UFFDIO_WAKE` of the page holding `address`: the thread of a fault
/// nobody answers for retries its access.
#[cold]
#[inline(never)]
fn wake_page(fd: BorrowedFd<'_>, address: u64) {
    let page = crate::sys::page_size() as u64;
    let mut range = sys::uffdio_range {
        start: address & !(page - 1),
        len: page,
    };
    // SAFETY: UFFDIO_WAKE reads one `uffdio_range` (`range`) and only wakes
    // threads waiting on faults of this userfaultfd. A failure leaves
    // nothing to undo.
    let _ = unsafe { crate::sys::ioctl_mut(fd, sys::UFFDIO_WAKE, &mut range) };
}

impl Event<'_> {
    /// Takes a page fault: the caller answers for it — resolves or wakes it
    /// itself ([`Uffd::copy_or_wake`], …, [`Uffd::wake`]), now or on
    /// another thread — so dropping the event no longer wakes its page.
    /// True for a page fault; other events have nothing to take.
    ///
    /// [`Region::fault`](crate::resolve::Region::fault) and
    /// [`AnyRegion::fault`](crate::resolve::AnyRegion::fault) take the
    /// events they match.
    #[inline(always)]
    pub fn take(&self) -> bool {
        match self {
            Event::PageFault { pending, .. } => {
                pending.take();
                true
            }
            _ => false,
        }
    }

    /// [Takes](Self::take) a page fault and returns the event free of the
    /// borrow of its userfaultfd and buffer: for a handler that keeps
    /// events past their batch or sends them to another thread, which then
    /// answers for each fault. Other events are returned as they are.
    pub fn into_taken(self) -> Event<'static> {
        match self {
            Event::PageFault {
                address,
                kind,
                write,
                thread_id,
                flags,
                uffd_id,
                pending,
            } => {
                pending.take();
                Event::PageFault {
                    address,
                    kind,
                    write,
                    thread_id,
                    flags,
                    uffd_id,
                    pending: Pending {
                        fd: None,
                        address: pending.address,
                        taken: Cell::new(true),
                    },
                }
            }
            Event::Fork { uffd } => Event::Fork { uffd },
            Event::Remap { from, to, len } => Event::Remap { from, to, len },
            Event::Remove { start, end } => Event::Remove { start, end },
            Event::Unmap { start, end } => Event::Unmap { start, end },
            Event::Unknown { event, raw } => Event::Unknown { event, raw },
        }
    }

    /// A page fault that was not read from a userfaultfd here (one
    /// recorded or received from elsewhere, or a test's): already taken and
    /// detached, so dropping it wakes nothing; `kind` and `write` are
    /// decoded from `flags` as for a fault that was read.
    pub fn detached_fault(address: usize, flags: FaultFlags, uffd_id: u64) -> Event<'static> {
        Event::PageFault {
            address,
            kind: FaultKind::from_flags(flags),
            write: flags.contains(FaultFlags::WRITE),
            thread_id: None,
            flags,
            uffd_id,
            pending: Pending {
                fd: None,
                address: address as u64,
                taken: Cell::new(true),
            },
        }
    }

    /// True for a page fault that was [taken](Self::take) (dropping it then
    /// wakes nobody); false for an untaken one and for other events.
    pub fn is_taken(&self) -> bool {
        matches!(self, Event::PageFault { pending, .. } if pending.is_taken())
    }
}

/// What decoding a message needs to know about the userfaultfd it came
/// from.
#[derive(Debug, Clone, Copy)]
struct Source {
    id: u64,
    features: Features,
    api: KernelApi,
    user_mode_only: bool,
}

/// The events of one read, decoded as they are iterated.
///
/// Each record is decoded once. Fork events carry a descriptor the kernel
/// installed during the read; dropping `Events` closes the descriptors of
/// fork events not iterated, and empties the buffer.
///
/// # Early drops
///
/// The `read(2)` that produced these events has already taken them from
/// the kernel: it considers every page fault in the batch delivered and
/// will not report it again. Dropping `Events` before the last one (a
/// `break`, a `?` or a panic in the loop that handles them) therefore wakes
/// the thread of every page fault not yet iterated (`UFFDIO_WAKE` of its
/// page): it retries the access and, if the page is still missing, faults
/// again — a new event — instead of staying blocked. A page fault that was
/// iterated is woken in the same way when its [`Event`] is dropped without
/// having been taken (by a typed region that matched it, or
/// [`Event::take`]): a fault matched to no range is never left waiting.
///
/// The other events are acknowledged by the read as well (the `mremap`,
/// `madvise`, `munmap` or `fork` they report goes ahead), so dropping one
/// unread loses what it reported, and closes a fork event's descriptor.
#[must_use = "events not iterated are acknowledged unhandled (page faults are woken to fault again)"]
#[derive(Debug)]
pub struct Events<'a> {
    buf: &'a mut EventBuffer,
    next: usize,
    /// The userfaultfd read from, to wake faults dropped un-iterated.
    fd: BorrowedFd<'a>,
}

/// A page fault read from the userfaultfd and already
/// [taken](Event::take): returned by [`Events::take_fault`], for a handler
/// that collects fault addresses and answers for each fault itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakenFault {
    /// The faulting address as the kernel reports it (not page-aligned
    /// with `UFFD_FEATURE_EXACT_ADDRESS`).
    pub address: usize,
    /// The record's `UFFD_PAGEFAULT_FLAG_*` bits.
    pub flags: FaultFlags,
}

impl TakenFault {
    /// Which kind of fault it is.
    #[inline]
    pub fn kind(&self) -> FaultKind {
        FaultKind::from_flags(self.flags)
    }

    /// True for a write access (`UFFD_PAGEFAULT_FLAG_WRITE`).
    #[inline]
    pub fn write(&self) -> bool {
        self.flags.contains(FaultFlags::WRITE)
    }
}

impl Events<'_> {
    /// The next record if it is a page fault, [taken](Event::take): the
    /// caller answers for it — resolves or wakes it — as for a taken
    /// [`Event::PageFault`]. `None` at the end of the batch and when the
    /// next record is another event, which [`next`](Iterator::next) then
    /// returns: a loop that takes faults this way and hands the rest to
    /// `next` sees every record once, in order.
    ///
    /// Decodes only the address and flags, for the fault path of a
    /// handler that keeps nothing else of the record.
    #[inline(always)]
    pub fn take_fault(&mut self) -> Option<TakenFault> {
        let msg = self.buf.msgs.get(self.next..self.buf.filled)?.first()?;
        if msg[0] != sys::UFFD_EVENT_PAGEFAULT {
            return None;
        }
        self.next += 1;
        Some(TakenFault {
            address: u64_at(msg, ARG1) as usize,
            flags: FaultFlags::from_bits_retain(u64_at(msg, ARG0)),
        })
    }

    /// Events not yet iterated.
    pub fn len(&self) -> usize {
        self.buf.filled - self.next
    }

    /// True when no events are left (for a non-blocking read: none were
    /// pending).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> Iterator for Events<'a> {
    type Item = Event<'a>;

    #[inline(always)]
    fn next(&mut self) -> Option<Event<'a>> {
        if self.next >= self.buf.filled {
            return None;
        }
        let msg = &self.buf.msgs[self.next];
        self.next += 1;
        if msg[0] != sys::UFFD_EVENT_PAGEFAULT {
            return Some(decode_other(msg, &self.buf.source));
        }
        Some(decode_fault(msg, &self.buf.source, self.fd))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len(), Some(self.len()))
    }
}

impl ExactSizeIterator for Events<'_> {}

impl Drop for Events<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.next < self.buf.filled {
            self.drop_rest();
        }
        self.buf.filled = 0;
    }
}

impl Events<'_> {
    /// Records left when `Events` is dropped early: each page fault's
    /// thread is woken (it faults again if the page is still missing) and
    /// each other event is decoded and dropped, which closes a fork event's
    /// descriptor. No record is decoded twice.
    #[cold]
    #[inline(never)]
    fn drop_rest(&mut self) {
        while self.next < self.buf.filled {
            let msg = self.buf.msgs[self.next];
            self.next += 1;
            if msg[0] == sys::UFFD_EVENT_PAGEFAULT {
                wake_page(self.fd, u64_at(&msg, ARG1));
            } else {
                drop(decode_other(&msg, &self.buf.source));
            }
        }
    }
}

#[inline]
fn u64_at(msg: &[u8; MSG], offset: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&msg[offset..offset + 8]);
    u64::from_ne_bytes(b)
}

#[inline]
fn u32_at(msg: &[u8; MSG], offset: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&msg[offset..offset + 4]);
    u32::from_ne_bytes(b)
}

// Offsets inside `struct uffd_msg` (the payload starts at 8).
const ARG0: usize = 8;
const ARG1: usize = 16;
const ARG2: usize = 24;

/// A `UFFD_EVENT_PAGEFAULT` record.
#[inline]
fn decode_fault<'a>(msg: &[u8; MSG], source: &Source, fd: BorrowedFd<'a>) -> Event<'a> {
    let flags = FaultFlags::from_bits_retain(u64_at(msg, ARG0));
    let kind = FaultKind::from_flags(flags);
    let address = u64_at(msg, ARG1);
    Event::PageFault {
        address: address as usize,
        kind,
        write: flags.contains(FaultFlags::WRITE),
        thread_id: source
            .features
            .contains(Features::THREAD_ID)
            .then(|| u32_at(msg, ARG2)),
        flags,
        uffd_id: source.id,
        pending: Pending {
            fd: Some(fd),
            address,
            taken: Cell::new(false),
        },
    }
}

/// Every event but a page fault: rare next to page faults, so kept out of
/// the page-fault path.
#[cold]
#[inline(never)]
fn decode_other(msg: &[u8; MSG], source: &Source) -> Event<'static> {
    let event = msg[0];
    match event {
        sys::UFFD_EVENT_FORK => {
            // SAFETY: this record came from a read of this process, and
            // each record is decoded once (`Events` only moves forward and
            // empties the buffer when dropped), so the descriptor is owned
            // by nobody yet.
            match unsafe { crate::sys::uffd::owned_from_fork_event(u32_at(msg, ARG0)) } {
                Some(fd) => Event::Fork {
                    uffd: child(fd, source),
                },
                None => Event::Unknown { event, raw: *msg },
            }
        }
        sys::UFFD_EVENT_REMAP => Event::Remap {
            from: u64_at(msg, ARG0) as usize,
            to: u64_at(msg, ARG1) as usize,
            len: u64_at(msg, ARG2) as usize,
        },
        sys::UFFD_EVENT_REMOVE => Event::Remove {
            start: u64_at(msg, ARG0) as usize,
            end: u64_at(msg, ARG1) as usize,
        },
        sys::UFFD_EVENT_UNMAP => Event::Unmap {
            start: u64_at(msg, ARG0) as usize,
            end: u64_at(msg, ARG1) as usize,
        },
        _ => Event::Unknown { event, raw: *msg },
    }
}

/// The child's userfaultfd has its parent's context features (the kernel
/// copies them).
fn child(fd: OwnedFd, source: &Source) -> Uffd {
    Uffd::from_parts(
        fd,
        Origin::Fork,
        source.features,
        source.api,
        source.user_mode_only,
        Some(source.id),
        // Not known without asking: the first poll reads the flags.
        false,
    )
}

impl Uffd {
    /// `read(uffd, buf, …)`—reads as many pending events as `buf` holds and
    /// returns them for iteration.
    ///
    /// On a blocking userfaultfd this waits for at least one event; on a
    /// non-blocking one it returns no events when none are pending
    /// (`EAGAIN`). `EINTR` is retried. Nothing is allocated.
    ///
    /// The read takes every event in the batch from the kernel, which will
    /// not report those faults again: page faults left un-iterated when the
    /// [`Events`] are dropped (a `break` or `?` in the handler loop) are
    /// woken so that their threads fault again; see [`Events`].
    ///
    /// # Errors
    ///
    /// [`Error::Os`] with the `read` errno (`EINVAL` if the userfaultfd
    /// was never negotiated, which [`Uffd`] rules out).
    ///
    /// # References
    ///
    /// - [`userfaultfd(2)`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html) ("Reading from the userfaultfd structure")
    #[doc(alias = "read")]
    #[inline(always)]
    pub fn read_events<'b>(&'b self, buf: &'b mut EventBuffer) -> Result<Events<'b>> {
        self.read_raw(buf).or_else(|e| {
            if e == Errno::EAGAIN {
                buf.filled = 0;
                Ok(())
            } else {
                Err(Error::os("read", e))
            }
        })?;
        Ok(self.events(buf))
    }

    /// One `read(2)` into `buf`; `EINTR` retried, `EAGAIN` returned.
    #[inline]
    pub(super) fn read_raw(&self, buf: &mut EventBuffer) -> Result<(), Errno> {
        buf.filled = 0;
        loop {
            match rustix::io::read(self.as_fd(), buf.msgs.as_flattened_mut()) {
                Ok(n) => {
                    buf.filled = n / MSG;
                    return Ok(());
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(rustix_errno(e)),
            }
        }
    }

    #[inline]
    pub(super) fn events<'b>(&'b self, buf: &'b mut EventBuffer) -> Events<'b> {
        if buf.source.id != self.id() {
            buf.source = Source {
                id: self.id(),
                features: self.features(),
                api: self.kernel_api(),
                user_mode_only: self.is_user_mode_only(),
            };
        }
        Events {
            buf,
            next: 0,
            fd: self.as_fd(),
        }
    }

    /// `poll({uffd, POLLIN}, timeout)`—waits until an event can be read or
    /// `timeout` passes (`None`: no limit); true when readable. `EINTR` is
    /// retried with the time left.
    ///
    /// Readable does not promise an event: a fault can be resolved (by
    /// another handler thread) between the poll and the read, which then
    /// returns none.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] on a blocking userfaultfd: the kernel
    /// reports `POLLERR` for those (`poll` never guarantees that `read`
    /// will not block); use [`UffdBuilder::non_blocking`](super::UffdBuilder::non_blocking)
    /// or [`set_nonblocking`](Self::set_nonblocking) (the mode set through
    /// those is remembered; a descriptor of unknown mode is asked with
    /// `fcntl` until it is non-blocking). [`Error::Os`] from `fcntl` or
    /// `poll`.
    ///
    /// # References
    ///
    /// - [`poll(2)`](https://man7.org/linux/man-pages/man2/poll.2.html), [`userfaultfd(2)`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html)
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        use rustix::event::{PollFd, PollFlags, Timespec};
        if !self.known_nonblocking()? {
            return Err(Error::invalid(
                "poll",
                "a blocking userfaultfd always polls as POLLERR: create it non-blocking or call \
                 set_nonblocking(true)",
            ));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ts = left.map(|l| Timespec {
                tv_sec: l.as_secs().try_into().unwrap_or(i64::MAX),
                tv_nsec: l.subsec_nanos().into(),
            });
            let mut fds = [PollFd::new(self, PollFlags::IN)];
            match rustix::event::poll(&mut fds, ts.as_ref()) {
                Ok(0) => return Ok(false),
                Ok(_) => {
                    let revents = fds[0].revents();
                    if revents.intersects(PollFlags::ERR | PollFlags::NVAL) {
                        return Err(self.poll_error(revents.contains(PollFlags::NVAL)));
                    }
                    return Ok(revents.contains(PollFlags::IN));
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(Error::os("poll", rustix_errno(e))),
            }
        }
    }

    /// The error of a poll that reported `POLLERR` (or `POLLNVAL`).
    #[cold]
    fn poll_error(&self, nval: bool) -> Error {
        if nval {
            return Error::invalid("poll", "the userfaultfd polled as POLLNVAL (not open)");
        }
        // The kernel's only POLLERR for a userfaultfd: it is blocking.
        self.nonblocking
            .store(false, std::sync::atomic::Ordering::Relaxed);
        Error::invalid(
            "poll",
            "the userfaultfd polled as POLLERR because it is blocking (O_NONBLOCK was cleared \
             without set_nonblocking): call set_nonblocking(true)",
        )
    }

    /// [`poll`](Self::poll) for up to `timeout`, then
    /// [`read_events`](Self::read_events): the events that arrived in
    /// time, possibly none.
    ///
    /// Page faults left un-iterated when the [`Events`] are dropped are
    /// woken, as for [`read_events`](Self::read_events).
    ///
    /// # Errors
    ///
    /// As [`poll`](Self::poll) (the userfaultfd must be non-blocking) and
    /// [`read_events`](Self::read_events).
    pub fn wait_events<'b>(
        &'b self,
        buf: &'b mut EventBuffer,
        timeout: Option<Duration>,
    ) -> Result<Events<'b>> {
        if !self.poll(timeout)? {
            buf.filled = 0;
            return Ok(self.events(buf));
        }
        self.read_events(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One record decoded the way `Events::next` decodes it.
    fn decode(msg: &[u8; MSG], source: &Source) -> Event<'static> {
        if msg[0] == sys::UFFD_EVENT_PAGEFAULT {
            let stdin: &'static std::io::Stdin = Box::leak(Box::new(std::io::stdin()));
            let event = decode_fault(msg, source, stdin.as_fd());
            assert!(!event.is_taken(), "a decoded fault starts untaken");
            // Taken: dropping it wakes nothing (stdin is no userfaultfd).
            assert!(event.take());
            event
        } else {
            decode_other(msg, source)
        }
    }

    fn source(features: Features) -> Source {
        Source {
            id: 1,
            features,
            api: KernelApi::new(Features::empty(), crate::uffd::Ioctls::empty()),
            user_mode_only: false,
        }
    }

    fn msg(event: u8, words: [u64; 3]) -> [u8; MSG] {
        let mut m = [0; MSG];
        m[0] = event;
        for (i, w) in words.iter().enumerate() {
            m[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_ne_bytes());
        }
        m
    }

    #[test]
    fn page_faults_decode_kind_write_and_thread_id() {
        let wp_write = msg(
            sys::UFFD_EVENT_PAGEFAULT,
            [
                sys::UFFD_PAGEFAULT_FLAG_WP | sys::UFFD_PAGEFAULT_FLAG_WRITE | 1 << 7,
                0x7000_1234,
                77,
            ],
        );
        match decode(&wp_write, &source(Features::THREAD_ID)) {
            Event::PageFault {
                address,
                kind,
                write,
                thread_id,
                flags,
                ..
            } => {
                assert_eq!(
                    (address, kind, write),
                    (0x7000_1234, FaultKind::WriteProtect, true)
                );
                assert_eq!(thread_id, Some(77));
                assert_eq!(flags.bits() & (1 << 7), 1 << 7, "unknown flag kept");
            }
            other => panic!("{other:?}"),
        }
        let minor = msg(
            sys::UFFD_EVENT_PAGEFAULT,
            [sys::UFFD_PAGEFAULT_FLAG_MINOR, 0x1000, 77],
        );
        match decode(&minor, &source(Features::empty())) {
            Event::PageFault {
                kind,
                write,
                thread_id,
                ..
            } => assert_eq!((kind, write, thread_id), (FaultKind::Minor, false, None)),
            other => panic!("{other:?}"),
        }
        // A read of a read-write-protected page: RWP, not MISSING.
        let rwp = msg(
            sys::UFFD_EVENT_PAGEFAULT,
            [sys::UFFD_PAGEFAULT_FLAG_RWP, 0x2000, 0],
        );
        match decode(&rwp, &source(Features::empty())) {
            Event::PageFault { kind, write, .. } => {
                assert_eq!((kind, write), (FaultKind::Rwp, false));
            }
            other => panic!("{other:?}"),
        }
        // An unknown flag alone (or with WRITE) is an unknown fault, shown
        // as hex, not a MISSING one.
        let strange = msg(
            sys::UFFD_EVENT_PAGEFAULT,
            [sys::UFFD_PAGEFAULT_FLAG_WRITE | 1 << 9, 0x3000, 0],
        );
        match decode(&strange, &source(Features::empty())) {
            Event::PageFault {
                kind, write, flags, ..
            } => {
                assert_eq!((kind, write), (FaultKind::Unknown, true));
                assert!(format!("{flags:?}").contains("0x200"), "{flags:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(FaultKind::from_flags(FaultFlags::WRITE), FaultKind::Missing);
        assert_eq!(
            FaultKind::from_flags(FaultFlags::empty()),
            FaultKind::Missing
        );
    }

    #[test]
    fn other_events_decode_and_unknown_codes_are_kept() {
        let src = source(Features::empty());
        assert!(matches!(
            decode(&msg(sys::UFFD_EVENT_REMAP, [0x1000, 0x9000, 0x2000]), &src),
            Event::Remap {
                from: 0x1000,
                to: 0x9000,
                len: 0x2000
            }
        ));
        assert!(matches!(
            decode(&msg(sys::UFFD_EVENT_REMOVE, [0x1000, 0x3000, 0]), &src),
            Event::Remove {
                start: 0x1000,
                end: 0x3000
            }
        ));
        assert!(matches!(
            decode(&msg(sys::UFFD_EVENT_UNMAP, [0x4000, 0x5000, 0]), &src),
            Event::Unmap {
                start: 0x4000,
                end: 0x5000
            }
        ));
        let strange = msg(0x17, [1, 2, 3]);
        match decode(&strange, &src) {
            Event::Unknown { event, raw } => {
                assert_eq!(event, 0x17);
                assert_eq!(raw, strange);
            }
            other => panic!("{other:?}"),
        }
    }

    /// A record of `event` with hostile words, and for a fork event a
    /// descriptor this test owns (or a value no descriptor has), so that
    /// the decoder's taking ownership is legitimate.
    fn hostile_record(g: &mut crate::fuzzing::Gen) -> [u8; MSG] {
        const KNOWN: [u8; 5] = [
            sys::UFFD_EVENT_PAGEFAULT,
            sys::UFFD_EVENT_FORK,
            sys::UFFD_EVENT_REMAP,
            sys::UFFD_EVENT_REMOVE,
            sys::UFFD_EVENT_UNMAP,
        ];
        let mut m = [0u8; MSG];
        m.copy_from_slice(&g.bytes(MSG));
        m[0] = if g.below(4) == 0 {
            g.u64() as u8
        } else {
            *g.pick(&KNOWN)
        };
        for at in [ARG0, ARG1, ARG2] {
            if g.bool() {
                m[at..at + 8].copy_from_slice(&g.edgy_u64().to_ne_bytes());
            }
        }
        if m[0] == sys::UFFD_EVENT_FORK {
            let fd: u32 = if g.bool() {
                use std::os::fd::IntoRawFd as _;
                let memfd = rustix::fs::memfd_create(c"fuzz-fork", rustix::fs::MemfdFlags::CLOEXEC)
                    .expect("memfd_create");
                memfd.into_raw_fd() as u32
            } else {
                // Not a descriptor: negative as an int.
                (1 << 31) | g.u64() as u32
            };
            m[ARG0..ARG0 + 4].copy_from_slice(&fd.to_ne_bytes());
        }
        m
    }

    /// Every record decodes to an event whose fields are the record's, for
    /// every event type, unknown types and flags included; nothing panics.
    #[test]
    fn hostile_records_decode_to_their_fields() {
        crate::fuzzing::run("uffd_msg", |g| {
            let features = match g.below(3) {
                0 => Features::empty(),
                1 => Features::THREAD_ID,
                _ => Features::from_bits_retain(g.u64()),
            };
            let src = source(features);
            let m = hostile_record(g);
            let word = |at| u64_at(&m, at) as usize;
            match decode(&m, &src) {
                Event::PageFault {
                    address,
                    kind,
                    write,
                    thread_id,
                    flags,
                    uffd_id,
                    ..
                } => {
                    assert_eq!(uffd_id, src.id, "the record names its userfaultfd");
                    assert_eq!(m[0], sys::UFFD_EVENT_PAGEFAULT);
                    assert_eq!(address, word(ARG1));
                    assert_eq!(flags.bits(), u64_at(&m, ARG0), "every flag bit kept");
                    assert_eq!(write, flags.contains(FaultFlags::WRITE));
                    // A mode bit decides; without one, a fault is MISSING
                    // only when no unknown bit is set either.
                    let expected = if flags.contains(FaultFlags::WP) {
                        FaultKind::WriteProtect
                    } else if flags.contains(FaultFlags::MINOR) {
                        FaultKind::Minor
                    } else if flags.contains(FaultFlags::RWP) {
                        FaultKind::Rwp
                    } else if flags.difference(FaultFlags::WRITE).is_empty() {
                        FaultKind::Missing
                    } else {
                        FaultKind::Unknown
                    };
                    assert_eq!(kind, expected);
                    assert_eq!(
                        thread_id,
                        features
                            .contains(Features::THREAD_ID)
                            .then(|| u32_at(&m, ARG2))
                    );
                }
                Event::Fork { uffd } => {
                    assert_eq!(m[0], sys::UFFD_EVENT_FORK);
                    assert_eq!(uffd.parent_id(), Some(src.id));
                    assert_eq!(uffd.features(), features);
                    assert_eq!(uffd.origin(), Origin::Fork);
                }
                Event::Remap { from, to, len } => {
                    assert_eq!(m[0], sys::UFFD_EVENT_REMAP);
                    assert_eq!((from, to, len), (word(ARG0), word(ARG1), word(ARG2)));
                }
                Event::Remove { start, end } => {
                    assert_eq!(m[0], sys::UFFD_EVENT_REMOVE);
                    assert_eq!((start, end), (word(ARG0), word(ARG1)));
                }
                Event::Unmap { start, end } => {
                    assert_eq!(m[0], sys::UFFD_EVENT_UNMAP);
                    assert_eq!((start, end), (word(ARG0), word(ARG1)));
                }
                Event::Unknown { event, raw } => {
                    assert_eq!(event, m[0]);
                    assert_eq!(raw, m);
                    let fork_without_fd =
                        m[0] == sys::UFFD_EVENT_FORK && u32_at(&m, ARG0) >= 1 << 31;
                    assert!(
                        fork_without_fd
                            || ![
                                sys::UFFD_EVENT_PAGEFAULT,
                                sys::UFFD_EVENT_FORK,
                                sys::UFFD_EVENT_REMAP,
                                sys::UFFD_EVENT_REMOVE,
                                sys::UFFD_EVENT_UNMAP,
                            ]
                            .contains(&m[0]),
                        "a known event decoded as unknown: {:#x}",
                        m[0]
                    );
                }
            }
        });
    }

    /// A buffer of hostile records iterated part-way and dropped: the rest
    /// are woken or closed through a real userfaultfd, without a panic.
    #[test]
    fn hostile_batches_dropped_part_way() {
        let Ok(uffd) = Uffd::new() else {
            return;
        };
        let mut buf = EventBuffer::with_capacity(8);
        crate::fuzzing::run("uffd_msg batches", |g| {
            let n = 1 + g.below(8) as usize;
            for i in 0..n {
                buf.msgs[i] = hostile_record(g);
            }
            buf.filled = n;
            let take = g.below(n as u64 + 1) as usize;
            let events = uffd.events(&mut buf);
            assert_eq!(events.len(), n);
            let seen = events.take(take).count();
            assert_eq!(seen, take);
            assert_eq!(buf.filled, 0, "the buffer is emptied when the events drop");
        });
    }
}
