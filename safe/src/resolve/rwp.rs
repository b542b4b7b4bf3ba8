//! The typed faults of read-write protection (Linux 7.3) and of modes this
//! crate does not know.
//!
//! An RWP fault is raised by a read or a write of a page a handler
//! protected with `UFFDIO_RWPROTECT`. The page is present and holds its
//! data, so the only resolution is to un-protect it: [`RwpFault`] offers
//! [`unprotect`](RwpFault::unprotect) and nothing that fills a page (no
//! COPY, no CONTINUE), on any region class.
//!
//! Filling an RWP fault's page does not compile:
//!
//! ```compile_fail
//! # use userfault::resolve::*;
//! fn handle<B>(f: RwpFault<'_, CopyCapable, B>, page: &[u8]) {
//!     let _ = f.copy(page);
//! }
//! ```
//!
//! Un-protecting does:
//!
//! ```
//! # use userfault::resolve::*;
//! fn handle<B>(f: RwpFault<'_, CopyCapable, B>) {
//!     let _ = f.unprotect();
//! }
//! ```

use super::{Class, RawFault, Resolution};
use crate::error::Result;
use crate::uffd::RwprotectMode;

/// A read-write-protect fault: an access to a page protected with
/// [`Uffd::rwprotect`](crate::uffd::Uffd::rwprotect).
#[derive(Debug)]
pub struct RwpFault<'r, C: Class, B> {
    pub(super) raw: RawFault<'r, C, B>,
}

/// A fault of a mode this crate does not know (see
/// [`FaultKind::Unknown`](crate::uffd::FaultKind::Unknown)): it can only be
/// woken, which a newer kernel's handler for that mode would have to
/// replace.
#[derive(Debug)]
pub struct UnknownFault<'r, C: Class, B> {
    pub(super) raw: RawFault<'r, C, B>,
}

// `page`, `region`, `wake` and `backing_offset` come from the accessors
// every typed fault shares (`typed_fault`).

impl<C: Class, B> RwpFault<'_, C, B> {
    /// `ioctl(uffd, UFFDIO_RWPROTECT, …)` without `RWP`: un-protects the
    /// faulting page and wakes the waiter, whose access then completes on
    /// the page's own data.
    ///
    /// # Errors
    ///
    /// `Unsupported` when the region's mask has no `UFFDIO_RWPROTECT`; the
    /// errno otherwise — the waiter is woken before any error is returned.
    #[doc(alias = "UFFDIO_RWPROTECT")]
    pub fn unprotect(mut self) -> Result<Resolution> {
        self.raw.done = true;
        let region = self.raw.region;
        let page = self.raw.page;
        match region
            .uffd
            .rwprotect(&region.reg, page, region.page_size, RwprotectMode::empty())
        {
            Ok(_) => Ok(Resolution::Mapped),
            Err(e) => Err(region.wake_after(page, e)),
        }
    }
}
