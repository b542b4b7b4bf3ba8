//! The `userfault::kvm` module against the real kernel: a vCPU running on
//! guest_memfd memory, guest_memfd and memslot behaviour and refusals,
//! the out-of-tree series' refusals surfacing as `Unsupported` with the
//! kernel's errno, memory-fault decoding, and stage-2 fault resolution with
//! a memfd backing.
//!
//! vCPUs and the VM come from kvm-ioctls, so every test also shows that
//! the crate works on a VM it does not own.

use std::os::fd::{AsRawFd, BorrowedFd};

use kvm_ioctls::{Kvm, VmFd};
use userfault::kvm::{GmemFlags, GuestMemfd};

// A real-mode guest that sums bytes of its memory and reports the sum
// through an I/O port.
mod guest;

// guest_memfd creation, mapping, punch-hole and memslots on this kernel.
mod gmem;

// A vCPU whose memory is a guest_memfd memslot.
mod vcpu;

// A vCPU demand-paged through userfaultfd: COPY, and write() + CONTINUE.
mod demand;

// Descriptors that are not KVM's, refused where a KVM one is needed.
mod foreign_fds;

// What this kernel refuses (guest_memfd write(), userfaultfd on
// guest_memfd, KVM_MEM_USERFAULT) and how the crate reports it.
mod refusals;

// KVM_EXIT_MEMORY_FAULT decoding from kvm_run bytes.
mod exit;

// Stage-2 resolution ordering and concurrency with a memfd backing.
mod stage2;

pub const PAGE: usize = 4096;

/// `/dev/kvm` and a default-type VM, both from kvm-ioctls.
pub fn open_vm() -> Result<(Kvm, VmFd), String> {
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let vm = kvm
        .create_vm()
        .map_err(|e| format!("KVM_CREATE_VM failed: {e}"))?;
    Ok((kvm, vm))
}

/// The VM's file descriptor, for the crate's `impl AsFd` parameters.
pub fn borrow(vm: &VmFd) -> BorrowedFd<'_> {
    // SAFETY: `vm` owns the descriptor and keeps it open for as long as the
    // returned value borrows `vm`.
    unsafe { BorrowedFd::borrow_raw(vm.as_raw_fd()) }
}

/// A `MMAP | INIT_SHARED` guest_memfd of `size` bytes for `vm`.
pub fn shared_gmem(vm: BorrowedFd<'_>, size: u64) -> Result<GuestMemfd, String> {
    GuestMemfd::create(vm, size, GmemFlags::MMAP | GmemFlags::INIT_SHARED)
        .map_err(|e| format!("no MMAP|INIT_SHARED guest_memfd: {e}"))
}

/// Copies `data` into a mapping at `offset`.
pub fn poke(map: &userfault::mem::Mapping, offset: usize, data: &[u8]) {
    assert!(map.contains(map.addr() + offset, data.len()));
    // SAFETY: the range lies inside the live mapping (checked above), which
    // no Rust reference points into.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), map.as_ptr().add(offset), data.len()) };
}

/// Copies `len` bytes out of a mapping at `offset`.
pub fn peek(map: &userfault::mem::Mapping, offset: usize, len: usize) -> Vec<u8> {
    assert!(map.contains(map.addr() + offset, len));
    let mut out = vec![0; len];
    // SAFETY: the range lies inside the live mapping (checked above).
    unsafe { std::ptr::copy_nonoverlapping(map.as_ptr().add(offset), out.as_mut_ptr(), len) };
    out
}

/// `pread` of `len` bytes at `offset`.
pub fn pread(fd: BorrowedFd<'_>, offset: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    // SAFETY: reads at most `len` bytes into a live buffer of that size.
    let n = unsafe { libc::pread(fd.as_raw_fd(), out.as_mut_ptr().cast(), len, offset as i64) };
    assert_eq!(
        n,
        len as isize,
        "pread: {}",
        std::io::Error::last_os_error()
    );
    out
}
