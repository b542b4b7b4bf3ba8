//! Every resolution ioctl on its success path and its error paths, for
//! each memory type where it applies.

use userfault::Errno;
use userfault::Error;
use userfault::uffd::{
    ContinueMode, CopyMode, Event, FaultFlags, FaultKind, Features, MoveMode, PoisonMode,
    RegisterMode, Resolved, Uffd, UnprotectMode, ZeropageMode,
};

use super::fixtures::{self, Kind, Mem, Touch, ok, pattern};
use crate::util::require;

/// The next event, which must be a page fault at `address` of `kind`.
#[track_caller]
fn expect_fault(uffd: &Uffd, address: usize, kind: FaultKind, write: bool) -> FaultFlags {
    match fixtures::next_event(uffd) {
        Event::PageFault {
            address: a,
            kind: k,
            write: w,
            thread_id,
            flags,
            uffd_id,
            ..
        } => {
            assert_eq!((a, k, w), (address, kind, write), "flags {flags:?}");
            assert_eq!(uffd_id, uffd.id(), "the event names its userfaultfd");
            assert_eq!(thread_id, None, "THREAD_ID was not enabled");
            flags
        }
        other => panic!("expected a page fault, got {other:?}"),
    }
}

#[track_caller]
fn assert_refused_before_syscall(err: Error, words: &str) {
    assert_eq!(err.errno(), None, "no system call was made: {err}");
    assert!(
        err.to_string().contains(words),
        "{words:?} missing from {err}"
    );
}

/// COPY resolves a MISSING fault; DONTWAKE leaves the thread waiting; a
/// second COPY fails with EEXIST and wakes nobody; `copy_or_wake` wakes.
#[test]
fn copy_resolves_missing_faults_and_eexist_needs_a_wake() {
    const TEST: &str = "copy_resolves_missing_faults_and_eexist_needs_a_wake";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    for kind in Kind::ALL {
        let Some(mem) = Mem::for_test(TEST, kind, 2) else {
            continue;
        };
        let ps = mem.page_size();
        // SAFETY: the mapping is only accessed through raw pointers.
        let reg = unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }
            .expect("register");

        let data = pattern(1, ps);
        let touch = Touch::read(mem.page_addr(0), ps);
        let flags = expect_fault(&uffd, mem.page_addr(0), FaultKind::Missing, false);
        assert_eq!(flags, FaultFlags::empty());
        assert_eq!(
            ok(uffd.copy(&reg, mem.page_addr(0), &data, CopyMode::empty())),
            Ok(ps)
        );
        assert!(touch.wait().data == data, "{kind:?}: the copied page");

        let first = pattern(2, ps);
        let touch = Touch::read(mem.page_addr(1), 256);
        expect_fault(&uffd, mem.page_addr(1), FaultKind::Missing, false);
        touch.wait_asleep();
        assert_eq!(
            ok(uffd.copy(&reg, mem.page_addr(1), &first, CopyMode::DONTWAKE)),
            Ok(ps)
        );
        assert!(touch.still_blocked(), "{kind:?}: DONTWAKE woke the thread");
        let err = uffd
            .copy(&reg, mem.page_addr(1), &pattern(3, ps), CopyMode::empty())
            .expect_err("the page is present");
        assert!(err.is_exists(), "{err}");
        assert!(err.to_string().contains("UFFDIO_WAKE"), "{err}");
        assert!(
            touch.still_blocked(),
            "{kind:?}: a failed COPY woke the thread"
        );
        assert_eq!(
            ok(uffd.copy_or_wake(&reg, mem.page_addr(1), &pattern(3, ps), CopyMode::empty())),
            Ok(Resolved::AlreadyPresent { done: 0 })
        );
        assert_eq!(
            touch.wait().data,
            first[..256],
            "{kind:?}: the first copy stays"
        );
    }
}

/// F10: a fault pending while the page is filled through the backing file;
/// COPY then fails with EEXIST without waking, `copy_or_wake` wakes, and
/// the thread sees the file's data.
#[test]
fn copy_after_a_concurrent_fill_wakes_only_through_or_wake() {
    const TEST: &str = "copy_after_a_concurrent_fill_wakes_only_through_or_wake";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    for kind in [Kind::Memfd, Kind::Hugetlb] {
        let Some(mem) = Mem::for_test(TEST, kind, 1) else {
            continue;
        };
        let ps = mem.page_size();
        // SAFETY: the mapping is only accessed through raw pointers.
        let reg = unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }
            .expect("register");
        let touch = Touch::read(mem.addr() + ps - 128, 128);
        expect_fault(&uffd, mem.addr(), FaultKind::Missing, false);
        let filled = pattern(7, ps);
        mem.fill(0, &filled);
        let err = uffd
            .copy(&reg, mem.addr(), &pattern(8, ps), CopyMode::empty())
            .expect_err("filled meanwhile");
        assert!(err.is_exists(), "{err}");
        assert!(touch.still_blocked(), "{kind:?}: EEXIST woke the thread");
        assert!(
            uffd.copy_or_wake(&reg, mem.addr(), &pattern(8, ps), CopyMode::empty())
                .expect("copy or wake")
                .was_present()
        );
        assert_eq!(
            touch.wait().data,
            filled[ps - 128..],
            "{kind:?}: the file's data"
        );
        fixtures::assert_no_event(&uffd);
    }
}

#[test]
fn zeropage_resolves_missing_faults_except_on_hugetlb() {
    const TEST: &str = "zeropage_resolves_missing_faults_except_on_hugetlb";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    for kind in Kind::ALL {
        let Some(mem) = Mem::for_test(TEST, kind, 1) else {
            continue;
        };
        let ps = mem.page_size();
        // SAFETY: the mapping is only accessed through raw pointers.
        let reg = unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }
            .expect("register");
        if kind == Kind::Hugetlb {
            let err = uffd
                .zeropage(&reg, mem.addr(), ps, ZeropageMode::empty())
                .expect_err("hugetlb");
            assert!(err.is_unsupported(), "{err}");
            assert_refused_before_syscall(err, "UFFDIO_ZEROPAGE");
            continue;
        }
        let touch = Touch::read(mem.addr(), 512);
        expect_fault(&uffd, mem.addr(), FaultKind::Missing, false);
        assert_eq!(
            ok(uffd.zeropage(&reg, mem.addr(), ps, ZeropageMode::empty())),
            Ok(ps)
        );
        assert_eq!(touch.wait().data, vec![0; 512]);
        let err = uffd
            .zeropage(&reg, mem.addr(), ps, ZeropageMode::DONTWAKE)
            .expect_err("present");
        assert!(err.is_exists(), "{err}");
        assert_eq!(
            ok(uffd.zeropage_or_wake(&reg, mem.addr(), ps, ZeropageMode::empty())),
            Ok(Resolved::AlreadyPresent { done: 0 })
        );
    }
}

/// Puts data in the page cache of page `i` without mapping it in `mem`:
/// through the file for memfds; for anonymous shared memory by COPY and
/// then dropping the mapping's page (the shmem page stays).
fn cache_without_mapping(
    uffd: &Uffd,
    reg: &userfault::uffd::Registration,
    mem: &Mem,
    i: usize,
    data: &[u8],
) {
    if mem.file().is_some() {
        mem.fill(i, data);
        return;
    }
    assert_eq!(
        ok(uffd.copy(reg, mem.page_addr(i), data, CopyMode::DONTWAKE)),
        Ok(data.len())
    );
    // SAFETY: drops the page table entries of a range the test owns; no
    // reference points into it.
    let r = unsafe {
        libc::madvise(
            mem.page_addr(i) as *mut libc::c_void,
            data.len(),
            libc::MADV_DONTNEED,
        )
    };
    assert_eq!(r, 0, "madvise: {}", std::io::Error::last_os_error());
}

/// CONTINUE maps a cached page for a MINOR fault (F1/F2), fails with EFAULT
/// when the cache has no page (F3) and with EEXIST when the page is mapped
/// (F4); on private anonymous memory it is not offered at all.
#[test]
fn continue_maps_cached_pages() {
    const TEST: &str = "continue_maps_cached_pages";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    for kind in Kind::ALL {
        let Some(mem) = Mem::for_test(TEST, kind, 2) else {
            continue;
        };
        let ps = mem.page_size();
        if !kind.has_page_cache() {
            // SAFETY: the mapping is only accessed through raw pointers.
            let reg = unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }
                .expect("register");
            let err = uffd
                .continue_range(&reg, mem.addr(), ps, ContinueMode::empty())
                .expect_err("no CONTINUE for MISSING-only private anonymous memory");
            assert!(err.is_unsupported(), "{err}");
            assert_refused_before_syscall(err, "UFFDIO_CONTINUE");
            uffd.unregister(&reg).expect("unregister");
            continue;
        }
        let mode = RegisterMode::MISSING | RegisterMode::MINOR;
        if !fixtures::supports(TEST, kind, mode) {
            continue;
        }
        // SAFETY: the mapping is only accessed through raw pointers.
        let reg = unsafe { uffd.register(mem.addr(), mem.len(), mode) }.expect("register");

        let cached = pattern(11, ps);
        cache_without_mapping(&uffd, &reg, &mem, 0, &cached);
        let touch = Touch::read(mem.page_addr(0), ps);
        let flags = expect_fault(&uffd, mem.page_addr(0), FaultKind::Minor, false);
        assert!(flags.contains(FaultFlags::MINOR));
        assert_eq!(
            ok(uffd.continue_range(&reg, mem.page_addr(0), ps, ContinueMode::empty())),
            Ok(ps)
        );
        assert!(touch.wait().data == cached, "{kind:?}: the cached page");
        let err = uffd
            .continue_range(&reg, mem.page_addr(0), ps, ContinueMode::empty())
            .expect_err("already mapped");
        assert!(err.is_exists(), "{kind:?}: {err}");

        let touch = Touch::read(mem.page_addr(1), 64);
        expect_fault(&uffd, mem.page_addr(1), FaultKind::Missing, false);
        let err = uffd
            .continue_range(&reg, mem.page_addr(1), ps, ContinueMode::empty())
            .expect_err("nothing cached");
        assert_eq!(err.errno(), Some(Errno::EFAULT), "{kind:?}: {err}");
        assert!(err.to_string().contains("fill the backing file"), "{err}");
        assert!(
            touch.still_blocked(),
            "{kind:?}: a failed CONTINUE woke the thread"
        );
        let filled = pattern(12, ps);
        if mem.file().is_some() {
            mem.fill(1, &filled);
            assert_eq!(
                ok(uffd.continue_or_wake(&reg, mem.page_addr(1), ps, ContinueMode::empty())),
                Ok(Resolved::Done(ps))
            );
        } else {
            assert_eq!(
                ok(uffd.copy_or_wake(&reg, mem.page_addr(1), &filled, CopyMode::empty())),
                Ok(Resolved::Done(ps))
            );
        }
        assert_eq!(touch.wait().data, filled[..64], "{kind:?}");
        assert_eq!(
            ok(uffd.continue_or_wake(&reg, mem.page_addr(1), ps, ContinueMode::empty())),
            Ok(Resolved::AlreadyPresent { done: 0 })
        );
        fixtures::assert_no_event(&uffd);
    }
}

#[track_caller]
fn read_byte(addr: usize) -> u8 {
    Touch::read(addr, 1).wait().data[0]
}

/// WRITEPROTECT: a write to a protected page waits for the handler; removing
/// the protection wakes it (or not, with DONTWAKE, until UFFDIO_WAKE).
#[test]
fn write_protect_faults_wait_for_unprotect() {
    const TEST: &str = "write_protect_faults_wait_for_unprotect";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    for kind in Kind::ALL {
        let Some(mem) = Mem::for_test(TEST, kind, 1) else {
            continue;
        };
        if !fixtures::supports(TEST, kind, RegisterMode::MISSING | RegisterMode::WP) {
            continue;
        }
        let ps = mem.page_size();
        let page = mem.addr();
        // SAFETY: the mapping is only accessed through raw pointers.
        let missing_only =
            unsafe { uffd.register(page, ps, RegisterMode::MISSING) }.expect("register MISSING");
        let err = uffd
            .copy(&missing_only, page, &pattern(0, ps), CopyMode::WP)
            .expect_err("WP copy into a range without WP");
        assert_refused_before_syscall(err, "RegisterMode::WP");
        let err = uffd
            .write_protect(&missing_only, page, ps)
            .expect_err("not registered WP");
        assert!(err.is_unsupported(), "{err}");

        // SAFETY: as above.
        let reg = unsafe { uffd.register(page, ps, RegisterMode::MISSING | RegisterMode::WP) }
            .expect("register MISSING|WP");
        let data = pattern(21, ps);
        assert_eq!(ok(uffd.copy(&reg, page, &data, CopyMode::WP)), Ok(ps));
        assert_eq!(
            read_byte(page + 5),
            data[5],
            "reading a protected page is free"
        );

        let touch = Touch::write(page + 5, 0xEE);
        let flags = expect_fault(&uffd, page, FaultKind::WriteProtect, true);
        assert!(
            flags.contains(FaultFlags::WP | FaultFlags::WRITE),
            "{flags:?}"
        );
        assert!(touch.still_blocked());
        assert_eq!(
            ok(uffd.write_unprotect(&reg, page, ps, UnprotectMode::empty())),
            Ok(ps)
        );
        touch.wait();
        assert_eq!(
            read_byte(page + 5),
            0xEE,
            "{kind:?}: the write went through"
        );

        assert_eq!(ok(uffd.write_protect(&reg, page, ps)), Ok(ps));
        let touch = Touch::write(page + 6, 0xEF);
        expect_fault(&uffd, page, FaultKind::WriteProtect, true);
        touch.wait_asleep();
        assert_eq!(
            ok(uffd.write_unprotect(&reg, page, ps, UnprotectMode::DONTWAKE)),
            Ok(ps)
        );
        assert!(touch.still_blocked(), "{kind:?}: DONTWAKE woke the writer");
        assert_eq!(ok(uffd.wake(&reg, page, ps)), Ok(ps));
        touch.wait();
        assert_eq!(read_byte(page + 6), 0xEF);

        uffd.unregister(&reg).expect("unregister");
    }
}

/// POISON marks missing pages; a second POISON (or one on a present page)
/// fails with EEXIST; touching a poisoned page raises SIGBUS.
#[test]
fn poison_marks_missing_pages() {
    const TEST: &str = "poison_marks_missing_pages";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    if !crate::util::need(TEST, "uffd-poison") {
        return;
    }
    for kind in Kind::ALL {
        let Some(mem) = Mem::for_test(TEST, kind, 2) else {
            continue;
        };
        let ps = mem.page_size();
        // SAFETY: the mapping is only accessed through raw pointers.
        let reg = unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }
            .expect("register");
        assert_eq!(
            ok(uffd.poison(&reg, mem.page_addr(0), ps, PoisonMode::empty())),
            Ok(ps)
        );
        let err = uffd
            .poison(&reg, mem.page_addr(0), ps, PoisonMode::DONTWAKE)
            .expect_err("poisoned already");
        assert!(err.is_exists(), "{err}");
        assert!(err.to_string().contains("poisoned"), "{err}");
        assert_eq!(
            ok(uffd.copy(&reg, mem.page_addr(1), &pattern(1, ps), CopyMode::empty())),
            Ok(ps)
        );
        let err = uffd
            .poison(&reg, mem.page_addr(1), ps, PoisonMode::empty())
            .expect_err("present page");
        assert!(err.is_exists(), "{err}");
        if kind == Kind::AnonPrivate {
            // A private child inherits the poison marker.
            let addr = mem.page_addr(0);
            let status = fixtures::in_child(move || {
                // SAFETY: reads the poisoned page; the child dies of SIGBUS.
                let _ = unsafe { (addr as *const u8).read_volatile() };
                0
            });
            assert!(
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS,
                "the child's read of a poisoned page: status {status:#x}"
            );
        }
    }
}

/// MOVE takes pages from another private anonymous range; it is refused by
/// the kernel for file mappings (F9) and before the syscall for hugetlbfs.
#[test]
fn move_pages_into_private_anonymous_memory_only() {
    const TEST: &str = "move_pages_into_private_anonymous_memory_only";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    if !crate::util::need(TEST, "uffd-move") {
        return;
    }
    let ps = fixtures::page();
    let src = Mem::new(Kind::AnonPrivate, 2).expect("source");
    // A fork by another test would share the source pages with its child,
    // and MOVE refuses shared pages (EBUSY): keep the source out of forks.
    // SAFETY: changes only how fork(2) treats the test's own mapping.
    let r = unsafe {
        libc::madvise(
            src.addr() as *mut libc::c_void,
            src.len(),
            libc::MADV_DONTFORK,
        )
    };
    assert_eq!(r, 0, "madvise: {}", std::io::Error::last_os_error());
    let data = pattern(31, ps);
    // SAFETY: writes into the unregistered source mapping through a raw
    // pointer; nothing references it.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), src.addr() as *mut u8, ps) };

    let dst = Mem::new(Kind::AnonPrivate, 2).expect("destination");
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg =
        unsafe { uffd.register(dst.addr(), dst.len(), RegisterMode::MISSING) }.expect("register");
    let touch = Touch::read(dst.page_addr(0), ps);
    expect_fault(&uffd, dst.page_addr(0), FaultKind::Missing, false);
    // SAFETY: the source is a test mapping no reference points into.
    let moved =
        unsafe { uffd.move_pages(&reg, dst.page_addr(0), src.addr(), ps, MoveMode::empty()) };
    assert_eq!(ok(moved), Ok(ps));
    assert!(touch.wait().data == data, "the moved page");
    assert_eq!(read_byte(src.addr() + 9), 0, "the source page is gone");

    // Page 1 of the source was never touched: a hole.
    // SAFETY: as above.
    let err = unsafe {
        uffd.move_pages(
            &reg,
            dst.page_addr(1),
            src.page_addr(1),
            ps,
            MoveMode::empty(),
        )
    }
    .expect_err("source hole");
    assert_eq!(err.errno(), Some(Errno::ENOENT), "{err}");
    assert!(err.to_string().contains("ALLOW_SRC_HOLES"), "{err}");
    // SAFETY: as above.
    let skipped = unsafe {
        uffd.move_pages(
            &reg,
            dst.page_addr(1),
            src.page_addr(1),
            ps,
            MoveMode::ALLOW_SRC_HOLES | MoveMode::DONTWAKE,
        )
    };
    crate::util::report(&format!(
        "uffd: MOVE of a source hole with ALLOW_SRC_HOLES: {skipped:?}"
    ));
    assert_eq!(ok(skipped), Ok(ps), "a hole counts as moved");
    // SAFETY: as above; an unaligned source is refused before the call.
    let err = unsafe {
        uffd.move_pages(
            &reg,
            dst.page_addr(1),
            src.addr() + 8,
            ps,
            MoveMode::empty(),
        )
    }
    .expect_err("unaligned source");
    assert_refused_before_syscall(err, "multiples of the page size");

    for kind in [Kind::Memfd, Kind::Hugetlb] {
        let Some(file) = Mem::for_test(TEST, kind, 1) else {
            continue;
        };
        // SAFETY: the mapping is only accessed through raw pointers.
        let freg = unsafe { uffd.register(file.addr(), file.len(), RegisterMode::MISSING) }
            .expect("register");
        // SAFETY: as above; the kernel refuses file destinations.
        let result =
            unsafe { uffd.move_pages(&freg, file.addr(), src.page_addr(1), ps, MoveMode::empty()) };
        let err = result.expect_err("MOVE into a file mapping");
        if kind == Kind::Hugetlb {
            assert!(err.is_unsupported(), "{err}");
            assert_refused_before_syscall(err, "UFFDIO_MOVE");
        } else {
            assert!(
                freg.ioctls().contains(userfault::uffd::Ioctls::MOVE),
                "the mask offers it"
            );
            assert_eq!(err.errno(), Some(Errno::EINVAL), "{err}");
            assert!(err.to_string().contains("private anonymous"), "{err}");
        }
    }
}

/// A range done in part is reported as partial with the count, never as a
/// size made from a negative errno; `copy_or_wake` carries on, and wakes
/// the rest when it meets a present page.
#[test]
fn partial_progress_is_reported_exactly() {
    const TEST: &str = "partial_progress_is_reported_exactly";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    let ps = fixtures::page();
    let mem = Mem::new(Kind::AnonPrivate, 6).expect("memory");
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg =
        unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }.expect("register");
    let data = pattern(41, 3 * ps);
    assert_eq!(
        ok(uffd.copy(&reg, mem.page_addr(1), &data[..ps], CopyMode::empty())),
        Ok(ps)
    );
    let err = uffd
        .copy(&reg, mem.page_addr(0), &data, CopyMode::empty())
        .expect_err("page 1 is present");
    match err {
        Error::Partial {
            op,
            done,
            requested,
            errno,
        } => assert_eq!(
            (op, done, requested, errno),
            ("UFFDIO_COPY", ps as u64, 3 * ps as u64, Errno::EAGAIN)
        ),
        other => panic!("expected a partial result, got {other}"),
    }

    // Pages 3..6: page 4 present; a thread waits on page 5.
    assert_eq!(
        ok(uffd.copy(&reg, mem.page_addr(4), &data[..ps], CopyMode::empty())),
        Ok(ps)
    );
    let touch = Touch::read(mem.page_addr(5), 32);
    expect_fault(&uffd, mem.page_addr(5), FaultKind::Missing, false);
    assert_eq!(
        ok(uffd.copy_or_wake(&reg, mem.page_addr(3), &data, CopyMode::empty())),
        Ok(Resolved::AlreadyPresent { done: ps })
    );
    // Woken, the thread retries; page 5 is still missing and faults again.
    expect_fault(&uffd, mem.page_addr(5), FaultKind::Missing, false);
    assert_eq!(
        ok(uffd.copy(&reg, mem.page_addr(5), &data[2 * ps..], CopyMode::empty())),
        Ok(ps)
    );
    assert_eq!(touch.wait().data, data[2 * ps..2 * ps + 32]);
    assert_eq!(
        read_byte(mem.page_addr(3) + 3),
        data[3],
        "page 3 was filled"
    );
}

#[test]
fn ranges_are_checked_against_the_registration() {
    const TEST: &str = "ranges_are_checked_against_the_registration";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    let ps = fixtures::page();
    let mem = Mem::new(Kind::AnonPrivate, 3).expect("memory");
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg = unsafe { uffd.register(mem.page_addr(1), ps, RegisterMode::MISSING) }
        .expect("register the middle page");
    let data = pattern(0, 2 * ps);
    let cases: Vec<(Error, &str)> = vec![
        (
            uffd.copy(&reg, mem.page_addr(0), &data[..ps], CopyMode::empty())
                .expect_err("before"),
            "outside the registration",
        ),
        (
            uffd.copy(&reg, mem.page_addr(1), &data, CopyMode::empty())
                .expect_err("past the end"),
            "outside the registration",
        ),
        (
            uffd.copy(&reg, mem.page_addr(1) + 8, &data[..ps], CopyMode::empty())
                .expect_err("unaligned"),
            "multiples of the page size",
        ),
        (
            uffd.copy(&reg, mem.page_addr(1), &[], CopyMode::empty())
                .expect_err("empty"),
            "zero",
        ),
        (
            uffd.zeropage(&reg, mem.page_addr(2), ps, ZeropageMode::empty())
                .expect_err("after"),
            "outside the registration",
        ),
        (
            uffd.wake(&reg, usize::MAX - ps + 1, ps).expect_err("wrap"),
            "wraps around",
        ),
        (
            uffd.poison(&reg, mem.page_addr(1), ps + 1, PoisonMode::empty())
                .expect_err("ragged length"),
            "multiples of the page size",
        ),
    ];
    for (err, words) in cases {
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        assert_refused_before_syscall(err, words);
    }
    let err = uffd
        .continue_range(&reg, mem.page_addr(1), ps, ContinueMode::empty())
        .expect_err("not in the mask");
    assert!(err.is_unsupported());
    let text = err.to_string();
    assert!(text.contains("UFFDIO_CONTINUE on the range"), "{text}");
    let mask = format!("{:#x}", reg.ioctls().bits());
    assert!(text.contains("COPY") && text.contains(&mask), "{text}");
    assert_refused_before_syscall(err, "ioctl mask");
}

/// `wake_range` wakes a faulting thread without a registration and
/// without resolving: the thread retries, faults again, and is served by
/// the next resolution; bad ranges are refused before the system call.
#[test]
fn wake_range_makes_a_fault_retry_without_a_registration() {
    const TEST: &str = "wake_range_makes_a_fault_retry_without_a_registration";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    let mem = Mem::new(Kind::AnonPrivate, 2).expect("memory");
    let ps = mem.page_size();
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg =
        unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }.expect("register");
    let page = mem.page_addr(1);
    let touch = Touch::read(page, 8);
    expect_fault(&uffd, page, FaultKind::Missing, false);
    assert_eq!(ok(uffd.wake_range(page, ps)), Ok(ps));
    // Still missing: the woken thread faults again, a second event.
    expect_fault(&uffd, page, FaultKind::Missing, false);
    assert!(touch.still_blocked());
    let data = pattern(4, ps);
    assert_eq!(ok(uffd.copy(&reg, page, &data, CopyMode::empty())), Ok(ps));
    assert_eq!(touch.wait().data, data[..8].to_vec());
    for (err, words) in [
        (
            uffd.wake_range(page + 1, ps).expect_err("unaligned"),
            "multiples of the page size",
        ),
        (uffd.wake_range(page, 0).expect_err("empty"), "zero"),
        (
            uffd.wake_range(usize::MAX - ps + 1, ps).expect_err("wrap"),
            "wraps around",
        ),
    ] {
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        assert_refused_before_syscall(err, words);
    }
    uffd.unregister(&reg).expect("unregister");
}

/// CONTINUE with WP maps the cached page write-protected: reads proceed,
/// the first write waits for the handler.
#[test]
fn continue_with_wp_maps_write_protected() {
    const TEST: &str = "continue_with_wp_maps_write_protected";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    for kind in [Kind::AnonShared, Kind::Memfd, Kind::Hugetlb] {
        let Some(mem) = Mem::for_test(TEST, kind, 1) else {
            continue;
        };
        let all = RegisterMode::MISSING | RegisterMode::MINOR | RegisterMode::WP;
        if !fixtures::supports(TEST, kind, all) {
            continue;
        }
        let ps = mem.page_size();
        let page = mem.addr();
        let minor_only = RegisterMode::MISSING | RegisterMode::MINOR;
        // SAFETY: the mapping is only accessed through raw pointers.
        let reg = unsafe { uffd.register(page, ps, minor_only) }.expect("register");
        let err = uffd
            .continue_range(&reg, page, ps, ContinueMode::WP)
            .expect_err("WP mapping without WP registration");
        assert_refused_before_syscall(err, "RegisterMode::WP");

        // SAFETY: as above.
        let reg = unsafe { uffd.register(page, ps, minor_only | RegisterMode::WP) }
            .expect("register with WP");
        let data = pattern(71, ps);
        cache_without_mapping(&uffd, &reg, &mem, 0, &data);
        let mapped = uffd.continue_range(&reg, page, ps, ContinueMode::WP | ContinueMode::DONTWAKE);
        if let Err(e) = &mapped
            && e.errno() == Some(Errno::EINVAL)
        {
            // Kernels before 6.4 refuse the mode bit itself; the error says so.
            assert!(e.to_string().contains("UFFDIO_CONTINUE_MODE_WP"), "{e}");
            crate::util::skip(
                &format!("{TEST} [{kind:?}]"),
                "uffd-continue-wp",
                &e.to_string(),
            );
            uffd.unregister(&reg).expect("unregister");
            return;
        }
        assert_eq!(ok(mapped), Ok(ps));
        assert_eq!(read_byte(page + 3), data[3], "{kind:?}: mapped");
        let touch = Touch::write(page + 3, 0x11);
        expect_fault(&uffd, page, FaultKind::WriteProtect, true);
        assert_eq!(
            ok(uffd.write_unprotect(&reg, page, ps, UnprotectMode::empty())),
            Ok(ps)
        );
        touch.wait();
        assert_eq!(read_byte(page + 3), 0x11);
        uffd.unregister(&reg).expect("unregister");
    }
}
