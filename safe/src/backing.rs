//! Files whose page cache can be filled from user space: the backings of
//! CONTINUE-only ranges and of KVM userfault memslots.
//!
//! A [`Backing`] is a file mapped as guest memory. Filling its page cache
//! (for shmem and guest_memfd with `write()`: `pwrite(2)`; for hugetlbfs,
//! which has no `write()`, a copy through a second, never-registered shared
//! mapping) makes data visible to every mapping of the file and to KVM
//! without raising a userfaultfd event; `UFFDIO_CONTINUE` then maps the
//! cached page into a registered range and wakes the faulting thread.
//!
//! | backing | fill by | page size |
//! |---|---|---|
//! | [`Memfd`] shmem (`memfd_create`) | `pwrite` | base page |
//! | [`Memfd`] hugetlb (`MFD_HUGETLB`) | copy through an alias mapping | huge page |
//! | `GuestMemfd` (module `kvm`) | `pwrite`, where the kernel has guest_memfd `write()` | base page |
//!
//! Fills and hole punches through this trait take a [`Claimed`], which only
//! the file's [`PageState`] makes: every fill the crate makes of a file in
//! use is ordered with every other path that fills or maps its pages.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use crate::resolve::PageState;

use crate::error::{Errno, Error, Result, rustix_errno};
use crate::mem::{Mapping, Sharing};

/// Proof that the caller holds the [`PageState`] claim on the pages a
/// [`Backing::fill`] or [`Backing::punch_hole`] touches. Only the page state
/// makes one; a `Backing` that wraps another passes its own on.
#[derive(Debug, Clone, Copy)]
pub struct Claimed<'a> {
    _private: PhantomData<&'a ()>,
}

impl Claimed<'_> {
    pub(crate) fn new() -> Self {
        Claimed {
            _private: PhantomData,
        }
    }
}

/// A file whose page cache user space can fill, mapped as guest memory.
///
/// Implemented by [`Memfd`] and by the `kvm` module's guest_memfd; the
/// resolution code is written against this trait only. Its fills are made
/// by the file's [`PageState`] (they need a [`Claimed`]), so a fill never
/// races with another path's fill or mapping of the same page.
pub trait Backing: AsFd + Send + Sync {
    /// Size of the file in bytes.
    fn size(&self) -> u64;

    /// The size of the file's pages: the unit of filling, of
    /// `UFFDIO_CONTINUE`, and of faults.
    fn page_size(&self) -> usize;

    /// Puts `data` into the page cache at `offset` (both multiples of
    /// [`page_size`](Backing::page_size)), completing short writes and
    /// retrying `EINTR`. Existing pages are overwritten.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for an unaligned or out-of-range request;
    /// `Unsupported` when the kernel cannot fill this file from user space;
    /// the errno of the write otherwise.
    fn fill(&self, offset: u64, data: &[u8], claim: Claimed<'_>) -> Result<()>;

    /// `fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset,
    /// len)`: drops pages from the page cache (the next access faults as
    /// MISSING again).
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for an unaligned or out-of-range request; the
    /// `fallocate` errno otherwise.
    fn punch_hole(&self, offset: u64, len: u64, claim: Claimed<'_>) -> Result<()> {
        let _ = claim;
        check_span(self, "fallocate", offset, len)?;
        let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        rustix::fs::fallocate(self.as_fd(), flags, offset, len)
            .map_err(|e| Error::os("fallocate", rustix_errno(e)))
    }
}

/// Checks that `[offset, offset + len)` is page-aligned and inside the file.
pub(crate) fn check_span<B: Backing + ?Sized>(
    b: &B,
    op: &'static str,
    offset: u64,
    len: u64,
) -> Result<()> {
    let page = b.page_size() as u64;
    if !offset.is_multiple_of(page) || !len.is_multiple_of(page) {
        return Err(Error::invalid(
            op,
            format!(
                "offset {offset:#x} and length {len:#x} must be multiples of the page size {page:#x}"
            ),
        ));
    }
    match offset.checked_add(len) {
        Some(end) if end <= b.size() => Ok(()),
        _ => Err(Error::invalid(
            op,
            format!(
                "range {offset:#x}+{len:#x} lies outside the file of {:#x} bytes",
                b.size()
            ),
        )),
    }
}

/// `pwrite(2)` until every byte is written; `EINTR` is retried and a short
/// write continues where it stopped.
pub(crate) fn pwrite_all(
    fd: BorrowedFd<'_>,
    mut offset: u64,
    mut data: &[u8],
) -> Result<(), Errno> {
    while !data.is_empty() {
        match rustix::io::pwrite(fd, data, offset) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(rustix_errno(e)),
        }
    }
    Ok(())
}

/// Huge page sizes a hugetlb [`Memfd`] can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HugePageSize {
    /// 2 MiB pages (`MFD_HUGE_2MB`).
    Size2M,
    /// 1 GiB pages (`MFD_HUGE_1GB`).
    Size1G,
}

impl HugePageSize {
    /// The size in bytes.
    pub fn bytes(self) -> usize {
        match self {
            HugePageSize::Size2M => 2 << 20,
            HugePageSize::Size1G => 1 << 30,
        }
    }
}

/// A memfd (`memfd_create(2)`): shmem, or hugetlbfs with huge pages.
///
/// Its size is sealed (`F_SEAL_SHRINK | F_SEAL_GROW`): `ftruncate` through
/// [`as_fd`](AsFd::as_fd) fails with `EPERM`, so the file always has the
/// size it was created with, every fill lies inside it, and no mapping of
/// it can lose its end. Other seals (`F_SEAL_WRITE`) may still be added by
/// the holder of the descriptor; fills then fail with `EPERM`.
///
/// A hugetlb memfd is filled by allocating the huge page (`fallocate`) and
/// copying through a private alias mapping, because hugetlbfs has no
/// `write()`. Unlike `pwrite` into shmem, that copy does not hold the page
/// locked: the page is in the page cache (zeroed) before the copy is done,
/// and a MINOR fault on it could map it half-filled. Fills therefore go
/// through the file's [`PageState`], which keeps every other path off a
/// page while it is filled, and the copies themselves are serialised by a
/// lock of the memfd.
#[derive(Debug)]
pub struct Memfd {
    fd: OwnedFd,
    size: u64,
    page_size: usize,
    /// hugetlbfs has no `write()`; pages are filled through this shared
    /// mapping, which is never registered with userfaultfd.
    alias: Option<(Mapping, Mutex<()>)>,
}

impl Memfd {
    /// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)` +
    /// `ftruncate(size)` + `fcntl(F_ADD_SEALS, F_SEAL_SHRINK |
    /// F_SEAL_GROW)`: a shmem file whose size cannot change.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `size` is not a multiple of the page size;
    /// the errno of `memfd_create`, `ftruncate` or `fcntl` otherwise.
    pub fn shmem(name: &CStr, size: u64) -> Result<Memfd> {
        let page = crate::sys::page_size();
        let flags = rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING;
        Self::create(name, size, flags, page, false)
    }

    /// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB |
    /// MFD_HUGE_…)` + `ftruncate(size)` + `fcntl(F_ADD_SEALS, F_SEAL_SHRINK
    /// | F_SEAL_GROW)`: a hugetlbfs file whose size cannot change. Huge
    /// pages must be reserved (`vm.nr_hugepages`) before its pages are
    /// touched.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `size` is not a multiple of the huge page
    /// size; the errno of `memfd_create`, `ftruncate`, `fcntl` or `mmap`
    /// otherwise.
    pub fn hugetlb(name: &CStr, size: u64, page: HugePageSize) -> Result<Memfd> {
        use rustix::fs::MemfdFlags;
        let size_flag = match page {
            HugePageSize::Size2M => MemfdFlags::HUGE_2MB,
            HugePageSize::Size1G => MemfdFlags::HUGE_1GB,
        };
        let flags =
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::HUGETLB | size_flag;
        Self::create(name, size, flags, page.bytes(), true)
    }

    fn create(
        name: &CStr,
        size: u64,
        flags: rustix::fs::MemfdFlags,
        page_size: usize,
        hugetlb: bool,
    ) -> Result<Memfd> {
        if size == 0 || !size.is_multiple_of(page_size as u64) {
            return Err(Error::invalid(
                "memfd_create",
                format!(
                    "size {size:#x} must be a non-zero multiple of the page size {page_size:#x}"
                ),
            ));
        }
        let fd = rustix::fs::memfd_create(name, flags).map_err(|e| {
            let errno = rustix_errno(e);
            if hugetlb && errno == Errno::EINVAL {
                Error::os_hint(
                    "memfd_create",
                    errno,
                    "this kernel or page size has no hugetlbfs support",
                )
            } else {
                Error::os("memfd_create", errno)
            }
        })?;
        rustix::fs::ftruncate(&fd, size).map_err(|e| Error::os("ftruncate", rustix_errno(e)))?;
        // The size is fixed from here on: a fill never writes past it, and a
        // file shrunk behind the Memfd's back would make a fill re-extend it
        // and a touch of a mapping past the new end raise SIGBUS.
        rustix::fs::fcntl_add_seals(
            &fd,
            rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW,
        )
        .map_err(|e| Error::os("fcntl(F_ADD_SEALS)", rustix_errno(e)))?;
        let alias = if hugetlb {
            let len = usize::try_from(size)
                .map_err(|_| Error::invalid("mmap", "size exceeds the address space"))?;
            Some((
                Mapping::file(fd.as_fd(), 0, len, Sharing::Shared)?,
                Mutex::new(()),
            ))
        } else {
            None
        };
        Ok(Memfd {
            fd,
            size,
            page_size,
            alias,
        })
    }

    /// True for a hugetlbfs memfd.
    pub fn is_hugetlb(&self) -> bool {
        self.alias.is_some()
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Memfd> for OwnedFd {
    fn from(m: Memfd) -> OwnedFd {
        m.fd
    }
}

impl Backing for Memfd {
    fn size(&self) -> u64 {
        self.size
    }

    fn page_size(&self) -> usize {
        self.page_size
    }

    fn fill(&self, offset: u64, data: &[u8], _claim: Claimed<'_>) -> Result<()> {
        let op = if self.alias.is_some() {
            "fill (hugetlb alias copy)"
        } else {
            "pwrite"
        };
        check_span(self, op, offset, data.len() as u64)?;
        match &self.alias {
            None => pwrite_all(self.fd.as_fd(), offset, data).map_err(|e| Error::os("pwrite", e)),
            Some((alias, lock)) => {
                let _copying = lock.lock().unwrap_or_else(|p| p.into_inner());
                // Allocate the huge pages first: with none left in the pool
                // this fails with ENOSPC, where touching the alias mapping
                // would raise SIGBUS.
                rustix::fs::fallocate(
                    self.fd.as_fd(),
                    rustix::fs::FallocateFlags::KEEP_SIZE,
                    offset,
                    data.len() as u64,
                )
                .map_err(|e| {
                    let errno = rustix_errno(e);
                    if errno == Errno::ENOSPC {
                        Error::os_hint(
                            "fallocate",
                            errno,
                            "no free huge pages (raise vm.nr_hugepages)",
                        )
                    } else {
                        Error::os("fallocate", errno)
                    }
                })?;
                // check_span bounded offset + len by the file size, which is
                // the alias mapping's length.
                let at = offset as usize;
                // SAFETY: `alias` maps the whole file shared, read-write; the
                // destination lies inside it (checked above), nothing in
                // the process holds a reference into it (it is private to
                // this Memfd and never registered with userfaultfd), and
                // `data` is a separate live buffer, so the ranges do not
                // overlap. Copies through the alias are serialised by
                // `lock`, so no two threads store to it at once.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        alias.as_ptr().add(at),
                        data.len(),
                    );
                }
                Ok(())
            }
        }
    }
}

/// A shared mapping of part of a [`Backing`], made from the file's
/// [`PageState`]: the one place where addresses in guest memory and offsets
/// in the backing file are converted. Any number of mappings of one file
/// share its state.
///
/// Offsets and addresses are checked: an address outside the mapping or an
/// offset outside the mapped part of the file is an error, never a wrapped
/// or truncated number.
///
/// Dropping the last reference unmaps the addresses it was mapped at, as a
/// [`Mapping`] does (see [moving the range](Mapping#moving-the-range)):
/// after the VMM moves it with `mremap(2)`, leak it rather than drop it.
#[derive(Debug)]
pub struct BackedMapping<B> {
    state: Arc<PageState<B>>,
    mapping: Mapping,
    offset: u64,
}

impl<B: Backing> BackedMapping<B> {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, backing, offset)`:
    /// maps `len` bytes of the file of `state` from `offset`, shared.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for an unaligned or out-of-range span; the `mmap`
    /// errno otherwise (`ENODEV` for a guest_memfd created without
    /// `GUEST_MEMFD_FLAG_MMAP`).
    pub fn new(state: &Arc<PageState<B>>, offset: u64, len: usize) -> Result<BackedMapping<B>> {
        let backing = state.backing();
        check_span(&**backing, "mmap", offset, len as u64)?;
        let mapping = Mapping::file(backing.as_fd(), offset, len, Sharing::Shared)?;
        Ok(BackedMapping {
            state: state.clone(),
            mapping,
            offset,
        })
    }

    /// A new page state for `backing` and a mapping of the whole file:
    /// [`PageState::new`] then [`BackedMapping::new`].
    ///
    /// # Errors
    ///
    /// As those two.
    pub fn whole(backing: Arc<B>) -> Result<Arc<BackedMapping<B>>> {
        let len = usize::try_from(backing.size())
            .map_err(|_| Error::invalid("mmap", "the file exceeds the address space"))?;
        let state = PageState::new(backing)?;
        Ok(Arc::new(BackedMapping::new(&state, 0, len)?))
    }
}

impl<B> BackedMapping<B> {
    /// The backing file.
    pub fn backing(&self) -> &Arc<B> {
        self.state.backing()
    }

    /// The file's page state, shared by every mapping of the file.
    pub fn state(&self) -> &Arc<PageState<B>> {
        &self.state
    }

    /// The mapping.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// First address of the mapping.
    pub fn addr(&self) -> usize {
        self.mapping.addr()
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.mapping.len()
    }

    /// Always false: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        self.mapping.is_empty()
    }

    /// File offset the mapping starts at.
    pub fn file_offset(&self) -> u64 {
        self.offset
    }

    /// The file offset that `addr` maps.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `addr` is outside the mapping.
    pub fn offset_of(&self, addr: usize) -> Result<u64> {
        if !self.mapping.contains(addr, 1) {
            return Err(Error::invalid(
                "offset_of",
                format!(
                    "address {addr:#x} is outside the mapping {:#x}+{:#x}",
                    self.addr(),
                    self.len()
                ),
            ));
        }
        Ok(self.offset + (addr - self.addr()) as u64)
    }

    /// The address at which file offset `offset` is mapped.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `offset` is outside the mapped part of the file.
    pub fn addr_of(&self, offset: u64) -> Result<usize> {
        match offset.checked_sub(self.offset) {
            Some(delta) if delta < self.len() as u64 => Ok(self.addr() + delta as usize),
            _ => Err(Error::invalid(
                "addr_of",
                format!(
                    "file offset {offset:#x} is outside the mapped part {:#x}+{:#x}",
                    self.offset,
                    self.len()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn offsets_and_addresses_convert_and_are_checked() {
        let page = crate::sys::page_size() as u64;
        let memfd = Arc::new(Memfd::shmem(c"offsets", 8 * page).expect("memfd"));
        let state = PageState::new(memfd).expect("state");
        let m = BackedMapping::new(&state, 2 * page, 4 * page as usize).expect("map");
        assert_eq!(m.offset_of(m.addr()).expect("start"), 2 * page);
        assert_eq!(
            m.offset_of(m.addr() + page as usize + 7).expect("inside"),
            3 * page + 7
        );
        assert_eq!(
            m.addr_of(5 * page).expect("last page"),
            m.addr() + 3 * page as usize
        );
        assert!(m.offset_of(m.addr() + m.len()).is_err());
        assert!(m.offset_of(m.addr() - 1).is_err());
        assert!(m.addr_of(page).is_err());
        assert!(m.addr_of(6 * page).is_err());
        let err = BackedMapping::new(m.state(), 6 * page, 4 * page as usize).expect_err("past end");
        assert!(err.to_string().contains("outside the file"), "{err}");
        let err = BackedMapping::new(m.state(), 1, page as usize).expect_err("unaligned");
        assert!(
            err.to_string().contains("multiples of the page size"),
            "{err}"
        );
    }

    #[test]
    fn shmem_fill_lands_in_the_page_cache() {
        let page = crate::sys::page_size();
        let memfd = Memfd::shmem(c"fill", 2 * page as u64).expect("memfd");
        let data: Vec<u8> = (0..page).map(|i| (i % 251) as u8).collect();
        memfd
            .fill(page as u64, &data, Claimed::new())
            .expect("fill");
        let mut back = vec![0; page];
        rustix::io::pread(&memfd, &mut back, page as u64).expect("pread");
        assert_eq!(back, data);
        assert!(memfd.fill(1, &data, Claimed::new()).is_err());
        assert!(memfd.fill(2 * page as u64, &data, Claimed::new()).is_err());
    }

    #[test]
    fn a_file_has_one_page_state() {
        let page = crate::sys::page_size() as u64;
        let memfd = Arc::new(Memfd::shmem(c"one-state", 4 * page).expect("memfd"));
        let state = PageState::new(memfd.clone()).expect("state");
        let e = PageState::new(memfd.clone()).expect_err("a second state");
        assert!(e.to_string().contains("already has a page state"), "{e}");
        drop(state);
        PageState::new(memfd).expect("a state again once the first is gone");
    }
}
