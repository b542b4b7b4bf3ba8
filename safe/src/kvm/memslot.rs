//! `KVM_SET_USER_MEMORY_REGION2`: memslots over anonymous memory, memfds and
//! guest_memfd, with the KVM userfault bitmap where the kernel has it; plain
//! slots through `KVM_SET_USER_MEMORY_REGION` on kernels before Linux 6.8.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use gmem_sys::upstream::kvm_userfault_v3::{self as uf, kvm_userspace_memory_region2};

use super::{GuestMemfd, UserfaultBitmap};
use crate::error::{Errno, Error, Result};
use crate::mem::Mapping;
use crate::sys;

const OP: &str = "KVM_SET_USER_MEMORY_REGION2";
const OP_V1: &str = "KVM_SET_USER_MEMORY_REGION";

bitflags::bitflags! {
    /// `kvm_userspace_memory_region2.flags` (`KVM_MEM_*`). Unknown bits are
    /// kept.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct MemslotFlags: u32 {
        /// `KVM_MEM_LOG_DIRTY_PAGES`: track pages the guest writes.
        const LOG_DIRTY_PAGES = gmem_sys::KVM_MEM_LOG_DIRTY_PAGES;
        /// `KVM_MEM_READONLY`: guest writes exit as MMIO.
        const READONLY = gmem_sys::KVM_MEM_READONLY;
        /// `KVM_MEM_GUEST_MEMFD`: the slot is backed by a guest_memfd.
        const GUEST_MEMFD = gmem_sys::KVM_MEM_GUEST_MEMFD;
        /// `KVM_MEM_USERFAULT` (posted series; `1 << 3` both in the upstream
        /// v3 posting and in Firecracker's stack): vCPU accesses to pages
        /// whose bit is set in the userfault bitmap exit to user space.
        const USERFAULT = uf::KVM_MEM_USERFAULT;
        const _ = !0;
    }
}

/// A memslot to create or change with `KVM_SET_USER_MEMORY_REGION2` (or,
/// for a plain slot on a kernel without it, `KVM_SET_USER_MEMORY_REGION`).
///
/// Built from the slot id and guest physical range, then given its user
/// memory ([`userspace_addr`](Memslot::userspace_addr) or
/// [`from_mapping`](Memslot::from_mapping)), optionally a guest_memfd, a
/// userfault bitmap and flags. The kernel structure's padding never shows.
///
/// ```no_run
/// # fn main() -> userfault::Result<()> {
/// use userfault::kvm::{GmemFlags, GuestMemfd, Kvm, Memslot};
///
/// let vm = Kvm::open()?.create_vm(0)?;
/// let gmem = GuestMemfd::create(&vm, 2 << 20, GmemFlags::MMAP | GmemFlags::INIT_SHARED)?;
/// let mem = gmem.map_all()?;
/// let slot = Memslot::from_mapping(0, 0x10_0000, &mem).guest_memfd(&gmem, 0);
/// // SAFETY: `mem` and `gmem` live until the slot is deleted below, and no
/// // Rust reference points into `mem`.
/// unsafe { slot.set(&vm)? };
/// Memslot::delete(&vm, 0, 0)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Memslot<'a> {
    slot: u16,
    address_space: u16,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
    flags: MemslotFlags,
    guest_memfd: Option<(BorrowedFd<'a>, u64)>,
    userfault: Option<&'a UserfaultBitmap>,
}

impl<'a> Memslot<'a> {
    /// Slot `slot` (in address space 0) covering `memory_size` bytes of
    /// guest physical memory from `guest_phys_addr`. Its user memory is set
    /// with [`userspace_addr`](Memslot::userspace_addr).
    pub fn new(slot: u16, guest_phys_addr: u64, memory_size: u64) -> Memslot<'a> {
        Memslot {
            slot,
            address_space: 0,
            guest_phys_addr,
            memory_size,
            userspace_addr: 0,
            flags: MemslotFlags::empty(),
            guest_memfd: None,
            userfault: None,
        }
    }

    /// Slot `slot` backed by the whole of `mapping`, at `guest_phys_addr`.
    pub fn from_mapping(slot: u16, guest_phys_addr: u64, mapping: &Mapping) -> Memslot<'a> {
        Memslot::new(slot, guest_phys_addr, mapping.len() as u64).userspace_addr(mapping.addr())
    }

    /// The user-space address of the slot's memory (`userspace_addr`).
    /// For a guest_memfd slot, the mapping of the guest_memfd (or any
    /// memory KVM may use for shared accesses).
    pub fn userspace_addr(mut self, addr: usize) -> Memslot<'a> {
        self.userspace_addr = addr as u64;
        self
    }

    /// The address space (bits 16..31 of `slot`; x86 SMM uses 1).
    pub fn address_space(mut self, id: u16) -> Memslot<'a> {
        self.address_space = id;
        self
    }

    /// Sets `KVM_MEM_LOG_DIRTY_PAGES`.
    pub fn log_dirty_pages(mut self) -> Memslot<'a> {
        self.flags |= MemslotFlags::LOG_DIRTY_PAGES;
        self
    }

    /// Sets `KVM_MEM_READONLY` (needs `KVM_CAP_READONLY_MEM`).
    pub fn read_only(mut self) -> Memslot<'a> {
        self.flags |= MemslotFlags::READONLY;
        self
    }

    /// Backs the slot with `gmem` from `offset` (`KVM_MEM_GUEST_MEMFD`).
    pub fn guest_memfd(self, gmem: &'a GuestMemfd, offset: u64) -> Memslot<'a> {
        self.guest_memfd_fd(gmem.as_fd(), offset)
    }

    /// Backs the slot with the guest_memfd `fd` from `offset`, for a
    /// guest_memfd created by another crate.
    pub fn guest_memfd_fd(mut self, fd: BorrowedFd<'a>, offset: u64) -> Memslot<'a> {
        self.flags |= MemslotFlags::GUEST_MEMFD;
        self.guest_memfd = Some((fd, offset));
        self
    }

    /// Enables KVM userfault for the slot (`KVM_MEM_USERFAULT` with
    /// `userfault_bitmap`): vCPU accesses to pages whose bit is set exit
    /// with `KVM_EXIT_MEMORY_FAULT`. The bitmap must have been made for
    /// this slot's guest physical range. Only kernels with the posted KVM
    /// userfault series accept it; [`set`](Memslot::set) reports the others
    /// with `EINVAL` (see [`set`](Memslot::set)). Re-issuing an existing
    /// slot with or without this is how the series enables and disables
    /// userfault; one port of the series to Linux 7.3 refuses that change
    /// on guest_memfd slots (`EINVAL`) while taking it on other slots, so a
    /// guest_memfd slot that is to trap is best created with it.
    pub fn userfault(mut self, bitmap: &'a UserfaultBitmap) -> Memslot<'a> {
        self.flags |= MemslotFlags::USERFAULT;
        self.userfault = Some(bitmap);
        self
    }

    /// The flags the slot will be set with.
    pub fn flags(&self) -> MemslotFlags {
        self.flags
    }

    /// The kernel structure, in the layout with `userfault_bitmap` (which
    /// converts losslessly to the mainline and `kvm-bindings` layouts, see
    /// [`gmem_sys::convert`]), for a VMM that issues the ioctl itself.
    pub fn to_raw(&self) -> kvm_userspace_memory_region2 {
        let (guest_memfd, guest_memfd_offset) = self
            .guest_memfd
            .map_or((0, 0), |(fd, off)| (fd.as_raw_fd() as u32, off));
        kvm_userspace_memory_region2 {
            slot: u32::from(self.address_space) << 16 | u32::from(self.slot),
            flags: self.flags.bits(),
            guest_phys_addr: self.guest_phys_addr,
            memory_size: self.memory_size,
            userspace_addr: self.userspace_addr,
            guest_memfd_offset,
            guest_memfd,
            userfault_bitmap: self.userfault.map_or(0, |b| b.kernel_addr()),
            ..Default::default()
        }
    }

    /// Refuses what the kernel would refuse with a bare `EINVAL`, before the
    /// system call, so that the kernel's `EINVAL` means something specific.
    fn check(&self) -> Result<()> {
        let page = crate::sys::page_size() as u64;
        let aligned = |what: &str, v: u64| {
            if v.is_multiple_of(page) {
                Ok(())
            } else {
                Err(Error::invalid(
                    OP,
                    format!("{what} {v:#x} is not a multiple of the page size {page:#x}"),
                ))
            }
        };
        if self.memory_size == 0 {
            return Err(Error::invalid(
                OP,
                "memory size is zero (to delete a slot use Memslot::delete)",
            ));
        }
        aligned("memory size", self.memory_size)?;
        aligned("guest physical address", self.guest_phys_addr)?;
        aligned("user-space address", self.userspace_addr)?;
        if let Some((_, offset)) = self.guest_memfd {
            aligned("guest_memfd offset", offset)?;
        }
        if let Some(bitmap) = self.userfault
            && (bitmap.guest_phys_addr() != self.guest_phys_addr
                || bitmap.memory_size() != self.memory_size)
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "the userfault bitmap covers {:#x}+{:#x}, the slot {:#x}+{:#x}",
                    bitmap.guest_phys_addr(),
                    bitmap.memory_size(),
                    self.guest_phys_addr,
                    self.memory_size
                ),
            ));
        }
        Ok(())
    }

    /// `ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &slot)`: creates the slot, or
    /// changes the flags of an existing one, on the VM `vm` (a
    /// [`Vm`](super::Vm) or any borrowed VM file descriptor).
    ///
    /// On a kernel without `KVM_SET_USER_MEMORY_REGION2` (before Linux 6.8:
    /// the request fails `ENOTTY`), a slot without guest_memfd and without
    /// userfault is set with `KVM_SET_USER_MEMORY_REGION` instead, which
    /// takes the same slot, flags, range and address.
    ///
    /// # Safety
    ///
    /// Until the slot is deleted or the VM is closed, the guest — and KVM on
    /// its behalf — reads and writes the memory at the user-space address
    /// for the slot's size, and, with [`userfault`](Memslot::userfault),
    /// KVM reads the bitmap. The caller must keep that memory mapped and the
    /// bitmap alive for that long (a [`Mapping`] and the
    /// [`UserfaultBitmap`] must outlive the slot), and the memory must not
    /// be memory that Rust code holds references into.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a zero size, unaligned addresses or a bitmap
    /// made for another range. `Unsupported` (errno `ENOTTY`) for a
    /// guest_memfd or userfault slot on a kernel without
    /// `KVM_SET_USER_MEMORY_REGION2` (Linux 6.8). Otherwise the ioctl's
    /// errno, with a hint: `EINVAL` for a guest_memfd slot says that such
    /// slots cannot be modified, only deleted, and that the VM type may not
    /// take guest_memfd slots; `EINVAL` with
    /// [`userfault`](Memslot::userfault) that the kernel may lack
    /// `KVM_MEM_USERFAULT` ([`probe_userfault`](super::probe_userfault)
    /// decides); `EEXIST` that the range overlaps another slot. Building the
    /// error makes no further system call.
    ///
    /// # References
    ///
    /// [`KVM_SET_USER_MEMORY_REGION2`](https://docs.kernel.org/virt/kvm/api.html#kvm-set-user-memory-region2),
    /// [`KVM_SET_USER_MEMORY_REGION`](https://docs.kernel.org/virt/kvm/api.html#kvm-set-user-memory-region)
    #[doc(alias = "KVM_SET_USER_MEMORY_REGION2")]
    #[doc(alias = "KVM_SET_USER_MEMORY_REGION")]
    pub unsafe fn set(&self, vm: impl AsFd) -> Result<()> {
        self.check()?;
        let raw = self.to_raw();
        // SAFETY: the caller keeps the slot's memory and bitmap alive and
        // free of Rust references for the slot's lifetime (this function's
        // contract).
        match unsafe { sys::kvm::set_user_memory_region2(vm.as_fd(), &raw) } {
            Ok(()) => Ok(()),
            // SAFETY: as above; the same slot through the older request.
            Err(Errno::ENOTTY) => unsafe { self.set_without_region2(vm.as_fd()) },
            Err(errno) => Err(self.explain(errno)),
        }
    }

    /// What of this slot only `KVM_SET_USER_MEMORY_REGION2` can express.
    fn needs_region2(&self) -> Option<&'static str> {
        if self.guest_memfd.is_some() {
            Some("a guest_memfd memslot (KVM_MEM_GUEST_MEMFD)")
        } else if self.userfault.is_some() || self.flags.contains(MemslotFlags::USERFAULT) {
            Some("a KVM userfault memslot (KVM_MEM_USERFAULT)")
        } else {
            None
        }
    }

    /// `KVM_SET_USER_MEMORY_REGION`, after `KVM_SET_USER_MEMORY_REGION2`
    /// failed `ENOTTY`.
    ///
    /// # Safety
    ///
    /// As [`set`](Memslot::set).
    unsafe fn set_without_region2(&self, vm: BorrowedFd<'_>) -> Result<()> {
        if let Some(what) = self.needs_region2() {
            return Err(Error::unsupported(
                what,
                Some(Errno::ENOTTY),
                "KVM_SET_USER_MEMORY_REGION2 failed ENOTTY: this kernel lacks it (it came in \
                 Linux 6.8; it is the only memslot ioctl that takes a guest_memfd or a \
                 userfault bitmap, while plain slots still work through \
                 KVM_SET_USER_MEMORY_REGION), or the descriptor is not a KVM VM",
            ));
        }
        let raw = self.raw_v1();
        // SAFETY: forwarded to the caller's contract (the same slot).
        match unsafe { sys::kvm::set_user_memory_region(vm, &raw) } {
            Ok(()) => Ok(()),
            Err(errno @ Errno::ENOTTY) => Err(Error::os_hint(
                OP_V1,
                errno,
                "the file descriptor is not a KVM VM",
            )),
            Err(errno) => Err(explain_plain(OP_V1, errno)),
        }
    }

    /// The slot in the layout of `KVM_SET_USER_MEMORY_REGION`.
    fn raw_v1(&self) -> kvm_bindings::kvm_userspace_memory_region {
        kvm_bindings::kvm_userspace_memory_region {
            slot: u32::from(self.address_space) << 16 | u32::from(self.slot),
            flags: self.flags.bits(),
            guest_phys_addr: self.guest_phys_addr,
            memory_size: self.memory_size,
            userspace_addr: self.userspace_addr,
        }
    }

    /// The error for `errno` from `KVM_SET_USER_MEMORY_REGION2`, with what
    /// it means for this slot; no system call is made to find out more.
    fn explain(&self, errno: Errno) -> Error {
        match errno {
            Errno::EINVAL if self.flags.contains(MemslotFlags::USERFAULT) => Error::os_hint(
                OP,
                errno,
                "the kernel may lack KVM_MEM_USERFAULT (posted series \"KVM: Introduce KVM \
                 Userfault\"; probe_userfault decides); with it, a guest_memfd slot may change \
                 only its KVM_MEM_USERFAULT flag (some ports refuse even that), and the \
                 guest_memfd must belong to this VM",
            ),
            Errno::EINVAL if self.flags.contains(MemslotFlags::GUEST_MEMFD) => Error::os_hint(
                OP,
                errno,
                format!(
                    "guest_memfd slots cannot be modified, only deleted (delete slot {} first \
                     if it exists); otherwise the VM type may not take guest_memfd slots \
                     (Linux 6.12's default VM does not), or the guest_memfd does not belong \
                     to this VM or offset + size do not lie inside it",
                    self.slot
                ),
            ),
            _ => explain_plain(OP, errno),
        }
    }

    /// Issues the ioctl and returns the bare errno (for the probe).
    ///
    /// # Safety
    ///
    /// As [`set`](Memslot::set).
    pub(super) unsafe fn issue(&self, vm: BorrowedFd<'_>) -> Result<(), Errno> {
        let raw = self.to_raw();
        // SAFETY: forwarded to the caller's contract.
        unsafe { sys::kvm::set_user_memory_region2(vm, &raw) }
    }

    /// `ioctl(vm, KVM_SET_USER_MEMORY_REGION2, {slot, memory_size: 0})`:
    /// deletes slot `slot` of address space `address_space`. The guest loses
    /// access to its memory at once. On a kernel without
    /// `KVM_SET_USER_MEMORY_REGION2`, `KVM_SET_USER_MEMORY_REGION` does it.
    ///
    /// # Errors
    ///
    /// `EINVAL` with a hint when there is no such slot; the ioctl's errno
    /// otherwise.
    ///
    /// # References
    ///
    /// [`KVM_SET_USER_MEMORY_REGION2`](https://docs.kernel.org/virt/kvm/api.html#kvm-set-user-memory-region2)
    pub fn delete(vm: impl AsFd, slot: u16, address_space: u16) -> Result<()> {
        let slot_id = Memslot::new(slot, 0, 0).address_space(address_space);
        let raw = slot_id.to_raw();
        // SAFETY: a zero-sized region gives the guest no memory; it only
        // removes the slot.
        let (op, result) = match unsafe { sys::kvm::set_user_memory_region2(vm.as_fd(), &raw) } {
            Err(Errno::ENOTTY) => {
                let raw = slot_id.raw_v1();
                // SAFETY: as above, through the older request.
                let r = unsafe { sys::kvm::set_user_memory_region(vm.as_fd(), &raw) };
                (OP_V1, r)
            }
            r => (OP, r),
        };
        match result {
            Ok(()) => Ok(()),
            Err(errno @ Errno::EINVAL) => Err(Error::os_hint(
                op,
                errno,
                format!("there is no slot {slot} in address space {address_space} to delete"),
            )),
            Err(errno) => Err(Error::os(op, errno)),
        }
    }
}

/// The error for `errno` from either memslot ioctl on a slot without
/// guest_memfd and userfault.
fn explain_plain(op: &'static str, errno: Errno) -> Error {
    match errno {
        Errno::EINVAL => Error::os_hint(
            op,
            errno,
            "an existing slot may change only its flags, not its range or address; \
             READONLY needs KVM_CAP_READONLY_MEM; the slot id must be below \
             KVM_CAP_NR_MEMSLOTS",
        ),
        Errno::EEXIST => {
            Error::os_hint(op, errno, "the guest physical range overlaps another slot")
        }
        _ => Error::os(op, errno),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_layout_has_slot_flags_and_bitmap() {
        let bitmap = UserfaultBitmap::new(0x10_0000, 0x4000).unwrap();
        let m = Memslot::new(3, 0x10_0000, 0x4000)
            .address_space(1)
            .userspace_addr(0x7f00_0000_0000)
            .log_dirty_pages()
            .userfault(&bitmap);
        let raw = m.to_raw();
        assert_eq!(raw.slot, 0x1_0003);
        assert_eq!(raw.flags, 0x9);
        assert_eq!(raw.userfault_bitmap, bitmap.kernel_addr());
        assert_eq!(raw.pad2, [0; 13]);
        assert_eq!(
            m.flags(),
            MemslotFlags::LOG_DIRTY_PAGES | MemslotFlags::USERFAULT
        );
        m.check().unwrap();
        let other = UserfaultBitmap::new(0, 0x4000).unwrap();
        let wrong = Memslot::new(3, 0x10_0000, 0x4000).userfault(&other);
        assert!(matches!(wrong.check(), Err(Error::InvalidArgument { .. })));
        assert!(Memslot::new(0, 0x800, 0x1000).check().is_err());
        assert!(Memslot::new(0, 0, 0).check().is_err());
    }

    #[test]
    fn unknown_flag_bits_are_kept() {
        let f = MemslotFlags::from_bits_retain(0x4 | 0x100);
        assert_eq!(f.bits(), 0x104);
        assert!(format!("{f:?}").contains("GUEST_MEMFD"));
    }
}
