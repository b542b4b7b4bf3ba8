//! The page server against the real kernel: in process through the
//! library, and as the `userfault-pager firecracker` binary with this test
//! playing Firecracker's side.

#[allow(dead_code, unused_macros, unused_imports)]
#[path = "../../tests/util.rs"]
mod util;

// File-backed ranges through the shared page state, and the stage-2 entry.
mod backed;

use std::io::{IoSlice, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use userfault::mem::{Mapping, Sharing};
use userfault::uffd::{Features, RegisterMode, Uffd};
use userfault_pager::source::{FileSource, MappedSource, Prefault};
use userfault_pager::{Config, Exit, PageSource, Range, Server, WorkingSet};

const PAGE: usize = 4096;

/// The byte at offset `j` of snapshot page `i`: every 7th page is all
/// zero (served with UFFDIO_ZEROPAGE), the others carry their index.
fn expected(i: usize, j: usize) -> u8 {
    if i % 7 == 3 {
        0
    } else {
        ((i * 31 + j / 64 + 1) % 251) as u8 + 1
    }
}

/// A test's own directory under the temporary directory, removed with
/// everything in it (snapshots of up to 128 MiB) when the test ends.
struct ScratchDir(PathBuf);

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir(test: &str) -> ScratchDir {
    let dir = std::env::temp_dir().join(format!("userfault-pager-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    ScratchDir(dir)
}

/// A snapshot file of `pages` pages; pages `hole` are left as a hole.
/// Returns the file's contents as read back.
fn snapshot(path: &Path, pages: usize, hole: std::ops::Range<usize>) -> Vec<u8> {
    let f = std::fs::File::create(path).unwrap();
    f.set_len((pages * PAGE) as u64).unwrap();
    let mut page = vec![0u8; PAGE];
    for i in (0..pages).filter(|i| !hole.contains(i)) {
        for (j, b) in page.iter_mut().enumerate() {
            *b = expected(i, j);
        }
        f.write_all_at(&page, (i * PAGE) as u64).unwrap();
    }
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len(), pages * PAGE);
    for i in (0..pages).step_by(13) {
        assert_eq!(&bytes[i * PAGE..(i + 1) * PAGE], &want(i, &hole)[..]);
    }
    bytes
}

/// A scratch directory for a test (named `name`) holding a snapshot file
/// `mem` of `pages` pages, pages `hole` left as a hole: the directory, the
/// file's path and its contents.
fn scratch_snapshot(
    name: &str,
    pages: usize,
    hole: std::ops::Range<usize>,
) -> (ScratchDir, PathBuf, Vec<u8>) {
    let dir = scratch_dir(name);
    let file = dir.join("mem");
    let bytes = snapshot(&file, pages, hole);
    (dir, file, bytes)
}

/// Page `i` of snapshot contents `file`.
fn file_page(file: &[u8], i: usize) -> &[u8] {
    &file[i * PAGE..(i + 1) * PAGE]
}

fn want(i: usize, hole: &std::ops::Range<usize>) -> Vec<u8> {
    if hole.contains(&i) || i % 7 == 3 {
        return vec![0; PAGE];
    }
    (0..PAGE).map(|j| expected(i, j)).collect()
}

/// Reads page `i` of guest memory at `base` (faulting it in) through raw
/// pointers only.
fn read_page(base: usize, i: usize) -> Vec<u8> {
    let mut out = vec![0u8; PAGE];
    // SAFETY: `base + i * PAGE .. + PAGE` lies in a live mapping the test
    // owns; it is copied through a raw pointer, never a reference, into a
    // buffer of PAGE bytes.
    unsafe {
        std::ptr::copy_nonoverlapping((base + i * PAGE) as *const u8, out.as_mut_ptr(), PAGE)
    };
    out
}

fn new_uffd(test: &str, features: Features) -> Option<Uffd> {
    match Uffd::builder()
        .non_blocking(true)
        .request_features(features)
        .create()
    {
        Ok(u) if u.features().contains(Features::EVENT_REMOVE) => Some(u),
        Ok(_) => {
            util::skip(test, "uffd", "UFFD_FEATURE_EVENT_REMOVE is not offered");
            None
        }
        Err(e) => {
            util::skip(test, "uffd", &e.to_string());
            None
        }
    }
}

/// A new private anonymous mapping of `len` bytes at an address of the
/// kernel's choosing, read-write or inaccessible (a reservation), that the
/// test manages by hand (`Mapping` would unmap an address a remap moved).
fn raw_mapping(len: usize, accessible: bool) -> usize {
    let prot = if accessible {
        rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE
    } else {
        rustix::mm::ProtFlags::empty()
    };
    // SAFETY: a new mapping at an address of the kernel's choosing; it
    // replaces nothing.
    unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            prot,
            rustix::mm::MapFlags::PRIVATE,
        )
    }
    .unwrap() as usize
}

/// `mremap(2)`: moves `len` bytes of the test's mapping at `from` onto a
/// fresh reservation; returns the new address.
fn move_mapping(from: usize, len: usize) -> usize {
    let target = raw_mapping(len, false);
    // SAFETY: moves part of the test's own mapping onto the test's own
    // reservation; nothing holds a reference into either.
    unsafe {
        rustix::mm::mremap_fixed(
            from as *mut _,
            len,
            len,
            rustix::mm::MremapFlags::MAYMOVE,
            target as *mut _,
        )
    }
    .unwrap() as usize
}

/// Snapshot `file` read with `pread(2)`.
fn file_source(file: &Path) -> Arc<dyn PageSource> {
    Arc::new(FileSource::open(file).unwrap())
}

/// Snapshot `file` mapped, prefaulted as `prefault` says.
fn mapped_source(file: &Path, prefault: Prefault) -> Arc<dyn PageSource> {
    Arc::new(MappedSource::open(file, prefault).unwrap())
}

/// Serves `pages` pages of new private anonymous memory, registered with
/// `uffd` for MISSING faults, from snapshot `file` at offset 0.
fn serve_anonymous(uffd: Uffd, pages: usize, file: &Path, config: Config) -> (Mapping, Server) {
    serve_anonymous_from(uffd, pages, file_source(file), config)
}

/// [`serve_anonymous`] from any `source`.
fn serve_anonymous_from(
    uffd: Uffd,
    pages: usize,
    source: Arc<dyn PageSource>,
    config: Config,
) -> (Mapping, Server) {
    let (guest, server) = start_anonymous(uffd, pages, source, config);
    (guest, server.unwrap())
}

/// [`serve_anonymous_from`], with the server's refusal to start handed
/// back rather than unwrapped.
fn start_anonymous(
    uffd: Uffd,
    pages: usize,
    source: Arc<dyn PageSource>,
    config: Config,
) -> (Mapping, Result<Server, userfault_pager::Error>) {
    let guest = Mapping::anonymous(pages * PAGE, Sharing::Private).unwrap();
    // SAFETY: `guest` is new and a `Mapping` hands out only addresses and
    // raw pointers: it is reached only through raw pointers.
    let reg = unsafe { uffd.register(guest.addr(), guest.len(), RegisterMode::MISSING) }.unwrap();
    let server = Server::start(Arc::new(uffd), &[Range::new(reg, 0)], source, config);
    (guest, server)
}

/// Serves `pages` pages of a new accessible [`raw_mapping`] (which the
/// test moves and unmaps by hand), registered with `uffd` for MISSING
/// faults, from `source` at offset 0: the mapping's address and the
/// server.
fn serve_raw(
    uffd: Uffd,
    pages: usize,
    source: Arc<dyn PageSource>,
    config: Config,
) -> (usize, Server) {
    let base = raw_mapping(pages * PAGE, true);
    // SAFETY: the mapping is new, and reached only through raw pointers.
    let reg = unsafe { uffd.register(base, pages * PAGE, RegisterMode::MISSING) }.unwrap();
    let server = Server::start(Arc::new(uffd), &[Range::new(reg, 0)], source, config).unwrap();
    (base, server)
}

/// Gives `server` up to 10 s to count every page: the last resolutions
/// wake their threads before they update the counters.
fn settle(server: &Server) {
    let settled = Instant::now() + Duration::from_secs(10);
    while server.stats().remaining_pages != 0 && Instant::now() < settled {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A userfaultfd with REMOVE events and `events` too, or a skip (`what`
/// names the missing events).
fn uffd_with_events(test: &str, events: Features, what: &str) -> Option<Uffd> {
    let uffd = new_uffd(test, Features::EVENT_REMOVE | events)?;
    if !uffd.features().contains(events) {
        util::skip(test, "uffd", &format!("{what} events are not offered"));
        return None;
    }
    Some(uffd)
}

/// Held by every test that forks or serves with FORK events, for its
/// whole run: a fork copies the whole process, so it raises a FORK event
/// on every userfaultfd of the process that asked for them, and another
/// test's server would count (and serve) that child too.
fn forking() -> MutexGuard<'static, ()> {
    static FORKING: Mutex<()> = Mutex::new(());
    FORKING.lock().unwrap_or_else(|e| e.into_inner())
}

/// A userfaultfd with REMOVE and FORK events, or a skip (FORK events need
/// `CAP_SYS_PTRACE`).
fn fork_uffd(test: &str) -> Option<Uffd> {
    let uffd = new_uffd(test, Features::EVENT_REMOVE | Features::EVENT_FORK)?;
    if !uffd.features().contains(Features::EVENT_FORK) {
        util::skip(test, "root", "UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE");
        return None;
    }
    Some(uffd)
}

/// Forks; the child runs `check` (reading memory the server serves it) and
/// exits with its verdict; the parent waits and asserts it held.
fn child_sees(check: impl FnOnce() -> bool) {
    // SAFETY: the child only reads memory, compares and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let ok = check();
        // SAFETY: ends the child without running the parent's destructors
        // or atexit handlers.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child saw wrong contents (status {status:#x})"
    );
}

/// `madvise(MADV_DONTNEED)`: a balloon inflating over `[addr, addr + len)`.
fn balloon(addr: usize, len: usize) {
    // SAFETY: the range is part of a mapping the test owns and reaches only
    // through raw pointers; dropping its pages is what is being tested.
    unsafe {
        rustix::mm::madvise(addr as *mut _, len, rustix::mm::Advice::LinuxDontNeed).unwrap();
    }
}

/// Touches `pages` pages of `base` from `threads` threads, each in its own
/// order, and checks every byte.
fn touch_all(base: usize, pages: usize, threads: usize, file: &[u8]) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for k in 0..pages {
                    // Thread t walks a different stride through the pages.
                    let i = (k * (2 * t + 1) + t * 97) % pages;
                    assert_eq!(
                        read_page(base, i),
                        file_page(file, i),
                        "page {i}, thread {t}"
                    );
                }
            });
        }
    });
}

#[test]
fn library_serves_every_byte_from_four_threads_and_zeros_after_remove() {
    const TEST: &str = "library_serves_every_byte_from_four_threads_and_zeros_after_remove";
    let Some(uffd) = new_uffd(TEST, Features::EVENT_REMOVE) else {
        return;
    };
    const PAGES: usize = 4096; // 16 MiB
    let hole = 1000..1100;
    let (_dir, file, bytes) = scratch_snapshot("lib-threads", PAGES, hole.clone());
    let (guest, server) = serve_anonymous(
        uffd,
        PAGES,
        &file,
        Config {
            threads: 4,
            prefetch: false,
            ..Config::default()
        },
    );
    let started = Instant::now();
    util::with_deadline(TEST, Duration::from_secs(120), || {
        touch_all(guest.addr(), PAGES, 4, &bytes);
        settle(&server);
        assert_eq!(server.stats().remaining_pages, 0);
        // A balloon takes 1 MiB back: those pages read as zeros afterwards.
        balloon(guest.addr() + 2048 * PAGE, 256 * PAGE);
        for i in 2048..2048 + 256 {
            assert!(
                read_page(guest.addr(), i).iter().all(|&b| b == 0),
                "removed page {i}"
            );
        }
        // The rest is untouched.
        for i in (0..PAGES).step_by(61).filter(|i| !(2048..2304).contains(i)) {
            assert_eq!(read_page(guest.addr(), i), want(i, &hole), "page {i}");
        }
    });
    let report = server.shutdown();
    let s = &report.stats;
    assert!(matches!(report.exit, Exit::Shutdown), "{:?}", report.exit);
    assert_eq!(s.total_pages, PAGES as u64);
    assert_eq!(s.removed_pages, 256);
    // Every page came in once from the snapshot (chunks included), then
    // the removed ones once more as zeros.
    assert_eq!(s.demand_pages, PAGES as u64 + 256);
    let zero_in_source = (0..PAGES)
        .filter(|i| i % 7 == 3 || hole.contains(i))
        .count() as u64;
    assert_eq!(s.zero_pages, zero_in_source + 256);
    assert_eq!(
        s.copied_bytes,
        (PAGES as u64 - zero_in_source) * PAGE as u64
    );
    assert!(s.demand_faults >= (PAGES / 16) as u64 + 256);
    assert_eq!(s.latency.count, s.demand_faults);
    util::report(&format!(
        "{TEST}: {PAGES} pages, 4 threads, {} faults ({} already present), p50 {} ns, {:?}",
        s.demand_faults,
        s.already_present,
        s.latency.p50_ns,
        started.elapsed()
    ));
}

#[test]
fn library_prefetches_working_set_then_rest_and_unregisters() {
    const TEST: &str = "library_prefetches_working_set_then_rest_and_unregisters";
    let Some(uffd) = new_uffd(TEST, Features::EVENT_REMOVE) else {
        return;
    };
    const PAGES: usize = 8192; // 32 MiB
    let (_dir, file, bytes) = scratch_snapshot("lib-prefetch", PAGES, 0..0);
    let ws = WorkingSet::from_pages(4096, (0..64).map(|k| (PAGES - 1 - k * 97) as u64)).unwrap();
    let (guest, server) = serve_anonymous(
        uffd,
        PAGES,
        &file,
        Config {
            threads: 2,
            working_set: Some(ws),
            ..Config::default()
        },
    );
    let report = util::with_deadline(TEST, Duration::from_secs(120), || {
        // A guest touching pages while the populator runs.
        for i in (0..PAGES).step_by(509) {
            assert_eq!(read_page(guest.addr(), i), want(i, &(0..0)), "page {i}");
        }
        server.wait()
    });
    assert!(matches!(report.exit, Exit::Complete), "{:?}", report.exit);
    let s = &report.stats;
    assert_eq!(s.remaining_pages, 0);
    assert_eq!(s.demand_pages + s.prefetch_pages, PAGES as u64);
    // Unregistered: smaps no longer shows `um` for the range, and every
    // byte is there (a missing page would now read as zeros).
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let head = format!("{:x}-", guest.addr());
    let flags = smaps
        .split_inclusive('\n')
        .skip_while(|l| !l.starts_with(&head))
        .find(|l| l.starts_with("VmFlags:"))
        .unwrap_or_default();
    assert!(!flags.split_whitespace().any(|f| f == "um"), "{flags}");
    for i in 0..PAGES {
        assert_eq!(read_page(guest.addr(), i), file_page(&bytes, i), "page {i}");
    }
}

#[test]
fn library_records_the_order_pages_were_first_needed() {
    const TEST: &str = "library_records_the_order_pages_were_first_needed";
    let Some(uffd) = new_uffd(TEST, Features::EVENT_REMOVE) else {
        return;
    };
    const PAGES: usize = 512;
    let (dir, file, _) = scratch_snapshot("lib-record", PAGES, 0..0);
    let (guest, server) = serve_anonymous(
        uffd,
        PAGES,
        &file,
        Config {
            threads: 1,
            chunk: PAGE,
            prefetch: false,
            record: true,
            ..Config::default()
        },
    );
    let order: Vec<usize> = (0..100).map(|k| (k * 37 + 5) % PAGES).collect();
    util::with_deadline(TEST, Duration::from_secs(60), || {
        for &i in &order {
            read_page(guest.addr(), i);
            // Touching again records nothing new.
            read_page(guest.addr(), i);
        }
    });
    let report = server.shutdown();
    let ws = report.recorded.unwrap();
    let want: Vec<u64> = order.iter().map(|&i| i as u64).collect();
    assert_eq!(ws.pages(), &want[..]);
    let path = dir.join("ws");
    ws.save(&path).unwrap();
    assert_eq!(WorkingSet::load(&path).unwrap(), ws);
}

#[test]
fn library_follows_a_remap_and_an_unmap() {
    const TEST: &str = "library_follows_a_remap_and_an_unmap";
    let events = Features::EVENT_REMAP | Features::EVENT_UNMAP;
    let Some(uffd) = uffd_with_events(TEST, events, "REMAP/UNMAP") else {
        return;
    };
    const PAGES: usize = 1024;
    let (_dir, file, _) = scratch_snapshot("lib-remap", PAGES, 0..0);
    let (base, server) = serve_raw(
        uffd,
        PAGES,
        file_source(&file),
        Config {
            threads: 2,
            prefetch: false,
            ..Config::default()
        },
    );
    util::with_deadline(TEST, Duration::from_secs(60), || {
        assert_eq!(read_page(base, 0), want(0, &(0..0)));
        // Move the second half elsewhere: onto a fresh reservation.
        let half = PAGES / 2 * PAGE;
        let moved = move_mapping(base + half, half);
        for i in 0..PAGES / 2 {
            assert_eq!(
                read_page(moved, i),
                want(PAGES / 2 + i, &(0..0)),
                "moved page {i}"
            );
        }
        for i in 1..PAGES / 2 {
            assert_eq!(read_page(base, i), want(i, &(0..0)), "page {i}");
        }
        // SAFETY: unmaps the test's own mappings; nothing refers to them.
        unsafe {
            rustix::mm::munmap(moved as *mut _, half).unwrap();
            rustix::mm::munmap(base as *mut _, half).unwrap();
        }
    });
    let report = server.shutdown();
    let s = &report.stats;
    assert_eq!(s.remaps, 1, "{s:?}");
    // Each page was served once, at its old or its new address, and then
    // retired by the unmaps.
    assert_eq!(s.demand_pages, PAGES as u64, "{s:?}");
    assert_eq!(s.unmapped_pages, PAGES as u64, "{s:?}");
}

/// Writes `byte` at offset `at` of page `i` of guest memory at `base`
/// (faulting it in) through a raw pointer.
fn write_byte(base: usize, i: usize, at: usize, byte: u8) {
    // SAFETY: `base + i * PAGE + at` lies in a live mapping the test owns
    // (at < PAGE), written through a raw pointer, never a reference.
    unsafe { ((base + i * PAGE + at) as *mut u8).write_volatile(byte) };
}

/// The marker a guest thread writes into page `i` (never the snapshot's
/// byte there: snapshot bytes are 1..=251 or 0).
fn marker(i: usize) -> u8 {
    252 + (i % 4) as u8
}

/// Balloon pages: never touched by the guest threads, inflated while the
/// populator runs.
/// A balloon takes each page back at the very moment the guest first
/// touches it, page after page: whichever comes first, once both are done
/// the page reads as zeros. A resolution that decided to copy the
/// snapshot before the REMOVE was read and landed after the kernel
/// dropped the page would leave snapshot data there (the order lock is
/// what keeps it out); with one handler thread its own faults take no
/// lock, and the same must hold.
fn balloon_races_first_touches(test: &'static str, threads: usize) {
    const PAGES: usize = 4096;
    let Some(uffd) = new_uffd(test, Features::EVENT_REMOVE) else {
        return;
    };
    let (_dir, file, _bytes) = scratch_snapshot(&format!("lib-race-{threads}"), PAGES, 0..0);
    let (guest, server) = serve_anonymous_from(
        uffd,
        PAGES,
        mapped_source(&file, Prefault::Populate),
        Config {
            threads,
            chunk: PAGE,
            adaptive_chunk: None,
            prefetch: false,
            ..Config::default()
        },
    );
    let base = guest.addr();
    util::with_deadline(test, Duration::from_secs(120), || {
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..PAGES {
                    start.wait();
                    read_page(base, i);
                }
            });
            for i in 0..PAGES {
                start.wait();
                balloon(base + i * PAGE, PAGE);
            }
        });
        let left: Vec<usize> = (0..PAGES)
            .filter(|&i| read_page(base, i).iter().any(|&b| b != 0))
            .collect();
        assert!(
            left.is_empty(),
            "{} pages kept snapshot data after the balloon took them: {:?}",
            left.len(),
            &left[..left.len().min(8)]
        );
    });
    let s = server.shutdown().stats;
    assert_eq!(s.removed_pages, PAGES as u64, "{s:?}");
    util::report(&format!(
        "{test}: {} demand faults, {} zero pages, {} retries",
        s.demand_faults, s.zero_pages, s.retries
    ));
}

#[test]
fn library_balloon_racing_first_touches_leaves_zeros() {
    balloon_races_first_touches("library_balloon_racing_first_touches_leaves_zeros", 2);
}

#[test]
fn library_balloon_racing_first_touches_leaves_zeros_with_one_handler() {
    balloon_races_first_touches(
        "library_balloon_racing_first_touches_leaves_zeros_with_one_handler",
        1,
    );
}

fn ballooned(i: usize) -> bool {
    i % 512 >= 256 && i % 512 < 320
}

#[test]
fn library_keeps_guest_writes_and_removed_zeros_while_prefetching() {
    keeps_guest_writes_and_removed_zeros(
        "library_keeps_guest_writes_and_removed_zeros_while_prefetching",
        false,
        2,
    );
}

/// The same in per-page mode from a mapped snapshot: faults take the
/// direct one-page path while the populator fills around them.
#[test]
fn library_keeps_guest_writes_and_removed_zeros_per_page_from_a_mapping() {
    keeps_guest_writes_and_removed_zeros(
        "library_keeps_guest_writes_and_removed_zeros_per_page_from_a_mapping",
        true,
        2,
    );
}

/// The same with one handler thread, which resolves its faults without
/// the order lock (it applies every REMOVE itself, between them).
#[test]
fn library_keeps_guest_writes_and_removed_zeros_per_page_from_one_handler() {
    keeps_guest_writes_and_removed_zeros(
        "library_keeps_guest_writes_and_removed_zeros_per_page_from_one_handler",
        true,
        1,
    );
}

/// Three guest threads read every page (one of them writing a marker into
/// its pages) while a balloon takes regions back and the populator fills
/// the rest: every byte is the snapshot's, the guest's or zero, as it
/// should be. `per_page`: 4 KiB chunks from a mapped snapshot; `threads`
/// handler threads.
fn keeps_guest_writes_and_removed_zeros(test: &'static str, per_page: bool, threads: usize) {
    const PAGES: usize = 8192; // 32 MiB
    let Some(uffd) = new_uffd(test, Features::EVENT_REMOVE) else {
        return;
    };
    let name = format!(
        "lib-writes-{}-{threads}",
        if per_page { "page" } else { "chunk" }
    );
    let (_dir, file, bytes) = scratch_snapshot(&name, PAGES, 0..0);
    let source = if per_page {
        mapped_source(&file, Prefault::Populate)
    } else {
        file_source(&file)
    };
    let (guest, server) = serve_anonymous_from(
        uffd,
        PAGES,
        source,
        Config {
            threads,
            finish_when_complete: false,
            chunk: if per_page {
                PAGE
            } else {
                Config::default().chunk
            },
            adaptive_chunk: if per_page {
                None
            } else {
                Config::default().adaptive_chunk
            },
            ..Config::default()
        },
    );
    let base = guest.addr();
    let written = |i: usize| i.is_multiple_of(3) && !ballooned(i);
    util::with_deadline(test, Duration::from_secs(120), || {
        std::thread::scope(|s| {
            for t in 0..3 {
                let bytes = &bytes;
                s.spawn(move || {
                    // Each page is touched by one thread; thread 0 writes a
                    // marker into its pages after reading them: the
                    // populator must never copy over it.
                    for i in (t..PAGES).step_by(3).filter(|&i| !ballooned(i)) {
                        let page = read_page(base, i);
                        assert!(page == file_page(bytes, i), "page {i}");
                        if t == 0 {
                            write_byte(base, i, 100, marker(i));
                        }
                    }
                });
            }
            // Meanwhile a balloon takes pages back, region by region, while
            // the populator is filling them: each reads as zeros at once.
            for r in 0..PAGES / 512 {
                let first = r * 512 + 256;
                balloon(base + first * PAGE, 64 * PAGE);
                for i in first..first + 64 {
                    assert!(
                        read_page(base, i).iter().all(|&b| b == 0),
                        "removed page {i} holds data"
                    );
                }
            }
        });
        let settled = Instant::now() + Duration::from_secs(60);
        while !server.is_prefetched() && Instant::now() < settled {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(server.is_prefetched(), "{:?}", server.stats());
    });
    for i in 0..PAGES {
        let page = read_page(base, i);
        if ballooned(i) {
            assert!(page.iter().all(|&b| b == 0), "removed page {i}");
        } else if written(i) {
            let mut want = file_page(&bytes, i).to_vec();
            want[100] = marker(i);
            assert!(page == want, "written page {i} lost its write");
        } else {
            assert!(page == file_page(&bytes, i), "page {i}");
        }
    }
    let report = server.shutdown();
    let s = &report.stats;
    assert_eq!(s.removed_pages, (PAGES / 512 * 64) as u64, "{s:?}");
    assert_eq!(s.remaining_pages, 0, "{s:?}");
    util::report(&format!(
        "{test}: {} demand faults, {} prefetched, {} already present",
        s.demand_faults, s.prefetch_pages, s.already_present
    ));
}

#[test]
fn library_follows_remaps_while_prefetching_and_completes() {
    const TEST: &str = "library_follows_remaps_while_prefetching_and_completes";
    let Some(uffd) = uffd_with_events(TEST, Features::EVENT_REMAP, "REMAP") else {
        return;
    };
    const PAGES: usize = 32768; // 128 MiB
    let (_dir, file, bytes) = scratch_snapshot("lib-remap-prefetch", PAGES, 0..0);
    let (base, server) = serve_raw(
        uffd,
        PAGES,
        file_source(&file),
        Config {
            threads: 2,
            ..Config::default()
        },
    );
    let half = PAGES / 2 * PAGE;
    let (report, at, moves) = util::with_deadline(TEST, Duration::from_secs(120), || {
        // Once the populator is working through the upper half, move that
        // half back and forth between two places while it fills it: its
        // copies race the moves (the kernel answers ENOENT at the old place
        // before the REMAP event is read).
        while server.stats().remaining_pages as usize > PAGES / 2 - 256 {
            std::thread::yield_now();
        }
        let mut at = base + half;
        let mut moves = 0;
        // A server that stopped reads no REMAP event: a move would wait for
        // it forever.
        while !server.is_finished() && server.stats().remaining_pages > 0 && moves < 400 {
            // Onto a fresh reservation each time: the place just vacated is
            // left to whoever maps there next (other tests run in this
            // process), never mapped over again.
            at = move_mapping(at, half);
            moves += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        let report = server.wait();
        (report, at, moves)
    });
    assert!(matches!(report.exit, Exit::Complete), "{:?}", report.exit);
    // Unregistered now: a page never filled would read as zeros.
    let wrong = (0..PAGES / 2)
        .filter(|&i| read_page(base, i) != file_page(&bytes, i))
        .count()
        + (0..PAGES / 2)
            .filter(|&i| read_page(at, i) != file_page(&bytes, PAGES / 2 + i))
            .count();
    let s = &report.stats;
    assert_eq!(wrong, 0, "{wrong} pages wrong after {moves} moves; {s:?}");
    // Every move is a REMAP the server followed, except that a loop ended
    // by the server completing may have made its last move just after the
    // server unregistered the range (which raises no event).
    let last_after_unregister = moves < 400 && s.remaps + 1 == moves;
    assert!(
        s.remaps == moves || last_after_unregister,
        "{moves} moves; {s:?}"
    );
    assert_eq!(s.demand_pages + s.prefetch_pages, PAGES as u64, "{s:?}");
    util::report(&format!(
        "{TEST}: {moves} moves while prefetching, {} retries",
        s.retries
    ));
    // SAFETY: unmaps the test's own mappings; nothing refers to them.
    unsafe {
        rustix::mm::munmap(at as *mut _, half).unwrap();
        rustix::mm::munmap(base as *mut _, half).unwrap();
    }
}

#[test]
fn library_serves_a_forked_child_until_both_are_complete() {
    const TEST: &str = "library_serves_a_forked_child_until_both_are_complete";
    let _forking = forking();
    let Some(uffd) = fork_uffd(TEST) else {
        return;
    };
    const PAGES: usize = 2048;
    let (_dir, file, bytes) = scratch_snapshot("lib-fork-complete", PAGES, 0..0);
    let (guest, server) = serve_anonymous(
        uffd,
        PAGES,
        &file,
        Config {
            threads: 2,
            ..Config::default()
        },
    );
    let base = guest.addr();
    // Page `i` as parent and child should see it: the snapshot's, with the
    // parent's marker in the pages it wrote before the fork.
    let want = |i: usize| {
        let mut want = file_page(&bytes, i).to_vec();
        if i.is_multiple_of(64) && i / 64 < 16 {
            want[7] = marker(i / 64);
        }
        want
    };
    let report = util::with_deadline(TEST, Duration::from_secs(120), || {
        // The parent writes into a few pages, then forks while the
        // populator is still filling the rest.
        for i in 0..16 {
            assert_eq!(read_page(base, i * 64), file_page(&bytes, i * 64));
            write_byte(base, i * 64, 7, marker(i));
        }
        child_sees(|| {
            // Long enough for the parent's populator to finish first: the
            // child must still be served, from what it had at the fork.
            std::thread::sleep(Duration::from_millis(300));
            (0..PAGES).all(|i| read_page(base, i) == want(i))
        });
        server.wait()
    });
    assert!(matches!(report.exit, Exit::Complete), "{:?}", report.exit);
    assert_eq!(report.stats.forks, 1);
    // The child's service ended once every page of it was in.
    assert_eq!(report.stats.ended_children, 1, "{:?}", report.stats);
    for i in 0..PAGES {
        assert_eq!(read_page(base, i), want(i), "page {i}");
    }
}

#[test]
fn library_wakes_faults_outside_every_range_and_names_the_address() {
    const TEST: &str = "library_wakes_faults_outside_every_range_and_names_the_address";
    let Some(uffd) = new_uffd(TEST, Features::EVENT_REMOVE) else {
        return;
    };
    const PAGES: usize = 64;
    let (_dir, file, bytes) = scratch_snapshot("lib-outside", PAGES, 0..0);
    let guest = Mapping::anonymous(2 * PAGES * PAGE, Sharing::Private).unwrap();
    let base = guest.addr();
    // Both halves are registered; the server is given the lower one only
    // (as a VMM that registered more than it handed over, or grew a
    // registered mapping).
    // SAFETY: `guest` is reached only through raw pointers.
    let (served, _unserved) = unsafe {
        (
            uffd.register(base, PAGES * PAGE, RegisterMode::MISSING)
                .unwrap(),
            uffd.register(base + PAGES * PAGE, PAGES * PAGE, RegisterMode::MISSING)
                .unwrap(),
        )
    };
    let uffd = Arc::new(uffd);
    let server = Server::start(
        uffd.clone(),
        &[Range::new(served, 0)],
        file_source(&file),
        Config {
            threads: 1,
            prefetch: false,
            ..Config::default()
        },
    )
    .unwrap();
    util::with_deadline(TEST, Duration::from_secs(60), || {
        assert_eq!(read_page(base, 3), file_page(&bytes, 3));
        let toucher = std::thread::spawn(move || read_page(base, PAGES + 5));
        assert!(
            server.wait_timeout(Duration::from_secs(20)),
            "the server neither served nor refused {:?}",
            server.stats()
        );
        // The server gave up on the page: the toucher still waits; giving
        // the range back to the kernel lets it through (zeros).
        uffd.unregister_range(base, 2 * PAGES * PAGE).unwrap();
        assert!(toucher.join().unwrap().iter().all(|&b| b == 0));
    });
    let report = server.shutdown();
    let Exit::Failed(e) = &report.exit else {
        panic!("{:?}", report.exit);
    };
    let text = e.to_string();
    let page = base + (PAGES + 5) * PAGE;
    assert!(
        text.contains("outside every served range") && text.contains(&format!("{page:#x}")),
        "{text}"
    );
    assert!(report.stats.unserved_faults >= 64, "{:?}", report.stats);
}

// ---------------------------------------------------------------------
// The binary, with this test as Firecracker.

/// The binary under test; `USERFAULT_PAGER_BIN` overrides the path Cargo
/// built it at (for a copy of both binaries run under another kernel).
fn pager_bin() -> PathBuf {
    std::env::var_os("USERFAULT_PAGER_BIN").map_or_else(
        || env!("CARGO_BIN_EXE_userfault-pager").into(),
        PathBuf::from,
    )
}

struct Pager {
    child: Child,
    stderr: PathBuf,
}

impl Pager {
    fn spawn(dir: &Path, args: &[&str]) -> Pager {
        let stderr = dir.join("stderr");
        let child = Command::new(pager_bin())
            .arg("firecracker")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Pager { child, stderr }
    }

    /// Waits for the pager to exit (a hang fails the test): its status
    /// code and what it printed.
    fn wait(mut self, limit: Duration) -> (i32, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let text = std::fs::read_to_string(&self.stderr).unwrap();
                return (status.code().unwrap_or(-1), text);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                panic!("the pager did not exit within {limit:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`wait`](Self::wait), asserting that the pager exited with status
    /// `code`: what it printed.
    fn exits_with(self, code: i32, limit: Duration) -> String {
        let (status, text) = self.wait(limit);
        assert_eq!(status, code, "{text}");
        text
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Firecracker restore's files: a scratch directory holding a snapshot
/// file `mem`, and the path `uffd.sock` of the socket the pager listens on.
struct Restore {
    dir: ScratchDir,
    mem: PathBuf,
    socket: PathBuf,
    /// The snapshot's contents.
    bytes: Vec<u8>,
}

impl Restore {
    /// A scratch directory for a test (named `name`) with a snapshot of
    /// `pages` pages, pages `hole` left as a hole.
    fn new(name: &str, pages: usize, hole: std::ops::Range<usize>) -> Restore {
        let (dir, mem, bytes) = scratch_snapshot(name, pages, hole);
        let socket = dir.join("uffd.sock");
        Restore {
            dir,
            mem,
            socket,
            bytes,
        }
    }

    /// Spawns `userfault-pager firecracker --socket <socket> --mem-file
    /// <mem>`, then `more` arguments.
    fn spawn(&self, more: &[&str]) -> Pager {
        let mut args = vec![
            "--socket",
            self.socket.to_str().unwrap(),
            "--mem-file",
            self.mem.to_str().unwrap(),
        ];
        args.extend_from_slice(more);
        Pager::spawn(&self.dir, &args)
    }
}

/// The statistics the pager saved to `path` (`--stats-json`).
fn stats_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn connect(socket: &Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("connect {}: {e}", socket.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Firecracker's one handshake message: `json`, with `fd` as `SCM_RIGHTS`.
fn send_handshake(stream: &UnixStream, json: &str, fd: Option<std::os::fd::BorrowedFd<'_>>) {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    }
    let iov = [IoSlice::new(json.as_bytes())];
    let n = rustix::net::sendmsg(stream, &iov, &mut control, SendFlags::empty()).unwrap();
    assert_eq!(n, json.len());
}

fn layout(regions: &[(usize, usize, usize)]) -> String {
    let items: Vec<String> = regions
        .iter()
        .map(|&(addr, size, offset)| {
            format!(
                r#"{{"base_host_virt_addr":{addr},"size":{size},"offset":{offset},"page_size":{PAGE},"page_size_kib":{PAGE}}}"#
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Guest memory as Firecracker sets it up: anonymous regions registered
/// (MISSING) with a non-blocking userfaultfd that has EVENT_REMOVE.
struct Vmm {
    uffd: Uffd,
    regions: Vec<Mapping>,
}

impl Vmm {
    fn new(test: &str, sizes: &[usize]) -> Option<Vmm> {
        let uffd = new_uffd(test, Features::EVENT_REMOVE)?;
        let regions: Vec<Mapping> = sizes
            .iter()
            .map(|&n| Mapping::anonymous(n, Sharing::Private).unwrap())
            .collect();
        for m in &regions {
            // SAFETY: guest memory is reached only through raw pointers.
            unsafe { uffd.register(m.addr(), m.len(), RegisterMode::MISSING) }.unwrap();
        }
        Some(Vmm { uffd, regions })
    }

    fn layout(&self) -> String {
        let mut offset = 0;
        let regions: Vec<(usize, usize, usize)> = self
            .regions
            .iter()
            .map(|m| {
                let r = (m.addr(), m.len(), offset);
                offset += m.len();
                r
            })
            .collect();
        layout(&regions)
    }

    /// Connects to the pager listening at `socket` and sends Firecracker's
    /// handshake: this guest memory's layout and its userfaultfd.
    fn handshake(&self, socket: &Path) -> UnixStream {
        let stream = connect(socket);
        send_handshake(&stream, &self.layout(), Some(self.uffd.as_fd()));
        stream
    }
}

#[test]
fn firecracker_restore_serves_every_byte_and_balloon_zeros() {
    const TEST: &str = "firecracker_restore_serves_every_byte_and_balloon_zeros";
    const PAGES: usize = 8192; // 32 MiB in two regions
    let Some(vmm) = Vmm::new(TEST, &[PAGES / 2 * PAGE, PAGES / 2 * PAGE]) else {
        return;
    };
    let hole = 6000..6100;
    let restore = Restore::new("fc-restore", PAGES, hole.clone());
    let stats = restore.dir.join("stats.json");
    let pager = restore.spawn(&[
        "--threads",
        "4",
        "--no-prefetch",
        "--stats-json",
        stats.to_str().unwrap(),
    ]);
    let stream = vmm.handshake(&restore.socket);
    let started = Instant::now();
    util::with_deadline(TEST, Duration::from_secs(120), || {
        let half = PAGES / 2;
        for (r, m) in vmm.regions.iter().enumerate() {
            let base = m.addr();
            std::thread::scope(|s| {
                for t in 0..4 {
                    let bytes = &restore.bytes;
                    s.spawn(move || {
                        for k in 0..half {
                            let i = (k * (2 * t + 1) + t * 89) % half;
                            let file_page = r * half + i;
                            assert_eq!(
                                read_page(base, i),
                                self::file_page(bytes, file_page),
                                "file page {file_page}"
                            );
                        }
                    });
                }
            });
        }
        // Inflate a balloon over 2 MiB of the second region.
        let second = vmm.regions[1].addr();
        balloon(second + 100 * PAGE, 512 * PAGE);
        for i in 100..612 {
            assert!(
                read_page(second, i).iter().all(|&b| b == 0),
                "ballooned page {i}"
            );
        }
        assert_eq!(read_page(second, 99), want(half + 99, &hole));
        assert_eq!(read_page(second, 612), want(half + 612, &hole));
    });
    let elapsed = started.elapsed();
    // Firecracker exits: its end of the connection closes.
    drop(stream);
    let text = pager.exits_with(0, Duration::from_secs(30));
    assert!(text.contains("closed its connection"), "{text}");
    let json = stats_json(&stats);
    assert_eq!(json["total_pages"], PAGES as u64);
    assert_eq!(json["remaining_pages"], 0);
    assert_eq!(json["removed_pages"], 512);
    assert_eq!(json["demand_pages"], PAGES as u64 + 512);
    util::report(&format!(
        "{TEST}: {PAGES} pages in 2 regions, 4 VMM threads, 4 handler threads, {} faults, {elapsed:?}",
        json["demand_faults"]
    ));
    assert!(
        !restore.socket.exists(),
        "the socket file is removed at exit"
    );
}

#[test]
fn firecracker_records_then_replays_a_working_set() {
    const TEST: &str = "firecracker_records_then_replays_a_working_set";
    const PAGES: usize = 4096;
    let restore = Restore::new("fc-ws", PAGES, 0..0);
    let ws = restore.dir.join("ws");
    let order: Vec<usize> = (0..200).map(|k| (k * 131 + 7) % PAGES).collect();

    // Restore 1: demand only, recording.
    {
        let Some(vmm) = Vmm::new(TEST, &[PAGES * PAGE]) else {
            return;
        };
        let pager = restore.spawn(&[
            "--no-prefetch",
            "--chunk",
            "4K",
            "--record-working-set",
            ws.to_str().unwrap(),
        ]);
        let stream = vmm.handshake(&restore.socket);
        util::with_deadline(TEST, Duration::from_secs(60), || {
            for &i in &order {
                assert_eq!(read_page(vmm.regions[0].addr(), i), want(i, &(0..0)));
            }
        });
        drop(stream);
        let text = pager.exits_with(0, Duration::from_secs(30));
        assert!(
            text.contains("recorded a working set of 200 pages"),
            "{text}"
        );
    }
    let recorded = WorkingSet::load(&ws).unwrap();
    let want_pages: Vec<u64> = order.iter().map(|&i| i as u64).collect();
    assert_eq!(recorded.pages(), &want_pages[..]);

    // Restore 2: replay, then the rest; the pager finishes by itself.
    let Some(vmm) = Vmm::new(TEST, &[PAGES * PAGE]) else {
        return;
    };
    let stats = restore.dir.join("stats.json");
    let pager = restore.spawn(&[
        "--working-set",
        ws.to_str().unwrap(),
        "--stats-json",
        stats.to_str().unwrap(),
    ]);
    let stream = vmm.handshake(&restore.socket);
    let text = pager.exits_with(0, Duration::from_secs(60));
    assert!(text.contains("every page served"), "{text}");
    assert!(
        text.contains("prefetching 200 working-set pages first"),
        "{text}"
    );
    let json = stats_json(&stats);
    assert_eq!(json["prefetch_pages"], PAGES as u64);
    assert_eq!(json["demand_faults"], 0);
    // Unregistered and complete: every byte is there without a handler.
    for i in 0..PAGES {
        assert_eq!(
            read_page(vmm.regions[0].addr(), i),
            file_page(&restore.bytes, i),
            "page {i}"
        );
    }
    drop(stream);
}

/// The VMM of `firecracker_vmm_dying_mid_restore_ends_the_pager`, run in a
/// child process: restores, touches some pages, and exits abruptly.
#[test]
#[ignore = "the VMM of firecracker_vmm_dying_mid_restore_ends_the_pager, which runs it in a child process"]
fn vmm_stand_in() {
    let socket = std::env::var("USERFAULT_PAGER_TEST_VMM_SOCKET")
        .expect("run by firecracker_vmm_dying_mid_restore_ends_the_pager, which sets USERFAULT_PAGER_TEST_VMM_SOCKET");
    let vmm = Vmm::new("vmm_stand_in", &[2048 * PAGE]).expect("userfaultfd");
    let _stream = vmm.handshake(Path::new(&socket));
    for i in 0..50 {
        assert_eq!(
            read_page(vmm.regions[0].addr(), i * 7),
            want(i * 7, &(0..0))
        );
    }
    let _ = writeln!(std::io::stderr(), "vmm stand-in: touched 50 pages, exiting");
    std::process::exit(0);
}

#[test]
fn firecracker_vmm_dying_mid_restore_ends_the_pager() {
    const TEST: &str = "firecracker_vmm_dying_mid_restore_ends_the_pager";
    if new_uffd(TEST, Features::EVENT_REMOVE).is_none() {
        return;
    }
    let restore = Restore::new("fc-dies", 2048, 0..0);
    let pager = restore.spawn(&["--no-prefetch"]);
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "vmm_stand_in",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("USERFAULT_PAGER_TEST_VMM_SOCKET", &restore.socket)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the VMM stand-in failed: {status}");
    let text = pager.exits_with(0, Duration::from_secs(30));
    assert!(
        text.contains("closed its connection") || text.contains("has exited"),
        "{text}"
    );
    assert!(text.contains("had not been needed yet"), "{text}");
}

#[test]
fn firecracker_malformed_json_is_refused_and_nothing_served() {
    const TEST: &str = "firecracker_malformed_json_is_refused_and_nothing_served";
    let Some(vmm) = Vmm::new(TEST, &[64 * PAGE]) else {
        return;
    };
    let restore = Restore::new("fc-json", 64, 0..0);
    let pager = restore.spawn(&[]);
    let stream = connect(&restore.socket);
    send_handshake(
        &stream,
        r#"[{"base_host_virt_addr": 4096, "size": "#,
        Some(vmm.uffd.as_fd()),
    );
    let text = pager.exits_with(2, Duration::from_secs(30));
    assert!(text.contains("malformed guest memory layout"), "{text}");
    assert!(text.contains("nothing was served"), "{text}");
    assert_no_fault_served(&vmm);
}

#[test]
fn firecracker_missing_fd_is_refused_and_nothing_served() {
    const TEST: &str = "firecracker_missing_fd_is_refused_and_nothing_served";
    let Some(vmm) = Vmm::new(TEST, &[64 * PAGE]) else {
        return;
    };
    let restore = Restore::new("fc-nofd", 64, 0..0);
    let pager = restore.spawn(&[]);
    let stream = connect(&restore.socket);
    send_handshake(&stream, &vmm.layout(), None);
    let text = pager.exits_with(2, Duration::from_secs(30));
    assert!(text.contains("no userfaultfd"), "{text}");
    assert_no_fault_served(&vmm);
}

/// Nothing was resolved in the VMM's memory: a fault there still reaches
/// the VMM's own userfaultfd, which answers it here.
fn assert_no_fault_served(vmm: &Vmm) {
    let m = &vmm.regions[0];
    let reg = {
        // SAFETY: re-registering the test's own registered range returns
        // its Registration and changes nothing.
        unsafe { vmm.uffd.register(m.addr(), m.len(), RegisterMode::MISSING) }.unwrap()
    };
    let addr = m.addr();
    let reader = std::thread::spawn(move || read_page(addr, 0)[0]);
    let mut buf = userfault::uffd::EventBuffer::with_capacity(4);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        for ev in vmm
            .uffd
            .wait_events(&mut buf, Some(Duration::from_millis(50)))
            .unwrap()
        {
            if let userfault::uffd::Event::PageFault { address, .. } = ev {
                ev.take();
                assert_eq!(address & !(PAGE - 1), addr);
                seen = true;
            }
        }
    }
    assert!(seen, "the first page was not missing: something served it");
    vmm.uffd
        .copy_or_wake(
            &reg,
            addr,
            &[0xee; PAGE],
            userfault::uffd::CopyMode::empty(),
        )
        .unwrap();
    assert_eq!(reader.join().unwrap(), 0xee);
}

#[test]
fn library_serves_a_forked_child_from_the_parents_state() {
    const TEST: &str = "library_serves_a_forked_child_from_the_parents_state";
    let _forking = forking();
    let Some(uffd) = fork_uffd(TEST) else {
        return;
    };
    const PAGES: usize = 256;
    let (_dir, file, bytes) = scratch_snapshot("lib-fork", PAGES, 0..0);
    let (guest, server) = serve_anonymous(
        uffd,
        PAGES,
        &file,
        Config {
            threads: 2,
            prefetch: false,
            ..Config::default()
        },
    );
    let base = guest.addr();
    util::with_deadline(TEST, Duration::from_secs(60), || {
        // The parent has the first half; a balloon took pages 10..20.
        for i in 0..PAGES / 2 {
            assert_eq!(read_page(base, i), file_page(&bytes, i));
        }
        balloon(base + 10 * PAGE, 10 * PAGE);
        child_sees(|| {
            // The child: its second half faults into the child's
            // userfaultfd, served from the state the parent had.
            (0..PAGES).all(|i| {
                let page = read_page(base, i);
                if (10..20).contains(&i) {
                    page.iter().all(|&b| b == 0)
                } else {
                    page == file_page(&bytes, i)
                }
            })
        });
        // The child has exited, which raises no event: its handler finds
        // out when it has been idle for a while, and ends.
        let since = Instant::now();
        while server.stats().ended_children == 0 && since.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let report = server.shutdown();
    assert_eq!(report.stats.forks, 1, "{:?}", report.stats);
    assert_eq!(report.stats.removed_pages, 10);
    assert_eq!(
        report.stats.ended_children, 1,
        "the exited child's service went on"
    );
}

#[test]
fn firecracker_hugetlb_guest_memory_is_served_a_huge_page_at_a_time() {
    const TEST: &str = "firecracker_hugetlb_guest_memory_is_served_a_huge_page_at_a_time";
    const HUGE: usize = 2 << 20;
    const HUGE_PAGES: usize = 4;
    let Some(uffd) = new_uffd(TEST, Features::EVENT_REMOVE) else {
        return;
    };
    // SAFETY: a new anonymous huge-page mapping at an address of the
    // kernel's choosing.
    let mapped = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            HUGE_PAGES * HUGE,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::HUGETLB,
        )
    };
    let base = match mapped {
        Ok(p) => p as usize,
        Err(e) => return util::skip(TEST, "hugetlb", &format!("MAP_HUGETLB: {e}")),
    };
    // SAFETY: the mapping is reached only through raw pointers.
    unsafe { uffd.register(base, HUGE_PAGES * HUGE, RegisterMode::MISSING) }.unwrap();
    let pages = HUGE_PAGES * HUGE / PAGE;
    let restore = Restore::new("fc-huge", pages, 0..0);
    let stats = restore.dir.join("stats.json");
    let pager = restore.spawn(&["--no-prefetch", "--stats-json", stats.to_str().unwrap()]);
    let stream = connect(&restore.socket);
    let json = format!(
        r#"[{{"base_host_virt_addr":{base},"size":{},"offset":0,"page_size_kib":{HUGE}}}]"#,
        HUGE_PAGES * HUGE
    );
    send_handshake(&stream, &json, Some(uffd.as_fd()));
    util::with_deadline(TEST, Duration::from_secs(60), || {
        std::thread::scope(|s| {
            for t in 0..2 {
                let bytes = &restore.bytes;
                s.spawn(move || {
                    for k in 0..pages {
                        let i = (k * (2 * t + 1) + t * 513) % pages;
                        assert_eq!(read_page(base, i), file_page(bytes, i), "page {i}");
                    }
                });
            }
        });
    });
    drop(stream);
    pager.exits_with(0, Duration::from_secs(30));
    let json = stats_json(&stats);
    // Counted in huge pages, each copied once.
    assert_eq!(json["total_pages"], HUGE_PAGES as u64);
    assert_eq!(json["demand_pages"], HUGE_PAGES as u64);
    assert_eq!(json["copied_bytes"], (HUGE_PAGES * HUGE) as u64);
    drop(uffd);
    // SAFETY: unmaps the test's own mapping; nothing refers to it.
    unsafe { rustix::mm::munmap(base as *mut _, HUGE_PAGES * HUGE) }.unwrap();
}

#[test]
fn firecracker_sigterm_stops_cleanly_and_saves_the_recording() {
    const TEST: &str = "firecracker_sigterm_stops_cleanly_and_saves_the_recording";
    let Some(vmm) = Vmm::new(TEST, &[256 * PAGE]) else {
        return;
    };
    let restore = Restore::new("fc-sigterm", 256, 0..0);
    let ws = restore.dir.join("ws");
    let stats = restore.dir.join("stats.json");
    let pager = restore.spawn(&[
        "--no-prefetch",
        "--chunk",
        "4K",
        "--record-working-set",
        ws.to_str().unwrap(),
        "--stats-json",
        stats.to_str().unwrap(),
    ]);
    let stream = vmm.handshake(&restore.socket);
    util::with_deadline(TEST, Duration::from_secs(60), || {
        for i in [9, 3, 200, 77] {
            assert_eq!(
                read_page(vmm.regions[0].addr(), i),
                file_page(&restore.bytes, i)
            );
        }
    });
    // SAFETY: signals the pager process this test spawned.
    let r = unsafe { libc::kill(pager.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(r, 0);
    let text = pager.exits_with(0, Duration::from_secs(30));
    assert!(text.contains("stopped by signal 15;"), "{text}");
    assert_eq!(WorkingSet::load(&ws).unwrap().pages(), &[9, 3, 200, 77]);
    let json = stats_json(&stats);
    assert_eq!(json["demand_faults"], 4);
    drop(stream);
}

#[test]
fn library_serves_a_mapped_snapshot_byte_for_byte_with_holes_as_zero_pages() {
    const TEST: &str = "library_serves_a_mapped_snapshot_byte_for_byte_with_holes_as_zero_pages";
    const PAGES: usize = 2048; // 8 MiB
    // Whole 64 KiB chunks of hole: every window inside it is known zero.
    let hole = 512..640;
    let (_dir, file, bytes) = scratch_snapshot("lib-mapped", PAGES, hole.clone());
    let holes_kept = FileSource::open(&file)
        .unwrap()
        .is_zero((hole.start * PAGE) as u64, (hole.len() * PAGE) as u64);
    for (prefault, adaptive) in [
        (Prefault::None, None),
        (Prefault::WillNeed, Some(256 << 10)),
        (Prefault::Populate, Some(512 << 10)),
    ] {
        let Some(uffd) = new_uffd(TEST, Features::EVENT_REMOVE) else {
            return;
        };
        let (guest, server) = serve_anonymous_from(
            uffd,
            PAGES,
            mapped_source(&file, prefault),
            Config {
                threads: 2,
                prefetch: false,
                adaptive_chunk: adaptive,
                ..Config::default()
            },
        );
        util::with_deadline(TEST, Duration::from_secs(120), || {
            // A sequential walk (chunks grow where they adapt), then every
            // page again from two threads in their own orders.
            for i in (0..PAGES).step_by(3) {
                assert_eq!(read_page(guest.addr(), i), file_page(&bytes, i), "page {i}");
            }
            touch_all(guest.addr(), PAGES, 2, &bytes);
            settle(&server);
            // A balloon takes pages back: zeros afterwards.
            balloon(guest.addr() + 100 * PAGE, 50 * PAGE);
            for i in 100..150 {
                assert!(
                    read_page(guest.addr(), i).iter().all(|&b| b == 0),
                    "removed page {i}"
                );
            }
        });
        let report = server.shutdown();
        assert!(matches!(report.exit, Exit::Shutdown), "{:?}", report.exit);
        let s = &report.stats;
        assert_eq!(s.remaining_pages, 0, "{prefault:?}");
        assert_eq!(s.demand_pages, (PAGES + 50) as u64, "{prefault:?}");
        // Zero pages: the holes (when the file system keeps them) and the
        // removed pages; data pages that are all zero are copied from the
        // mapping, which the pager never reads.
        let holes = if holes_kept { hole.len() } else { 0 };
        assert_eq!(s.zero_pages, (holes + 50) as u64, "{prefault:?}");
        assert_eq!(
            s.copied_bytes,
            ((PAGES - holes) * PAGE) as u64,
            "{prefault:?}"
        );
    }
}

#[test]
fn library_refuses_a_mapped_snapshot_shorter_than_its_range() {
    const TEST: &str = "library_refuses_a_mapped_snapshot_shorter_than_its_range";
    let Some(uffd) = new_uffd(TEST, Features::EVENT_REMOVE) else {
        return;
    };
    let (_dir, file, _) = scratch_snapshot("lib-mapped-short", 16, 0..0);
    let (_guest, started) = start_anonymous(
        uffd,
        32,
        mapped_source(&file, Prefault::Populate),
        Config::default(),
    );
    let err = started.unwrap_err();
    assert!(matches!(err, userfault_pager::Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("extends past the source"), "{err}");
}

#[test]
fn library_stops_with_a_source_error_when_a_mapped_snapshot_shrinks() {
    const TEST: &str = "library_stops_with_a_source_error_when_a_mapped_snapshot_shrinks";
    let Some(uffd) = new_uffd(TEST, Features::EVENT_REMOVE) else {
        return;
    };
    const PAGES: usize = 64;
    let (_dir, file, bytes) = scratch_snapshot("lib-mapped-shrink", PAGES, 0..0);
    let (guest, server) = serve_anonymous_from(
        uffd,
        PAGES,
        mapped_source(&file, Prefault::Populate),
        Config {
            threads: 1,
            chunk: PAGE,
            prefetch: false,
            ..Config::default()
        },
    );
    let base = guest.addr();
    util::with_deadline(TEST, Duration::from_secs(60), || {
        assert_eq!(read_page(base, 0), file_page(&bytes, 0));
        // The snapshot shrinks under the server: page 40 is gone from it.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len((16 * PAGE) as u64)
            .unwrap();
        std::thread::scope(|s| {
            // Waits until the server stops and the userfaultfd is closed,
            // then reads what anonymous memory holds: zeros.
            let reader = s.spawn(move || read_page(base, 40));
            assert!(
                server.wait_timeout(Duration::from_secs(30)),
                "still serving"
            );
            let report = server.shutdown();
            match &report.exit {
                Exit::Failed(e @ userfault_pager::Error::Source(_)) => {
                    assert!(e.to_string().contains("EFAULT"), "{e}");
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(report.stats.demand_pages, 1);
            assert!(reader.join().unwrap().iter().all(|&b| b == 0));
        });
    });
}

#[test]
fn library_resolves_ahead_along_a_replayed_working_set() {
    const TEST: &str = "library_resolves_ahead_along_a_replayed_working_set";
    const PAGES: usize = 4096; // 16 MiB
    let (_dir, file, bytes) = scratch_snapshot("lib-ahead", PAGES, 0..0);
    // Runs of 8 pages scattered backwards through the file: the recorded
    // order is not the address order.
    let recorded: Vec<usize> = (0..64)
        .flat_map(|k| {
            let start = PAGES - 64 - k * 61;
            start..start + 8
        })
        .collect();
    for source in ["pread", "mmap"] {
        let Some(uffd) = new_uffd(TEST, Features::EVENT_REMOVE) else {
            return;
        };
        let src = if source == "mmap" {
            mapped_source(&file, Prefault::Populate)
        } else {
            file_source(&file)
        };
        let ws = WorkingSet::from_pages(4096, recorded.iter().map(|&p| p as u64)).unwrap();
        let (guest, server) = serve_anonymous_from(
            uffd,
            PAGES,
            src,
            Config {
                threads: 1,
                working_set: Some(ws),
                replay_ahead: 128 << 10,
                adaptive_chunk: Some(256 << 10),
                finish_when_complete: false,
                // The populator waits on no demand fault and runs wherever.
                populator: userfault_pager::Populator {
                    yield_to_demand: Duration::ZERO,
                    background_nice: None,
                    ..Default::default()
                },
                ..Config::default()
            },
        );
        util::with_deadline(TEST, Duration::from_secs(120), || {
            for &i in &recorded {
                assert_eq!(read_page(guest.addr(), i), file_page(&bytes, i), "page {i}");
            }
            for i in 0..PAGES {
                assert_eq!(read_page(guest.addr(), i), file_page(&bytes, i), "page {i}");
            }
            settle(&server);
        });
        let report = server.shutdown();
        assert!(matches!(report.exit, Exit::Shutdown), "{:?}", report.exit);
        let s = &report.stats;
        assert_eq!(s.remaining_pages, 0, "{source}");
        // Every page came in exactly once, by a fault, ahead of one or by
        // the populator.
        assert_eq!(s.demand_pages + s.prefetch_pages, PAGES as u64, "{source}");
        assert_eq!(
            s.copied_bytes,
            (PAGES * PAGE) as u64 - zero_bytes(PAGES, source)
        );
    }
}

/// Bytes of the test snapshot's all-zero data pages that a source serves as
/// zero pages: a pread source finds them, a mapped one copies them.
fn zero_bytes(pages: usize, source: &str) -> u64 {
    if source == "mmap" {
        0
    } else {
        ((0..pages).filter(|i| i % 7 == 3).count() * PAGE) as u64
    }
}

/// A page source that panics on its first read (a bug in a VMM's own
/// source), after a pause: the server must stop and say so, not leave the
/// other threads serving around a page that is claimed forever.
#[derive(Debug)]
struct PanickingSource {
    len: u64,
    pause: Duration,
}

impl userfault_pager::source::PageSource for PanickingSource {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, _buf: &mut [u8]) -> std::io::Result<()> {
        std::thread::sleep(self.pause);
        panic!("the test's source refuses offset {offset:#x}");
    }
}

/// 16 pages of anonymous memory served by two handler threads from a
/// [`PanickingSource`] that pauses `pause` first.
fn serve_panicking(test: &str, pause: Duration) -> Option<(Mapping, Server)> {
    const PAGES: usize = 16;
    let uffd = new_uffd(test, Features::EVENT_REMOVE)?;
    Some(serve_anonymous_from(
        uffd,
        PAGES,
        Arc::new(PanickingSource {
            len: (PAGES * PAGE) as u64,
            pause,
        }),
        Config {
            threads: 2,
            prefetch: false,
            ..Config::default()
        },
    ))
}

#[test]
fn library_stops_with_a_clear_error_when_a_handler_thread_panics() {
    const TEST: &str = "library_stops_with_a_clear_error_when_a_handler_thread_panics";
    let Some((guest, server)) = serve_panicking(TEST, Duration::ZERO) else {
        return;
    };
    let base = guest.addr();
    util::with_deadline(TEST, Duration::from_secs(60), || {
        std::thread::scope(|s| {
            // Blocked until the userfaultfd is closed with the server.
            let reader = s.spawn(move || read_page(base, 3));
            assert!(
                server.wait_timeout(Duration::from_secs(30)),
                "still serving after the panic"
            );
            let report = server.shutdown();
            match &report.exit {
                Exit::Failed(e) => {
                    assert!(e.to_string().contains("handler thread panicked"), "{e}")
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(report.stats.demand_pages, 0);
            // Nothing was served: the page is what the kernel gives an
            // unregistered fault, zeros.
            assert!(reader.join().unwrap().iter().all(|&b| b == 0));
        });
    });
}

/// Per-page mode from a mapped snapshot (faults take the direct one-page
/// path): the guest moves half of its memory back and forth and touches
/// pages at each new place between the moves, while another guest thread
/// reads and writes the other half and the populator fills both. Every
/// page ends up the snapshot's, or the guest's write where it wrote.
#[test]
fn library_per_page_from_a_mapping_follows_remaps_and_keeps_writes() {
    per_page_follows_remaps_and_keeps_writes(
        "library_per_page_from_a_mapping_follows_remaps_and_keeps_writes",
        2,
    );
}

/// The same with one handler thread, which resolves its faults without
/// the order lock (it applies every REMAP and REMOVE itself, between
/// them).
#[test]
fn library_per_page_from_one_handler_follows_remaps_and_keeps_writes() {
    per_page_follows_remaps_and_keeps_writes(
        "library_per_page_from_one_handler_follows_remaps_and_keeps_writes",
        1,
    );
}

fn per_page_follows_remaps_and_keeps_writes(test: &'static str, threads: usize) {
    let Some(uffd) = uffd_with_events(test, Features::EVENT_REMAP, "REMAP") else {
        return;
    };
    const PAGES: usize = 16384; // 64 MiB
    let (_dir, file, bytes) = scratch_snapshot(&format!("lib-page-remap-{threads}"), PAGES, 0..0);
    let (base, server) = serve_raw(
        uffd,
        PAGES,
        mapped_source(&file, Prefault::Populate),
        Config {
            threads,
            chunk: PAGE,
            adaptive_chunk: None,
            ..Config::default()
        },
    );
    let half = PAGES / 2;
    let written = |i: usize| i % 5 == 1;
    let (report, at, moves, wrote) = util::with_deadline(test, Duration::from_secs(120), || {
        std::thread::scope(|s| {
            let bytes = &bytes;
            // The lower half stays put: read every page, write a marker
            // into some.
            s.spawn(move || {
                for i in (0..half).rev() {
                    assert!(read_page(base, i) == file_page(bytes, i), "page {i}");
                    if written(i) {
                        write_byte(base, i, 7, marker(i));
                    }
                }
            });
            let mut at = base + half * PAGE;
            let mut moves = 0u64;
            let mut k = 0usize;
            let mut wrote = vec![false; half];
            while server.stats().remaining_pages > 0 && moves < 300 {
                // A few pages at the current place, a stride apart: most
                // are still missing, so they fault at this address.
                for _ in 0..16 {
                    let i = (k * 61) % half;
                    k += 1;
                    assert!(
                        read_page(at, i) == file_page(bytes, half + i),
                        "moved page {i} after {moves} moves"
                    );
                    if written(half + i) {
                        write_byte(at, i, 7, marker(half + i));
                        wrote[i] = true;
                    }
                }
                at = move_mapping(at, half * PAGE);
                moves += 1;
            }
            (server.wait(), at, moves, wrote)
        })
    });
    assert!(matches!(report.exit, Exit::Complete), "{:?}", report.exit);
    // Unregistered now: a page never filled would read as zeros. A page
    // the guest wrote holds its marker (written after the page was read
    // and checked).
    let check = |addr: usize, i: usize, src: usize| {
        let mut want = file_page(&bytes, src).to_vec();
        if written(src) && (src < half || wrote[i]) {
            want[7] = marker(src);
        }
        read_page(addr, i) == want
    };
    let wrong = (0..half).filter(|&i| !check(base, i, i)).count()
        + (0..half).filter(|&i| !check(at, i, half + i)).count();
    let s = &report.stats;
    assert_eq!(wrong, 0, "{wrong} pages wrong after {moves} moves; {s:?}");
    // The last move can come after the server completed and unregistered
    // the range (no event for it), but only when the server completing
    // ended the moves.
    let last_after_unregister = moves < 300 && s.remaps + 1 == moves;
    assert!(
        s.remaps == moves || last_after_unregister,
        "{moves} moves: {s:?}"
    );
    assert_eq!(s.demand_pages + s.prefetch_pages, PAGES as u64, "{s:?}");
    util::report(&format!(
        "{test}: {moves} moves, {} demand faults, {} retries",
        s.demand_faults, s.retries
    ));
    // SAFETY: unmaps the test's own mappings; nothing refers to them.
    unsafe {
        rustix::mm::munmap(at as *mut _, half * PAGE).unwrap();
        rustix::mm::munmap(base as *mut _, half * PAGE).unwrap();
    }
}

/// A handler thread panics while it holds a page's claim, and the other
/// handler thread waits for that claim (a second fault on the page): the
/// server still stops and shuts down.
#[test]
fn library_shuts_down_when_a_thread_panics_holding_a_claim_another_waits_for() {
    const TEST: &str = "library_shuts_down_when_a_thread_panics_holding_a_claim_another_waits_for";
    let Some((guest, server)) = serve_panicking(TEST, Duration::from_millis(500)) else {
        return;
    };
    let base = guest.addr();
    util::with_deadline(TEST, Duration::from_secs(60), || {
        std::thread::scope(|s| {
            let first = s.spawn(move || read_page(base, 3));
            std::thread::sleep(Duration::from_millis(100));
            // Read by the other handler thread, which finds page 3 claimed.
            let second = s.spawn(move || read_page(base, 3));
            assert!(
                server.wait_timeout(Duration::from_secs(30)),
                "still serving after the panic"
            );
            let report = server.shutdown();
            match &report.exit {
                Exit::Failed(e) => assert!(e.to_string().contains("thread panicked"), "{e}"),
                other => panic!("{other:?}"),
            }
            // Nothing was served: unregistered faults read zeros.
            assert!(first.join().unwrap().iter().all(|&b| b == 0));
            assert!(second.join().unwrap().iter().all(|&b| b == 0));
        });
    });
}
