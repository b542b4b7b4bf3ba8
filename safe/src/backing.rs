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

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::error::{Errno, Error, Result, rustix_errno};
use crate::mem::{Mapping, Sharing};

/// A file whose page cache user space can fill, mapped as guest memory.
///
/// Implemented by [`Memfd`] and by the `kvm` module's guest_memfd; the
/// resolution code is written against this trait only.
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
    fn fill(&self, offset: u64, data: &[u8]) -> Result<()>;

    /// `fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset,
    /// len)`: drops pages from the page cache (the next access faults as
    /// MISSING again).
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for an unaligned or out-of-range request; the
    /// `fallocate` errno otherwise.
    fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
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
/// and a MINOR fault on it could map it half-filled. A
/// [`Region`](crate::resolve::Region) serialises its own fills and MINOR
/// mappings per page; do not fill a hugetlb memfd behind its back while the
/// range is in use.
#[derive(Debug)]
pub struct Memfd {
    fd: OwnedFd,
    size: u64,
    page_size: usize,
    /// hugetlbfs has no `write()`; pages are filled through this shared
    /// mapping, which is never registered with userfaultfd.
    alias: Option<Mapping>,
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
        let page = rustix::param::page_size();
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
            Some(Mapping::file(fd.as_fd(), 0, len, Sharing::Shared)?)
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

    fn fill(&self, offset: u64, data: &[u8]) -> Result<()> {
        let op = if self.alias.is_some() {
            "fill (hugetlb alias copy)"
        } else {
            "pwrite"
        };
        check_span(self, op, offset, data.len() as u64)?;
        match &self.alias {
            None => pwrite_all(self.fd.as_fd(), offset, data).map_err(|e| Error::os("pwrite", e)),
            Some(alias) => {
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
                // overlap.
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

/// A shared mapping of part of a [`Backing`]: the one place where addresses
/// in guest memory and offsets in the backing file are converted.
///
/// Offsets and addresses are checked: an address outside the mapping or an
/// offset outside the mapped part of the file is an error, never a wrapped
/// or truncated number.
#[derive(Debug)]
pub struct BackedMapping<B> {
    backing: std::sync::Arc<B>,
    mapping: Mapping,
    offset: u64,
}

impl<B: Backing> BackedMapping<B> {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, backing, offset)`:
    /// maps `len` bytes of `backing` from `offset`, shared.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for an unaligned or out-of-range span; the `mmap`
    /// errno otherwise (`ENODEV` for a guest_memfd created without
    /// `GUEST_MEMFD_FLAG_MMAP`).
    pub fn new(backing: std::sync::Arc<B>, offset: u64, len: usize) -> Result<BackedMapping<B>> {
        check_span(&*backing, "mmap", offset, len as u64)?;
        let mapping = Mapping::file(backing.as_fd(), offset, len, Sharing::Shared)?;
        Ok(BackedMapping {
            backing,
            mapping,
            offset,
        })
    }

    /// The backing file.
    pub fn backing(&self) -> &std::sync::Arc<B> {
        &self.backing
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
        let page = rustix::param::page_size() as u64;
        let memfd = Arc::new(Memfd::shmem(c"offsets", 8 * page).expect("memfd"));
        let m = BackedMapping::new(memfd, 2 * page, 4 * page as usize).expect("map");
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
        let err = BackedMapping::new(m.backing().clone(), 6 * page, 4 * page as usize)
            .expect_err("past end");
        assert!(err.to_string().contains("outside the file"), "{err}");
        let err = BackedMapping::new(m.backing().clone(), 1, page as usize).expect_err("unaligned");
        assert!(
            err.to_string().contains("multiples of the page size"),
            "{err}"
        );
    }

    #[test]
    fn shmem_fill_lands_in_the_page_cache() {
        let page = rustix::param::page_size();
        let memfd = Memfd::shmem(c"fill", 2 * page as u64).expect("memfd");
        let data: Vec<u8> = (0..page).map(|i| (i % 251) as u8).collect();
        memfd.fill(page as u64, &data).expect("fill");
        let mut back = vec![0; page];
        rustix::io::pread(&memfd, &mut back, page as u64).expect("pread");
        assert_eq!(back, data);
        assert!(memfd.fill(1, &data).is_err());
        assert!(memfd.fill(2 * page as u64, &data).is_err());
    }
}
