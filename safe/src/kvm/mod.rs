//! Just enough KVM for guest_memfd and KVM userfault: `/dev/kvm` and VMs,
//! guest_memfd, memslots (`KVM_SET_USER_MEMORY_REGION2`), the userfault
//! bitmap, `KVM_EXIT_MEMORY_FAULT` decoding and stage-2 fault resolution.
//!
//! | item | what | kernel |
//! |---|---|---|
//! | [`Kvm`], [`Vm`], [`check_extension`] | `/dev/kvm`, `KVM_CREATE_VM`, `KVM_CHECK_EXTENSION` (the integer kept) | any |
//! | [`GuestMemfd`], [`GmemFlags`] | `KVM_CREATE_GUEST_MEMFD`, shared `mmap`, punch-hole | 6.8+; `MMAP`/`INIT_SHARED` 6.18+ |
//! | [`GmemFlavour`] | which bit is `WRITE` / `NO_DIRECT_MAP`, found by trying | posted series |
//! | [`GuestMemfd::write_at`] (`&mut`: before the file has a page state), its [`Backing`](crate::backing::Backing) `fill` (through the state) | population by `pwrite` | posted series ("use write for population") |
//! | [`Memslot`], [`MemslotFlags`] | `KVM_SET_USER_MEMORY_REGION2`, delete | 6.8+; plain slots through `KVM_SET_USER_MEMORY_REGION` before |
//! | [`Memslot::userfault`], [`UserfaultBitmap`], [`probe_userfault`] | `KVM_MEM_USERFAULT` + `userfault_bitmap` | posted series ("KVM Userfault") |
//! | [`MemoryFault`], [`MemoryFaultFlags`] | `KVM_EXIT_MEMORY_FAULT` from `kvm_run` | 6.8+; USERFAULT flag: posted series |
//! | [`Stage2Resolver`], [`Stage2Fault`] | write the page, then clear the bit, through the file's [`PageState`](crate::resolve::PageState) | works with any [`Backing`](crate::backing::Backing) |
//!
//! # Using it beside kvm-ioctls
//!
//! Nothing here needs to own the VM. Every function that works on a VM
//! takes `impl AsFd`: a [`&Vm`](Vm), or a [`BorrowedFd`](std::os::fd::BorrowedFd)
//! of a VM that another crate created. With kvm-ioctls, whose `VmFd` has
//! only `AsRawFd`:
//!
//! ```
//! use std::os::fd::{AsRawFd, BorrowedFd};
//! use userfault::kvm::{GmemFlags, GuestMemfd};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # if !std::path::Path::new("/dev/kvm").exists() { return Ok(()); }
//! let vm = kvm_ioctls::Kvm::new()?.create_vm()?;
//! // SAFETY: `vm` stays open for as long as `vm_fd` is used.
//! let vm_fd = unsafe { BorrowedFd::borrow_raw(vm.as_raw_fd()) };
//! match GuestMemfd::create(vm_fd, 2 << 20, GmemFlags::empty()) {
//!     Ok(gmem) => assert_eq!(gmem.size(), 2 << 20),
//!     // A kernel before Linux 6.8 has no guest_memfd.
//!     Err(e) => assert!(e.is_unsupported() || e.errno().is_some(), "{e}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The workspace's `examples/kvm_ioctls_interop.rs` is a complete program.
//! Memslots convert to the kernel layout ([`Memslot::to_raw`]) for a VMM
//! that issues the ioctl itself, and exits decode from
//! `kvm_ioctls::VcpuExit::MemoryFault` ([`MemoryFault::new`]) or from the
//! `kvm_run` bytes ([`MemoryFault::from_kvm_run_bytes`]).
//!
//! # Stage-2 faults
//!
//! A memslot with [`Memslot::userfault`] makes vCPU accesses to pages whose
//! bit is set in its [`UserfaultBitmap`] fail `KVM_RUN` with `EFAULT` and
//! exit reason `KVM_EXIT_MEMORY_FAULT` (USERFAULT flag). The fault has one
//! resolution, [`Stage2Fault::resolve`]: write the page into the slot's
//! backing, then clear the bit with a store-release, then re-enter the
//! vCPU. Clearing first would let KVM map an empty page. The bitmap is part
//! of the file's [`PageState`](crate::resolve::PageState) (attached by
//! [`Stage2Resolver::new`]): a page is written once whichever path — a
//! vCPU, the VMM's userfaultfd handler, a populator — gets to it first, and
//! every later fault on it only maps it. [`Stage2Fault::resolve_window`]
//! resolves a [`Stage2Window`] of pages around the fault at once: one write
//! per run of its unfilled pages, their bits cleared a word at a time.
//!
//! | state of page P | how reached | allowed |
//! |---|---|---|
//! | bit set, not in backing | bitmap made with [`UserfaultBitmap::new_all_set`], or a discard | vCPU access exits; [`Stage2Fault::resolve`] |
//! | bit set, being written | some path claimed P in the page state | other resolvers of P wait (parked), then find it filled |
//! | bit clear, in backing | any path's fill | vCPU maps P; later faults on P get `AlreadyPresent` |
//!
//! # Worked example: restoring a VM from a memory snapshot
//!
//! Guest memory is a guest_memfd that the VMM maps and KVM maps as a
//! memslot with `KVM_MEM_USERFAULT`. A page can be asked for by a vCPU
//! (a stage-2 fault) and by the VMM's own accesses through its mapping (a
//! userfaultfd fault); both go through the file's one page state, so each
//! page is written once from the snapshot and a page the guest wrote is
//! never overwritten. The guest here reads a byte of one page, stores it
//! into another and halts; the VMM then reads the stored byte through its
//! mapping. It needs a kernel with the posted series (guest_memfd
//! `write()`, KVM userfault, userfaultfd on guest_memfd); elsewhere it
//! stops at the first capability the kernel lacks.
//!
//! ```
//! use std::os::fd::{AsRawFd, BorrowedFd};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use kvm_ioctls::VcpuExit;
//! use userfault::backing::BackedMapping;
//! use userfault::kvm::{
//!     GmemFlags, GmemFlavour, GuestMemfd, Kvm, MemoryFault, Memslot, Stage2Resolver,
//!     UserfaultBitmap, probe_userfault,
//! };
//! use userfault::resolve::{Fault, PageState, Region};
//! use userfault::uffd::{EventBuffer, Uffd};
//!
//! const SIZE: usize = 64 << 10;
//! // The snapshot: code at 0x1000 (mov al, [0x2000]; mov [0x3000], al; hlt),
//! // the byte 0x42 at 0x2000.
//! fn snapshot() -> Vec<u8> {
//!     let mut image = vec![0u8; SIZE];
//!     image[0x1000..0x1007].copy_from_slice(&[0xA0, 0x00, 0x20, 0xA2, 0x00, 0x30, 0xF4]);
//!     image[0x2000] = 0x42;
//!     image
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # if !std::path::Path::new("/dev/kvm").exists() { return Ok(()); }
//! let image = snapshot();
//! // The VM and its vCPU come from kvm-ioctls; the crate works on its fd.
//! let vm = kvm_ioctls::Kvm::new()?.create_vm()?;
//! // SAFETY: `vm` keeps the descriptor open for as long as `vm_fd` is used.
//! let vm_fd = unsafe { BorrowedFd::borrow_raw(vm.as_raw_fd()) };
//! let kvm = Kvm::open()?;
//! // 1. Capabilities, decided by trying on scratch objects.
//! let write = match GmemFlavour::probe(vm_fd).and_then(|f| f.write()) {
//!     Ok(write) => write,
//!     Err(e) => return Ok(println!("no guest_memfd write(): {e}")),
//! };
//! if let Err(e) = probe_userfault(&kvm) {
//!     return Ok(println!("no KVM userfault: {e}"));
//! }
//! // 2. Guest memory, its page state, and the VMM's mapping of it.
//! let flags = GmemFlags::MMAP | GmemFlags::INIT_SHARED | write;
//! let gmem = Arc::new(GuestMemfd::create(vm_fd, SIZE as u64, flags)?);
//! let state = PageState::new(gmem.clone())?;
//! let ram = Arc::new(BackedMapping::new(&state, 0, SIZE)?);
//! // 3. The VMM's mapping, CONTINUE-only: MISSING → write() + CONTINUE.
//! let uffd = Arc::new(Uffd::builder().non_blocking(true).create()?);
//! // SAFETY: guest memory is only accessed by the vCPU and through raw
//! // pointers.
//! let region = match unsafe { Region::continue_only(uffd.clone(), ram.clone()) } {
//!     Ok(region) => region,
//!     Err(e) => return Ok(println!("no userfaultfd on guest_memfd: {e}")),
//! };
//! // 4. The memslot, every page trapping; its bitmap joins the page state.
//! let bitmap = Arc::new(UserfaultBitmap::new_all_set(0, SIZE as u64)?);
//! let resolver = Stage2Resolver::new(&state, &bitmap, 0)?;
//! let slot = Memslot::from_mapping(0, 0, ram.mapping())
//!     .guest_memfd(&gmem, 0)
//!     .userfault(&bitmap);
//! // SAFETY: `ram`, `gmem` and `bitmap` outlive the VM (dropped below, before
//! // them), and no Rust reference points into `ram`.
//! unsafe { slot.set(vm_fd)? };
//! // 5. A real-mode vCPU at 0x1000.
//! let mut vcpu = vm.create_vcpu(0)?;
//! let mut sregs = vcpu.get_sregs()?;
//! for seg in [&mut sregs.cs, &mut sregs.ds] {
//!     (seg.base, seg.selector) = (0, 0);
//! }
//! vcpu.set_sregs(&sregs)?;
//! vcpu.set_regs(&kvm_bindings::kvm_regs { rip: 0x1000, rflags: 2, ..Default::default() })?;
//! std::thread::scope(|s| -> userfault::Result<()> {
//!     // The VMM's handler: faults on its mapping, through the same state.
//!     let handler = s.spawn(|| -> userfault::Result<()> {
//!         let mut events = EventBuffer::with_capacity(8);
//!         for _ in 0..100 {
//!             for event in uffd.wait_events(&mut events, Some(Duration::from_millis(10)))? {
//!                 match region.fault(&event) {
//!                     Some(Fault::Missing(f)) => {
//!                         let at = f.file_offset() as usize;
//!                         f.write_then_continue(&image[at..at + 4096])?;
//!                     }
//!                     Some(Fault::Minor(f)) => {
//!                         f.map()?;
//!                     }
//!                     _ => {}
//!                 }
//!             }
//!         }
//!         Ok(())
//!     });
//!     // The vCPU: a stage-2 fault is resolved by writing the page, then
//!     // clearing its bit; then KVM_RUN again.
//!     loop {
//!         match vcpu.run() {
//!             Ok(VcpuExit::MemoryFault { flags, gpa, size }) => {
//!                 let exit = MemoryFault::new(flags, gpa, size);
//!                 let fault = resolver.fault(&exit).expect("a userfault in the slot");
//!                 let at = fault.backing_offset() as usize;
//!                 fault.resolve(&image[at..at + 4096])?;
//!             }
//!             Ok(VcpuExit::Hlt) => break,
//!             other => panic!("unexpected exit {other:?}"),
//!         }
//!     }
//!     // The VMM reads what the guest stored, through its own mapping.
//!     // SAFETY: inside the live mapping; the read waits for its fault.
//!     let stored = unsafe { ram.mapping().as_ptr().add(0x3000).read_volatile() };
//!     assert_eq!(stored, 0x42);
//!     handler.join().expect("handler")
//! })?;
//! // The VM (after its vCPU) goes before the slot's memory and bitmap.
//! drop(vcpu);
//! drop(vm);
//! # Ok(())
//! # }
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
pub use stage2::{Stage2Fault, Stage2Resolver, Stage2Window};
pub use userfault::{UserfaultBitmap, probe_userfault};
