//! The reference's resolution rows (kernel-abi.md §2.5) through the typed
//! API, on a shmem memfd registered MISSING|MINOR.

use std::sync::Arc;
use std::time::Duration;

use userfault::backing::{Backing, Claimed};
use userfault::resolve::{AnyRegion, CopyCapable, Fault, Region, Resolution};
use userfault::uffd::{EventBuffer, FaultKind, RegisterMode};

use super::{
    continue_only_fixture, next_fault, open_uffd, page_size, poke, read_out, shmem_mapping,
    source_page, touch,
};

const WAIT: Duration = Duration::from_secs(5);

/// F1: a read of a page absent from the cache raises MISSING; filling the
/// file and CONTINUE resumes the reader with the written bytes. F3 for a
/// MINOR fault whose page was punched out: the waiter is woken and its
/// retry raises MISSING, which brings the data. F8: `populate` without a
/// waiter installs the page.
#[test]
fn continue_only_missing_minor_and_vanished_pages() {
    const TEST: &str = "continue_only_missing_minor_and_vanished_pages";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let Some((uffd, mapping, region)) = continue_only_fixture(TEST, 4) else {
            return;
        };
        let page = page_size();
        let mut buf = EventBuffer::with_capacity(4);

        std::thread::scope(|s| {
            // F1
            let reader = s.spawn(|| read_out(&mapping, 0, page));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("MISSING event");
            assert_eq!(kind, FaultKind::Missing);
            let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                panic!("not a missing fault")
            };
            assert_eq!(f.file_offset(), 0);
            assert_eq!(
                f.write_then_continue(&source_page(0, page))
                    .expect("resolve"),
                Resolution::Filled
            );
            assert_eq!(reader.join().expect("reader"), source_page(0, page));

            // MINOR: the page is in the cache (filled behind the mapping), not
            // mapped; then punched out before it is mapped.
            let off = page as u64;
            super::pwrite_behind(&mapping, off, &source_page(off, page));
            let reader = s.spawn(|| read_out(&mapping, page, page));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("MINOR event");
            assert_eq!(kind, FaultKind::Minor);
            super::punch_behind(&mapping, off, page as u64);
            let Some(Fault::Minor(f)) = region.fault_at(addr, kind) else {
                panic!("not a minor fault")
            };
            assert_eq!(f.map().expect("map"), Resolution::Refault);
            let (addr, kind) =
                next_fault(&uffd, &mut buf, WAIT).expect("MISSING after the refault");
            assert_eq!(kind, FaultKind::Missing);
            let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                panic!("not a missing fault")
            };
            f.write_then_continue(&source_page(off, page))
                .expect("resolve");
            assert_eq!(reader.join().expect("reader"), source_page(off, page));
        });

        // F8: populate ahead of any fault; the read does not fault at all.
        let off = 2 * page as u64;
        region
            .populate(mapping.addr() + 2 * page, &source_page(off, page))
            .expect("populate");
        assert_eq!(touch(&mapping, 2 * page + 9), source_page(off, page)[9]);
        // F4: populating a page that is already mapped is not an error, and
        // leaves what was written to it since.
        poke(&mapping, 2 * page + 9, 0x42);
        let again = region.populate(mapping.addr() + 2 * page, &source_page(off, page));
        assert_eq!(again.expect("populate again"), Resolution::AlreadyPresent);
        assert_eq!(
            touch(&mapping, 2 * page + 9),
            0x42,
            "populate overwrote a written page"
        );
    })
}

/// A fault dropped unresolved wakes its waiter, which faults again.
#[test]
fn dropped_faults_wake_their_waiter() {
    const TEST: &str = "dropped_faults_wake_their_waiter";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let Some((uffd, mapping, region)) = continue_only_fixture(TEST, 1) else {
            return;
        };
        let page = page_size();
        let mut buf = EventBuffer::with_capacity(4);
        std::thread::scope(|s| {
            let reader = s.spawn(|| touch(&mapping, 100));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("first event");
            drop(region.fault_at(addr, kind).expect("fault"));
            let (addr2, kind2) =
                next_fault(&uffd, &mut buf, WAIT).expect("the waiter faults again");
            assert_eq!(
                (addr2 & !(page - 1), kind2),
                (addr & !(page - 1), FaultKind::Missing)
            );
            let Some(Fault::Missing(f)) = region.fault_at(addr2, kind2) else {
                panic!("not missing")
            };
            f.write_then_continue(&source_page(0, page))
                .expect("resolve");
            assert_eq!(reader.join().expect("reader"), source_page(0, page)[100]);
        });
    })
}

/// F5/F10: a MISSING fault is pending, the page is filled behind the
/// mapping, then COPY fails with EEXIST — and the waiter is still woken.
/// F6: COPY of an absent page fills the page cache. F7: zero page.
#[test]
fn copy_capable_copy_zero_and_exists_then_wake() {
    const TEST: &str = "copy_capable_copy_zero_and_exists_then_wake";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let Some(uffd) = open_uffd(TEST) else { return };
        let page = page_size();
        let mapping = shmem_mapping(3);
        let mode = RegisterMode::MISSING | RegisterMode::MINOR;
        // SAFETY: fresh mapping, nothing references it.
        let region: Region<CopyCapable, _> =
            unsafe { Region::copy_capable_file(uffd.clone(), mapping.clone(), mode) }
                .expect("register");
        let memfd = region.mapping().expect("backing").backing().clone();
        let memfd = &*memfd;
        let mut buf = EventBuffer::with_capacity(4);
        std::thread::scope(|s| {
            // F6
            let reader = s.spawn(|| read_out(&mapping, 0, page));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("event");
            let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                panic!("not missing")
            };
            assert_eq!(
                f.copy(&source_page(0, page)).expect("copy"),
                Resolution::Filled
            );
            assert_eq!(reader.join().expect("reader"), source_page(0, page));
            let mut back = vec![0u8; page];
            rustix::io::pread(memfd, &mut back, 0).expect("pread");
            assert_eq!(
                back,
                source_page(0, page),
                "UFFDIO_COPY fills the page cache"
            );

            // F10
            let reader = s.spawn(|| read_out(&mapping, page, page));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("event");
            assert_eq!(kind, FaultKind::Missing);
            super::pwrite_behind(&mapping, page as u64, &source_page(page as u64, page));
            let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                panic!("not missing")
            };
            assert_eq!(
                f.copy(&source_page(page as u64, page)).expect("copy"),
                Resolution::AlreadyPresent
            );
            assert_eq!(
                reader.join().expect("woken reader"),
                source_page(page as u64, page)
            );

            // F7
            let reader = s.spawn(|| read_out(&mapping, 2 * page, 16));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("event");
            let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                panic!("not missing")
            };
            assert_eq!(f.zero().expect("zero"), Resolution::Filled);
            assert_eq!(reader.join().expect("reader"), vec![0u8; 16]);
        });
    })
}

/// A copied window over pages a balloon discarded copies the source around
/// them and zeros into them, each piece with its own `UFFDIO_COPY`: the
/// faulting thread reads the source, the discarded pages read zeros
/// through the mapping and in the file, and every page counts once.
#[test]
fn a_copied_window_fills_discarded_pages_with_zeros_and_the_rest_from_the_source() {
    const TEST: &str =
        "a_copied_window_fills_discarded_pages_with_zeros_and_the_rest_from_the_source";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let Some(uffd) = open_uffd(TEST) else { return };
        let page = page_size();
        let pages = 8;
        let mapping = shmem_mapping(pages);
        let mode = RegisterMode::MISSING | RegisterMode::MINOR;
        // SAFETY: fresh mapping, nothing references it.
        let region: Region<CopyCapable, _> =
            unsafe { Region::copy_capable_file(uffd.clone(), mapping.clone(), mode) }
                .expect("register");
        let state = mapping.state();
        state
            .discard(
                2 * page as u64,
                2 * page as u64,
                userfault::resolve::Discard::Zero,
            )
            .expect("discard");
        let data: Vec<u8> = (0..pages)
            .flat_map(|p| source_page((p * page) as u64, page))
            .collect();
        let mut buf = EventBuffer::with_capacity(4);
        std::thread::scope(|s| {
            let reader = s.spawn(|| read_out(&mapping, page, page));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("event");
            let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                panic!("not missing")
            };
            let w = f.window(pages * page).expect("window");
            let fill = f.copy_window_counted(w, &data).expect("window");
            assert_eq!(
                (fill.resolution.ok(), fill.written, fill.zeroed),
                (Some(Resolution::Filled), pages as u64, 2)
            );
            assert_eq!(
                reader.join().expect("reader"),
                source_page(page as u64, page)
            );
        });
        let memfd = region.mapping().expect("backing").backing().clone();
        for p in 0..pages {
            let want = if (2..4).contains(&p) {
                vec![0u8; page]
            } else {
                source_page((p * page) as u64, page)
            };
            assert!(read_out(&mapping, p * page, page) == want, "page {p}");
            let mut back = vec![0u8; page];
            rustix::io::pread(&*memfd, &mut back, (p * page) as u64).expect("pread");
            assert!(back == want, "file page {p}");
            assert_eq!(
                state
                    .count_unfilled((p * page) as u64, page as u64)
                    .unwrap(),
                0
            );
        }
    })
}

/// The escape hatch refuses what the types forbid, at run time, and the
/// refused fault is woken rather than lost.
#[test]
fn any_fault_refuses_copy_on_continue_only() {
    const TEST: &str = "any_fault_refuses_copy_on_continue_only";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let Some((uffd, mapping, region)) = continue_only_fixture(TEST, 1) else {
            return;
        };
        let page = page_size();
        let any = AnyRegion::ContinueOnly(region);
        let mut buf = EventBuffer::with_capacity(4);
        std::thread::scope(|s| {
            let reader = s.spawn(|| touch(&mapping, 1));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("event");
            let err = any
                .fault_at(addr, kind)
                .expect("fault")
                .copy(&source_page(0, page))
                .expect_err("refused");
            assert!(err.to_string().contains("never UFFDIO_COPY"), "{err}");
            let (addr, kind) =
                next_fault(&uffd, &mut buf, WAIT).expect("the refused fault comes back");
            let fault = any.fault_at(addr, kind).expect("fault");
            assert!(fault.is_missing());
            fault
                .write_then_continue(&source_page(0, page))
                .expect("resolve");
            assert_eq!(reader.join().expect("reader"), source_page(0, page)[1]);
        });
        assert!(any.fault_at(usize::MAX - 5, FaultKind::Missing).is_none());
        let _ = Arc::strong_count(&uffd);
    })
}

/// Resolutions check their data: a buffer that is not exactly one page is
/// refused, and the fault is woken on drop rather than lost.
#[test]
fn wrong_sized_data_is_refused() {
    const TEST: &str = "wrong_sized_data_is_refused";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let Some((uffd, mapping, region)) = continue_only_fixture(TEST, 1) else {
            return;
        };
        let page = page_size();
        let mut buf = EventBuffer::with_capacity(4);
        std::thread::scope(|s| {
            let reader = s.spawn(|| touch(&mapping, 3));
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("event");
            let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                panic!("not missing")
            };
            let err = f.write_then_continue(&[0u8; 17]).expect_err("short data");
            assert!(err.to_string().contains("the page is"), "{err}");
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("woken and faulted again");
            let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                panic!("not missing")
            };
            f.write_then_continue(&source_page(0, page))
                .expect("resolve");
            assert_eq!(reader.join().expect("reader"), source_page(0, page)[3]);
        });
    })
}

/// Two threads fault on the same page and two MISSING events arrive; the
/// first resolution maps the page and wakes both, the guest writes to it,
/// and then the second event is resolved: it must not write the snapshot
/// over the guest's data.
#[test]
fn a_duplicate_missing_fault_never_overwrites_the_guest() {
    const TEST: &str = "a_duplicate_missing_fault_never_overwrites_the_guest";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let Some((uffd, mapping, region)) = continue_only_fixture(TEST, 1) else {
            return;
        };
        let page = page_size();
        let mut buf = EventBuffer::with_capacity(4);
        std::thread::scope(|s| {
            let first = s.spawn(|| touch(&mapping, 1));
            let (a, ka) = next_fault(&uffd, &mut buf, WAIT).expect("first event");
            let second = s.spawn(|| touch(&mapping, 2));
            let (b, kb) =
                next_fault(&uffd, &mut buf, WAIT).expect("second event for the same page");
            assert_eq!((ka, kb), (FaultKind::Missing, FaultKind::Missing));
            let Some(Fault::Missing(fa)) = region.fault_at(a, ka) else {
                panic!("not missing")
            };
            let Some(Fault::Missing(fb)) = region.fault_at(b, kb) else {
                panic!("not missing")
            };
            assert_eq!(
                fa.write_then_continue(&source_page(0, page))
                    .expect("first"),
                Resolution::Filled
            );
            assert_eq!(first.join().expect("first reader"), source_page(0, page)[1]);
            assert_eq!(
                second.join().expect("second reader"),
                source_page(0, page)[2]
            );
            // The guest writes; then the duplicate event is handled.
            poke(&mapping, 7, 0x42);
            let late = fb
                .write_then_continue(&source_page(0, page))
                .expect("duplicate");
            assert_eq!(late, Resolution::AlreadyPresent);
            assert_eq!(
                touch(&mapping, 7),
                0x42,
                "the duplicate fault overwrote the guest's write"
            );
        });
    })
}

/// A backing that refuses to overwrite a populated page answers EEXIST
/// (guest_memfd without a direct map does): that means "already there",
/// not failure.
#[test]
fn a_backing_answering_eexist_is_already_populated() {
    use std::os::fd::{AsFd, BorrowedFd};
    use userfault::backing::{BackedMapping, Memfd};
    use userfault::{Errno, Error};

    /// Fills like shmem, then reports EEXIST as such a backing would.
    struct Exists(Memfd);
    impl AsFd for Exists {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.0.as_fd()
        }
    }
    impl Backing for Exists {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn page_size(&self) -> usize {
            self.0.page_size()
        }
        fn fill(&self, offset: u64, data: &[u8], claim: Claimed<'_>) -> userfault::Result<()> {
            self.0.fill(offset, data, claim)?;
            Err(Error::os("pwrite", Errno::EEXIST))
        }
    }

    const TEST: &str = "a_backing_answering_eexist_is_already_populated";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let Some(uffd) = open_uffd(TEST) else { return };
        let page = page_size();
        let memfd = Memfd::shmem(c"exists", page as u64).expect("memfd");
        let mapping = BackedMapping::whole(Arc::new(Exists(memfd))).expect("mmap");
        // SAFETY: fresh mapping, nothing references it.
        let region =
            unsafe { Region::continue_only(uffd.clone(), mapping.clone()) }.expect("register");
        let mut buf = EventBuffer::with_capacity(4);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                // SAFETY: inside the live, registered mapping.
                unsafe { mapping.mapping().as_ptr().add(5).read_volatile() }
            });
            let (addr, kind) = next_fault(&uffd, &mut buf, WAIT).expect("event");
            let Some(Fault::Missing(f)) = region.fault_at(addr, kind) else {
                panic!("not missing")
            };
            assert_eq!(
                f.write_then_continue(&source_page(0, page))
                    .expect("resolve"),
                Resolution::Filled
            );
            assert_eq!(reader.join().expect("reader"), source_page(0, page)[5]);
        });
    })
}

/// A region's page size below the base page would make every resolution
/// and its wake fail: refused at registration.
#[test]
fn a_page_size_below_the_base_page_is_refused() {
    const TEST: &str = "a_page_size_below_the_base_page_is_refused";
    let Some(uffd) = super::open_uffd_for(TEST, "uffd") else {
        return;
    };
    let mapping = shmem_mapping(2);
    // SAFETY: fresh mapping, nothing references it; the call is refused
    // before it registers anything.
    let err = unsafe {
        Region::copy_capable(
            uffd,
            mapping.addr(),
            mapping.len(),
            RegisterMode::MISSING,
            2048,
        )
    }
    .expect_err("2 KiB pages");
    assert!(err.to_string().contains("base page size"), "{err}");
}

/// A MINOR fault raised while another resolver is still filling the page
/// (the page is already in the page cache, as hugetlb's fill puts it there
/// before copying) is mapped only once the fill is complete.
#[test]
fn a_minor_fault_waits_for_a_fill_under_way() {
    use std::os::fd::{AsFd, BorrowedFd};
    use userfault::backing::{BackedMapping, Memfd};

    /// Puts the page in the cache (zeroed) first, then fills it slowly.
    struct Slow(Memfd);
    impl AsFd for Slow {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.0.as_fd()
        }
    }
    impl Backing for Slow {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn page_size(&self) -> usize {
            self.0.page_size()
        }
        fn fill(&self, offset: u64, data: &[u8], claim: Claimed<'_>) -> userfault::Result<()> {
            let keep = rustix::fs::FallocateFlags::KEEP_SIZE;
            rustix::fs::fallocate(self.0.as_fd(), keep, offset, data.len() as u64)
                .expect("fallocate");
            std::thread::sleep(Duration::from_millis(200));
            self.0.fill(offset, data, claim)
        }
    }

    const TEST: &str = "a_minor_fault_waits_for_a_fill_under_way";
    crate::util::with_deadline(TEST, WAIT * 6, || {
        let Some(uffd) = open_uffd(TEST) else { return };
        let page = page_size();
        let memfd = Memfd::shmem(c"slow", page as u64).expect("memfd");
        let mapping = BackedMapping::whole(Arc::new(Slow(memfd))).expect("mmap");
        // SAFETY: fresh mapping, nothing references it.
        let region =
            unsafe { Region::continue_only(uffd.clone(), mapping.clone()) }.expect("register");
        let read = |at: usize| {
            // SAFETY: inside the live, registered mapping.
            unsafe { mapping.mapping().as_ptr().add(at).read_volatile() }
        };
        let mut buf = EventBuffer::with_capacity(4);
        let want = source_page(0, page);
        std::thread::scope(|s| {
            let first = s.spawn(|| read(0));
            let (a, ka) = next_fault(&uffd, &mut buf, WAIT).expect("MISSING event");
            assert_eq!(ka, FaultKind::Missing);
            let Some(Fault::Missing(fa)) = region.fault_at(a, ka) else {
                panic!("not missing")
            };
            let data = &want;
            let filler = s.spawn(move || fa.write_then_continue(data));
            std::thread::sleep(Duration::from_millis(50));
            let second = s.spawn(|| read(1));
            let (b, kb) = next_fault(&uffd, &mut buf, WAIT).expect("MINOR event");
            assert_eq!(
                kb,
                FaultKind::Minor,
                "the page is in the cache while it is filled"
            );
            let Some(Fault::Minor(fb)) = region.fault_at(b, kb) else {
                panic!("not minor")
            };
            fb.map().expect("map");
            assert_eq!(
                second.join().expect("second reader"),
                want[1],
                "mapped before the fill completed"
            );
            assert_eq!(first.join().expect("first reader"), want[0]);
            filler.join().expect("filler").expect("fill");
        });
    })
}

/// The class holds for the untyped API too: the registration a
/// CONTINUE-only region hands out does not offer COPY, so the raw
/// `Uffd::copy` refuses it before the system call.
#[test]
fn continue_only_registrations_refuse_copy_through_the_raw_api() {
    use userfault::uffd::{CopyMode, Ioctls};
    const TEST: &str = "continue_only_registrations_refuse_copy_through_the_raw_api";
    let Some(uffd) = open_uffd(TEST) else { return };
    let page = page_size();
    let mapping = shmem_mapping(1);
    // SAFETY: fresh mapping, nothing references it.
    let region = unsafe { Region::continue_only(uffd.clone(), mapping.clone()) }.expect("register");
    let reg = region.registration();
    assert!(reg.ioctls().contains(Ioctls::CONTINUE | Ioctls::WAKE));
    assert!(
        !reg.ioctls()
            .intersects(Ioctls::COPY | Ioctls::ZEROPAGE | Ioctls::MOVE | Ioctls::POISON)
    );
    let err = uffd
        .copy(
            reg,
            mapping.addr(),
            &source_page(0, page),
            CopyMode::empty(),
        )
        .expect_err("COPY on a CONTINUE-only region");
    assert!(err.is_unsupported(), "{err}");
}
