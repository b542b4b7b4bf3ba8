/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * guest_memfd population by write(), as posted upstream: "[PATCH v7 0/2]
 * KVM: guest_memfd: use write for population", Nikita Kalyazin, 2025-11-14.
 * Not in any mainline release.
 *
 * Bit 2 collides with GUEST_MEMFD_FLAG_NO_DIRECT_MAP of the direct map
 * removal series: decide what a kernel means by it by trying write().
 */
#ifndef USERFAULT_ABI_OOT_GMEM_WRITE_V7_H
#define USERFAULT_ABI_OOT_GMEM_WRITE_V7_H

#include "../types.h"

/* kvm_create_guest_memfd.flags: the file accepts write()/pwrite(). */
#define GUEST_MEMFD_FLAG_WRITE (1ULL << 2)

#endif
