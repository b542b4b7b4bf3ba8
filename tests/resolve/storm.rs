//! The storm: every path of the shared page state at once on 256 MiB —
//! 4 userfaultfd reader threads (2 of them writing markers), 2 stage-2
//! resolver threads whose view is an unregistered alias mapping with a
//! userfault bitmap (as a vCPU's), 1 populator, 1 discard thread and 2
//! handler threads (one resolving 64 KiB windows, one page at a time).
//!
//! A counting backing proves every page was filled at most once per
//! generation (a hole punch starts a new one); every guest write survives;
//! every byte of every page nobody wrote equals the source; discarded pages
//! read zeros.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use userfault::backing::BackedMapping;
use userfault::kvm::{MemoryFault, MemoryFaultFlags, Stage2Resolver, UserfaultBitmap};
use userfault::mem::{Mapping, Sharing};
use userfault::resolve::{ContinueOnly, Discard, Fault, Region};
use userfault::uffd::{Event, EventBuffer};

use super::{Counting, open_uffd, page_size, pread_page, source_page};

const SIZE: usize = 256 << 20;
const GPA: u64 = 0x1_0000_0000;
const WINDOW: usize = 64 << 10;

/// Which path owns page `p`'s writes: `p % 8` 0 and 1 are written by
/// userfaultfd readers 0 and 1, 6 and 7 by stage-2 threads 0 and 1; 4 is
/// discarded; 2, 3 and 5 are never written.
fn class(p: usize) -> usize {
    p % 8
}

const DISCARDED: usize = 4;

/// The marker a writer leaves in the first 8 bytes of page `p`.
fn marker(p: usize) -> [u8; 8] {
    ((p as u64) ^ 0x5EED_0000_0000_0000).to_le_bytes()
}

/// A permutation of `0..n` (xorshift).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// Checks one copy of page `p` read while the storm runs.
fn check_read(who: &str, p: usize, got: &[u8], src: &[u8]) {
    match class(p) {
        DISCARDED => assert!(
            got.iter().zip(src).all(|(g, s)| g == s || *g == 0),
            "{who}: page {p} (discarded) holds bytes that are neither the source nor zeros"
        ),
        0 | 1 | 6 | 7 => {
            assert!(
                got[..8] == src[..8] || got[..8] == marker(p),
                "{who}: page {p}: the first word is neither the source nor the marker"
            );
            assert!(
                got[8..] == src[8..],
                "{who}: page {p} differs from the source"
            );
        }
        _ => assert!(got == src, "{who}: page {p} differs from the source"),
    }
}

#[test]
fn storm_every_path_fills_each_page_once() {
    const TEST: &str = "storm_every_path_fills_each_page_once";
    let Some(uffd) = open_uffd(TEST) else { return };
    let page = page_size();
    let pages = SIZE / page;
    let source: Vec<u8> = (0..pages)
        .flat_map(|p| source_page((p * page) as u64, page))
        .collect();
    let src = |p: usize| &source[p * page..(p + 1) * page];
    let mapping = BackedMapping::whole(Arc::new(Counting::new(pages))).expect("mmap");
    // SAFETY: fresh mapping, accessed only through raw pointers.
    let region: Region<ContinueOnly, Counting> =
        unsafe { Region::continue_only(uffd.clone(), mapping.clone()) }.expect("register");
    let state = mapping.state();
    let bitmap = Arc::new(UserfaultBitmap::new_all_set(GPA, SIZE as u64).expect("bitmap"));
    let resolver = Stage2Resolver::new(state, &bitmap, 0).expect("resolver");
    let view = Mapping::file(mapping.backing().as_fd(), 0, SIZE, Sharing::Shared).expect("alias");
    let stop = AtomicBool::new(false);
    let (served, windows, stage2, discards) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let started = Instant::now();
    crate::util::with_deadline(TEST, Duration::from_secs(600), || {
        std::thread::scope(|s| {
            let handlers: Vec<_> = (0..2)
                .map(|h| {
                    let (region, stop, served, windows, source) =
                        (&region, &stop, &served, &windows, &source);
                    s.spawn(move || {
                        let mut events = EventBuffer::with_capacity(32);
                        while !stop.load(Ordering::Acquire) {
                            for event in region
                                .uffd()
                                .wait_events(&mut events, Some(Duration::from_millis(10)))
                                .expect("events")
                            {
                                let r = match region.fault(&event) {
                                    Some(Fault::Missing(f)) if h == 0 => {
                                        let w = f.window(WINDOW).expect("window");
                                        let at = w.file_offset() as usize;
                                        windows.fetch_add(1, Ordering::Relaxed);
                                        f.write_window_then_continue(w, &source[at..at + w.len()])
                                    }
                                    Some(Fault::Missing(f)) => {
                                        let at = f.file_offset() as usize;
                                        f.write_then_continue(&source[at..at + page])
                                    }
                                    Some(Fault::Minor(f)) => f.map(),
                                    Some(Fault::WriteProtect(f)) => panic!("WP at {:#x}", f.page()),
                                    Some(Fault::Rwp(f)) => panic!("RWP at {:#x}", f.page()),
                                    Some(Fault::Unknown(f)) => {
                                        panic!("unknown fault at {:#x}", f.page())
                                    }
                                    None => match event {
                                        Event::PageFault { address, .. } => {
                                            panic!("a fault outside the region at {address:#x}")
                                        }
                                        _ => continue,
                                    },
                                };
                                r.expect("resolution");
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            let mut workers = Vec::new();
            // 4 userfaultfd readers, 0 and 1 writing their pages' markers.
            for r in 0..4 {
                let (mapping, src) = (&mapping, &src);
                workers.push(s.spawn(move || {
                    let mut buf = vec![0u8; page];
                    for p in shuffled(pages, 0x1000 + r as u64) {
                        // SAFETY: the page lies in the registered mapping; the
                        // copy waits for its faults, nothing references it.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                mapping.mapping().as_ptr().add(p * page),
                                buf.as_mut_ptr(),
                                page,
                            )
                        };
                        check_read("uffd reader", p, &buf, src(p));
                        if r < 2 && class(p) == r {
                            // SAFETY: as above; an aligned 8-byte store.
                            unsafe {
                                (mapping.mapping().as_ptr().add(p * page) as *mut [u8; 8])
                                    .write_volatile(marker(p))
                            };
                        }
                    }
                }));
            }
            // 2 stage-2 threads: the vCPU's view is the unregistered alias,
            // reachable once the page's bit is clear.
            for k in 0..2 {
                let (resolver, bitmap, view, src, stage2) =
                    (&resolver, &bitmap, &view, &src, &stage2);
                workers.push(s.spawn(move || {
                    let mut buf = vec![0u8; page];
                    for p in shuffled(pages, 0x2000 + k as u64) {
                        if bitmap.test(p as u64) == Some(true) {
                            let exit = MemoryFault::new(
                                MemoryFaultFlags::USERFAULT.bits(),
                                GPA + (p * page) as u64,
                                page as u64,
                            );
                            let fault = resolver.fault(&exit).expect("stage-2 fault");
                            fault.resolve(src(p)).expect("stage-2 resolve");
                            stage2.fetch_add(1, Ordering::Relaxed);
                        }
                        if class(p) == DISCARDED {
                            // A discard may punch it again at any moment; a
                            // vCPU would trap on the set bit, the alias would
                            // not.
                            continue;
                        }
                        // SAFETY: the page is in the file (its bit is clear and
                        // it is never discarded); nothing references the alias.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                view.as_ptr().add(p * page),
                                buf.as_mut_ptr(),
                                page,
                            )
                        };
                        check_read("stage-2 view", p, &buf, src(p));
                        if class(p) == 6 + k {
                            // SAFETY: as above; an aligned 8-byte store.
                            unsafe {
                                (view.as_ptr().add(p * page) as *mut [u8; 8])
                                    .write_volatile(marker(p))
                            };
                        }
                    }
                }));
            }
            // 1 populator.
            {
                let (state, src) = (state, &src);
                workers.push(s.spawn(move || {
                    for p in shuffled(pages, 0x3000) {
                        state.populate((p * page) as u64, src(p)).expect("populate");
                    }
                }));
            }
            // 1 discard thread: every discarded-class page twice.
            {
                let (state, discards) = (state, &discards);
                workers.push(s.spawn(move || {
                    for round in 0..2 {
                        for p in shuffled(pages, 0x4000 + round) {
                            if class(p) == DISCARDED {
                                state
                                    .discard((p * page) as u64, page as u64, Discard::Zero)
                                    .expect("discard");
                                discards.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            for w in workers {
                w.join().expect("worker");
            }
            stop.store(true, Ordering::Release);
            for h in handlers {
                h.join().expect("handler");
            }
        })
    });
    let elapsed = started.elapsed();
    let backing = mapping.backing();
    assert_eq!(
        backing.doubles.load(Ordering::SeqCst),
        0,
        "pages filled twice in one generation"
    );
    for p in 0..pages {
        let got = pread_page(backing.as_fd(), (p * page) as u64);
        match class(p) {
            DISCARDED => assert!(
                got.iter().all(|&b| b == 0),
                "discarded page {p} is not zeros"
            ),
            0 | 1 | 6 | 7 => {
                assert_eq!(got[..8], marker(p), "page {p}: the guest's write was lost");
                assert!(got[8..] == src(p)[8..], "page {p} differs from the source");
            }
            _ => assert!(got == src(p), "page {p} differs from the source"),
        }
    }
    for p in 0..pages {
        if class(p) != DISCARDED {
            assert!(
                (bitmap.test(p as u64) == Some(false)),
                "page {p} is filled but its bit is set"
            );
        }
    }
    let gib = SIZE as f64 / f64::from(1 << 30);
    crate::util::report(&format!(
        "{TEST}: {pages} pages in {:.1} s: {} faults served ({} by 64 KiB windows), {} stage-2 \
         resolutions, {} discards; {} fills in {} calls; state {} bytes ({:.0} KiB per GiB)",
        elapsed.as_secs_f64(),
        served.load(Ordering::Relaxed),
        windows.load(Ordering::Relaxed),
        stage2.load(Ordering::Relaxed),
        discards.load(Ordering::Relaxed),
        backing.pages.load(Ordering::Relaxed),
        backing.calls.load(Ordering::Relaxed),
        state.state_bytes(),
        state.state_bytes() as f64 / gib / 1024.0,
    ));
}
