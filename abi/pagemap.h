/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The PAGEMAP_SCAN ioctl of /proc/PID/pagemap, written for the userfault
 * project from the facts in PROVENANCE.md (values and layouts of the kernel's
 * include/uapi/linux/fs.h as of Linux 7.3, which added PAGE_IS_ACCESSED).
 *
 * Bound beside userfaultfd because its categories and its write-protecting
 * scan are defined by userfaultfd's async modes: PAGE_IS_WPALLOWED and
 * PAGE_IS_WRITTEN by UFFD_FEATURE_WP_ASYNC, PAGE_IS_ACCESSED by
 * UFFD_FEATURE_RWP_ASYNC.
 */
#ifndef USERFAULT_ABI_PAGEMAP_H
#define USERFAULT_ABI_PAGEMAP_H

#include "types.h"

/* ioctl type of procfs files ('f'). */
#define PROCFS_IOCTL_MAGIC 0x66

/* Page categories: PAGEMAP_SCAN's masks and page_region.categories. */
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)
#define PAGE_IS_GUARD (1 << 8)
#define PAGE_IS_ACCESSED (1 << 9)

/* One run of pages with the same categories, as PAGEMAP_SCAN returns it. */
struct page_region {
	/* First address of the run. */
	__u64 start;
	/* End of the run (exclusive). */
	__u64 end;
	/* PAGE_IS_* categories of the run, limited to the scan's return_mask. */
	__u64 categories;
};

/* PAGEMAP_SCAN flags (pm_scan_arg.flags). */
/* Write-protect the matched pages (userfaultfd WP_ASYNC) as they are reported. */
#define PM_SCAN_WP_MATCHING (1 << 0)
/* Fail the scan at the first page not registered for async write protection. */
#define PM_SCAN_CHECK_WPASYNC (1 << 1)

/* The PAGEMAP_SCAN argument (96 bytes). */
struct pm_scan_arg {
	/* In: sizeof(struct pm_scan_arg). */
	__u64 size;
	/* In: PM_SCAN_*. */
	__u64 flags;
	/* In: first address to scan. */
	__u64 start;
	/* In: end of the scan (exclusive). */
	__u64 end;
	/* Out: where the scan stopped; end when it covered the whole range. */
	__u64 walk_end;
	/* In: address of the page_region array the kernel fills. */
	__u64 vec;
	/* In: number of entries in vec. */
	__u64 vec_len;
	/* In: stop after this many pages (0 = no limit). */
	__u64 max_pages;
	/* In: categories that match when clear instead of set. */
	__u64 category_inverted;
	/* In: skip pages for which any of these categories does not match. */
	__u64 category_mask;
	/* In: skip pages for which none of these categories matches. */
	__u64 category_anyof_mask;
	/* In: the categories to report in page_region.categories. */
	__u64 return_mask;
};

/* Scan a range of the process's pages by category (since 6.7). */
#define PAGEMAP_SCAN _IOWR(PROCFS_IOCTL_MAGIC, 16, struct pm_scan_arg)

#endif
