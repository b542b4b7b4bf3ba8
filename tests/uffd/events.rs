//! Events: REMOVE (and EAGAIN until it is read), REMAP, UNMAP, thread ids,
//! exact addresses, batched and blocking reads, EINTR, and what closing a
//! userfaultfd does to the threads waiting on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use userfault::Error;
use userfault::uffd::{
    CopyMode, Event, EventBuffer, FaultKind, Features, RegisterMode, Uffd, ZeropageMode,
};

use super::fixtures::{self, Kind, Mem, TIMEOUT, Touch, ok, pattern};
use crate::util::require;

/// A system call made in another thread, because the kernel makes the
/// caller wait until the event it raises is read.
struct Blocked {
    rx: mpsc::Receiver<i64>,
}

impl Blocked {
    fn spawn(call: impl FnOnce() -> i64 + Send + 'static) -> Blocked {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(call());
        });
        Blocked { rx }
    }

    fn still_waiting(&self) -> bool {
        matches!(
            self.rx.recv_timeout(fixtures::STILL_BLOCKED),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    }

    #[track_caller]
    fn result(self) -> i64 {
        self.rx
            .recv_timeout(TIMEOUT)
            .expect("the call never returned")
    }
}

/// An anonymous mapping made with raw mmap, for the tests that move or
/// unmap it behind any owner's back.
fn raw_anon(len: usize) -> usize {
    // SAFETY: a fresh private anonymous mapping at an address the kernel
    // chooses.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED);
    addr as usize
}

/// While a REMOVE event is unread, `madvise` waits and every resolution
/// fails with EAGAIN; reading the event lets both go on.
#[test]
fn remove_event_holds_madvise_and_resolutions_until_read() {
    const TEST: &str = "remove_event_holds_madvise_and_resolutions_until_read";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::EVENT_REMOVE));
    let ps = fixtures::page();
    let mem = Mem::new(Kind::AnonPrivate, 4).expect("memory");
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg =
        unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }.expect("register");
    let data = pattern(5, 2 * ps);
    assert_eq!(
        ok(uffd.copy(&reg, mem.addr(), &data, CopyMode::empty())),
        Ok(2 * ps)
    );

    let (addr, len) = (mem.addr(), 2 * ps);
    // SAFETY: drops pages of a mapping the test owns; nothing references it.
    let madvise = Blocked::spawn(move || unsafe {
        libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) as i64
    });
    assert!(uffd.poll(Some(TIMEOUT)).expect("poll"), "no REMOVE event");
    assert!(
        madvise.still_waiting(),
        "madvise returned before the event was read"
    );
    let err = uffd
        .copy(&reg, mem.page_addr(2), &data[..ps], CopyMode::empty())
        .expect_err("REMOVE pending");
    assert!(err.is_again(), "{err}");
    assert!(err.to_string().contains("read the pending events"), "{err}");

    match fixtures::next_event(&uffd) {
        Event::Remove { start, end } => assert_eq!((start, end), (addr, addr + len)),
        other => panic!("expected REMOVE, got {other:?}"),
    }
    assert_eq!(madvise.result(), 0);
    assert_eq!(
        ok(uffd.copy(&reg, mem.page_addr(2), &data[..ps], CopyMode::empty())),
        Ok(ps)
    );
    // The removed pages are missing again.
    let touch = Touch::read(mem.addr(), 8);
    match fixtures::next_event(&uffd) {
        Event::PageFault { address, kind, .. } => {
            assert_eq!((address, kind), (mem.addr(), FaultKind::Missing))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ok(uffd.zeropage(&reg, mem.addr(), ps, ZeropageMode::empty())),
        Ok(ps)
    );
    assert_eq!(touch.wait().data, vec![0; 8]);
}

/// `mremap` of a registered range raises REMAP (and waits for it to be
/// read); the registration moves with the range.
#[test]
fn remap_event_moves_the_registration() {
    const TEST: &str = "remap_event_moves_the_registration";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::EVENT_REMAP));
    let ps = fixtures::page();
    let len = 4 * ps;
    let old = raw_anon(len);
    let target = raw_anon(len);
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg = unsafe { uffd.register(old, len, RegisterMode::MISSING) }.expect("register");
    let data = pattern(6, ps);
    assert_eq!(ok(uffd.copy(&reg, old, &data, CopyMode::empty())), Ok(ps));

    // SAFETY: moves the test's own mapping over the test's own reservation.
    let mremap = Blocked::spawn(move || unsafe {
        libc::mremap(
            old as *mut libc::c_void,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            target as *mut libc::c_void,
        ) as i64
    });
    assert!(uffd.poll(Some(TIMEOUT)).expect("poll"));
    assert!(
        mremap.still_waiting(),
        "mremap returned before the event was read"
    );
    let err = uffd
        .zeropage(&reg, old + ps, ps, ZeropageMode::empty())
        .expect_err("REMAP pending");
    assert!(err.is_again(), "{err}");
    match fixtures::next_event(&uffd) {
        Event::Remap {
            from,
            to,
            len: moved,
        } => assert_eq!((from, to, moved), (old, target, len)),
        other => panic!("expected REMAP, got {other:?}"),
    }
    assert_eq!(mremap.result(), target as i64);

    assert_eq!(
        Touch::read(target, ps).wait().data,
        data,
        "page 0 moved with its data"
    );
    let touch = Touch::read(target + ps, 16);
    match fixtures::next_event(&uffd) {
        Event::PageFault { address, .. } => assert_eq!(address, target + ps),
        other => panic!("{other:?}"),
    }
    // The old registration value describes the old place: refused there by
    // the kernel. Registering the new place again returns its value.
    let err = uffd
        .copy(&reg, old + ps, &data, CopyMode::empty())
        .expect_err("the old range is gone");
    assert!(err.errno().is_some(), "{err}");
    // SAFETY: already registered with this userfaultfd; only accessed
    // through raw pointers.
    let moved = unsafe { uffd.register(target, len, RegisterMode::MISSING) }.expect("register");
    assert_eq!(
        ok(uffd.copy(&moved, target + ps, &data, CopyMode::empty())),
        Ok(ps)
    );
    assert_eq!(touch.wait().data, data[..16]);
    uffd.unregister(&moved).expect("unregister");
    // SAFETY: unmaps the test's own mapping, now unregistered.
    unsafe { libc::munmap(target as *mut libc::c_void, len) };
}

/// `munmap` of a registered range raises UNMAP (one event per call, for
/// the range asked for) and waits for it to be read.
#[test]
fn unmap_event_reports_the_range() {
    const TEST: &str = "unmap_event_reports_the_range";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::EVENT_UNMAP));
    let ps = fixtures::page();
    let len = 3 * ps;
    let addr = raw_anon(len);
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg = unsafe { uffd.register(addr, len, RegisterMode::MISSING) }.expect("register");
    // Unmapped pieces are never unmapped again: another test may map there.
    // SAFETY: unmaps the last page of the test's own mapping.
    let munmap = Blocked::spawn(move || unsafe {
        libc::munmap((addr + 2 * ps) as *mut libc::c_void, ps) as i64
    });
    assert!(uffd.poll(Some(TIMEOUT)).expect("poll"));
    assert!(
        munmap.still_waiting(),
        "munmap returned before the event was read"
    );
    let err = uffd
        .zeropage(&reg, addr, ps, ZeropageMode::empty())
        .expect_err("UNMAP pending");
    assert!(err.is_again(), "{err}");
    match fixtures::next_event(&uffd) {
        Event::Unmap { start, end } => assert_eq!((start, end), (addr + 2 * ps, addr + len)),
        other => panic!("expected UNMAP, got {other:?}"),
    }
    assert_eq!(munmap.result(), 0);
    // SAFETY: unmaps the rest of the test's own mapping.
    let rest =
        Blocked::spawn(move || unsafe { libc::munmap(addr as *mut libc::c_void, 2 * ps) as i64 });
    match fixtures::next_event(&uffd) {
        Event::Unmap { start, end } => assert_eq!((start, end), (addr, addr + 2 * ps)),
        other => panic!("expected UNMAP, got {other:?}"),
    }
    assert_eq!(rest.result(), 0);
    fixtures::assert_no_event(&uffd);
}

/// THREAD_ID names the faulting thread; EXACT_ADDRESS keeps the low bits.
/// Without the features: no thread id, a page-aligned address.
#[test]
fn thread_id_and_exact_address_follow_the_features() {
    const TEST: &str = "thread_id_and_exact_address_follow_the_features";
    let ps = fixtures::page();
    // EXACT_ADDRESS came in Linux 5.18, THREAD_ID in 4.14: ask for what the
    // kernel offers of them.
    let offered = match crate::util::uffd_features() {
        Ok(word) => Features::from_bits_retain(word),
        Err(e) => {
            crate::util::skip(TEST, "uffd", &e);
            return;
        }
    };
    for features in [
        (Features::THREAD_ID | Features::EXACT_ADDRESS) & offered,
        Features::empty(),
    ] {
        let uffd = require!(TEST, "uffd", fixtures::open(features));
        let mem = Mem::new(Kind::AnonPrivate, 1).expect("memory");
        // SAFETY: the mapping is only accessed through raw pointers.
        let reg =
            unsafe { uffd.register(mem.addr(), ps, RegisterMode::MISSING) }.expect("register");
        let touch = Touch::write(mem.addr() + 0x123, 9);
        let (address, thread_id, write) = match fixtures::next_event(&uffd) {
            Event::PageFault {
                address,
                thread_id,
                write,
                ..
            } => (address, thread_id, write),
            other => panic!("{other:?}"),
        };
        assert!(write);
        assert_eq!(
            ok(uffd.zeropage(&reg, address & !(ps - 1), ps, ZeropageMode::empty())),
            Ok(ps)
        );
        let tid = touch.wait().tid;
        if features.is_empty() {
            assert_eq!((address, thread_id), (mem.addr(), None));
        } else {
            let exact = features.contains(Features::EXACT_ADDRESS);
            let want = mem.addr() + if exact { 0x123 } else { 0 };
            assert_eq!(address, want, "the exact address only with EXACT_ADDRESS");
            assert_eq!(thread_id, Some(tid), "the faulting thread's gettid()");
        }
    }
}

/// One read returns every pending event up to the buffer's capacity; a
/// non-blocking read with nothing pending returns none.
#[test]
fn reads_are_batched_into_the_callers_buffer() {
    const TEST: &str = "reads_are_batched_into_the_callers_buffer";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    let mem = Mem::new(Kind::AnonPrivate, 6).expect("memory");
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg =
        unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }.expect("register");
    let mut buf = EventBuffer::with_capacity(4);
    assert_eq!(buf.capacity(), 4);
    assert_eq!(EventBuffer::with_capacity(0).capacity(), 1);
    assert!(uffd.read_events(&mut buf).expect("read").is_empty());

    let touches: Vec<Touch> = (0..6).map(|i| Touch::read(mem.page_addr(i), 8)).collect();
    fixtures::wait_pending(&uffd, 6);
    let mut addresses = Vec::new();
    for batch in [4, 2] {
        let events = uffd.read_events(&mut buf).expect("read");
        assert_eq!(events.len(), batch, "one read, {batch} events");
        for event in events {
            match event {
                Event::PageFault { address, .. } => {
                    event.take();
                    addresses.push(address);
                }
                other => panic!("{other:?}"),
            }
        }
    }
    addresses.sort();
    assert_eq!(
        addresses,
        (0..6).map(|i| mem.page_addr(i)).collect::<Vec<_>>()
    );
    assert_eq!(
        ok(uffd.zeropage(&reg, mem.addr(), mem.len(), ZeropageMode::empty())),
        Ok(mem.len())
    );
    for touch in touches {
        assert_eq!(touch.wait().data, vec![0; 8]);
    }
    assert!(uffd.read_events(&mut buf).expect("read").is_empty());
}

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

/// A blocking userfaultfd: `poll` is refused (the kernel reports POLLERR),
/// `read` waits for an event and retries when a signal interrupts it.
#[test]
fn blocking_reads_wait_and_survive_signals() {
    const TEST: &str = "blocking_reads_wait_and_survive_signals";
    let uffd = require!(
        TEST,
        "uffd",
        Uffd::builder().create().map_err(|e| e.to_string())
    );
    let ps = fixtures::page();
    let err = uffd.poll(Some(Duration::ZERO)).expect_err("blocking fd");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(err.to_string().contains("POLLERR"), "{err}");

    // SIGUSR1 interrupts system calls (no SA_RESTART) and is counted.
    // SAFETY: installs a handler that only touches an atomic.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = count_signal as *const () as usize;
        action.sa_flags = 0;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }

    let mem = Mem::new(Kind::AnonPrivate, 1).expect("memory");
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg = unsafe { uffd.register(mem.addr(), ps, RegisterMode::MISSING) }.expect("register");
    let uffd = Arc::new(uffd);
    let (tx, rx) = mpsc::channel();
    let reader = {
        let uffd = Arc::clone(&uffd);
        std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tx.send(unsafe { libc::pthread_self() }).expect("send");
            let mut buf = EventBuffer::with_capacity(2);
            let events: Vec<Event> = uffd
                .read_events(&mut buf)
                .expect("blocking read")
                .map(Event::into_taken)
                .collect();
            events
        })
    };
    let thread = rx.recv_timeout(TIMEOUT).expect("reader started");
    let before = SIGNALS.load(Ordering::SeqCst);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(30));
        // SAFETY: signals a live thread of this process.
        assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR1) }, 0);
    }
    std::thread::sleep(Duration::from_millis(30));
    assert!(!reader.is_finished(), "read returned without an event");
    assert!(
        SIGNALS.load(Ordering::SeqCst) > before,
        "the signals arrived"
    );

    let touch = Touch::read(mem.addr(), 4);
    let events = reader.join().expect("reader");
    assert_eq!(events.len(), 1);
    assert!(matches!(events[0], Event::PageFault { address, .. } if address == mem.addr()));
    assert_eq!(
        ok(uffd.zeropage(&reg, mem.addr(), ps, ZeropageMode::empty())),
        Ok(ps)
    );
    touch.wait();
}

/// Closing the userfaultfd wakes every thread waiting on one of its
/// faults; the access is retried and handled by the kernel as if the range
/// had never been registered.
#[test]
fn closing_the_userfaultfd_releases_waiting_threads() {
    const TEST: &str = "closing_the_userfaultfd_releases_waiting_threads";
    for kind in Kind::ALL {
        let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
        let Some(mem) = Mem::for_test(TEST, kind, 1) else {
            continue;
        };
        if !fixtures::supports(TEST, kind, RegisterMode::MISSING | RegisterMode::WP) {
            continue;
        }
        // SAFETY: the mapping is only accessed through raw pointers.
        unsafe {
            uffd.register(
                mem.addr(),
                mem.len(),
                RegisterMode::MISSING | RegisterMode::WP,
            )
        }
        .expect("register");
        let touch = Touch::read(mem.addr() + 100, 32);
        assert!(matches!(
            fixtures::next_event(&uffd),
            Event::PageFault { .. }
        ));
        assert!(touch.still_blocked());
        drop(uffd);
        assert_eq!(
            touch.wait().data,
            vec![0; 32],
            "{kind:?}: zero-filled by the kernel"
        );
    }
}

/// Events dropped before they are all iterated wake the page faults left
/// in the batch: their threads fault again (new events) instead of staying
/// blocked on faults the kernel already considers delivered.
#[test]
fn dropping_events_early_wakes_the_faults_left_in_the_batch() {
    const TEST: &str = "dropping_events_early_wakes_the_faults_left_in_the_batch";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    let mem = Mem::new(Kind::AnonPrivate, 3).expect("memory");
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg =
        unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }.expect("register");
    let touches: Vec<Touch> = (0..3).map(|i| Touch::read(mem.page_addr(i), 8)).collect();
    fixtures::wait_pending(&uffd, 3);
    let mut buf = EventBuffer::with_capacity(3);
    let handled = {
        let mut events = uffd.read_events(&mut buf).expect("read");
        assert_eq!(events.len(), 3, "one read takes all three faults");
        let Some(event @ Event::PageFault { .. }) = events.next() else {
            panic!("expected a page fault")
        };
        event.take();
        let Event::PageFault { address, .. } = event else {
            unreachable!()
        };
        address
        // `events` is dropped here with two faults not iterated.
    };
    assert_eq!(
        ok(uffd.zeropage(&reg, handled, fixtures::page(), ZeropageMode::empty())),
        Ok(fixtures::page())
    );
    // The two others were woken, retried and faulted again.
    fixtures::wait_pending(&uffd, 2);
    let again: Vec<usize> = uffd
        .read_events(&mut buf)
        .expect("read")
        .map(|e| match e {
            Event::PageFault { address, .. } => {
                e.take();
                address
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(again.len(), 2);
    assert!(!again.contains(&handled));
    for address in again {
        assert_eq!(
            ok(uffd.zeropage(&reg, address, fixtures::page(), ZeropageMode::empty())),
            Ok(fixtures::page())
        );
    }
    for touch in touches {
        assert_eq!(touch.wait().data, vec![0; 8]);
    }
}

/// Sets or clears `O_NONBLOCK` on `uffd` without telling it.
fn set_flag_behind_its_back(uffd: &Uffd, nonblocking: bool) {
    let mut fl = rustix::fs::fcntl_getfl(uffd).expect("F_GETFL");
    fl.set(rustix::fs::OFlags::NONBLOCK, nonblocking);
    rustix::fs::fcntl_setfl(uffd, fl).expect("F_SETFL");
}

/// `poll` remembers the non-blocking mode it was created or set with
/// instead of asking `fcntl` each time: a mode cleared behind its back
/// shows as the kernel's POLLERR, explained; after that, and for a
/// descriptor of unknown mode, it asks again.
#[test]
fn poll_remembers_the_non_blocking_mode() {
    const TEST: &str = "poll_remembers_the_non_blocking_mode";
    require!(
        TEST,
        "uffd",
        userfault::uffd::query_kernel().map_err(|e| e.to_string())
    );
    let uffd = Uffd::builder()
        .non_blocking(true)
        .create()
        .expect("userfaultfd");
    assert_eq!(ok(uffd.poll(Some(Duration::ZERO))), Ok(false));
    set_flag_behind_its_back(&uffd, false);
    let e = uffd
        .poll(Some(Duration::ZERO))
        .expect_err("a blocking userfaultfd");
    assert!(e.to_string().contains("O_NONBLOCK was cleared"), "{e}");
    // The kernel's answer made it forget the mode: now fcntl says so
    // before any poll.
    let e = uffd.poll(Some(Duration::ZERO)).expect_err("still blocking");
    assert!(e.to_string().contains("create it non-blocking"), "{e}");
    uffd.set_nonblocking(true).expect("F_SETFL");
    assert_eq!(ok(uffd.poll(Some(Duration::ZERO))), Ok(false));

    // Created blocking and switched behind its back: found by asking.
    let blocking = Uffd::new().expect("userfaultfd");
    let e = blocking.poll(Some(Duration::ZERO)).expect_err("blocking");
    assert!(e.to_string().contains("create it non-blocking"), "{e}");
    set_flag_behind_its_back(&blocking, true);
    assert_eq!(ok(blocking.poll(Some(Duration::ZERO))), Ok(false));
}

/// A page fault that a handler iterates but no typed region matches (here:
/// a range registered on the same userfaultfd that the handler has no
/// region for) is woken when its event drops: the thread faults again — a
/// second event for the same page — instead of waiting for ever. A fault
/// the handler takes ([`Event::take`]) is not woken: no second event.
#[test]
fn page_faults_matched_to_no_region_are_woken() {
    const TEST: &str = "page_faults_matched_to_no_region_are_woken";
    let uffd = Arc::new(require!(TEST, "uffd", fixtures::open(Features::empty())));
    let known = Mem::new(Kind::AnonPrivate, 1).expect("memory");
    let other = Mem::new(Kind::AnonPrivate, 1).expect("memory");
    let ps = known.page_size();
    // SAFETY: both mappings are only accessed through raw pointers.
    let region = unsafe {
        userfault::resolve::Region::copy_capable(
            uffd.clone(),
            known.addr(),
            ps,
            RegisterMode::MISSING,
            ps,
        )
    }
    .expect("region");
    // SAFETY: as above.
    let reg = unsafe { uffd.register(other.addr(), ps, RegisterMode::MISSING) }.expect("register");

    let touch = Touch::read(other.addr(), 16);
    fixtures::wait_pending(&uffd, 1);
    let mut buf = EventBuffer::with_capacity(4);
    let mut matched = 0;
    let mut seen = 0;
    for event in uffd.read_events(&mut buf).expect("read") {
        seen += 1;
        if region.fault(&event).is_some() {
            matched += 1;
        }
        assert!(!event.is_taken(), "no region took the event");
    }
    assert_eq!((seen, matched), (1, 0));
    // Woken: the thread retries, the page is still missing, it faults again.
    match fixtures::next_event(&uffd) {
        Event::PageFault { address, .. } => assert_eq!(address, other.addr()),
        e => panic!("unexpected event {e:?}"),
    }
    // `next_event` took that one: it stays blocked, with no new event.
    assert!(touch.still_blocked(), "a taken fault was woken");
    fixtures::assert_no_event(&uffd);
    let data = pattern(7, ps);
    assert_eq!(
        ok(uffd.copy(&reg, other.addr(), &data, CopyMode::empty())),
        Ok(ps)
    );
    assert_eq!(touch.wait().data, data[..16]);

    // The region's own fault: `Region::fault` takes it, so dropping the
    // event (and resolving through the fault) leaves no second event.
    let touch = Touch::read(known.addr(), 16);
    fixtures::wait_pending(&uffd, 1);
    for event in uffd.read_events(&mut buf).expect("read") {
        let fault = region.fault(&event).expect("the region's fault");
        assert!(event.is_taken());
        match fault {
            userfault::resolve::Fault::Missing(f) => {
                f.copy(&data).expect("copy");
            }
            _ => panic!("not a missing fault"),
        }
    }
    assert_eq!(touch.wait().data, data[..16]);
    fixtures::assert_no_event(&uffd);
}

/// `Events::take_fault` hands out the page faults of a batch, already
/// taken (dropping the batch does not wake them), and stops at the first
/// other event, which `next` then returns: every record is seen once.
/// (The kernel hands pending faults out before other events.)
#[test]
fn take_fault_takes_faults_and_leaves_other_events_to_next() {
    const TEST: &str = "take_fault_takes_faults_and_leaves_other_events_to_next";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::EVENT_REMOVE));
    let ps = fixtures::page();
    let mem = Mem::new(Kind::AnonPrivate, 4).expect("memory");
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg =
        unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }.expect("register");
    let data = pattern(9, 2 * ps);
    assert_eq!(
        ok(uffd.copy(&reg, mem.page_addr(2), &data, CopyMode::empty())),
        Ok(2 * ps)
    );
    // A REMOVE, a read fault and a write fault, all pending at once.
    let (addr, len) = (mem.page_addr(2), 2 * ps);
    // SAFETY: drops pages of a mapping the test owns; nothing references it.
    let madvise = Blocked::spawn(move || unsafe {
        libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) as i64
    });
    assert!(
        madvise.still_waiting(),
        "madvise returned before its event was read"
    );
    let first = Touch::read(mem.page_addr(0) + 24, 8);
    let second = Touch::write(mem.page_addr(1), 0x5a);
    fixtures::wait_pending(&uffd, 2);

    let mut buf = EventBuffer::with_capacity(8);
    {
        let mut events = uffd.read_events(&mut buf).expect("read");
        assert_eq!(events.len(), 3, "one read of the three records");
        let mut faults = [
            events.take_fault().expect("a fault"),
            events.take_fault().expect("another fault"),
        ];
        faults.sort_by_key(|f| f.address);
        assert_eq!(faults[0].address, mem.page_addr(0), "reported page-aligned");
        assert_eq!(
            (faults[0].kind(), faults[0].write()),
            (FaultKind::Missing, false)
        );
        assert_eq!(faults[1].address, mem.page_addr(1));
        assert_eq!(
            (faults[1].kind(), faults[1].write()),
            (FaultKind::Missing, true)
        );
        assert_eq!(events.take_fault(), None, "stops at the REMOVE");
        match events.next() {
            Some(Event::Remove { start, end }) => assert_eq!((start, end), (addr, addr + len)),
            other => panic!("expected REMOVE, got {other:?}"),
        }
        assert_eq!(events.take_fault(), None, "the end of the batch");
        assert!(events.next().is_none());
    }
    assert_eq!(madvise.result(), 0);
    // Taken: dropping the batch woke neither thread.
    assert!(first.still_blocked(), "a taken fault was woken");
    assert!(second.still_blocked(), "a taken fault was woken");
    assert_eq!(
        ok(uffd.copy(&reg, mem.addr(), &data, CopyMode::empty())),
        Ok(2 * ps)
    );
    assert_eq!(first.wait().data, data[24..32].to_vec());
    second.wait();
    // SAFETY: the page is present (copied above, then written by the
    // thread); nothing else accesses it now.
    assert_eq!(unsafe { *(mem.page_addr(1) as *const u8) }, 0x5a);
}
