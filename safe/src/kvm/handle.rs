//! `/dev/kvm` and VM file descriptors.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::error::rustix_errno;
use crate::error::{Errno, Error, Result};
use crate::sys;

/// The KVM system file, `/dev/kvm`.
///
/// Only what this crate needs: the API version, capability checks and VM
/// creation. A VMM that already has its own KVM handles (for example
/// `kvm_ioctls::Kvm` / `VmFd`) does not need this type: every function of
/// the module that works on a VM takes the VM as `impl AsFd`.
#[derive(Debug)]
pub struct Kvm {
    fd: OwnedFd,
}

impl Kvm {
    /// `open("/dev/kvm", O_RDWR | O_CLOEXEC)`.
    ///
    /// # Errors
    ///
    /// The `open` errno, with a hint for the usual causes (`ENOENT`: no KVM
    /// module loaded; `EACCES`: the user may not use KVM).
    pub fn open() -> Result<Kvm> {
        Kvm::open_path("/dev/kvm")
    }

    /// `open(path, O_RDWR | O_CLOEXEC)`: the KVM system file at another path
    /// (a container may bind-mount it elsewhere). The file must be the KVM
    /// device (character device 10:232), checked with `fstat`.
    ///
    /// # Errors
    ///
    /// As [`Kvm::open`]; `InvalidArgument` when `path` is another file.
    pub fn open_path(path: impl AsRef<Path>) -> Result<Kvm> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(path.as_ref(), OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| {
                let errno = rustix_errno(e);
                match errno {
                    Errno::ENOENT => Error::os_hint(
                        "open /dev/kvm",
                        errno,
                        "no KVM device: load kvm (and kvm_intel, kvm_amd or kvm_pvm)",
                    ),
                    Errno::EACCES | Errno::EPERM => Error::os_hint(
                        "open /dev/kvm",
                        errno,
                        "no permission to use KVM: add the user to the group owning /dev/kvm",
                    ),
                    _ => Error::os("open /dev/kvm", errno),
                }
            })?;
        Kvm::from_fd(fd)
    }

    /// `fstat(fd)`: wraps an already open `/dev/kvm` file descriptor, after
    /// checking that it is the KVM device (a character device 10:232) —
    /// the VMs this `Kvm` creates are descriptors the kernel returns, which
    /// only the KVM device's answer can be trusted to be.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` naming what `fd` is when it is not `/dev/kvm` (the
    /// descriptor is closed); the `fstat` errno.
    pub fn from_fd(fd: OwnedFd) -> Result<Kvm> {
        sys::kvm::check_kvm_device("Kvm::from_fd", fd.as_fd())?;
        Ok(Kvm { fd })
    }

    /// `ioctl(KVM_GET_API_VERSION)`: 12 on every kernel since 2.6.22.
    ///
    /// # Errors
    ///
    /// The ioctl's errno (`ENOTTY`: the file is not `/dev/kvm`).
    ///
    /// # References
    ///
    /// [`KVM_GET_API_VERSION`](https://docs.kernel.org/virt/kvm/api.html#kvm-get-api-version)
    #[doc(alias = "KVM_GET_API_VERSION")]
    pub fn api_version(&self) -> Result<i32> {
        sys::kvm::get_api_version(self.fd.as_fd()).map_err(|e| Error::os("KVM_GET_API_VERSION", e))
    }

    /// `ioctl(KVM_CHECK_EXTENSION, cap)` on `/dev/kvm`: the capability's
    /// value for any VM, kept as the integer the kernel returned (0:
    /// absent; some capabilities return a count or a bit mask).
    ///
    /// # Errors
    ///
    /// The ioctl's errno.
    ///
    /// # References
    ///
    /// [`KVM_CHECK_EXTENSION`](https://docs.kernel.org/virt/kvm/api.html#kvm-check-extension)
    #[doc(alias = "KVM_CHECK_EXTENSION")]
    pub fn check_extension(&self, cap: u32) -> Result<i32> {
        check_extension(self, cap)
    }

    /// `ioctl(KVM_CREATE_VM, vm_type)`: a new VM (type 0 is the default
    /// type on every architecture). `EINTR` is retried.
    ///
    /// # Errors
    ///
    /// The ioctl's errno (`EINVAL`: this host does not offer `vm_type`).
    ///
    /// # References
    ///
    /// [`KVM_CREATE_VM`](https://docs.kernel.org/virt/kvm/api.html#kvm-create-vm)
    #[doc(alias = "KVM_CREATE_VM")]
    pub fn create_vm(&self, vm_type: u64) -> Result<Vm> {
        loop {
            // SAFETY: `self.fd` is /dev/kvm: every constructor of `Kvm`
            // checked it.
            match unsafe { sys::kvm::create_vm(self.fd.as_fd(), vm_type) } {
                Ok(fd) => return Ok(Vm { fd }),
                Err(Errno::EINTR) => continue,
                Err(e @ Errno::EINVAL) => {
                    return Err(Error::os_hint(
                        "KVM_CREATE_VM",
                        e,
                        format!("this host does not offer VM type {vm_type}"),
                    ));
                }
                Err(e) => return Err(Error::os("KVM_CREATE_VM", e)),
            }
        }
    }
}

impl AsFd for Kvm {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Kvm> for OwnedFd {
    fn from(k: Kvm) -> OwnedFd {
        k.fd
    }
}

/// A VM file descriptor, from [`Kvm::create_vm`] or [`Vm::from_fd`].
///
/// Everything in this module that needs a VM takes `impl AsFd`, so a
/// `&Vm`, a [`BorrowedFd`] of a VM created by another crate, or any other
/// owner of a VM file descriptor will do.
#[derive(Debug)]
pub struct Vm {
    fd: OwnedFd,
}

impl Vm {
    /// Wraps an already created VM file descriptor (for example of a
    /// `kvm_ioctls::VmFd`), after checking with `readlink` of
    /// `/proc/thread-self/fd/<fd>` that it is a KVM VM (`anon_inode:kvm-vm`):
    /// the guest_memfds created on a [`Vm`] are descriptors the kernel
    /// returns, which only a VM's answer can be trusted to be.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` naming what `fd` is when it is not a VM;
    /// `Unsupported` when `/proc` is not mounted (see
    /// [`from_fd_unchecked`](Vm::from_fd_unchecked)). The descriptor is
    /// closed on error.
    pub fn from_fd(fd: OwnedFd) -> Result<Vm> {
        sys::kvm::check_vm("Vm::from_fd", fd.as_fd())?;
        Ok(Vm { fd })
    }

    /// Wraps an already created VM file descriptor without checking it, for
    /// a process without `/proc`.
    ///
    /// # Safety
    ///
    /// `fd` must be a KVM VM file descriptor (from `KVM_CREATE_VM`): the
    /// result of `KVM_CREATE_GUEST_MEMFD` on it, through
    /// [`create_guest_memfd`](Vm::create_guest_memfd), is taken as a new
    /// descriptor, which another file's driver need not return.
    pub unsafe fn from_fd_unchecked(fd: OwnedFd) -> Vm {
        Vm { fd }
    }

    /// `ioctl(vm, KVM_CREATE_GUEST_MEMFD, {size, flags})` on this VM:
    /// [`GuestMemfd::create`](super::GuestMemfd::create) without checking
    /// again that the descriptor is a VM.
    ///
    /// # Errors
    ///
    /// As [`GuestMemfd::create`](super::GuestMemfd::create).
    #[doc(alias = "KVM_CREATE_GUEST_MEMFD")]
    pub fn create_guest_memfd(
        &self,
        size: u64,
        flags: super::GmemFlags,
    ) -> Result<super::GuestMemfd> {
        // SAFETY: `self.fd` is a VM: `from_fd` checked it, and
        // `from_fd_unchecked`'s caller promised it.
        unsafe { super::GuestMemfd::create_on_vm(self.fd.as_fd(), size, flags) }
    }

    /// `ioctl(vm, KVM_CHECK_EXTENSION, cap)`: the capability's value for
    /// this VM, kept as the integer the kernel returned.
    ///
    /// # Errors
    ///
    /// The ioctl's errno.
    ///
    /// # References
    ///
    /// [`KVM_CHECK_EXTENSION`](https://docs.kernel.org/virt/kvm/api.html#kvm-check-extension)
    #[doc(alias = "KVM_CHECK_EXTENSION")]
    pub fn check_extension(&self, cap: u32) -> Result<i32> {
        check_extension(self, cap)
    }
}

impl AsFd for Vm {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Vm> for OwnedFd {
    fn from(v: Vm) -> OwnedFd {
        v.fd
    }
}

/// `ioctl(fd, KVM_CHECK_EXTENSION, cap)` on `/dev/kvm` or on a VM: the
/// integer the kernel returned (0: absent).
///
/// Capability numbers of the out-of-tree series collide with mainline ones
/// (`KVM_CAP_USERFAULT` was 243 and 245, which mainline gave to other
/// capabilities): use a result as a hint only, and decide by trying the
/// operation, as [`probe_userfault`](super::probe_userfault) and
/// [`GmemFlavour::probe`](super::GmemFlavour::probe) do.
///
/// # Errors
///
/// The ioctl's errno (`ENOTTY`: `fd` is not a KVM object).
///
/// # References
///
/// [`KVM_CHECK_EXTENSION`](https://docs.kernel.org/virt/kvm/api.html#kvm-check-extension)
#[doc(alias = "KVM_CHECK_EXTENSION")]
pub fn check_extension(fd: impl AsFd, cap: u32) -> Result<i32> {
    sys::kvm::check_extension(fd.as_fd(), cap).map_err(|e| Error::os("KVM_CHECK_EXTENSION", e))
}
