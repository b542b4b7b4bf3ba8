//! The tokio reader: events arrive through the runtime's reactor.

use std::future::poll_fn;

use userfault::uffd::{
    AsyncUffd, CopyMode, Event, EventBuffer, Features, RegisterMode, ZeropageMode,
};

use super::fixtures::{self, Kind, Mem, TIMEOUT, Touch, ok, pattern};
use crate::util::require;

#[test]
fn async_reader_delivers_faults() {
    const TEST: &str = "async_reader_delivers_faults";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    uffd.set_nonblocking(false).expect("start blocking");
    let ps = fixtures::page();
    let mem = Mem::new(Kind::AnonPrivate, 2).expect("memory");
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg =
        unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }.expect("register");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let uffd = AsyncUffd::new(uffd).expect("register with the reactor");
        assert!(uffd.get_ref().is_nonblocking().expect("F_GETFL"));
        let mut buf = EventBuffer::with_capacity(4);

        let touch = Touch::read(mem.page_addr(0), 32);
        let events: Vec<Event> = tokio::time::timeout(TIMEOUT, uffd.read_events(&mut buf))
            .await
            .expect("an event in time")
            .expect("read")
            .map(Event::into_taken)
            .collect();
        assert_eq!(events.len(), 1);
        assert!(
            matches!(events[0], Event::PageFault { address, .. } if address == mem.page_addr(0))
        );
        let data = pattern(61, ps);
        assert_eq!(
            ok(uffd
                .get_ref()
                .copy(&reg, mem.page_addr(0), &data, CopyMode::empty())),
            Ok(ps)
        );
        assert_eq!(touch.wait().data, data[..32]);

        let touch = Touch::read(mem.page_addr(1), 32);
        let event = tokio::time::timeout(
            TIMEOUT,
            poll_fn(|cx| {
                uffd.poll_read_events(cx, &mut buf)
                    .map(|r| r.map(|mut events| events.next().map(Event::into_taken)))
            }),
        )
        .await
        .expect("an event in time")
        .expect("read")
        .expect("one event");
        assert!(matches!(event, Event::PageFault { address, .. } if address == mem.page_addr(1)));
        assert_eq!(
            ok(uffd
                .get_ref()
                .zeropage(&reg, mem.page_addr(1), ps, ZeropageMode::empty())),
            Ok(ps)
        );
        assert_eq!(touch.wait().data, vec![0; 32]);
        let uffd = uffd.into_inner();
        assert!(uffd.read_events(&mut buf).expect("read").is_empty());
    });
}

/// One userfaultfd shared by the tokio reader and a CONTINUE-only region:
/// the reader's events are resolved through the region, a page already in
/// the backing file faults MINOR and is mapped, every other page faults
/// MISSING and is filled from the snapshot, and the guest reads the
/// snapshot's bytes everywhere.
#[test]
fn async_reader_serves_a_continue_only_region() {
    use std::sync::Arc;
    use userfault::resolve::Fault;
    use userfault::uffd::FaultKind;

    use crate::resolve::{continue_only_fixture, read_out, source_page};

    const TEST: &str = "async_reader_serves_a_continue_only_region";
    const PAGES: usize = 8;
    const FILLED: usize = 3;
    let kernel = require!(
        TEST,
        "uffd",
        userfault::uffd::query_kernel().map_err(|e| e.to_string())
    );
    if !kernel.features().contains(Features::MINOR_SHMEM) {
        return crate::util::skip(
            TEST,
            "uffd-minor-shmem",
            "no MINOR faults on shmem (UFFD_FEATURE_MINOR_SHMEM, Linux 5.14)",
        );
    }
    let Some((uffd, mapping, region)) = continue_only_fixture(TEST, PAGES) else {
        return;
    };
    let ps = region.page_size();
    // Page FILLED is in the page cache before the guest touches it.
    mapping
        .state()
        .populate((FILLED * ps) as u64, &source_page((FILLED * ps) as u64, ps))
        .expect("fill");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let (missing, minor) = runtime.block_on(async {
        let reader = AsyncUffd::new(Arc::clone(&uffd)).expect("register with the reactor");
        assert!(Arc::ptr_eq(reader.uffd(), region.uffd()), "one userfaultfd");
        let guest = {
            let mapping = Arc::clone(&mapping);
            std::thread::spawn(move || read_out(&mapping, 0, PAGES * ps))
        };
        let mut buf = EventBuffer::with_capacity(4);
        let (mut missing, mut minor) = (0, 0);
        while missing + minor < PAGES {
            let events = tokio::time::timeout(TIMEOUT, reader.read_events(&mut buf))
                .await
                .expect("a fault in time")
                .expect("read");
            for event in events {
                let Event::PageFault { kind, .. } = event else {
                    panic!("unexpected event {event:?}");
                };
                match region.fault(&event).expect("fault inside the region") {
                    Fault::Missing(f) => {
                        let offset = f.file_offset();
                        f.write_then_continue(&source_page(offset, ps))
                            .expect("write + CONTINUE");
                        missing += 1;
                    }
                    Fault::Minor(f) => {
                        assert_eq!(kind, FaultKind::Minor);
                        assert_eq!(f.page(), mapping.mapping().addr() + FILLED * ps);
                        f.map().expect("CONTINUE");
                        minor += 1;
                    }
                    Fault::WriteProtect(f) => panic!("WP fault at {:#x}", f.page()),
                    Fault::Rwp(f) => panic!("RWP fault at {:#x}", f.page()),
                    Fault::Unknown(f) => panic!("unknown fault at {:#x}", f.page()),
                }
            }
        }
        let seen = guest.join().expect("guest thread");
        for page in 0..PAGES {
            let offset = page * ps;
            assert_eq!(
                seen[offset..offset + ps],
                source_page(offset as u64, ps)[..],
                "page {page}"
            );
        }
        // The reader hands the same userfaultfd back.
        let back = reader.into_inner();
        assert!(Arc::ptr_eq(&back, &uffd));
        (missing, minor)
    });
    assert_eq!((missing, minor), (PAGES - 1, 1), "faults served");
}
