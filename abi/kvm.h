/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The mainline KVM items the userfault project binds: the system ioctls it
 * needs to create a VM, guest_memfd, KVM_SET_USER_MEMORY_REGION2, memory
 * attributes, the KVM_EXIT_MEMORY_FAULT payload and the related capability
 * numbers. Written for the project from the facts in PROVENANCE.md (values
 * and layouts of the kernel's include/uapi/linux/kvm.h as of Linux 6.18,
 * with the capability numbers assigned up to the 7.x releases examined).
 *
 * Not a replacement for kvm-bindings: vCPU state, kvm_run and the rest of
 * the KVM ABI come from there.
 */
#ifndef USERFAULT_ABI_KVM_H
#define USERFAULT_ABI_KVM_H

#include "types.h"

/* ioctl type of KVM file descriptors. */
#define KVMIO 0xAE

/* The stable KVM API version returned by KVM_GET_API_VERSION. */
#define KVM_API_VERSION 12

/* ---- system ioctls (on /dev/kvm; KVM_CHECK_EXTENSION also on a VM) ----- */

#define KVM_GET_API_VERSION _IO(KVMIO, 0x00)
/* Argument: the VM type (0 is the default type on every architecture). */
#define KVM_CREATE_VM _IO(KVMIO, 0x01)
/* Argument: a KVM_CAP_* number. Returns 0 (absent) or a positive value. */
#define KVM_CHECK_EXTENSION _IO(KVMIO, 0x03)

/* ---- memory slots ------------------------------------------------------ */

/* kvm_userspace_memory_region2.flags */
#define KVM_MEM_LOG_DIRTY_PAGES (1UL << 0)
#define KVM_MEM_READONLY (1UL << 1)
#define KVM_MEM_GUEST_MEMFD (1UL << 2)

/* Argument of KVM_SET_USER_MEMORY_REGION2 (160 bytes). */
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
	/* Zero. */
	__u64 pad2[14];
};

#define KVM_SET_USER_MEMORY_REGION2 \
	_IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2)

/* ---- memory attributes ------------------------------------------------- */

/* Argument of KVM_SET_MEMORY_ATTRIBUTES (32 bytes). */
struct kvm_memory_attributes {
	/* Guest physical address of the range; page-aligned. */
	__u64 address;
	/* Size of the range in bytes. */
	__u64 size;
	/* KVM_MEMORY_ATTRIBUTE_* */
	__u64 attributes;
	/* Zero. */
	__u64 flags;
};

#define KVM_MEMORY_ATTRIBUTE_PRIVATE (1ULL << 3)

#define KVM_SET_MEMORY_ATTRIBUTES \
	_IOW(KVMIO, 0xd2, struct kvm_memory_attributes)

/* ---- guest_memfd ------------------------------------------------------- */

/* Argument of KVM_CREATE_GUEST_MEMFD (64 bytes). */
struct kvm_create_guest_memfd {
	/* Size in bytes; must be page-aligned. */
	__u64 size;
	/* GUEST_MEMFD_FLAG_* */
	__u64 flags;
	/* Zero. */
	__u64 reserved[6];
};

/* The file may be mmap()ed by user space. */
#define GUEST_MEMFD_FLAG_MMAP (1ULL << 0)
/* Memory starts out shared (faultable through the user mapping). */
#define GUEST_MEMFD_FLAG_INIT_SHARED (1ULL << 1)

#define KVM_CREATE_GUEST_MEMFD \
	_IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd)

/* ---- memory-fault exits ------------------------------------------------ */

/* kvm_run.exit_reason when KVM_RUN failed with EFAULT on guest memory. */
#define KVM_EXIT_MEMORY_FAULT 39

/* The access was to private memory. */
#define KVM_MEMORY_EXIT_FLAG_PRIVATE (1ULL << 3)

/*
 * The kvm_run.memory_fault payload of a KVM_EXIT_MEMORY_FAULT exit (an
 * anonymous struct inside kvm_run's exit union in the kernel header).
 */
struct kvm_memory_fault_exit {
	/* KVM_MEMORY_EXIT_FLAG_* */
	__u64 flags;
	/* Guest physical address of the faulting range. */
	__u64 gpa;
	/* Size of the faulting range in bytes. */
	__u64 size;
};

/* ---- capability numbers (KVM_CHECK_EXTENSION) ------------------------- */

#define KVM_CAP_USER_MEMORY 3
#define KVM_CAP_NR_MEMSLOTS 10
#define KVM_CAP_READONLY_MEM 81
#define KVM_CAP_USER_MEMORY2 231
#define KVM_CAP_MEMORY_FAULT_INFO 232
#define KVM_CAP_MEMORY_ATTRIBUTES 233
#define KVM_CAP_GUEST_MEMFD 234
#define KVM_CAP_VM_TYPES 235
#define KVM_CAP_PRE_FAULT_MEMORY 236
#define KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED 243
/* Returns the mask of GUEST_MEMFD_FLAG_* the VM (or any VM) supports. */
#define KVM_CAP_GUEST_MEMFD_FLAGS 244
#define KVM_CAP_ARM_SEA_TO_USER 245
#define KVM_CAP_S390_USER_OPEREXEC 246
#define KVM_CAP_S390_KEYOP 247

#endif
