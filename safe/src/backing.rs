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

use crate::error::{Errno, Error, Result};
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

pub(crate) fn rustix_errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
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
/// A hugetlb memfd is filled by allocating the huge page (`fallocate`) and
/// copying through a private alias mapping, because hugetlbfs has no
/// `write()`. Unlike `pwrite` into shmem, that copy does not hold the page
/// locked: a MINOR fault on the page from another thread may see it before
/// the copy completes. Let only the fault handler fill hugetlb pages.
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
    /// `memfd_create(name, MFD_CLOEXEC)` + `ftruncate(size)`: a shmem file.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `size` is not a multiple of the page size;
    /// the errno of `memfd_create` or `ftruncate` otherwise.
    pub fn shmem(name: &CStr, size: u64) -> Result<Memfd> {
        let page = rustix::param::page_size();
        Self::create(name, size, rustix::fs::MemfdFlags::CLOEXEC, page, false)
    }

    /// `memfd_create(name, MFD_CLOEXEC | MFD_HUGETLB | MFD_HUGE_…)` +
    /// `ftruncate(size)`: a hugetlbfs file. Huge pages must be reserved
    /// (`vm.nr_hugepages`) before its pages are touched.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `size` is not a multiple of the huge page
    /// size; the errno of `memfd_create`, `ftruncate` or `mmap` otherwise.
    pub fn hugetlb(name: &CStr, size: u64, page: HugePageSize) -> Result<Memfd> {
        use rustix::fs::MemfdFlags;
        let size_flag = match page {
            HugePageSize::Size2M => MemfdFlags::HUGE_2MB,
            HugePageSize::Size1G => MemfdFlags::HUGE_1GB,
        };
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::HUGETLB | size_flag;
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
