//! Just enough KVM for guest_memfd and KVM userfault: `/dev/kvm` and VMs,
//! guest_memfd, memslots (`KVM_SET_USER_MEMORY_REGION2`), the userfault
//! bitmap, `KVM_EXIT_MEMORY_FAULT` decoding and stage-2 fault resolution.
//!
//! | item | what | kernel |
//! |---|---|---|
//! | [`Kvm`], [`Vm`], [`check_extension`] | `/dev/kvm`, `KVM_CREATE_VM`, `KVM_CHECK_EXTENSION` (the integer kept) | any |
//! | [`GuestMemfd`], [`GmemFlags`] | `KVM_CREATE_GUEST_MEMFD`, shared `mmap`, punch-hole | 6.8+; `MMAP`/`INIT_SHARED` 6.18+ |
//! | [`GmemFlavour`] | which bit is `WRITE` / `NO_DIRECT_MAP`, found by trying | posted series |
//! | [`GuestMemfd::write_at`], its [`Backing`](crate::backing::Backing) `fill` | population by `pwrite` | posted series ("use write for population") |
//! | [`Memslot`], [`MemslotFlags`] | `KVM_SET_USER_MEMORY_REGION2`, delete | 6.8+ |
//! | [`Memslot::userfault`], [`UserfaultBitmap`], [`probe_userfault`] | `KVM_MEM_USERFAULT` + `userfault_bitmap` | posted series ("KVM Userfault") |
//! | [`MemoryFault`], [`MemoryFaultFlags`] | `KVM_EXIT_MEMORY_FAULT` from `kvm_run` | 6.8+; USERFAULT flag: posted series |
//! | [`Stage2Resolver`], [`Stage2Fault`] | write the page, then clear the bit | works with any [`Backing`](crate::backing::Backing) |
//!
//! # Using it beside kvm-ioctls
//!
//! Nothing here needs to own the VM. Every function that works on a VM
//! takes `impl AsFd`: a [`&Vm`](Vm), or a [`BorrowedFd`](std::os::fd::BorrowedFd)
//! of a VM that another crate created. With kvm-ioctls, whose `VmFd` has
//! only `AsRawFd`:
//!
//! ```ignore
//! let vm = kvm_ioctls::Kvm::new()?.create_vm()?;
//! // SAFETY: `vm` stays open for as long as `vm_fd` is used.
//! let vm_fd = unsafe { BorrowedFd::borrow_raw(vm.as_raw_fd()) };
//! let gmem = GuestMemfd::create(vm_fd, size, GmemFlags::MMAP | GmemFlags::INIT_SHARED)?;
//! ```
//!
//! The workspace's `examples/kvm_ioctls_interop.rs` is a complete program.
//! Memslots convert to the kernel layout ([`Memslot::to_raw`]) for a VMM
//! that issues the ioctl itself, and exits decode from
//! `kvm_ioctls::VcpuFd::get_kvm_run()` ([`MemoryFault::from_kvm_run`]).
//!
//! # Stage-2 faults
//!
//! A memslot with [`Memslot::userfault`] makes vCPU accesses to pages whose
//! bit is set in its [`UserfaultBitmap`] fail `KVM_RUN` with `EFAULT` and
//! exit reason `KVM_EXIT_MEMORY_FAULT` (USERFAULT flag). The fault has one
//! resolution, [`Stage2Fault::resolve`]: write the page into the slot's
//! backing, then clear the bit with a store-release, then re-enter the
//! vCPU. Clearing first would let KVM map an empty page. Concurrent
//! resolvers of one page all succeed and write it once.
//!
//! | state of page P | how reached | allowed |
//! |---|---|---|
//! | bit set, not in backing | bitmap made with [`UserfaultBitmap::new_all_set`] | vCPU access exits; [`Stage2Fault::resolve`] |
//! | bit set, being written | a resolver claimed P | other resolvers of P wait, then get `AlreadyPopulated` |
//! | bit clear, in backing | `resolve` returned | vCPU maps P; later faults on P get `AlreadyPopulated` |
//!
//! # Worked example: restoring a VM from a memory snapshot
//!
//! The VMM restores guest memory lazily: guest_memfd holds guest memory,
//! KVM userfault traps vCPU accesses to pages not yet loaded, and
//! userfaultfd traps the VMM's own (and KVM's in-kernel) accesses through
//! the guest_memfd mapping. Steps marked **(series)** need a kernel with
//! the posted series named; on other kernels they fail with
//! [`Error::Unsupported`](crate::Error::Unsupported) and the errno, and the
//! VMM falls back to loading the whole snapshot before starting.
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use userfault::kvm::{
//!     GmemFlags, GmemFlavour, GuestMemfd, Kvm, MemoryFault, Memslot, Stage2Resolver,
//!     UserfaultBitmap, probe_userfault,
//! };
//!
//! # fn snapshot_page(_gpa: u64) -> &'static [u8] { unimplemented!() }
//! # fn run_vcpu() -> (i32, &'static kvm_bindings::kvm_run) { unimplemented!() }
//! # fn main() -> userfault::Result<()> {
//! const GUEST_SIZE: u64 = 256 << 20;
//! let kvm = Kvm::open()?;
//! let vm = kvm.create_vm(0)?;
//!
//! // 1. Capabilities, decided by trying on scratch objects.
//! //    (series) "KVM: guest_memfd: use write for population": the WRITE
//! //    flag, bit 2 or bit 3 depending on the patch stack.
//! let write = GmemFlavour::probe(&vm)?.write()?;
//! //    (series) "KVM: Introduce KVM Userfault".
//! probe_userfault(&kvm)?;
//!
//! // 2. Guest memory: a guest_memfd the VMM can map and fill with pwrite.
//! let flags = GmemFlags::MMAP | GmemFlags::INIT_SHARED | write;
//! let gmem = GuestMemfd::create(&vm, GUEST_SIZE, flags)?;
//! let view = gmem.map_all()?;
//!
//! // 3. (series) userfaultfd on guest_memfd: register `view` MISSING|MINOR
//! //    with the crate's `uffd` module, as a CONTINUE-only range backed by
//! //    `gmem`. Its handler thread resolves
//! //      MISSING at P: gmem pwrite of P's snapshot data, UFFDIO_CONTINUE(P)
//! //                    (EEXIST -> UFFDIO_WAKE), then clear P's bitmap bit;
//! //      MINOR at P:   UFFDIO_CONTINUE(P) (EEXIST -> UFFDIO_WAKE).
//!
//! // 4. (series) The memslot, with every page trapping.
//! let bitmap = UserfaultBitmap::new_all_set(0, GUEST_SIZE)?;
//! let slot = Memslot::from_mapping(0, 0, &view)
//!     .guest_memfd(&gmem, 0)
//!     .userfault(&bitmap);
//! // SAFETY: `view`, `gmem` and `bitmap` stay alive until the VM is
//! // closed (`drop(vm)` at the end; declared after it, they would
//! // otherwise be dropped first), and no Rust reference points into `view`.
//! unsafe { slot.set(vm.as_fd())? };
//!
//! // 5. vCPU loop (vCPUs from kvm-ioctls or the VMM's own code). A memory
//! //    fault with the USERFAULT flag is resolved by writing the page and
//! //    clearing its bit, in that order; then KVM_RUN again.
//! let resolver = Stage2Resolver::new(&bitmap, &gmem, 0)?;
//! loop {
//!     let (ret, run) = run_vcpu();
//!     if ret == -libc::EFAULT {
//!         if let Some(fault) = MemoryFault::from_kvm_run(run).and_then(|e| resolver.fault(&e)) {
//!             let data = snapshot_page(fault.page_gpa());
//!             fault.resolve(data)?;
//!             continue;
//!         }
//!     }
//!     break;
//! }
//!
//! // 6. Background fill: resolve every page still set the same way (a
//! //    resolver that races with a vCPU fault on the same page writes it
//! //    once), then re-issue the slot without `userfault` to stop trapping.
//!
//! // The VM (after its vCPUs) goes before the slot's memory and bitmap.
//! drop(vm);
//! # Ok(()) }
//! ```
//!
//! # References
//!
//! - [Documentation/virt/kvm/api.rst](https://docs.kernel.org/virt/kvm/api.html):
//!   `KVM_CREATE_GUEST_MEMFD`, `KVM_SET_USER_MEMORY_REGION2`,
//!   `KVM_EXIT_MEMORY_FAULT`, `KVM_CHECK_EXTENSION`
//! - `gmem_sys::upstream` and `gmem_sys::firecracker_6_18`: the posted
//!   series and their numbers

mod exit;
mod gmem;
mod handle;
mod memslot;
mod stage2;
mod userfault;

pub use exit::{
    KVM_RUN_EXIT_REASON_OFFSET, KVM_RUN_MEMORY_FAULT_OFFSET, MemoryFault, MemoryFaultFlags,
};
pub use gmem::{CandidateBit, GmemFlags, GmemFlavour, GmemNumbering, GuestMemfd};
pub use handle::{Kvm, Vm, check_extension};
pub use memslot::{Memslot, MemslotFlags};
pub use stage2::{Stage2Fault, Stage2Resolver};
pub use userfault::{UserfaultBitmap, probe_userfault};

use userfault::open_and_probe_userfault;
