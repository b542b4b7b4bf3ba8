//! Registration: the per-range ioctl masks of each memory type and mode,
//! the checks made before the system call, unregistering.

use userfault::Errno;
use userfault::Error;
use userfault::uffd::{CopyMode, Event, Features, Ioctls, RegisterMode, Uffd};

use super::fixtures::{self, Kind, Mem, Touch};
use crate::util::{self, require};

const MODES: [RegisterMode; 5] = [
    RegisterMode::MISSING,
    RegisterMode::WP,
    RegisterMode::MINOR,
    RegisterMode::MISSING.union(RegisterMode::MINOR),
    RegisterMode::MISSING
        .union(RegisterMode::WP)
        .union(RegisterMode::MINOR),
];

/// The mask the kernel's rules give: hugetlbfs gets the basic set (no
/// ZEROPAGE, no MOVE); WRITEPROTECT only with WP; CONTINUE only with MINOR.
fn expected_mask(kind: Kind, mode: RegisterMode, kernel: Features) -> Ioctls {
    let mut mask = Ioctls::WAKE | Ioctls::COPY | Ioctls::WRITEPROTECT | Ioctls::CONTINUE;
    if kernel.contains(Features::POISON) {
        mask |= Ioctls::POISON;
    }
    if kind != Kind::Hugetlb {
        mask |= Ioctls::ZEROPAGE;
        if kernel.contains(Features::MOVE) {
            mask |= Ioctls::MOVE;
        }
    }
    if !mode.contains(RegisterMode::WP) {
        mask.remove(Ioctls::WRITEPROTECT);
    }
    if !mode.contains(RegisterMode::MINOR) {
        mask.remove(Ioctls::CONTINUE);
    }
    mask
}

#[test]
fn masks_follow_the_kernel_rules_for_every_memory_type_and_mode() {
    const TEST: &str = "masks_follow_the_kernel_rules_for_every_memory_type_and_mode";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    for kind in Kind::ALL {
        let Some(mem) = Mem::for_test(TEST, kind, 2) else {
            continue;
        };
        let mut row = Vec::new();
        for mode in MODES {
            if !fixtures::supports(TEST, kind, mode) {
                row.push("skipped".to_string());
                continue;
            }
            // SAFETY: the mapping is only accessed through raw pointers.
            let result = unsafe { uffd.register(mem.addr(), mem.len(), mode) };
            if kind == Kind::AnonPrivate && mode.contains(RegisterMode::MINOR) {
                let err = result.expect_err("MINOR on private anonymous memory");
                assert_eq!(err.errno(), Some(Errno::EINVAL));
                assert!(
                    err.to_string().contains("MINOR needs shmem or hugetlbfs"),
                    "{err}"
                );
                row.push("EINVAL".to_string());
                continue;
            }
            let reg = result.unwrap_or_else(|e| panic!("{kind:?} {mode:?}: {e}"));
            assert_eq!(
                reg.ioctls(),
                expected_mask(kind, mode, uffd.kernel_features()),
                "{kind:?} registered {mode:?}"
            );
            assert_eq!(
                (reg.start(), reg.len(), reg.mode()),
                (mem.addr(), mem.len(), mode)
            );
            assert_eq!(reg.uffd_id(), uffd.id());
            row.push(format!("{:#x}", reg.ioctls().bits()));
            uffd.unregister(&reg).expect("unregister");
        }
        util::report(&format!("uffd: {kind:?} masks for {MODES:?}: {row:?}"));
    }
}

#[test]
fn bad_ranges_are_refused_before_the_system_call() {
    const TEST: &str = "bad_ranges_are_refused_before_the_system_call";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    let page = fixtures::page();
    let mem = Mem::new(Kind::AnonPrivate, 2).expect("memory");
    let cases = [
        (mem.addr() + 1, page, "multiples of the page size"),
        (mem.addr(), page + 1, "multiples of the page size"),
        (mem.addr(), 0, "zero"),
        (usize::MAX - page + 1, 2 * page, "wraps around"),
    ];
    for (start, len, words) in cases {
        // SAFETY: refused before the kernel is asked; nothing is registered.
        let err = unsafe { uffd.register(start, len, RegisterMode::MISSING) }.expect_err("refused");
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    op: "UFFDIO_REGISTER",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains(words),
            "{words:?} missing from {err}"
        );
        assert_eq!(err.errno(), None, "no system call was made");
    }
    // SAFETY: as above.
    let err =
        unsafe { uffd.register(mem.addr(), page, RegisterMode::empty()) }.expect_err("empty mode");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");

    // What only the kernel can tell: the range is not mapped (the first
    // pages of the address space never are; a freed range could be reused
    // by another test at any moment).
    // SAFETY: the range is not mapped; the kernel refuses it.
    let err =
        unsafe { uffd.register(page, page, RegisterMode::MISSING) }.expect_err("unmapped range");
    assert_eq!(err.errno(), Some(Errno::EINVAL));
    assert!(
        err.to_string().contains("no part of the range is mapped"),
        "{err}"
    );

    // A mode bit with no mainline meaning is passed on, and the kernel
    // refuses it.
    // SAFETY: the mapping is only accessed through raw pointers.
    let err = unsafe { uffd.register(mem.addr(), page, RegisterMode::from_bits_retain(1 << 4)) }
        .expect_err("unknown mode bit");
    assert_eq!(err.errno(), Some(Errno::EINVAL));
}

#[test]
fn a_registration_works_only_with_its_own_userfaultfd() {
    const TEST: &str = "a_registration_works_only_with_its_own_userfaultfd";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    let other = Uffd::builder().create().expect("second userfaultfd");
    let page = fixtures::page();
    let mem = Mem::new(Kind::AnonPrivate, 1).expect("memory");
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg =
        unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }.expect("register");
    let data = vec![1u8; page];
    for err in [
        other
            .copy(&reg, mem.addr(), &data, CopyMode::empty())
            .expect_err("copy"),
        other.wake(&reg, mem.addr(), page).expect_err("wake"),
        other.unregister(&reg).expect_err("unregister"),
    ] {
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        assert!(err.to_string().contains("belongs to userfaultfd"), "{err}");
    }
    // The same range is registered with `uffd` already.
    // SAFETY: the kernel refuses; nothing changes.
    let err = unsafe { other.register(mem.addr(), mem.len(), RegisterMode::MISSING) }
        .expect_err("registered elsewhere");
    assert_eq!(err.errno(), Some(Errno::EBUSY));
    assert!(err.to_string().contains("another userfaultfd"), "{err}");
    assert!(reg.contains(mem.addr(), page));
    assert!(!reg.contains(mem.addr(), page + 1));
    assert!(!reg.contains(mem.addr() - 1, 1));
    assert!(!reg.contains(usize::MAX, 2));
}

/// Unregistering wakes a thread waiting on a MISSING fault; its access is
/// then handled by the kernel (a zero page).
#[test]
fn unregister_wakes_waiters_and_returns_the_range_to_the_kernel() {
    const TEST: &str = "unregister_wakes_waiters_and_returns_the_range_to_the_kernel";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    for kind in Kind::ALL {
        let Some(mem) = Mem::for_test(TEST, kind, 2) else {
            continue;
        };
        // SAFETY: the mapping is only accessed through raw pointers.
        let reg = unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }
            .expect("register");
        let touch = Touch::read(mem.page_addr(1), 64);
        match fixtures::next_event(&uffd) {
            Event::PageFault { address, .. } => assert_eq!(address, mem.page_addr(1)),
            other => panic!("{other:?}"),
        }
        assert!(touch.still_blocked());
        uffd.unregister(&reg).expect("unregister");
        assert_eq!(
            touch.wait().data,
            vec![0; 64],
            "{kind:?}: a fresh zero page"
        );
        // Part of a range can be unregistered too.
        // SAFETY: as above.
        let reg = unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }
            .expect("register again");
        uffd.unregister_range(reg.start(), mem.page_size())
            .expect("unregister the first page");
        let err = uffd
            .unregister_range(reg.start() + 1, mem.page_size())
            .expect_err("unaligned");
        assert!(matches!(err, Error::InvalidArgument { .. }));
        uffd.unregister(&reg).expect("unregister the rest");
    }
}

/// True when `[addr, addr + len)` has no mapping at all (`msync` fails with
/// `ENOMEM` on unmapped memory).
fn unmapped(addr: usize, len: usize) -> bool {
    // SAFETY: msync only inspects the range's mappings; MS_ASYNC on anonymous
    // memory does nothing else.
    let r = unsafe { libc::msync(addr as *mut libc::c_void, len, libc::MS_ASYNC) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOMEM)
}

/// `UFFDIO_REGISTER` over a range with a hole registers the mappings
/// around it: their faults arrive as events, a resolution into the hole
/// fails with `ENOENT`, and only a range with no mapping at all is refused.
#[test]
fn registering_over_a_hole_registers_the_mapped_parts() {
    const TEST: &str = "registering_over_a_hole_registers_the_mapped_parts";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    let page = fixtures::page();
    let mem = Mem::new(Kind::AnonPrivate, 3).expect("memory");
    let hole = mem.page_addr(1);
    // SAFETY: the page is this test's and nothing references it.
    assert_eq!(unsafe { libc::munmap(hole as *mut libc::c_void, page) }, 0);
    assert!(unmapped(hole, page));

    // SAFETY: the mapped pages are only accessed through raw pointers.
    let reg = unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }
        .expect("a range with a hole registers");
    assert_eq!((reg.start(), reg.len()), (mem.addr(), mem.len()));
    assert!(reg.ioctls().contains(Ioctls::COPY), "{:?}", reg.ioctls());
    for i in [0, 2] {
        let touch = Touch::read(mem.page_addr(i), 1);
        match fixtures::next_event(&uffd) {
            Event::PageFault { address, .. } => assert_eq!(address, mem.page_addr(i)),
            other => panic!("expected a fault on page {i}, got {other:?}"),
        }
        let data = fixtures::pattern(i, page);
        assert_eq!(
            fixtures::ok(uffd.copy(&reg, mem.page_addr(i), &data, CopyMode::empty())),
            Ok(page)
        );
        touch.wait();
    }
    if unmapped(hole, page) {
        let err = uffd
            .copy(&reg, hole, &vec![1u8; page], CopyMode::empty())
            .expect_err("COPY into the hole");
        assert_eq!(err.errno(), Some(Errno::ENOENT), "{err}");
        assert!(err.to_string().contains("hole"), "{err}");
    } else {
        util::report("uffd: the hole was mapped by another thread meanwhile; COPY not tried");
    }
    uffd.unregister(&reg).expect("unregistering over a hole");

    // A range that is all hole is refused.
    if unmapped(hole, page) {
        // SAFETY: nothing is mapped there; the kernel refuses it.
        let err = unsafe { uffd.register(hole, page, RegisterMode::MISSING) }
            .expect_err("a range with no mapping");
        assert!(
            [Some(Errno::EINVAL), Some(Errno::ENOMEM)].contains(&err.errno()),
            "{err}"
        );
        assert!(
            err.to_string().contains("no part of the range is mapped"),
            "{err}"
        );
    }
}
