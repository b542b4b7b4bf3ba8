//! Snapshot restore through CONTINUE-only regions: 64 MiB restored by 1 and
//! 2 handler threads while 4 threads read every page in random order, with
//! and without a populator writing the same pages concurrently. Every byte
//! is compared with the source.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use userfault::backing::Memfd;
use userfault::resolve::Region;

use super::{open_uffd, page_size, serve, shmem_mapping, source_page};

const SIZE: usize = 64 << 20;
const FAULTERS: usize = 4;

/// A permutation of `0..n` from a fixed seed (xorshift; no dependency).
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

fn restore(test: &str, handlers: usize, populator: bool) {
    let Some(uffd) = open_uffd(test) else { return };
    let page = page_size();
    let pages = SIZE / page;
    let mapping = shmem_mapping(pages);
    // SAFETY: fresh mapping, nothing references it.
    let region = unsafe { Region::continue_only(uffd, mapping.clone()) }.expect("register");
    // The snapshot: a 64 MiB file the handlers read pages from.
    let snapshot = Memfd::shmem(c"snapshot", SIZE as u64).expect("snapshot file");
    for p in 0..pages {
        let offset = (p * page) as u64;
        let n = rustix::io::pwrite(&snapshot, &source_page(offset, page), offset)
            .expect("write snapshot");
        assert_eq!(n, page);
    }
    let source = |offset: u64| {
        let mut data = vec![0u8; page];
        let n = rustix::io::pread(&snapshot, &mut data, offset).expect("read snapshot");
        assert_eq!(n, page, "short read of the snapshot");
        data
    };
    let stop = AtomicBool::new(false);
    let populated = AtomicUsize::new(0);
    let started = Instant::now();
    let served = crate::util::with_deadline(test, std::time::Duration::from_secs(120), || {
        std::thread::scope(|s| {
            let handler_threads: Vec<_> = (0..handlers)
                .map(|_| s.spawn(|| serve(&region, &source, &stop)))
                .collect();
            if populator {
                // Through the region, as guest memory must be pre-filled while
                // the guest runs: its per-page claim orders the populator and
                // the handlers.
                let (region, populated, source) = (&region, &populated, &source);
                let base = mapping.addr();
                s.spawn(move || {
                    for p in shuffled(pages, 0xBEEF) {
                        let offset = (p * page) as u64;
                        region
                            .populate(base + p * page, &source(offset))
                            .expect("populator");
                        populated.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            let readers: Vec<_> = (0..FAULTERS)
                .map(|t| {
                    let mapping = &mapping;
                    s.spawn(move || {
                        // Each reader checks every page of its quarter, in its own
                        // random order, reading the whole page through the mapping.
                        let order = shuffled(pages / FAULTERS, 0x1234 + t as u64);
                        let mut buf = vec![0u8; page];
                        for p in order.into_iter().map(|i| i * FAULTERS + t) {
                            let at = p * page;
                            // SAFETY: the page lies inside the registered mapping;
                            // the copy blocks on the fault until it is resolved and
                            // no Rust reference points into the region.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    mapping.mapping().as_ptr().add(at),
                                    buf.as_mut_ptr(),
                                    page,
                                )
                            };
                            assert!(
                                buf == source_page(at as u64, page),
                                "page {p} differs from the source"
                            );
                        }
                    })
                })
                .collect();
            for r in readers {
                r.join().expect("reader");
            }
            stop.store(true, Ordering::Release);
            handler_threads
                .into_iter()
                .map(|h| h.join().expect("handler"))
                .sum::<usize>()
        })
    });
    let elapsed = started.elapsed();
    let populated = populated.load(Ordering::Relaxed);
    crate::util::report(&format!(
        "{test}: {pages} pages, {served} faults served by {handlers} handler(s), {populated} pages \
         populated concurrently, {:.0} ms",
        elapsed.as_secs_f64() * 1e3
    ));
    assert!(served > 0 || populator, "no fault was served");
    if !populator {
        assert!(served >= pages, "{served} faults served for {pages} pages");
    }
}

#[test]
fn snapshot_restore_one_handler() {
    restore("snapshot_restore_one_handler", 1, false);
}

#[test]
fn snapshot_restore_two_handlers() {
    restore("snapshot_restore_two_handlers", 2, false);
}

#[test]
fn snapshot_restore_with_a_concurrent_populator() {
    restore("snapshot_restore_with_a_concurrent_populator", 2, true);
}
