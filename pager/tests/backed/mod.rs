//! File-backed ranges through the shared page state: a shmem memfd served
//! CONTINUE-only to touching threads, writers and the populator; balloon
//! removals and punched holes; stage-2 resolutions sharing the state; and,
//! where the kernel has the posted series, a guest_memfd served to the VMM
//! and to a real vCPU taking KVM userfault exits.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use userfault::backing::{BackedMapping, Backing, Claimed, Memfd};
use userfault::kvm::{MemoryFault, MemoryFaultFlags, UserfaultBitmap};
use userfault::resolve::{ContinueOnly, PageState, Region};
use userfault::uffd::{Features, RegisterMode, Uffd};
use userfault_pager::source::FileSource;
use userfault_pager::{Config, Exit, FileRange, Server};

use crate::util;

// The real-mode guest of the workspace's KVM tests.
#[allow(dead_code)]
#[path = "../../../tests/kvm/guest.rs"]
mod guest;

// A guest_memfd served to the VMM and a vCPU (the posted series).
mod series;

// A file range's mapping moved and unmapped, its faults recorded, its
// pages counted once.
mod events;

pub const PAGE: usize = 4096;

/// The guest physical address of the stage-2 slots the tests serve.
const GPA: u64 = 1 << 32;

/// The byte at offset `j` of source page `i` (never zero, so that a page
/// read as zeros is told apart).
fn source_byte(i: usize, j: usize) -> u8 {
    ((i * 13 + j / 32) % 253) as u8 + 1
}

/// A snapshot of `pages` pages (a file already unlinked), and its
/// contents.
fn snapshot(test: &str, pages: usize) -> (FileSource, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("userfault-pager-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("snapshot");
    let bytes: Vec<u8> = (0..pages * PAGE)
        .map(|k| source_byte(k / PAGE, k % PAGE))
        .collect();
    let f = std::fs::File::create(&path).unwrap();
    f.write_all_at(&bytes, 0).unwrap();
    drop(f);
    let source = FileSource::open(&path).unwrap();
    // The source keeps the file open; nothing is left behind.
    std::fs::remove_dir_all(&dir).unwrap();
    (source, bytes)
}

/// Page `p` of source contents `bytes`.
fn source_page(bytes: &[u8], p: usize) -> &[u8] {
    &bytes[p * PAGE..(p + 1) * PAGE]
}

/// The source's page `p` as the guest should see it: with the marker
/// where `written` says a writer left one.
fn want(bytes: &[u8], p: usize, written: bool) -> Vec<u8> {
    let mut page = source_page(bytes, p).to_vec();
    if written {
        page[128..136].copy_from_slice(&marker(p));
    }
    page
}

/// A shmem memfd that counts each page's fills since its last punch: the
/// page state makes every fill under its claim, so a second count is a
/// page filled twice.
#[derive(Debug)]
pub struct Counting {
    memfd: Memfd,
    fills: Vec<AtomicU32>,
    /// While set, the server's populator waits before each fill...
    hold_populator: AtomicBool,
    /// ...but for this many fills first.
    populator_fills_before_hold: AtomicU32,
}

impl Counting {
    fn new(pages: usize) -> Counting {
        Counting {
            memfd: Memfd::shmem(c"pager-counting", (pages * PAGE) as u64).expect("memfd"),
            fills: (0..pages).map(|_| AtomicU32::new(0)).collect(),
            hold_populator: AtomicBool::new(false),
            populator_fills_before_hold: AtomicU32::new(0),
        }
    }

    /// Holds the server's populator back (its thread waits in its next
    /// fill) until [`release_populator`](Self::release_populator).
    fn hold_populator(&self) {
        self.hold_populator.store(true, Ordering::SeqCst);
    }

    /// Lets the populator make `fills` fills, then holds it back as
    /// [`hold_populator`](Self::hold_populator) does.
    fn hold_populator_after(&self, fills: u32) {
        self.populator_fills_before_hold
            .store(fills, Ordering::SeqCst);
        self.hold_populator();
    }

    fn release_populator(&self) {
        self.hold_populator.store(false, Ordering::SeqCst);
    }

    fn fills_of(&self, page: usize) -> u32 {
        self.fills[page].load(Ordering::SeqCst)
    }

    /// Asserts that page `p` was written into the file once since its last
    /// punch — at most once where `copy`: a `UFFDIO_COPY` does not go
    /// through the file's write path, so a page it placed counts none.
    fn assert_filled_once(&self, p: usize, copy: bool) {
        let fills = self.fills_of(p);
        if copy {
            assert!(fills <= 1, "page {p} written {fills} times");
        } else {
            assert_eq!(fills, 1, "page {p} fills");
        }
    }

    /// Page `p` as the file holds it, read with `pread(2)` (not through a
    /// mapping, so that no fault is raised).
    fn file_page(&self, p: usize) -> Vec<u8> {
        let mut page = vec![0u8; PAGE];
        let n =
            rustix::io::pread(self.memfd.as_fd(), &mut page[..], (p * PAGE) as u64).expect("pread");
        assert_eq!(n, PAGE);
        page
    }
}

impl AsFd for Counting {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }
}

impl Backing for Counting {
    fn size(&self) -> u64 {
        self.memfd.size()
    }

    fn page_size(&self) -> usize {
        self.memfd.page_size()
    }

    fn fill(&self, offset: u64, data: &[u8], claim: Claimed<'_>) -> userfault::Result<()> {
        if std::thread::current().name() == Some("pager-prefetch")
            && self
                .populator_fills_before_hold
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            while self.hold_populator.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let first = offset as usize / PAGE;
        for p in first..first + data.len() / PAGE {
            self.fills[p].fetch_add(1, Ordering::SeqCst);
        }
        self.memfd.fill(offset, data, claim)
    }

    fn punch_hole(&self, offset: u64, len: u64, claim: Claimed<'_>) -> userfault::Result<()> {
        for p in offset as usize / PAGE..(offset + len) as usize / PAGE {
            self.fills[p].store(0, Ordering::SeqCst);
        }
        self.memfd.punch_hole(offset, len, claim)
    }
}

/// A CONTINUE-only region on [`memfd`]'s mapping.
#[allow(clippy::type_complexity)]
fn continue_only_memfd(
    test: &str,
    pages: usize,
) -> Option<(
    Arc<Uffd>,
    Arc<PageState<Counting>>,
    Arc<BackedMapping<Counting>>,
    Region<ContinueOnly, Counting>,
)> {
    let (uffd, state, ram) = memfd(test, pages)?;
    let region = continue_only(&uffd, &ram);
    Some((uffd, state, ram, region))
}

/// `ram` registered with `uffd` as a CONTINUE-only region.
fn continue_only(
    uffd: &Arc<Uffd>,
    ram: &Arc<BackedMapping<Counting>>,
) -> Region<ContinueOnly, Counting> {
    // SAFETY: a `BackedMapping` hands out only addresses and raw pointers:
    // the guest's memory is reached only through raw pointers.
    unsafe { Region::continue_only(uffd.clone(), ram.clone()) }.expect("register")
}

/// `ram` registered with `uffd` and served as a file range from offset 0
/// of the source: copy-capable, registered `mode`, where `copy` is
/// `Some(mode)`; CONTINUE-only where it is `None`.
fn file_range(
    uffd: &Arc<Uffd>,
    ram: &Arc<BackedMapping<Counting>>,
    copy: Option<RegisterMode>,
) -> FileRange {
    let file = match copy {
        Some(mode) => {
            // SAFETY: as in `continue_only`.
            let region = unsafe { Region::copy_capable_file(uffd.clone(), ram.clone(), mode) }
                .expect("register");
            FileRange::copy_capable(region, 0)
        }
        None => FileRange::continue_only(continue_only(uffd, ram), 0),
    };
    file.expect("file range")
}

/// `region` served as a file range from `offset` of the source, with a
/// stage-2 slot of its `pages` pages at [`GPA`] whose bitmap starts all
/// set: the range and the bitmap.
fn stage2_file(
    region: Region<ContinueOnly, Counting>,
    offset: u64,
    pages: usize,
) -> (FileRange, Arc<UserfaultBitmap>) {
    let bitmap =
        Arc::new(UserfaultBitmap::new_all_set(GPA, (pages * PAGE) as u64).expect("bitmap"));
    let file = FileRange::continue_only(region, offset)
        .expect("file range")
        .stage2_slot(bitmap.clone(), 0)
        .expect("slot");
    (file, bitmap)
}

/// Starts the server on file range `file` alone, from `source`, as
/// `config` says otherwise.
fn serve_file(uffd: Arc<Uffd>, file: FileRange, source: FileSource, config: Config) -> Server {
    let config = Config {
        files: vec![file],
        ..config
    };
    Server::start(uffd, &[], Arc::new(source), config).expect("start")
}

/// A non-blocking userfaultfd with REMOVE events and MINOR faults on
/// shmem, a counting memfd of `pages` pages, its state and a mapping of
/// it; `None` after skipping `test`.
#[allow(clippy::type_complexity)]
fn memfd(
    test: &str,
    pages: usize,
) -> Option<(
    Arc<Uffd>,
    Arc<PageState<Counting>>,
    Arc<BackedMapping<Counting>>,
)> {
    memfd_with(test, pages, Features::empty(), true)
}

/// [`memfd`], with the userfaultfd asked for `more` features as well
/// (the caller checks that it got them), and MINOR faults on shmem
/// required only when `minor`.
#[allow(clippy::type_complexity)]
fn memfd_with(
    test: &str,
    pages: usize,
    more: Features,
    minor: bool,
) -> Option<(
    Arc<Uffd>,
    Arc<PageState<Counting>>,
    Arc<BackedMapping<Counting>>,
)> {
    let uffd = match Uffd::builder()
        .non_blocking(true)
        .request_features(Features::EVENT_REMOVE | Features::MINOR_SHMEM | more)
        .create()
    {
        Ok(u) => Arc::new(u),
        Err(e) => {
            util::skip(test, "uffd", &e.to_string());
            return None;
        }
    };
    if !uffd.features().contains(Features::EVENT_REMOVE) {
        util::skip(test, "uffd", "UFFD_FEATURE_EVENT_REMOVE is not offered");
        return None;
    }
    if minor && !uffd.features().contains(Features::MINOR_SHMEM) {
        util::skip(
            test,
            "uffd-minor-shmem",
            "UFFD_FEATURE_MINOR_SHMEM is not offered (Linux 5.14)",
        );
        return None;
    }
    let state = PageState::new(Arc::new(Counting::new(pages))).expect("page state");
    let ram = Arc::new(BackedMapping::new(&state, 0, pages * PAGE).expect("mmap"));
    Some((uffd, state, ram))
}

/// Reads page `i` of the mapping at `base` through raw pointers.
fn read_page(base: usize, i: usize) -> Vec<u8> {
    let mut out = vec![0u8; PAGE];
    for (j, b) in out.iter_mut().enumerate() {
        // SAFETY: inside a live mapping no Rust reference points into; the
        // read blocks until the server resolves its fault.
        *b = unsafe { ((base + i * PAGE + j) as *const u8).read_volatile() };
    }
    out
}

/// The marker a writer leaves at bytes 128..136 of page `p`.
fn marker(p: usize) -> [u8; 8] {
    [0xE0 ^ (p as u8); 8]
}

fn write_marker(base: usize, p: usize) {
    for (k, b) in marker(p).into_iter().enumerate() {
        // SAFETY: as in `read_page`; the write faults the page in first.
        unsafe { ((base + p * PAGE + 128 + k) as *mut u8).write_volatile(b) };
    }
}

#[test]
fn file_range_served_continue_only_to_touching_threads_writers_and_the_populator() {
    const TEST: &str =
        "file_range_served_continue_only_to_touching_threads_writers_and_the_populator";
    touch_write_populate(TEST, false);
}

/// The same through `UFFDIO_COPY`: the demand faults' copies bypass the
/// file's write path, so only the populator's writes are counted; a page
/// the populator wrote over a copied one would lose the guest's marker.
#[test]
fn file_range_served_copy_capable_to_touching_threads_writers_and_the_populator() {
    const TEST: &str =
        "file_range_served_copy_capable_to_touching_threads_writers_and_the_populator";
    touch_write_populate(TEST, true);
}

/// 16 MiB of a memfd served to two readers comparing every page they
/// read, two writers leaving markers, and the populator; afterwards every
/// byte equals the source or the marker, and each page was written once.
fn touch_write_populate(test: &str, copy: bool) {
    const PAGES: usize = 4096;
    let Some((uffd, state, ram)) = memfd(test, PAGES) else {
        return;
    };
    let mode = copy.then_some(RegisterMode::MISSING | RegisterMode::MINOR);
    let file = file_range(&uffd, &ram, mode);
    let (source, bytes) = snapshot(test, PAGES);
    let written = |p: usize| p.is_multiple_of(5);
    // The populator fills its first extent, then waits for the guest's
    // first demand fault: a populator that ran through all 16 MiB before
    // the guest threads got going would leave no fault to serve.
    state.backing().hold_populator_after(1);
    let server = serve_file(
        uffd,
        file,
        source,
        Config {
            threads: 3,
            // Small demand chunks, so that the populator's extents (512
            // KiB) have pages left to fill.
            chunk: 4 * PAGE,
            ..Config::default()
        },
    );
    let base = ram.addr();
    let report = util::with_deadline(test, Duration::from_secs(120), || {
        std::thread::scope(|s| {
            // Two readers (forwards and backwards) compare every page no
            // writer touches; two writers leave a marker on the others,
            // from the end, while the populator goes from the start. All
            // start once the populator is under way.
            while server.stats().prefetch_pages == 0 && !server.is_prefetched() {
                std::thread::sleep(Duration::from_micros(200));
            }
            for t in 0..2 {
                let bytes = &bytes;
                s.spawn(move || {
                    let order: Vec<usize> = if t == 0 {
                        (0..PAGES).collect()
                    } else {
                        (0..PAGES).rev().collect()
                    };
                    for p in order.into_iter().filter(|&p| !written(p)) {
                        assert!(
                            read_page(base, p) == source_page(bytes, p),
                            "page {p} differs from the source"
                        );
                    }
                });
            }
            for t in 0..2 {
                s.spawn(move || {
                    for p in (0..PAGES).rev().filter(|&p| written(p) && p / 5 % 2 == t) {
                        write_marker(base, p);
                    }
                });
            }
            let since = Instant::now();
            while server.stats().demand_faults == 0 && since.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_micros(200));
            }
            state.backing().release_populator();
        });
        server.wait()
    });
    assert!(matches!(report.exit, Exit::Complete), "{:?}", report.exit);
    for p in 0..PAGES {
        assert!(
            read_page(base, p) == want(&bytes, p, written(p)),
            "page {p}: {}",
            if written(p) {
                "the guest's write was lost"
            } else {
                "differs from the source"
            }
        );
        state.backing().assert_filled_once(p, copy);
    }
    let s = &report.stats;
    assert_eq!((s.total_pages, s.remaining_pages), (PAGES as u64, 0));
    // Each page is counted once, by the path that wrote it: demand faults
    // and the populator, filling side by side, add up to every page.
    assert_eq!(s.demand_pages + s.prefetch_pages, PAGES as u64, "{s:?}");
    assert_eq!(s.copied_bytes, (PAGES * PAGE) as u64, "{s:?}");
    assert!(s.demand_faults > 0, "{s:?}");
    util::report(&format!(
        "{test}: {} demand faults ({} pages), {} prefetched",
        s.demand_faults, s.demand_pages, s.prefetch_pages
    ));
}

#[test]
fn file_range_removed_and_punched_pages_read_zeros_and_stay_unbacked() {
    const TEST: &str = "file_range_removed_and_punched_pages_read_zeros_and_stay_unbacked";
    const PAGES: usize = 1024;
    let removed = 64..128;
    let punched = 512..544;
    let Some((uffd, state, ram, region)) = continue_only_memfd(TEST, PAGES) else {
        return;
    };
    let (source, bytes) = snapshot(TEST, PAGES);
    let server = serve_file(
        uffd,
        FileRange::continue_only(region, 0).expect("file range"),
        source,
        Config {
            threads: 2,
            finish_when_complete: false,
            ..Config::default()
        },
    );
    let base = ram.addr();
    let stats = util::with_deadline(TEST, Duration::from_secs(120), || {
        // The balloon takes its pages while the populator runs.
        let len = removed.len() * PAGE;
        // SAFETY: a range of the live mapping; nothing references it.
        unsafe {
            rustix::mm::madvise(
                (base + removed.start * PAGE) as *mut _,
                len,
                rustix::mm::Advice::LinuxRemove,
            )
        }
        .expect("MADV_REMOVE");
        while !server.is_prefetched() {
            std::thread::sleep(Duration::from_millis(5));
        }
        for p in removed.clone() {
            assert!(
                !state.is_filled(p as u64).unwrap(),
                "removed page {p} was populated"
            );
        }
        // A hole punched into the file behind the server's back.
        rustix::fs::fallocate(
            state.backing().as_fd(),
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            (punched.start * PAGE) as u64,
            (punched.len() * PAGE) as u64,
        )
        .expect("punch");
        std::thread::scope(|s| {
            for t in 0..2usize {
                let (bytes, removed, punched) = (&bytes, removed.clone(), punched.clone());
                s.spawn(move || {
                    for p in (0..PAGES).filter(|p| p % 2 == t) {
                        let seen = read_page(base, p);
                        if removed.contains(&p) || punched.contains(&p) {
                            assert!(seen.iter().all(|&b| b == 0), "page {p} is not zeros");
                        } else {
                            assert!(seen == source_page(bytes, p), "page {p}");
                        }
                    }
                });
            }
        });
        server.shutdown().stats
    });
    assert_eq!(stats.removed_pages, removed.len() as u64, "{stats:?}");
    // Each removed or punched page was read once and filled with zeros
    // once (the populator leaves them alone).
    assert_eq!(
        stats.zero_pages,
        (removed.len() + punched.len()) as u64,
        "{stats:?}"
    );
    util::report(&format!(
        "{TEST}: {} removed, {} demand faults, {} prefetched",
        stats.removed_pages, stats.demand_faults, stats.prefetch_pages
    ));
}

#[test]
fn stage2_uffd_and_populator_fill_each_page_once_through_one_state() {
    const TEST: &str = "stage2_uffd_and_populator_fill_each_page_once_through_one_state";
    const PAGES: usize = 2048;
    let Some((uffd, state, ram, region)) = continue_only_memfd(TEST, PAGES) else {
        return;
    };
    let (source, bytes) = snapshot(TEST, PAGES);
    // The slot's guest physical range; its bitmap is attached to the state.
    let (file, bitmap) = stage2_file(region, 0, PAGES);
    let server = serve_file(
        uffd,
        file,
        source,
        Config {
            threads: 2,
            ..Config::default()
        },
    );
    let base = ram.addr();
    let report = util::with_deadline(TEST, Duration::from_secs(120), || {
        std::thread::scope(|s| {
            // Two "vCPUs": this kernel has no KVM userfault, so their exits
            // are the ones KVM would report for a set bit; each resolution
            // writes the file and clears bits, then the page is checked
            // through the file.
            for t in 0..2u64 {
                let stage2 = server.stage2();
                let (bitmap, state, bytes) = (&bitmap, &state, &bytes);
                s.spawn(move || {
                    for p in (0..PAGES as u64).filter(|p| p % 3 == t) {
                        if bitmap.test(p) != Some(true) {
                            continue;
                        }
                        let flags = MemoryFaultFlags::USERFAULT.bits();
                        let exit = MemoryFault::new(flags, GPA + p * PAGE as u64, PAGE as u64);
                        stage2
                            .resolve(&exit)
                            .expect("stage-2")
                            .expect("a slot's exit");
                        assert_eq!(bitmap.test(p), Some(false), "bit {p} still set");
                        let p = p as usize;
                        let page = state.backing().file_page(p);
                        assert!(page == source_page(bytes, p), "page {p}");
                    }
                });
            }
            // The VMM touches every third page through its mapping.
            let bytes = &bytes;
            s.spawn(move || {
                for p in (0..PAGES).filter(|p| p % 3 == 2).rev() {
                    assert!(read_page(base, p) == source_page(bytes, p), "page {p}");
                }
            });
        });
        server.wait()
    });
    assert!(matches!(report.exit, Exit::Complete), "{:?}", report.exit);
    assert_eq!(bitmap.count_set(), 0, "every bit cleared");
    for p in 0..PAGES {
        state.backing().assert_filled_once(p, false);
    }
    let s = &report.stats;
    // vCPU exits, faults and the populator: each page counted once.
    assert_eq!(s.demand_pages + s.prefetch_pages, PAGES as u64, "{s:?}");
    util::report(&format!(
        "{TEST}: {} stage-2 exits, {} uffd faults, {} demand pages, {} prefetched",
        s.stage2_faults, s.demand_faults, s.demand_pages, s.prefetch_pages
    ));
}

/// Misfits are refused with a configuration error naming what is wrong,
/// and exits that are not a slot's KVM userfaults are left to the VMM.
#[test]
fn file_ranges_that_do_not_fit_are_refused_and_foreign_exits_left_alone() {
    const TEST: &str = "file_ranges_that_do_not_fit_are_refused_and_foreign_exits_left_alone";
    const PAGES: usize = 16;
    let Some((uffd, state, _ram, region)) = continue_only_memfd(TEST, PAGES) else {
        return;
    };
    let (source, _) = snapshot(TEST, PAGES);
    let source = Arc::new(source);
    let config_error = |r: Result<Server, userfault_pager::Error>, what: &str| match r {
        Err(userfault_pager::Error::Config(msg)) => assert!(msg.contains(what), "{msg}"),
        other => panic!("expected a configuration error about {what}: {other:?}"),
    };
    // Registered with another userfaultfd than the server's.
    let other = Arc::new(Uffd::builder().non_blocking(true).create().expect("uffd"));
    config_error(
        Server::start(
            other,
            &[],
            source.clone(),
            Config {
                files: vec![FileRange::continue_only(region, 0).expect("file range")],
                ..Config::default()
            },
        ),
        "another userfaultfd",
    );
    // Past the end of the source.
    let len = (PAGES * PAGE) as u64;
    let past = FileRange::unmapped(state.clone(), 0, len, PAGE as u64).expect("file range");
    config_error(
        Server::start(
            uffd.clone(),
            &[],
            source.clone(),
            Config {
                files: vec![past],
                ..Config::default()
            },
        ),
        "extends past",
    );
    // Spans that are not whole pages of the file, and a slot outside.
    for (offset, len) in [(1, PAGE as u64), (0, 0), (0, len + PAGE as u64)] {
        match FileRange::unmapped(state.clone(), offset, len, 0) {
            Err(userfault_pager::Error::Config(_)) => {}
            other => panic!("{offset:#x}+{len:#x}: {other:?}"),
        }
    }
    let half = FileRange::unmapped(state.clone(), 0, len / 2, 0).expect("file range");
    let bitmap = Arc::new(UserfaultBitmap::new_all_set(0, len).expect("bitmap"));
    match half.stage2_slot(bitmap, 0) {
        Err(userfault_pager::Error::Config(msg)) => assert!(msg.contains("inside"), "{msg}"),
        other => panic!("a slot larger than the range: {other:?}"),
    }
    // A served slot: exits of other kinds or outside it are not its own.
    const GPA: u64 = 1 << 32;
    let bitmap = Arc::new(UserfaultBitmap::new_all_set(GPA, len).expect("bitmap"));
    let file = FileRange::unmapped(state.clone(), 0, len, 0)
        .expect("file range")
        .stage2_slot(bitmap.clone(), 0)
        .expect("slot");
    let server = Server::start(
        uffd,
        &[],
        source,
        Config {
            prefetch: false,
            files: vec![file],
            ..Config::default()
        },
    )
    .expect("start");
    let stage2 = server.stage2();
    let userfault = MemoryFaultFlags::USERFAULT.bits();
    let private = MemoryFaultFlags::PRIVATE.bits();
    for exit in [
        MemoryFault::new(private, GPA, PAGE as u64),
        MemoryFault::new(userfault, GPA - PAGE as u64, PAGE as u64),
        MemoryFault::new(userfault, GPA + len, PAGE as u64),
    ] {
        assert_eq!(stage2.resolve(&exit).expect("resolve"), None, "{exit:?}");
    }
    assert_eq!(bitmap.count_set(), PAGES as u64, "nothing was filled");
    let exit = MemoryFault::new(userfault, GPA + PAGE as u64, PAGE as u64);
    assert!(stage2.resolve(&exit).expect("resolve").is_some());
    assert_eq!(bitmap.test(1), Some(false));
    assert_eq!(server.shutdown().stats.stage2_faults, 1);
}
