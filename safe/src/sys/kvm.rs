//! The KVM ioctls of the crate, typed: each function issues one request
//! through [`ioctl_mut`] or [`ioctl_val`] and returns the errno untouched.
//! Callers name the operation in their errors.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2;

use super::{ioctl_mut, ioctl_val};
use crate::error::Errno;

/// Takes ownership of a file descriptor the kernel just returned.
fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` is the non-negative result of an ioctl that creates a
    // new file descriptor (KVM_CREATE_VM, KVM_CREATE_GUEST_MEMFD); nothing
    // else in the process knows it, so this value is its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `ioctl(fd, KVM_GET_API_VERSION, 0)` on `/dev/kvm`.
pub(crate) fn get_api_version(kvm: BorrowedFd<'_>) -> Result<i32, Errno> {
    // SAFETY: KVM_GET_API_VERSION takes no argument and has no side effect.
    unsafe { ioctl_val(kvm, gmem_sys::KVM_GET_API_VERSION, 0) }
}

/// `ioctl(fd, KVM_CHECK_EXTENSION, cap)` on `/dev/kvm` or a VM.
pub(crate) fn check_extension(fd: BorrowedFd<'_>, cap: u32) -> Result<i32, Errno> {
    // SAFETY: KVM_CHECK_EXTENSION takes an integer and only reports a value.
    // On a file that is not a KVM object the request fails (ENOTTY).
    unsafe { ioctl_val(fd, gmem_sys::KVM_CHECK_EXTENSION, cap.into()) }
}

/// `ioctl(kvm, KVM_CREATE_VM, vm_type)`: a new VM file descriptor, which
/// the kernel makes close-on-exec itself.
pub(crate) fn create_vm(kvm: BorrowedFd<'_>, vm_type: u64) -> Result<OwnedFd, Errno> {
    // SAFETY: KVM_CREATE_VM takes an integer and returns a new file
    // descriptor, which `owned` takes ownership of at once.
    let fd = unsafe { ioctl_val(kvm, gmem_sys::KVM_CREATE_VM, vm_type as libc::c_ulong) }?;
    Ok(owned(fd))
}

/// `ioctl(vm, KVM_CREATE_GUEST_MEMFD, &args)`: a new guest_memfd.
///
/// Unlike the VM descriptors of `KVM_CREATE_VM`, the kernel installs it
/// without `O_CLOEXEC` (`kvm_gmem_create` takes no file flags): the caller
/// sets `FD_CLOEXEC`.
pub(crate) fn create_guest_memfd(
    vm: BorrowedFd<'_>,
    mut args: gmem_sys::kvm_create_guest_memfd,
) -> Result<OwnedFd, Errno> {
    // SAFETY: the request's argument is a `kvm_create_guest_memfd`, which
    // `args` is (a live local the kernel reads); the result is a new file
    // descriptor, which `owned` takes ownership of at once. A guest_memfd
    // is memory of its own, not of this process.
    let fd = unsafe { ioctl_mut(vm, gmem_sys::KVM_CREATE_GUEST_MEMFD, &raw mut args) }?;
    Ok(owned(fd))
}

/// `ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &region)`.
///
/// The request number is the mainline one; the posted KVM userfault layout
/// has the same size (160 bytes) and differs only in naming the first word
/// of the mainline `pad2` `userfault_bitmap`, which mainline kernels ignore.
///
/// # Safety
///
/// From the moment this succeeds until the slot is deleted or the VM is
/// closed, the guest (and KVM on its behalf) reads and writes the memory at
/// `region.userspace_addr .. + region.memory_size`, and KVM reads the
/// bitmap at `region.userfault_bitmap` when `KVM_MEM_USERFAULT` is set.
/// The caller must keep both mapped for that long, and the guest memory
/// must not be memory that Rust code holds references into.
pub(crate) unsafe fn set_user_memory_region2(
    vm: BorrowedFd<'_>,
    region: &kvm_userspace_memory_region2,
) -> Result<(), Errno> {
    let mut arg = *region;
    // SAFETY: the argument is a 160-byte `kvm_userspace_memory_region2`,
    // the size the request number encodes, and the kernel only reads it.
    // What the new slot lets the guest touch is the caller's contract above.
    unsafe { ioctl_mut(vm, gmem_sys::KVM_SET_USER_MEMORY_REGION2, &raw mut arg) }.map(drop)
}

/// `KVM_SET_USER_MEMORY_REGION`: `_IOW(KVMIO, 0x46, struct
/// kvm_userspace_memory_region)` (`<linux/kvm.h>`, every kernel with KVM).
/// The 32-byte layout is `kvm_bindings::kvm_userspace_memory_region`.
pub(crate) const KVM_SET_USER_MEMORY_REGION: u32 = gmem_sys::ioctl::iow(
    gmem_sys::KVMIO,
    0x46,
    std::mem::size_of::<kvm_bindings::kvm_userspace_memory_region>(),
);

/// `ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region)`: the original memslot
/// ioctl, for kernels before `KVM_SET_USER_MEMORY_REGION2` (Linux 6.8). It
/// has no guest_memfd and no userfault bitmap.
///
/// # Safety
///
/// As [`set_user_memory_region2`]: the guest (and KVM) use the memory at
/// `region.userspace_addr .. + region.memory_size` until the slot is
/// deleted or the VM closed.
pub(crate) unsafe fn set_user_memory_region(
    vm: BorrowedFd<'_>,
    region: &kvm_bindings::kvm_userspace_memory_region,
) -> Result<(), Errno> {
    let mut arg = *region;
    // SAFETY: the argument is a 32-byte `kvm_userspace_memory_region`, the
    // size the request number encodes, and the kernel only reads it. What
    // the new slot lets the guest touch is the caller's contract above.
    unsafe { ioctl_mut(vm, KVM_SET_USER_MEMORY_REGION, &raw mut arg) }.map(drop)
}
