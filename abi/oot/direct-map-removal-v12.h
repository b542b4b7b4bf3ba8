/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * guest_memfd direct map removal, as posted upstream: "[PATCH v12 00/16]
 * Direct Map Removal Support for guest_memfd", 2026 (reviews through
 * 2026-05-08). Not in any mainline release.
 *
 * Bit 2 collides with GUEST_MEMFD_FLAG_WRITE of the write() v7 posting.
 */
#ifndef USERFAULT_ABI_OOT_DIRECT_MAP_REMOVAL_V12_H
#define USERFAULT_ABI_OOT_DIRECT_MAP_REMOVAL_V12_H

#include "../types.h"

/* kvm_create_guest_memfd.flags: remove the memory from the direct map. */
#define GUEST_MEMFD_FLAG_NO_DIRECT_MAP (1ULL << 2)

#endif
