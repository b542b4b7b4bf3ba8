//! `PAGEMAP_SCAN` as an iterator (`userfault::pagemap`) and working-set
//! tracking (`userfault::workingset`) on each mechanism.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use userfault::pagemap::{PageCategories, Pagemap, Scan};
use userfault::uffd::{CopyMode, Event, EventBuffer, FaultKind, Features, RegisterMode};
use userfault::workingset::{Mechanism, Tracker};

use super::fixtures::{self, Kind, Mem, ok, pattern};
use super::rwp::open_rwp;
use crate::util::{self, require};

fn write_byte(addr: usize, value: u8) {
    // SAFETY: a raw write into mapped memory the test owns.
    unsafe { (addr as *mut u8).write_volatile(value) };
}

fn read_byte(addr: usize) -> u8 {
    // SAFETY: a raw read of mapped memory the test owns.
    unsafe { (addr as *const u8).read_volatile() }
}

/// The pagemap, or the skip reason where the kernel has no PAGEMAP_SCAN
/// (before 6.7).
fn pagemap_scan() -> Result<Pagemap, String> {
    let pagemap = Pagemap::open().map_err(|e| e.to_string())?;
    let page = fixtures::page();
    let mem = Mem::new(Kind::AnonPrivate, 1)?;
    let probe = Scan::new(mem.addr(), mem.addr() + page).report(PageCategories::PRESENT);
    match pagemap.scan(&probe).map_err(|e| e.to_string())?.next() {
        Some(Err(e)) if e.is_unsupported() => Err(format!("{e}")),
        Some(Err(e)) => panic!("PAGEMAP_SCAN on a plain mapping: {e}"),
        _ => Ok(pagemap),
    }
}

/// Present pages come back as runs in address order; more runs than one
/// kernel call returns are fetched in several calls and joined where a run
/// continues; `max_pages` stops early; an unaligned start is refused.
#[test]
fn pagemap_scan_iterates_runs_in_address_order() {
    const TEST: &str = "pagemap_scan_iterates_runs_in_address_order";
    let pagemap = require!(TEST, "pagemap-scan", pagemap_scan());
    let ps = fixtures::page();
    let pages = 300;
    let mem = Mem::new(Kind::AnonPrivate, pages).expect("memory");
    // Every third page, and one run of ten.
    let touched: Vec<usize> = (0..pages)
        .filter(|i| i % 3 == 0 || (200..210).contains(i))
        .collect();
    for &i in &touched {
        write_byte(mem.page_addr(i), 1);
    }
    let scan = Scan::new(mem.addr(), mem.addr() + mem.len())
        .require(PageCategories::PRESENT)
        .report(PageCategories::PRESENT);
    let regions: Vec<_> = pagemap
        .scan(&scan)
        .expect("scan")
        .collect::<Result<_, _>>()
        .expect("PAGEMAP_SCAN");
    let mut got = Vec::new();
    for w in regions.windows(2) {
        assert!(w[0].end < w[1].start, "runs in order and joined: {w:?}");
    }
    for r in &regions {
        assert_eq!(r.categories, PageCategories::PRESENT, "{r:?}");
        got.extend(((r.start - mem.addr()) / ps)..((r.end - mem.addr()) / ps));
    }
    assert_eq!(got, touched);
    assert!(regions.len() > 64, "more runs than one call returns");

    let limited: usize = pagemap
        .scan(&scan.max_pages(5))
        .expect("scan")
        .map(|r| r.expect("PAGEMAP_SCAN").len() / ps)
        .sum();
    assert_eq!(limited, 5, "max_pages");

    let err = pagemap
        .scan(&Scan::new(mem.addr() + 1, mem.addr() + mem.len()))
        .expect_err("unaligned start");
    assert_eq!(err.errno(), None, "{err}");
    assert!(err.to_string().contains("PAGEMAP_SCAN"), "{err}");
}

/// On a kernel with RWP_ASYNC a tracker of its own uses it and reports the
/// pages read or written, in address order; `restart` starts a new
/// interval. Without RWP it falls back to written pages (WP_ASYNC).
#[test]
fn working_set_tracker_of_its_own_uses_the_best_async_mechanism() {
    const TEST: &str = "working_set_tracker_of_its_own_uses_the_best_async_mechanism";
    let kernel = require!(
        TEST,
        "uffd",
        userfault::uffd::query_kernel().map_err(|e| e.to_string())
    );
    let ps = fixtures::page();
    let mem = Mem::new(Kind::AnonPrivate, 32).expect("memory");
    for i in 0..32 {
        write_byte(mem.page_addr(i), i as u8);
    }
    let tracker = match Tracker::start(mem.addr(), mem.len(), ps) {
        Ok(t) => t,
        Err(e) => {
            util::skip(TEST, "uffd-wp-async", &format!("no async mechanism: {e}"));
            return;
        }
    };
    let rwp = kernel
        .features()
        .contains(Features::RWP | Features::RWP_ASYNC);
    let expected = if rwp {
        Mechanism::RwpAsync
    } else {
        Mechanism::WrittenPages
    };
    assert_eq!(tracker.mechanism(), expected, "{:?}", kernel.features());
    assert!(tracker.owns_registration());

    assert_eq!(read_byte(mem.page_addr(2)), 2);
    write_byte(mem.page_addr(9), 0x90);
    write_byte(mem.page_addr(30), 0x30);
    let set = ok(tracker.read()).expect("read");
    assert_eq!(set.mechanism(), expected);
    let want: Vec<usize> = if rwp { vec![2, 9, 30] } else { vec![9, 30] }
        .into_iter()
        .map(|i| mem.page_addr(i))
        .collect();
    assert_eq!(set.pages(), &want[..], "{expected:?}");
    assert_eq!(set.first_touch(), None);
    assert!(set.contains(mem.page_addr(9) + 17));
    assert!(!set.contains(mem.page_addr(10)));
    assert_eq!(read_byte(mem.page_addr(9)), 0x90, "data kept");

    ok(tracker.restart()).expect("restart");
    assert!(ok(tracker.read()).expect("read").is_empty());
    write_byte(mem.page_addr(4), 4);
    assert_eq!(
        ok(tracker.read()).expect("read").pages(),
        &[mem.page_addr(4)]
    );
    if !rwp {
        util::skip(
            &format!("{TEST} [RwpAsync]"),
            "uffd-rwp-async",
            "RWP needs Linux 7.3: tracked by written pages instead",
        );
    }
}

/// Attached to a caller's WP_ASYNC userfaultfd and WP registration, a
/// tracker records written pages only (reads are not seen).
#[test]
fn working_set_by_written_pages_with_wp_async() {
    const TEST: &str = "working_set_by_written_pages_with_wp_async";
    let uffd = Arc::new(require!(
        TEST,
        "uffd-wp-async",
        fixtures::open(Features::WP_ASYNC)
    ));
    let ps = fixtures::page();
    let mem = Mem::new(Kind::AnonPrivate, 8).expect("memory");
    for i in 0..8 {
        write_byte(mem.page_addr(i), 0x10 + i as u8);
    }
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg = unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::WP) }.expect("WP");
    let tracker = Tracker::attach(uffd.clone(), reg, ps).expect("attach");
    assert_eq!(tracker.mechanism(), Mechanism::WrittenPages);
    assert!(!tracker.mechanism().records_reads());
    assert_eq!(read_byte(mem.page_addr(1)), 0x11);
    write_byte(mem.page_addr(3), 0x33);
    write_byte(mem.page_addr(6), 0x66);
    fixtures::assert_no_event(&uffd);
    let set = ok(tracker.read()).expect("read");
    assert_eq!(set.pages(), &[mem.page_addr(3), mem.page_addr(6)]);
    assert_eq!(read_byte(mem.page_addr(6)), 0x66);
}

/// Attached to a demand-paged MISSING registration (no RWP), a tracker
/// records the faults the handler reports: first-touch order and address
/// order, each page once.
#[test]
fn working_set_by_fault_order_in_a_demand_paged_run() {
    const TEST: &str = "working_set_by_fault_order_in_a_demand_paged_run";
    let uffd = Arc::new(require!(TEST, "uffd", fixtures::open(Features::empty())));
    let ps = fixtures::page();
    let pages = 8;
    let mem = Mem::new(Kind::AnonPrivate, pages).expect("memory");
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg = unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }
        .expect("register MISSING");
    let tracker = Arc::new(Tracker::attach(uffd.clone(), reg, ps).expect("attach"));
    assert_eq!(tracker.mechanism(), Mechanism::FaultOrder);
    assert!(tracker.mechanism().has_first_touch_order());

    // The page server: resolve each fault with the snapshot's page and
    // report it to the tracker.
    let stop = Arc::new(AtomicBool::new(false));
    let base = mem.addr();
    let server = {
        let (uffd, tracker, stop) = (uffd.clone(), tracker.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = EventBuffer::with_capacity(8);
            let mut served = 0;
            while !stop.load(Ordering::Relaxed) {
                let events = uffd
                    .wait_events(&mut buf, Some(std::time::Duration::from_millis(20)))
                    .expect("events");
                for event in events {
                    let Event::PageFault {
                        address,
                        kind: FaultKind::Missing,
                        ..
                    } = event
                    else {
                        panic!("unexpected {event:?}");
                    };
                    event.take();
                    let page = address & !(ps - 1);
                    tracker.record_fault(page);
                    let data = pattern((page - base) / ps, ps);
                    uffd.copy_or_wake(&reg, page, &data, CopyMode::empty())
                        .expect("copy");
                    served += 1;
                }
            }
            served
        })
    };
    let order = [5, 1, 3, 1, 5, 7];
    for &i in &order {
        assert_eq!(
            read_byte(mem.page_addr(i) + 11),
            pattern(i, ps)[11],
            "page {i} served from the snapshot"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let served = server.join().expect("server");
    assert_eq!(served, 4, "one fault per page");
    let set = ok(tracker.read()).expect("read");
    let at = |v: &[usize]| v.iter().map(|&i| mem.page_addr(i)).collect::<Vec<_>>();
    assert_eq!(set.first_touch(), Some(&at(&[5, 1, 3, 7])[..]));
    assert_eq!(set.pages(), &at(&[1, 3, 5, 7])[..]);
    assert!(!tracker.record_fault(mem.page_addr(5)), "seen before");
    assert!(!tracker.record_fault(mem.addr() + mem.len()), "outside");
}

/// A tracker of the caller's RWP_ASYNC userfaultfd on a demand-paged
/// MISSING | RWP registration uses RWP: pages present before are recorded
/// when accessed, as are pages the handler fills.
#[test]
fn working_set_attached_to_rwp_async_demand_paging() {
    const TEST: &str = "working_set_attached_to_rwp_async_demand_paging";
    let uffd = Arc::new(require!(
        TEST,
        "uffd-rwp-async",
        open_rwp(Features::RWP | Features::RWP_ASYNC)
    ));
    let ps = fixtures::page();
    let mem = Mem::new(Kind::AnonPrivate, 8).expect("memory");
    for i in 0..4 {
        write_byte(mem.page_addr(i), 0x40 + i as u8);
    }
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg = unsafe {
        uffd.register(
            mem.addr(),
            mem.len(),
            RegisterMode::MISSING | RegisterMode::RWP,
        )
    }
    .expect("register MISSING|RWP");
    let tracker = Tracker::attach(uffd.clone(), reg, ps).expect("attach");
    assert_eq!(tracker.mechanism(), Mechanism::RwpAsync);
    assert_eq!(read_byte(mem.page_addr(2)), 0x42);
    // Page 6 is missing: the fault is the handler's; fill it.
    let reader = fixtures::Touch::read(mem.page_addr(6), 4);
    match fixtures::next_event(&uffd) {
        Event::PageFault {
            address,
            kind: FaultKind::Missing,
            ..
        } => assert_eq!(address, mem.page_addr(6)),
        other => panic!("expected a MISSING fault, got {other:?}"),
    }
    ok(uffd.copy(&reg, mem.page_addr(6), &pattern(6, ps), CopyMode::empty())).expect("copy");
    assert_eq!(reader.wait().data, pattern(6, ps)[..4]);
    let set = ok(tracker.read()).expect("read");
    util::report(&format!(
        "workingset: MISSING|RWP attached: {:?}",
        set.pages()
            .iter()
            .map(|p| (p - mem.addr()) / ps)
            .collect::<Vec<_>>()
    ));
    assert!(set.contains(mem.page_addr(2)), "{set:?}");
    assert!(
        set.contains(mem.page_addr(6)),
        "a filled page is accessed: {set:?}"
    );
    for i in [0, 1, 3, 4, 5, 7] {
        assert!(!set.contains(mem.page_addr(i)), "page {i}: {set:?}");
    }
}
