//! The memfds the crate creates keep their size: shrinking or growing them
//! through the descriptor fails, and a fill never re-extends them.

use std::os::fd::AsFd;
use std::sync::Arc;

use userfault::backing::{Backing, HugePageSize, Memfd};
use userfault::resolve::{Discard, PageState};

use super::{hugetlb_available, page_size, source_page};
use crate::util::require;

/// `ftruncate` to a smaller and a larger size fails with `EPERM`; filling
/// the last page (through the file's page state) keeps the size; the file's
/// size is what it was created with.
fn size_is_sealed(memfd: Memfd) -> Arc<PageState<Memfd>> {
    let size = memfd.size();
    let page = memfd.page_size() as u64;
    let st_size = || rustix::fs::fstat(memfd.as_fd()).expect("fstat").st_size as u64;
    assert_eq!(
        rustix::fs::ftruncate(memfd.as_fd(), size - page),
        Err(rustix::io::Errno::PERM),
        "shrinking a memfd the crate created"
    );
    assert_eq!(
        rustix::fs::ftruncate(memfd.as_fd(), size + page),
        Err(rustix::io::Errno::PERM),
        "growing a memfd the crate created"
    );
    assert_eq!(st_size(), size);
    let seals = rustix::fs::fcntl_get_seals(memfd.as_fd()).expect("F_GET_SEALS");
    assert!(
        seals.contains(rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW),
        "{seals:?}"
    );
    let state = PageState::new(Arc::new(memfd)).expect("page state");
    let memfd = state.backing();
    let st_size = || rustix::fs::fstat(memfd.as_fd()).expect("fstat").st_size as u64;
    let data = source_page(size - page, page as usize);
    state
        .populate(size - page, &data)
        .expect("fill the last page");
    assert_eq!(st_size(), size, "a fill changed the file's size");
    let e = state.populate(size, &data).expect_err("fill past the end");
    assert!(e.to_string().contains("outside the file"), "{e}");
    assert_eq!(st_size(), size);
    state
}

#[test]
fn shmem_memfds_cannot_be_shrunk() {
    let memfd = Memfd::shmem(c"userfault-sealed", 4 * page_size() as u64).expect("memfd_create");
    let state = size_is_sealed(memfd);
    // Punching a hole is still allowed: it drops pages, not the size.
    state
        .discard(0, page_size() as u64, Discard::Zero)
        .expect("punch a hole into a sealed memfd");
}

#[test]
fn hugetlb_memfds_cannot_be_shrunk() {
    const TEST: &str = "hugetlb_memfds_cannot_be_shrunk";
    require!(TEST, "hugetlb", hugetlb_available(1));
    let size = 2 * HugePageSize::Size2M.bytes() as u64;
    let memfd =
        Memfd::hugetlb(c"userfault-sealed", size, HugePageSize::Size2M).expect("memfd_create");
    size_is_sealed(memfd);
}
