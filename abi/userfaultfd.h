/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The mainline userfaultfd user-space ABI, written for the userfault project
 * from the facts in PROVENANCE.md (values and layouts of the kernel's
 * include/uapi/linux/userfaultfd.h as of Linux 7.3, which added read-write
 * protection: UFFDIO_REGISTER_MODE_RWP, UFFDIO_RWPROTECT and UFFDIO_SET_MODE).
 *
 * ioctl request numbers are written as _IO/_IOR/_IOWR expressions. bindgen
 * cannot evaluate them; the generator translates each one into a call of
 * the const fns in the sys crate's `ioctl` module.
 */
#ifndef USERFAULT_ABI_USERFAULTFD_H
#define USERFAULT_ABI_USERFAULTFD_H

#include "types.h"

/* ---- creating a userfaultfd ------------------------------------------- */

/* ioctl type of the /dev/userfaultfd misc device. */
#define USERFAULTFD_IOC 0xAA
/* Create a userfaultfd through /dev/userfaultfd; argument: creation flags. */
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)

/* userfaultfd(2) flag: only faults raised by user-mode accesses are handled. */
#define UFFD_USER_MODE_ONLY 1

/* ---- API version and ioctl numbering ---------------------------------- */

/* The only API version; passed in uffdio_api.api. */
#define UFFD_API 0xAAULL

/* ioctl type of userfaultfd file descriptors. */
#define UFFDIO 0xAA

/* ioctl command numbers; also the bit positions used in "ioctls" masks. */
#define _UFFDIO_REGISTER 0x00
#define _UFFDIO_UNREGISTER 0x01
#define _UFFDIO_WAKE 0x02
#define _UFFDIO_COPY 0x03
#define _UFFDIO_ZEROPAGE 0x04
#define _UFFDIO_MOVE 0x05
#define _UFFDIO_WRITEPROTECT 0x06
#define _UFFDIO_CONTINUE 0x07
#define _UFFDIO_POISON 0x08
#define _UFFDIO_RWPROTECT 0x09
#define _UFFDIO_SET_MODE 0x0A
#define _UFFDIO_API 0x3F

/* ---- messages read from a userfaultfd --------------------------------- */

/* Feature-dependent part of a page-fault message. */
union uffd_msg_pagefault_feat {
	/* Faulting thread id, with UFFD_FEATURE_THREAD_ID. */
	__u32 ptid;
};

/* UFFD_EVENT_PAGEFAULT payload. */
struct uffd_msg_pagefault {
	/* UFFD_PAGEFAULT_FLAG_* */
	__u64 flags;
	/* Faulting address; page-aligned unless UFFD_FEATURE_EXACT_ADDRESS. */
	__u64 address;
	/* Feature-dependent extra information. */
	union uffd_msg_pagefault_feat feat;
};

/* UFFD_EVENT_FORK payload. */
struct uffd_msg_fork {
	/* The child's userfaultfd, installed in the reader's fd table. */
	__u32 ufd;
};

/* UFFD_EVENT_REMAP payload. */
struct uffd_msg_remap {
	/* Old start address of the moved mapping. */
	__u64 from;
	/* New start address. */
	__u64 to;
	/* Length moved, in bytes. */
	__u64 len;
};

/* UFFD_EVENT_REMOVE and UFFD_EVENT_UNMAP payload. */
struct uffd_msg_remove {
	/* First address of the removed range. */
	__u64 start;
	/* End of the removed range (exclusive). */
	__u64 end;
};

/* The payload space of every message, as raw words. */
struct uffd_msg_reserved {
	/* Payload word at offset 8. */
	__u64 reserved1;
	/* Payload word at offset 16. */
	__u64 reserved2;
	/* Payload word at offset 24. */
	__u64 reserved3;
};

/* Event-specific payload of a uffd_msg. */
union uffd_msg_arg {
	/* With UFFD_EVENT_PAGEFAULT. */
	struct uffd_msg_pagefault pagefault;
	/* With UFFD_EVENT_FORK. */
	struct uffd_msg_fork fork;
	/* With UFFD_EVENT_REMAP. */
	struct uffd_msg_remap remap;
	/* With UFFD_EVENT_REMOVE and UFFD_EVENT_UNMAP. */
	struct uffd_msg_remove remove;
	/* The payload as raw words. */
	struct uffd_msg_reserved reserved;
};

/* One event, as returned by read(2) on a userfaultfd (32 bytes). */
struct uffd_msg {
	/* UFFD_EVENT_* */
	__u8 event;
	/* Zero. */
	__u8 reserved1;
	/* Zero. */
	__u16 reserved2;
	/* Zero. */
	__u32 reserved3;
	/* The payload; which member is valid depends on event. */
	union uffd_msg_arg arg;
} __attribute__((packed));

/* Event codes (uffd_msg.event). */
#define UFFD_EVENT_PAGEFAULT 0x12
#define UFFD_EVENT_FORK 0x13
#define UFFD_EVENT_REMAP 0x14
#define UFFD_EVENT_REMOVE 0x15
#define UFFD_EVENT_UNMAP 0x16

/* Page-fault flags (uffd_msg.arg.pagefault.flags). */
#define UFFD_PAGEFAULT_FLAG_WRITE (1 << 0)
#define UFFD_PAGEFAULT_FLAG_WP (1 << 1)
#define UFFD_PAGEFAULT_FLAG_MINOR (1 << 2)
#define UFFD_PAGEFAULT_FLAG_RWP (1 << 3)

/* ---- UFFDIO_API -------------------------------------------------------- */

struct uffdio_api {
	/* In: UFFD_API. */
	__u64 api;
	/* In: features to enable. Out: every feature the kernel supports. */
	__u64 features;
	/* Out: the ioctls valid on the file descriptor. */
	__u64 ioctls;
};

/* Feature bits (uffdio_api.features). */
#define UFFD_FEATURE_PAGEFAULT_FLAG_WP (1 << 0)
#define UFFD_FEATURE_EVENT_FORK (1 << 1)
#define UFFD_FEATURE_EVENT_REMAP (1 << 2)
#define UFFD_FEATURE_EVENT_REMOVE (1 << 3)
#define UFFD_FEATURE_MISSING_HUGETLBFS (1 << 4)
#define UFFD_FEATURE_MISSING_SHMEM (1 << 5)
#define UFFD_FEATURE_EVENT_UNMAP (1 << 6)
#define UFFD_FEATURE_SIGBUS (1 << 7)
#define UFFD_FEATURE_THREAD_ID (1 << 8)
#define UFFD_FEATURE_MINOR_HUGETLBFS (1 << 9)
#define UFFD_FEATURE_MINOR_SHMEM (1 << 10)
#define UFFD_FEATURE_EXACT_ADDRESS (1 << 11)
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#define UFFD_FEATURE_POISON (1 << 14)
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#define UFFD_FEATURE_MOVE (1 << 16)
#define UFFD_FEATURE_RWP (1 << 17)
#define UFFD_FEATURE_RWP_ASYNC (1 << 18)

/* ---- range ioctls ------------------------------------------------------ */

struct uffdio_range {
	/* First address; page-aligned. */
	__u64 start;
	/* Length in bytes; a multiple of the page size. */
	__u64 len;
};

struct uffdio_register {
	/* The range to register. */
	struct uffdio_range range;
	/* In: UFFDIO_REGISTER_MODE_*. */
	__u64 mode;
	/* Out: the range ioctls valid on the registered range. */
	__u64 ioctls;
};

#define UFFDIO_REGISTER_MODE_MISSING (1ULL << 0)
#define UFFDIO_REGISTER_MODE_WP (1ULL << 1)
#define UFFDIO_REGISTER_MODE_MINOR (1ULL << 2)
#define UFFDIO_REGISTER_MODE_RWP (1ULL << 3)

struct uffdio_copy {
	/* Destination address in the registered range; page-aligned. */
	__u64 dst;
	/* Source address of the data in the caller's memory. */
	__u64 src;
	/* Bytes to copy; a multiple of the page size. */
	__u64 len;
	/* UFFDIO_COPY_MODE_*. */
	__u64 mode;
	/* Out: bytes copied, or a negated errno. */
	__s64 copy;
};

#define UFFDIO_COPY_MODE_DONTWAKE (1ULL << 0)
#define UFFDIO_COPY_MODE_WP (1ULL << 1)

struct uffdio_zeropage {
	/* The range to fill with zero pages. */
	struct uffdio_range range;
	/* UFFDIO_ZEROPAGE_MODE_*. */
	__u64 mode;
	/* Out: bytes zeroed, or a negated errno. */
	__s64 zeropage;
};

#define UFFDIO_ZEROPAGE_MODE_DONTWAKE (1ULL << 0)

struct uffdio_writeprotect {
	/* The range to protect or unprotect. */
	struct uffdio_range range;
	/* UFFDIO_WRITEPROTECT_MODE_*. */
	__u64 mode;
};

#define UFFDIO_WRITEPROTECT_MODE_WP (1ULL << 0)
#define UFFDIO_WRITEPROTECT_MODE_DONTWAKE (1ULL << 1)

struct uffdio_continue {
	/* The range whose cached pages to map. */
	struct uffdio_range range;
	/* UFFDIO_CONTINUE_MODE_*. */
	__u64 mode;
	/* Out: bytes mapped, or a negated errno. */
	__s64 mapped;
};

#define UFFDIO_CONTINUE_MODE_DONTWAKE (1ULL << 0)
#define UFFDIO_CONTINUE_MODE_WP (1ULL << 1)

struct uffdio_poison {
	/* The range to poison. */
	struct uffdio_range range;
	/* UFFDIO_POISON_MODE_*. */
	__u64 mode;
	/* Out: bytes poisoned, or a negated errno. */
	__s64 updated;
};

#define UFFDIO_POISON_MODE_DONTWAKE (1ULL << 0)

struct uffdio_move {
	/* Destination address in the registered range; page-aligned. */
	__u64 dst;
	/* Source address of the pages to move; page-aligned. */
	__u64 src;
	/* Bytes to move; a multiple of the page size. */
	__u64 len;
	/* UFFDIO_MOVE_MODE_*. */
	__u64 mode;
	/* Out: bytes moved, or a negated errno. */
	__s64 move;
};

#define UFFDIO_MOVE_MODE_DONTWAKE (1ULL << 0)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES (1ULL << 1)

struct uffdio_rwprotect {
	/* The range to read-write protect or un-protect. */
	struct uffdio_range range;
	/* UFFDIO_RWPROTECT_MODE_*; without MODE_RWP the range is un-protected. */
	__u64 mode;
};

#define UFFDIO_RWPROTECT_MODE_RWP (1ULL << 0)
#define UFFDIO_RWPROTECT_MODE_DONTWAKE (1ULL << 1)

/* ---- run-time mode switches -------------------------------------------- */

struct uffdio_set_mode {
	/* Async features to turn on (only UFFD_FEATURE_RWP_ASYNC). */
	__u64 enable;
	/* Async features to turn off; a bit in both enable and disable is invalid. */
	__u64 disable;
};

/* ---- masks reported by UFFDIO_API and UFFDIO_REGISTER ---------------- */

/* Register modes the kernel accepts in uffdio_register.mode. */
#define UFFD_API_REGISTER_MODES \
	(UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP | \
	 UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_RWP)

/* Features a kernel with this ABI can report from UFFDIO_API. */
#define UFFD_API_FEATURES \
	(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_EVENT_FORK | \
	 UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | \
	 UFFD_FEATURE_MISSING_HUGETLBFS | UFFD_FEATURE_MISSING_SHMEM | \
	 UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_SIGBUS | \
	 UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_MINOR_HUGETLBFS | \
	 UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_EXACT_ADDRESS | \
	 UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED | \
	 UFFD_FEATURE_POISON | UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_MOVE | \
	 UFFD_FEATURE_RWP | UFFD_FEATURE_RWP_ASYNC)

/* The ioctls valid on the userfaultfd itself (reported by UFFDIO_API). */
#define UFFD_API_IOCTLS \
	(1ULL << _UFFDIO_REGISTER | 1ULL << _UFFDIO_UNREGISTER | \
	 1ULL << _UFFDIO_SET_MODE | 1ULL << _UFFDIO_API)

/* The range ioctls a registration can report (anonymous and shmem). */
#define UFFD_API_RANGE_IOCTLS \
	(1ULL << _UFFDIO_WAKE | 1ULL << _UFFDIO_COPY | \
	 1ULL << _UFFDIO_ZEROPAGE | 1ULL << _UFFDIO_MOVE | \
	 1ULL << _UFFDIO_WRITEPROTECT | 1ULL << _UFFDIO_CONTINUE | \
	 1ULL << _UFFDIO_POISON | 1ULL << _UFFDIO_RWPROTECT)

/* The range ioctls a hugetlb registration can report. */
#define UFFD_API_RANGE_IOCTLS_BASIC \
	(1ULL << _UFFDIO_WAKE | 1ULL << _UFFDIO_COPY | \
	 1ULL << _UFFDIO_WRITEPROTECT | 1ULL << _UFFDIO_CONTINUE | \
	 1ULL << _UFFDIO_POISON | 1ULL << _UFFDIO_RWPROTECT)

/* ---- ioctl request numbers --------------------------------------------- */

/* Handshake: agree on the API and features; must come first. */
#define UFFDIO_API _IOWR(UFFDIO, _UFFDIO_API, struct uffdio_api)
/* Register a range for fault handling in the given modes. */
#define UFFDIO_REGISTER _IOWR(UFFDIO, _UFFDIO_REGISTER, struct uffdio_register)
/* Unregister a range (encoded _IOR, as the kernel always has). */
#define UFFDIO_UNREGISTER _IOR(UFFDIO, _UFFDIO_UNREGISTER, struct uffdio_range)
/* Wake the threads waiting on faults in a range (encoded _IOR, as the kernel always has). */
#define UFFDIO_WAKE _IOR(UFFDIO, _UFFDIO_WAKE, struct uffdio_range)
/* Resolve missing faults by copying pages into the range. */
#define UFFDIO_COPY _IOWR(UFFDIO, _UFFDIO_COPY, struct uffdio_copy)
/* Resolve missing faults by mapping zero pages. */
#define UFFDIO_ZEROPAGE _IOWR(UFFDIO, _UFFDIO_ZEROPAGE, struct uffdio_zeropage)
/* Resolve missing faults by moving pages from another anonymous range. */
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
/* Set or clear write protection on a range registered in WP mode. */
#define UFFDIO_WRITEPROTECT \
	_IOWR(UFFDIO, _UFFDIO_WRITEPROTECT, struct uffdio_writeprotect)
/* Resolve minor faults by mapping the pages already in the page cache. */
#define UFFDIO_CONTINUE _IOWR(UFFDIO, _UFFDIO_CONTINUE, struct uffdio_continue)
/* Mark a range poisoned: accesses raise SIGBUS. */
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
/* Read-write protect or un-protect a range registered in RWP mode. */
#define UFFDIO_RWPROTECT \
	_IOWR(UFFDIO, _UFFDIO_RWPROTECT, struct uffdio_rwprotect)
/* Turn async modes on or off on a live userfaultfd. */
#define UFFDIO_SET_MODE _IOW(UFFDIO, _UFFDIO_SET_MODE, struct uffdio_set_mode)

#endif
