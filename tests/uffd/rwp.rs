//! Read-write protection (Linux 7.3): RWP faults on every memory type,
//! resolved by un-protecting; the async mode and `UFFDIO_SET_MODE`; RWP|WP
//! and RWP|DONTWAKE refused as the kernel refuses them.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use uffd_sys as sys;
use userfault::pagemap::{PageCategories, Pagemap, Scan};
use userfault::resolve::{Fault, Region, Resolution};
use userfault::uffd::{
    Event, FaultFlags, FaultKind, Features, RegisterMode, RwprotectMode, Uffd, query_kernel,
};

use super::fixtures::{self, Kind, Mem, Touch, ok, pattern};
use crate::util::{self, require};

/// A userfaultfd with `features` (RWP, RWP_ASYNC), or the skip reason:
/// "RWP needs Linux 7.3" where the kernel does not offer them.
pub fn open_rwp(features: Features) -> Result<Uffd, String> {
    let offered = query_kernel().map_err(|e| e.to_string())?.features();
    if !offered.contains(features) {
        return Err(format!(
            "RWP needs Linux 7.3: the kernel does not offer {:?} (features {:#x})",
            features.difference(offered),
            offered.bits()
        ));
    }
    fixtures::open(features)
}

/// Writes `data` at `addr` through a raw pointer.
fn write_bytes(addr: usize, data: &[u8]) {
    // SAFETY: a raw write into mapped memory the test owns.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) };
}

fn read_byte(addr: usize) -> u8 {
    // SAFETY: a raw read of mapped memory the test owns.
    unsafe { (addr as *const u8).read_volatile() }
}

/// The next event, which must be an RWP fault at `address`.
#[track_caller]
fn expect_rwp(uffd: &Uffd, address: usize, write: bool) -> FaultFlags {
    match fixtures::next_event(uffd) {
        Event::PageFault {
            address: a,
            kind,
            write: w,
            flags,
            ..
        } => {
            assert_eq!((a, kind, w), (address, FaultKind::Rwp, write), "{flags:?}");
            flags
        }
        other => panic!("expected an RWP fault, got {other:?}"),
    }
}

/// `UFFDIO_RWPROTECT` issued raw, past the safe layer's checks: the
/// kernel's own answer.
fn raw_rwprotect(uffd: &Uffd, start: usize, len: usize, mode: u64) -> Result<(), i32> {
    let mut arg = sys::uffdio_rwprotect {
        range: sys::uffdio_range {
            start: start as u64,
            len: len as u64,
        },
        mode,
    };
    // SAFETY: UFFDIO_RWPROTECT reads one `uffdio_rwprotect`, which `arg` is;
    // it changes only the protection of the test's own registered range.
    let r = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            sys::UFFDIO_RWPROTECT as libc::c_ulong,
            &mut arg,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// `UFFDIO_REGISTER` issued raw: the kernel's answer to a mode.
fn raw_register(uffd: &Uffd, start: usize, len: usize, mode: u64) -> Result<u64, i32> {
    let mut arg = sys::uffdio_register {
        range: sys::uffdio_range {
            start: start as u64,
            len: len as u64,
        },
        mode,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one `uffdio_register`; the
    // range is the test's own memory, only touched through raw pointers.
    let r = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            sys::UFFDIO_REGISTER as libc::c_ulong,
            &mut arg,
        )
    };
    if r == 0 {
        Ok(arg.ioctls)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// A read and a write of RWP-protected pages on anonymous, shmem, memfd
/// and hugetlb memory each raise one RWP fault; the faulting thread stays
/// blocked until the page is un-protected (the typed fault's `unprotect`,
/// or the raw ioctl with DONTWAKE and a wake), then sees the page's own
/// data.
#[test]
fn rwp_faults_block_until_unprotected_and_keep_the_data() {
    const TEST: &str = "rwp_faults_block_until_unprotected_and_keep_the_data";
    let uffd = Arc::new(require!(TEST, "uffd-rwp", open_rwp(Features::RWP)));
    assert!(uffd.features().contains(Features::RWP));
    for kind in Kind::ALL {
        let Some(mem) = Mem::for_test(TEST, kind, 3) else {
            continue;
        };
        let ps = mem.page_size();
        let data: Vec<Vec<u8>> = (0..3).map(|i| pattern(40 + i, ps)).collect();
        for (i, d) in data.iter().enumerate() {
            write_bytes(mem.page_addr(i), d);
        }
        // SAFETY: the mapping is only accessed through raw pointers.
        let region = unsafe {
            Region::copy_capable(uffd.clone(), mem.addr(), mem.len(), RegisterMode::RWP, ps)
        }
        .unwrap_or_else(|e| panic!("{kind:?}: register RWP: {e}"));
        let reg = *region.registration();
        assert!(
            reg.ioctls().contains(userfault::uffd::Ioctls::RWPROTECT),
            "{kind:?}: {:?}",
            reg.ioctls()
        );
        assert_eq!(
            ok(uffd.rwprotect(&reg, mem.addr(), mem.len(), RwprotectMode::RWP)),
            Ok(mem.len())
        );

        // A read: an RWP fault without WRITE, resolved by the typed fault.
        let reader = Touch::read(mem.page_addr(0), ps);
        let flags = expect_rwp(&uffd, mem.page_addr(0), false);
        assert_eq!(flags, FaultFlags::RWP, "{kind:?}");
        assert!(reader.still_blocked(), "{kind:?}: the reader went on");
        match region.fault_at(mem.page_addr(0), FaultKind::Rwp) {
            Some(Fault::Rwp(f)) => assert_eq!(ok(f.unprotect()), Ok(Resolution::Mapped)),
            other => panic!("{kind:?}: expected a typed RWP fault, got {other:?}"),
        }
        assert_eq!(reader.wait().data, data[0], "{kind:?}: the reader's data");

        // A write: RWP | WRITE; un-protect without waking, then wake.
        let writer = Touch::write(mem.page_addr(1) + 7, 0xD7);
        let flags = expect_rwp(&uffd, mem.page_addr(1), true);
        assert_eq!(flags, FaultFlags::RWP | FaultFlags::WRITE, "{kind:?}");
        writer.wait_asleep();
        assert_eq!(
            ok(uffd.rwprotect(&reg, mem.page_addr(1), ps, RwprotectMode::DONTWAKE)),
            Ok(ps)
        );
        assert!(writer.still_blocked(), "{kind:?}: DONTWAKE woke the writer");
        assert_eq!(ok(uffd.wake(&reg, mem.page_addr(1), ps)), Ok(ps));
        writer.wait();
        let mut expect = data[1].clone();
        expect[7] = 0xD7;
        for (j, want) in expect.iter().enumerate().step_by(97) {
            assert_eq!(read_byte(mem.page_addr(1) + j), *want, "{kind:?} byte {j}");
        }
        assert_eq!(read_byte(mem.page_addr(1) + 7), 0xD7);

        // The page left alone is still protected.
        assert_eq!(read_protected_page(&uffd, &reg, &mem, 2), data[2][3]);
        fixtures::assert_no_event(&uffd);
        drop(region);
    }
}

/// Byte 3 of protected page `i`, read by another thread whose RWP fault is
/// resolved with the untyped un-protect.
fn read_protected_page(
    uffd: &Uffd,
    reg: &userfault::uffd::Registration,
    mem: &Mem,
    i: usize,
) -> u8 {
    let ps = mem.page_size();
    let reader = Touch::read(mem.page_addr(i), ps);
    expect_rwp(uffd, mem.page_addr(i), false);
    assert_eq!(
        ok(uffd.rwprotect(reg, mem.page_addr(i), ps, RwprotectMode::empty())),
        Ok(ps)
    );
    reader.wait().data[3]
}

/// WP and RWP on one range, and RWP with DONTWAKE, are refused before the
/// system call — and the kernel refuses them too (EINVAL), so the rule is
/// the kernel's.
#[test]
fn rwp_with_wp_and_rwp_with_dontwake_are_refused() {
    const TEST: &str = "rwp_with_wp_and_rwp_with_dontwake_are_refused";
    let uffd = require!(TEST, "uffd-rwp", open_rwp(Features::RWP));
    let Some(mem) = Mem::for_test(TEST, Kind::AnonPrivate, 2) else {
        return;
    };
    let ps = mem.page_size();
    // SAFETY: the mapping is only accessed through raw pointers.
    let err = unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::RWP | RegisterMode::WP) }
        .expect_err("RWP|WP");
    assert_eq!(err.errno(), None, "refused before the system call: {err}");
    assert!(err.to_string().contains("WP and RWP"), "{err}");
    assert_eq!(
        raw_register(
            &uffd,
            mem.addr(),
            mem.len(),
            sys::UFFDIO_REGISTER_MODE_RWP | sys::UFFDIO_REGISTER_MODE_WP
        ),
        Err(libc::EINVAL),
        "the kernel refuses RWP|WP"
    );

    // SAFETY: as above.
    let reg =
        unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::RWP) }.expect("register RWP");
    let err = uffd
        .rwprotect(
            &reg,
            mem.addr(),
            ps,
            RwprotectMode::RWP | RwprotectMode::DONTWAKE,
        )
        .expect_err("RWP|DONTWAKE");
    assert_eq!(err.errno(), None, "refused before the system call: {err}");
    assert!(err.to_string().contains("DONTWAKE"), "{err}");
    assert_eq!(
        raw_rwprotect(
            &uffd,
            mem.addr(),
            ps,
            sys::UFFDIO_RWPROTECT_MODE_RWP | sys::UFFDIO_RWPROTECT_MODE_DONTWAKE
        ),
        Err(libc::EINVAL),
        "the kernel refuses RWP|DONTWAKE"
    );
    // Adding WP to a range registered RWP is the same pair: EBUSY.
    assert_eq!(
        raw_register(&uffd, mem.addr(), mem.len(), sys::UFFDIO_REGISTER_MODE_WP),
        Err(libc::EBUSY),
        "the kernel refuses WP over RWP"
    );
    // SAFETY: as above.
    let err =
        unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::WP) }.expect_err("WP over RWP");
    assert_eq!(err.errno(), Some(userfault::Errno::EBUSY), "{err}");
    assert!(
        err.to_string().contains("RWP"),
        "the hint names the pair: {err}"
    );

    // RWP on a userfaultfd that did not enable the feature: EINVAL from the
    // kernel, refused before the system call here.
    let plain = fixtures::open(Features::empty()).expect("userfaultfd");
    let third = Mem::new(Kind::AnonPrivate, 1).expect("memory");
    assert_eq!(
        raw_register(
            &plain,
            third.addr(),
            third.len(),
            sys::UFFDIO_REGISTER_MODE_RWP
        ),
        Err(libc::EINVAL),
        "the kernel refuses RWP without UFFD_FEATURE_RWP"
    );
    // SAFETY: as above.
    let err = unsafe { plain.register(third.addr(), third.len(), RegisterMode::RWP) }
        .expect_err("RWP without the feature");
    assert_eq!(err.errno(), None, "refused before the system call: {err}");
    assert!(err.to_string().contains("Features::RWP"), "{err}");
    // A range registered without RWP does not offer UFFDIO_RWPROTECT.
    let other = Mem::new(Kind::AnonPrivate, 1).expect("memory");
    // SAFETY: as above.
    let missing = unsafe { uffd.register(other.addr(), other.len(), RegisterMode::MISSING) }
        .expect("register MISSING");
    let err = uffd
        .rwprotect(&missing, other.addr(), ps, RwprotectMode::RWP)
        .expect_err("not registered RWP");
    assert!(err.is_unsupported(), "{err}");
}

/// With RWP_ASYNC the kernel resolves accesses to protected pages itself,
/// and PAGEMAP_SCAN with PAGE_IS_ACCESSED reports exactly the pages read or
/// written (inverted: exactly the others). UFFDIO_SET_MODE turns the async
/// mode off (faults are reported again) and on.
#[test]
fn rwp_async_pagemap_scan_reports_exactly_the_touched_pages() {
    const TEST: &str = "rwp_async_pagemap_scan_reports_exactly_the_touched_pages";
    let uffd = require!(
        TEST,
        "uffd-rwp-async",
        open_rwp(Features::RWP | Features::RWP_ASYNC)
    );
    let pagemap = Pagemap::open().expect("/proc/self/pagemap");
    for kind in Kind::ALL {
        let pages = if kind == Kind::Hugetlb { 5 } else { 16 };
        let Some(mem) = Mem::for_test(TEST, kind, pages) else {
            continue;
        };
        let ps = mem.page_size();
        for i in 0..pages {
            write_bytes(mem.page_addr(i), &pattern(i, 64));
        }
        // SAFETY: the mapping is only accessed through raw pointers.
        let reg = unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::RWP) }
            .expect("register RWP");
        assert_eq!(
            ok(uffd.rwprotect(&reg, mem.addr(), mem.len(), RwprotectMode::RWP)),
            Ok(mem.len())
        );
        let (read, written) = if kind == Kind::Hugetlb {
            (1, 3)
        } else {
            (3, 5)
        };
        assert_eq!(read_byte(mem.page_addr(read) + 1), pattern(read, 64)[1]);
        write_bytes(mem.page_addr(written) + 2, &[0x99]);
        fixtures::assert_no_event(&uffd);

        let scan = Scan::new(mem.addr(), mem.addr() + mem.len())
            .require(PageCategories::ACCESSED)
            .report(PageCategories::ACCESSED | PageCategories::PRESENT);
        let regions: Vec<_> = pagemap
            .scan(&scan)
            .expect("scan")
            .collect::<Result<_, _>>()
            .expect("PAGEMAP_SCAN");
        let touched: Vec<(usize, usize)> = regions
            .iter()
            .map(|r| ((r.start - mem.addr()) / ps, (r.end - mem.addr()) / ps))
            .collect();
        assert_eq!(
            touched,
            vec![(read, read + 1), (written, written + 1)],
            "{kind:?}: {regions:?}"
        );
        for r in &regions {
            assert!(
                r.categories
                    .contains(PageCategories::ACCESSED | PageCategories::PRESENT),
                "{kind:?}: {r:?}"
            );
        }
        let untouched: usize = pagemap
            .scan(
                &Scan::new(mem.addr(), mem.addr() + mem.len())
                    .require_not(PageCategories::ACCESSED),
            )
            .expect("scan")
            .map(|r| r.expect("PAGEMAP_SCAN").len() / ps)
            .sum();
        assert_eq!(untouched, pages - 2, "{kind:?}");

        // Synchronous again: an access to a protected page is a fault.
        ok(uffd.set_mode(Features::empty(), Features::RWP_ASYNC)).expect("SET_MODE off");
        assert!(!uffd.features().contains(Features::RWP_ASYNC));
        let other = pages - 1;
        let reader = Touch::read(mem.page_addr(other), 8);
        expect_rwp(&uffd, mem.page_addr(other), false);
        assert!(reader.still_blocked());
        ok(uffd.rwprotect(&reg, mem.page_addr(other), ps, RwprotectMode::empty()))
            .expect("un-protect");
        assert_eq!(reader.wait().data, pattern(other, 64)[..8]);
        // And async once more.
        ok(uffd.set_mode(Features::RWP_ASYNC, Features::empty())).expect("SET_MODE on");
        assert!(uffd.features().contains(Features::RWP_ASYNC));
        assert_eq!(read_byte(mem.page_addr(0)), pattern(0, 64)[0]);
        fixtures::assert_no_event(&uffd);
        ok(uffd.unregister(&reg)).expect("unregister");
    }
}

/// UFFDIO_SET_MODE: refused before the system call for a feature both
/// enabled and disabled; on a kernel without it (before 7.3) refused as
/// unsupported; on 7.3 accepted on a userfaultfd that negotiated RWP alone.
#[test]
fn set_mode_switches_rwp_async_where_the_kernel_has_it() {
    const TEST: &str = "set_mode_switches_rwp_async_where_the_kernel_has_it";
    let plain = require!(TEST, "uffd", fixtures::open(Features::empty()));
    let err = plain
        .set_mode(Features::RWP_ASYNC, Features::RWP_ASYNC)
        .expect_err("both");
    assert_eq!(err.errno(), None, "{err}");
    assert!(
        err.to_string().contains("both enabled and disabled"),
        "{err}"
    );
    let has_set_mode = plain
        .kernel_api()
        .ioctls()
        .contains(userfault::uffd::Ioctls::SET_MODE);
    if !has_set_mode {
        let err = plain
            .set_mode(Features::RWP_ASYNC, Features::empty())
            .expect_err("no SET_MODE");
        assert!(err.is_unsupported(), "{err}");
        assert_eq!(err.errno(), None, "{err}");
    }
    let uffd = require!(TEST, "uffd-rwp-async", open_rwp(Features::RWP));
    assert!(has_set_mode, "a kernel with RWP offers UFFDIO_SET_MODE");
    ok(uffd.set_mode(Features::RWP_ASYNC, Features::empty())).expect("enable RWP_ASYNC");
    assert!(uffd.features().contains(Features::RWP_ASYNC));
    ok(uffd.set_mode(Features::empty(), Features::RWP_ASYNC)).expect("disable RWP_ASYNC");
    assert!(!uffd.features().contains(Features::RWP_ASYNC));
    let wp_async = uffd
        .set_mode(Features::WP_ASYNC, Features::empty())
        .expect_err("WP_ASYNC cannot be switched");
    assert_eq!(
        wp_async.errno(),
        Some(userfault::Errno::EINVAL),
        "{wp_async}"
    );
    // Negotiated like every other feature: RWP_ASYNC with RWP at creation.
    let both = fixtures::open(Features::RWP | Features::RWP_ASYNC).expect("RWP|RWP_ASYNC");
    assert_eq!(both.features(), Features::RWP | Features::RWP_ASYNC);
    // RWP_ASYNC alone is refused by the kernel (EINVAL).
    let alone = Uffd::builder()
        .require_features(Features::RWP_ASYNC)
        .create()
        .expect_err("RWP_ASYNC without RWP");
    assert_eq!(alone.errno(), Some(userfault::Errno::EINVAL), "{alone}");
    // SET_MODE(RWP_ASYNC) on a userfaultfd without RWP: EINVAL from the
    // kernel, refused before the system call here.
    let mut arg = sys::uffdio_set_mode {
        enable: sys::UFFD_FEATURE_RWP_ASYNC,
        disable: 0,
    };
    // SAFETY: UFFDIO_SET_MODE reads one `uffdio_set_mode`, which `arg` is.
    let r = unsafe {
        libc::ioctl(
            plain.as_raw_fd(),
            sys::UFFDIO_SET_MODE as libc::c_ulong,
            &mut arg,
        )
    };
    assert_eq!(
        (r, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EINVAL)),
        "the kernel refuses RWP_ASYNC on a userfaultfd without RWP"
    );
    let err = plain
        .set_mode(Features::RWP_ASYNC, Features::empty())
        .expect_err("RWP_ASYNC without RWP");
    assert_eq!(err.errno(), None, "refused before the system call: {err}");
    assert!(err.to_string().contains("Features::RWP"), "{err}");
    util::report(&format!(
        "rwp: SET_MODE(RWP_ASYNC) on a userfaultfd with RWP alone: accepted; WP_ASYNC: {wp_async}; \
         RWP_ASYNC negotiated alone: {alone}"
    ));
}
