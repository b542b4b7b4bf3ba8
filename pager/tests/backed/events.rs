//! A file range's mapping moved (`mremap`) and partly unmapped while it is
//! served, its faults recorded into the working set, and its pages
//! counted once whichever path fills them.

use std::sync::Arc;
use std::time::Duration;

use userfault::backing::BackedMapping;
use userfault::kvm::{MemoryFault, MemoryFaultFlags};
use userfault::uffd::{Features, RegisterMode, Uffd};
use userfault_pager::{Config, FileRange};

use super::{
    Counting, GPA, PAGE, continue_only, file_range, memfd, memfd_with, read_page, serve_file,
    snapshot, source_page, stage2_file, want, write_marker,
};
use crate::util;

/// `mmap(PROT_NONE)`: a fresh reservation of `len` bytes at an address of
/// the kernel's choosing, for a move to land on.
fn reservation(len: usize) -> usize {
    // SAFETY: a new mapping at an address of the kernel's choosing; it
    // replaces nothing.
    unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::empty(),
            rustix::mm::MapFlags::PRIVATE,
        )
    }
    .expect("mmap") as usize
}

/// `mremap(2)`: moves `len` bytes at `from` onto `to` (a reservation).
fn move_to(from: usize, len: usize, to: usize) {
    // SAFETY: moves part of the test's own mapping of the memfd onto the
    // test's own reservation; nothing holds a reference into either. The
    // hole it leaves is never touched again (the mapping is not dropped).
    let at = unsafe {
        rustix::mm::mremap_fixed(
            from as *mut _,
            len,
            len,
            rustix::mm::MremapFlags::MAYMOVE,
            to as *mut _,
        )
    }
    .expect("mremap");
    assert_eq!(at as usize, to);
}

/// How the remapped range is registered and served.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Served {
    /// CONTINUE-only, `MISSING | MINOR`.
    ContinueOnly,
    /// Copy-capable, `MISSING | MINOR`.
    Copy,
    /// Copy-capable, `MISSING` alone (no MINOR faults on shmem needed:
    /// Linux 5.10).
    CopyMissingOnly,
}

#[test]
fn file_range_continue_only_follows_a_remap_of_its_mapping() {
    remap(
        "file_range_continue_only_follows_a_remap_of_its_mapping",
        Served::ContinueOnly,
    );
}

#[test]
fn file_range_copy_capable_follows_a_remap_of_its_mapping() {
    remap(
        "file_range_copy_capable_follows_a_remap_of_its_mapping",
        Served::Copy,
    );
}

#[test]
fn file_range_registered_missing_only_follows_a_remap_of_its_mapping() {
    remap(
        "file_range_registered_missing_only_follows_a_remap_of_its_mapping",
        Served::CopyMissingOnly,
    );
}

/// 1024 pages of a memfd, served on demand: the guest writes markers and
/// reads some pages, then the upper half of the mapping moves; half its
/// pages are read at the new address (MISSING faults for pages never
/// filled, MINOR ones for pages filled through the file only, where MINOR
/// is registered; without it such pages are simply there), then it
/// moves again and every page of it is read there, and the lower half
/// where it always was. Every byte equals the source or the guest's
/// marker, and each page was written into the file once.
///
/// The holes the moves leave may be mapped by other tests' threads at
/// once, so nothing is moved back into them and the mapping is never
/// dropped (which would unmap them): its two parts are unmapped where they
/// are.
fn remap(test: &str, served: Served) {
    const PAGES: usize = 1024;
    let more = Features::EVENT_REMAP;
    let minor = served != Served::CopyMissingOnly;
    let Some((uffd, state, ram)) = memfd_with(test, PAGES, more, minor) else {
        return;
    };
    if !uffd.features().contains(more) {
        return util::skip(test, "uffd", "REMAP events are not offered");
    }
    let copy = served != Served::ContinueOnly;
    let mode = if minor {
        RegisterMode::MISSING | RegisterMode::MINOR
    } else {
        RegisterMode::MISSING
    };
    let file = file_range(&uffd, &ram, copy.then_some(mode));
    let (source, bytes) = snapshot(test, PAGES);
    let server = serve_file(
        uffd,
        file,
        source,
        Config {
            threads: 2,
            chunk: 4 * PAGE,
            prefetch: false,
            ..Config::default()
        },
    );
    let base = ram.addr();
    let half = PAGES / 2;
    let written = |p: usize| p % 7 == 3;
    // Pages of the upper half filled into the file without a fault (as a
    // vCPU's exit would): at the new address they raise MINOR faults.
    let filed = |p: usize| p >= half && p % 11 == 5 && !written(p);
    let stats = util::with_deadline(test, Duration::from_secs(120), || {
        for p in (0..PAGES).filter(|&p| written(p)) {
            write_marker(base, p);
        }
        let mut filed_pages = 0;
        for p in (0..PAGES).filter(|&p| filed(p)) {
            let data = source_page(&bytes, p);
            // Unless a writer's chunk filled it already.
            if state
                .populate((p * PAGE) as u64, data)
                .expect("populate")
                .wrote()
            {
                filed_pages += 1;
            }
        }
        assert!(filed_pages > 0);
        let len = half * PAGE;
        let to = reservation(len);
        move_to(base + len, len, to);
        let check = |at: usize, i: usize| {
            let p = half + i;
            assert!(
                read_page(at, i) == want(&bytes, p, written(p)),
                "page {p} at {at:#x}"
            );
        };
        std::thread::scope(|s| {
            for t in 0..2 {
                s.spawn(move || {
                    for i in (0..half).filter(|i| i % 4 == 2 * t) {
                        check(to, i);
                    }
                });
            }
        });
        // Moved again, with half its pages still to be served.
        let to = {
            let again = reservation(len);
            move_to(to, len, again);
            again
        };
        std::thread::scope(|s| {
            for t in 0..2 {
                s.spawn(move || {
                    for i in (0..half).filter(|i| i % 2 == t) {
                        check(to, i);
                    }
                });
            }
        });
        for p in 0..half {
            assert!(
                read_page(base, p) == want(&bytes, p, written(p)),
                "page {p}, never moved"
            );
        }
        (server.shutdown().stats, filed_pages, to)
    });
    let (stats, filed_pages, to) = stats;
    for p in 0..PAGES {
        state.backing().assert_filled_once(p, copy);
    }
    assert_eq!(stats.remaps, 2, "{stats:?}");
    // Every page not filled by the test was filled on demand, once.
    assert_eq!(stats.demand_pages, PAGES as u64 - filed_pages, "{stats:?}");
    util::report(&format!(
        "{test}: {} demand faults ({} pages), {} remaps, {} retries",
        stats.demand_faults, stats.demand_pages, stats.remaps, stats.retries
    ));
    // Its parts are unmapped where they are now; the mapping itself is
    // never dropped (it would unmap its old range, a hole by now).
    let (lower, upper) = (ram.addr(), to);
    std::mem::forget(ram);
    // SAFETY: the test's own mappings, which nothing refers to any more.
    unsafe {
        rustix::mm::munmap(lower as *mut _, half * PAGE).expect("munmap");
        rustix::mm::munmap(upper as *mut _, half * PAGE).expect("munmap");
    }
}

/// The upper half of a served mapping is unmapped (replaced by another
/// mapping) while the populator is held back: a vCPU exit on an unmapped
/// page is still resolved through the file's state, the server goes on
/// serving the lower half, and once the populator runs it fills the whole
/// file (vCPUs still reach the unmapped half) and completes without an
/// error.
#[test]
fn file_range_unmapped_in_part_is_served_where_mapped_and_completes() {
    const TEST: &str = "file_range_unmapped_in_part_is_served_where_mapped_and_completes";
    const PAGES: usize = 2048;
    let Some((uffd, state, ram)) = memfd_with(TEST, PAGES, Features::EVENT_UNMAP, true) else {
        return;
    };
    if !uffd.features().contains(Features::EVENT_UNMAP) {
        return util::skip(TEST, "uffd", "UNMAP events are not offered");
    }
    let (file, bitmap) = stage2_file(continue_only(&uffd, &ram), 0, PAGES);
    let (source, bytes) = snapshot(TEST, PAGES);
    // Held back before it starts: a populator that ran first would fill
    // the whole file, and the server unregister the mapping, before the
    // unmap below.
    state.backing().hold_populator();
    let server = serve_file(
        uffd,
        file,
        source,
        Config {
            threads: 2,
            chunk: 4 * PAGE,
            ..Config::default()
        },
    );
    let base = ram.addr();
    let half = PAGES / 2;
    // Not in the populator's first extent (512 KiB), which it holds while
    // held back.
    let written = |p: usize| p % 5 == 1 && p >= 128;
    let report = util::with_deadline(TEST, Duration::from_secs(120), || {
        for p in (0..PAGES).filter(|&p| written(p)) {
            write_marker(base, p);
        }
        // Replaced at once by an inaccessible mapping, so that nothing
        // else lands there before the test's mapping is dropped: the
        // kernel reports the old one unmapped.
        let len = half * PAGE;
        // SAFETY: replaces the upper half of the test's own mapping of the
        // memfd; nothing refers to it (the mapping's drop unmaps the
        // replacement).
        unsafe {
            rustix::mm::mmap_anonymous(
                (base + len) as *mut _,
                len,
                rustix::mm::ProtFlags::empty(),
                rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::FIXED,
            )
        }
        .expect("mmap over the upper half");
        // A vCPU reaches a page of the unmapped half that no one wrote.
        let stage2 = server.stage2();
        let p = PAGES - 2;
        let exit = MemoryFault::new(
            MemoryFaultFlags::USERFAULT.bits(),
            GPA + (p * PAGE) as u64,
            PAGE as u64,
        );
        stage2
            .resolve(&exit)
            .expect("stage-2 resolve")
            .expect("a slot's exit");
        assert_eq!(bitmap.test(p as u64), Some(false), "bit {p}");
        state.backing().release_populator();
        for p in 0..half {
            assert!(
                read_page(base, p) == want(&bytes, p, written(p)),
                "page {p}"
            );
        }
        server.wait()
    });
    assert!(
        matches!(report.exit, userfault_pager::Exit::Complete),
        "{:?}",
        report.exit
    );
    // The whole file holds the source, and the guest's writes from before
    // the unmap.
    for p in 0..PAGES {
        let page = state.backing().file_page(p);
        assert!(page == want(&bytes, p, written(p)), "file page {p}");
        state.backing().assert_filled_once(p, false);
    }
    assert_eq!(bitmap.count_set(), 0, "every bit cleared");
    let s = &report.stats;
    assert_eq!(s.unmapped_pages, half as u64, "{s:?}");
    assert_eq!(s.demand_pages + s.prefetch_pages, PAGES as u64, "{s:?}");
    util::report(&format!(
        "{TEST}: {} demand faults ({} pages), {} prefetched, {} unmapped",
        s.demand_faults, s.demand_pages, s.prefetch_pages, s.unmapped_pages
    ));
}

/// A recording taken over a file range lists its pages as the source's
/// pages (the range is served from the source's second half), in the
/// order they were first needed: by faults of the mapping and by vCPU
/// exits alike, each once.
#[test]
fn file_range_faults_and_exits_are_recorded_in_order() {
    const TEST: &str = "file_range_faults_and_exits_are_recorded_in_order";
    const PAGES: usize = 512;
    let Some((uffd, _state, ram)) = memfd(TEST, PAGES) else {
        return;
    };
    let offset = PAGES * PAGE;
    let (file, _bitmap) = stage2_file(continue_only(&uffd, &ram), offset as u64, PAGES);
    let (source, bytes) = snapshot(TEST, 2 * PAGES);
    let server = serve_file(
        uffd,
        file,
        source,
        Config {
            threads: 1,
            chunk: PAGE,
            prefetch: false,
            record: true,
            ..Config::default()
        },
    );
    let base = ram.addr();
    let order: Vec<usize> = (0..120).map(|k| (k * 37 + 5) % PAGES).collect();
    let by_vcpu = |k: usize| k % 4 == 1;
    util::with_deadline(TEST, Duration::from_secs(60), || {
        let stage2 = server.stage2();
        for (k, &p) in order.iter().enumerate() {
            if by_vcpu(k) {
                let flags = MemoryFaultFlags::USERFAULT.bits();
                let exit = MemoryFault::new(flags, GPA + (p * PAGE) as u64, PAGE as u64);
                stage2
                    .resolve(&exit)
                    .expect("resolve")
                    .expect("a slot's exit");
            }
            // The mapping then finds the page (a MINOR fault after an
            // exit), and again: neither records anything new.
            for _ in 0..2 {
                let want = &bytes[offset + p * PAGE..offset + (p + 1) * PAGE];
                assert!(read_page(base, p) == want, "page {p}");
            }
        }
    });
    let report = server.shutdown();
    let ws = report.recorded.expect("a recording");
    let want: Vec<u64> = order.iter().map(|&p| (PAGES + p) as u64).collect();
    assert_eq!(ws.pages(), &want[..]);
    assert_eq!(report.stats.stage2_faults, 30, "{:?}", report.stats);
}

/// A CONTINUE-only file range of a memfd of `pages` pages, on a
/// userfaultfd with FORK events, or a skip (they need `CAP_SYS_PTRACE`).
fn forking_file_range(
    test: &str,
    pages: usize,
) -> Option<(Arc<Uffd>, Arc<BackedMapping<Counting>>, FileRange)> {
    let (uffd, _state, ram) = memfd_with(test, pages, Features::EVENT_FORK, true)?;
    if !uffd.features().contains(Features::EVENT_FORK) {
        util::skip(test, "root", "UFFD_FEATURE_EVENT_FORK is not offered");
        return None;
    }
    let file = file_range(&uffd, &ram, None);
    Some((uffd, ram, file))
}

/// A forked child's `MADV_DONTNEED` of its copy of a shared file mapping
/// changes nothing in the file: its REMOVE event must not discard the
/// parent's file page (which holds a guest write).
#[test]
fn a_forked_childs_dontneed_leaves_the_parents_file_page() {
    const TEST: &str = "a_forked_childs_dontneed_leaves_the_parents_file_page";
    const PAGES: usize = 64;
    let _forking = crate::forking();
    let Some((uffd, ram, file)) = forking_file_range(TEST, PAGES) else {
        return;
    };
    let (source, bytes) = snapshot(TEST, PAGES);
    let server = serve_file(
        uffd,
        file,
        source,
        Config {
            threads: 2,
            chunk: PAGE,
            prefetch: false,
            ..Config::default()
        },
    );
    let base = ram.addr();
    let p = 5;
    util::with_deadline(TEST, Duration::from_secs(60), || {
        write_marker(base, p);
        // SAFETY: the child only calls madvise and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: the child's own copy of the mapping; nothing refers
            // into it.
            unsafe {
                libc::madvise((base + p * PAGE) as *mut _, PAGE, libc::MADV_DONTNEED);
                libc::_exit(0)
            };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        std::thread::sleep(Duration::from_millis(300));
        let want = want(&bytes, p, true);
        let got = read_page(base, p);
        assert!(
            got == want,
            "the parent's page {p} lost its contents (all zero: {})",
            got.iter().all(|&b| b == 0)
        );
    });
    let report = server.shutdown();
    assert_eq!(report.stats.removed_pages, 0, "{:?}", report.stats);
}

/// A process that serves its own file-backed memory forks again and again
/// while its guest threads fault and the populator fills: glibc's `fork`
/// holds the allocator's locks until the FORK event is read, and reading
/// it waits for every resolution under the order lock to end, so a
/// resolution that allocated under the lock, or while holding a claim, or
/// a FORK applied with an allocation, would never end. Every fork returns,
/// and every page ends up the source's.
#[test]
fn forks_while_file_windows_are_resolved_never_deadlock() {
    const TEST: &str = "forks_while_file_windows_are_resolved_never_deadlock";
    const PAGES: usize = 8192; // 32 MiB
    const FORKS: usize = 200;
    let _forking = crate::forking();
    let Some((uffd, ram, file)) = forking_file_range(TEST, PAGES) else {
        return;
    };
    let (source, bytes) = snapshot(TEST, PAGES);
    let server = serve_file(
        uffd,
        file,
        source,
        Config {
            threads: 2,
            chunk: 4 * PAGE,
            ..Config::default()
        },
    );
    let base = ram.addr();
    let forks = util::with_deadline(TEST, Duration::from_secs(120), || {
        std::thread::scope(|s| {
            for t in 0..3 {
                let bytes = &bytes;
                s.spawn(move || {
                    for k in 0..PAGES {
                        let p = (k * (2 * t + 1) + t * 331) % PAGES;
                        assert!(read_page(base, p) == want(bytes, p, false), "page {p}");
                    }
                });
            }
            let mut forks = 0;
            while forks < FORKS && !server.is_prefetched() {
                // SAFETY: the child calls only _exit.
                let pid = unsafe { libc::fork() };
                assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
                if pid == 0 {
                    // SAFETY: ends the child at once, running nothing of
                    // the parent's.
                    unsafe { libc::_exit(0) };
                }
                let mut status = 0;
                // SAFETY: waits for the child just forked.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                // At once again: faster than the server sets the children
                // up, so it runs out of spare fork captures.
                forks += 1;
            }
            forks
        })
    });
    let report = server.wait();
    assert!(
        matches!(report.exit, userfault_pager::Exit::Complete),
        "{:?}",
        report.exit
    );
    util::report(&format!(
        "{TEST}: {forks} forks while {} demand faults and {} prefetched pages",
        report.stats.demand_faults, report.stats.prefetch_pages
    ));
}

/// A move named by mistake (no mremap happened) leaves nothing registered
/// once the region is dropped: the region still unregisters its range.
#[test]
fn a_remap_named_by_mistake_leaves_no_registration_behind() {
    const TEST: &str = "a_remap_named_by_mistake_leaves_no_registration_behind";
    let Some((uffd, _state, ram)) = memfd_with(TEST, 8, Features::empty(), true) else {
        return;
    };
    let region = continue_only(&uffd, &ram);
    let base = ram.addr();
    let _ = region.remapped(base, 0x7000_0000_0000, PAGE);
    drop(region);
    let flags = vmflags(base);
    assert!(
        !flags.split_whitespace().any(|f| f == "um" || f == "ui"),
        "still registered after the region's drop: {flags}"
    );
}

/// The VmFlags of the mapping at `addr` (/proc/self/smaps).
fn vmflags(addr: usize) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((lo, hi)) = range.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            inside = lo <= addr && addr < hi;
            continue;
        }
        if inside && let Some(f) = line.strip_prefix("VmFlags:") {
            return f.trim().to_string();
        }
    }
    panic!("no mapping at {addr:#x}")
}

/// Faults of a file range resolved while REMOVE events are in flight
/// (another thread's `MADV_DONTNEED` of pages no one reads): a chunk whose
/// runs were written but whose faulting page then met `EAGAIN` still counts
/// the pages it wrote. Every page read is filled once and counted once.
#[test]
fn file_range_pages_written_before_an_eagain_are_counted() {
    const TEST: &str = "file_range_pages_written_before_an_eagain_are_counted";
    const PAGES: usize = 1024;
    const READ: usize = 768;
    let Some((uffd, state, ram)) = memfd_with(TEST, PAGES, Features::empty(), true) else {
        return;
    };
    let file = file_range(&uffd, &ram, None);
    let (source, bytes) = snapshot(TEST, PAGES);
    let server = serve_file(
        uffd,
        file,
        source,
        Config {
            threads: 2,
            chunk: 16 * PAGE,
            prefetch: false,
            ..Config::default()
        },
    );
    let base = ram.addr();
    let stop = std::sync::atomic::AtomicBool::new(false);
    util::with_deadline(TEST, Duration::from_secs(120), || {
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut k = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let p = READ + k % (PAGES - READ);
                    // SAFETY: a page no one reads or refers to.
                    unsafe {
                        libc::madvise((base + p * PAGE) as *mut _, PAGE, libc::MADV_DONTNEED)
                    };
                    k += 1;
                    // A storm, not a flood: the readers get through.
                    if k % 16 == 0 {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
            });
            let readers: Vec<_> = (0..4)
                .map(|t| {
                    let bytes = &bytes;
                    s.spawn(move || {
                        for p in (0..READ).filter(|p| (p / 16) % 4 == t) {
                            assert!(read_page(base, p) == source_page(bytes, p));
                        }
                    })
                })
                .collect();
            for r in readers {
                r.join().expect("reader");
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    });
    let s = server.shutdown().stats;
    for p in 0..READ {
        assert_eq!(state.backing().fills_of(p), 1, "page {p}");
    }
    assert_eq!(s.demand_pages, READ as u64, "{s:?}");
}
