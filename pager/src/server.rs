//! The server: handler threads over one userfaultfd and a background
//! populator.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use userfault::uffd::{Event, EventBuffer, Uffd};

use crate::error::Error;
use crate::resolver::{Outcome, Range, Resolver, Scratch};
use crate::source::PageSource;
use crate::stats::{Counters, Stats};
use crate::workingset::WorkingSet;

/// How the server runs.
#[derive(Debug)]
pub struct Config {
    /// Handler threads reading the userfaultfd (at least 1).
    pub threads: usize,
    /// Bytes resolved around each fault and per background step: the
    /// aligned chunk holding the page (rounded up to the page size).
    pub chunk: usize,
    /// Fill every page in the background (working set first, then in
    /// order); demand faults always go first.
    pub prefetch: bool,
    /// Pages to prefetch first, in this order.
    pub working_set: Option<WorkingSet>,
    /// Record the order pages are first faulted ([`Server::recorded`]).
    pub record: bool,
    /// Once every page is in, unregister the ranges and stop
    /// ([`Exit::Complete`]).
    pub finish_when_complete: bool,
    /// A descriptor whose hang-up or end-of-file means the VMM is gone
    /// (the VMM's socket): the server then stops with
    /// [`Exit::PeerClosed`].
    pub peer: Option<OwnedFd>,
}

impl Default for Config {
    /// 2 threads, 64 KiB chunks, prefetch on, no working set, no
    /// recording, finish when complete, no peer.
    fn default() -> Config {
        Config {
            threads: 2,
            chunk: 64 << 10,
            prefetch: true,
            working_set: None,
            record: false,
            finish_when_complete: true,
            peer: None,
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
    counters: Arc<Counters>,
    stop: OwnedFd,
    stopping: AtomicBool,
    exit: Mutex<Option<Exit>>,
    finished: Condvar,
    /// Handler threads resolving demand faults right now.
    busy: AtomicUsize,
    /// Held while reading events and applying the non-fault ones, so that
    /// a fault read after a REMOVE sees the removal applied.
    read_lock: Mutex<()>,
    peer: Option<OwnedFd>,
    prefetch_done: AtomicBool,
    children: Mutex<Vec<JoinHandle<()>>>,
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
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
        self.finished.notify_all();
    }

    fn stopped(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn stats(&self) -> Stats {
        self.counters.snapshot(
            self.resolver.total() as u64,
            self.resolver.remaining() as u64,
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
    /// range offers it), in aligned chunks of `config.chunk` bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a range is not this userfaultfd's, is not
    /// aligned to its page size, overlaps another or extends past the
    /// source, or `threads` is 0; [`Error::Uffd`] from `fcntl` or
    /// `eventfd`; [`Error::Io`] when a thread cannot be spawned.
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
        if !uffd.is_nonblocking()? {
            uffd.set_nonblocking(true)?;
        }
        let counters = Arc::new(Counters::default());
        let resolver = Resolver::new(
            uffd,
            ranges,
            source,
            config.chunk,
            config.record,
            counters.clone(),
        )?;
        let stop = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
            .map_err(|e| Error::io("eventfd", e))?;
        let shared = Arc::new(Shared {
            resolver,
            counters,
            stop,
            stopping: AtomicBool::new(false),
            exit: Mutex::new(None),
            finished: Condvar::new(),
            busy: AtomicUsize::new(0),
            read_lock: Mutex::new(()),
            peer: config.peer,
            prefetch_done: AtomicBool::new(false),
            children: Mutex::new(Vec::new()),
        });
        let mut server = Server {
            shared: shared.clone(),
            threads: Vec::new(),
        };
        for i in 0..config.threads {
            let shared = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("pager-fault-{i}"))
                .spawn(move || handler_thread(&shared))
                .map_err(|e| Error::io("spawn", e))?;
            server.threads.push(t);
        }
        if config.prefetch {
            let shared = shared.clone();
            let ws = config.working_set;
            let finish = config.finish_when_complete;
            let t = std::thread::Builder::new()
                .name("pager-prefetch".into())
                .spawn(move || populator_thread(&shared, ws.as_ref(), finish))
                .map_err(|e| Error::io("spawn", e))?;
            server.threads.push(t);
        }
        Ok(server)
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

/// Faults kept for a retry after `EAGAIN` without allocating.
const MAX_DEFERRED: usize = 1024;

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: d.subsec_nanos().into(),
    }
}

fn handler_thread(shared: &Arc<Shared>) {
    serve(
        shared,
        &shared.resolver,
        shared.peer.as_ref().map(|p| p.as_fd()),
    );
}

/// One handler thread's loop over `resolver`'s userfaultfd.
fn serve(shared: &Arc<Shared>, resolver: &Resolver, peer: Option<BorrowedFd<'_>>) {
    let uffd = resolver.uffd().clone();
    // Everything is allocated here, before the first read: from the poll to
    // the end of applying a batch's events nothing allocates (see
    // `Scratch`). Deferred faults are bounded by the faulting threads
    // (each waits on one fault at a time).
    let mut buf = EventBuffer::with_capacity(BATCH);
    let mut faults: Vec<usize> = Vec::with_capacity(4 * BATCH + MAX_DEFERRED);
    let mut deferred: Vec<usize> = Vec::with_capacity(4 * BATCH + MAX_DEFERRED);
    let mut forks: Vec<Uffd> = Vec::with_capacity(BATCH);
    let mut scratch = resolver.scratch();
    loop {
        let timeout = (!deferred.is_empty()).then(|| timespec(Duration::from_micros(200)));
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
        faults.clear();
        faults.append(&mut deferred);
        if readable.contains(PollFlags::IN) {
            let _order = shared.read_lock.lock().unwrap_or_else(|e| e.into_inner());
            let events = match uffd.read_events(&mut buf) {
                Ok(events) => events,
                Err(e) => {
                    shared.finish(Exit::Failed(e.into()));
                    return;
                }
            };
            for event in events {
                match event {
                    Event::PageFault { address, .. } => {
                        // Served below, after the batch.
                        event.take();
                        faults.push(address);
                    }
                    Event::Remove { start, end } => resolver.remove(start, end),
                    Event::Unmap { start, end } => resolver.unmap(start, end),
                    Event::Remap { from, to, len } => {
                        if let Err(e) = resolver.remap(from, to, len) {
                            shared.finish(Exit::Failed(e));
                            return;
                        }
                    }
                    // Served once the order lock is released: setting up a
                    // child allocates.
                    Event::Fork { uffd: child } => forks.push(child),
                    _ => Counters::add(&shared.counters.other_events, 1),
                }
            }
        }
        for child in forks.drain(..) {
            spawn_child(shared, resolver, child);
        }
        if faults.is_empty() {
            continue;
        }
        let read_at = Instant::now();
        shared.busy.fetch_add(1, Ordering::AcqRel);
        for &addr in &faults {
            match resolver.fault(addr, &mut scratch) {
                Ok(Outcome::Done) => {
                    Counters::add(&shared.counters.demand_faults, 1);
                    shared.counters.record_latency(read_at.elapsed());
                }
                Ok(Outcome::Again) => {
                    Counters::add(&shared.counters.retries, 1);
                    deferred.push(addr);
                }
                Ok(Outcome::Gone) => Counters::add(&shared.counters.other_events, 1),
                Ok(Outcome::PeerGone) => {
                    shared.busy.fetch_sub(1, Ordering::AcqRel);
                    shared.finish(Exit::PeerClosed {
                        reason: "the process whose memory is served has exited".into(),
                    });
                    return;
                }
                Err(e) => {
                    shared.busy.fetch_sub(1, Ordering::AcqRel);
                    shared.finish(Exit::Failed(e));
                    return;
                }
            }
        }
        shared.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves a forked child's copy of the ranges on its own thread, from the
/// state the parent had at the fork, until the server stops (the server
/// joins it).
fn spawn_child(shared: &Arc<Shared>, parent: &Resolver, child: Uffd) {
    let resolver = match parent.fork(child) {
        Ok(r) => r,
        Err(e) => {
            shared.finish(Exit::Failed(e));
            return;
        }
    };
    let shared_for_child = shared.clone();
    let t = std::thread::Builder::new()
        .name("pager-fork".into())
        .spawn(move || serve(&shared_for_child, &resolver, None));
    match t {
        Ok(t) => shared
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(t),
        Err(e) => shared.finish(Exit::Failed(Error::io("spawn", e))),
    }
}

/// Gives the CPU to the handler threads while demand faults are pending or
/// being resolved, for at most `MAX_YIELD` per background step: a guest
/// that faults without pause must not stop the populator, whose work is
/// what the guest will need next.
fn yield_to_demand(shared: &Shared) {
    const MAX_YIELD: Duration = Duration::from_micros(500);
    let uffd = shared.resolver.uffd();
    let mut since = None;
    loop {
        if shared.stopped() {
            return;
        }
        let busy = shared.busy.load(Ordering::Acquire) > 0;
        let mut fds = [PollFd::new(uffd, PollFlags::IN)];
        let pending = matches!(rustix::event::poll(&mut fds, Some(&timespec(Duration::ZERO))), Ok(n) if n > 0);
        if !busy && !pending {
            return;
        }
        let t0 = *since.get_or_insert_with(Instant::now);
        if t0.elapsed() >= MAX_YIELD {
            return;
        }
        std::thread::yield_now();
    }
}

fn populator_thread(shared: &Shared, working_set: Option<&WorkingSet>, finish: bool) {
    let resolver = &shared.resolver;
    let mut scratch = resolver.scratch();
    let first: Vec<usize> = working_set
        .map(|ws| {
            ws.pages()
                .iter()
                .filter_map(|&p| {
                    p.checked_mul(u64::from(ws.page_size()))
                        .and_then(|off| resolver.index_of_offset(off))
                })
                .collect()
        })
        .unwrap_or_default();
    let prefetch = |index: usize, scratch: &mut Scratch| -> bool {
        loop {
            if shared.stopped() {
                return false;
            }
            yield_to_demand(shared);
            match resolver.prefetch(index, scratch) {
                Ok(Outcome::Done | Outcome::Gone) => return true,
                Ok(Outcome::Again) => {
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
    };
    for &index in &first {
        if resolver.is_pending(index) && !prefetch(index, &mut scratch) {
            return;
        }
    }
    // Sequential passes until nothing is left (a claim given back after
    // EAGAIN, or held by a handler thread, is found on the next pass).
    while resolver.remaining() > 0 {
        for index in 0..resolver.total() {
            if resolver.is_pending(index) && !prefetch(index, &mut scratch) {
                return;
            }
        }
        if resolver.remaining() > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    shared.prefetch_done.store(true, Ordering::Release);
    if finish {
        match resolver.finish() {
            Ok(()) => shared.finish(Exit::Complete),
            Err(e) => shared.finish(Exit::Failed(e)),
        }
    }
}
