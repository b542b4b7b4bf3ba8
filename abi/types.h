/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Fixed-width integer types used by the userfault ABI headers.
 *
 * The generator runs bindgen with -nostdinc, so nothing here may include a
 * system header. The spellings follow the kernel's uapi convention
 * (<asm-generic/int-ll64.h>): every 64-bit target we bind uses LP64 with
 * "long long" for 64-bit integers.
 */
#ifndef USERFAULT_ABI_TYPES_H
#define USERFAULT_ABI_TYPES_H

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef signed short __s16;
typedef unsigned int __u32;
typedef signed int __s32;
typedef unsigned long long __u64;
typedef signed long long __s64;

#endif
