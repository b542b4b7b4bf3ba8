//! A fault storm: four threads fault on every page of 64 MiB while one or
//! two handler threads resolve; every byte read must equal the source. And
//! a handler that stops mid-storm: closing the userfaultfd must release
//! every waiting thread.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use userfault::uffd::{
    CopyMode, Event, EventBuffer, Features, RegisterMode, Registration, Resolved, Uffd,
};

use super::fixtures::{self, Kind, Mem, TIMEOUT};
use crate::util::{self, require};

const SIZE: usize = 64 << 20;
const FAULTERS: usize = 4;

/// How long one faulting thread may take for its whole pass, even on a
/// loaded machine; a hung thread never finishes.
const PASS_TIMEOUT: Duration = Duration::from_secs(60);

/// The source data of page `page`: every 8-byte word is distinct.
fn source(page: usize, out: &mut [u8]) {
    for (w, word) in out.chunks_exact_mut(8).enumerate() {
        let v = ((page as u64) << 32 | w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        word.copy_from_slice(&v.to_ne_bytes());
    }
}

/// What a faulting thread found.
#[derive(Debug, Default)]
struct Tally {
    source: usize,
    zero: usize,
    wrong: Vec<usize>,
}

/// A thread reading every page once, starting at page `first`: each page
/// is copied out through a raw pointer (faulting if missing) and compared
/// byte for byte with the source; a zero page is counted apart.
fn faulter(base: usize, pages: usize, ps: usize, first: usize) -> mpsc::Receiver<Tally> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = vec![0u8; ps];
        let mut expected = vec![0u8; ps];
        let mut tally = Tally::default();
        for i in 0..pages {
            let page = (first + i) % pages;
            // SAFETY: a raw read of the registered mapping, which the test
            // keeps mapped until every faulter has reported.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (base + page * ps) as *const u8,
                    seen.as_mut_ptr(),
                    ps,
                )
            };
            source(page, &mut expected);
            if seen == expected {
                tally.source += 1;
            } else if seen.iter().all(|&b| b == 0) {
                tally.zero += 1;
            } else {
                tally.wrong.push(page);
            }
        }
        let _ = tx.send(tally);
    });
    rx
}

/// Counts of what the handlers did.
#[derive(Default)]
struct Handled {
    copied: AtomicUsize,
    present: AtomicUsize,
    faults: AtomicUsize,
}

/// A handler thread: resolves faults with `copy_or_wake` until `stop`, or
/// until `limit` pages are copied (then it returns without resolving the
/// rest). Marks each page it copies in `copied_pages`.
fn handler(
    uffd: Arc<Uffd>,
    reg: Registration,
    stop: Arc<AtomicBool>,
    handled: Arc<Handled>,
    copied_pages: Arc<Vec<AtomicBool>>,
    limit: usize,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let ps = fixtures::page();
        let mut buf = EventBuffer::with_capacity(64);
        let mut data = vec![0u8; ps];
        while !stop.load(Ordering::SeqCst) {
            let events = uffd
                .wait_events(&mut buf, Some(Duration::from_millis(20)))
                .expect("reading events");
            for event in events {
                let Event::PageFault { address, .. } = event else {
                    panic!("unexpected event {event:?}");
                };
                event.take();
                handled.faults.fetch_add(1, Ordering::SeqCst);
                let page = (address - reg.start()) / ps;
                if handled.copied.load(Ordering::SeqCst) >= limit {
                    return;
                }
                source(page, &mut data);
                copied_pages[page].store(true, Ordering::SeqCst);
                match uffd.copy_or_wake(&reg, reg.start() + page * ps, &data, CopyMode::empty()) {
                    Ok(Resolved::Done(n)) => {
                        assert_eq!(n, ps);
                        handled.copied.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Resolved::AlreadyPresent { .. }) => {
                        handled.present.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("resolving page {page}: {e}"),
                }
            }
        }
    })
}

fn storm(test: &str, handlers: usize) {
    let uffd = require!(test, "uffd", fixtures::open(Features::empty()));
    let mem = Mem::new(Kind::AnonPrivate, SIZE / fixtures::page()).expect("64 MiB");
    let ps = mem.page_size();
    let pages = mem.len() / ps;
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg =
        unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }.expect("register");
    let uffd = Arc::new(uffd);
    let stop = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(Handled::default());
    let copied_pages: Arc<Vec<AtomicBool>> =
        Arc::new((0..pages).map(|_| AtomicBool::new(false)).collect());
    let started = Instant::now();
    let threads: Vec<_> = (0..handlers)
        .map(|_| {
            handler(
                Arc::clone(&uffd),
                reg,
                Arc::clone(&stop),
                Arc::clone(&handled),
                Arc::clone(&copied_pages),
                usize::MAX,
            )
        })
        .collect();
    // Faulters go in pairs over the same pages, so that two threads often
    // wait on one page: one event is resolved by COPY, the other meets
    // EEXIST and only wakes.
    let faulters: Vec<_> = (0..FAULTERS)
        .map(|k| faulter(mem.addr(), pages, ps, (k / 2) * pages / 2))
        .collect();
    let tallies: Vec<Tally> = faulters
        .into_iter()
        .map(|rx| {
            rx.recv_timeout(PASS_TIMEOUT)
                .expect("a faulting thread hung")
        })
        .collect();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("handler");
    }
    util::report(&format!(
        "uffd storm: {FAULTERS} faulters, {handlers} handler(s), {} MiB in {elapsed:?}: \
         {} faults read, {} pages copied, {} EEXIST woken",
        SIZE >> 20,
        handled.faults.load(Ordering::SeqCst),
        handled.copied.load(Ordering::SeqCst),
        handled.present.load(Ordering::SeqCst),
    ));
    for tally in &tallies {
        assert!(
            tally.wrong.is_empty(),
            "pages with wrong bytes: {:?}",
            tally.wrong
        );
        assert_eq!(
            (tally.source, tally.zero),
            (pages, 0),
            "every page from the source"
        );
    }
    assert_eq!(
        handled.copied.load(Ordering::SeqCst),
        pages,
        "each page copied exactly once"
    );
    assert!(copied_pages.iter().all(|p| p.load(Ordering::SeqCst)));
}

#[test]
fn fault_storm_with_one_handler() {
    storm("fault_storm_with_one_handler", 1);
}

#[test]
fn fault_storm_with_two_handlers() {
    storm("fault_storm_with_two_handlers", 2);
}

/// The handler copies a quarter of the pages and stops. Dropping the
/// userfaultfd then releases every faulting thread: the pages it copied
/// read as the source, every other page as zeros (the kernel fills it),
/// and nothing hangs.
#[test]
fn a_handler_stopping_mid_storm_leaves_no_thread_hung() {
    const TEST: &str = "a_handler_stopping_mid_storm_leaves_no_thread_hung";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    let mem = Mem::new(Kind::AnonPrivate, SIZE / fixtures::page()).expect("64 MiB");
    let ps = mem.page_size();
    let pages = mem.len() / ps;
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg =
        unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }.expect("register");
    let uffd = Arc::new(uffd);
    let handled = Arc::new(Handled::default());
    let copied_pages: Arc<Vec<AtomicBool>> =
        Arc::new((0..pages).map(|_| AtomicBool::new(false)).collect());
    let limit = pages / 4;
    let handler = handler(
        Arc::clone(&uffd),
        reg,
        Arc::new(AtomicBool::new(false)),
        Arc::clone(&handled),
        Arc::clone(&copied_pages),
        limit,
    );
    let faulters: Vec<_> = (0..FAULTERS)
        .map(|k| faulter(mem.addr(), pages, ps, k * pages / FAULTERS))
        .collect();
    handler.join().expect("handler");
    assert_eq!(handled.copied.load(Ordering::SeqCst), limit);
    // The faulters get stuck: each waits on a page nobody resolves.
    let deadline = Instant::now() + TIMEOUT;
    while fixtures::fdinfo_faults(&uffd).1 < FAULTERS {
        assert!(Instant::now() < deadline, "the faulters never all blocked");
        std::thread::sleep(Duration::from_millis(2));
    }

    let closed = Instant::now();
    drop(Arc::into_inner(uffd).expect("the handler let go of the userfaultfd"));
    let tallies: Vec<Tally> = faulters
        .into_iter()
        .map(|rx| {
            rx.recv_timeout(PASS_TIMEOUT)
                .expect("a faulting thread hung after close")
        })
        .collect();
    util::report(&format!(
        "uffd: after close, {FAULTERS} blocked faulters finished in {:?}",
        closed.elapsed()
    ));
    let copied = copied_pages
        .iter()
        .filter(|p| p.load(Ordering::SeqCst))
        .count();
    // The handler checks the limit before marking and copying a page.
    assert_eq!(copied, limit);
    for tally in &tallies {
        assert!(
            tally.wrong.is_empty(),
            "pages with wrong bytes: {:?}",
            tally.wrong
        );
        assert_eq!(
            tally.source, limit,
            "exactly the copied pages hold the source"
        );
        assert_eq!(
            tally.zero,
            pages - limit,
            "the rest were zero-filled by the kernel"
        );
    }
}
