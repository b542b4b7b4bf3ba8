//! The typestate resolution layer on the real kernel, with a shmem memfd
//! standing in for guest_memfd (registered MISSING|MINOR it behaves the same
//! way): the F-rows of the reference, a concurrent populator, and the
//! snapshot-restore scenario on shmem and hugetlb.

mod rows;
mod scenario;
mod sealed;
mod shared;
mod storm;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::os::fd::AsFd;

use userfault::backing::{BackedMapping, Backing, Claimed, HugePageSize, Memfd};
use userfault::resolve::{AnyRegion, ContinueOnly, Fault, Region};
use userfault::uffd::{Event, EventBuffer, FaultKind, Uffd};

use crate::util::require;

/// Base page size of the machine.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// The snapshot's content of the page at file offset `offset`: every byte
/// depends on the offset, so a page served at the wrong offset shows.
pub fn source_page(offset: u64, page: usize) -> Vec<u8> {
    let mut data = vec![0u8; page];
    for (i, chunk) in data.chunks_mut(8).enumerate() {
        let word = (offset + (i * 8) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5;
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
    data
}

/// A userfaultfd for these tests: non-blocking, THREAD_ID not needed.
/// `None` (after a SKIP line) without userfaultfd or without MINOR faults
/// on shmem, which every region here registers.
pub fn open_uffd(test: &str) -> Option<Arc<Uffd>> {
    open_uffd_for(test, "uffd-minor-shmem")
}

/// [`open_uffd`] for a test whose regions need the feature behind
/// `capability` (a `util::need` name).
pub fn open_uffd_for(test: &str, capability: &str) -> Option<Arc<Uffd>> {
    if !crate::util::need(test, capability) {
        return None;
    }
    match Uffd::builder().non_blocking(true).create() {
        Ok(u) => Some(Arc::new(u)),
        Err(e) => {
            crate::util::skip(test, "uffd", &format!("cannot open a userfaultfd: {e}"));
            None
        }
    }
}

/// A shmem memfd of `pages` pages mapped shared, the stand-in for a
/// guest_memfd.
pub fn shmem_mapping(pages: usize) -> Arc<BackedMapping<Memfd>> {
    let size = (pages * page_size()) as u64;
    let memfd = Arc::new(Memfd::shmem(c"userfault-resolve", size).expect("memfd_create"));
    BackedMapping::whole(memfd).expect("mmap memfd")
}

/// `pwrite` into the file behind its page state's back, as another process
/// (or KVM without a userfault bitmap) would.
pub fn pwrite_behind<B: Backing>(mapping: &BackedMapping<B>, offset: u64, data: &[u8]) {
    let n = rustix::io::pwrite(mapping.backing().as_fd(), data, offset).expect("pwrite");
    assert_eq!(n, data.len());
}

/// A hole punched behind the page state's back.
pub fn punch_behind<B: Backing>(mapping: &BackedMapping<B>, offset: u64, len: u64) {
    let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
    rustix::fs::fallocate(mapping.backing().as_fd(), flags, offset, len).expect("punch");
}

/// A userfaultfd, a shmem mapping and a CONTINUE-only region on it.
pub type Fixture = (
    Arc<Uffd>,
    Arc<BackedMapping<Memfd>>,
    Region<ContinueOnly, Memfd>,
);

/// A userfaultfd, a shmem mapping of `pages` pages and a CONTINUE-only
/// region on it; `None` (after a SKIP line) without userfaultfd.
pub fn continue_only_fixture(test: &str, pages: usize) -> Option<Fixture> {
    let uffd = open_uffd(test)?;
    let mapping = shmem_mapping(pages);
    // SAFETY: a fresh mapping that nothing references.
    let region = unsafe { Region::continue_only(uffd.clone(), mapping.clone()) }.expect("register");
    Some((uffd, mapping, region))
}

/// Reads one byte through the mapping (faulting if unmapped).
pub fn touch(mapping: &BackedMapping<Memfd>, offset: usize) -> u8 {
    assert!(offset < mapping.len());
    // SAFETY: inside the live mapping; the range is registered, so the read
    // blocks until a handler resolves the fault, and no Rust reference
    // points into it.
    unsafe { mapping.mapping().as_ptr().add(offset).read_volatile() }
}

/// Writes one byte through the mapping, as the guest would.
pub fn poke(mapping: &BackedMapping<Memfd>, offset: usize, value: u8) {
    assert!(offset < mapping.len());
    // SAFETY: inside the live mapping, whose page is mapped (resolved) by
    // the caller; no Rust reference points into it.
    unsafe { mapping.mapping().as_ptr().add(offset).write_volatile(value) }
}

/// Copies `len` bytes out of the mapping (faulting as needed).
pub fn read_out(mapping: &BackedMapping<Memfd>, offset: usize, len: usize) -> Vec<u8> {
    assert!(offset + len <= mapping.len());
    let mut out = vec![0u8; len];
    for (i, b) in out.iter_mut().enumerate() {
        *b = touch(mapping, offset + i);
    }
    out
}

/// Waits (up to `timeout`) for the next page fault on `uffd`.
pub fn next_fault(
    uffd: &Uffd,
    buf: &mut EventBuffer,
    timeout: Duration,
) -> Option<(usize, FaultKind)> {
    let deadline = Instant::now() + timeout;
    loop {
        for event in uffd.read_events(buf).expect("read events") {
            if let Event::PageFault { address, kind, .. } = event {
                // The caller resolves it.
                event.take();
                return Some((address, kind));
            }
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        uffd.poll(Some(left.min(Duration::from_millis(50))))
            .expect("poll");
    }
}

/// Serves faults of a CONTINUE-only region until `stop`, taking each
/// missing page's content from `source(file offset)`; returns how many
/// faults it resolved.
pub fn serve(
    region: &Region<ContinueOnly, Memfd>,
    source: &(dyn Fn(u64) -> Vec<u8> + Sync),
    stop: &AtomicBool,
) -> usize {
    let uffd = region.uffd().clone();
    let mut buf = EventBuffer::with_capacity(16);
    let mut served = 0;
    while !stop.load(Ordering::Acquire) {
        let events = match uffd.read_events(&mut buf) {
            Ok(events) => events,
            Err(e) => panic!("read events: {e}"),
        };
        let mut any = false;
        for event in events {
            if !matches!(event, Event::PageFault { .. }) {
                continue;
            }
            any = true;
            let fault = region.fault(&event).expect("fault inside the region");
            let result = match fault {
                Fault::Missing(f) => {
                    let offset = f.file_offset();
                    f.write_then_continue(&source(offset))
                }
                Fault::Minor(f) => f.map(),
                Fault::WriteProtect(f) => panic!("unexpected WP fault at {:#x}", f.page()),
                Fault::Rwp(f) => panic!("unexpected RWP fault at {:#x}", f.page()),
                Fault::Unknown(f) => panic!("unexpected fault kind at {:#x}", f.page()),
            };
            result.expect("resolution");
            served += 1;
        }
        if !any {
            uffd.poll(Some(Duration::from_millis(20))).expect("poll");
        }
    }
    served
}

/// True when huge pages can be used; the reason otherwise.
pub fn hugetlb_available(pages: usize) -> Result<(), String> {
    let free = std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .map_err(|e| format!("no 2 MiB hugetlb support: {e}"))?;
    let free: usize = free
        .trim()
        .parse()
        .map_err(|e| format!("free_hugepages: {e}"))?;
    if free < pages {
        return Err(format!(
            "{free} free 2 MiB huge pages, {pages} needed (sysctl vm.nr_hugepages)"
        ));
    }
    Ok(())
}

#[test]
fn continue_only_regions_register_missing_and_minor() {
    const TEST: &str = "continue_only_regions_register_missing_and_minor";
    let Some(uffd) = open_uffd(TEST) else { return };
    let mapping = shmem_mapping(4);
    // SAFETY: the mapping is fresh and nothing references it.
    let region = unsafe { Region::continue_only(uffd.clone(), mapping.clone()) }.expect("register");
    let mode = region.registration().mode();
    assert!(
        mode.contains(
            userfault::uffd::RegisterMode::MISSING | userfault::uffd::RegisterMode::MINOR
        )
    );
    drop(region);
    // The class comes from the mask: shmem offers COPY, so an automatic
    // registration is copy-capable.
    // SAFETY: as above; the previous registration is gone.
    let any = unsafe { AnyRegion::register(uffd, mapping) }.expect("register");
    assert_eq!(any.class_name(), "copy-capable");
}

#[test]
fn hugetlb_continue_only_restores_a_snapshot() {
    const TEST: &str = "hugetlb_continue_only_restores_a_snapshot";
    require!(TEST, "hugetlb", hugetlb_available(8));
    let Some(uffd) = open_uffd_for(TEST, "uffd-minor-hugetlb") else {
        return;
    };
    let huge = HugePageSize::Size2M.bytes();
    let size = 8 * huge;
    let memfd = Arc::new(
        Memfd::hugetlb(c"userfault-huge", size as u64, HugePageSize::Size2M).expect("memfd"),
    );
    let mapping = BackedMapping::whole(memfd).expect("mmap");
    // SAFETY: fresh mapping, not referenced.
    let region = unsafe { Region::continue_only(uffd, mapping.clone()) }.expect("register hugetlb");
    assert_eq!(region.page_size(), huge);
    let stop = AtomicBool::new(false);
    let source = |offset| source_page(offset, huge);
    // Two handlers and four readers that all read every huge page, each in
    // its own order: duplicate MISSING faults and MINOR faults on a page
    // whose fill is under way must all end with the complete page.
    crate::util::with_deadline(TEST, Duration::from_secs(60), || {
        std::thread::scope(|s| {
            let handlers: Vec<_> = (0..2)
                .map(|_| s.spawn(|| serve(&region, &source, &stop)))
                .collect();
            let readers: Vec<_> = (0..4)
                .map(|r| {
                    let mapping = &mapping;
                    s.spawn(move || {
                        let mut page = vec![0u8; huge];
                        for i in 0..8 {
                            let p = if r % 2 == 0 { i } else { 7 - i };
                            // SAFETY: the huge page lies inside the registered
                            // mapping; the copy blocks on its fault until it is
                            // resolved, and nothing references the region.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    mapping.mapping().as_ptr().add(p * huge),
                                    page.as_mut_ptr(),
                                    huge,
                                )
                            };
                            assert!(
                                page == source_page((p * huge) as u64, huge),
                                "reader {r}: huge page {p} incomplete"
                            );
                        }
                    })
                })
                .collect();
            for r in readers {
                r.join().expect("reader");
            }
            stop.store(true, Ordering::Release);
            let served: usize = handlers
                .into_iter()
                .map(|h| h.join().expect("handler"))
                .sum();
            assert!(served >= 8, "served {served} faults for 8 huge pages");
        })
    });
    // Every byte of every huge page equals the source.
    for p in 0..8 {
        let mut back = vec![0u8; huge];
        rustix::io::pread(mapping.backing().as_ref(), &mut back, (p * huge) as u64).expect("pread");
        assert!(
            back == source_page((p * huge) as u64, huge),
            "huge page {p} differs from the source"
        );
    }
}

/// A shmem memfd that counts its fills: every fill of each page, and fills
/// of a page since its last hole punch (its generation). The page state
/// makes every fill and punch under its claims, so a second fill in one
/// generation is a page filled twice.
#[derive(Debug)]
pub struct Counting {
    memfd: Memfd,
    /// Fills per page since its last punch.
    in_generation: Vec<AtomicU32>,
    /// Fill calls (a chunked fill is one call for several pages).
    pub calls: AtomicUsize,
    /// Pages filled.
    pub pages: AtomicUsize,
    /// Pages filled twice in one generation.
    pub doubles: AtomicUsize,
    /// Hole punches.
    pub punches: AtomicUsize,
}

impl Counting {
    /// A counting shmem memfd of `pages` pages.
    pub fn new(pages: usize) -> Counting {
        let size = (pages * page_size()) as u64;
        Counting {
            memfd: Memfd::shmem(c"userfault-counting", size).expect("memfd_create"),
            in_generation: (0..pages).map(|_| AtomicU32::new(0)).collect(),
            calls: AtomicUsize::new(0),
            pages: AtomicUsize::new(0),
            doubles: AtomicUsize::new(0),
            punches: AtomicUsize::new(0),
        }
    }

    /// Fills of page `page` in its current generation.
    pub fn fills_of(&self, page: usize) -> u32 {
        self.in_generation[page].load(Ordering::SeqCst)
    }
}

impl AsFd for Counting {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
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
        let page = page_size();
        self.calls.fetch_add(1, Ordering::SeqCst);
        let first = offset as usize / page;
        for p in first..first + data.len() / page {
            self.pages.fetch_add(1, Ordering::SeqCst);
            if self.in_generation[p].fetch_add(1, Ordering::SeqCst) != 0 {
                self.doubles.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.memfd.fill(offset, data, claim)
    }

    fn punch_hole(&self, offset: u64, len: u64, claim: Claimed<'_>) -> userfault::Result<()> {
        let page = page_size() as u64;
        self.punches.fetch_add(1, Ordering::SeqCst);
        for p in offset / page..(offset + len) / page {
            self.in_generation[p as usize].store(0, Ordering::SeqCst);
        }
        self.memfd.punch_hole(offset, len, claim)
    }
}

/// A userfaultfd, a counting shmem mapping and a CONTINUE-only region.
pub type CountingFixture = (
    Arc<Uffd>,
    Arc<BackedMapping<Counting>>,
    Region<ContinueOnly, Counting>,
);

/// A userfaultfd, a counting shmem mapping of `pages` pages and a
/// CONTINUE-only region on it.
pub fn counting_fixture(test: &str, pages: usize) -> Option<CountingFixture> {
    let uffd = open_uffd(test)?;
    let mapping = BackedMapping::whole(Arc::new(Counting::new(pages))).expect("mmap");
    // SAFETY: a fresh mapping that nothing references.
    let region = unsafe { Region::continue_only(uffd.clone(), mapping.clone()) }.expect("register");
    Some((uffd, mapping, region))
}

/// Reads one byte of any file mapping (faulting if unmapped).
pub fn touch_any<B>(mapping: &BackedMapping<B>, offset: usize) -> u8 {
    assert!(offset < mapping.len());
    // SAFETY: inside the live mapping; a registered range's read blocks
    // until a handler resolves it; no Rust reference points into it.
    unsafe { mapping.mapping().as_ptr().add(offset).read_volatile() }
}

/// Writes one byte of any file mapping.
pub fn poke_any<B>(mapping: &BackedMapping<B>, offset: usize, value: u8) {
    assert!(offset < mapping.len());
    // SAFETY: as `touch_any`.
    unsafe { mapping.mapping().as_ptr().add(offset).write_volatile(value) }
}

/// `pread` of one page of a file.
pub fn pread_page(fd: std::os::fd::BorrowedFd<'_>, offset: u64) -> Vec<u8> {
    let mut out = vec![0u8; page_size()];
    let n = rustix::io::pread(fd, &mut out, offset).expect("pread");
    assert_eq!(n, out.len());
    out
}
