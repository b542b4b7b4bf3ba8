//! guest_memfd and memslots on the running kernel: creation, mapping
//! rules, punch-hole, and the memslot changes KVM refuses.

use std::os::fd::{AsFd, BorrowedFd};

use userfault::error::{Errno, Error};
use userfault::kvm::{GmemFlags, GuestMemfd, Memslot, Vm, check_extension};
use userfault::mem::{Mapping, Sharing};

use super::PAGE;
use crate::util::{self, require};

#[test]
fn guest_memfd_flags_and_mapping_rules() {
    const TEST: &str = "guest_memfd_flags_and_mapping_rules";
    let (_kvm, vm) = require!(TEST, "kvm", super::open_vm());
    let vm = super::borrow(&vm);
    let advertised = check_extension(vm, gmem_sys::KVM_CAP_GUEST_MEMFD_FLAGS)
        .expect("KVM_CHECK_EXTENSION(KVM_CAP_GUEST_MEMFD_FLAGS)");
    let plain = require!(
        TEST,
        "gmem",
        GuestMemfd::create(vm, 4 * PAGE as u64, GmemFlags::empty())
            .map_err(|e| format!("no guest_memfd: {e}"))
    );
    util::report(&format!("kvm: KVM_CAP_GUEST_MEMFD_FLAGS = {advertised:#x}"));
    assert_eq!(plain.size(), 4 * PAGE as u64);

    // Refused before the system call.
    let odd = GuestMemfd::create(vm, 100, GmemFlags::empty()).unwrap_err();
    assert!(matches!(odd, Error::InvalidArgument { .. }), "{odd}");

    // Without MMAP the kernel refuses the mapping with ENODEV, and says why.
    let e = plain.map_all().unwrap_err();
    assert_eq!(e.errno(), Some(Errno::ENODEV), "{e}");
    assert!(
        e.to_string().contains("without GUEST_MEMFD_FLAG_MMAP"),
        "{e}"
    );

    let Some(shared) = super::need_shared_gmem(TEST, vm, 4 * PAGE as u64) else {
        return;
    };
    // Private mappings are refused before mmap.
    let e = shared.mmap(0, PAGE, Sharing::Private).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    // ... and the kernel would have refused it with EINVAL: ask it directly.
    let raw = Mapping::file(shared.as_fd(), 0, PAGE, Sharing::Private).unwrap_err();
    assert_eq!(raw.errno(), Some(Errno::EINVAL), "{raw}");

    // A flag bit the VM does not advertise: EINVAL with the advertised mask.
    let unknown = 1u64 << 20;
    let e = GuestMemfd::create(vm, PAGE as u64, GmemFlags::from_raw(unknown)).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::EINVAL), "{e}");
    assert!(e.to_string().contains("KVM_CAP_GUEST_MEMFD_FLAGS"), "{e}");
}

/// True when the descriptor has `FD_CLOEXEC` (`fcntl(F_GETFD)`).
fn close_on_exec(fd: BorrowedFd<'_>) -> bool {
    rustix::io::fcntl_getfd(fd)
        .expect("fcntl(F_GETFD)")
        .contains(rustix::io::FdFlags::CLOEXEC)
}

#[test]
fn every_kvm_descriptor_the_crate_creates_is_close_on_exec() {
    const TEST: &str = "every_kvm_descriptor_the_crate_creates_is_close_on_exec";
    let kvm = require!(
        TEST,
        "kvm",
        userfault::kvm::Kvm::open().map_err(|e| e.to_string())
    );
    assert!(close_on_exec(kvm.as_fd()), "/dev/kvm");
    let vm = kvm.create_vm(0).expect("KVM_CREATE_VM");
    assert!(close_on_exec(vm.as_fd()), "KVM_CREATE_VM");
    // The kernel creates a guest_memfd without O_CLOEXEC; the crate sets it.
    let gmem = require!(
        TEST,
        "gmem",
        GuestMemfd::create(&vm, PAGE as u64, GmemFlags::empty())
            .map_err(|e| format!("no guest_memfd: {e}"))
    );
    assert!(close_on_exec(gmem.as_fd()), "KVM_CREATE_GUEST_MEMFD");
    // Also on a VM the crate does not own.
    let (_k, foreign) = require!(TEST, "kvm", super::open_vm());
    let gmem = GuestMemfd::create(super::borrow(&foreign), PAGE as u64, GmemFlags::empty())
        .expect("guest_memfd");
    assert!(
        close_on_exec(gmem.as_fd()),
        "KVM_CREATE_GUEST_MEMFD on a kvm-ioctls VM"
    );
}

#[test]
fn guest_memfd_punch_hole_drops_pages() {
    const TEST: &str = "guest_memfd_punch_hole_drops_pages";
    let (_kvm, vm) = require!(TEST, "kvm", super::open_vm());
    let Some(mut gmem) = super::need_shared_gmem(TEST, super::borrow(&vm), 4 * PAGE as u64) else {
        return;
    };
    let view = gmem.map_all().expect("mmap");
    for page in 0..4 {
        super::poke(&view, page * PAGE, &[0xC0 | page as u8; PAGE]);
    }
    gmem.punch_hole(PAGE as u64, 2 * PAGE as u64)
        .expect("fallocate(PUNCH_HOLE)");
    assert_eq!(super::peek(&view, 0, 1), [0xC0]);
    assert_eq!(
        super::peek(&view, PAGE, PAGE),
        vec![0; PAGE],
        "page 1 punched"
    );
    assert_eq!(super::peek(&view, 2 * PAGE + 7, 1), [0], "page 2 punched");
    assert_eq!(super::peek(&view, 3 * PAGE, 1), [0xC3]);
    let e = gmem.punch_hole(1, PAGE as u64).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
}

#[test]
fn memslots_on_guest_memfd_can_only_be_deleted() {
    const TEST: &str = "memslots_on_guest_memfd_can_only_be_deleted";
    let (_kvm, vm) = require!(TEST, "kvm", super::open_vm());
    let size = 16 * PAGE as u64;
    if !super::need_gmem_slot(TEST) {
        return;
    }
    let Some(gmem) = super::need_shared_gmem(TEST, super::borrow(&vm), size) else {
        return;
    };
    let view = gmem.map_all().expect("mmap");
    let vm = super::borrow(&vm);
    let slot = Memslot::from_mapping(3, 0x10_0000, &view).guest_memfd(&gmem, 0);
    // SAFETY: `view` and `gmem` outlive the slot (deleted below, VM closed
    // after them at the latest); nothing references `view`.
    unsafe { slot.set(vm) }.expect("guest_memfd memslot");

    // Re-issuing it, even unchanged or with dirty logging added, is refused.
    for (what, again) in [
        ("unchanged", slot),
        ("with LOG_DIRTY_PAGES", slot.log_dirty_pages()),
    ] {
        // SAFETY: as above.
        let e = unsafe { again.set(vm) }.unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EINVAL), "{what}: {e}");
        assert!(
            e.to_string()
                .contains("guest_memfd slots cannot be modified, only deleted"),
            "{what}: {e}"
        );
        util::report(&format!("kvm: re-issuing a guest_memfd slot {what}: {e}"));
    }
    // Another slot over the same guest physical range: EEXIST.
    let anon = Mapping::anonymous(size as usize, Sharing::Shared).expect("mmap");
    // SAFETY: refused by the kernel; had it been accepted, `anon` outlives
    // the VM's use of it within this test (it is deleted with the VM).
    let e = unsafe { Memslot::from_mapping(4, 0x10_0000, &anon).set(vm) }.unwrap_err();
    assert_eq!(e.errno(), Some(Errno::EEXIST), "{e}");

    Memslot::delete(vm, 3, 0).expect("delete the guest_memfd slot");
    // Deleted: the same slot can be created again, and deleting twice fails.
    // SAFETY: as above.
    unsafe { slot.set(vm) }.expect("guest_memfd memslot after delete");
    Memslot::delete(vm, 3, 0).expect("delete again");
    let e = Memslot::delete(vm, 3, 0).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::EINVAL), "{e}");
    assert!(e.to_string().contains("no slot 3"), "{e}");
}

#[test]
fn memslots_from_anonymous_and_memfd_memory() {
    const TEST: &str = "memslots_from_anonymous_and_memfd_memory";
    let kvm = require!(
        TEST,
        "kvm",
        userfault::kvm::Kvm::open().map_err(|e| e.to_string())
    );
    assert_eq!(kvm.api_version().expect("KVM_GET_API_VERSION"), 12);
    // The slots' memory is declared before the VM, so dropped after it.
    let anon = Mapping::anonymous(8 * PAGE, Sharing::Private).expect("mmap");
    let memfd = userfault::backing::Memfd::shmem(c"kvm-slot", 8 * PAGE as u64).expect("memfd");
    let shared = Mapping::file(memfd.as_fd(), 0, 8 * PAGE, Sharing::Shared).expect("mmap memfd");
    let vm: Vm = kvm.create_vm(0).expect("KVM_CREATE_VM");
    // Plain slots work with and without KVM_SET_USER_MEMORY_REGION2 (Linux
    // 6.8); without it the crate uses KVM_SET_USER_MEMORY_REGION.
    let memory2 = vm
        .check_extension(gmem_sys::KVM_CAP_USER_MEMORY2)
        .expect("KVM_CHECK_EXTENSION");
    util::report(&format!("kvm: KVM_CAP_USER_MEMORY2 = {memory2} on the VM"));
    if memory2 <= 0 {
        // What only REGION2 can express is refused, and says why.
        let bitmap =
            userfault::kvm::UserfaultBitmap::new(0x40_0000, 8 * PAGE as u64).expect("bitmap");
        // SAFETY: without KVM_SET_USER_MEMORY_REGION2 (this branch) no
        // request takes the slot, so KVM never holds `anon` or `bitmap`.
        let e = unsafe {
            Memslot::from_mapping(4, 0x40_0000, &anon)
                .userfault(&bitmap)
                .set(&vm)
        }
        .unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        assert_eq!(e.errno(), Some(Errno::ENOTTY), "{e}");
        assert!(e.to_string().contains("Linux 6.8"), "{e}");
        util::report(&format!("kvm: {e}"));
    }
    // SAFETY: `anon` and `shared` outlive `vm` (declared before it, so
    // dropped after it; the slots are deleted at the end of the test, or
    // go with the VM); nothing references them.
    unsafe {
        Memslot::from_mapping(0, 0, &anon)
            .set(&vm)
            .expect("anonymous slot");
        Memslot::from_mapping(1, 0x10_0000, &shared)
            .log_dirty_pages()
            .set(&vm)
            .expect("memfd slot with dirty logging");
        // A plain slot may change its flags.
        Memslot::from_mapping(1, 0x10_0000, &shared)
            .set(&vm)
            .expect("memfd slot without dirty logging");
        // ... but not its size.
        let e = Memslot::new(1, 0x10_0000, 4 * PAGE as u64)
            .userspace_addr(shared.addr())
            .set(&vm)
            .unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EINVAL), "{e}");
    }
    // Unaligned arguments never reach the kernel.
    // SAFETY: refused before the system call.
    let e = unsafe { Memslot::new(2, 0x20_0800, PAGE as u64).set(&vm) }.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    Memslot::delete(&vm, 0, 0).expect("delete slot 0");
    Memslot::delete(&vm, 1, 0).expect("delete slot 1");
}
