//! Reference values for the items the system's kernel headers predate or
//! never had (out-of-tree series), transcribed from the project's kernel ABI
//! reference (`kernel-abi.md`, section given per entry), which cites the
//! kernel release or posted series of each and what this machine's kernel
//! was observed to accept.
//!
//! Keys: `const <path>`, `size <path>`, `align <path>`, `offset <path>.<field>`,
//! `fsize <path>.<field>` (the field's size).

/// Every fact checked against the reference, as `(key, value)`.
pub const VALUES: &[(&str, u64)] = &[
    // userfaultfd items newer than the Linux 6.1 uapi header.
    ("const uffd_sys::_UFFDIO_MOVE", 0x05), // kernel-abi.md §1.2
    ("const uffd_sys::_UFFDIO_POISON", 0x08), // kernel-abi.md §1.2
    ("const uffd_sys::UFFD_FEATURE_WP_UNPOPULATED", 1 << 13), // kernel-abi.md §1.2
    ("const uffd_sys::UFFD_FEATURE_POISON", 1 << 14), // kernel-abi.md §1.2
    ("const uffd_sys::UFFD_FEATURE_WP_ASYNC", 1 << 15), // kernel-abi.md §1.2
    ("const uffd_sys::UFFD_FEATURE_MOVE", 1 << 16), // kernel-abi.md §1.2
    ("const uffd_sys::UFFDIO_CONTINUE_MODE_WP", 1 << 1), // kernel-abi.md §1.2
    ("const uffd_sys::UFFDIO_POISON_MODE_DONTWAKE", 1 << 0), // kernel-abi.md §1.2
    ("const uffd_sys::UFFDIO_MOVE_MODE_DONTWAKE", 1 << 0), // kernel-abi.md §1.2
    ("const uffd_sys::UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES", 1 << 1), // kernel-abi.md §1.2
    ("const uffd_sys::UFFDIO_MOVE", 0xC028_AA05), // kernel-abi.md §1.2
    ("const uffd_sys::UFFDIO_POISON", 0xC020_AA08), // kernel-abi.md §1.2
    ("const uffd_sys::UFFD_API_FEATURES", 0x7_FFFF), // kernel-abi.md §1.2
    ("const uffd_sys::UFFD_API_RANGE_IOCTLS", 0x3FC), // kernel-abi.md §1.2
    ("const uffd_sys::UFFD_API_RANGE_IOCTLS_BASIC", 0x3CC), // kernel-abi.md §1.2
    // kernel-abi.md §2.3: { uffdio_range range; u64 mode; s64 updated; }
    ("size uffd_sys::uffdio_poison", 32),
    ("align uffd_sys::uffdio_poison", 8),
    ("offset uffd_sys::uffdio_poison.range", 0),
    ("fsize uffd_sys::uffdio_poison.range", 16),
    ("offset uffd_sys::uffdio_poison.range.start", 0),
    ("fsize uffd_sys::uffdio_poison.range.start", 8),
    ("offset uffd_sys::uffdio_poison.range.len", 8),
    ("fsize uffd_sys::uffdio_poison.range.len", 8),
    ("offset uffd_sys::uffdio_poison.mode", 16),
    ("fsize uffd_sys::uffdio_poison.mode", 8),
    ("offset uffd_sys::uffdio_poison.updated", 24),
    ("fsize uffd_sys::uffdio_poison.updated", 8),
    // kernel-abi.md §2.3: { u64 dst, src, len, mode; s64 move; }
    ("size uffd_sys::uffdio_move", 40),
    ("align uffd_sys::uffdio_move", 8),
    ("offset uffd_sys::uffdio_move.dst", 0),
    ("fsize uffd_sys::uffdio_move.dst", 8),
    ("offset uffd_sys::uffdio_move.src", 8),
    ("fsize uffd_sys::uffdio_move.src", 8),
    ("offset uffd_sys::uffdio_move.len", 16),
    ("fsize uffd_sys::uffdio_move.len", 8),
    ("offset uffd_sys::uffdio_move.mode", 24),
    ("fsize uffd_sys::uffdio_move.mode", 8),
    ("offset uffd_sys::uffdio_move.move", 32),
    ("fsize uffd_sys::uffdio_move.move", 8),
    // Linux 7.3 (linux-7.3-rwp.md): read-write protection and run-time mode switches.
    ("const uffd_sys::_UFFDIO_RWPROTECT", 0x09),
    ("const uffd_sys::_UFFDIO_SET_MODE", 0x0A),
    ("const uffd_sys::UFFD_FEATURE_RWP", 1 << 17),
    ("const uffd_sys::UFFD_FEATURE_RWP_ASYNC", 1 << 18),
    ("const uffd_sys::UFFDIO_REGISTER_MODE_RWP", 1 << 3),
    ("const uffd_sys::UFFD_PAGEFAULT_FLAG_RWP", 1 << 3),
    ("const uffd_sys::UFFDIO_RWPROTECT_MODE_RWP", 1 << 0),
    ("const uffd_sys::UFFDIO_RWPROTECT_MODE_DONTWAKE", 1 << 1),
    ("const uffd_sys::UFFDIO_RWPROTECT", 0xC018_AA09),
    ("const uffd_sys::UFFDIO_SET_MODE", 0x4010_AA0A),
    ("const uffd_sys::UFFD_API_REGISTER_MODES", 0xF),
    ("const uffd_sys::UFFD_API_IOCTLS", 0x8000_0000_0000_0403),
    // linux-7.3-rwp.md: { uffdio_range range; u64 mode; }
    ("size uffd_sys::uffdio_rwprotect", 24),
    ("align uffd_sys::uffdio_rwprotect", 8),
    ("offset uffd_sys::uffdio_rwprotect.range", 0),
    ("fsize uffd_sys::uffdio_rwprotect.range", 16),
    ("offset uffd_sys::uffdio_rwprotect.range.start", 0),
    ("fsize uffd_sys::uffdio_rwprotect.range.start", 8),
    ("offset uffd_sys::uffdio_rwprotect.range.len", 8),
    ("fsize uffd_sys::uffdio_rwprotect.range.len", 8),
    ("offset uffd_sys::uffdio_rwprotect.mode", 16),
    ("fsize uffd_sys::uffdio_rwprotect.mode", 8),
    // linux-7.3-rwp.md: { u64 enable; u64 disable; }
    ("size uffd_sys::uffdio_set_mode", 16),
    ("align uffd_sys::uffdio_set_mode", 8),
    ("offset uffd_sys::uffdio_set_mode.enable", 0),
    ("fsize uffd_sys::uffdio_set_mode.enable", 8),
    ("offset uffd_sys::uffdio_set_mode.disable", 8),
    ("fsize uffd_sys::uffdio_set_mode.disable", 8),
    // PAGEMAP_SCAN (<linux/fs.h>, 6.7; PAGE_IS_ACCESSED 7.3; linux-7.3-rwp.md).
    ("const uffd_sys::pagemap::PROCFS_IOCTL_MAGIC", 0x66),
    ("const uffd_sys::pagemap::PAGE_IS_WPALLOWED", 1 << 0),
    ("const uffd_sys::pagemap::PAGE_IS_WRITTEN", 1 << 1),
    ("const uffd_sys::pagemap::PAGE_IS_FILE", 1 << 2),
    ("const uffd_sys::pagemap::PAGE_IS_PRESENT", 1 << 3),
    ("const uffd_sys::pagemap::PAGE_IS_SWAPPED", 1 << 4),
    ("const uffd_sys::pagemap::PAGE_IS_PFNZERO", 1 << 5),
    ("const uffd_sys::pagemap::PAGE_IS_HUGE", 1 << 6),
    ("const uffd_sys::pagemap::PAGE_IS_SOFT_DIRTY", 1 << 7),
    ("const uffd_sys::pagemap::PAGE_IS_GUARD", 1 << 8),
    ("const uffd_sys::pagemap::PAGE_IS_ACCESSED", 1 << 9),
    ("const uffd_sys::pagemap::PM_SCAN_WP_MATCHING", 1 << 0),
    ("const uffd_sys::pagemap::PM_SCAN_CHECK_WPASYNC", 1 << 1),
    ("const uffd_sys::pagemap::PAGEMAP_SCAN", 0xC060_6610),
    ("size uffd_sys::pagemap::page_region", 24),
    ("align uffd_sys::pagemap::page_region", 8),
    ("offset uffd_sys::pagemap::page_region.start", 0),
    ("fsize uffd_sys::pagemap::page_region.start", 8),
    ("offset uffd_sys::pagemap::page_region.end", 8),
    ("fsize uffd_sys::pagemap::page_region.end", 8),
    ("offset uffd_sys::pagemap::page_region.categories", 16),
    ("fsize uffd_sys::pagemap::page_region.categories", 8),
    ("size uffd_sys::pagemap::pm_scan_arg", 96),
    ("align uffd_sys::pagemap::pm_scan_arg", 8),
    ("offset uffd_sys::pagemap::pm_scan_arg.size", 0),
    ("fsize uffd_sys::pagemap::pm_scan_arg.size", 8),
    ("offset uffd_sys::pagemap::pm_scan_arg.flags", 8),
    ("fsize uffd_sys::pagemap::pm_scan_arg.flags", 8),
    ("offset uffd_sys::pagemap::pm_scan_arg.start", 16),
    ("fsize uffd_sys::pagemap::pm_scan_arg.start", 8),
    ("offset uffd_sys::pagemap::pm_scan_arg.end", 24),
    ("fsize uffd_sys::pagemap::pm_scan_arg.end", 8),
    ("offset uffd_sys::pagemap::pm_scan_arg.walk_end", 32),
    ("fsize uffd_sys::pagemap::pm_scan_arg.walk_end", 8),
    ("offset uffd_sys::pagemap::pm_scan_arg.vec", 40),
    ("fsize uffd_sys::pagemap::pm_scan_arg.vec", 8),
    ("offset uffd_sys::pagemap::pm_scan_arg.vec_len", 48),
    ("fsize uffd_sys::pagemap::pm_scan_arg.vec_len", 8),
    ("offset uffd_sys::pagemap::pm_scan_arg.max_pages", 56),
    ("fsize uffd_sys::pagemap::pm_scan_arg.max_pages", 8),
    (
        "offset uffd_sys::pagemap::pm_scan_arg.category_inverted",
        64,
    ),
    ("fsize uffd_sys::pagemap::pm_scan_arg.category_inverted", 8),
    ("offset uffd_sys::pagemap::pm_scan_arg.category_mask", 72),
    ("fsize uffd_sys::pagemap::pm_scan_arg.category_mask", 8),
    (
        "offset uffd_sys::pagemap::pm_scan_arg.category_anyof_mask",
        80,
    ),
    (
        "fsize uffd_sys::pagemap::pm_scan_arg.category_anyof_mask",
        8,
    ),
    ("offset uffd_sys::pagemap::pm_scan_arg.return_mask", 88),
    ("fsize uffd_sys::pagemap::pm_scan_arg.return_mask", 8),
    // Mainline KVM items newer than the Linux 6.1 uapi header.
    ("const gmem_sys::KVM_MEM_GUEST_MEMFD", 1 << 2), // kernel-abi.md §1.3
    ("const gmem_sys::KVM_MEMORY_ATTRIBUTE_PRIVATE", 1 << 3), // kernel-abi.md §1.3
    ("const gmem_sys::KVM_SET_USER_MEMORY_REGION2", 0x40A0_AE49), // kernel-abi.md §1.3
    ("const gmem_sys::KVM_SET_MEMORY_ATTRIBUTES", 0x4020_AED2), // kernel-abi.md §1.3
    ("const gmem_sys::KVM_CREATE_GUEST_MEMFD", 0xC040_AED4), // kernel-abi.md §1.3
    ("const gmem_sys::GUEST_MEMFD_FLAG_MMAP", 1 << 0), // kernel-abi.md §1.3
    ("const gmem_sys::GUEST_MEMFD_FLAG_INIT_SHARED", 1 << 1), // kernel-abi.md §1.3
    ("const gmem_sys::KVM_EXIT_MEMORY_FAULT", 39),   // kernel-abi.md §1.3
    ("const gmem_sys::KVM_MEMORY_EXIT_FLAG_PRIVATE", 1 << 3), // kernel-abi.md §1.3
    ("const gmem_sys::KVM_CAP_USER_MEMORY2", 231),   // kernel-abi.md §1.3
    ("const gmem_sys::KVM_CAP_MEMORY_FAULT_INFO", 232), // kernel-abi.md §1.3
    ("const gmem_sys::KVM_CAP_MEMORY_ATTRIBUTES", 233), // kernel-abi.md §1.3
    ("const gmem_sys::KVM_CAP_GUEST_MEMFD", 234),    // kernel-abi.md §1.3
    ("const gmem_sys::KVM_CAP_VM_TYPES", 235),       // kernel-abi.md §1.3
    ("const gmem_sys::KVM_CAP_PRE_FAULT_MEMORY", 236), // kernel-abi.md §1.3
    (
        "const gmem_sys::KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED",
        243,
    ), // kernel-abi.md §1.3
    ("const gmem_sys::KVM_CAP_GUEST_MEMFD_FLAGS", 244), // kernel-abi.md §1.3
    ("const gmem_sys::KVM_CAP_ARM_SEA_TO_USER", 245), // kernel-abi.md §1.3
    ("const gmem_sys::KVM_CAP_S390_USER_OPEREXEC", 246), // kernel-abi.md §1.3
    ("const gmem_sys::KVM_CAP_S390_KEYOP", 247),     // kernel-abi.md §1.3
    // kernel-abi.md §3.1
    ("size gmem_sys::kvm_userspace_memory_region2", 160),
    ("align gmem_sys::kvm_userspace_memory_region2", 8),
    ("offset gmem_sys::kvm_userspace_memory_region2.slot", 0),
    ("fsize gmem_sys::kvm_userspace_memory_region2.slot", 4),
    ("offset gmem_sys::kvm_userspace_memory_region2.flags", 4),
    ("fsize gmem_sys::kvm_userspace_memory_region2.flags", 4),
    (
        "offset gmem_sys::kvm_userspace_memory_region2.guest_phys_addr",
        8,
    ),
    (
        "fsize gmem_sys::kvm_userspace_memory_region2.guest_phys_addr",
        8,
    ),
    (
        "offset gmem_sys::kvm_userspace_memory_region2.memory_size",
        16,
    ),
    (
        "fsize gmem_sys::kvm_userspace_memory_region2.memory_size",
        8,
    ),
    (
        "offset gmem_sys::kvm_userspace_memory_region2.userspace_addr",
        24,
    ),
    (
        "fsize gmem_sys::kvm_userspace_memory_region2.userspace_addr",
        8,
    ),
    (
        "offset gmem_sys::kvm_userspace_memory_region2.guest_memfd_offset",
        32,
    ),
    (
        "fsize gmem_sys::kvm_userspace_memory_region2.guest_memfd_offset",
        8,
    ),
    (
        "offset gmem_sys::kvm_userspace_memory_region2.guest_memfd",
        40,
    ),
    (
        "fsize gmem_sys::kvm_userspace_memory_region2.guest_memfd",
        4,
    ),
    ("offset gmem_sys::kvm_userspace_memory_region2.pad1", 44),
    ("fsize gmem_sys::kvm_userspace_memory_region2.pad1", 4),
    ("offset gmem_sys::kvm_userspace_memory_region2.pad2", 48),
    ("fsize gmem_sys::kvm_userspace_memory_region2.pad2", 112),
    // kernel-abi.md §3.1
    ("size gmem_sys::kvm_memory_attributes", 32),
    ("align gmem_sys::kvm_memory_attributes", 8),
    ("offset gmem_sys::kvm_memory_attributes.address", 0),
    ("fsize gmem_sys::kvm_memory_attributes.address", 8),
    ("offset gmem_sys::kvm_memory_attributes.size", 8),
    ("fsize gmem_sys::kvm_memory_attributes.size", 8),
    ("offset gmem_sys::kvm_memory_attributes.attributes", 16),
    ("fsize gmem_sys::kvm_memory_attributes.attributes", 8),
    ("offset gmem_sys::kvm_memory_attributes.flags", 24),
    ("fsize gmem_sys::kvm_memory_attributes.flags", 8),
    // kernel-abi.md §3.1
    ("size gmem_sys::kvm_create_guest_memfd", 64),
    ("align gmem_sys::kvm_create_guest_memfd", 8),
    ("offset gmem_sys::kvm_create_guest_memfd.size", 0),
    ("fsize gmem_sys::kvm_create_guest_memfd.size", 8),
    ("offset gmem_sys::kvm_create_guest_memfd.flags", 8),
    ("fsize gmem_sys::kvm_create_guest_memfd.flags", 8),
    ("offset gmem_sys::kvm_create_guest_memfd.reserved", 16),
    ("fsize gmem_sys::kvm_create_guest_memfd.reserved", 48),
    // kernel-abi.md §3.1 (kvm_run.memory_fault)
    ("size gmem_sys::kvm_memory_fault_exit", 24),
    ("align gmem_sys::kvm_memory_fault_exit", 8),
    ("offset gmem_sys::kvm_memory_fault_exit.flags", 0),
    ("fsize gmem_sys::kvm_memory_fault_exit.flags", 8),
    ("offset gmem_sys::kvm_memory_fault_exit.gpa", 8),
    ("fsize gmem_sys::kvm_memory_fault_exit.gpa", 8),
    ("offset gmem_sys::kvm_memory_fault_exit.size", 16),
    ("fsize gmem_sys::kvm_memory_fault_exit.size", 8),
    // KVM Userfault v3 posting (kernel-abi.md §1.4, §6).
    (
        "const gmem_sys::upstream::kvm_userfault_v3::KVM_MEM_USERFAULT",
        1 << 3,
    ), // §6
    (
        "const gmem_sys::upstream::kvm_userfault_v3::KVM_MEMORY_EXIT_FLAG_USERFAULT",
        1 << 4,
    ), // §6
    (
        "const gmem_sys::upstream::kvm_userfault_v3::KVM_CAP_USERFAULT",
        243,
    ), // §6
    // kernel-abi.md §3.1/§6: userfault_bitmap at 48, pad2[13]
    (
        "size gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2",
        160,
    ),
    (
        "align gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2",
        8,
    ),
    (
        "offset gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.slot",
        0,
    ),
    (
        "fsize gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.slot",
        4,
    ),
    (
        "offset gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.flags",
        4,
    ),
    (
        "fsize gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.flags",
        4,
    ),
    (
        "offset gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.guest_phys_addr",
        8,
    ),
    (
        "fsize gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.guest_phys_addr",
        8,
    ),
    (
        "offset gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.memory_size",
        16,
    ),
    (
        "fsize gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.memory_size",
        8,
    ),
    (
        "offset gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.userspace_addr",
        24,
    ),
    (
        "fsize gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.userspace_addr",
        8,
    ),
    (
        "offset gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.guest_memfd_offset",
        32,
    ),
    (
        "fsize gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.guest_memfd_offset",
        8,
    ),
    (
        "offset gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.guest_memfd",
        40,
    ),
    (
        "fsize gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.guest_memfd",
        4,
    ),
    (
        "offset gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.pad1",
        44,
    ),
    (
        "fsize gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.pad1",
        4,
    ),
    (
        "offset gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.userfault_bitmap",
        48,
    ),
    (
        "fsize gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.userfault_bitmap",
        8,
    ),
    (
        "offset gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.pad2",
        56,
    ),
    (
        "fsize gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2.pad2",
        104,
    ),
    // guest_memfd write() v7 and direct map removal v12 postings (kernel-abi.md §1.4, §4, §5).
    (
        "const gmem_sys::upstream::gmem_write_v7::GUEST_MEMFD_FLAG_WRITE",
        1 << 2,
    ), // §4
    (
        "const gmem_sys::upstream::direct_map_removal_v12::GUEST_MEMFD_FLAG_NO_DIRECT_MAP",
        1 << 2,
    ), // §5
    // Firecracker's 6.18 stack (kernel-abi.md §1.4, §7.6).
    ("const gmem_sys::firecracker_6_18::KVMIO", 0xAE), // §1.4
    (
        "const gmem_sys::firecracker_6_18::GUEST_MEMFD_FLAG_NO_DIRECT_MAP",
        1 << 2,
    ), // §1.4
    (
        "const gmem_sys::firecracker_6_18::GUEST_MEMFD_FLAG_WRITE",
        1 << 3,
    ), // §1.4
    (
        "const gmem_sys::firecracker_6_18::KVM_MEM_USERFAULT",
        1 << 3,
    ), // §1.4
    (
        "const gmem_sys::firecracker_6_18::KVM_MEMORY_EXIT_FLAG_USERFAULT",
        1 << 4,
    ), // §1.4
    (
        "const gmem_sys::firecracker_6_18::KVM_MEMORY_EXIT_FLAG_APF",
        1 << 5,
    ), // §1.4
    ("const gmem_sys::firecracker_6_18::KVM_CAP_USERFAULT", 245), // §1.4
    (
        "const gmem_sys::firecracker_6_18::KVM_CAP_ASYNC_PF_USERFAULT",
        246,
    ), // §1.4
    (
        "const gmem_sys::firecracker_6_18::KVM_ASYNC_PF",
        0x4020_AED6,
    ), // §1.4
    // kernel-abi.md §1.4: { u64 gpa; u32 op; u32 flags; u64 reserved[2]; }
    ("size gmem_sys::firecracker_6_18::kvm_async_pf_req", 32),
    ("align gmem_sys::firecracker_6_18::kvm_async_pf_req", 8),
    ("offset gmem_sys::firecracker_6_18::kvm_async_pf_req.gpa", 0),
    ("fsize gmem_sys::firecracker_6_18::kvm_async_pf_req.gpa", 8),
    ("offset gmem_sys::firecracker_6_18::kvm_async_pf_req.op", 8),
    ("fsize gmem_sys::firecracker_6_18::kvm_async_pf_req.op", 4),
    (
        "offset gmem_sys::firecracker_6_18::kvm_async_pf_req.flags",
        12,
    ),
    (
        "fsize gmem_sys::firecracker_6_18::kvm_async_pf_req.flags",
        4,
    ),
    (
        "offset gmem_sys::firecracker_6_18::kvm_async_pf_req.reserved",
        16,
    ),
    (
        "fsize gmem_sys::firecracker_6_18::kvm_async_pf_req.reserved",
        16,
    ),
];

/// Masks that newer kernels extended. The system header's older value must
/// be a subset of ours; the full value is checked against [`VALUES`].
pub const GROWN_MASKS: &[(&str, &str)] = &[
    (
        "const uffd_sys::UFFD_API_FEATURES",
        "bits 13-16 added in 6.4-6.8, RWP and RWP_ASYNC (17-18) in 7.3",
    ),
    (
        "const uffd_sys::UFFD_API_RANGE_IOCTLS",
        "MOVE and POISON added in 6.6-6.8, RWPROTECT in 7.3",
    ),
    (
        "const uffd_sys::UFFD_API_RANGE_IOCTLS_BASIC",
        "POISON added in 6.6, RWPROTECT in 7.3",
    ),
    ("const uffd_sys::UFFD_API_IOCTLS", "SET_MODE added in 7.3"),
    (
        "const uffd_sys::UFFD_API_REGISTER_MODES",
        "RWP added in 7.3",
    ),
];
