//! Safe userfaultfd, guest_memfd and KVM userfault for virtual-machine
//! monitors.
//!
//! This crate is the safe layer over the generated [`uffd_sys`] and
//! [`gmem_sys`] bindings. It negotiates every capability with the running
//! kernel instead of trusting version numbers or Cargo features.
//!
//! The raw bindings are re-exported so that a user of this crate can reach
//! the exact kernel names without a second dependency.

pub use gmem_sys;
pub use uffd_sys;
