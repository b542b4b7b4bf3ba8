//! Raw bindings to Linux guest_memfd, `KVM_SET_USER_MEMORY_REGION2`, memory
//! attributes, `KVM_EXIT_MEMORY_FAULT` and the posted KVM userfault ABI.
//!
//! The crate root holds the mainline items (Linux 6.18 and later): the
//! `kvm_create_guest_memfd`, `kvm_userspace_memory_region2` and
//! `kvm_memory_attributes` structs, `GUEST_MEMFD_FLAG_*`, `KVM_MEM_*`, the
//! memory-fault exit payload ([`kvm_memory_fault_exit`]), the capability
//! numbers this ABI is discovered through, and the request numbers of the
//! few system ioctls needed to reach a VM (`KVM_GET_API_VERSION`,
//! `KVM_CREATE_VM`, `KVM_CHECK_EXTENSION`). The rest of KVM (vCPUs,
//! `kvm_run`) is in `kvm-bindings`.
//!
//! # Out-of-tree ABI
//!
//! guest_memfd `write()`, direct-map removal and KVM userfault exist only in
//! posted kernel series, and the sources disagree on their numbers: bit 2 of
//! the guest_memfd flags is `WRITE` in one posting and `NO_DIRECT_MAP` in
//! another, and `KVM_CAP_USERFAULT` has been 239, 243 and 245 — numbers that
//! mainline has since given to other capabilities. Each source therefore has
//! its own module:
//!
//! | module | source |
//! |---|---|
//! | [`upstream::kvm_userfault_v3`] | "KVM: Introduce KVM Userfault" v3, 2025-06-18 |
//! | [`upstream::gmem_write_v7`] | "KVM: guest_memfd: use write for population" v7, 2025-11-14 |
//! | [`upstream::direct_map_removal_v12`] | "Direct Map Removal Support for guest_memfd" v12, 2026 |
//! | [`firecracker_6_18`] | Firecracker's 6.18 patch stack, 2026-08 |
//!
//! Never decide from one of these numbers alone what a kernel supports: try
//! the operation (create a scratch guest_memfd with the flag and `pwrite`
//! it; create a scratch memslot with `KVM_MEM_USERFAULT`). The `userfault`
//! crate does exactly that.
//!
//! The memslot layout with `userfault_bitmap` is
//! [`upstream::kvm_userfault_v3::kvm_userspace_memory_region2`]; it converts
//! losslessly to and from the mainline [`kvm_userspace_memory_region2`] and
//! `kvm_bindings::kvm_userspace_memory_region2` (see [`convert`]).
//!
//! The bindings are generated offline from `abi/` by the workspace's `gen/`
//! program and committed; building this crate needs no libclang.
//!
//! # References
//! - [Documentation/virt/kvm/api.rst](https://docs.kernel.org/virt/kvm/api.html)
//!   (`KVM_CREATE_GUEST_MEMFD`, `KVM_SET_USER_MEMORY_REGION2`,
//!   `KVM_EXIT_MEMORY_FAULT`)
//! - `abi/PROVENANCE.md` in the source repository: where every item comes from

#![no_std]

#[cfg(not(target_pointer_width = "64"))]
compile_error!("gmem-sys binds the 64-bit Linux ABI only");

pub mod convert;
pub mod ioctl;

#[allow(non_camel_case_types, non_upper_case_globals)]
#[path = "generated/mainline.rs"]
mod mainline;

pub use mainline::*;

/// Items from kernel series posted upstream but not merged, one module per
/// posting.
pub mod upstream {
    /// KVM userfault, as posted in "[PATCH v3 00/15] KVM: Introduce KVM
    /// Userfault" (James Houghton, 2025-06-18).
    ///
    /// `KVM_CAP_USERFAULT` is 243 here; mainline gave 243 to
    /// `KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED`.
    #[allow(non_camel_case_types, non_upper_case_globals)]
    pub mod kvm_userfault_v3 {
        include!("generated/kvm_userfault_v3.rs");
    }

    /// guest_memfd population by `write()`, as posted in "[PATCH v7 0/2] KVM:
    /// guest_memfd: use write for population" (Nikita Kalyazin, 2025-11-14).
    ///
    /// Bit 2 here is `NO_DIRECT_MAP` in [`direct_map_removal_v12`].
    #[allow(non_camel_case_types, non_upper_case_globals)]
    pub mod gmem_write_v7 {
        include!("generated/gmem_write_v7.rs");
    }

    /// guest_memfd direct-map removal, as posted in "[PATCH v12 00/16] Direct
    /// Map Removal Support for guest_memfd" (2026).
    ///
    /// Bit 2 here is `WRITE` in [`gmem_write_v7`].
    #[allow(non_camel_case_types, non_upper_case_globals)]
    pub mod direct_map_removal_v12 {
        include!("generated/direct_map_removal_v12.rs");
    }
}

/// The out-of-tree ABI of Firecracker's 6.18 kernel patch stack (branch
/// `feature/secret-hiding`, 2026-08): direct-map removal v12, guest_memfd
/// `write()` v7 renumbered to bit 3, KVM userfault with capability 245, and
/// an unpublished asynchronous page-fault series.
///
/// The memslot layout is the one of [`upstream::kvm_userfault_v3`].
#[allow(non_camel_case_types, non_upper_case_globals)]
pub mod firecracker_6_18 {
    include!("generated/firecracker_6_18.rs");

    pub use crate::upstream::kvm_userfault_v3::kvm_userspace_memory_region2;
}
