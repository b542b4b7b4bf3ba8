//! Safe userfaultfd, guest_memfd and KVM userfault for virtual-machine
//! monitors.
//!
//! This crate is the safe layer over the generated [`uffd_sys`] and
//! [`gmem_sys`] bindings. It negotiates every capability with the running
//! kernel instead of trusting version numbers or Cargo features.
//!
//! # A demand-paging handler
//!
//! Guest memory is a file (a shmem memfd here; a guest_memfd in a VM) whose
//! pages come from a snapshot when first touched. Create the file and its
//! mapping, register it, and serve its faults:
//!
//! ```
//! use std::sync::Arc;
//! use userfault::backing::{BackedMapping, Memfd};
//! use userfault::resolve::{Fault, Region};
//! use userfault::uffd::{EventBuffer, Uffd};
//!
//! # fn main() -> userfault::Result<()> {
//! let snapshot = vec![7u8; 16 * 4096];
//! let ram = BackedMapping::whole(Arc::new(Memfd::shmem(c"guest-ram", 16 * 4096)?))?;
//! let uffd = Arc::new(Uffd::new()?);
//! // SAFETY: guest memory is only accessed through raw pointers.
//! let region = unsafe { Region::continue_only(uffd.clone(), ram.clone())? };
//! # let guest = ram.clone();
//! # // SAFETY: inside the live mapping; the read waits for its fault.
//! # let vcpu = std::thread::spawn(move || unsafe { guest.mapping().as_ptr().add(5000).read_volatile() });
//! let mut events = EventBuffer::with_capacity(16);
//! loop {
//!     for event in uffd.read_events(&mut events)? {
//!         match region.fault(&event) {
//!             Some(Fault::Missing(f)) => {
//!                 let at = f.file_offset() as usize;
//!                 f.write_then_continue(&snapshot[at..at + 4096])?;
//!             }
//!             Some(Fault::Minor(f)) => drop(f.map()?),
//!             _ => {}
//!         }
//!     }
//! #   break;
//! }
//! # assert_eq!(vcpu.join().unwrap(), 7);
//! # Ok(())
//! # }
//! ```
//!
//! Each type comes from the one before: the [`Memfd`](backing::Memfd)
//! makes a [`BackedMapping`](backing::BackedMapping) (with the file's
//! [`PageState`](resolve::PageState), which every path that fills the file
//! shares), the [`Uffd`](uffd::Uffd) and the mapping make a
//! [`Region`](resolve::Region), the `Uffd` reads [`Event`](uffd::Event)s,
//! and the region turns each into a typed [`Fault`](resolve::Fault) whose
//! methods are exactly the resolutions its class allows. The
//! [`kvm`] module adds the vCPU's side: stage-2 faults through the same
//! page state.
//!
//! | module | what it does |
//! |---|---|
//! | [`error`] | the one error type: operation, errno, what to do |
//! | [`mem`] | owned memory mappings |
//! | [`backing`] | files whose page cache user space fills (`Memfd`; guest_memfd in `kvm`) |
//! | [`kvm`] | `/dev/kvm`, VMs, guest_memfd, memslots, KVM userfault and stage-2 faults |
//! | [`resolve`] | the typestate: copy-capable and CONTINUE-only regions, typed faults, the shared page state of each file |
//! | [`uffd`] | the userfaultfd object: open, negotiate, register, resolve, read events |
//! | [`pagemap`] | `PAGEMAP_SCAN`: pages by category (written, accessed, present, …) as typed runs |
//! | [`workingset`] | which pages of a range a guest touched: RWP_ASYNC, WP_ASYNC or fault order, whichever the kernel has |
//! | [`caps`] | [`Capabilities::probe`](caps::Capabilities::probe): everything the running kernel offers, as one value |
//!
//! The raw bindings are re-exported so that a user of this crate can reach
//! the exact kernel names without a second dependency.

pub mod backing;
pub mod caps;
pub mod error;
#[cfg(test)]
mod fuzzing;
pub mod kvm;
pub mod mem;
pub mod pagemap;
pub mod resolve;
mod sys;
pub mod uffd;
pub mod workingset;

pub use error::{Errno, Error, Result};
pub use gmem_sys;
pub use uffd_sys;
