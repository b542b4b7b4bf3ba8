//! A VMM built on kvm-ioctls uses `userfault::kvm` without giving up its
//! `VmFd`: the VM is borrowed as a file descriptor for guest_memfd,
//! memslots and the capability probes, and vCPU exits from kvm-ioctls are
//! decoded into stage-2 faults.
//!
//! Runs a two-instruction real-mode guest from guest_memfd memory and
//! reports what the kernel offers. Needs `/dev/kvm` and Linux 6.18+
//! (guest_memfd with `MMAP`):
//!
//! ```sh
//! cargo run --example kvm_ioctls_interop
//! ```

use std::os::fd::{AsRawFd, BorrowedFd};

use kvm_ioctls::{Kvm, VcpuExit};
use userfault::kvm::{
    GmemFlags, GmemFlavour, GuestMemfd, MemoryFault, Memslot, UserfaultBitmap, probe_userfault,
};

const GUEST_SIZE: u64 = 0x10000;
const CODE_GPA: u64 = 0x1000;
/// `mov al, 0x2a; out 0x10, al; hlt`
const CODE: &[u8] = &[0xB0, 0x2A, 0xE6, 0x10, 0xF4];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    // SAFETY: `vm` outlives every use of `vm_fd` in this function.
    let vm_fd = unsafe { BorrowedFd::borrow_raw(vm.as_raw_fd()) };
    // SAFETY: as above, for the kvm-ioctls `Kvm`.
    let kvm_fd = unsafe { BorrowedFd::borrow_raw(kvm.as_raw_fd()) };

    // What this kernel offers, decided by trying.
    let flavour = GmemFlavour::probe(vm_fd)?;
    println!(
        "guest_memfd: flags advertised {:?}, numbering {:?}",
        flavour.advertised(),
        flavour.numbering()
    );
    let write = match flavour.write() {
        Ok(write) => Some(write),
        Err(e) => {
            println!("  {e}");
            None
        }
    };
    match probe_userfault(kvm_fd) {
        Ok(()) => println!("KVM userfault: supported"),
        Err(e) => println!("KVM userfault: {e}"),
    }

    // Guest memory: a guest_memfd, filled with write() where the kernel has
    // it and through the mapping otherwise.
    let mut flags = GmemFlags::MMAP | GmemFlags::INIT_SHARED;
    if let Some(write) = write {
        flags |= write;
    }
    let mut gmem = GuestMemfd::create(vm_fd, GUEST_SIZE, flags)?;
    let view = gmem.map_all()?;
    let mut page = vec![0u8; 4096];
    page[..CODE.len()].copy_from_slice(CODE);
    match gmem.write_at(CODE_GPA, &page) {
        Ok(()) => println!("code page written with pwrite"),
        Err(e) if e.is_unsupported() => {
            // SAFETY: the page lies inside `view`, which nothing references
            // and no vCPU runs on yet.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    page.as_ptr(),
                    view.as_ptr().add(CODE_GPA as usize),
                    page.len(),
                )
            };
            println!("code page written through the mapping ({e})");
        }
        Err(e) => return Err(e.into()),
    }

    // The memslot, issued by the crate on the borrowed VM. A VMM that issues
    // the ioctl itself can take `slot.to_raw().into()` (the kvm-bindings
    // layout, bitmap pointer included) to `VmFd::set_user_memory_region2`.
    let slot = Memslot::from_mapping(0, 0, &view).guest_memfd(&gmem, 0);
    // SAFETY: `view` and `gmem` are dropped only after `vm` (the explicit
    // drops at the end), and nothing references `view`.
    unsafe { slot.set(vm_fd)? };

    // A bitmap for the slot: where the kernel has KVM userfault, the slot
    // would be re-issued with `.userfault(&bitmap)` and vCPU accesses to
    // set pages would exit as memory faults.
    let bitmap = UserfaultBitmap::new(0, GUEST_SIZE)?;
    println!("userfault bitmap: {bitmap:?}");

    let mut vcpu = vm.create_vcpu(0)?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    let regs = kvm_bindings::kvm_regs {
        rip: CODE_GPA,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs)?;
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => println!("guest: out {port:#x}, {data:?}"),
            Ok(VcpuExit::Hlt) => {
                println!("guest: hlt");
                break;
            }
            Ok(VcpuExit::MemoryFault { flags, gpa, size }) => {
                let fault = MemoryFault::new(flags, gpa, size);
                println!("memory fault {fault:?}: resolve with a Stage2Resolver");
                break;
            }
            Ok(other) => {
                println!("unexpected exit {other:?}");
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }

    // The VM goes first, taking the memslot with it; then the memory.
    drop(vcpu);
    drop(vm);
    drop(view);
    drop(gmem);
    Ok(())
}
