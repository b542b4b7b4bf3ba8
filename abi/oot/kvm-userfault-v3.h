/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * KVM Userfault, as posted upstream: "[PATCH v3 00/15] KVM: Introduce KVM
 * Userfault", James Houghton, 2025-06-18. Not in any mainline release.
 *
 * A memslot created with KVM_MEM_USERFAULT carries a user-space bitmap, one
 * bit per page; a vCPU access to a page whose bit is set exits with
 * KVM_EXIT_MEMORY_FAULT and KVM_MEMORY_EXIT_FLAG_USERFAULT.
 */
#ifndef USERFAULT_ABI_OOT_KVM_USERFAULT_V3_H
#define USERFAULT_ABI_OOT_KVM_USERFAULT_V3_H

#include "../types.h"

/* kvm_userspace_memory_region2.flags: enable the userfault bitmap. */
#define KVM_MEM_USERFAULT (1UL << 3)

/* kvm_run.memory_fault.flags: the exit was caused by a set bitmap bit. */
#define KVM_MEMORY_EXIT_FLAG_USERFAULT (1ULL << 4)

/*
 * Capability number in this posting. Mainline later gave 243 to
 * KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED: informational only.
 */
#define KVM_CAP_USERFAULT 243

/*
 * kvm_userspace_memory_region2 as this posting lays it out: the first word
 * of the mainline pad2[14] becomes the bitmap pointer. Same 160 bytes.
 */
struct kvm_userspace_memory_region2 {
	/* Address-space id in bits 16..31, slot id in bits 0..15. */
	__u32 slot;
	/* KVM_MEM_* */
	__u32 flags;
	/* Guest physical address of the slot's first byte. */
	__u64 guest_phys_addr;
	/* Size in bytes; zero deletes the slot. */
	__u64 memory_size;
	/* Start of the user-space mapping that backs the slot. */
	__u64 userspace_addr;
	/* Offset into guest_memfd, with KVM_MEM_GUEST_MEMFD. */
	__u64 guest_memfd_offset;
	/* A guest_memfd file descriptor, with KVM_MEM_GUEST_MEMFD. */
	__u32 guest_memfd;
	/* Zero. */
	__u32 pad1;
	/* User address of the bitmap (an array of unsigned long). */
	__u64 userfault_bitmap;
	/* Zero. */
	__u64 pad2[13];
};

#endif
