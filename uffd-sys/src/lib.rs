//! Raw bindings to the Linux userfaultfd ABI.
//!
//! Everything in `<linux/userfaultfd.h>` as of the newest mainline kernels:
//! the message and argument structs, feature bits, register modes, event
//! codes, page-fault flags, per-ioctl mode flags, the `_UFFDIO_*` bit
//! numbers, the `UFFD_API_*` masks, `UFFD_USER_MODE_ONLY`,
//! `USERFAULTFD_IOC_NEW` and every `UFFDIO_*` ioctl request number; and, in
//! [`pagemap`], the `PAGEMAP_SCAN` ioctl that reads the page categories
//! userfaultfd's async modes maintain.
//!
//! Names, values and layouts are the kernel's. Constants have the width of
//! the field or argument they go with (`u64` feature, mode and flag bits,
//! `u8` event codes); ioctl request numbers are `u32`, computed at compile
//! time by the const fns in [`ioctl`], so the same value serves `ioctl(2)`
//! and seccomp filters.
//!
//! The bindings are generated offline from `abi/userfaultfd.h` by the
//! workspace's `gen/` program and committed; building this crate needs no
//! libclang and no kernel headers. Each item's documentation shows the C
//! definition it comes from.
//!
//! For a safe interface (handshake, registration, typed events, resolution
//! with exact partial-progress semantics) use the `userfault` crate.
//!
//! # Example
//!
//! ```
//! use uffd_sys::{UFFDIO_API, UFFD_API, uffdio_api};
//!
//! let api = uffdio_api { api: UFFD_API, features: 0, ioctls: 0 };
//! # let _ = api;
//! // ioctl(uffd, UFFDIO_API as libc::c_ulong, &mut api) on a new userfaultfd.
//! assert_eq!(UFFDIO_API >> 30, 3); // read and write
//! ```
//!
//! # References
//! - [`userfaultfd(2)`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html)
//! - [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html)
//! - [Documentation/admin-guide/mm/userfaultfd.rst](https://docs.kernel.org/admin-guide/mm/userfaultfd.html)

#![no_std]

#[cfg(not(target_pointer_width = "64"))]
compile_error!("uffd-sys binds the 64-bit Linux ABI only");

pub mod ioctl;

#[allow(non_camel_case_types, non_upper_case_globals)]
mod generated;

pub use generated::*;

/// `PAGEMAP_SCAN`, the ioctl of `/proc/PID/pagemap` that reports pages by
/// category (`<linux/fs.h>`, since Linux 6.7; `PAGE_IS_ACCESSED` since 7.3).
///
/// It lives beside the userfaultfd bindings because userfaultfd's async
/// modes define its categories: `PAGE_IS_WPALLOWED` and `PAGE_IS_WRITTEN`
/// follow `UFFD_FEATURE_WP_ASYNC` write protection (and
/// `PM_SCAN_WP_MATCHING` re-protects what it reports), `PAGE_IS_ACCESSED`
/// follows `UFFD_FEATURE_RWP_ASYNC` read-write protection.
///
/// # References
/// - [Documentation/admin-guide/mm/pagemap.rst](https://docs.kernel.org/admin-guide/mm/pagemap.html)
#[allow(non_camel_case_types, non_upper_case_globals)]
pub mod pagemap {
    include!("pagemap_generated.rs");
}
