//! One page state for every path, reproduced interleaving by interleaving:
//! a userfaultfd MISSING fault against a stage-2 fill and the other way
//! round, populate against a later vCPU fault, a panicking fill, discards
//! (zeros, restore, a balloon's REMOVE event), an eagerly restored file,
//! chunked resolution, and the ownership of registrations (overlap, another
//! userfaultfd's events, a forked child's drop).
//!
//! A shmem memfd stands in for guest_memfd and a second, unregistered
//! shared mapping of it for the vCPU's view; the stage-2 faults are the
//! exits KVM would deliver for the slot's userfault bitmap.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use userfault::backing::{BackedMapping, Backing, Claimed, Memfd};
use userfault::kvm::{MemoryFault, MemoryFaultFlags, Stage2Resolver, UserfaultBitmap};
use userfault::mem::{Mapping, Sharing};
use userfault::resolve::{Discard, Fault, Region, Resolution};
use userfault::uffd::{Event, EventBuffer, FaultKind, Features, Uffd};

use super::{
    Counting, counting_fixture, next_fault, open_uffd, page_size, poke_any, pread_page,
    source_page, touch_any,
};

const WAIT: Duration = Duration::from_secs(5);
const GPA: u64 = 0x1_0000_0000;

/// The slot's bitmap (every bit set), attached to the mapping's state.
fn slot<B: Backing>(mapping: &BackedMapping<B>) -> Arc<UserfaultBitmap> {
    Arc::new(UserfaultBitmap::new_all_set(GPA, mapping.len() as u64).expect("bitmap"))
}

/// The exit KVM delivers for a vCPU access to page `page` of the slot.
fn exit_at(page: usize) -> MemoryFault {
    MemoryFault::new(
        MemoryFaultFlags::USERFAULT.bits(),
        GPA + (page * page_size()) as u64,
        page_size() as u64,
    )
}

/// The vCPU's view of the file: shared, never registered.
fn vcpu_view<B: Backing>(mapping: &BackedMapping<B>) -> Mapping {
    Mapping::file(mapping.backing().as_fd(), 0, mapping.len(), Sharing::Shared)
        .expect("alias mapping")
}

fn vcpu_write(view: &Mapping, at: usize, value: u8) {
    assert!(at < view.len());
    // SAFETY: inside the live alias mapping, which no Rust reference points
    // into; the page is in the file (its bit was cleared).
    unsafe { view.as_ptr().add(at).write_volatile(value) }
}

/// A MISSING fault raised before a vCPU's stage-2 fill of the same page is
/// resolved after the vCPU wrote to it: the page is only mapped, and the
/// vCPU's write survives (the snapshot used to be written over it).
#[test]
fn a_missing_fault_raised_before_a_stage2_fill_keeps_the_vcpus_write() {
    const TEST: &str = "a_missing_fault_raised_before_a_stage2_fill_keeps_the_vcpus_write";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let Some((uffd, mapping, region)) = counting_fixture(TEST, 4) else {
            return;
        };
        let page = page_size();
        let bitmap = slot(&mapping);
        let resolver = Stage2Resolver::new(mapping.state(), &bitmap, 0).expect("resolver");
        let view = vcpu_view(&mapping);
        let mut buf = EventBuffer::with_capacity(4);
        std::thread::scope(|s| {
            let reader = s.spawn(|| touch_any(&mapping, 100));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("MISSING event");
            assert_eq!(kind, FaultKind::Missing);
            // The vCPU faults on the same page, its resolver fills it, and
            // the vCPU writes.
            let fault = resolver.fault(&exit_at(0)).expect("stage-2 fault");
            assert_eq!(
                fault.resolve(&source_page(0, page)).expect("stage-2"),
                Resolution::Filled
            );
            assert!(bitmap.test(0) == Some(false));
            vcpu_write(&view, 100, 0xEE);
            // Now the VMM's handler gets to the MISSING fault.
            let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                panic!("not missing")
            };
            assert_eq!(
                f.write_then_continue(&source_page(0, page))
                    .expect("resolve"),
                Resolution::Mapped
            );
            assert_eq!(
                reader.join().expect("reader"),
                0xEE,
                "the vCPU's write was lost"
            );
        });
        assert_eq!(pread_page(mapping.backing().as_fd(), 0)[100], 0xEE);
        assert_eq!(mapping.backing().fills_of(0), 1);
    })
}

/// A stage-2 fault on a page the VMM's handler filled with
/// write_then_continue, after the VMM wrote to it: the bit is already
/// clear, and a resolution of the late exit writes nothing.
#[test]
fn a_stage2_fault_after_write_then_continue_keeps_the_vmms_write() {
    const TEST: &str = "a_stage2_fault_after_write_then_continue_keeps_the_vmms_write";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let Some((uffd, mapping, region)) = counting_fixture(TEST, 4) else {
            return;
        };
        let page = page_size();
        let bitmap = slot(&mapping);
        let resolver = Stage2Resolver::new(mapping.state(), &bitmap, 0).expect("resolver");
        let mut buf = EventBuffer::with_capacity(4);
        std::thread::scope(|s| {
            let reader = s.spawn(|| touch_any(&mapping, page + 5));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("MISSING event");
            let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                panic!("not missing")
            };
            assert_eq!(
                f.write_then_continue(&source_page(page as u64, page))
                    .expect("resolve"),
                Resolution::Filled
            );
            reader.join().expect("reader");
        });
        assert!(
            (bitmap.test(1) == Some(false)),
            "the bit is cleared by the fill, before the page is mapped"
        );
        poke_any(&mapping, page + 5, 0x77);
        // A vCPU exit for the page that was already on its way.
        let fault = resolver.fault(&exit_at(1)).expect("stage-2 fault");
        assert_eq!(
            fault
                .resolve(&source_page(page as u64, page))
                .expect("stage-2"),
            Resolution::AlreadyPresent
        );
        assert_eq!(pread_page(mapping.backing().as_fd(), page as u64)[5], 0x77);
        assert_eq!(mapping.backing().fills_of(1), 1);
    })
}

/// Populate, then a write through the VMM's mapping, then a vCPU fault:
/// the populate cleared the bit, and the late exit writes nothing.
#[test]
fn populate_then_a_write_then_a_vcpu_fault_writes_once() {
    const TEST: &str = "populate_then_a_write_then_a_vcpu_fault_writes_once";
    let Some((_uffd, mapping, region)) = counting_fixture(TEST, 4) else {
        return;
    };
    let page = page_size();
    let bitmap = slot(&mapping);
    let resolver = Stage2Resolver::new(mapping.state(), &bitmap, 0).expect("resolver");
    let at = mapping.addr() + 2 * page;
    assert_eq!(
        region
            .populate(at, &source_page(2 * page as u64, page))
            .expect("populate"),
        Resolution::Filled
    );
    assert!(bitmap.test(2) == Some(false));
    poke_any(&mapping, 2 * page + 9, 0x42);
    let fault = resolver.fault(&exit_at(2)).expect("stage-2 fault");
    assert_eq!(
        fault
            .resolve(&source_page(2 * page as u64, page))
            .expect("stage-2"),
        Resolution::AlreadyPresent
    );
    // The state's own populate of the page finds it filled too.
    assert_eq!(
        mapping
            .state()
            .populate(2 * page as u64, &source_page(2 * page as u64, page))
            .expect("populate"),
        Resolution::AlreadyPresent
    );
    assert_eq!(touch_any(&mapping, 2 * page + 9), 0x42);
    assert_eq!(mapping.backing().fills_of(2), 1);
}

/// A memfd whose first fill panics.
struct PanicsOnce {
    memfd: Memfd,
    panicked: std::sync::atomic::AtomicBool,
}

impl AsFd for PanicsOnce {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.memfd.as_fd()
    }
}

impl Backing for PanicsOnce {
    fn size(&self) -> u64 {
        self.memfd.size()
    }
    fn page_size(&self) -> usize {
        self.memfd.page_size()
    }
    fn fill(&self, offset: u64, data: &[u8], claim: Claimed<'_>) -> userfault::Result<()> {
        if !self
            .panicked
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("the backing's fill panics (on purpose)");
        }
        self.memfd.fill(offset, data, claim)
    }
}

/// A fill that panics releases its claim and wakes the faulting thread:
/// the fault comes back and is resolved (the page used to stay claimed,
/// and every later resolver of it waited forever).
#[test]
fn a_panicking_fill_releases_its_claim_and_wakes_the_waiter() {
    const TEST: &str = "a_panicking_fill_releases_its_claim_and_wakes_the_waiter";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let Some(uffd) = open_uffd(TEST) else { return };
        let page = page_size();
        let backing = PanicsOnce {
            memfd: Memfd::shmem(c"panics", 2 * page as u64).expect("memfd"),
            panicked: Default::default(),
        };
        let mapping = BackedMapping::whole(Arc::new(backing)).expect("mmap");
        // SAFETY: fresh mapping, nothing references it.
        let region =
            unsafe { Region::continue_only(uffd.clone(), mapping.clone()) }.expect("register");
        let mut buf = EventBuffer::with_capacity(4);
        std::thread::scope(|s| {
            let reader = s.spawn(|| touch_any(&mapping, 3));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("MISSING event");
            let data = source_page(0, page);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                    panic!("not missing")
                };
                f.write_then_continue(&data)
            }));
            assert!(outcome.is_err(), "the fill panicked");
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("woken, faulted again");
            let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                panic!("not missing")
            };
            assert_eq!(
                f.write_then_continue(&data).expect("resolve"),
                Resolution::Filled
            );
            assert_eq!(reader.join().expect("reader"), data[3]);
        });
    })
}

/// A discard resets the page: the bit is set again and the next fault gets
/// zeros, not the snapshot (in a new generation: one fill); with
/// `Discard::Restore` it gets the snapshot again.
#[test]
fn discarded_pages_come_back_as_zeros_or_restored() {
    const TEST: &str = "discarded_pages_come_back_as_zeros_or_restored";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let Some((uffd, mapping, region)) = counting_fixture(TEST, 4) else {
            return;
        };
        let page = page_size();
        let bitmap = slot(&mapping);
        let resolver = Stage2Resolver::new(mapping.state(), &bitmap, 0).expect("resolver");
        let src = source_page(0, page);
        let mut buf = EventBuffer::with_capacity(4);
        let mut serve_one = |want: Resolution| {
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("event");
            let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                panic!("not missing")
            };
            assert_eq!(f.write_then_continue(&src).expect("resolve"), want);
        };
        std::thread::scope(|s| {
            let reader = s.spawn(|| touch_any(&mapping, 10));
            serve_one(Resolution::Filled);
            assert_eq!(reader.join().expect("reader"), src[10]);
        });
        assert!(bitmap.test(0) == Some(false));
        region
            .discard(mapping.addr(), page, Discard::Zero)
            .expect("discard");
        assert!(bitmap.test(0) == Some(true), "a discard sets the bit again");
        assert_eq!(mapping.backing().fills_of(0), 0, "a new generation");
        std::thread::scope(|s| {
            let reader = s.spawn(|| touch_any(&mapping, 10));
            serve_one(Resolution::Zeroed);
            assert_eq!(
                reader.join().expect("reader"),
                0,
                "a discarded page reads zeros"
            );
        });
        // A vCPU exit on the discarded-then-zeroed page writes nothing more.
        let fault = resolver.fault(&exit_at(0)).expect("stage-2 fault");
        assert_eq!(
            fault.resolve(&src).expect("stage-2"),
            Resolution::AlreadyPresent
        );
        assert_eq!(mapping.backing().fills_of(0), 1);
        mapping
            .state()
            .discard(0, page as u64, Discard::Restore)
            .expect("discard");
        // The vCPU now gets the snapshot (stage-2 fill), the VMM maps it.
        let fault = resolver.fault(&exit_at(0)).expect("stage-2 fault");
        assert_eq!(fault.resolve(&src).expect("stage-2"), Resolution::Filled);
        std::thread::scope(|s| {
            let reader = s.spawn(|| touch_any(&mapping, 10));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("event");
            let Some(Fault::Minor(f)) = region.fault_at(addr, kind) else {
                panic!("not minor: the vCPU's fill put the page in the file")
            };
            assert_eq!(f.map().expect("map"), Resolution::Mapped);
            assert_eq!(reader.join().expect("reader"), src[10]);
        });
        assert!(
            mapping
                .backing()
                .punches
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 2
        );
    })
}

/// A balloon's `MADV_REMOVE` on the VMM's mapping raises a REMOVE event;
/// handled with `Region::discard`, the page reads zeros afterwards and its
/// bit is set again.
#[test]
fn a_remove_event_discards_through_the_state() {
    const TEST: &str = "a_remove_event_discards_through_the_state";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let uffd = match Uffd::builder()
            .non_blocking(true)
            .require_features(Features::EVENT_REMOVE)
            .create()
        {
            Ok(u) => Arc::new(u),
            Err(e) => {
                crate::util::skip(
                    TEST,
                    "uffd",
                    &format!("no userfaultfd with EVENT_REMOVE: {e}"),
                );
                return;
            }
        };
        // A CONTINUE-only region: registered MISSING|MINOR on shmem.
        if !crate::util::need(TEST, "uffd-minor-shmem") {
            return;
        }
        let page = page_size();
        let mapping = BackedMapping::whole(Arc::new(Counting::new(2))).expect("mmap");
        // SAFETY: fresh mapping, nothing references it.
        let region =
            unsafe { Region::continue_only(uffd.clone(), mapping.clone()) }.expect("register");
        let bitmap = slot(&mapping);
        let _resolver = Stage2Resolver::new(mapping.state(), &bitmap, 0).expect("resolver");
        region
            .populate(mapping.addr(), &source_page(0, page))
            .expect("populate");
        assert!(bitmap.test(0) == Some(false));
        let mut buf = EventBuffer::with_capacity(4);
        std::thread::scope(|s| {
            let balloon = s.spawn(|| {
                // SAFETY: the page lies in the live mapping; MADV_REMOVE
                // only drops its contents.
                let r = unsafe {
                    libc::madvise(mapping.mapping().as_ptr().cast(), page, libc::MADV_REMOVE)
                };
                assert_eq!(r, 0, "MADV_REMOVE: {}", std::io::Error::last_os_error());
            });
            let (start, end) = loop {
                uffd.poll(Some(WAIT)).expect("poll");
                let found = uffd
                    .read_events(&mut buf)
                    .expect("read")
                    .find_map(|e| match e {
                        Event::Remove { start, end } => Some((start, end)),
                        _ => None,
                    });
                if let Some(r) = found {
                    break r;
                }
            };
            region
                .discard(start, end - start, Discard::Zero)
                .expect("discard");
            balloon.join().expect("balloon");
        });
        assert!(bitmap.test(0) == Some(true), "the removed page traps again");
        std::thread::scope(|s| {
            let reader = s.spawn(|| touch_any(&mapping, 1));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("event");
            let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                panic!("not missing")
            };
            assert_eq!(
                f.write_then_continue(&source_page(0, page))
                    .expect("resolve"),
                Resolution::Zeroed
            );
            assert_eq!(reader.join().expect("reader"), 0);
        });
    })
}

/// An eagerly restored file: pages declared filled are only mapped, never
/// written, and their bits are clear.
#[test]
fn pages_declared_filled_are_only_mapped() {
    const TEST: &str = "pages_declared_filled_are_only_mapped";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let Some((uffd, mapping, region)) = counting_fixture(TEST, 4) else {
            return;
        };
        let page = page_size();
        for p in 0..4 {
            super::pwrite_behind(
                &mapping,
                (p * page) as u64,
                &source_page((p * page) as u64, page),
            );
        }
        let bitmap = slot(&mapping);
        let resolver = Stage2Resolver::new(mapping.state(), &bitmap, 0).expect("resolver");
        mapping
            .state()
            .mark_filled(0, 4 * page as u64)
            .expect("mark filled");
        assert_eq!(bitmap.count_set(), 0);
        let mut buf = EventBuffer::with_capacity(4);
        std::thread::scope(|s| {
            let reader = s.spawn(|| touch_any(&mapping, 3 * page + 1));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("event");
            assert_eq!(kind, FaultKind::Minor, "the page is in the file");
            let Some(Fault::Minor(f)) = region.fault_at(addr, kind) else {
                panic!("not minor")
            };
            assert_eq!(f.map().expect("map"), Resolution::Mapped);
            assert_eq!(
                reader.join().expect("reader"),
                source_page(3 * page as u64, page)[1]
            );
        });
        let fault = resolver.fault(&exit_at(1)).expect("stage-2 fault");
        assert_eq!(
            fault.resolve(&[0u8; 4096][..page]).expect("stage-2"),
            Resolution::AlreadyPresent
        );
        assert_eq!(
            mapping
                .backing()
                .calls
                .load(std::sync::atomic::Ordering::SeqCst),
            0,
            "nothing was written"
        );
    })
}

/// A 64 KiB window around a fault is filled in one write per run of
/// unfilled pages and mapped with one CONTINUE per run; a page another
/// path filled (and the vCPU wrote) is skipped; the bits of the window are
/// cleared.
#[test]
fn a_window_is_filled_once_around_pages_other_paths_filled() {
    const TEST: &str = "a_window_is_filled_once_around_pages_other_paths_filled";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let pages = 32;
        let Some((uffd, mapping, region)) = counting_fixture(TEST, pages) else {
            return;
        };
        let page = page_size();
        let window_pages = (64 << 10) / page;
        let bitmap = slot(&mapping);
        let resolver = Stage2Resolver::new(mapping.state(), &bitmap, 0).expect("resolver");
        let view = vcpu_view(&mapping);
        resolver
            .fault(&exit_at(3))
            .expect("stage-2 fault")
            .resolve(&source_page(3 * page as u64, page))
            .expect("stage-2");
        vcpu_write(&view, 3 * page, 0x33);
        let calls_before = mapping
            .backing()
            .calls
            .load(std::sync::atomic::Ordering::SeqCst);
        let mut buf = EventBuffer::with_capacity(4);
        std::thread::scope(|s| {
            let reader = s.spawn(|| touch_any(&mapping, 5 * page));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("event");
            let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                panic!("not missing")
            };
            let w = f.window(64 << 10).expect("window");
            assert_eq!((w.start(), w.len()), (mapping.addr(), window_pages * page));
            let data: Vec<u8> = (0..window_pages)
                .flat_map(|p| source_page((p * page) as u64, page))
                .collect();
            // Every page of the window but the one the vCPU filled is
            // this call's to count.
            let fill = f
                .write_window_then_continue_counted(w, &data)
                .expect("window");
            assert_eq!(
                (fill.resolution.ok(), fill.written, fill.zeroed),
                (Some(Resolution::Filled), window_pages as u64 - 1, 0)
            );
            assert_eq!(
                reader.join().expect("reader"),
                source_page(5 * page as u64, page)[0]
            );
        });
        let b = mapping.backing();
        assert_eq!(
            b.calls.load(std::sync::atomic::Ordering::SeqCst) - calls_before,
            2,
            "one write before and one after the page the vCPU filled"
        );
        for p in 0..window_pages {
            assert_eq!(b.fills_of(p), 1, "page {p}");
            assert!((bitmap.test(p as u64) == Some(false)), "bit {p}");
        }
        assert_eq!(pread_page(b.as_fd(), 3 * page as u64)[0], 0x33);
        assert!(
            bitmap.test(window_pages as u64) == Some(true),
            "past the window"
        );
        // The run after page 3 was mapped: reading it does not fault.
        for p in 4..window_pages {
            assert_eq!(
                touch_any(&mapping, p * page + 1),
                source_page((p * page) as u64, page)[1]
            );
        }
    })
}

/// The chunked populate writes each run of unfilled pages once, skips
/// pages other paths filled (a vCPU's write to one survives) and pages
/// discarded to zeros, clears the bits of what it wrote, and refuses
/// unaligned or out-of-range spans.
#[test]
fn populate_run_writes_only_unfilled_pages_once_and_leaves_discarded_ones() {
    const TEST: &str = "populate_run_writes_only_unfilled_pages_once_and_leaves_discarded_ones";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let pages = 32;
        let Some((_uffd, mapping, _region)) = counting_fixture(TEST, pages) else {
            return;
        };
        let page = page_size();
        let state = mapping.state();
        let bitmap = slot(&mapping);
        let resolver = Stage2Resolver::new(state, &bitmap, 0).expect("resolver");
        let view = vcpu_view(&mapping);
        // Page 2 filled by a vCPU, which then wrote to it; pages 5 and 6
        // discarded by a balloon.
        resolver
            .fault(&exit_at(2))
            .expect("stage-2 fault")
            .resolve(&source_page(2 * page as u64, page))
            .expect("stage-2");
        vcpu_write(&view, 2 * page, 0x22);
        state
            .discard(5 * page as u64, 2 * page as u64, Discard::Zero)
            .expect("discard");
        let n = 8;
        assert_eq!(
            state.count_unfilled(0, (n * page) as u64).expect("count"),
            (n - 3) as u64
        );
        let data: Vec<u8> = (0..n)
            .flat_map(|p| source_page((p * page) as u64, page))
            .collect();
        let b = mapping.backing();
        let calls = b.calls.load(std::sync::atomic::Ordering::SeqCst);
        let runs = state.populate_run(0, &data).expect("populate_run");
        let p = page as u64;
        assert_eq!(runs, vec![0..2 * p, 3 * p..5 * p, 7 * p..8 * p]);
        assert_eq!(
            b.calls.load(std::sync::atomic::Ordering::SeqCst) - calls,
            3,
            "one write per run"
        );
        for q in 0..n {
            let want = usize::from(!(5..7).contains(&q));
            assert_eq!(b.fills_of(q) as usize, want, "page {q}");
            assert_eq!(
                bitmap.test(q as u64),
                Some((5..7).contains(&q)),
                "bit of page {q}"
            );
        }
        assert_eq!(pread_page(b.as_fd(), 2 * p)[0], 0x22, "the vCPU's write");
        assert_eq!(pread_page(b.as_fd(), 4 * p), source_page(4 * p, page));
        assert_eq!(state.count_unfilled(0, (n * page) as u64).unwrap(), 0);
        // Again: nothing left to write.
        assert!(state.populate_run(0, &data).expect("again").is_empty());
        // Refused: unaligned, past the file, empty.
        assert!(state.populate_run(1, &data[..page]).is_err());
        assert!(state.populate_run(31 * p, &data[..2 * page]).is_err());
        assert!(state.count_unfilled(0, 0).is_err());
    })
}

/// Two regions over one range of one userfaultfd would unregister each
/// other: the second is refused. Events read from another userfaultfd are
/// not the region's.
#[test]
fn regions_own_their_registration_and_their_userfaultfd() {
    const TEST: &str = "regions_own_their_registration_and_their_userfaultfd";
    let Some((uffd, mapping, region)) = counting_fixture(TEST, 2) else {
        return;
    };
    // SAFETY: the mapping is not referenced; the call is refused before it
    // registers anything.
    let e = unsafe { Region::continue_only(uffd.clone(), mapping.clone()) }
        .expect_err("a second region over the same range");
    assert!(e.to_string().contains("overlaps a live region"), "{e}");
    let ours = Event::detached_fault(mapping.addr(), Default::default(), uffd.id());
    let theirs = Event::detached_fault(mapping.addr(), Default::default(), uffd.id() + 1000);
    let fault = region.fault(&ours).expect("our fault");
    // Wakes nobody harmful: no thread waits on the page.
    drop(fault);
    assert!(
        region.fault(&theirs).is_none(),
        "another userfaultfd's fault"
    );
    drop(region);
    // Once the first is gone, the range can be registered again.
    // SAFETY: as above.
    let again = unsafe { Region::continue_only(uffd, mapping) }.expect("register again");
    drop(again);
}

/// The VmFlags of the mapping that contains `addr`, from /proc/self/smaps.
fn vm_flags(addr: usize) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((lo, hi)) = range.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            inside = (lo..hi).contains(&addr);
            continue;
        }
        if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
            return flags.trim().to_string();
        }
    }
    panic!("no mapping at {addr:#x}");
}

/// A forked child that drops its copy of a region leaves the parent's
/// registration armed (the userfaultfd acts on the parent's address space,
/// so the child's unregister used to disarm the parent's range).
#[test]
fn a_forked_childs_drop_leaves_the_parents_registration_armed() {
    const TEST: &str = "a_forked_childs_drop_leaves_the_parents_registration_armed";
    let Some((_uffd, mapping, region)) = counting_fixture(TEST, 2) else {
        return;
    };
    let flags = vm_flags(mapping.addr());
    assert!(
        flags.split(' ').any(|f| f == "um") && flags.split(' ').any(|f| f == "ui"),
        "registered MISSING|MINOR: {flags}"
    );
    // SAFETY: the child only drops the region (no allocation, no lock) and
    // leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        drop(region);
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    let flags = vm_flags(mapping.addr());
    assert!(
        flags.split(' ').any(|f| f == "um"),
        "the parent's registration was disarmed by the child: {flags}"
    );
    drop(region);
    let flags = vm_flags(mapping.addr());
    assert!(
        !flags.split(' ').any(|f| f == "um"),
        "the parent's own drop unregisters: {flags}"
    );
}

/// The part of a region a remap moved is a region at the new address over
/// the same file pages, clipped to what moved; a move that misses the
/// region, or would put it at an address that is not whole pages, gives
/// none.
#[test]
fn a_remapped_region_keeps_its_file_pages_at_the_new_address() {
    const TEST: &str = "a_remapped_region_keeps_its_file_pages_at_the_new_address";
    let Some((uffd, mapping, region)) = counting_fixture(TEST, 8) else {
        return;
    };
    let page = page_size();
    let (base, len) = (mapping.addr(), mapping.len());
    // Pages 4..8 moved (a move of a larger range that holds them) to a
    // made-up address: no system call is made.
    let to = 0x7000_0000_0000usize;
    let moved = region
        .remapped(base + 4 * page, to, 8 * page)
        .expect("the moved part");
    assert_eq!(
        (moved.registration().start(), moved.registration().len()),
        (to, 4 * page)
    );
    assert_eq!(moved.file_offset_at(to), Some(4 * page as u64));
    assert_eq!(
        moved.file_offset_at(to + 3 * page + 1),
        Some(7 * page as u64 + 1)
    );
    assert_eq!(moved.file_offset_at(to + 4 * page), None);
    assert_eq!(moved.addr_at(5 * page as u64), Some(to + page));
    assert_eq!(moved.addr_at(3 * page as u64), None);
    // Where it was, the rest still maps its own pages.
    let rest = region.remapped(base, base, 4 * page).expect("the rest");
    assert_eq!(rest.file_offset_at(base + page), Some(page as u64));
    assert_eq!(
        region.file_offset_at(base + len - 1),
        Some((len - 1) as u64)
    );
    // Misses, and a destination that is not whole pages.
    assert!(region.remapped(base + len, to, page).is_none());
    assert!(region.remapped(base, to + 1, page).is_none());
    // The parts own nothing: dropping them leaves the range registered,
    // so a second region over it is still refused.
    drop((moved, rest));
    // SAFETY: refused before anything is registered.
    let e = unsafe { Region::continue_only(uffd.clone(), mapping.clone()) }
        .expect_err("the range is still the region's");
    assert!(e.to_string().contains("overlaps a live region"), "{e}");
}
