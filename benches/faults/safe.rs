//! The safe-layer side: the same runs as the raw baseline, through
//! `userfault` — the typestate `Region` API where it applies (one page per
//! fault), `Uffd::copy_or_wake` for block-sized resolutions.

use std::sync::Arc;

use userfault::backing::{BackedMapping, Backing, Memfd};
use userfault::mem::{Mapping, Sharing};
use userfault::resolve::{Class, Fault, MissingFault, PageState, Region, Resolution};
use userfault::uffd::{CopyMode, Event, EventBuffer, RegisterMode, Uffd};

use crate::harness::{PAGE, Sample, run_faults, verify};

/// One read of events into `buf`, each page fault turned into a typed fault
/// of `region`: MINOR faults are mapped, MISSING ones go to `missing` with
/// the page's offset in the region. Returns the faults resolved.
pub fn serve_region<C: Class, B>(
    region: &Region<C, B>,
    buf: &mut EventBuffer,
    mut missing: impl FnMut(MissingFault<'_, C, B>, usize) -> userfault::Result<Resolution>,
) -> usize {
    let base = region.registration().start();
    let mut served = 0;
    for event in region.uffd().read_events(buf).expect("read events") {
        let Event::PageFault { address, .. } = event else {
            unexpected(event);
        };
        let resolved = match region.fault(&event) {
            Some(Fault::Missing(f)) => {
                let off = f.page() - base;
                missing(f, off)
            }
            Some(Fault::Minor(f)) => f.map(),
            Some(Fault::WriteProtect(f)) => panic!("unexpected WP fault at {:#x}", f.page()),
            Some(Fault::Rwp(f)) => panic!("unexpected RWP fault at {:#x}", f.page()),
            Some(Fault::Unknown(f)) => panic!("unexpected fault kind at {:#x}", f.page()),
            None => panic!("fault at {address:#x} outside the region"),
        };
        resolved.expect("resolution");
        served += 1;
    }
    served
}

/// Stops the run on an event the scenario never raises. Cold, and given
/// the event by value: formatting `&event` inside the handler loop would
/// make the event's address escape, which keeps every event in memory on
/// the resolution path too (33 instructions per fault in the typed
/// handler's count).
#[cold]
#[inline(never)]
pub fn unexpected(event: Event<'_>) -> ! {
    panic!("unexpected event {event:?}")
}

fn new_uffd() -> Arc<Uffd> {
    Arc::new(Uffd::new().expect("userfaultfd"))
}

/// Scenarios 1 and 2 through a copy-capable `Region`: `f.copy(page)`.
pub fn anon(src: &[u8], len: usize, threads: usize, batch: usize) -> Sample {
    let uffd = new_uffd();
    let mem = Mapping::anonymous(len, Sharing::Private).expect("mmap");
    // SAFETY: a fresh mapping that only raw pointers reach.
    let region = unsafe {
        Region::copy_capable(uffd, mem.addr(), len, RegisterMode::MISSING, PAGE).expect("register")
    };
    let mut buf = EventBuffer::with_capacity(batch);
    let s = run_faults(
        "safe anon",
        mem.addr(),
        len,
        PAGE,
        threads,
        len / PAGE,
        || serve_region(&region, &mut buf, |f, off| f.copy(&src[off..off + PAGE])),
    );
    drop(region);
    // SAFETY: unregistered; no reference into it.
    unsafe { verify("safe anon", mem.addr(), &src[..len]) };
    s
}

/// Scenario 4a through `Uffd::copy_or_wake` of the `unit`-aligned block.
pub fn chunk(src: &[u8], len: usize, unit: usize) -> Sample {
    let uffd = new_uffd();
    let mem = Mapping::anonymous(len, Sharing::Private).expect("mmap");
    // SAFETY: a fresh mapping that only raw pointers reach.
    let reg = unsafe { uffd.register(mem.addr(), len, RegisterMode::MISSING) }.expect("register");
    let mut buf = EventBuffer::with_capacity(1);
    let base = mem.addr();
    let s = run_faults("safe chunk", base, len, unit, 1, len / unit, || {
        let mut served = 0;
        for event in uffd.read_events(&mut buf).expect("read events") {
            let Event::PageFault { address, .. } = event else {
                unexpected(event);
            };
            event.take();
            let off = (address - base) & !(unit - 1);
            let dst = base + off;
            uffd.copy_or_wake(&reg, dst, &src[off..off + unit], CopyMode::empty())
                .expect("UFFDIO_COPY");
            served += 1;
        }
        served
    });
    uffd.unregister(&reg).expect("unregister");
    // SAFETY: unregistered; no reference into it.
    unsafe { verify("safe chunk", base, &src[..len]) };
    s
}

/// A shmem memfd holding `data`.
pub fn filled_memfd(data: &[u8]) -> Arc<Memfd> {
    let memfd = Memfd::shmem(c"userfault-bench", data.len() as u64).expect("memfd");
    let n = rustix::io::pwrite(&memfd, data, 0).expect("pwrite");
    assert_eq!(n, data.len());
    Arc::new(memfd)
}

/// A mapping of the whole of `memfd` with a fresh page state; a file that
/// `filled_memfd` filled is declared filled (an eagerly restored file).
fn shared_map(memfd: Arc<Memfd>, filled: bool) -> Arc<BackedMapping<Memfd>> {
    let len = memfd.size() as usize;
    let state = PageState::new(memfd).expect("page state");
    if filled {
        state.mark_filled(0, len as u64).expect("mark filled");
    }
    Arc::new(BackedMapping::new(&state, 0, len).expect("mmap memfd"))
}

/// Scenario 3, MINOR: a fresh mapping of the filled file `full`, a
/// CONTINUE-only region, `f.map()`.
pub fn shmem_minor(src: &[u8], full: &Arc<Memfd>) -> Sample {
    let map = shared_map(full.clone(), true);
    let len = map.len();
    // SAFETY: a fresh mapping that only raw pointers reach.
    let region = unsafe { Region::continue_only(new_uffd(), map.clone()).expect("register") };
    let mut buf = EventBuffer::with_capacity(1);
    let s = run_faults(
        "safe shmem minor",
        map.addr(),
        len,
        PAGE,
        1,
        len / PAGE,
        || {
            serve_region(&region, &mut buf, |_, off| {
                panic!("unexpected MISSING fault at offset {off:#x}")
            })
        },
    );
    drop(region);
    // SAFETY: unregistered; no reference into it.
    unsafe { verify("safe shmem minor", map.addr(), &src[..len]) };
    s
}

/// Scenario 3, MISSING on a CONTINUE-only region:
/// `f.write_then_continue(page)` (pwrite + CONTINUE).
pub fn shmem_write_continue(src: &[u8], len: usize) -> Sample {
    let memfd = Arc::new(Memfd::shmem(c"userfault-bench", len as u64).expect("memfd"));
    let map = shared_map(memfd, false);
    // SAFETY: a fresh mapping that only raw pointers reach.
    let region = unsafe { Region::continue_only(new_uffd(), map.clone()).expect("register") };
    let mut buf = EventBuffer::with_capacity(1);
    let s = run_faults(
        "safe shmem wcont",
        map.addr(),
        len,
        PAGE,
        1,
        len / PAGE,
        || {
            serve_region(&region, &mut buf, |f, off| {
                f.write_then_continue(&src[off..off + PAGE])
            })
        },
    );
    drop(region);
    // SAFETY: unregistered; no reference into it.
    unsafe { verify("safe shmem wcont", map.addr(), &src[..len]) };
    s
}

/// Scenario 4b through the typed window of the shared page state:
/// `f.window(unit)` + `f.write_window_then_continue` (one pwrite and one
/// CONTINUE per window nobody filled yet).
pub fn shmem_window(src: &[u8], len: usize, unit: usize) -> Sample {
    let memfd = Arc::new(Memfd::shmem(c"userfault-bench", len as u64).expect("memfd"));
    let map = shared_map(memfd, false);
    // SAFETY: a fresh mapping that only raw pointers reach.
    let region = unsafe { Region::continue_only(new_uffd(), map.clone()).expect("register") };
    let mut buf = EventBuffer::with_capacity(1);
    let s = run_faults(
        "safe shmem window",
        map.addr(),
        len,
        unit,
        1,
        len / unit,
        || {
            serve_region(&region, &mut buf, |f, _| {
                let w = f.window(unit)?;
                let at = w.file_offset() as usize;
                f.write_window_then_continue(w, &src[at..at + w.len()])
            })
        },
    );
    drop(region);
    // SAFETY: unregistered; no reference into it.
    unsafe { verify("safe shmem window", map.addr(), &src[..len]) };
    s
}

/// Prints the shared page state's resident memory per GiB of guest.
pub fn state_memory() {
    let gib = 1u64 << 30;
    let memfd = Arc::new(Memfd::shmem(c"userfault-bench-state", gib).expect("memfd"));
    let state = PageState::new(memfd).expect("page state");
    println!(
        "\n### shared page state memory\n\n{} bytes per GiB of 4 KiB pages ({} pages: {:.2} bits per page)",
        state.state_bytes(),
        state.pages(),
        state.state_bytes() as f64 * 8.0 / state.pages() as f64
    );
}

/// Scenario 3, MISSING on a copy-capable region of the same kind of
/// mapping (registered MISSING|MINOR as well): `f.copy(page)`.
pub fn shmem_copy(src: &[u8], len: usize) -> Sample {
    let memfd = Arc::new(Memfd::shmem(c"userfault-bench", len as u64).expect("memfd"));
    let map = shared_map(memfd, false);
    let mode = RegisterMode::MISSING | RegisterMode::MINOR;
    // SAFETY: a fresh mapping that only raw pointers reach.
    let region =
        unsafe { Region::copy_capable_file(new_uffd(), map.clone(), mode).expect("register") };
    let mut buf = EventBuffer::with_capacity(1);
    let s = run_faults(
        "safe shmem copy",
        map.addr(),
        len,
        PAGE,
        1,
        len / PAGE,
        || serve_region(&region, &mut buf, |f, off| f.copy(&src[off..off + PAGE])),
    );
    drop(region);
    // SAFETY: unregistered; no reference into it.
    unsafe { verify("safe shmem copy", map.addr(), &src[..len]) };
    s
}
