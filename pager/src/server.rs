//! The server: handler threads over one userfaultfd and a background
//! populator.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use userfault::uffd::{Event, EventBuffer, Events, Uffd};

use crate::backed::{Backed, FileFault, FileRange, Stage2};
use crate::error::Error;
use crate::resolver::{Fast, ForkCapture, Outcome, Range, Resolver, Scratch};
use crate::source::PageSource;
use crate::stats::{Counters, Stats, Tick};
use crate::workingset::WorkingSet;

/// How the server runs.
#[derive(Debug)]
pub struct Config {
    /// Handler threads reading the userfaultfd (at least 1).
    pub threads: usize,
    /// Bytes resolved around each fault: the aligned chunk holding the page
    /// (rounded up to the page size); with
    /// [`adaptive_chunk`](Self::adaptive_chunk), the smallest window a
    /// fault after resolved pages takes.
    pub chunk: usize,
    /// With a [`working_set`](Self::working_set) replayed, bytes a fault on
    /// one of its pages resolves along the recorded order (the rest of its
    /// run, then the runs recorded after it) instead of its aligned chunk:
    /// the recording says which pages the guest needs next. Zero: the
    /// chunk.
    pub replay_ahead: usize,
    /// Choose each fault's window from its neighbours instead of the
    /// aligned chunk around it, growing up to this many bytes: a fault
    /// just after resolved pages (a guest walking on past what was resolved
    /// for it) takes the pages from it forward, as many as that run of
    /// resolved pages is long (at least [`chunk`](Self::chunk), at most
    /// this); a fault with no resolved page just before it takes its page
    /// alone. `None`: the aligned chunk around every fault.
    pub adaptive_chunk: Option<usize>,
    /// Fill every page in the background (working set first, then in
    /// order, the rest at a lower scheduling priority); demand faults
    /// always go first.
    pub prefetch: bool,
    /// Pages to prefetch first, in this order (with [`prefetch`](Self::prefetch)).
    /// A fault outside them resolves its page alone, not its chunk: the
    /// recording did not foresee it, so its neighbours are no likelier to
    /// be needed than any other page.
    pub working_set: Option<WorkingSet>,
    /// Record the order pages are first faulted ([`Server::recorded`]): by
    /// faults of the anonymous ranges and of the file ranges' mappings, and
    /// by KVM userfault exits ([`Stage2::resolve`]), as source pages.
    ///
    /// Only faults are seen: with [`prefetch`](Self::prefetch) on, a page
    /// the populator brought in before the guest asked is not recorded, so
    /// a recording taken while replaying a working set holds only what the
    /// replay missed. Record a working set with prefetch off.
    pub record: bool,
    /// Once every page is in, unregister the ranges and stop
    /// ([`Exit::Complete`]).
    pub finish_when_complete: bool,
    /// A descriptor whose hang-up or end-of-file means the VMM is gone
    /// (the VMM's socket): the server then stops with
    /// [`Exit::PeerClosed`].
    pub peer: Option<OwnedFd>,
    /// How the background populator runs ([`prefetch`](Self::prefetch)).
    pub populator: Populator,
    /// File-backed ranges (a memfd or guest_memfd the VMM maps, and
    /// guest_memfd slots only vCPUs reach), served through their files'
    /// shared page state; see [`FileRange`] and [`Server::stage2`].
    pub files: Vec<FileRange>,
}

/// How the background populator runs: where, at what priority, in which
/// steps, and how it gives way to demand faults.
#[derive(Debug, Clone)]
pub struct Populator {
    /// The CPUs it may run on (`sched_setaffinity(2)`); empty: wherever
    /// the server's threads may. On a VMM host with cores idle during a
    /// restore, one of those keeps it off the vCPUs' and handlers' CPUs.
    pub cpus: Vec<usize>,
    /// Bytes it resolves per step at most: one source read (or none, from
    /// a mapped source) and one `UFFDIO_COPY` per extent of consecutive
    /// pending pages. Larger steps cost fewer calls; a demand fault on a
    /// page the populator holds waits for its whole step.
    pub extent: usize,
    /// Its nice value once the working set is in (`setpriority(2)`);
    /// `None` leaves its priority alone.
    pub background_nice: Option<i32>,
    /// How long, at most, it gives the CPU to the handler threads before
    /// each step while demand faults wait unread (`sched_yield(2)` in a
    /// loop); zero never waits. Useful when it shares a CPU with them.
    pub yield_to_demand: Duration,
}

impl Default for Populator {
    /// Any CPU, 512 KiB steps, nice 10 after the working set, up to 200 µs
    /// of yielding per step.
    fn default() -> Populator {
        Populator {
            cpus: Vec::new(),
            extent: 512 << 10,
            background_nice: Some(10),
            yield_to_demand: Duration::from_micros(200),
        }
    }
}

impl Default for Config {
    /// 2 threads, 64 KiB chunks chosen per fault up to 512 KiB, 256 KiB
    /// ahead along a replayed working set, prefetch on, no working set, no
    /// recording, finish when complete, no peer, the populator's defaults,
    /// no file ranges.
    fn default() -> Config {
        Config {
            threads: 2,
            chunk: 64 << 10,
            adaptive_chunk: Some(512 << 10),
            replay_ahead: 256 << 10,
            prefetch: true,
            working_set: None,
            record: false,
            finish_when_complete: true,
            peer: None,
            populator: Populator::default(),
            files: Vec::new(),
        }
    }
}

/// Why the server stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum Exit {
    /// [`Server::shutdown`] was called.
    Shutdown,
    /// The VMM closed its end ([`Config::peer`]) or its process exited.
    PeerClosed {
        /// What was seen.
        reason: String,
    },
    /// Every page was resolved and the ranges unregistered.
    Complete,
    /// An error stopped the server.
    Failed(Error),
}

/// What a stopped server leaves: why it stopped, its final counters and
/// the working set it recorded.
#[derive(Debug)]
pub struct Report {
    /// Why it stopped.
    pub exit: Exit,
    /// The counters at the end.
    pub stats: Stats,
    /// The pages first faulted, in order ([`Config::record`]).
    pub recorded: Option<WorkingSet>,
}

#[derive(Debug)]
struct Shared {
    resolver: Resolver,
    backed: Arc<Backed>,
    counters: Arc<Counters>,
    stop: OwnedFd,
    stopping: AtomicBool,
    exit: Mutex<Option<Exit>>,
    finished: Condvar,
    peer: Option<OwnedFd>,
    prefetch: bool,
    prefetch_done: AtomicBool,
    children: Mutex<Vec<JoinHandle<()>>>,
    /// Forked children captured and not yet done (their FORK event was
    /// applied; their thread has not ended).
    live_children: AtomicUsize,
    /// FORK events applied, waiting for the fork thread to set their
    /// child up (handler threads never allocate; it does).
    fork_queue: Mutex<Vec<(Uffd, ForkCapture)>>,
    fork_ready: Condvar,
    /// Threads that have allocated everything and entered their loop.
    started: Mutex<usize>,
    started_cv: Condvar,
}

impl Shared {
    /// Records why the server stops (the first reason wins) and wakes every
    /// thread.
    fn finish(&self, exit: Exit) {
        let mut slot = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(exit);
        }
        self.stopping.store(true, Ordering::Release);
        self.resolver.stop();
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
        self.finished.notify_all();
        // Under the queue's lock, so the fork thread cannot miss it between
        // testing the flag and waiting.
        drop(self.fork_queue.lock().unwrap_or_else(|e| e.into_inner()));
        self.fork_ready.notify_all();
    }

    fn stopped(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// A guard that stops the server if the thread holding it panics: the
    /// other threads would otherwise go on serving around the pages it held
    /// (and wait on them forever).
    fn stop_on_panic(&self, thread: &'static str) -> StopOnPanic<'_> {
        StopOnPanic {
            shared: self,
            thread,
        }
    }

    /// A thread has allocated what it needs and enters its loop.
    fn announce_started(&self) {
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.started_cv.notify_all();
    }

    fn stats(&self) -> Stats {
        self.counters.snapshot(
            self.resolver.total() as u64 + self.backed.total(),
            self.resolver.remaining() as u64 + self.backed.remaining(),
        )
    }
}

/// A running page server: handler threads serving the faults of
/// registered ranges from a [`PageSource`], and a background populator.
///
/// Dropping it shuts it down ([`shutdown`](Self::shutdown)).
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts serving the faults of `ranges`, registered with `uffd`, from
    /// `source`: `config.threads` handler threads and, with
    /// [`Config::prefetch`], one populator.
    ///
    /// `uffd` must be non-blocking (it is switched to non-blocking if not:
    /// the handler threads poll it). Faults are resolved with
    /// `UFFDIO_COPY` (data) and `UFFDIO_ZEROPAGE` (zero pages, where the
    /// range offers it), in windows around each fault as `config` chooses
    /// ([`Config::chunk`], [`Config::adaptive_chunk`],
    /// [`Config::replay_ahead`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a range is not this userfaultfd's, is not
    /// aligned to its page size, overlaps another or extends past the
    /// source, `threads` is 0, or a populator CPU is out of range, when a
    /// file range ([`Config::files`]) is registered with another
    /// userfaultfd, extends past the source or has pages larger than
    /// 2 MiB; [`Error::Uffd`] from `fcntl` or `eventfd`; [`Error::Io`] when
    /// a thread cannot be spawned, or from `sched_setaffinity` (none of the
    /// populator's CPUs is available).
    pub fn start(
        uffd: Arc<Uffd>,
        ranges: &[Range],
        source: Arc<dyn PageSource>,
        config: Config,
    ) -> Result<Server, Error> {
        if config.threads == 0 {
            return Err(Error::Config(
                "at least one handler thread is needed".into(),
            ));
        }
        if let Some(&cpu) = config
            .populator
            .cpus
            .iter()
            .find(|&&c| c >= rustix::thread::CpuSet::MAX_CPU)
        {
            return Err(Error::Config(format!(
                "populator CPU {cpu} is out of range (at most {})",
                rustix::thread::CpuSet::MAX_CPU - 1
            )));
        }
        if !uffd.is_nonblocking()? {
            uffd.set_nonblocking(true)?;
        }
        let counters = Arc::new(Counters::default());
        let mut resolver = Resolver::new(
            uffd.clone(),
            ranges,
            source.clone(),
            config.chunk,
            config.record,
            counters.clone(),
        )?;
        // One recording over the anonymous and the file ranges.
        let backed = Arc::new(Backed::new(
            &uffd,
            config.files,
            source,
            counters.clone(),
            config.chunk,
            config.working_set.as_ref().filter(|_| config.prefetch),
            resolver.recorder(),
        )?);
        if config.prefetch
            && let Some(ws) = &config.working_set
        {
            resolver.predict(ws);
        }
        if let Some(max) = config.adaptive_chunk {
            resolver.adapt(max);
        }
        if config.threads == 1 {
            resolver.set_sole_reader();
        }
        // The working set as the populator's extents, in its order; faults
        // resolve ahead along the same list.
        let page = rustix::param::page_size();
        let first = match (&config.working_set, config.prefetch) {
            (Some(ws), true) => extents(&resolver, ws, (config.populator.extent / page).max(1)),
            _ => Vec::new(),
        };
        resolver.replay_along(&first, config.replay_ahead);
        let stop = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
            .map_err(|e| Error::io("eventfd", e))?;
        let shared = Arc::new(Shared {
            resolver,
            backed,
            counters,
            stop,
            stopping: AtomicBool::new(false),
            exit: Mutex::new(None),
            finished: Condvar::new(),
            peer: config.peer,
            prefetch: config.prefetch,
            prefetch_done: AtomicBool::new(false),
            children: Mutex::new(Vec::new()),
            live_children: AtomicUsize::new(0),
            fork_queue: Mutex::new(Vec::with_capacity(BATCH)),
            fork_ready: Condvar::new(),
            started: Mutex::new(0),
            started_cv: Condvar::new(),
        });
        let mut server = Server {
            shared: shared.clone(),
            threads: Vec::new(),
        };
        let forks = shared
            .resolver
            .uffd()
            .features()
            .contains(userfault::uffd::Features::EVENT_FORK);
        let mut announced = 0;
        for i in 0..config.threads {
            let shared = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("pager-fault-{i}"))
                .spawn(move || {
                    let _guard = shared.stop_on_panic("handler");
                    handler_thread(&shared)
                })
                .map_err(|e| Error::io("spawn", e))?;
            server.threads.push(t);
            announced += 1;
        }
        if forks {
            let shared = shared.clone();
            let t = std::thread::Builder::new()
                .name("pager-forks".into())
                .spawn(move || {
                    let _guard = shared.stop_on_panic("fork");
                    fork_thread(&shared)
                })
                .map_err(|e| Error::io("spawn", e))?;
            server.threads.push(t);
            announced += 1;
        }
        // Returns once every handler thread has allocated its buffers and
        // entered its loop: a fork of a process that serves its own memory
        // holds the allocator's locks until its FORK event is read, so a
        // handler thread still setting up then would never read it.
        {
            let n = shared.started.lock().unwrap_or_else(|e| e.into_inner());
            let _n = shared
                .started_cv
                .wait_while(n, |n| *n < announced)
                .unwrap_or_else(|e| e.into_inner());
        }
        if config.prefetch {
            let shared = shared.clone();
            let finish = config.finish_when_complete;
            let how = config.populator;
            let (placed, pinned) = std::sync::mpsc::sync_channel(1);
            let t = std::thread::Builder::new()
                .name("pager-prefetch".into())
                .spawn(move || {
                    let _guard = shared.stop_on_panic("populator");
                    let r = pin(&how.cpus);
                    let ok = r.is_ok();
                    let _ = placed.send(r);
                    if ok {
                        populator_thread(&shared, &first, finish, &how);
                    }
                })
                .map_err(|e| Error::io("spawn", e))?;
            server.threads.push(t);
            pinned
                .recv()
                .unwrap_or(Ok(()))
                .map_err(|e| Error::io("sched_setaffinity", e))?;
        }
        Ok(server)
    }

    /// `KVM_EXIT_MEMORY_FAULT`: the stage-2 entry point for vCPU threads
    /// taking KVM userfault exits on the slots of [`Config::files`]. Clone
    /// it into each vCPU thread and call [`Stage2::resolve`] for every
    /// memory-fault exit; it shares the page state with the handler
    /// threads and the populator, and keeps working after the server
    /// stopped.
    pub fn stage2(&self) -> Stage2 {
        Stage2::new(self.shared.backed.clone())
    }

    /// The counters now (cheap: relaxed loads).
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// True once the server has stopped or is stopping.
    pub fn is_finished(&self) -> bool {
        self.shared.stopped()
    }

    /// True once the populator has resolved every page.
    pub fn is_prefetched(&self) -> bool {
        self.shared.prefetch_done.load(Ordering::Acquire)
    }

    /// The pages first faulted so far, in order ([`Config::record`]).
    pub fn recorded(&self) -> Option<WorkingSet> {
        self.shared.resolver.recorded()
    }

    /// Waits up to `timeout` for the server to stop; true if it has.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let slot = self.shared.exit.lock().unwrap_or_else(|e| e.into_inner());
        let (slot, _) = self
            .shared
            .finished
            .wait_timeout_while(slot, timeout, |s| s.is_none())
            .unwrap_or_else(|e| e.into_inner());
        slot.is_some()
    }

    /// Waits until the server stops by itself (the peer closed, every page
    /// is in, or an error), then joins its threads.
    pub fn wait(mut self) -> Report {
        {
            let slot = self.shared.exit.lock().unwrap_or_else(|e| e.into_inner());
            let _slot = self
                .shared
                .finished
                .wait_while(slot, |s| s.is_none())
                .unwrap_or_else(|e| e.into_inner());
        }
        self.join()
    }

    /// Stops the server: wakes and joins every thread. Faults still pending
    /// stay pending (the userfaultfd is left as it is; closing it, or
    /// unregistering, releases them).
    pub fn shutdown(mut self) -> Report {
        self.shared.finish(Exit::Shutdown);
        self.join()
    }

    fn join(&mut self) -> Report {
        self.shared.finish(Exit::Shutdown);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let children = std::mem::take(
            &mut *self
                .shared
                .children
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for t in children {
            let _ = t.join();
        }
        let exit = self
            .shared
            .exit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or(Exit::Shutdown);
        Report {
            exit,
            stats: self.shared.stats(),
            recorded: self.shared.resolver.recorded(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.join();
        }
    }
}

/// What polling the peer's descriptor saw.
fn peer_closed(fd: BorrowedFd<'_>, revents: PollFlags) -> Option<String> {
    if revents.intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR) {
        return Some("the VMM closed its connection".into());
    }
    if revents.contains(PollFlags::IN) {
        let mut byte = [0u8; 512];
        match rustix::io::read(fd, &mut byte) {
            Ok(0) => return Some("the VMM closed its connection".into()),
            // Nothing else is sent after the handshake: ignore it.
            Ok(_) => {}
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
            Err(e) => return Some(format!("the VMM's connection failed: {e}")),
        }
    }
    None
}

/// Events read at once.
const BATCH: usize = 64;

/// Faults in a row on one page outside every range before the server
/// gives up on it.
const MAX_UNSERVED: u32 = 64;

/// Faults kept for a retry after `EAGAIN` without allocating.
const MAX_DEFERRED: usize = 1024;

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: d.subsec_nanos().into(),
    }
}

fn handler_thread(shared: &Arc<Shared>) {
    let mut started = Started::new(shared);
    serve(
        shared,
        &shared.resolver,
        Role::Parent(shared.peer.as_ref().map(|p| p.as_fd())),
        &mut started,
    );
}

/// Announces a thread's start to [`Server::start`] once, at the latest
/// when the thread ends (even by a panic), so that `start` never waits for
/// a thread that will not come.
struct Started<'a> {
    shared: &'a Shared,
    done: bool,
}

impl<'a> Started<'a> {
    fn new(shared: &'a Shared) -> Started<'a> {
        Started {
            shared,
            done: false,
        }
    }

    /// For a thread nobody waits for.
    fn announced(shared: &'a Shared) -> Started<'a> {
        Started { shared, done: true }
    }

    fn announce(&mut self) {
        if !self.done {
            self.done = true;
            self.shared.announce_started();
        }
    }
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        self.announce();
    }
}

/// See [`Shared::stop_on_panic`].
struct StopOnPanic<'a> {
    shared: &'a Shared,
    thread: &'static str,
}

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.finish(Exit::Failed(Error::Config(format!(
                "the pager's {} thread panicked (see its message above)",
                self.thread
            ))));
        }
    }
}

/// Whose userfaultfd a handler thread serves.
#[derive(Clone, Copy)]
enum Role<'a> {
    /// The server's own, with the VMM's descriptor to watch.
    Parent(Option<BorrowedFd<'a>>),
    /// A forked child's: served until the child exits, or (with prefetch)
    /// until every page of it is in; it ends only this thread.
    Child,
}

/// One handler thread's loop over `resolver`'s userfaultfd.
fn serve(shared: &Arc<Shared>, resolver: &Resolver, role: Role<'_>, started: &mut Started<'_>) {
    let uffd = resolver.uffd().clone();
    let peer = match role {
        Role::Parent(peer) => peer,
        Role::Child => None,
    };
    let child = matches!(role, Role::Child);
    // Everything is allocated here, before the first read: from the poll to
    // the end of applying a batch's events nothing allocates (see
    // `Scratch`). Deferred faults are bounded by the faulting threads
    // (each waits on one fault at a time).
    let mut b = Batch {
        buf: EventBuffer::with_capacity(BATCH),
        read: [0; BATCH],
        faults: Vec::with_capacity(4 * BATCH + MAX_DEFERRED),
        deferred: Vec::with_capacity(4 * BATCH + MAX_DEFERRED),
        forks: Vec::with_capacity(BATCH),
        files: Vec::with_capacity(BATCH),
        scratch: resolver.scratch(),
        unserved: (0, 0),
        rereads: (0, 0),
    };
    started.announce();
    // A child's pages not faulted yet, filled between its events.
    let mut child_cursor = 0;
    let mut not_mapped = None;
    loop {
        if child && shared.prefetch {
            match populate_child_step(resolver, &mut child_cursor, &mut not_mapped, &mut b.scratch)
            {
                ChildStep::More => {}
                ChildStep::Done => {
                    // Every page of the child is in: it needs the server no
                    // more.
                    if let Err(e) = resolver.finish() {
                        shared.finish(Exit::Failed(e));
                    }
                    return;
                }
                ChildStep::Exited => return,
                ChildStep::Failed(e) => {
                    shared.finish(Exit::Failed(e));
                    return;
                }
            }
        }
        // Until the child is complete (checked above), never blocks; a
        // child served on demand only is checked for having exited when
        // it has been idle a while (its exit raises no event).
        let populating = child && shared.prefetch;
        let probing = child && !shared.prefetch;
        let timeout = if populating {
            Some(timespec(Duration::ZERO))
        } else if !b.deferred.is_empty() {
            Some(timespec(Duration::from_micros(200)))
        } else {
            probing.then(|| timespec(CHILD_IDLE_PROBE))
        };
        let mut fds = [
            PollFd::new(&uffd, PollFlags::IN),
            PollFd::new(&shared.stop, PollFlags::IN),
            PollFd::from_borrowed_fd(
                peer.unwrap_or(shared.stop.as_fd()),
                PollFlags::IN | PollFlags::RDHUP,
            ),
        ];
        let n = if peer.is_some() { 3 } else { 2 };
        match rustix::event::poll(&mut fds[..n], timeout.as_ref()) {
            Ok(0) if probing && b.deferred.is_empty() && resolver.process_exited() => return,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                shared.finish(Exit::Failed(Error::io("poll", e)));
                return;
            }
        }
        if shared.stopped() {
            return;
        }
        if let Some(peer) = peer
            && let Some(reason) = peer_closed(peer, fds[2].revents())
        {
            shared.finish(Exit::PeerClosed { reason });
            return;
        }
        let readable = fds[0].revents();
        if readable.intersects(PollFlags::ERR | PollFlags::NVAL) {
            shared.finish(Exit::Failed(Error::Config(format!(
                "the userfaultfd polled as {readable:?}"
            ))));
            return;
        }
        let readable = readable.contains(PollFlags::IN);
        if let Pass::Stop = handle_batch(shared, resolver, &uffd, readable, child, &mut b) {
            return;
        }
    }
}

/// How long a forked child served without prefetch may be idle before its
/// handler checks whether it has exited ([`Resolver::process_exited`]).
const CHILD_IDLE_PROBE: Duration = Duration::from_secs(1);

/// What one background step on a child's pages found.
enum ChildStep {
    More,
    Done,
    Exited,
    Failed(Error),
}

/// Resolves the next chunk of a forked child's pending pages (sequential
/// from `cursor`), between its events.
fn populate_child_step(
    resolver: &Resolver,
    cursor: &mut usize,
    not_mapped: &mut Option<(usize, Instant)>,
    scratch: &mut Scratch,
) -> ChildStep {
    let total = resolver.total();
    if resolver.remaining() == 0 {
        return ChildStep::Done;
    }
    let mut seen = 0;
    while seen < total && !resolver.is_pending(*cursor % total) {
        *cursor += 1;
        seen += 1;
    }
    if seen == total {
        // Claimed by a handler right now, or given back after EAGAIN.
        std::thread::yield_now();
        return ChildStep::More;
    }
    let at = *cursor % total;
    let moves = resolver.moves();
    let (outcome, covered) = resolver.prefetch_run(at, total - at, scratch);
    match outcome {
        Ok(Outcome::PeerGone) => ChildStep::Exited,
        Ok(Outcome::NotMapped) => {
            if unmapped_for_good(resolver, not_mapped, at, moves) {
                resolver.retire_unmapped(at, covered);
                *cursor = at + covered;
            }
            ChildStep::More
        }
        Ok(_) => {
            *cursor = at + covered;
            ChildStep::More
        }
        Err(e) => ChildStep::Failed(e),
    }
}

/// What one pass of a handler thread found.
enum Pass {
    /// The server stops.
    Stop,
    /// Nothing was read.
    Idle,
    /// Events were read and applied.
    Busy,
}

/// One handler thread's buffers, allocated before its first read.
struct Batch {
    buf: EventBuffer,
    /// The addresses of the faults of one read.
    read: [usize; BATCH],
    /// Deferred faults being retried.
    faults: Vec<usize>,
    deferred: Vec<usize>,
    forks: Vec<(Uffd, ForkCapture)>,
    files: Vec<FileFault>,
    scratch: Scratch,
    /// The last page faulted outside every range, and how many times in a
    /// row.
    unserved: (usize, u32),
    /// Reads again at once after a pass that found events, in a row, that
    /// found nothing ([`REREAD_MISSES`]), and passes since the last one.
    rereads: (u32, u32),
}

/// Reads again at once after a busy pass stop when this many in a row
/// found nothing: the faulting threads are not quick enough to fault again
/// before the read (one vCPU that computes between faults, say), and each
/// such read is a system call for nothing. One pass in
/// [`REREAD_PROBE`] reads again anyway, to find out when they are.
const REREAD_MISSES: u32 = 4;

/// See [`REREAD_MISSES`].
const REREAD_PROBE: u32 = 16;

/// A handler thread's work once `poll` returned: [passes](pass) while
/// events keep coming. A thread woken by a resolution often faults again
/// before the next poll, and reading again straight away saves that poll;
/// where that keeps finding nothing, the thread goes back to `poll` at once
/// instead (see [`REREAD_MISSES`]).
///
/// Not inlined: the benchmarks count the instructions spent here per fault.
#[inline(never)]
fn handle_batch(
    shared: &Arc<Shared>,
    resolver: &Resolver,
    uffd: &Uffd,
    readable: bool,
    child: bool,
    b: &mut Batch,
) -> Pass {
    let mut readable = readable;
    let mut again = false;
    loop {
        match pass(shared, resolver, uffd, readable, child, b) {
            Pass::Stop => return Pass::Stop,
            Pass::Idle if again => {
                b.rereads.0 = b.rereads.0.saturating_add(1);
                return Pass::Busy;
            }
            Pass::Idle => return Pass::Idle,
            Pass::Busy if shared.stopped() => return Pass::Stop,
            Pass::Busy if again => b.rereads.0 = 0,
            Pass::Busy => {}
        }
        let (misses, since) = &mut b.rereads;
        *since += 1;
        if *misses >= REREAD_MISSES && *since < REREAD_PROBE {
            return Pass::Busy;
        }
        *since = 0;
        readable = true;
        again = true;
    }
}

/// One pass: reads the events (when `readable`), applies the non-fault
/// ones, then resolves the faults read and those deferred after `EAGAIN`.
/// Page faults are the common case and take the fewest instructions;
/// everything else is out of line.
#[inline(always)]
fn pass(
    shared: &Arc<Shared>,
    resolver: &Resolver,
    uffd: &Uffd,
    readable: bool,
    child: bool,
    b: &mut Batch,
) -> Pass {
    // The faults read this pass, by address: at most a read's worth.
    let mut n = 0;
    let mut read_any = false;
    if readable {
        let files = shared.backed.has_files();
        let _order = resolver.order();
        let mut events = match uffd.read_events(&mut b.buf) {
            Ok(events) => events,
            Err(e) => return read_failed(shared, e),
        };
        loop {
            // Page faults straight from the buffer (taken: each is resolved
            // or woken below), the other events one by one, in order.
            while let Some(fault) = events.take_fault() {
                read_any = true;
                if !(files && shared.backed.take_fault(&fault, uffd.id(), &mut b.files)) {
                    match b.read.get_mut(n) {
                        Some(slot) => {
                            *slot = fault.address;
                            n += 1;
                        }
                        // Never: a read returns at most `BATCH` records.
                        None => b.deferred.push(fault.address),
                    }
                }
            }
            if events.is_empty() {
                break;
            }
            read_any = true;
            if let Err(pass) = other_event(
                shared,
                resolver,
                &mut events,
                child,
                &mut b.files,
                &mut b.forks,
                &mut b.deferred,
            ) {
                return pass;
            }
        }
    }
    if !read_any && b.deferred.is_empty() {
        return Pass::Idle;
    }
    let read_at = shared.counters.now();
    if !(b.forks.is_empty() && b.files.is_empty() && b.deferred.is_empty())
        && let Err(pass) = before_faults(shared, resolver, child, read_at, b)
    {
        return pass;
    }
    for i in 0..n {
        let addr = b.read[i];
        if let Err(pass) = serve_fault(shared, resolver, addr, child, read_at, b) {
            return pass;
        }
    }
    if read_any { Pass::Busy } else { Pass::Idle }
}

/// A failed `read` of events: the server stops.
#[cold]
#[inline(never)]
fn read_failed(shared: &Shared, e: userfault::Error) -> Pass {
    shared.finish(Exit::Failed(e.into()));
    Pass::Stop
}

/// The next event of `events`, not a page fault: taken by a file range or
/// applied (the order lock's write side held).
#[cold]
#[inline(never)]
fn other_event(
    shared: &Arc<Shared>,
    resolver: &Resolver,
    events: &mut Events<'_>,
    child: bool,
    files: &mut Vec<FileFault>,
    forks: &mut Vec<(Uffd, ForkCapture)>,
    deferred: &mut Vec<usize>,
) -> Result<(), Pass> {
    let Some(event) = events.next() else {
        return Ok(());
    };
    if shared.backed.take(&event, child, files) {
        return Ok(());
    }
    apply(shared, resolver, event, forks, deferred)
}

/// A pass's work before the faults it read: forks handed to the fork
/// thread, the file ranges' faults served, deferred faults retried.
#[cold]
#[inline(never)]
fn before_faults(
    shared: &Arc<Shared>,
    resolver: &Resolver,
    child: bool,
    read_at: Tick,
    b: &mut Batch,
) -> Result<(), Pass> {
    if !b.forks.is_empty() {
        let mut queue = shared.fork_queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.append(&mut b.forks);
        shared.fork_ready.notify_all();
    }
    if !b.files.is_empty()
        && let Err(exit) = shared.backed.serve(&mut b.files, &|| resolver.order_read())
    {
        shared.finish(exit);
        return Err(Pass::Stop);
    }
    if !b.deferred.is_empty() {
        retry_deferred(shared, resolver, child, read_at, b)?;
    }
    Ok(())
}

/// Applies an event other than a page fault (the order lock's write side
/// held); `Err` when the server stops.
#[cold]
#[inline(never)]
fn apply(
    shared: &Arc<Shared>,
    resolver: &Resolver,
    event: Event<'_>,
    forks: &mut Vec<(Uffd, ForkCapture)>,
    deferred: &mut Vec<usize>,
) -> Result<(), Pass> {
    match event {
        Event::PageFault { address, .. } => {
            // Not a record `take_fault` left (it takes them all): served
            // below all the same, taken so dropping it does not wake its
            // thread early.
            event.take();
            deferred.push(address);
        }
        Event::Remove { start, end } => resolver.remove(start, end),
        Event::Unmap { start, end } => resolver.unmap(start, end),
        Event::Remap { from, to, len } => {
            if let Err(e) = resolver.remap(from, to, len) {
                shared.finish(Exit::Failed(e));
                return Err(Pass::Stop);
            }
        }
        // Captured now, in event order (a REMOVE later in the batch is not
        // the child's); set up by the fork thread, since that allocates.
        Event::Fork { uffd: child } => match resolver.capture_fork() {
            Ok(cap) => {
                shared.live_children.fetch_add(1, Ordering::AcqRel);
                forks.push((child, cap));
            }
            // Not even `mmap` gave room for the child's state: it cannot be
            // served as the parent was, and unserved it would wait forever.
            Err(e) => {
                shared.finish(Exit::Failed(e));
                return Err(Pass::Stop);
            }
        },
        _ => Counters::add(&shared.counters.other_events, 1),
    }
    Ok(())
}

/// Resolves the faults deferred by earlier passes (after `EAGAIN`, a remap
/// or another thread's claim); those that still cannot be are deferred
/// again.
#[cold]
#[inline(never)]
fn retry_deferred(
    shared: &Arc<Shared>,
    resolver: &Resolver,
    child: bool,
    read_at: Tick,
    b: &mut Batch,
) -> Result<(), Pass> {
    b.faults.clear();
    b.faults.append(&mut b.deferred);
    let mut faults = std::mem::take(&mut b.faults);
    let mut result = Ok(());
    for &addr in &faults {
        result = serve_fault(shared, resolver, addr, child, read_at, b);
        if result.is_err() {
            break;
        }
    }
    faults.clear();
    b.faults = faults;
    result
}

/// Resolves one demand fault read at `read_at` and accounts for it;
/// `Err` when the thread stops.
#[inline(always)]
fn serve_fault(
    shared: &Arc<Shared>,
    resolver: &Resolver,
    addr: usize,
    child: bool,
    read_at: Tick,
    b: &mut Batch,
) -> Result<(), Pass> {
    match resolver.fault_direct(addr, &mut b.scratch) {
        Fast::Done => {}
        Fast::Again => {
            return fault_not_done(shared, addr, child, Ok(Outcome::Again), b);
        }
        Fast::Declined => return serve_fault_windowed(shared, resolver, addr, child, read_at, b),
    }
    served(shared, read_at, b);
    Ok(())
}

/// Accounts for a demand fault read at `read_at` and resolved now.
#[inline(always)]
fn served(shared: &Shared, read_at: Tick, b: &mut Batch) {
    b.unserved = (0, 0);
    Counters::add(&shared.counters.demand_faults, 1);
    shared.counters.record_since(read_at);
}

/// [`serve_fault`] of a fault [`Resolver::fault_direct`] did not take.
#[inline(never)]
fn serve_fault_windowed(
    shared: &Arc<Shared>,
    resolver: &Resolver,
    addr: usize,
    child: bool,
    read_at: Tick,
    b: &mut Batch,
) -> Result<(), Pass> {
    match resolver.fault_windowed(addr, &mut b.scratch) {
        Ok(Outcome::Done) => {
            served(shared, read_at, b);
            Ok(())
        }
        other => fault_not_done(shared, addr, child, other, b),
    }
}

/// The rest of [`serve_fault`]: a fault not resolved now.
#[cold]
#[inline(never)]
fn fault_not_done(
    shared: &Arc<Shared>,
    addr: usize,
    child: bool,
    outcome: Result<Outcome, Error>,
    b: &mut Batch,
) -> Result<(), Pass> {
    match outcome {
        Ok(Outcome::Done) => Ok(()),
        Ok(Outcome::Again | Outcome::Moved | Outcome::Unserved | Outcome::NotMapped) => {
            b.unserved = (0, 0);
            Counters::add(&shared.counters.retries, 1);
            b.deferred.push(addr);
            Ok(())
        }
        // Woken (and counted) by the resolver. The same page coming back
        // again and again is a mapping the server was never given (a
        // registered range the VMM grew, say): stop with its address rather
        // than wake it forever.
        Ok(Outcome::Gone) => {
            let page = addr & !(rustix::param::page_size() - 1);
            b.unserved = match b.unserved {
                (p, n) if p == page => (p, n + 1),
                _ => (page, 1),
            };
            if b.unserved.1 >= MAX_UNSERVED && child {
                // A child's mapping the server was never given: stop
                // serving that child only.
                return Err(Pass::Stop);
            }
            if b.unserved.1 >= MAX_UNSERVED {
                shared.finish(Exit::Failed(Error::Config(format!(
                    "page faults at {page:#x} keep arriving outside every served range \
                     (a registered mapping grew or was replaced without the server being told)"
                ))));
                return Err(Pass::Stop);
            }
            Ok(())
        }
        // A forked child exited: only its thread ends.
        Ok(Outcome::PeerGone) if child => Err(Pass::Stop),
        Ok(Outcome::PeerGone) => {
            shared.finish(Exit::PeerClosed {
                reason: "the process whose memory is served has exited".into(),
            });
            Err(Pass::Stop)
        }
        Err(e) => {
            shared.finish(Exit::Failed(e));
            Err(Pass::Stop)
        }
    }
}

/// Sets forked children up as their FORK events are applied: builds each
/// child's state from its capture and serves it on a thread of its own
/// (the server joins it).
fn fork_thread(shared: &Arc<Shared>) {
    Started::new(shared).announce();
    loop {
        let (child, capture) = {
            let queue = shared.fork_queue.lock().unwrap_or_else(|e| e.into_inner());
            let mut queue = shared
                .fork_ready
                .wait_while(queue, |q| q.is_empty() && !shared.stopped())
                .unwrap_or_else(|e| e.into_inner());
            if shared.stopped() {
                return;
            }
            match queue.pop() {
                Some(item) => item,
                None => continue,
            }
        };
        let resolver = match Resolver::for_child(child, capture) {
            Ok(r) => r,
            Err(e) => {
                shared.live_children.fetch_sub(1, Ordering::AcqRel);
                shared.finish(Exit::Failed(e));
                return;
            }
        };
        let shared_for_child = shared.clone();
        let t = std::thread::Builder::new()
            .name("pager-fork".into())
            .spawn(move || {
                let _guard = shared_for_child.stop_on_panic("forked child's handler");
                // Not a thread `Server::start` waits for.
                let mut started = Started::announced(&shared_for_child);
                serve(&shared_for_child, &resolver, Role::Child, &mut started);
                if !shared_for_child.stopped() {
                    Counters::add(&shared_for_child.counters.ended_children, 1);
                }
                shared_for_child
                    .live_children
                    .fetch_sub(1, Ordering::AcqRel);
            });
        match t {
            Ok(t) => shared
                .children
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(t),
            Err(e) => {
                shared.live_children.fetch_sub(1, Ordering::AcqRel);
                shared.finish(Exit::Failed(Error::io("spawn", e)));
                return;
            }
        }
    }
}

/// Restricts the calling thread to `cpus` (`sched_setaffinity(2)`); an
/// empty set changes nothing.
fn pin(cpus: &[usize]) -> rustix::io::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    let mut set = rustix::thread::CpuSet::new();
    for &cpu in cpus {
        set.set(cpu);
    }
    rustix::thread::sched_setaffinity(None, &set)
}

/// Where the kernel cannot say whether an event is on its way
/// ([`Resolver::unmapped_without_event`]): how long it may say a range is
/// not mapped before its pending pages are given up on. A move's event
/// follows within microseconds of the kernel's change on an idle machine,
/// but the thread that must read it can wait far longer for a CPU.
const NOT_MAPPED_GRACE: Duration = Duration::from_secs(1);

/// True once the extent at `at`, reported not mapped by a resolution that
/// read the remap generation `moves` before it, is gone for good: the
/// kernel says no event explains it, or (where it cannot say) it has been
/// so for [`NOT_MAPPED_GRACE`] (`since` keeps when that started, for one
/// extent).
fn unmapped_for_good(
    resolver: &Resolver,
    since: &mut Option<(usize, Instant)>,
    at: usize,
    moves: u64,
) -> bool {
    if let Some(gone) = resolver.unmapped_without_event(at, moves) {
        return gone;
    }
    match *since {
        Some((i, t0)) if i == at => t0.elapsed() >= NOT_MAPPED_GRACE,
        _ => {
            *since = Some((at, Instant::now()));
            false
        }
    }
}

/// Gives the CPU to the handler threads while demand faults wait unread,
/// for at most `max` per background step: a fault is read before the
/// populator takes its next extent. A handler thread already resolving one
/// is not waited for: it has its CPU, and the populator's next extent is
/// what the guest will need next (a guest that faults without pause must
/// not stop the populator).
fn yield_to_demand(shared: &Shared, max: Duration) {
    if max.is_zero() {
        return;
    }
    let uffd = shared.resolver.uffd();
    let mut since = None;
    loop {
        if shared.stopped() {
            return;
        }
        let mut fds = [PollFd::new(uffd, PollFlags::IN)];
        let pending = matches!(rustix::event::poll(&mut fds, Some(&timespec(Duration::ZERO))), Ok(n) if n > 0);
        if !pending {
            return;
        }
        let t0 = *since.get_or_insert_with(Instant::now);
        if t0.elapsed() >= max {
            return;
        }
        std::thread::yield_now();
    }
}

/// How long a completed server keeps reading events, with nothing unread
/// and no forked child live, before it stops: a fork that began before the
/// ranges were unregistered sends its event late.
const QUIET_BEFORE_COMPLETE: Duration = Duration::from_millis(20);

/// The working set as extents of consecutive state indices, in the order
/// of their first page.
fn extents(resolver: &Resolver, ws: &WorkingSet, max: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &p in ws.pages() {
        let Some(index) = p
            .checked_mul(u64::from(ws.page_size()))
            .and_then(|off| resolver.index_of_offset(off))
        else {
            continue;
        };
        match out.last_mut() {
            Some((start, len)) if *start + *len == index && *len < max => *len += 1,
            // The same page again (a working set in a unit smaller than
            // the range's pages).
            Some((start, len)) if (*start..*start + *len).contains(&index) => {}
            _ => out.push((index, 1)),
        }
    }
    out
}

/// Fills `first` (the working set's extents, in order), then every page
/// left, in order.
fn populator_thread(shared: &Shared, first: &[(usize, usize)], finish: bool, how: &Populator) {
    let resolver = &shared.resolver;
    let extent = how.extent.max(1);
    let mut scratch = resolver.scratch_for(extent);
    let max = (extent / rustix::param::page_size()).max(1);
    // Resolves the pending pages of `[start, start + len)`, extent by
    // extent, giving way to demand faults before each.
    let prefetch = |start: usize, len: usize, scratch: &mut Scratch| -> bool {
        let end = start + len;
        let mut at = start;
        let mut not_mapped: Option<(usize, Instant)> = None;
        while at < end {
            if shared.stopped() {
                return false;
            }
            yield_to_demand(shared, how.yield_to_demand);
            let moves = resolver.moves();
            let (outcome, covered) = resolver.prefetch_run(at, end - at, scratch);
            match outcome {
                Ok(Outcome::Done | Outcome::Gone) => at += covered,
                Ok(Outcome::NotMapped) => {
                    if unmapped_for_good(resolver, &mut not_mapped, at, moves) {
                        resolver.retire_unmapped(at, covered);
                        at += covered;
                    } else {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
                Ok(Outcome::Again | Outcome::Moved | Outcome::Unserved) => {
                    Counters::add(&shared.counters.retries, 1);
                    std::thread::sleep(Duration::from_micros(100));
                }
                Ok(Outcome::PeerGone) => {
                    shared.finish(Exit::PeerClosed {
                        reason: "the process whose memory is served has exited".into(),
                    });
                    return false;
                }
                Err(e) => {
                    shared.finish(Exit::Failed(e));
                    return false;
                }
            }
        }
        true
    };
    for &(start, len) in first {
        if !prefetch(start, len, &mut scratch) {
            return;
        }
    }
    if !populate_files(shared, true, how) {
        return;
    }
    // What is left is background work: from here the populator runs at
    // its background nice value (`setpriority(2)` changes the calling
    // thread on Linux), so the scheduler gives handler threads and vCPUs
    // the CPU first. Failing to lower it only costs that preference.
    if let Some(nice) = how.background_nice {
        let _ = rustix::process::setpriority_process(None, nice);
    }
    // Sequential passes until nothing is left (a claim given back after
    // EAGAIN, or held by a handler thread, is found on the next pass).
    while resolver.remaining() > 0 {
        let total = resolver.total();
        let mut at = 0;
        while at < total {
            let n = max.min(total - at);
            if (at..at + n).any(|i| resolver.is_pending(i)) && !prefetch(at, n, &mut scratch) {
                return;
            }
            at += n;
        }
        if resolver.remaining() > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    if !populate_files(shared, false, how) {
        return;
    }
    shared.prefetch_done.store(true, Ordering::Release);
    if finish {
        if let Err(e) = resolver.finish().and_then(|()| shared.backed.finish()) {
            shared.finish(Exit::Failed(e));
            return;
        }
        // Forked children are served until every page of theirs is in too
        // (or they exit): the server stops once none is left. A fork after
        // the unregistration reports nothing (no range is registered any
        // more), but one from before it queues its event only once it has
        // copied the address space: the handler threads keep reading until
        // nothing has been unread, and no child live, for a while.
        let mut quiet_since: Option<Instant> = None;
        loop {
            if shared.stopped() {
                return;
            }
            let unread = {
                let _order = resolver.order();
                let mut fds = [PollFd::new(resolver.uffd(), PollFlags::IN)];
                matches!(rustix::event::poll(&mut fds, Some(&timespec(Duration::ZERO))), Ok(n) if n > 0)
            };
            if unread || shared.live_children.load(Ordering::Acquire) > 0 {
                quiet_since = None;
            } else if quiet_since.get_or_insert_with(Instant::now).elapsed()
                >= QUIET_BEFORE_COMPLETE
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        shared.finish(Exit::Complete);
    }
}

/// The populator's pass over the file ranges (the working set's pages
/// when `first`, or everything left); false when the server stops.
fn populate_files(shared: &Shared, first: bool, how: &Populator) -> bool {
    match shared.backed.populate(
        first,
        &|| shared.stopped(),
        &|| yield_to_demand(shared, how.yield_to_demand),
        &|| shared.resolver.order_read(),
    ) {
        Ok(done) => done,
        Err(exit) => {
            shared.finish(exit);
            false
        }
    }
}
