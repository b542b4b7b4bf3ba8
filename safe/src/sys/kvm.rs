//! The KVM ioctls of the crate, typed: each function issues one request
//! through [`ioctl_mut`] or [`ioctl_val`] and returns the errno untouched.
//! Callers name the operation in their errors.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2;

use super::{ioctl_mut, ioctl_val};
use crate::error::{Errno, Error, Result, rustix_errno};

/// The device number of `/dev/kvm`: the misc major 10 and `KVM_MINOR`, 232
/// (`include/linux/miscdevice.h`), fixed wherever the node is mounted.
const KVM_DEVICE: (u32, u32) = (10, 232);

/// The name the kernel gives a VM's anonymous inode (`KVM_CREATE_VM` in
/// `virt/kvm/kvm_main.c`), as `/proc/<pid>/fd` shows it.
const VM_LINK: &str = "anon_inode:kvm-vm";

/// What `/proc/thread-self/fd/<fd>` (or `/proc/self/fd/<fd>`) names `fd`:
/// a path, or `anon_inode:<name>` for an anonymous inode.
pub(crate) fn fd_link(fd: BorrowedFd<'_>) -> Result<String, Errno> {
    let raw = fd.as_raw_fd();
    let mut last = Errno::ENOENT;
    for dir in ["/proc/thread-self/fd", "/proc/self/fd"] {
        match rustix::fs::readlink(format!("{dir}/{raw}"), Vec::new()) {
            Ok(link) => return Ok(link.to_string_lossy().into_owned()),
            Err(e) => last = rustix_errno(e),
        }
    }
    Err(last)
}

/// What `fd` is, for an error message: its `/proc` link, or its number.
fn describe(fd: BorrowedFd<'_>) -> String {
    match fd_link(fd) {
        Ok(link) => format!("fd {} ({link})", fd.as_raw_fd()),
        Err(_) => format!("fd {}", fd.as_raw_fd()),
    }
}

/// Checks that `fd` is the KVM system device, `/dev/kvm` (a character
/// device 10:232, at whatever path), with `fstat`: only then is a
/// non-negative `KVM_CREATE_VM` result a new descriptor.
///
/// # Errors
///
/// `InvalidArgument` naming what `fd` is instead; the `fstat` errno.
pub(crate) fn check_kvm_device(op: &'static str, fd: BorrowedFd<'_>) -> Result<()> {
    let st = rustix::fs::fstat(fd).map_err(|e| Error::os("fstat", rustix_errno(e)))?;
    let chr =
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice;
    let dev = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    if chr && dev == KVM_DEVICE {
        return Ok(());
    }
    Err(Error::invalid(
        op,
        format!(
            "{} is not the KVM device /dev/kvm (character device {}:{})",
            describe(fd),
            KVM_DEVICE.0,
            KVM_DEVICE.1
        ),
    ))
}

/// Checks that `fd` is a KVM VM (its anonymous inode is `kvm-vm`, as
/// `/proc/thread-self/fd` shows): only then is a non-negative
/// `KVM_CREATE_GUEST_MEMFD` result a new descriptor.
///
/// # Errors
///
/// `InvalidArgument` naming what `fd` is instead; `Unsupported` when
/// `/proc` cannot tell (not mounted).
pub(crate) fn check_vm(op: &'static str, fd: BorrowedFd<'_>) -> Result<()> {
    match fd_link(fd) {
        Ok(link) if link == VM_LINK => Ok(()),
        Ok(link) => Err(Error::invalid(
            op,
            format!(
                "fd {} ({link}) is not a KVM VM ({VM_LINK}, from KVM_CREATE_VM)",
                fd.as_raw_fd()
            ),
        )),
        Err(errno) => Err(Error::unsupported(
            format!("{op} on fd {}", fd.as_raw_fd()),
            Some(errno),
            "cannot check that the descriptor is a KVM VM: /proc/thread-self/fd is unreadable \
             (mount /proc, or wrap the VM with the unsafe Vm::from_fd_unchecked)",
        )),
    }
}

/// Takes ownership of a file descriptor the kernel just returned.
fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` is the non-negative result of an ioctl that creates a
    // new file descriptor (KVM_CREATE_VM on /dev/kvm, KVM_CREATE_GUEST_MEMFD
    // on a VM: the callers' contracts say the file is that one); nothing
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
///
/// # Safety
///
/// `kvm` must be `/dev/kvm` ([`check_kvm_device`]): another file's driver
/// may answer the request number with a non-negative value that is not a
/// new descriptor.
pub(crate) unsafe fn create_vm(kvm: BorrowedFd<'_>, vm_type: u64) -> Result<OwnedFd, Errno> {
    // SAFETY: KVM_CREATE_VM takes an integer and, on /dev/kvm (the
    // caller's contract), returns a new file descriptor, which `owned`
    // takes ownership of at once.
    let fd = unsafe { ioctl_val(kvm, gmem_sys::KVM_CREATE_VM, vm_type as libc::c_ulong) }?;
    Ok(owned(fd))
}

/// `ioctl(vm, KVM_CREATE_GUEST_MEMFD, &args)`: a new guest_memfd.
///
/// Unlike the VM descriptors of `KVM_CREATE_VM`, the kernel installs it
/// without `O_CLOEXEC` (`kvm_gmem_create` takes no file flags): the caller
/// sets `FD_CLOEXEC`.
///
/// # Safety
///
/// `vm` must be a KVM VM ([`check_vm`]): another file's driver may answer
/// the request number with a non-negative value that is not a new
/// descriptor.
pub(crate) unsafe fn create_guest_memfd(
    vm: BorrowedFd<'_>,
    mut args: gmem_sys::kvm_create_guest_memfd,
) -> Result<OwnedFd, Errno> {
    // SAFETY: the request's argument is a `kvm_create_guest_memfd`, which
    // `args` is (a live local the kernel reads); on a VM (the caller's
    // contract) the result is a new file descriptor, which `owned` takes
    // ownership of at once. A guest_memfd is memory of its own, not of
    // this process.
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
