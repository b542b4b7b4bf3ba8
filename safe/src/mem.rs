//! Memory mappings (`mmap(2)`) owned by a value and unmapped on drop.
//!
//! Guest memory is mapped here: anonymous memory, a memfd, or a
//! guest_memfd. A [`Mapping`] only records an address range the process
//! owns; it never hands out references into it, because once a range is
//! registered with userfaultfd or given to a guest, other parties change
//! its contents behind Rust's back.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::error::{Errno, Error, Result};

/// Private (copy-on-write) or shared mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// `MAP_PRIVATE`: writes are private to this mapping.
    Private,
    /// `MAP_SHARED`: writes go to the underlying object.
    Shared,
}

/// A region of the address space mapped with `mmap(2)` and unmapped when
/// dropped.
///
/// # Moving the range
///
/// A `Mapping` owns the addresses it was given, not whatever is mapped
/// there later: its drop is `munmap(addr, len)` of those addresses. A VMM
/// that moves the memory with `mremap(2)` (a userfaultfd reports that as
/// `UFFD_EVENT_REMAP`) or maps over part of it owns the new layout itself:
/// it must not drop the `Mapping` afterwards, which would unmap whatever
/// now occupies the old range, but unmap the pieces where they are and
/// leak the value (`std::mem::forget`).
#[derive(Debug)]
pub struct Mapping {
    addr: *mut u8,
    len: usize,
}

// SAFETY: a Mapping is an address range, not data; it is never dereferenced
// through `&self`, so sharing or moving it between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_ANONYMOUS|…)`: fresh
    /// anonymous memory (shared anonymous memory is shmem).
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a zero length; the `mmap` errno otherwise.
    pub fn anonymous(len: usize, sharing: Sharing) -> Result<Mapping> {
        let flags = libc::MAP_ANONYMOUS | sharing_flag(sharing);
        Self::map(len, flags, None, 0)
    }

    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, flags, fd, offset)`: maps
    /// `len` bytes of a file from `offset`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a zero length; the `mmap` errno otherwise
    /// (`ENODEV`: the file cannot be mapped; `EINVAL`: e.g. a private
    /// mapping of a file that allows only shared ones, or an unaligned
    /// offset).
    pub fn file(fd: BorrowedFd<'_>, offset: u64, len: usize, sharing: Sharing) -> Result<Mapping> {
        Self::map(len, sharing_flag(sharing), Some(fd), offset)
    }

    fn map(
        len: usize,
        flags: libc::c_int,
        fd: Option<BorrowedFd<'_>>,
        offset: u64,
    ) -> Result<Mapping> {
        if len == 0 {
            return Err(Error::invalid("mmap", "length is zero"));
        }
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| Error::invalid("mmap", format!("offset {offset:#x} is out of range")))?;
        let raw_fd = fd.map_or(-1, |fd| fd.as_raw_fd());
        // SAFETY: a new mapping at an address of the kernel's choosing; no
        // existing memory is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw_fd,
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(Error::os("mmap", Errno::last()));
        }
        Ok(Mapping {
            addr: addr.cast(),
            len,
        })
    }

    /// The first address.
    pub fn addr(&self) -> usize {
        self.addr as usize
    }

    /// The first address as a pointer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `[addr, addr + len)` lies inside the mapping.
    pub fn contains(&self, addr: usize, len: usize) -> bool {
        addr >= self.addr()
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.addr() + self.len)
    }
}

fn sharing_flag(sharing: Sharing) -> libc::c_int {
    match sharing {
        Sharing::Private => libc::MAP_PRIVATE,
        Sharing::Shared => libc::MAP_SHARED,
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range this value mapped and owns.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}
