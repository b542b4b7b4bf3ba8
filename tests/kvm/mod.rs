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

// The posted series executed: guest_memfd served through the typed layer,
// CONTINUE-only guest_memfd, a vCPU taking KVM userfault exits.
mod series;

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

/// A `MMAP | INIT_SHARED` guest_memfd of `size` bytes for `vm`, or `None`
/// after skipping `test`: charged to `gmem` when the kernel creates no
/// guest_memfd at all, to `gmem-mmap` when it creates them but not
/// mappable ones (Linux 6.8 to 6.17).
pub fn need_shared_gmem(test: &str, vm: BorrowedFd<'_>, size: u64) -> Option<GuestMemfd> {
    if let Err(e) = GuestMemfd::create(vm, size, GmemFlags::empty()) {
        crate::util::skip(test, "gmem", &format!("no guest_memfd: {e}"));
        return None;
    }
    match shared_gmem(vm, size) {
        Ok(gmem) => Some(gmem),
        Err(reason) => {
            crate::util::skip(test, "gmem-mmap", &reason);
            None
        }
    }
}

/// True when a guest_memfd is accepted as a memslot of a default-type VM
/// (tried on a scratch VM); otherwise skips `test`, charged to `gmem-slot`
/// (or to `gmem` / `kvm-memslot2` when what it builds on is missing).
pub fn need_gmem_slot(test: &str) -> bool {
    // The slot's memory first, so that it is dropped after the VM.
    let memory =
        userfault::mem::Mapping::anonymous(PAGE, userfault::mem::Sharing::Private).expect("mmap");
    let Ok((_kvm, vm_fd)) = open_vm() else {
        crate::util::skip(test, "kvm", "no VM");
        return false;
    };
    let vm = borrow(&vm_fd);
    let memory2 = userfault::kvm::check_extension(vm, gmem_sys::KVM_CAP_USER_MEMORY2).unwrap_or(0);
    if memory2 <= 0 {
        crate::util::skip(
            test,
            "kvm-memslot2",
            "KVM_CAP_USER_MEMORY2 is 0 on the VM: no KVM_SET_USER_MEMORY_REGION2 (Linux 6.8)",
        );
        return false;
    }
    let gmem = match GuestMemfd::create(vm, PAGE as u64, GmemFlags::empty()) {
        Ok(g) => g,
        Err(e) => {
            crate::util::skip(test, "gmem", &format!("no guest_memfd: {e}"));
            return false;
        }
    };
    let slot = userfault::kvm::Memslot::from_mapping(0, 0, &memory).guest_memfd(&gmem, 0);
    // SAFETY: the scratch VM has no vCPU, and the slot is deleted below
    // (or was never created) while `memory` and `gmem` live.
    let accepted = match unsafe { slot.set(vm) } {
        Ok(()) => {
            userfault::kvm::Memslot::delete(vm, 0, 0).expect("delete the scratch slot");
            true
        }
        Err(e) => {
            crate::util::skip(
                test,
                "gmem-slot",
                &format!("the default VM type takes no guest_memfd memslot: {e}"),
            );
            false
        }
    };
    drop(vm_fd);
    accepted
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
