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

use super::{Class, RawFault, Region, Resolution};
use crate::backing::Backing;
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

macro_rules! common {
    ($ty:ident) => {
        impl<'r, C: Class, B> $ty<'r, C, B> {
            /// The faulting page's first address.
            pub fn page(&self) -> usize {
                self.raw.page
            }

            /// The region the fault belongs to.
            pub fn region(&self) -> &'r Region<C, B> {
                self.raw.region
            }

            /// `ioctl(uffd, UFFDIO_WAKE, …)`: leaves the fault unresolved
            /// and wakes its waiter, which retries the access (and faults
            /// again if nothing changed).
            ///
            /// # Errors
            ///
            /// The `UFFDIO_WAKE` errno.
            #[doc(alias = "UFFDIO_WAKE")]
            pub fn wake(mut self) -> Result<()> {
                self.raw.done = true;
                self.raw.region.wake(self.raw.page)
            }
        }

        impl<'r, C: Class, B: Backing> $ty<'r, C, B> {
            /// The file offset of the faulting page, for a region with a
            /// backing file; `None` for one without (anonymous memory).
            pub fn backing_offset(&self) -> Option<u64> {
                self.raw.region.file_offset_of(self.raw.page)
            }
        }
    };
}

common!(RwpFault);
common!(UnknownFault);

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
