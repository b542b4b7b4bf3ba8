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
                    .map(|r| r.map(|mut events| events.next()))
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
