//! Stage-2 fault resolution against a shmem memfd, the stand-in for a
//! guest_memfd with `write()`: the bitmap bit is cleared only once the
//! page is in the file, a failed write leaves it set, and concurrent
//! resolvers of one page all succeed while the page is written once.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use userfault::backing::{Backing, Claimed, Memfd};
use userfault::error::{Errno, Error, Result};
use userfault::kvm::{MemoryFault, MemoryFaultFlags, Stage2Resolver, UserfaultBitmap};
use userfault::resolve::{PageState, Resolution};

use super::{PAGE, pread};

const SLOT_GPA: u64 = 0x4000_0000;
const SLOT_PAGES: u64 = 64;
/// The slot starts this far into the memfd, so offsets are checked too.
const SLOT_OFFSET: u64 = 8 * PAGE as u64;

/// A memfd that checks, at every fill, that the page's bit is still set
/// before and after the write, counts fills, can be told to fail, and can
/// be slowed down so that concurrent resolvers overlap.
struct Watched<'a> {
    memfd: &'a Memfd,
    bitmap: &'a UserfaultBitmap,
    fills: AtomicUsize,
    fail: AtomicBool,
    delay: Duration,
}

impl<'a> Watched<'a> {
    fn new(memfd: &'a Memfd, bitmap: &'a UserfaultBitmap, delay: Duration) -> Self {
        Watched {
            memfd,
            bitmap,
            fills: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            delay,
        }
    }

    fn page_of(&self, offset: u64) -> u64 {
        (offset - SLOT_OFFSET) / PAGE as u64
    }
}

impl AsFd for Watched<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }
}

impl Backing for Watched<'_> {
    fn size(&self) -> u64 {
        self.memfd.size()
    }

    fn page_size(&self) -> usize {
        self.memfd.page_size()
    }

    fn fill(&self, offset: u64, data: &[u8], claim: Claimed<'_>) -> Result<()> {
        let page = self.page_of(offset);
        assert!(
            self.bitmap.test(page) == Some(true),
            "bit {page} clear before the write"
        );
        // Decided on entry, so a test can change it while this write sleeps.
        let fail = self.fail.load(Ordering::SeqCst);
        self.fills.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if fail {
            return Err(Error::os("pwrite", Errno::EIO));
        }
        self.memfd.fill(offset, data, claim)?;
        assert!(
            self.bitmap.test(page) == Some(true),
            "bit {page} clear before fill returned"
        );
        Ok(())
    }
}

fn page_data(page: u64) -> Vec<u8> {
    (0..PAGE)
        .map(|i| (i as u64 ^ (page * 31 + 7)) as u8)
        .collect()
}

fn userfault_at(page: u64) -> MemoryFault {
    MemoryFault::new(
        MemoryFaultFlags::USERFAULT.bits(),
        SLOT_GPA + page * PAGE as u64,
        PAGE as u64,
    )
}

fn setup() -> (Memfd, Arc<UserfaultBitmap>) {
    let memfd = Memfd::shmem(c"stage2", SLOT_OFFSET + SLOT_PAGES * PAGE as u64).expect("memfd");
    let bitmap = UserfaultBitmap::new_all_set(SLOT_GPA, SLOT_PAGES * PAGE as u64).expect("bitmap");
    (memfd, Arc::new(bitmap))
}

/// The page state of a watched memfd.
fn watched<'a>(
    memfd: &'a Memfd,
    bitmap: &'a UserfaultBitmap,
    delay: Duration,
) -> Arc<PageState<Watched<'a>>> {
    PageState::new(Arc::new(Watched::new(memfd, bitmap, delay))).expect("page state")
}

#[test]
fn stage2_resolution_writes_before_it_clears() {
    let (memfd, bitmap) = setup();
    let state = watched(&memfd, &bitmap, Duration::ZERO);
    let backing = state.backing();
    let resolver = Stage2Resolver::new(&state, &bitmap, SLOT_OFFSET).expect("resolver");
    let view = userfault::mem::Mapping::file(
        memfd.as_fd(),
        0,
        memfd.size() as usize,
        userfault::mem::Sharing::Shared,
    )
    .expect("mmap memfd");

    let page = 5;
    let at = SLOT_OFFSET + page * PAGE as u64;
    assert!(bitmap.test(page) == Some(true));
    assert_eq!(
        pread(memfd.as_fd(), at, PAGE),
        vec![0; PAGE],
        "empty before"
    );

    // Wrong length: refused, nothing written, bit still set.
    let fault = resolver.fault(&userfault_at(page)).expect("stage-2 fault");
    let e = fault.resolve(&[1; 100]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(bitmap.test(page) == Some(true));

    // A failing write leaves the bit set and the file empty.
    backing.fail.store(true, Ordering::SeqCst);
    let fault = resolver.fault(&userfault_at(page)).expect("stage-2 fault");
    let e = fault.resolve(&page_data(page)).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::EIO), "{e}");
    assert!(
        bitmap.test(page) == Some(true),
        "bit cleared although the write failed"
    );
    assert_eq!(pread(memfd.as_fd(), at, PAGE), vec![0; PAGE]);

    // The write goes through: data in the file (pread and mapping), then
    // the bit clear; neighbours untouched.
    backing.fail.store(false, Ordering::SeqCst);
    let fault = resolver.fault(&userfault_at(page)).expect("stage-2 fault");
    assert_eq!(fault.resolve(&page_data(page)).unwrap(), Resolution::Filled);
    assert!(bitmap.test(page) == Some(false));
    assert_eq!(pread(memfd.as_fd(), at, PAGE), page_data(page));
    assert_eq!(super::peek(&view, at as usize, PAGE), page_data(page));
    assert!(bitmap.test(page - 1) == Some(true) && bitmap.test(page + 1) == Some(true));
    assert_eq!(pread(memfd.as_fd(), at + PAGE as u64, PAGE), vec![0; PAGE]);
    assert_eq!(bitmap.count_set(), SLOT_PAGES - 1);
    assert_eq!(backing.fills.load(Ordering::SeqCst), 2);

    // A later fault on the populated page writes nothing.
    let fault = resolver.fault(&userfault_at(page)).expect("stage-2 fault");
    assert_eq!(
        fault.resolve(&page_data(page)).unwrap(),
        Resolution::AlreadyPresent
    );
    assert_eq!(backing.fills.load(Ordering::SeqCst), 2);
}

/// An observer thread that sees a bit go clear must find the page's bytes
/// in the file at that moment.
#[test]
fn stage2_a_clear_bit_means_the_page_is_in_the_file() {
    let (memfd, bitmap) = setup();
    let state = PageState::new(Arc::new(memfd)).expect("state");
    let memfd = &**state.backing();
    let resolver = Stage2Resolver::new(&state, &bitmap, SLOT_OFFSET).expect("resolver");
    let pages: Vec<u64> = (0..SLOT_PAGES).collect();
    std::thread::scope(|s| {
        let observer = s.spawn(|| {
            let mut seen = 0;
            for &page in &pages {
                while bitmap.test(page) == Some(true) {
                    std::hint::spin_loop();
                }
                let at = SLOT_OFFSET + page * PAGE as u64;
                assert_eq!(
                    pread(memfd.as_fd(), at, PAGE),
                    page_data(page),
                    "page {page}: bit clear but data not in the file"
                );
                seen += 1;
            }
            seen
        });
        for &page in &pages {
            let fault = resolver.fault(&userfault_at(page)).expect("stage-2 fault");
            assert_eq!(fault.resolve(&page_data(page)).unwrap(), Resolution::Filled);
        }
        assert_eq!(observer.join().unwrap(), SLOT_PAGES);
    });
    assert_eq!(bitmap.count_set(), 0);
}

#[test]
fn stage2_concurrent_resolvers_populate_once() {
    const THREADS: usize = 4;
    const ROUNDS: u64 = 8;
    let (memfd, bitmap) = setup();
    let state = watched(&memfd, &bitmap, Duration::from_millis(20));
    let backing = state.backing();
    let resolver = Stage2Resolver::new(&state, &bitmap, SLOT_OFFSET).expect("resolver");
    for page in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(THREADS));
        let before = backing.fills.load(Ordering::SeqCst);
        let outcomes: Vec<Resolution> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|_| {
                    let barrier = Arc::clone(&barrier);
                    let resolver = &resolver;
                    s.spawn(move || {
                        let fault = resolver.fault(&userfault_at(page)).expect("stage-2 fault");
                        barrier.wait();
                        fault.resolve(&page_data(page))
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap().expect("every resolver succeeds"))
                .collect()
        });
        assert_eq!(
            backing.fills.load(Ordering::SeqCst) - before,
            1,
            "page {page} written more than once: {outcomes:?}"
        );
        let populated = outcomes
            .iter()
            .filter(|&&o| o == Resolution::Filled)
            .count();
        assert_eq!(populated, 1, "page {page}: {outcomes:?}");
        assert!(bitmap.test(page) == Some(false));
        let at = SLOT_OFFSET + page * PAGE as u64;
        assert_eq!(pread(memfd.as_fd(), at, PAGE), page_data(page));
    }
    assert_eq!(bitmap.count_set(), SLOT_PAGES - ROUNDS);
}

/// When the resolver that claimed a page fails, a waiting one takes over.
#[test]
fn stage2_a_failed_resolver_hands_over() {
    let (memfd, bitmap) = setup();
    let state = watched(&memfd, &bitmap, Duration::from_millis(30));
    let backing = state.backing();
    let resolver = Stage2Resolver::new(&state, &bitmap, SLOT_OFFSET).expect("resolver");
    let page = 9;
    backing.fail.store(true, Ordering::SeqCst);
    let results = std::thread::scope(|s| {
        let first = s.spawn(|| {
            resolver
                .fault(&userfault_at(page))
                .unwrap()
                .resolve(&page_data(page))
        });
        // Let the first claim the page and start its (failing) write, then
        // make writes succeed for the second, which waits for the first.
        while backing.fills.load(Ordering::SeqCst) == 0 && !first.is_finished() {
            std::thread::yield_now();
        }
        backing.fail.store(false, Ordering::SeqCst);
        let second = resolver
            .fault(&userfault_at(page))
            .unwrap()
            .resolve(&page_data(page));
        (first.join().unwrap(), second)
    });
    assert_eq!(results.0.unwrap_err().errno(), Some(Errno::EIO));
    assert_eq!(results.1.unwrap(), Resolution::Filled);
    assert!(bitmap.test(page) == Some(false));
    assert_eq!(
        pread(memfd.as_fd(), SLOT_OFFSET + page * PAGE as u64, PAGE),
        page_data(page)
    );
    assert_eq!(backing.fills.load(Ordering::SeqCst), 2);
}

/// A chunked stage-2 resolution: one write per run of the window's
/// unfilled pages (a page another path filled is skipped, not written
/// again), every bit of the window cleared and none outside it, every byte
/// the snapshot's (the populated page keeps its own), and a later fault on
/// a page of the window fills nothing.
#[test]
fn stage2_window_fills_each_page_once_with_one_write_per_run() {
    let (memfd, bitmap) = setup();
    let state = watched(&memfd, &bitmap, Duration::ZERO);
    let backing = state.backing();
    let resolver = Stage2Resolver::new(&state, &bitmap, SLOT_OFFSET).expect("resolver");
    // Page 19 of the slot is filled first, by a populator.
    let own = vec![0xAB; PAGE];
    state
        .populate(SLOT_OFFSET + 19 * PAGE as u64, &own)
        .expect("populate");
    assert_eq!(backing.fills.load(Ordering::SeqCst), 1);
    assert!(bitmap.test(19) == Some(false));

    // A vCPU faults on page 21: its 64 KiB window, aligned in the file
    // (the slot starts 8 pages in), is slot pages 8..24.
    let fault = resolver.fault(&userfault_at(21)).expect("stage-2 fault");
    let window = fault.window(64 << 10).expect("window");
    assert_eq!(window.first_page(), 8);
    assert_eq!(window.backing_offset(), SLOT_OFFSET + 8 * PAGE as u64);
    assert_eq!(window.len(), 16 * PAGE);
    let data: Vec<u8> = (8..24).flat_map(page_data).collect();
    let fill = fault.resolve_window_counted(window, &data).expect("window");
    assert_eq!(
        (fill.resolution.ok(), fill.written, fill.zeroed),
        (Some(Resolution::Filled), 15, 0),
        "every page of the window but the populated one is this call's"
    );
    assert_eq!(
        backing.fills.load(Ordering::SeqCst),
        3,
        "one write for pages 8..19, one for 20..24, none for 19"
    );
    for page in 0..SLOT_PAGES {
        let inside = (8..24).contains(&page);
        assert_eq!(
            bitmap.test(page),
            Some(!inside && page != 19),
            "bit of page {page}"
        );
        let want = if page == 19 {
            own.clone()
        } else if inside {
            page_data(page)
        } else {
            vec![0; PAGE]
        };
        assert_eq!(
            pread(memfd.as_fd(), SLOT_OFFSET + page * PAGE as u64, PAGE),
            want,
            "page {page}"
        );
    }

    // A fault on a page the window filled, with its own window: nothing is
    // written again.
    // The same slot found again without attaching, and only there.
    let resolver = Stage2Resolver::attached(&state, &bitmap, SLOT_OFFSET).expect("attached");
    assert!(Stage2Resolver::attached(&state, &bitmap, SLOT_OFFSET + PAGE as u64).is_none());
    let other = Arc::new(UserfaultBitmap::new_all_set(0, bitmap.memory_size()).expect("bitmap"));
    assert!(Stage2Resolver::attached(&state, &other, SLOT_OFFSET).is_none());
    let fault = resolver.fault(&userfault_at(9)).expect("stage-2 fault");
    let window = fault.window(64 << 10).expect("window");
    let fill = fault.resolve_window_counted(window, &data).expect("window");
    assert_eq!(
        (fill.resolution.ok(), fill.written),
        (Some(Resolution::AlreadyPresent), 0)
    );
    assert_eq!(backing.fills.load(Ordering::SeqCst), 3);

    // Refusals: a size that is no power of two, a window of another fault,
    // data of the wrong length.
    let fault = resolver.fault(&userfault_at(40)).expect("stage-2 fault");
    assert!(matches!(
        fault.window(3 * PAGE),
        Err(Error::InvalidArgument { .. })
    ));
    let e = fault.resolve_window(window, &data).unwrap_err();
    assert!(e.to_string().contains("another fault's"), "{e}");
    let fault = resolver.fault(&userfault_at(40)).expect("stage-2 fault");
    let window = fault.window(64 << 10).expect("window");
    let e = fault.resolve_window(window, &data[..PAGE]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(
        bitmap.test(40) == Some(true),
        "a refused window fills nothing"
    );
    assert_eq!(backing.fills.load(Ordering::SeqCst), 3);
}
