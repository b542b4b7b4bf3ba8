//! Safe userfaultfd, guest_memfd and KVM userfault for virtual-machine
//! monitors.
//!
//! This crate is the safe layer over the generated [`uffd_sys`] and
//! [`gmem_sys`] bindings. It negotiates every capability with the running
//! kernel instead of trusting version numbers or Cargo features.
//!
//! | module | what it does |
//! |---|---|
//! | [`error`] | the one error type: operation, errno, what to do |
//! | [`mem`] | owned memory mappings |
//! | [`backing`] | files whose page cache user space fills (`Memfd`; guest_memfd in `kvm`) |
//! | [`kvm`] | `/dev/kvm`, VMs, guest_memfd, memslots, KVM userfault and stage-2 faults |
//! | [`resolve`] | the typestate: copy-capable and CONTINUE-only regions, typed faults |
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
