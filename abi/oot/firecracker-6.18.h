/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The out-of-tree uAPI carried by Firecracker's 6.18 kernel patch stack
 * (branch feature/secret-hiding, resources/hiding_ci/kernels/
 * 6.18-secret-hiding, as of 2026-08-13): direct map removal v12, KVM
 * Userfault (renumbered), guest_memfd write() v7 (renumbered) and an
 * unpublished asynchronous page fault series.
 *
 * The memslot layout with userfault_bitmap is the one in
 * kvm-userfault-v3.h; it is not repeated here.
 */
#ifndef USERFAULT_ABI_OOT_FIRECRACKER_6_18_H
#define USERFAULT_ABI_OOT_FIRECRACKER_6_18_H

#include "../types.h"

#define KVMIO 0xAE

/* kvm_create_guest_memfd.flags */
#define GUEST_MEMFD_FLAG_NO_DIRECT_MAP (1ULL << 2)
#define GUEST_MEMFD_FLAG_WRITE (1ULL << 3)

/* kvm_userspace_memory_region2.flags */
#define KVM_MEM_USERFAULT (1UL << 3)

/* kvm_run.memory_fault.flags */
#define KVM_MEMORY_EXIT_FLAG_USERFAULT (1ULL << 4)
#define KVM_MEMORY_EXIT_FLAG_APF (1ULL << 5)

/* Capability numbers; mainline gave 245 and 246 to other capabilities. */
#define KVM_CAP_USERFAULT 245
#define KVM_CAP_ASYNC_PF_USERFAULT 246

/* Argument of KVM_ASYNC_PF (asynchronous page fault completion). */
struct kvm_async_pf_req {
	/* Guest physical address the request is about. */
	__u64 gpa;
	/* Operation code of the request. */
	__u32 op;
	/* Request flags. */
	__u32 flags;
	/* Zero. */
	__u64 reserved[2];
};

#define KVM_ASYNC_PF _IOW(KVMIO, 0xd6, struct kvm_async_pf_req)

#endif
